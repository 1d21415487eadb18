"""Lightning Trainer plugins: atomic, durable checkpoint writes (:mod:`.checkpoint_io`)."""

from lit_ppool.training.plugins.checkpoint_io import AtomicCheckpointIO

__all__ = ["AtomicCheckpointIO"]
