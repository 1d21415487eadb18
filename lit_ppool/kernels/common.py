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


def reduce_grad_alpha(grad: Tensor, alpha: Tensor) -> Tensor:
    """dL/dalpha summed to alpha's shape, from its ``(N, C)`` per-plane parts or its ``(N, C, H_out, W_out)`` map.

    A flat alpha (one value, or one per channel) takes per-plane parts (a map is summed over
    its windows first); a dense 4-d alpha takes the map, summed over the dimensions it
    broadcasts along.
    """
    if alpha.dim() == 4:
        return grad.sum_to_size(alpha.shape).to(alpha.dtype)
    if grad.dim() == 4:
        grad = grad.sum(dim=(2, 3))
    reduced = grad.sum() if alpha.numel() == 1 else grad.sum(dim=0)
    return reduced.reshape(alpha.shape).to(alpha.dtype)


def is_dense(alpha: Tensor) -> bool:
    """Whether ``alpha`` is a dense map (one value per window, 4-d) rather than one value per layer or channel."""
    return alpha.dim() == 4
