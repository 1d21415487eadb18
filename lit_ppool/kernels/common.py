"""Constants and window helpers shared by the P-pooling kernels."""

from __future__ import annotations

from torch import Tensor

EPS = 1e-6
"""Floor applied to the inputs when computing the P-pooling weights (see ``lit_ppool.functional``)."""


def pad_amounts(
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, int, int, int]:
    """``F.pad`` amounts (left, right, top, bottom) so that every output window lies inside.

    The right/bottom amount covers ``ceil_mode`` windows that run past the symmetric
    padding; trailing rows that no window reads are simply left unread.
    """
    ends = [(o - 1) * s + d * (k - 1) + 1 for o, s, d, k in zip(out_size, stride, dilation, kernel_size)]
    bottom = ends[0] - in_size[0] - padding[0]
    right = ends[1] - in_size[1] - padding[1]
    return (padding[1], max(right, 0), padding[0], max(bottom, 0))


def window(
    padded: Tensor,
    i: int,
    j: int,
    out_size: tuple[int, int],
    stride: tuple[int, int],
    dilation: tuple[int, int],
) -> Tensor:
    """Strided view of ``padded`` holding element ``(i, j)`` of every window: output-sized, no copy."""
    h0, w0 = i * dilation[0], j * dilation[1]
    return padded[
        ...,
        h0 : h0 + (out_size[0] - 1) * stride[0] + 1 : stride[0],
        w0 : w0 + (out_size[1] - 1) * stride[1] + 1 : stride[1],
    ]
