"""Pooling layers: P-pooling (and, with the registry, the paper's baselines)."""

from lit_ppool.layers.ppool import DEFAULT_ALPHA_MAX, PPool2d
from lit_ppool.layers.ppool import GlobalPPool2d

__all__ = ["DEFAULT_ALPHA_MAX", "PPool2d"]
__all__ += ["GlobalPPool2d"]
