"""P-pooling kernels: the exact reference path, the fused CPU and Triton paths, and the switch between them."""

from lit_ppool.kernels.common import EPS
from lit_ppool.kernels.dispatch import BACKENDS, get_backend, set_backend, use_backend

__all__ = ["BACKENDS", "EPS", "get_backend", "set_backend", "use_backend"]
