"""P-pooling kernels: the exact reference path (plain torch ops inside a custom autograd Function)."""

from lit_ppool.kernels.common import EPS

__all__ = ["EPS"]
