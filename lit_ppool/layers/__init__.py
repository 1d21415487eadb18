"""Pooling layers: P-pooling, adaptive P-pooling (and, with the registry, the paper's baselines)."""

from lit_ppool.layers.adaptive import AdaptivePPool2d
from lit_ppool.layers.ppool import DEFAULT_ALPHA_MAX, GlobalPPool2d, PPool2d, PPoolBase

__all__ = ["DEFAULT_ALPHA_MAX", "AdaptivePPool2d", "GlobalPPool2d", "PPool2d", "PPoolBase"]
