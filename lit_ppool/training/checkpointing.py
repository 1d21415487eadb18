"""Checkpoints that survive a kill: atomic writes and the random state needed for an exact resume.

* :class:`AtomicCheckpointIO` writes every checkpoint to a temporary file next to its target,
  flushes and fsyncs it, then renames it onto the target, so a kill at any moment leaves
  either the previous complete checkpoint or the new complete one, never a torn file.
* :class:`RandomStateCheckpoint` stores the global random number generators (torch, CUDA,
  NumPy, Python) in each checkpoint and restores them when training resumes, so random
  augmentation after a mid-epoch resume is the augmentation the unbroken run would have drawn.

Both are on by default in ``lit-ppool`` (:class:`lit_ppool.cli.PPoolCLI`); from Python::

    trainer = L.Trainer(plugins=[AtomicCheckpointIO()], callbacks=[RandomStateCheckpoint(), ...])
"""

from __future__ import annotations

import contextlib
import os
import random
import uuid
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "RandomStateCheckpoint"]


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


class RandomStateCheckpoint(Callback):
    """Keep the global random number generators in checkpoints, so a resumed run draws what the unbroken run drew.

    Lightning restores the model, optimiser, schedulers, loops and (stateful) dataloaders
    from a checkpoint, but not the global random state that random augmentation (e.g.
    torchvision's flips), dropout and samplers draw from: after a mid-epoch resume they
    would draw different numbers than an uninterrupted run. This callback saves the torch
    CPU, CUDA (current device, if CUDA is in use), NumPy and Python ``random`` states with
    every checkpoint and restores them at the start of the resumed training loop, after
    the sanity check and the dataloader setup and before the first training batch.

    What is saved is the state of the process that writes the checkpoint (rank 0); every
    rank restores it, which equals each rank's own state when all ranks were seeded alike
    (``seed_everything``). Dataloader worker processes have their own generators, seeded by
    the loader: with ``num_workers > 0`` the data order after a mid-epoch resume is exact
    (:class:`~torchdata.stateful_dataloader.StatefulDataLoader`), random augmentation done
    inside the workers is not. Everything is stored as tensors and plain Python values, so
    checkpoints load with ``torch.load(..., weights_only=True)``.

    Example:
        >>> import lightning as L
        >>> trainer = L.Trainer(callbacks=[RandomStateCheckpoint()], logger=False)
    """

    def __init__(self) -> None:
        self._to_restore: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        kind, keys, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "kind": str(kind),
                "keys": torch.from_numpy(keys.astype(np.int64)),
                "position": int(position),
                "has_gauss": int(has_gauss),
                "cached_gaussian": float(cached_gaussian),
            },
            "python": random.getstate(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["torch.cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._to_restore = state_dict

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        state, self._to_restore = self._to_restore, None
        if not state:
            return
        torch.set_rng_state(state["torch"])
        if "torch.cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["torch.cuda"])
        numpy_state = state["numpy"]
        np.random.set_state(
            (
                numpy_state["kind"],
                numpy_state["keys"].numpy().astype(np.uint32),
                numpy_state["position"],
                numpy_state["has_gauss"],
                numpy_state["cached_gaussian"],
            )
        )
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
