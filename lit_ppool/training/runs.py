"""Run folders: where a run's checkpoints live, finding the newest one, and never writing over another run.

Lightning puts a run's checkpoints under its first logger's versioned folder
(``<save_dir>/<name>/version_<n>/checkpoints``) unless a ``ModelCheckpoint`` names a ``dirpath``.
The shipped configs use that default, so every ``fit`` writes into a fresh folder. This module
gives the ``lit-ppool`` command the rest:

* :func:`checkpoint_path_problem` checks a ``--ckpt_path`` before anything is built;
* :func:`find_last_checkpoint` turns ``--ckpt_path last`` into the newest ``last*.ckpt`` of the
  config's runs (Lightning's own ``"last"`` only looks into the folder of the new run);
* :func:`occupied_checkpoint_folder` finds a checkpoint folder that already holds another run's
  checkpoints (a ``dirpath`` set by hand, a fixed logger ``version``), which a new fit refuses;
* :func:`run_dir_of` is the run folder a checkpoint belongs to (test metrics and predictions
  go there).
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

__all__ = [
    "SPECIAL_CKPT_PATHS",
    "checkpoint_path_problem",
    "find_last_checkpoint",
    "occupied_checkpoint_folder",
    "run_dir_of",
    "runs_root",
]

SPECIAL_CKPT_PATHS = ("last", "best", "hpc", "registry")
"""The ``ckpt_path`` names Lightning resolves itself (``"registry:<name>"`` too)."""


def checkpoint_path_problem(ckpt_path: object) -> str | None:
    """Why ``ckpt_path`` cannot be loaded (missing, a folder, unreadable, not a checkpoint), or ``None``.

    Special names (``"last"``, ``"best"``, ...) and ``None`` are fine here.

    Example:
        >>> checkpoint_path_problem("last") is None
        True
        >>> checkpoint_path_problem("no/such.ckpt")
        "'no/such.ckpt' does not exist"
    """
    if ckpt_path is None or str(ckpt_path) in SPECIAL_CKPT_PATHS or str(ckpt_path).startswith("registry:"):
        return None
    path = Path(str(ckpt_path)).expanduser()
    if "://" in str(ckpt_path):
        return None  # remote (s3://, gs://, ...): Lightning's own loader reports problems
    if not path.exists():
        return f"{str(ckpt_path)!r} does not exist"
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.ckpt")) or sorted(p.name for p in path.glob("*/*.ckpt"))
        hint = f" (it holds {inside[:4]})" if inside else ""
        return f"{str(ckpt_path)!r} is a folder{hint}; pass a checkpoint file in it"
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        return f"{str(ckpt_path)!r} cannot be read ({err.strerror or err})"
    if not zipfile.is_zipfile(path):
        return f"{str(ckpt_path)!r} is not a PyTorch checkpoint (torch.save writes a zip archive; truncated or another format?)"
    return None


def runs_root(loggers: Sequence[Logger], default_root_dir: str | Path) -> Path:
    """The folder that holds the runs of a config: ``<save_dir>/<name>`` of its first logger, else ``default_root_dir``."""
    if not loggers:
        return Path(default_root_dir)
    logger = loggers[0]
    return Path(logger.save_dir or default_root_dir) / str(logger.name or "")


def find_last_checkpoint(
    callbacks: Sequence[object], loggers: Sequence[Logger], default_root_dir: str | Path
) -> Path | None:
    """The newest ``last*.ckpt`` of the runs of a config, or ``None`` if there is none.

    Looks in the ``dirpath`` of every ``ModelCheckpoint`` that sets one, else in the runs'
    folders: ``<root>/checkpoints`` and ``<root>/*/checkpoints`` with ``<root>`` from
    :func:`runs_root` (``lightning_logs/quickstart/version_3/checkpoints/last.ckpt``, ...).
    """
    checkpoints = [cb for cb in callbacks if isinstance(cb, ModelCheckpoint)]
    folders = [Path(cb.dirpath) for cb in checkpoints if cb.dirpath]
    if not folders:
        root = runs_root(loggers, default_root_dir)
        folders = [root / "checkpoints", *root.glob("*/checkpoints")]
    found = [path for folder in folders for path in folder.glob("last*.ckpt") if path.is_file()]
    return max(found, key=lambda path: path.stat().st_mtime) if found else None


def planned_checkpoint_folder(callback: ModelCheckpoint, loggers: Sequence[Logger], default_root_dir: str | Path) -> Path | None:
    """Where ``callback`` will write, as Lightning documents it; ``None`` where that is a new run id (W&B)."""
    if callback.dirpath:
        return Path(callback.dirpath)
    if not loggers:
        return Path(default_root_dir) / "checkpoints"
    logger = loggers[0]
    if not isinstance(logger, (CSVLogger, TensorBoardLogger)):
        return None
    version = logger.version
    version = version if isinstance(version, str) else f"version_{version}"
    return runs_root(loggers, default_root_dir) / version / "checkpoints"


def occupied_checkpoint_folder(
    callbacks: Sequence[object], loggers: Sequence[Logger], default_root_dir: str | Path, resume_from: str | Path | None
) -> tuple[Path, list[str]] | None:
    """A checkpoint folder of this fit that already holds checkpoints of another run: ``(folder, file names)``.

    A fit resumed from a checkpoint inside the folder continues that run and may write there.
    """
    resumed_in = Path(resume_from).expanduser().resolve().parent if resume_from else None
    for callback in callbacks:
        if not isinstance(callback, ModelCheckpoint):
            continue
        folder = planned_checkpoint_folder(callback, loggers, default_root_dir)
        if folder is None or not folder.is_dir() or folder.resolve() == resumed_in:
            continue
        existing = sorted(path.name for path in folder.glob("*.ckpt"))
        if existing:
            return folder, existing
    return None


def run_dir_of(ckpt_path: str | Path) -> Path:
    """The run folder of a checkpoint: ``<run>`` for ``<run>/checkpoints/x.ckpt``, else the checkpoint's folder."""
    path = Path(ckpt_path).expanduser()
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent
