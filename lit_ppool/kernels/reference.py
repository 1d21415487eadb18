"""Exact reference P-pooling: a loop over the k*k window offsets with plain torch ops.

Every step works on output-sized strided views of the padded input, so no k*k-sized
tensor is ever built. Forward keeps only the input and the window maximum (one
output-sized tensor in the compute dtype) for backward; backward recomputes the weights
from them and applies the analytic gradient (see ``lit_ppool.functional``).

The forward math is written as TorchScript-compatible functions (hence ``eps`` passed as a
default argument rather than read as a global): the autograd Function
runs them without autograd, and a scripted ``PPool2d`` runs them with autograd (whose
derivative is the same function's, NaN-safe at padding).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from lit_ppool.kernels.common import EPS, pad_amounts, reduce_grad_alpha, window


def compute_dtype(input: Tensor, alpha: Tensor) -> torch.dtype:
    """At least float32; float64 when either operand is float64."""
    return torch.promote_types(torch.promote_types(input.dtype, alpha.dtype), torch.float32)


def prepare(input: Tensor, alpha: Tensor, pads: list[int], eps: float = EPS) -> tuple[Tensor, Tensor, Tensor]:
    """Padded values, padded weight bases ``max(x, EPS)`` and alpha broadcastable to the output, in the compute dtype.

    ``alpha`` is one value, one per channel, or a dense map that broadcasts to ``(N, C, H_out, W_out)``.

    Padding is 0 in the bases while real bases are >= EPS (or NaN), so ``bases != 0`` marks
    real positions.
    """
    dtype = compute_dtype(input, alpha)
    values = input.to(dtype)
    alpha = alpha.to(dtype) if alpha.dim() == 4 else alpha.to(dtype).view(-1, 1, 1)
    return F.pad(values, pads), F.pad(values.clamp_min(eps), pads), alpha


def window_max(
    bases: Tensor, kernel: list[int], out_size: list[int], stride: list[int], dilation: list[int], eps: float = EPS
) -> Tensor:
    """Maximum of the bases over every window (at least EPS, also for a padding-only window)."""
    maximum = window(bases, 0, 0, out_size, stride, dilation)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            if i + j > 0:
                maximum = torch.maximum(maximum, window(bases, i, j, out_size, stride, dilation))
    return maximum.clamp_min(eps)


def log_ratio_and_weight(
    bases: Tensor, alpha: Tensor, maximum: Tensor, padded: bool, i: int, j: int,
    out_size: list[int], stride: list[int], dilation: list[int],
) -> tuple[Tensor, Tensor]:
    """``log(x~/max)`` and the unnormalised weight ``(x~/max)^alpha`` of offset (i, j); both 0 on padding."""
    ratio = window(bases, i, j, out_size, stride, dilation) / maximum
    if not padded:
        log_ratio = torch.log(ratio)
        return log_ratio, torch.exp(alpha * log_ratio)
    real = ratio != 0
    log_ratio = torch.log(torch.where(real, ratio, torch.ones_like(ratio)))
    return log_ratio, torch.where(real, torch.exp(alpha * log_ratio), torch.zeros_like(ratio))


def normaliser_and_output(
    values: Tensor, bases: Tensor, alpha: Tensor, maximum: Tensor, padded: bool,
    kernel: list[int], out_size: list[int], stride: list[int], dilation: list[int],
) -> tuple[Tensor, Tensor]:
    """``sum_i u_i`` and ``y = sum_i u_i x_i / sum_i u_i`` for every window."""
    total = torch.zeros_like(maximum)
    weighted = torch.zeros_like(maximum)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            _, weight = log_ratio_and_weight(bases, alpha, maximum, padded, i, j, out_size, stride, dilation)
            total = total + weight
            weighted = weighted + weight * window(values, i, j, out_size, stride, dilation)
    # The maximum weighs exactly 1, so total >= 1; only a padding-only window has 0 (-> output 0).
    total = total.clamp_min(1.0)
    return total, weighted / total


def p_pool2d_forward(
    input: Tensor, alpha: Tensor, kernel: list[int], stride: list[int], padding: list[int],
    dilation: list[int], out_size: list[int],
) -> tuple[Tensor, Tensor]:
    """Output (compute dtype) and window maximum for a 4-d ``input``; differentiable by autograd."""
    pads = pad_amounts([input.shape[-2], input.shape[-1]], out_size, kernel, stride, padding, dilation)
    padded = max(pads) > 0
    values, bases, alpha_b = prepare(input, alpha, pads)
    maximum = window_max(bases, kernel, out_size, stride, dilation)
    _, output = normaliser_and_output(values, bases, alpha_b, maximum, padded, kernel, out_size, stride, dilation)
    return output, maximum


def _no_autocast(device_type: str):
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


class PPool2dFunction(torch.autograd.Function):
    """Autograd Function of the reference path. Inputs are validated by ``p_pool2d``."""

    @staticmethod
    def forward(ctx, input: Tensor, alpha: Tensor, geometry, out_size: tuple[int, int]) -> Tensor:
        kernel, stride, padding, dilation = (list(pair) for pair in geometry[:4])
        with _no_autocast(input.device.type):
            output, maximum = p_pool2d_forward(input, alpha, kernel, stride, padding, dilation, list(out_size))
        ctx.save_for_backward(input, alpha, maximum)
        ctx.geometry = (kernel, stride, padding, dilation)
        ctx.out_size = list(out_size)
        return output.to(input.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        input, alpha, maximum = ctx.saved_tensors
        kernel, stride, padding, dilation = ctx.geometry
        out_size = ctx.out_size
        pads = pad_amounts(list(input.shape[-2:]), out_size, kernel, stride, padding, dilation)
        padded = max(pads) > 0
        with _no_autocast(input.device.type):
            values, bases, alpha_b = prepare(input, alpha, pads)
            args = (out_size, stride, dilation)
            total, output = normaliser_and_output(values, bases, alpha_b, maximum, padded, kernel, *args)
            grad_scaled = grad_output.to(total.dtype) / total  # dL/dy / sum(u)
            grad_values = torch.zeros_like(values) if ctx.needs_input_grad[0] else None
            grad_alpha_map = torch.zeros_like(total) if ctx.needs_input_grad[1] else None
            for i in range(kernel[0]):
                for j in range(kernel[1]):
                    log_ratio, weight = log_ratio_and_weight(bases, alpha_b, maximum, padded, i, j, *args)
                    x = window(values, i, j, *args)
                    grad_w = grad_scaled * weight  # dL/dy * w_i
                    centred = x - output
                    if grad_values is not None:
                        # dy/dx_i = w_i (1 + alpha (x_i - y) / x_i); the weight term vanishes below EPS.
                        slope = torch.where(x >= EPS, alpha_b * centred / window(bases, i, j, *args), 0.0)
                        window(grad_values, i, j, *args).add_(grad_w * (1.0 + slope))
                    if grad_alpha_map is not None:
                        # dy/dalpha = sum_i w_i log(x_i / max) (x_i - y); the log(max) part sums to 0.
                        grad_alpha_map += grad_w * log_ratio * centred

        grad_input = grad_alpha = None
        if grad_values is not None:
            left, top = pads[0], pads[2]
            height, width = input.shape[-2:]
            grad_input = grad_values[..., top : top + height, left : left + width].to(input.dtype)
        if grad_alpha_map is not None:
            grad_alpha = reduce_grad_alpha(grad_alpha_map, alpha)
        return grad_input, grad_alpha, None, None
