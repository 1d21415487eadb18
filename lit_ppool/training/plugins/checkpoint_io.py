"""Checkpoints that survive a kill: :class:`AtomicCheckpointIO` writes them atomically and durably.

It writes every checkpoint to a temporary file next to its target, flushes and fsyncs it,
then renames it onto the target, so a kill at any moment leaves either the previous complete
checkpoint or the new complete one, never a torn file. Its companion for an exact resume,
the random state in each checkpoint, is a callback:
:class:`~lit_ppool.training.callbacks.random_state.RandomStateCheckpoint`.

Both are on by default in ``lit-ppool`` (:class:`lit_ppool.training.lightning_cli.PPoolCLI`); from Python::

    trainer = L.Trainer(plugins=[AtomicCheckpointIO()], callbacks=[RandomStateCheckpoint(), ...])
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO"]


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (best effort: some filesystems refuse a directory fsync)."""
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`~lightning.pytorch.plugins.io.TorchCheckpointIO` whose local writes are atomic and durable.

    A checkpoint is serialised into a hidden temporary file in the target's own directory
    (``.<name>.<random>.tmp``), flushed and ``fsync``-ed, then moved onto the target with
    :func:`os.replace` and the directory entry ``fsync``-ed. A process killed at any moment of
    a save therefore leaves the target as it was (the previous complete checkpoint) or
    replaced by the new complete one, and never a partial file; after a crash of the whole
    machine the renamed file has its data. Lightning's own writer stages the file in
    ``$TMPDIR``: when that is another filesystem than the checkpoint folder (a node-local
    ``/tmp``, checkpoints on shared storage) its final move is a copy into the target that a
    kill can cut short.

    A kill during a save can leave the hidden temporary file behind; it is never picked up
    as a checkpoint (``--ckpt_path last`` looks for ``last*.ckpt``) and can be deleted.
    Remote paths (``s3://``, ``gs://``, ...) are written by Lightning's writer: object
    stores replace an object as a whole. Loading is :class:`TorchCheckpointIO`'s.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(plugins=[AtomicCheckpointIO()], logger=False)
        >>> type(trainer.strategy.checkpoint_io).__name__
        'AtomicCheckpointIO'
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not isinstance(get_filesystem(path), LocalFileSystem):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target = Path(path).expanduser()
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            with open(temporary, "xb") as file:  # "x": never writes through an existing file
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        _fsync_directory(target.parent)
