"""The random state in checkpoints: :class:`RandomStateCheckpoint`, so a resumed run draws what the unbroken run drew.

It stores the global random number generators (torch, CUDA, NumPy, Python) in each
checkpoint and restores them when training resumes, so random augmentation after a mid-epoch
resume is the augmentation the unbroken run would have drawn. Its companion for a kill-proof
checkpoint, the atomic write, is a plugin: :class:`~lit_ppool.training.plugins.checkpoint_io.AtomicCheckpointIO`.

Both are on by default in ``lit-ppool`` (:class:`lit_ppool.training.lightning_cli.PPoolCLI`); from Python::

    trainer = L.Trainer(plugins=[AtomicCheckpointIO()], callbacks=[RandomStateCheckpoint(), ...])
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

__all__ = ["RandomStateCheckpoint"]


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
