"""Exact reference P-pooling: a loop over the k*k window offsets with plain torch ops.

Every step works on output-sized strided views of the padded input, so no k*k-sized
tensor is ever built. Forward keeps only the input and the window maximum (one
output-sized tensor in the compute dtype) for backward; backward recomputes the weights
from them and applies the analytic gradient (see ``lit_ppool.functional``).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from lit_ppool.kernels.common import EPS, pad_amounts, window


def compute_dtype(input: Tensor, alpha: Tensor) -> torch.dtype:
    """At least float32; float64 when either operand is float64."""
    return torch.promote_types(torch.promote_types(input.dtype, alpha.dtype), torch.float32)


def _no_autocast(device_type: str):
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


class _Prepared:
    """Padded values and padded weight bases of one input, in the compute dtype."""

    def __init__(self, input: Tensor, alpha: Tensor, geometry, out_size: tuple[int, int]) -> None:
        dtype = compute_dtype(input, alpha)
        self.geometry = geometry
        self.out_size = out_size
        self.alpha = alpha.to(dtype).view(-1, 1, 1)
        values = input.to(dtype)
        pads = pad_amounts(tuple(input.shape[-2:]), out_size, geometry.kernel_size, geometry.stride, geometry.padding, geometry.dilation)
        self.padded = any(p > 0 for p in pads)
        # Padding is 0 in `bases`; real bases are >= EPS (or NaN), so `bases != 0` marks real positions.
        self.values = F.pad(values, pads)
        self.bases = F.pad(values.clamp_min(EPS), pads)
        self.offsets = [(i, j) for i in range(geometry.kernel_size[0]) for j in range(geometry.kernel_size[1])]

    def window(self, padded: Tensor, i: int, j: int) -> Tensor:
        return window(padded, i, j, self.out_size, self.geometry.stride, self.geometry.dilation)

    def window_max(self) -> Tensor:
        maximum = None
        for i, j in self.offsets:
            base = self.window(self.bases, i, j)
            maximum = base if maximum is None else torch.maximum(maximum, base)
        return maximum.clamp_min(EPS)  # only a window made of padding alone is below EPS

    def log_ratio_and_weight(self, i: int, j: int, maximum: Tensor) -> tuple[Tensor, Tensor]:
        """``log(x~/max)`` and the unnormalised weight ``(x~/max)^alpha`` of offset (i, j); 0 on padding."""
        ratio = self.window(self.bases, i, j) / maximum
        if not self.padded:
            log_ratio = torch.log(ratio)
            return log_ratio, torch.exp(self.alpha * log_ratio)
        real = ratio != 0
        log_ratio = torch.log(torch.where(real, ratio, 1.0))
        return log_ratio, torch.where(real, torch.exp(self.alpha * log_ratio), 0.0)

    def normaliser_and_output(self, maximum: Tensor) -> tuple[Tensor, Tensor]:
        total = torch.zeros_like(maximum)
        weighted = torch.zeros_like(maximum)
        for i, j in self.offsets:
            _, weight = self.log_ratio_and_weight(i, j, maximum)
            total += weight
            weighted += weight * self.window(self.values, i, j)
        # total >= 1 (the maximum weighs 1) except in a padding-only window, where it is 0.
        total = total.clamp_min(torch.finfo(total.dtype).tiny)
        return total, weighted / total


class PPool2dFunction(torch.autograd.Function):
    """Autograd Function of the reference path. Inputs are validated by ``p_pool2d``."""

    @staticmethod
    def forward(ctx, input: Tensor, alpha: Tensor, geometry, out_size: tuple[int, int]) -> Tensor:
        with _no_autocast(input.device.type):
            prepared = _Prepared(input, alpha, geometry, out_size)
            maximum = prepared.window_max()
            _, output = prepared.normaliser_and_output(maximum)
        ctx.save_for_backward(input, alpha, maximum)
        ctx.geometry = geometry
        ctx.out_size = out_size
        return output.to(input.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        input, alpha, maximum = ctx.saved_tensors
        with _no_autocast(input.device.type):
            prepared = _Prepared(input, alpha, ctx.geometry, ctx.out_size)
            total, output = prepared.normaliser_and_output(maximum)
            grad_scaled = grad_output.to(total.dtype) / total  # dL/dy * 1/sum(u)
            grad_padded = torch.zeros_like(prepared.values) if ctx.needs_input_grad[0] else None
            grad_alpha_map = torch.zeros_like(total) if ctx.needs_input_grad[1] else None
            for i, j in prepared.offsets:
                log_ratio, weight = prepared.log_ratio_and_weight(i, j, maximum)
                values = prepared.window(prepared.values, i, j)
                grad_w = grad_scaled * weight  # dL/dy * w_i
                centred = values - output
                if grad_padded is not None:
                    # dy/dx_i = w_i (1 + alpha (x_i - y) / x_i); the weight term vanishes below EPS.
                    bases = prepared.window(prepared.bases, i, j)
                    slope = torch.where(values >= EPS, prepared.alpha * centred / bases, 0.0)
                    prepared.window(grad_padded, i, j).add_(grad_w * (1.0 + slope))
                if grad_alpha_map is not None:
                    # dy/dalpha = sum_i w_i log(x_i / max) (x_i - y); the log(max) part sums to 0.
                    grad_alpha_map += grad_w * log_ratio * centred

        grad_input = None
        if grad_padded is not None:
            left, _, top, _ = pad_amounts(tuple(input.shape[-2:]), ctx.out_size, *ctx.geometry[:4])
            height, width = input.shape[-2:]
            grad_input = grad_padded[..., top : top + height, left : left + width].to(input.dtype)
        grad_alpha = None
        if grad_alpha_map is not None:
            reduced = grad_alpha_map.sum() if alpha.numel() == 1 else grad_alpha_map.sum(dim=(0, 2, 3))
            grad_alpha = reduced.reshape(alpha.shape).to(alpha.dtype)
        return grad_input, grad_alpha, None, None
