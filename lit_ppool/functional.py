"""Functional polynomial pooling (P-pooling).

For one pooling window :math:`R` of non-negative inputs :math:`x_i`,

.. math::

    y = \\frac{\\sum_{i \\in R} x_i^{\\alpha + 1}}{\\sum_{i \\in R} x_i^{\\alpha}}
      = \\sum_{i \\in R} w_i x_i, \\qquad
    w = \\operatorname{softmax}_{i \\in R}\\left(\\alpha \\log \\tilde{x}_i\\right),
    \\quad \\tilde{x}_i = \\max(x_i, \\varepsilon)

with :math:`\\alpha \\ge 0`. :math:`\\alpha = 0` is average pooling and
:math:`\\alpha \\to \\infty` is max pooling, forward and backward.

Numerical rules (the definition the tests check against a float64 oracle):

* The weights are computed from :math:`\\tilde{x} = \\max(x, \\varepsilon)` with
  ``EPS = 1e-6``, stabilised by the window maximum: :math:`u_i = (\\tilde{x}_i /
  \\max_R \\tilde{x})^{\\alpha} \\in (0, 1]`, so nothing overflows for any
  :math:`\\alpha` and no window divides 0 by 0. The floor keeps the output continuous
  at :math:`\\alpha \\to 0^+` on ReLU maps, where zeros are common: with a plain
  :math:`x^\\alpha` a zero would weigh 1 at :math:`\\alpha = 0` and 0 at any
  :math:`\\alpha > 0`.
* Gradient at :math:`x_i < \\varepsilon` (zeros included): the weight is locally
  constant there, so :math:`\\partial y / \\partial x_i = w_i`. Elsewhere it is the exact
  :math:`w_i (1 + \\alpha (x_i - y) / x_i)`.
* Negative inputs are outside the method's domain. They are weighted as if they were
  0 (weight :math:`\\varepsilon^\\alpha`) but enter the average with their own value,
  so the output stays a convex combination of the window (within its [min, max]),
  :math:`\\alpha = 0` is still exact average pooling, and nothing becomes NaN.
* NaN anywhere in a window makes that output NaN; ``inf`` in a window gives NaN.
* Padded positions never contribute (as in max pooling and
  ``count_include_pad=False``). A window made only of padding, possible with dilation,
  outputs 0 (``F.max_pool2d`` gives ``-inf`` there).
* Inputs of any floating dtype; the arithmetic runs in at least float32 (float64 stays
  float64) with autocast disabled inside, and the output has the input's dtype.

Implementations (:mod:`lit_ppool.kernels.dispatch`): a fused C++ kernel for float32,
float16 and bfloat16 on CPU, Triton kernels on CUDA, and the exact reference path (plain
torch ops) for float64, under ``torch.compile``/``torch.jit`` tracing, or when forced with
``LIT_PPOOL_BACKEND=reference`` / :func:`lit_ppool.kernels.set_backend`. Each takes every
form of alpha (one value, one per channel, one per window). All follow the rules above and are
tested against the reference path run in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple, Union

import torch
from torch import Tensor

from lit_ppool.kernels.common import EPS
from lit_ppool.kernels.dispatch import select_function

__all__ = ["EPS", "PoolGeometry", "p_pool2d", "pool_geometry", "pool_output_shape", "pool_output_size"]

_size_2_t = Union[int, Sequence[int]]  # noqa: UP007 (a runtime alias: kept a typing.Union, not a types.UnionType)


class PoolGeometry(NamedTuple):
    """Validated 2-d pooling geometry, every field an ``(h, w)`` pair."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    ceil_mode: bool


def _pair(value: _size_2_t, name: str) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, Sequence) and len(value) in (1, 2) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return (value[0], value[-1])
    raise TypeError(f"Expected argument `{name}` to be an int or a pair of ints, but got {value!r}.")


def pool_geometry(
    kernel_size: _size_2_t,
    stride: _size_2_t | None = None,
    padding: _size_2_t = 0,
    dilation: _size_2_t = 1,
    ceil_mode: bool = False,
) -> PoolGeometry:
    """Validate pooling arguments the way ``torch.nn.MaxPool2d`` does and return them as pairs.

    ``stride=None`` (or an empty sequence) means ``stride = kernel_size``.

    Raises:
        TypeError: If an argument is not an int or a pair of ints.
        ValueError: If a size is not positive, or padding exceeds half the kernel size.
    """
    kernel = _pair(kernel_size, "kernel_size")
    stride_ = kernel if stride is None or (isinstance(stride, Sequence) and len(stride) == 0) else _pair(stride, "stride")
    pad = _pair(padding, "padding")
    dil = _pair(dilation, "dilation")
    for name, pair, low in (("kernel_size", kernel, 1), ("stride", stride_, 1), ("dilation", dil, 1), ("padding", pad, 0)):
        if min(pair) < low:
            raise ValueError(f"Expected argument `{name}` to be >= {low}, but got {pair}.")
    if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:
        raise ValueError(
            f"Expected argument `padding` to be at most half of `kernel_size` (as in torch pooling), "
            f"but got padding={pad} with kernel_size={kernel}."
        )
    return PoolGeometry(kernel, stride_, pad, dil, bool(ceil_mode))


