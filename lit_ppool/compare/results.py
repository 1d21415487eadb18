"""Run results of a comparison: what one run's ``test-last.json`` holds, found under any folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RESULT_FILE", "RunResult", "load_results"]

RESULT_FILE = "test-last.json"
"""What ``lit-ppool test --ckpt_path <run>/checkpoints/last.ckpt`` writes into the run folder."""


@dataclass(frozen=True)
class RunResult:
    """The test metrics of one (pooling, seed) run, and its layers' learned alpha."""

    pooling: str
    seed: int
    metrics: dict[str, float]
    alpha: dict[str, dict[str, float]] = field(default_factory=dict)
    path: Path | None = None

    def class_names(self, prefix: str = "test/IoU/") -> list[str]:
        """The classes with a per-class metric under ``prefix``, in the order they were logged."""
        return [key[len(prefix) :] for key in self.metrics if key.startswith(prefix)]


def _read(path: Path) -> RunResult:
    record = json.loads(path.read_text())
    if not isinstance(record, dict) or not isinstance(record.get("metrics"), dict) or record.get("pooling") is None:
        raise ValueError(f"Expected {str(path)!r} to hold a lit-ppool test result (pooling, seed, metrics), but it does not.")
    seed = record.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"Expected the seed in {str(path)!r} to be an int (seed_everything), but got {seed!r}.")
    return RunResult(record["pooling"], seed, record["metrics"], record.get("alpha") or {}, path)


def load_results(folder: str | Path) -> list[RunResult]:
    """Every run result under ``folder`` (any depth), one per (pooling, seed): the newest file wins.

    Raises:
        ValueError: If a result file cannot be read (naming it).
    """
    found: dict[tuple[str, int], RunResult] = {}
    for path in sorted(Path(folder).rglob(RESULT_FILE), key=lambda p: p.stat().st_mtime):
        try:
            result = _read(path)
        except json.JSONDecodeError as err:
            raise ValueError(f"Expected {str(path)!r} to be JSON, but it could not be read ({err}).") from err
        found[(result.pooling, result.seed)] = result
    return sorted(found.values(), key=lambda r: (r.pooling, r.seed))
