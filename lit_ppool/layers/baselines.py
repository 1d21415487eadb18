"""The paper's pooling baselines, all with the constructor geometry of ``nn.MaxPool2d``.

Every layer here takes ``(kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False)``
with torch's meaning and output size (:func:`lit_ppool.functional.pool_output_size`), and,
like :class:`lit_ppool.PPool2d`, padded positions never contribute to a window (the one
documented exception is :class:`StridedConvPool2d`, a convolution, whose zero padding
contributes zeros). Inputs are ``(N, C, H, W)`` or ``(C, H, W)`` of a floating dtype, checked as
:func:`lit_ppool.p_pool2d` checks them (``TypeError`` for an integer tensor); float16/bfloat16
inputs are computed in float32 and returned in their own dtype.

- :class:`AveragePool2d` (``avg``): ``nn.AvgPool2d`` that never counts padding.
- :class:`LpPool2d` (``lp``): Lp-norm pooling, ``torch.nn.LPPool2d``'s formula, optional
  learnable ``p`` and optional power-mean normalisation.
- :class:`MixedPool2d` (``mixed``) and :class:`GatedPool2d` (``gated``): Lee et al. 2016,
  "Generalizing Pooling Functions in Convolutional Neural Networks".
- :class:`DetailPreservingPool2d` (``dpp``): Saeedan et al. 2018, "Detail-Preserving Pooling
  in Deep Networks".
- :class:`StridedConvPool2d` (``strided_conv``): a learnable strided (depthwise) convolution
  initialised to average pooling ("Strided-C" in the P-pooling paper).
- :class:`SoftPool2d` (``softpool``): Stergiou et al. 2021, "Refining activation downsampling
  with SoftPool".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_ppool.functional import (
    PoolGeometry,
    _check_input,
    _check_num_channels,
    _size_2_t,
    pool_geometry,
    pool_output_shape,
)
from lit_ppool.kernels.common import pad_amounts, window
from lit_ppool.layers.geometry import check_channel_count, geometry_repr, store_geometry

__all__ = [
    "AveragePool2d",
    "DetailPreservingPool2d",
    "GatedPool2d",
    "LpPool2d",
    "MixedPool2d",
    "SoftPool2d",
    "StridedConvPool2d",
]


def _inverse_softplus(value: float) -> float:
    """``raw`` with ``softplus(raw) == value`` (``value > 0``)."""
    return value + math.log(-math.expm1(-value))


class _Windows:
    """The windows of one batched input: output size, padded views, and a real-position mask.

    ``values(fill)`` pads the input with ``fill`` on every side that a window can reach
    (symmetric ``padding`` plus what ``ceil_mode`` windows need), ``views(padded)`` yields
    the ``k*k`` output-sized strided views (one per window offset, no copy), and ``masks``
    the matching views of a 0/1 mask of real positions (``None`` when nothing is padded).
    """

    def __init__(self, x: Tensor, geometry: PoolGeometry) -> None:
        self.geometry = geometry
        size = tuple(x.shape[-2:])
        self.out_size = pool_output_shape(size, geometry)
        self.pads = tuple(pad_amounts(list(size), list(self.out_size), *(list(pair) for pair in geometry[:4])))
        self.x = x
        self.offsets = [(i, j) for i in range(geometry.kernel_size[0]) for j in range(geometry.kernel_size[1])]
        if any(self.pads):
            mask = F.pad(x.new_ones((1, 1) + size), self.pads)
            self.masks = [self._view(mask, i, j) for i, j in self.offsets]
        else:
            self.masks = None

    def _view(self, padded: Tensor, i: int, j: int) -> Tensor:
        """Element ``(i, j)`` of every window: an output-sized strided view, no copy."""
        return window(padded, i, j, list(self.out_size), list(self.geometry.stride), list(self.geometry.dilation))

    def values(self, fill: float = 0.0, source: Tensor | None = None) -> Tensor:
        source = self.x if source is None else source
        return F.pad(source, self.pads, value=fill) if any(self.pads) else source

    def views(self, padded: Tensor) -> list[Tensor]:
        return [self._view(padded, i, j) for i, j in self.offsets]

    def count(self) -> Tensor | float:
        """Number of real positions per window (a tensor when padding is involved)."""
        if self.masks is None:
            return float(len(self.offsets))
        return torch.stack(self.masks).sum(0)

    def mean(self) -> Tensor:
        """Window average over real positions only (``count_include_pad=False``)."""
        total = torch.stack(self.views(self.values(0.0))).sum(0)
        return total / self.count()

    def max(self) -> Tensor:
        """Window maximum over real positions only."""
        return torch.stack(self.views(self.values(-math.inf))).amax(0)


class _GeometryPool2d(nn.Module):
    """Common base: torch's geometry attributes, validation, batching and dtype handling.

    Subclasses implement ``_pool(windows) -> Tensor`` on a batched float input; one that
    is built for a channel count sets ``num_channels`` (checked against every input).
    """

    num_channels: int | None = None

    def __init__(
        self,
        kernel_size: _size_2_t,
        stride: _size_2_t | None = None,
        padding: _size_2_t = 0,
        dilation: _size_2_t = 1,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__()
        store_geometry(self, kernel_size, stride, padding, dilation, ceil_mode)

    def forward(self, input: Tensor) -> Tensor:
        return self.pool_with_padding(input, self.padding, self.ceil_mode)

    def pool_with_padding(self, input: Tensor, padding: _size_2_t, ceil_mode: bool) -> Tensor:
        """``forward`` with another ``padding`` and ``ceil_mode`` (used for dynamic "same" padding)."""
        _check_input(input)
        _check_num_channels(input, self.num_channels, type(self).__name__)
        geometry = pool_geometry(self.kernel_size, self.stride, padding, self.dilation, ceil_mode)
        unbatched = input.dim() == 3
        x = input.unsqueeze(0) if unbatched else input
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        out = self._pool(_Windows(x, geometry)).to(input.dtype)
        return out.squeeze(0) if unbatched else out

    def _pool(self, windows: _Windows) -> Tensor:
        raise NotImplementedError

    def init_options(self) -> dict:
        """The non-geometry constructor keywords that rebuild this layer (learned values are in the state_dict)."""
        return {}

    def extra_repr(self) -> str:
        return geometry_repr(self)


class AveragePool2d(nn.AvgPool2d):
    """Average pooling with the registry's constructor, never counting padded positions.

    .. math::

        y = \\frac{1}{|R \\cap \\text{input}|} \\sum_{i \\in R \\cap \\text{input}} x_i

    This is ``nn.AvgPool2d(..., count_include_pad=False)`` (``count_include_pad=True`` can be
    asked for) and equals P-pooling at ``alpha = 0``. ``nn.AvgPool2d`` has no dilation, so
    only ``dilation=1`` is accepted.

    Shape:
        As :class:`torch.nn.AvgPool2d` (and ``MaxPool2d`` with ``dilation=1``).

    Args:
        kernel_size: Window size.
        stride: Window stride; default ``kernel_size``.
        padding: Implicit padding on both sides, at most ``kernel_size // 2``.
        dilation: Must be 1.
        ceil_mode: Use ``ceil`` instead of ``floor`` for the output size.
        count_include_pad: Count padded zeros in the divisor (torch's default, not ours).

    Raises:
        ValueError: If ``dilation != 1`` or the geometry is invalid.

    Example:
        >>> AveragePool2d(2)(torch.tensor([[[[1.0, 3.0], [0.0, 4.0]]]]))
        tensor([[[[2.]]]])
    """

    def __init__(
        self,
        kernel_size: _size_2_t,
        stride: _size_2_t | None = None,
        padding: _size_2_t = 0,
        dilation: _size_2_t = 1,
        ceil_mode: bool = False,
        *,
        count_include_pad: bool = False,
    ) -> None:
        geometry = pool_geometry(kernel_size, stride, padding, dilation, ceil_mode)
        if geometry.dilation != (1, 1):
            raise ValueError(
                f"Expected argument `dilation` to be 1 for average pooling (nn.AvgPool2d has no dilation), "
                f"but got {dilation!r}. Use `p` with alpha_init=0, or another pooling, for dilated windows."
            )
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad)

    def init_options(self) -> dict:
        """The non-geometry constructor keywords that rebuild this layer."""
        return {"count_include_pad": self.count_include_pad}


class LpPool2d(_GeometryPool2d):
    """Lp-norm pooling: ``torch.nn.LPPool2d``'s formula with MaxPool2d geometry.

    .. math::

        y = \\Big(\\sum_{i \\in R} |x_i|^{p}\\Big)^{1/p}
        \\quad\\text{or, with ``normalize``,}\\quad
        y = \\Big(\\frac{1}{|R|}\\sum_{i \\in R} |x_i|^{p}\\Big)^{1/p}

    ``p = 1`` is sum pooling (average with ``normalize``), ``p -> inf`` max pooling. For
    non-negative inputs and no padding this is exactly ``nn.LPPool2d``. Computed as
    ``m * (sum (|x|/m)^p)^(1/p)`` with ``m`` the window's largest ``|x|``, so it neither
    overflows for large ``p`` nor gives infinite gradients on all-zero windows (where
    ``LPPool2d``'s ``0^(1/p)`` does). With ``learnable=True``, ``p = 1 + softplus(norm_type_raw)``
    is a parameter that stays above 1.

    Shape:
        As :class:`torch.nn.MaxPool2d`.

    Args:
        kernel_size, stride, padding, dilation, ceil_mode: As :class:`torch.nn.MaxPool2d`.
        norm_type: The exponent ``p`` (``> 1`` when learnable, ``>= 1`` otherwise).
        learnable: Learn ``p``.
        normalize: Divide the sum by the number of real positions (power mean).

    Raises:
        ValueError: If ``norm_type`` is out of range or the geometry is invalid.

    Example:
        >>> LpPool2d(2, norm_type=2.0)(torch.tensor([[[[3.0, 4.0], [0.0, 0.0]]]]))
        tensor([[[[5.]]]])
    """

    def __init__(
        self,
        kernel_size: _size_2_t,
        stride: _size_2_t | None = None,
        padding: _size_2_t = 0,
        dilation: _size_2_t = 1,
        ceil_mode: bool = False,
        *,
        norm_type: float = 2.0,
        learnable: bool = False,
        normalize: bool = False,
    ) -> None:
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)
        low_ok = norm_type > 1 if learnable else norm_type >= 1
        if isinstance(norm_type, bool) or not isinstance(norm_type, (int, float)) or not math.isfinite(norm_type) or not low_ok:
            raise ValueError(
                f"Expected argument `norm_type` to be a finite number {'> 1 (learnable)' if learnable else '>= 1'}, "
                f"but got {norm_type!r}."
            )
        self.learnable = learnable
        self.normalize = normalize
        if learnable:
            self.norm_type_raw = nn.Parameter(torch.tensor(_inverse_softplus(float(norm_type) - 1.0)))
        else:
            self.register_buffer("norm_type_raw", torch.tensor(float(norm_type)), persistent=False)

    def init_options(self) -> dict:
        """The non-geometry constructor keywords that rebuild this layer (a learned ``p`` is in the state_dict)."""
        options = {"learnable": self.learnable, "normalize": self.normalize}
        if not self.learnable:  # a non-persistent buffer: not in the state_dict
            options["norm_type"] = float(self.norm_type_raw)
        return options

    @property
    def norm_type(self) -> Tensor:
        """The effective exponent ``p``."""
        return 1.0 + F.softplus(self.norm_type_raw) if self.learnable else self.norm_type_raw

    def _pool(self, windows: _Windows) -> Tensor:
        magnitude = windows.values(0.0, windows.x.abs())
        views = windows.views(magnitude)
        # m is a constant scale: y is the same for any m > 0, so it needs no gradient.
        scale = torch.stack(views).amax(0).detach().clamp_min(torch.finfo(magnitude.dtype).tiny)
        p = self.norm_type.to(magnitude.dtype)
        masks = windows.masks or [None] * len(views)
        total = 0.0
        for view, mask in zip(views, masks):
            # (|x|/m)^p through exp/log so that a learnable p gets a finite gradient at x = 0
            term = torch.exp(p * torch.log((view / scale).clamp_min(1e-30)))
            total = total + (term if mask is None else term * mask)
        # total >= 1 wherever the window holds a non-zero value; only all-zero windows are below.
        total = total.clamp_min(1.0)
        if self.normalize:
            total = total / windows.count()
        return scale * total ** (1.0 / p)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, norm_type={float(self.norm_type):.4f}, learnable={self.learnable}, normalize={self.normalize}"


class MixedPool2d(_GeometryPool2d):
    """Mixed max-average pooling with a learned mixing proportion (Lee et al., 2016).

    .. math::

        y = a \\max_{i \\in R} x_i + (1 - a) \\frac{1}{|R|} \\sum_{i \\in R} x_i,
        \\qquad a = \\sigma(\\text{mix\\_raw}) \\in (0, 1)

    One ``a`` per layer (the paper's "per layer" variant). Padded positions take part in
    neither the max nor the average.

    Shape:
        As :class:`torch.nn.MaxPool2d`.

    Args:
        kernel_size, stride, padding, dilation, ceil_mode: As :class:`torch.nn.MaxPool2d`.
        mix_init: Initial ``a``, in ``(0, 1)``.

    Raises:
        ValueError: If ``mix_init`` is not in ``(0, 1)`` or the geometry is invalid.

    Example:
        >>> MixedPool2d(2, mix_init=0.5)(torch.tensor([[[[1.0, 3.0], [0.0, 4.0]]]]))
        tensor([[[[3.]]]], grad_fn=<AddBackward0>)
    """

    def __init__(
        self,
        kernel_size: _size_2_t,
        stride: _size_2_t | None = None,
        padding: _size_2_t = 0,
        dilation: _size_2_t = 1,
        ceil_mode: bool = False,
        *,
        mix_init: float = 0.5,
    ) -> None:
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)
        if isinstance(mix_init, bool) or not isinstance(mix_init, (int, float)) or not 0 < mix_init < 1:
            raise ValueError(f"Expected argument `mix_init` to be in (0, 1), but got {mix_init!r}.")
        self.mix_raw = nn.Parameter(torch.tensor(math.log(mix_init / (1 - mix_init))))

    @property
    def mix(self) -> Tensor:
        """The effective mixing proportion ``a`` (weight of max pooling)."""
        return torch.sigmoid(self.mix_raw)

    def _pool(self, windows: _Windows) -> Tensor:
        mix = self.mix.to(windows.x.dtype)
        return mix * windows.max() + (1 - mix) * windows.mean()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mix={float(self.mix):.4f}"


class GatedPool2d(_GeometryPool2d):
    """Gated max-average pooling with a learned, responsive gate (Lee et al., 2016).

    .. math::

        y = \\sigma(\\omega^{\\top} x_R) \\max_{i \\in R} x_i
          + \\big(1 - \\sigma(\\omega^{\\top} x_R)\\big) \\frac{1}{|R|} \\sum_{i \\in R} x_i

    ``omega`` is a ``(kh, kw)`` gating mask, one per layer and shared by all channels (the
    paper's "per layer" variant), so the gate responds to each region's content. It starts
    at zero (gate 0.5). Padded positions count as 0 in ``omega^T x`` and take part in
    neither the max nor the average.

    Shape:
        As :class:`torch.nn.MaxPool2d`.

    Args:
        kernel_size, stride, padding, dilation, ceil_mode: As :class:`torch.nn.MaxPool2d`.

    Raises:
        ValueError: If the geometry is invalid.

    Example:
        >>> GatedPool2d(2)(torch.tensor([[[[1.0, 3.0], [0.0, 4.0]]]]))
        tensor([[[[3.]]]], grad_fn=<AddBackward0>)
    """

    def __init__(
        self,
        kernel_size: _size_2_t,
        stride: _size_2_t | None = None,
        padding: _size_2_t = 0,
        dilation: _size_2_t = 1,
        ceil_mode: bool = False,
    ) -> None:
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)
        self.gate_weight = nn.Parameter(torch.zeros(pool_geometry(kernel_size).kernel_size))

    def _pool(self, windows: _Windows) -> Tensor:
        views = windows.views(windows.values(0.0))
        weight = self.gate_weight.to(windows.x.dtype).reshape(-1)
        logit = sum(w * view for w, view in zip(weight, views))
        gate = torch.sigmoid(logit)
        return gate * windows.max() + (1 - gate) * windows.mean()


class DetailPreservingPool2d(_GeometryPool2d):
    """Detail-preserving pooling, DPP (Saeedan et al., 2018).

    An adaptive weighted average that rewards the window's values that deviate from a
    smoothed, downscaled reference :math:`\\tilde{I}`:

    .. math::

        y_p = \\frac{\\sum_{q \\in R_p} \\omega_{pq}\\, x_q}{\\sum_{q \\in R_p} \\omega_{pq}},
        \\qquad \\omega_{pq} = \\alpha + \\rho_\\lambda(x_q - \\tilde{I}_p)

    with the asymmetric reward :math:`\\rho_\\lambda(d) = (\\max(d, 0)^2 + \\varepsilon^2)^{\\lambda/2}`
    (only values above the reference are emphasised) or the symmetric one
    :math:`(d^2 + \\varepsilon^2)^{\\lambda/2}`, :math:`\\varepsilon = 10^{-3}`. The reference
    :math:`\\tilde{I}` is the window average (real positions only) smoothed on the output
    grid by the binomial filter :math:`\\frac{1}{16}[1, 2, 1]^\\top[1, 2, 1]` (replicate
    padding); ``smooth=False`` uses the window average alone ("DPP lite"). :math:`\\alpha`
    and :math:`\\lambda` are learned per layer and kept positive by a softplus
    (parameters ``dpp_alpha_raw`` and ``dpp_lambda_raw``, named apart from P-pooling's
    ``alpha``). :math:`\\lambda \\to 0` gives average pooling; the weights are positive, so
    the output always lies within the window's [min, max].

    Shape:
        As :class:`torch.nn.MaxPool2d`.

    Args:
        kernel_size, stride, padding, dilation, ceil_mode: As :class:`torch.nn.MaxPool2d`.
        alpha_init: Initial reward offset :math:`\\alpha > 0`.
        lambda_init: Initial reward exponent :math:`\\lambda > 0`.
        symmetric: Use the symmetric reward.
        smooth: Smooth the reference with the binomial filter.

    Raises:
        ValueError: If an initial value is not positive or the geometry is invalid.

    Example:
        >>> out = DetailPreservingPool2d(2)(torch.tensor([[[[1.0, 3.0], [0.0, 4.0]]]]))
        >>> bool(2.0 < out.item() < 4.0)
        True
    """

    EPSILON = 1e-3

    def __init__(
        self,
        kernel_size: _size_2_t,
        stride: _size_2_t | None = None,
        padding: _size_2_t = 0,
        dilation: _size_2_t = 1,
        ceil_mode: bool = False,
        *,
        alpha_init: float = 1.0,
        lambda_init: float = 1.0,
        symmetric: bool = False,
        smooth: bool = True,
    ) -> None:
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)
        for name, value in (("alpha_init", alpha_init), ("lambda_init", lambda_init)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
                raise ValueError(f"Expected argument `{name}` to be a finite number > 0, but got {value!r}.")
        self.symmetric = symmetric
        self.smooth = smooth
        self.dpp_alpha_raw = nn.Parameter(torch.tensor(_inverse_softplus(float(alpha_init))))
        self.dpp_lambda_raw = nn.Parameter(torch.tensor(_inverse_softplus(float(lambda_init))))
        binomial = torch.tensor([1.0, 2.0, 1.0])
        self.register_buffer("smoothing", (binomial[:, None] * binomial[None, :] / 16.0)[None, None], persistent=False)

    def init_options(self) -> dict:
        """The non-geometry constructor keywords that rebuild this layer (alpha and lambda are in the state_dict)."""
        return {"symmetric": self.symmetric, "smooth": self.smooth}

    @property
    def dpp_alpha(self) -> Tensor:
        """The effective reward offset :math:`\\alpha`."""
        return F.softplus(self.dpp_alpha_raw)

    @property
    def dpp_lambda(self) -> Tensor:
        """The effective reward exponent :math:`\\lambda`."""
        return F.softplus(self.dpp_lambda_raw)

    def _reference(self, windows: _Windows) -> Tensor:
        reference = windows.mean()
        if not self.smooth:
            return reference
        n, c, h, w = reference.shape
        kernel = self.smoothing.to(reference.dtype)
        flat = F.pad(reference.reshape(n * c, 1, h, w), (1, 1, 1, 1), mode="replicate")
        return F.conv2d(flat, kernel).reshape(n, c, h, w)

    def _pool(self, windows: _Windows) -> Tensor:
        dtype = windows.x.dtype
        offset = self.dpp_alpha.to(dtype)
        half_lambda = self.dpp_lambda.to(dtype) / 2
        reference = self._reference(windows)
        masks = windows.masks or [None] * len(windows.offsets)
        total = weighted = 0.0
        for view, mask in zip(windows.views(windows.values(0.0)), masks):
            deviation = view - reference
            if not self.symmetric:
                deviation = deviation.clamp_min(0.0)
            weight = offset + (deviation * deviation + self.EPSILON**2) ** half_lambda
            if mask is not None:
                weight = weight * mask
            total = total + weight
            weighted = weighted + weight * view
        return weighted / total

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, alpha={float(self.dpp_alpha):.4f}, lambda={float(self.dpp_lambda):.4f}, "
            f"symmetric={self.symmetric}, smooth={self.smooth}"
        )


class StridedConvPool2d(_GeometryPool2d):
    """A learnable strided convolution in place of pooling ("Strided-C"), initialised to average.

    .. math::

        y_c = \\sum_{(i, j)} W_{c, i, j}\\, x_{c}[s h + d i - p, s w + d j - p],
        \\qquad W_{c, i, j} = \\frac{1}{k_h k_w} \\text{ at initialisation}

    Depthwise by default (``C * kh * kw`` weights, no bias: a learnable pooling window per
    channel). With ``depthwise=False`` it is a full ``C -> C`` convolution initialised to the
    same per-channel average (identity across channels). Unlike the other layers, padded
    positions are zeros that contribute, as in any convolution: at initialisation it equals
    ``nn.AvgPool2d(count_include_pad=True)``, with the dilation and ``ceil_mode`` windows of
    ``MaxPool2d``. Needs the channel count; :func:`lit_ppool.swap_pooling` takes it from a
    probe forward.

    Shape:
        As :class:`torch.nn.MaxPool2d`, with ``C == num_channels``.

    Args:
        kernel_size, stride, padding, dilation, ceil_mode: As :class:`torch.nn.MaxPool2d`.
        num_channels: Input (= output) channels.
        depthwise: One filter per channel (default) or a full convolution.

    Raises:
        ValueError: If ``num_channels`` is not a positive int, the geometry is invalid, or
            the input has another channel count.

    Example:
        >>> StridedConvPool2d(2, num_channels=1)(torch.tensor([[[[1.0, 3.0], [0.0, 4.0]]]]))
        tensor([[[[2.]]]], grad_fn=<ConvolutionBackward0>)
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
        depthwise: bool = True,
    ) -> None:
        super().__init__(kernel_size, stride, padding, dilation, ceil_mode)
        self.num_channels = check_channel_count(num_channels, "strided_conv")
        self.depthwise = depthwise
        kh, kw = pool_geometry(kernel_size).kernel_size
        if depthwise:
            weight = torch.full((num_channels, 1, kh, kw), 1.0 / (kh * kw))
        else:
            weight = torch.zeros(num_channels, num_channels, kh, kw)
            weight[range(num_channels), range(num_channels)] = 1.0 / (kh * kw)
        self.weight = nn.Parameter(weight)

    def init_options(self) -> dict:
        """The non-geometry constructor keywords that rebuild this layer (the weights are in the state_dict)."""
        return {"num_channels": self.num_channels, "depthwise": self.depthwise}

    def _pool(self, windows: _Windows) -> Tensor:
        x = windows.x
        geometry = windows.geometry
        return F.conv2d(
            windows.values(0.0), self.weight.to(x.dtype), None, geometry.stride, 0, geometry.dilation,
            self.num_channels if self.depthwise else 1,
        )

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, num_channels={self.num_channels}, depthwise={self.depthwise}"


class SoftPool2d(_GeometryPool2d):
    """SoftPool: the softmax-weighted average of each window (Stergiou et al., 2021).

    .. math::

        y = \\sum_{i \\in R} \\frac{e^{x_i}}{\\sum_{j \\in R} e^{x_j}}\\, x_i

    No parameters. Computed with the window maximum subtracted inside the exponentials, so
    it never overflows. Between average pooling (inputs near 0 relative to 1) and max
    pooling (large input differences); always within the window's [min, max].

    Shape:
        As :class:`torch.nn.MaxPool2d`.

    Args:
        kernel_size, stride, padding, dilation, ceil_mode: As :class:`torch.nn.MaxPool2d`.

    Raises:
        ValueError: If the geometry is invalid.

    Example:
        >>> SoftPool2d(2)(torch.tensor([[[[0.0, 0.0], [0.0, 0.0]]]]))
        tensor([[[[0.]]]])
    """

    def _pool(self, windows: _Windows) -> Tensor:
        views = windows.views(windows.values(-math.inf))
        # The softmax is shift-invariant, so the max needs no gradient.
        maximum = torch.stack(views).amax(0).detach()
        total = weighted = 0.0
        for view in views:
            weight = torch.exp(view - maximum)  # exp(-inf) = 0 on padding
            total = total + weight
            weighted = weighted + weight * torch.where(view == -math.inf, 0.0, view)
        return weighted / total
