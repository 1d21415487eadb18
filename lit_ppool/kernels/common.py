"""Constants and window helpers shared by the P-pooling kernels and the pooling baselines.

The helpers are TorchScript-compatible (a scripted ``PPool2d`` compiles them).
"""

import torch
from torch import Tensor

EPS = 1e-6
"""Floor applied to the inputs when computing the P-pooling weights (see ``lit_ppool.functional``)."""


def pad_amounts(
    in_size: list[int], out_size: list[int], kernel: list[int], stride: list[int], padding: list[int], dilation: list[int]
) -> list[int]:
    """``F.pad`` amounts (left, right, top, bottom) so that every output window lies inside.

    The right/bottom amount covers ``ceil_mode`` windows that run past the symmetric
    padding; trailing rows that no window reads are simply left unread.
    """
    bottom = (out_size[0] - 1) * stride[0] + dilation[0] * (kernel[0] - 1) + 1 - in_size[0] - padding[0]
    right = (out_size[1] - 1) * stride[1] + dilation[1] * (kernel[1] - 1) + 1 - in_size[1] - padding[1]
    return [padding[1], max(right, 0), padding[0], max(bottom, 0)]


def window(padded: Tensor, i: int, j: int, out_size: list[int], stride: list[int], dilation: list[int]) -> Tensor:
    """Strided view of ``padded`` holding element ``(i, j)`` of every window: output-sized, no copy."""
    h0 = i * dilation[0]
    w0 = j * dilation[1]
    return padded[
        ...,
        h0 : h0 + (out_size[0] - 1) * stride[0] + 1 : stride[0],
        w0 : w0 + (out_size[1] - 1) * stride[1] + 1 : stride[1],
    ]


def is_channels_last(input: Tensor) -> bool:
    """True for a 4-d tensor laid out channels-last (and not also NCHW-contiguous): the fused kernels keep that layout."""
    return input.dim() == 4 and not input.is_contiguous() and input.is_contiguous(memory_format=torch.channels_last)


def reduce_grad_alpha(per_plane: Tensor, alpha: Tensor) -> Tensor:
    """dL/dalpha from its ``(N, C)`` per-plane parts: summed to alpha's shape (one value or one per channel)."""
    reduced = per_plane.sum() if alpha.numel() == 1 else per_plane.sum(dim=0)
    return reduced.reshape(alpha.shape).to(alpha.dtype)