def pool_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int, ceil_mode: bool) -> int:
    """Output length along one axis, by the same rule as ``torch.nn.MaxPool2d``.

    .. math::

        L_{out} = \\left\\lfloor \\frac{L + 2p - d(k - 1) - 1}{s} \\right\\rfloor + 1

    (``ceil`` with ``ceil_mode``, dropping a last window that would start in the right
    padding). TorchScript-compatible.
    """
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def pool_output_shape(size: tuple[int, int], geometry: PoolGeometry) -> tuple[int, int]:
    """Output ``(H, W)`` of a pooling with ``geometry`` on an input of spatial ``size``.

    Raises:
        ValueError: If the input is too small for the window (an output side below 1).
    """
    out_size = tuple(
        pool_output_size(size[d], geometry.kernel_size[d], geometry.stride[d], geometry.padding[d], geometry.dilation[d], geometry.ceil_mode)
        for d in range(2)
    )
    if min(out_size) < 1:
        raise ValueError(
            f"Input of spatial size {tuple(size)} is too small for kernel_size={geometry.kernel_size}, "
            f"stride={geometry.stride}, padding={geometry.padding}, dilation={geometry.dilation}: "
            f"the output would be {out_size}. Use a larger input or a smaller window."
        )
    return out_size


def _check_input(input: Tensor) -> None:
    if not isinstance(input, Tensor):
        raise TypeError(f"Expected argument `input` to be a torch.Tensor, but got {type(input).__name__}.")
    if input.dim() not in (3, 4):
        raise ValueError(
            f"Expected argument `input` to be a 3D (C, H, W) or 4D (N, C, H, W) tensor, "
            f"but got shape {tuple(input.shape)}."
        )
    if not input.is_floating_point():
        raise TypeError(
            f"Expected argument `input` to be a floating-point tensor, but got dtype {input.dtype}. "
            "Convert it with `input.float()`."
        )


def _check_num_channels(input: Tensor, num_channels: int | None, layer: str) -> None:
    """Raise if a layer built for ``num_channels`` input channels gets another count (``None``: any)."""
    if num_channels is not None and (input.dim() < 3 or input.shape[-3] != num_channels):
        raise ValueError(
            f"{layer} was built with num_channels={num_channels}, but got an input of "
            f"shape {tuple(input.shape)}. Build it with the input's channel count."
        )


def _as_alpha_tensor(alpha: float | Tensor, input: Tensor, out_shape: tuple[int, int, int, int]) -> Tensor:
    """``alpha`` as a tensor the kernels take: ``(1,)`` or ``(C,)`` values, or a dense 4-d map.

    A 4-d tensor is a dense alpha: it must broadcast to the output's shape ``(N, C, H_out,
    W_out)``. One that varies over channels only, ``(1, C, 1, 1)`` or ``(1, 1, 1, 1)``, is
    returned flat, as the one-per-channel or one-per-layer alpha it is.
    """
    channels = out_shape[1]
    if isinstance(alpha, Tensor):
        if not alpha.is_floating_point():
            alpha = alpha.to(torch.get_default_dtype())
        if alpha.dim() == 4:
            return _dense_alpha(alpha, out_shape)
        if alpha.numel() not in (1, channels):
            raise ValueError(
                f"Expected argument `alpha` to hold 1 value (one per layer) or {channels} values (one per "
                f"channel), or to be a map that broadcasts to the output's shape {tuple(out_shape)} (one per "
                f"window), but got shape {tuple(alpha.shape)}."
            )
        return alpha.reshape(-1)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"Expected argument `alpha` to be a float or a tensor, but got {type(alpha).__name__}.")
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"Expected argument `alpha` to be a finite number >= 0, but got {alpha}.")
    return torch.tensor([float(alpha)], dtype=torch.promote_types(input.dtype, torch.float32), device=input.device)


