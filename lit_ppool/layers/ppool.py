"""The P-pooling layers: :class:`PPool2d` (a drop-in for ``nn.MaxPool2d``) and :class:`GlobalPPool2d`.

Both are siblings over :class:`PPoolBase`, which holds the learnable alpha; code that
collects P-pooling layers (alpha parameter groups, logging, baking) looks for the base.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lit_ppool.functional import (
    _check_input,
    _check_num_channels,
    _size_2_t,
    p_pool2d,
    pool_output_size,
)
from lit_ppool.kernels.reference import p_pool2d_forward
from lit_ppool.layers.geometry import geometry_repr, store_geometry

__all__ = ["DEFAULT_ALPHA_MAX", "GlobalPPool2d", "PPool2d", "PPoolBase"]

DEFAULT_ALPHA_MAX = 100.0
"""Upper bound of a learned alpha. At 100 a value at 95% of the window maximum weighs
0.6% of it, which is max pooling for all practical purposes; larger values only slow
the learning signal down."""


class _ProjectedClamp(torch.autograd.Function):
    """``clamp(raw, lower, upper)`` whose gradient never strands ``raw`` outside the range.

    Inside the range the gradient is the identity. At or beyond a bound it is kept where a
    descent step (``-grad``) moves ``raw`` back into the range and zeroed where it would push
    ``raw`` further out. So alpha never leaves ``[0, upper]``, a plain clamp's dead zone
    (zero gradient outside the range) cannot trap it, and ``raw`` only overshoots a bound by
    the optimiser's momentum.
    """

    @staticmethod
    def forward(ctx, raw: Tensor, lower: float, upper: float) -> Tensor:
        ctx.save_for_backward(raw)
        ctx.lower, ctx.upper = lower, upper
        return raw.clamp(lower, upper)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (raw,) = ctx.saved_tensors
        outward = ((raw <= ctx.lower) & (grad > 0)) | ((raw >= ctx.upper) & (grad < 0))
        return grad.masked_fill(outward, 0.0), None, None


class PPoolBase(nn.Module):
    """The learnable alpha that :class:`PPool2d` and :class:`GlobalPPool2d` share.

    Alpha is stored as the parameter ``alpha_raw`` (equal to alpha while inside the range)
    and used through a clamp to ``[0, alpha_max]`` whose gradient pulls an out-of-range
    ``alpha_raw`` back instead of freezing it. :attr:`alpha` is the effective value that
    ``forward`` uses; log and plot that one. Subclasses implement ``_forward_eager`` and the
    TorchScript-compatible ``_forward_scripted``.

    Args:
        alpha_init: Initial alpha, in ``[0, alpha_max]``.
        num_channels: ``None`` for one alpha per layer (the paper's form); an int ``C`` for
            one alpha per channel.
        alpha_max: Upper bound of alpha.
        learnable: If ``False``, alpha is a fixed buffer instead of a parameter.

    Raises:
        ValueError: If ``alpha_init`` is outside ``[0, alpha_max]``, ``alpha_max`` is not
            positive, or ``num_channels`` is not a positive int.

    Example:
        >>> isinstance(PPool2d(2), PPoolBase), isinstance(GlobalPPool2d(), PPoolBase)
        (True, True)
    """

    __jit_unused_properties__ = ["alpha"]  # scripted forward clamps alpha_raw itself

    def __init__(
        self,
        *,
        alpha_init: float = 1.0,
        num_channels: int | None = None,
        alpha_max: float = DEFAULT_ALPHA_MAX,
        learnable: bool = True,
    ) -> None:
        super().__init__()
        if not (isinstance(alpha_max, (int, float)) and math.isfinite(alpha_max) and alpha_max > 0):
            raise ValueError(f"Expected argument `alpha_max` to be a finite number > 0, but got {alpha_max!r}.")
        if not (isinstance(alpha_init, (int, float)) and 0 <= alpha_init <= alpha_max):
            raise ValueError(
                f"Expected argument `alpha_init` to be in [0, alpha_max={alpha_max}], but got {alpha_init!r}."
            )
        if num_channels is not None and not (isinstance(num_channels, int) and num_channels > 0):
            raise ValueError(f"Expected argument `num_channels` to be None or an int > 0, but got {num_channels!r}.")
        self.num_channels = num_channels
        self.alpha_max = float(alpha_max)
        self.alpha_init = float(alpha_init)
        initial = torch.full((num_channels or 1,) if num_channels else (), float(alpha_init))
        if learnable:
            self.alpha_raw = nn.Parameter(initial)
        else:
            self.register_buffer("alpha_raw", initial)

    def init_options(self) -> dict:
        """The non-geometry constructor keywords that rebuild this layer (alpha itself is in the state_dict)."""
        learnable = isinstance(self.alpha_raw, nn.Parameter)
        return {"num_channels": self.num_channels, "alpha_max": self.alpha_max, "learnable": learnable}

    @property
    def alpha(self) -> Tensor:
        """The effective alpha, ``alpha_raw`` clamped to ``[0, alpha_max]``: what ``forward`` uses."""
        return _ProjectedClamp.apply(self.alpha_raw, 0.0, self.alpha_max)

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            return self._forward_scripted(input)
        return self._forward_eager(input)

    @torch.jit.unused
    def _forward_eager(self, input: Tensor) -> Tensor:
        raise NotImplementedError

    def _forward_scripted(self, input: Tensor) -> Tensor:
        raise NotImplementedError

    def _check_channels(self, input: Tensor) -> None:
        _check_num_channels(input, self.num_channels, type(self).__name__)

    def _alpha_repr(self) -> str:
        """``alpha=...`` for ``extra_repr``: the value, or per-channel statistics."""
        alpha = self.alpha_raw.detach().float().clamp(0.0, self.alpha_max)
        if self.num_channels is None:
            return f"alpha={alpha.item():.4f}"
        return (
            f"alpha=[{self.num_channels} channels: mean {alpha.mean().item():.4f}, "
            f"min {alpha.min().item():.4f}, max {alpha.max().item():.4f}]"
        )


class PPool2d(PPoolBase):
    """Polynomial pooling with a learnable exponent alpha (Wei et al., CVPR 2019).

    .. math::

        y = \\frac{\\sum_{i \\in R} x_i^{\\alpha + 1}}{\\sum_{i \\in R} x_i^{\\alpha}},
        \\qquad 0 \\le \\alpha \\le \\alpha_{max}

    ``alpha = 0`` is average pooling, large alpha is max pooling. Same constructor geometry,
    window rule and output shape as :class:`torch.nn.MaxPool2d`, so it replaces one in place.
    The numerics (zeros, negatives, NaN) are documented in :mod:`lit_ppool.functional`;
    alpha (``alpha_raw``, :attr:`alpha`, ``alpha_max``) is :class:`PPoolBase`'s.

    Shape:
        - Input: :math:`(N, C, H_{in}, W_{in})` or :math:`(C, H_{in}, W_{in})`.
        - Output: :math:`(N, C, H_{out}, W_{out})` or :math:`(C, H_{out}, W_{out})`, with
          :math:`H_{out} = \\lfloor (H_{in} + 2p - d(k - 1) - 1) / s \\rfloor + 1`
          (``ceil`` in ``ceil_mode``), as for ``MaxPool2d``.

    Args:
        kernel_size: Window size.
        stride: Window stride; default ``kernel_size``.
        padding: Implicit padding on both sides (never contributes), at most ``kernel_size // 2``.
        dilation: Spacing between window elements.
        ceil_mode: Use ``ceil`` instead of ``floor`` for the output size.
        alpha_init: Initial alpha, in ``[0, alpha_max]``.
        num_channels: ``None`` for one alpha per layer (the paper's form); an int ``C`` for
            one alpha per channel.
        alpha_max: Upper bound of alpha.
        learnable: If ``False``, alpha is a fixed buffer instead of a parameter.

    Raises:
        ValueError: If the geometry is invalid, ``alpha_init`` is outside ``[0, alpha_max]``,
            ``alpha_max`` is not positive, or ``num_channels`` is not a positive int.

    Example:
        >>> pool = PPool2d(2, alpha_init=0.0)
        >>> pool(torch.tensor([[[[1.0, 3.0], [0.0, 4.0]]]])).detach()
        tensor([[[[2.]]]])
        >>> pool
        PPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False, alpha=0.0000)
    """

    def __init__(
        self,
        kernel_size: _size_2_t,
        stride: _size_2_t | None = None,
        padding: _size_2_t = 0,
        dilation: _size_2_t = 1,
        ceil_mode: bool = False,
        *,
        alpha_init: float = 1.0,
        num_channels: int | None = None,
        alpha_max: float = DEFAULT_ALPHA_MAX,
        learnable: bool = True,
    ) -> None:
        super().__init__(alpha_init=alpha_init, num_channels=num_channels, alpha_max=alpha_max, learnable=learnable)
        geometry = store_geometry(self, kernel_size, stride, padding, dilation, ceil_mode)
        # validated (h, w) pairs for the TorchScript path
        self._kernel, self._stride, self._padding, self._dilation = (list(pair) for pair in geometry[:4])

    @torch.jit.unused
    def _forward_eager(self, input: Tensor) -> Tensor:
        return self.pool_with_padding(input, self.padding, self.ceil_mode)

    def pool_with_padding(self, input: Tensor, padding: _size_2_t, ceil_mode: bool) -> Tensor:
        """``forward`` with another ``padding`` and ``ceil_mode`` (used for dynamic "same" padding)."""
        self._check_channels(input)
        return p_pool2d(input, self.alpha, self.kernel_size, self.stride, padding, self.dilation, ceil_mode)

    def _forward_scripted(self, input: Tensor) -> Tensor:
        """The same function through plain ops (autograd-differentiable), for ``torch.jit.script``."""
        batched = input.unsqueeze(0) if input.dim() == 3 else input
        out_size = [
            pool_output_size(batched.shape[2 + d], self._kernel[d], self._stride[d], self._padding[d], self._dilation[d], self.ceil_mode)
            for d in range(2)
        ]
        alpha = self.alpha_raw.clamp(0.0, self.alpha_max)
        output, _ = p_pool2d_forward(batched, alpha, self._kernel, self._stride, self._padding, self._dilation, out_size)
        output = output.to(input.dtype)
        return output.squeeze(0) if input.dim() == 3 else output

    def extra_repr(self) -> str:
        return f"{geometry_repr(self)}, {self._alpha_repr()}"


class GlobalPPool2d(PPoolBase):
    """Global P-pooling: one window over the whole ``(H, W)`` map, a drop-in for ``nn.AdaptiveAvgPool2d(1)``.

    .. math::

        y_{n,c} = \\frac{\\sum_{h,w} x_{n,c,h,w}^{\\alpha + 1}}{\\sum_{h,w} x_{n,c,h,w}^{\\alpha}}

    ``alpha = 0`` is ``adaptive_avg_pool2d(x, 1)``, large alpha is ``adaptive_max_pool2d(x, 1)``.
    It is :func:`~lit_ppool.functional.p_pool2d` with ``kernel_size`` the input's spatial
    size. A sibling of :class:`PPool2d` over :class:`PPoolBase`, so it has the same alpha
    (the parameter ``alpha_raw``, the effective :attr:`alpha`, ``alpha_max``, per-channel
    alphas and ``learnable``) and is found wherever P-pooling layers are collected. Like
    ``nn.AdaptiveAvgPool2d(1)`` it has ``output_size = 1`` and no window attributes.

    Shape:
        - Input: :math:`(N, C, H, W)` or :math:`(C, H, W)`.
        - Output: :math:`(N, C, 1, 1)` or :math:`(C, 1, 1)`.

    Args:
        alpha_init: Initial alpha, in ``[0, alpha_max]``.
        num_channels: ``None`` for one alpha per layer; an int ``C`` for one alpha per channel.
        alpha_max: Upper bound of alpha.
        learnable: If ``False``, alpha is a fixed buffer instead of a parameter.

    Raises:
        ValueError: If ``alpha_init`` is outside ``[0, alpha_max]``, ``alpha_max`` is not
            positive, or ``num_channels`` is not a positive int.

    Example:
        >>> pool = GlobalPPool2d(alpha_init=0.0)
        >>> pool(torch.tensor([[[[1.0, 3.0], [0.0, 4.0]]]])).detach()
        tensor([[[[2.]]]])
        >>> pool
        GlobalPPool2d(output_size=1, alpha=0.0000)
    """

    def __init__(
        self,
        *,
        alpha_init: float = 1.0,
        num_channels: int | None = None,
        alpha_max: float = DEFAULT_ALPHA_MAX,
        learnable: bool = True,
    ) -> None:
        super().__init__(alpha_init=alpha_init, num_channels=num_channels, alpha_max=alpha_max, learnable=learnable)
        self.output_size = 1

    @torch.jit.unused
    def _forward_eager(self, input: Tensor) -> Tensor:
        _check_input(input)  # before reading the spatial size
        self._check_channels(input)
        return p_pool2d(input, self.alpha, (input.shape[-2], input.shape[-1]))

    def _forward_scripted(self, input: Tensor) -> Tensor:
        """The same function through plain ops (autograd-differentiable), for ``torch.jit.script``."""
        batched = input.unsqueeze(0) if input.dim() == 3 else input
        window = [batched.shape[2], batched.shape[3]]
        alpha = self.alpha_raw.clamp(0.0, self.alpha_max)
        output, _ = p_pool2d_forward(batched, alpha, window, window, [0, 0], [1, 1], [1, 1])
        output = output.to(input.dtype)
        return output.squeeze(0) if input.dim() == 3 else output

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, {self._alpha_repr()}"
