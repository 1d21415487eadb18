"""Read an offline W&B run (``run-<id>.wandb``) back: its history rows and its config, for the tests.

The file is W&B's record log: a 7-byte header (``:W&B``, magic, version), then LevelDB-log
framed chunks (4-byte checksum, 2-byte length, 1-byte type; 32 KiB blocks) of protobuf
``Record`` messages.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

_BLOCK = 32 * 1024
_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def records(path: str | Path) -> Iterator[Any]:
    """The protobuf records of a ``.wandb`` file, in order."""
    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"Expected a W&B run file starting with ':W&B', but {path} starts with {data[:4]!r}.")
    pos, chunks = _HEADER, []
    while pos + _HEADER <= len(data):
        if _BLOCK - pos % _BLOCK < _HEADER:  # block trailer too small for a header: padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _checksum, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        payload = data[pos + _HEADER : pos + _HEADER + length]
        if len(payload) < length:  # still being written
            return
        pos += _HEADER + length
        if kind == 0:
            continue
        chunks.append(payload)
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


def wait_until_closed(path: str | Path, timeout: float = 60.0) -> Path:
    """Wait until the run's ``exit`` record is on disk: ``wandb.finish()`` can return before an
    offline run's file is flushed."""
    deadline = time.monotonic() + timeout
    while not any(record.WhichOneof("record_type") == "exit" for record in records(path)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"Expected the W&B run file {path} to be closed within {timeout} s.")
        time.sleep(0.1)
    return Path(path)


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def _flat(key: str, value: Any) -> Iterator[tuple[str, Any]]:
    # newer wandb writes a media value (histogram, image) as one item per field, older as one JSON object
    if isinstance(value, dict):
        for field, inner in value.items():
            yield from _flat(f"{key}/{field}", inner)
    else:
        yield key, value


def history(path: str | Path) -> list[dict[str, Any]]:
    """The logged rows (``run.log`` calls), values decoded from JSON, media values flattened to ``key/field``."""
    return [
        dict(pair for item in record.history.item for pair in _flat(_key(item), json.loads(item.value_json)))
        for record in records(path)
        if record.WhichOneof("record_type") == "history"
    ]


def config(path: str | Path) -> dict[str, Any]:
    """The run config: the initial one merged with every later update."""
    merged: dict[str, Any] = {}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        updates = record.run.config.update if kind == "run" else record.config.update if kind == "config" else []
        for item in updates:
            merged[_key(item)] = json.loads(item.value_json)
    return merged
