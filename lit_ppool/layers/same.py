"""Dynamic TensorFlow-style "same" padding around any registered pooling layer.

timm's ``MaxPool2dSame`` / ``AvgPool2dSame`` pad each input at run time so that the
output has ``ceil(L / stride)`` positions, with the windows placed as TensorFlow places
them (``total = max((ceil(L/s) - 1) s + d (k - 1) + 1 - L, 0)``, ``total // 2`` before,
the rest after). :class:`SamePadPool2d` gives a swapped layer the same output size and
window placement, while keeping the rule that padded positions never contribute (timm's
max version pads with ``-inf``, which is the same thing for max pooling).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from lit_ppool.functional import pool_geometry
from lit_ppool.layers.registry import pool_with_padding

__all__ = ["SamePadPool2d", "same_padding"]


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """Symmetric padding and leading crop that reproduce "same" padding with ``ceil_mode=True``.

    With ``padding`` on both sides and ``ceil_mode=True``, the windows start where TF-same
    puts them and a last window that TF-same pads on the right only runs past the input
    (where nothing contributes). The one case that cannot be written that way, ``stride=1``
    with an odd total padding, is padded by one more on both sides and the first output
    dropped (``crop=1``).

    Returns:
        ``(padding, crop)`` along one axis.
    """
    outputs = math.ceil(size / stride)
    total = max((outputs - 1) * stride + dilation * (kernel - 1) + 1 - size, 0)
    if total % 2 == 1 and stride == 1:
        return total // 2 + 1, 1
    return total // 2, 0


class SamePadPool2d(nn.Module):
    """Run a pooling layer with dynamic "same" padding, as timm's ``*Pool2dSame`` layers do.

    The wrapped layer's own ``padding`` and ``ceil_mode`` are ignored; they are computed from
    each input's size. The wrapped layer is the child ``pool``, so its parameters appear
    under ``<name>.pool.*`` in the state_dict.

    Shape:
        - Input: :math:`(N, C, H, W)` or :math:`(C, H, W)`.
        - Output: :math:`(N, C, \\lceil H / s_h \\rceil, \\lceil W / s_w \\rceil)`.

    Args:
        pool: A registered pooling layer (see :mod:`lit_ppool.layers.registry`).

    Raises:
        ValueError: If a "same" padding needs more than half the kernel size (possible only
            with dilation), which torch-style pooling cannot express.

    Example:
        >>> import torch
        >>> from lit_ppool.layers import PPool2d
        >>> SamePadPool2d(PPool2d(3, 2))(torch.rand(1, 2, 5, 5)).shape
        torch.Size([1, 2, 3, 3])
    """

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, input: Tensor) -> Tensor:
        padding, (crop_h, crop_w) = self.same_padding_for(input)
        out = pool_with_padding(self.pool, input, padding, True)
        return out[..., crop_h:, crop_w:] if crop_h or crop_w else out

    def same_padding_for(self, input: Tensor) -> tuple[tuple[int, int], tuple[int, int]]:
        """The ``padding`` (with ``ceil_mode=True``) and the leading ``crop`` of the output, per axis, for ``input``.

        ``forward`` is the wrapped layer run with that padding and ``ceil_mode=True``, its output
        cropped by ``crop`` rows and columns at the start (see :func:`same_padding`).

        Raises:
            ValueError: If the padding would exceed half the kernel (see the class).
        """
        kernel, stride, _, dilation, _ = pool_geometry(
            self.pool.kernel_size, self.pool.stride, 0, getattr(self.pool, "dilation", 1)
        )
        axes = [same_padding(input.shape[-2 + d], kernel[d], stride[d], dilation[d]) for d in range(2)]
        padding = (axes[0][0], axes[1][0])
        if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
            raise ValueError(
                f"Expected the 'same' padding of a {kernel} window with dilation {dilation} to be at most "
                f"half the kernel, but it needs {padding} for input size {tuple(input.shape[-2:])}."
            )
        return padding, (axes[0][1], axes[1][1])

    def extra_repr(self) -> str:
        return "padding='same'"
