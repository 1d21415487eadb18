"""Lightning callbacks: alpha per layer (:mod:`.alpha_monitor`), random state in checkpoints (:mod:`.random_state`), PNG predictions (:mod:`.writer`)."""

from lit_ppool.training.callbacks.alpha_monitor import AlphaMonitor
from lit_ppool.training.callbacks.random_state import RandomStateCheckpoint
from lit_ppool.training.callbacks.writer import PaletteMaskWriter

__all__ = ["AlphaMonitor", "PaletteMaskWriter", "RandomStateCheckpoint"]
