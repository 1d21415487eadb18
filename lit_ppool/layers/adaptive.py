"""Adaptive P-pooling: alpha predicted for every window from the input by a small side branch.

:class:`AdaptivePPool2d` is the "dense p-norm" variant of P-pooling from the paper's public
code: instead of one learned alpha per layer (or channel), a depthwise side branch computes an
alpha for every output window, so one layer can pool like max on a thin crack and like
average on flat road in the same image. The pooling itself is :func:`lit_ppool.p_pool2d` with
that dense alpha, with its numerical rules and exact gradients into the branch.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from lit_ppool.functional import (
    _check_input,
    _check_num_channels,
    _size_2_t,
    p_pool2d,
    pool_geometry,
    pool_output_shape,
)
from lit_ppool.kernels.common import pad_amounts
from lit_ppool.layers.geometry import check_channel_count, geometry_repr, store_geometry
from lit_ppool.layers.ppool import _ProjectedClamp

__all__ = ["ADAPTIVE_ALPHA_INIT", "ADAPTIVE_ALPHA_RANGE", "AdaptivePPool2d"]

ADAPTIVE_ALPHA_RANGE = (1.0, 50.0)
"""The range the predicted alpha is clamped to, as published."""

ADAPTIVE_ALPHA_INIT = 30.0
"""The initial bias of the branch's last convolution, as published: every window starts near max pooling."""


