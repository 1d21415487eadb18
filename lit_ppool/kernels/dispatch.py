"""Which P-pooling implementation runs: the backend switch and the automatic choice.

Backends:

* ``"reference"``: plain torch ops in a custom autograd Function (:mod:`.reference`); exact,
  any device and dtype. Used for float64, while ``torch.compile``/``torch.jit`` trace a model,
  and whenever no fused kernel fits.
* ``"cpp"``: the fused CPU kernel (:mod:`.cpu`), float32/float16/bfloat16 CPU tensors.
* ``"triton"``: the fused CUDA kernels (:mod:`.triton_kernels`), float32/float16/bfloat16 GPU tensors
  (also CPU tensors under ``TRITON_INTERPRET=1``, which is how they are tested without a GPU).
* ``"auto"`` (default): ``triton`` on CUDA, ``cpp`` on CPU, ``reference`` otherwise.

Choose with the ``LIT_PPOOL_BACKEND`` environment variable (read at the first call) or at run time
with :func:`set_backend` / :func:`use_backend`. ``reference`` is the switch for debugging and
parity checks.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

import torch
from torch import Tensor

from lit_ppool.kernels import cpu
from lit_ppool.kernels.reference import PPool2dFunction

__all__ = ["BACKENDS", "get_backend", "select_function", "set_backend", "use_backend"]

BACKENDS = ("auto", "reference", "cpp", "triton")
_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _checked(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"Expected {source} to be one of {', '.join(BACKENDS)}, but got {name!r}.")
    return name


_backend: str | None = None  # None until the first call reads LIT_PPOOL_BACKEND


def get_backend() -> str:
    """The P-pooling backend in use: the one set, else ``LIT_PPOOL_BACKEND``, else ``"auto"``.

    Raises:
        ValueError: If ``LIT_PPOOL_BACKEND`` names no backend (checked here, at the first call).
    """
    global _backend
    if _backend is None:
        _backend = _checked(os.environ.get("LIT_PPOOL_BACKEND", "auto"), "environment variable `LIT_PPOOL_BACKEND`")
    return _backend


def set_backend(name: str) -> str:
    """Set the P-pooling backend for every later call; returns the previous one.

    Example:
        >>> previous = set_backend("reference")
        >>> get_backend()
        'reference'
        >>> _ = set_backend(previous)
    """
    global _backend
    previous, _backend = get_backend(), _checked(name, "argument `name`")
    return previous


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Context manager form of :func:`set_backend`."""
    previous = set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def _triton_function():
    from lit_ppool.kernels.triton_kernels import TritonPPool2dFunction

    return TritonPPool2dFunction


def select_function(input: Tensor, alpha: Tensor) -> type[torch.autograd.Function]:
    """The autograd Function that pools ``input`` with ``alpha`` under the current backend.

    The choice depends on the input (device, dtype, tracing), not on alpha's form: one value,
    one per channel and a dense map take the same path.
    """
    backend = get_backend()
    if backend == "reference":
        return PPool2dFunction
    if backend != "auto":
        if input.dtype not in _FUSED_DTYPES:
            raise ValueError(
                f"Expected a float32, float16 or bfloat16 input for backend {backend!r}, but got {input.dtype}. "
                "Use set_backend('auto') (float64 then runs on the reference path)."
            )
        if backend == "cpp":
            if input.device.type != "cpu":
                raise ValueError(f"Expected a CPU input for backend 'cpp', but got device {input.device}.")
            if cpu.load_extension() is None:
                raise RuntimeError("The 'cpp' backend is unavailable: its kernel did not build (see the warning).")
            return cpu.CppPPool2dFunction
        return _triton_function()
    if input.dtype not in _FUSED_DTYPES or _tracing():
        return PPool2dFunction
    if input.device.type == "cuda" and _triton_available():
        return _triton_function()
    if input.device.type == "cpu" and cpu.load_extension() is not None:
        return cpu.CppPPool2dFunction
    return PPool2dFunction


@functools.cache
def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True