def _dense_alpha(alpha: Tensor, out_shape: tuple[int, int, int, int]) -> Tensor:
    """A 4-d alpha checked against the output's shape; flat where it varies over channels only.

    Under ``torch.compile``/``torch.export`` tracing it is passed on as it is: comparing its sizes
    with 1 would specialise the traced graph to the example's batch size. So a traced map of the
    wrong shape is not refused there (it broadcasts the output); one eager call checks it.
    """
    if torch.compiler.is_compiling():
        return alpha
    if any(a not in (1, o) for a, o in zip(alpha.shape, out_shape)):
        raise ValueError(
            f"Expected a 4-d argument `alpha` (one value per window) to broadcast to the output's shape "
            f"{tuple(out_shape)}, but got shape {tuple(alpha.shape)}. Compute it at the output's size, "
            "e.g. with a convolution of the pooling's kernel, stride and padding."
        )
    if alpha.shape[0] == 1 and alpha.shape[2:] == (1, 1):
        return alpha.reshape(-1)
    return alpha


def p_pool2d(
    input: Tensor,
    alpha: float | Tensor,
    kernel_size: _size_2_t,
    stride: _size_2_t | None = None,
    padding: _size_2_t = 0,
    dilation: _size_2_t = 1,
    ceil_mode: bool = False,
) -> Tensor:
    """Polynomial pooling over 2-d windows: :math:`y = \\sum x^{\\alpha+1} / \\sum x^{\\alpha}`.

    A learnable pooling between average (``alpha = 0``) and max (``alpha -> inf``) pooling.
    The window geometry, padding rule and output size are those of
    :func:`torch.nn.functional.max_pool2d`; padded positions never contribute. See the
    module docstring for the numerical rules (the ``EPS`` floor, zeros, negatives, NaN).

    Shape:
        - Input: :math:`(N, C, H_{in}, W_{in})` or :math:`(C, H_{in}, W_{in})`.
        - Output: :math:`(N, C, H_{out}, W_{out})` or :math:`(C, H_{out}, W_{out})` with
          :math:`H_{out} = \\lfloor (H_{in} + 2p - d(k - 1) - 1) / s \\rfloor + 1`
          (``ceil`` in ``ceil_mode``), as for ``max_pool2d``.

    Args:
        input: Non-negative activations (e.g. post-ReLU), any floating dtype.
        alpha: The exponent, ``>= 0``: a float, a tensor with one value (per layer) or
            ``C`` values (per channel), or a dense map with one value per window: a 4-d
            tensor that broadcasts to the output's shape :math:`(N, C, H_{out}, W_{out})`
            (3-d :math:`(C, H_{out}, W_{out})` for an unbatched input), as
            :class:`lit_ppool.AdaptivePPool2d` predicts it. Gradients flow into every form.
            A negative float is rejected everywhere. A tensor's
            sign is checked only by the fused CPU kernel (float32/float16/bfloat16 CPU
            input, backend ``auto`` or ``cpp``, not under ``torch.compile``/``torch.jit``
            tracing); float64, the ``reference`` backend, tracing and the GPU (where a check
            would cost a device sync) use it as given: a negative value then pools below
            the window's average. :class:`lit_ppool.PPool2d` keeps its alpha in range.
        kernel_size: Window size, int or ``(kh, kw)``.
        stride: Window stride; default ``kernel_size``.
        padding: Implicit padding on both sides, at most half the kernel size.
        dilation: Spacing between window elements.
        ceil_mode: Use ``ceil`` instead of ``floor`` for the output size.

    Returns:
        The pooled tensor, in the dtype of ``input``.

    Raises:
        TypeError: If ``input`` is not a floating tensor or an argument has the wrong type.
        ValueError: If the shape, geometry or alpha is invalid (a negative tensor alpha only
            on the fused CPU kernel, see ``alpha``), or the input is too small.

    Example:
        >>> x = torch.tensor([[[[1.0, 3.0], [0.0, 4.0]]]])
        >>> p_pool2d(x, 0.0, 2)  # average
        tensor([[[[2.]]]])
        >>> p_pool2d(x, 1.0, 2)  # (1 + 9 + 0 + 16) / (1 + 3 + 0 + 4)
        tensor([[[[3.2500]]]])
        >>> p_pool2d(torch.cat([x, x], dim=-1), torch.tensor([[[[0.0, 1.0]]]]), 2)  # one alpha per window
        tensor([[[[2.0000, 3.2500]]]])
    """
    _check_input(input)
    geometry = pool_geometry(kernel_size, stride, padding, dilation, ceil_mode)
    unbatched = input.dim() == 3
    x = input.unsqueeze(0) if unbatched else input
    out_size = pool_output_shape(tuple(x.shape[-2:]), geometry)
    if unbatched and isinstance(alpha, Tensor) and alpha.dim() == 3:
        alpha = alpha.unsqueeze(0)  # a (C, H_out, W_out) map of an unbatched input
    alpha_t = _as_alpha_tensor(alpha, x, (x.shape[0], x.shape[1], *out_size))

    out = select_function(x, alpha_t).apply(x, alpha_t, geometry, out_size)
    return out.squeeze(0) if unbatched else out