class AdaptivePPool2d(nn.Module):
    """P-pooling with an alpha predicted for every window from the input.

    .. math::

        \\alpha = \\operatorname{clamp}\\big(b + w \\cdot \\operatorname{PReLU}(\\operatorname{dwconv}_{k,s}(x)),
        \\ \\alpha_{min}, \\alpha_{max}\\big), \\qquad
        y = \\frac{\\sum_{i \\in R} x_i^{\\alpha + 1}}{\\sum_{i \\in R} x_i^{\\alpha}}

    The side branch, as published with the paper's code: a depthwise convolution with the
    pool's own kernel, stride, padding and dilation (no bias), a per-channel PReLU, and a
    depthwise 1x1 convolution whose bias starts at ``alpha_init``; its output, one alpha per
    output window and channel, is clamped to ``[alpha_min, alpha_max]`` and pools the input
    through :func:`lit_ppool.p_pool2d`, whose gradient flows into the alpha map and so into
    the branch. Differences from the published code, on purpose:

    * the clamp's gradient is kept where it pulls alpha back into the range (as for
      :class:`lit_ppool.PPool2d`) instead of being zero outside it;
    * negative inputs follow :func:`lit_ppool.p_pool2d`'s rule (weighted as zero, averaged
      with their own value) instead of being shifted by the channel's minimum;
    * any geometry of ``nn.MaxPool2d`` and rectangular inputs; the branch's convolution sees
      zero padding where the pool pads (padded positions never enter the pooling itself).

    Same constructor geometry, window rule and output shape as :class:`torch.nn.MaxPool2d`.
    The branch adds ``C * (k_h k_w + 3)`` parameters and one output-sized alpha map per
    forward. It needs the channel count (:func:`lit_ppool.swap_pooling` measures it with a
    probe forward). Its parameters are alpha parameters: :class:`lit_ppool.PPoolSegmentationModule`
    trains them in the alpha group (``alpha_lr_mult``, no weight decay).

    Shape:
        As :class:`torch.nn.MaxPool2d`, with ``C == num_channels``.

    Args:
        kernel_size, stride, padding, dilation, ceil_mode: As :class:`torch.nn.MaxPool2d`.
        num_channels: Input (= output) channels.
        alpha_min: Lower end of the predicted alpha, ``>= 0``.
        alpha_max: Upper end of the predicted alpha, ``> alpha_min``.
        alpha_init: Initial bias of the branch's last convolution, in ``[alpha_min, alpha_max]``.

    Raises:
        ValueError: If the geometry is invalid, ``num_channels`` is not a positive int, the
            range is empty or ``alpha_init`` lies outside it, or an input has another channel
            count.

    Example:
        >>> pool = AdaptivePPool2d(2, num_channels=3)
        >>> pool(torch.rand(1, 3, 8, 8)).shape, pool.alpha_map(torch.rand(1, 3, 8, 8)).shape
        (torch.Size([1, 3, 4, 4]), torch.Size([1, 3, 4, 4]))
    """

    def __init__(
        self,
        kernel_size: _size_2_t,
        stride: _size_2_t | None = None,
        padding: _size_2_t = 0,
        dilation: _size_2_t = 1,
        ceil_mode: bool = False,
        *,
        num_channels: int | None = None,
        alpha_min: float = ADAPTIVE_ALPHA_RANGE[0],
        alpha_max: float = ADAPTIVE_ALPHA_RANGE[1],
        alpha_init: float = ADAPTIVE_ALPHA_INIT,
    ) -> None:
        super().__init__()
        geometry = store_geometry(self, kernel_size, stride, padding, dilation, ceil_mode)
        self.num_channels = check_channel_count(num_channels, "p_adaptive")
        _check_alpha_range(alpha_min, alpha_max, alpha_init)
        self.alpha_min, self.alpha_max, self.alpha_init = float(alpha_min), float(alpha_max), float(alpha_init)
        # the input is padded to the pool's windows first (symmetric padding and ceil_mode), so no conv padding
        self.window_conv = nn.Conv2d(
            num_channels, num_channels, geometry.kernel_size, geometry.stride, 0, geometry.dilation,
            groups=num_channels, bias=False,
        )
        self.activation = nn.PReLU(num_channels)
        self.alpha_conv = nn.Conv2d(num_channels, num_channels, 1, groups=num_channels)
        nn.init.constant_(self.alpha_conv.bias, self.alpha_init)

    def init_options(self) -> dict:
        """The non-geometry constructor keywords that rebuild this layer (the branch's weights are in the state_dict)."""
        return {
            "num_channels": self.num_channels,
            "alpha_min": self.alpha_min,
            "alpha_max": self.alpha_max,
            "alpha_init": self.alpha_init,
        }

    def forward(self, input: Tensor) -> Tensor:
        return self.pool_with_padding(input, self.padding, self.ceil_mode)

    def pool_with_padding(self, input: Tensor, padding: _size_2_t, ceil_mode: bool) -> Tensor:
        """``forward`` with another ``padding`` and ``ceil_mode`` (used for dynamic "same" padding)."""
        alpha = self.alpha_map(input, padding, ceil_mode)
        return p_pool2d(input, alpha, self.kernel_size, self.stride, padding, self.dilation, ceil_mode)

    def alpha_map(self, input: Tensor, padding: _size_2_t | None = None, ceil_mode: bool | None = None) -> Tensor:
        """The alpha the layer pools ``input`` with: one value per output window and channel.

        Args:
            input: ``(N, C, H, W)`` or ``(C, H, W)``, as for ``forward``.
            padding, ceil_mode: The geometry to predict for (default: the layer's own).

        Returns:
            The clamped alpha map, the output's shape (``(N, C, H_out, W_out)`` or
            ``(C, H_out, W_out)``), differentiable with respect to the branch and the input.
        """
        _check_input(input)
        _check_num_channels(input, self.num_channels, type(self).__name__)
        padding = self.padding if padding is None else padding
        ceil_mode = self.ceil_mode if ceil_mode is None else ceil_mode
        geometry = pool_geometry(self.kernel_size, self.stride, padding, self.dilation, ceil_mode)
        size = list(input.shape[-2:])
        out_size = pool_output_shape(tuple(size), geometry)
        pads = pad_amounts(size, list(out_size), *(list(pair) for pair in geometry[:4]))
        unbatched = input.dim() == 3
        x = F.pad(input.unsqueeze(0) if unbatched else input, pads)
        raw = self.alpha_conv(self.activation(self.window_conv(x)))
        raw = raw[..., : out_size[0], : out_size[1]]  # windows past the last one that pooling keeps (ceil_mode)
        alpha = _ProjectedClamp.apply(raw, self.alpha_min, self.alpha_max)
        return alpha.squeeze(0) if unbatched else alpha

    def extra_repr(self) -> str:
        return (
            f"{geometry_repr(self)}, num_channels={self.num_channels}, "
            f"alpha_range=[{self.alpha_min:g}, {self.alpha_max:g}], alpha_init={self.alpha_init:g}"
        )


def _check_alpha_range(alpha_min, alpha_max, alpha_init) -> None:
    numbers = {"alpha_min": alpha_min, "alpha_max": alpha_max, "alpha_init": alpha_init}
    for name, value in numbers.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"Expected argument `{name}` to be a finite number, but got {value!r}.")
    if not 0 <= alpha_min < alpha_max:
        raise ValueError(
            f"Expected 0 <= alpha_min < alpha_max, but got alpha_min={alpha_min}, alpha_max={alpha_max}."
        )
    if not alpha_min <= alpha_init <= alpha_max:
        raise ValueError(
            f"Expected argument `alpha_init` to be in [alpha_min={alpha_min}, alpha_max={alpha_max}], but got {alpha_init}."
        )
