"""Fused CUDA P-pooling: Triton kernels for the forward and the analytic backward.

* Forward: one program per (n, c) plane and block of outputs; the window is unrolled at
  compile time (``tl.static_range``); arithmetic in float32 whatever the input dtype; input
  and output addressed through their strides (NCHW and channels-last alike, no copy). Saves
  the log of the window maximum (one float32 per output) for backward.
* Backward, deterministic and atomic-free: a per-output kernel recomputes the weights, writes
  ``y`` and ``dL/dy / sum(u)`` to two transient output-sized float32 buffers and reduces
  ``dL/dalpha`` per program; then a per-input kernel gathers, for each input, the
  contributions of the windows that contain it (``gather``-style, fixed order).
* Alpha: one value, or one per channel (``PER_CHANNEL``), loaded once per program; or dense
  (``DENSE``: one value per output, a map that broadcasts to the output), loaded per window
  through its strides (0 along the dimensions it broadcasts along, so it is never expanded in
  memory). For a dense alpha the per-output kernel writes ``dL/dalpha`` per output, to an
  output-sized float32 map that :func:`lit_ppool.kernels.common.reduce_grad_alpha` sums to
  alpha's shape, instead of per program.

Element offsets within a plane are int32 products (``h * sxh``), except where a tensor of the
call spans 2**31 elements or more: then the kernels are compiled with ``INT64`` and index in
int64 (a channels-last plane of N=1 and C*H*W >= 2**31 would otherwise wrap around).

Numerics are those of :mod:`lit_ppool.kernels.reference` (``EPS`` floor, weights stabilised
by the window maximum, padding weighs 0, NaN propagates). Checked against the reference on
CPU with ``TRITON_INTERPRET=1`` in the test suite and on a GPU when one is present.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from lit_ppool.kernels.common import EPS, is_channels_last, is_dense, reduce_grad_alpha

__all__ = ["TritonPPool2dFunction"]

# A constexpr global: Triton refuses other globals inside a compiled (not interpreted) kernel.
_NAN_MAX = tl.constexpr(tl.PropagateNan.ALL)


@triton.jit
def _weight(x, ok, lm, alpha, EPS: tl.constexpr):
    """log(x~ / m) and exp(alpha * log(x~ / m)) of one window element, both 0 where ``ok`` is false."""
    d = tl.where(ok, tl.log(tl.maximum(x, EPS, propagate_nan=_NAN_MAX)) - lm, 0.0)
    return d, tl.where(ok, tl.exp(alpha * d), 0.0)


@triton.jit
def _window_element(x_base, oh, ow, live, i, j, H, W, sxh, sxw,
                    SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                    DH: tl.constexpr, DW: tl.constexpr):
    """Element (i, j) of each window, as float32 (0 where outside the input), and whether it is real."""
    h = oh * SH - PH + i * DH
    w = ow * SW - PW + j * DW
    ok = live & (h >= 0) & (h < H) & (w >= 0) & (w < W)
    return tl.load(x_base + h * sxh + w * sxw, mask=ok, other=0.0).to(tl.float32), ok


@triton.jit
def _plane_and_block(C, size, BLOCK: tl.constexpr, INT64: tl.constexpr):
    """This program's (n, c) plane, its n and c, and its block of ``size`` positions (offsets and mask).

    The offsets, and so every row, column and element offset derived from them, are int64 if ``INT64``.
    """
    plane = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1)
    if INT64:
        block = block.to(tl.int64)
    offs = block * BLOCK + tl.arange(0, BLOCK)
    return plane, plane // C, plane % C, offs, offs < size


@triton.jit
def _plane_alpha(alpha_ptr, c, PER_CHANNEL: tl.constexpr):
    """The flat alpha of channel c: its own (``PER_CHANNEL``) or the layer's one value."""
    return tl.load(alpha_ptr + (c if PER_CHANNEL else 0)).to(tl.float32)


@triton.jit
def _window_alpha(alpha_ptr, n, c, oh, ow, ok, san, sac, sah, saw):
    """The dense alpha of the windows (oh, ow) of plane (n, c), 0 where ``ok`` is false."""
    return tl.load(alpha_ptr + n * san + c * sac + oh * sah + ow * saw, mask=ok, other=0.0).to(tl.float32)


@triton.jit
def _window_stats(x_base, oh, ow, live, lm, alpha, H, W, sxh, sxw,
                  KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                  PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr, EPS: tl.constexpr):
    """``sum_i u_i`` and ``sum_i u_i x_i`` over each window."""
    total = tl.zeros(lm.shape, tl.float32)
    weighted = tl.zeros(lm.shape, tl.float32)
    for i in tl.static_range(KH):
        for j in tl.static_range(KW):
            x, ok = _window_element(x_base, oh, ow, live, i, j, H, W, sxh, sxw, SH, SW, PH, PW, DH, DW)
            _, u = _weight(x, ok, lm, alpha, EPS)
            total += u
            weighted += u * x
    return total, weighted


@triton.jit
def _forward_kernel(x_ptr, alpha_ptr, y_ptr, lmax_ptr, C, H, W, OH, OW,
                    sxn, sxc, sxh, sxw, syn, syc, syh, syw, san, sac, sah, saw,
                    PER_CHANNEL: tl.constexpr, DENSE: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr,
                    SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
                    EPS: tl.constexpr, BLOCK: tl.constexpr, INT64: tl.constexpr):
    plane, n, c, offs, live = _plane_and_block(C, OH * OW, BLOCK, INT64)
    oh = offs // OW
    ow = offs % OW
    if DENSE:
        alpha = _window_alpha(alpha_ptr, n, c, oh, ow, live, san, sac, sah, saw)
    else:
        alpha = _plane_alpha(alpha_ptr, c, PER_CHANNEL)
    x_base = x_ptr + n * sxn + c * sxc
    lm = tl.full([BLOCK], float("-inf"), tl.float32)
    for i in tl.static_range(KH):
        for j in tl.static_range(KW):
            x, ok = _window_element(x_base, oh, ow, live, i, j, H, W, sxh, sxw, SH, SW, PH, PW, DH, DW)
            lm = tl.maximum(lm, tl.where(ok, tl.log(tl.maximum(x, EPS, propagate_nan=_NAN_MAX)), float("-inf")),
                            propagate_nan=_NAN_MAX)
    lm = tl.maximum(lm, tl.log(EPS), propagate_nan=_NAN_MAX)
    total, weighted = _window_stats(x_base, oh, ow, live, lm, alpha, H, W, sxh, sxw,
                                    KH, KW, SH, SW, PH, PW, DH, DW, EPS)
    # The maximum weighs 1, so total >= 1 except for a padding-only window (output 0).
    y = weighted / tl.maximum(total, 1.0)
    tl.store(y_ptr + n * syn + c * syc + oh * syh + ow * syw, y.to(y_ptr.dtype.element_ty), mask=live)
    tl.store(lmax_ptr + plane * OH * OW + offs, lm, mask=live)


@triton.jit
def _backward_windows_kernel(x_ptr, alpha_ptr, lmax_ptr, gy_ptr, y_ptr, gs_ptr, galpha_ptr, C, H, W, OH, OW,
                             sxn, sxc, sxh, sxw, sgn, sgc, sgh, sgw, san, sac, sah, saw,
                             PER_CHANNEL: tl.constexpr, DENSE: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr,
                             SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr,
                             DW: tl.constexpr, EPS: tl.constexpr, BLOCK: tl.constexpr, INT64: tl.constexpr):
    """Per output: y and dL/dy / sum(u) into float32 buffers; dL/dalpha summed per program (per output if ``DENSE``)."""
    plane, n, c, offs, live = _plane_and_block(C, OH * OW, BLOCK, INT64)
    oh = offs // OW
    ow = offs % OW
    if DENSE:
        alpha = _window_alpha(alpha_ptr, n, c, oh, ow, live, san, sac, sah, saw)
    else:
        alpha = _plane_alpha(alpha_ptr, c, PER_CHANNEL)
    x_base = x_ptr + n * sxn + c * sxc
    lm = tl.load(lmax_ptr + plane * OH * OW + offs, mask=live, other=0.0)
    total, weighted = _window_stats(x_base, oh, ow, live, lm, alpha, H, W, sxh, sxw,
                                    KH, KW, SH, SW, PH, PW, DH, DW, EPS)
    inv_total = 1.0 / tl.maximum(total, 1.0)
    y = weighted * inv_total
    gy = tl.load(gy_ptr + n * sgn + c * sgc + oh * sgh + ow * sgw, mask=live, other=0.0).to(tl.float32)
    grad_scaled = tl.where(live, gy * inv_total, 0.0)
    # dy/dalpha = sum_i w_i log(x~_i / m) (x_i - y); the log(m) part sums to 0.
    grad_alpha = tl.zeros([BLOCK], tl.float32)
    for i in tl.static_range(KH):
        for j in tl.static_range(KW):
            x, ok = _window_element(x_base, oh, ow, live, i, j, H, W, sxh, sxw, SH, SW, PH, PW, DH, DW)
            d, u = _weight(x, ok, lm, alpha, EPS)
            grad_alpha += tl.where(ok, grad_scaled * u * d * (x - y), 0.0)
    tl.store(y_ptr + plane * OH * OW + offs, y, mask=live)
    tl.store(gs_ptr + plane * OH * OW + offs, grad_scaled, mask=live)
    if DENSE:
        tl.store(galpha_ptr + plane * OH * OW + offs, grad_alpha, mask=live)
    else:
        tl.store(galpha_ptr + plane * tl.num_programs(1) + tl.program_id(1), tl.sum(grad_alpha, axis=0))


@triton.jit
def _backward_inputs_kernel(x_ptr, alpha_ptr, lmax_ptr, y_ptr, gs_ptr, gx_ptr, C, H, W, OH, OW,
                            sxn, sxc, sxh, sxw, sgxn, sgxc, sgxh, sgxw, san, sac, sah, saw,
                            PER_CHANNEL: tl.constexpr, DENSE: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr,
                            SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr, DH: tl.constexpr,
                            DW: tl.constexpr, EPS: tl.constexpr, BLOCK: tl.constexpr, INT64: tl.constexpr):
    """Per input: sum over the windows holding it of dL/dy w_i (1 + alpha (x_i - y) / x_i)."""
    plane, n, c, offs, live = _plane_and_block(C, H * W, BLOCK, INT64)
    if not DENSE:
        plane_alpha = _plane_alpha(alpha_ptr, c, PER_CHANNEL)
    h = offs // W
    w = offs % W
    x = tl.load(x_ptr + n * sxn + c * sxc + h * sxh + w * sxw, mask=live, other=0.0).to(tl.float32)
    log_x = tl.log(tl.maximum(x, EPS, propagate_nan=_NAN_MAX))
    grad = tl.zeros([BLOCK], tl.float32)
    out_base = plane * OH * OW
    for i in tl.static_range(KH):
        # Window row oh holds input row h at offset i when oh * SH - PH + i * DH == h.
        num_h = h + PH - i * DH
        oh = tl.where(num_h >= 0, num_h, 0) // SH
        ok_h = (num_h >= 0) & (num_h % SH == 0) & (oh < OH)
        for j in tl.static_range(KW):
            num_w = w + PW - j * DW
            ow = tl.where(num_w >= 0, num_w, 0) // SW
            ok = live & ok_h & (num_w >= 0) & (num_w % SW == 0) & (ow < OW)
            index = out_base + oh * OW + ow
            lm = tl.load(lmax_ptr + index, mask=ok, other=0.0)
            y = tl.load(y_ptr + index, mask=ok, other=0.0)
            grad_scaled = tl.load(gs_ptr + index, mask=ok, other=0.0)
            # a dense alpha is that of the window (oh, ow)
            alpha = _window_alpha(alpha_ptr, n, c, oh, ow, ok, san, sac, sah, saw) if DENSE else plane_alpha
            u = tl.exp(alpha * (log_x - lm))
            # The weight is locally constant below EPS, so the slope term vanishes there.
            slope = tl.where(x >= EPS, alpha * (x - y) / tl.maximum(x, EPS), 0.0)
            grad += tl.where(ok, grad_scaled * u * (1.0 + slope), 0.0)
    tl.store(gx_ptr + n * sgxn + c * sgxc + h * sgxh + w * sgxw, grad.to(gx_ptr.dtype.element_ty), mask=live)


def _on_device(input: Tensor):
    """Launch on the input's GPU (Triton launches on the current device); CPU tensors run in the interpreter."""
    return torch.cuda.device(input.device) if input.is_cuda else contextlib.nullcontext()


def _block(size: int) -> int:
    return max(16, min(1024, triton.next_power_of_2(size)))


def _constexprs(geometry, alpha: Tensor, *tensors: Tensor) -> dict:
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geometry[:4]
    dense = is_dense(alpha)
    return {"PER_CHANNEL": not dense and alpha.numel() > 1, "DENSE": dense, "KH": kh, "KW": kw, "SH": sh, "SW": sw,
            "PH": ph, "PW": pw, "DH": dh, "DW": dw, "EPS": EPS, "INT64": _needs_int64(*tensors)}


def _kernel_alpha(alpha: Tensor, out_shape) -> tuple[Tensor, tuple[int, ...]]:
    """``alpha`` in float32 as the kernels take it, and the strides they read a dense one with.

    A dense alpha becomes a view broadcast to the output's shape (stride 0 where it broadcasts,
    no copy); a flat one is made contiguous (its strides are unused: zeros).
    """
    alpha = alpha.detach().to(torch.float32)
    if is_dense(alpha):
        alpha = alpha.expand(out_shape)
        return alpha, alpha.stride()
    return alpha.contiguous(), (0, 0, 0, 0)


def _needs_int64(*tensors: Tensor) -> bool:
    """Whether an element offset in one of ``tensors`` (its span, strides included) can reach 2**31."""
    return any(sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) >= 2**31 - 1 for t in tensors)


def _empty_like_layout(input: Tensor, shape, dtype) -> Tensor:
    memory_format = torch.channels_last if is_channels_last(input) else torch.contiguous_format
    return torch.empty(shape, dtype=dtype, device=input.device, memory_format=memory_format)


class TritonPPool2dFunction(torch.autograd.Function):
    """Autograd Function of the Triton path (float32, float16 and bfloat16 inputs).

    Takes alpha flat (one value, or one per channel) or dense (4-d, broadcasting to the
    output). Saves the input, alpha as given (at most output-sized) and the log of the window
    maximum (one float32 value per output): nothing window-sized.
    """

    @staticmethod
    def forward(ctx, input: Tensor, alpha: Tensor, geometry, out_size) -> Tensor:
        n, c, h, w = input.shape
        oh, ow = out_size
        alpha_k, alpha_strides = _kernel_alpha(alpha, (n, c, oh, ow))
        output = _empty_like_layout(input, (n, c, oh, ow), input.dtype)
        log_max = torch.empty((n, c, oh, ow), dtype=torch.float32, device=input.device)
        block = _block(oh * ow)
        grid = (n * c, triton.cdiv(oh * ow, block))
        with _on_device(input):
            _forward_kernel[grid](input, alpha_k, output, log_max, c, h, w, oh, ow,
                                  *input.stride(), *output.stride(), *alpha_strides, BLOCK=block,
                                  **_constexprs(geometry, alpha, input, output, alpha_k))
        ctx.save_for_backward(input, alpha, log_max)
        ctx.geometry = geometry
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        input, alpha, log_max = ctx.saved_tensors
        n, c, h, w = input.shape
        oh, ow = log_max.shape[-2:]
        alpha_k, alpha_strides = _kernel_alpha(alpha, (n, c, oh, ow))
        grad_input = _empty_like_layout(input, input.shape, input.dtype)
        constexprs = _constexprs(ctx.geometry, alpha, input, grad_output, grad_input, alpha_k)
        y = torch.empty_like(log_max)
        grad_scaled = torch.empty_like(log_max)
        block = _block(oh * ow)
        grid = (n * c, triton.cdiv(oh * ow, block))
        if is_dense(alpha):
            grad_alpha_parts = torch.empty_like(log_max)  # dL/dalpha per output
        else:
            grad_alpha_parts = torch.empty(grid, dtype=torch.float32, device=input.device)  # per program
        with _on_device(input):
            _backward_windows_kernel[grid](input, alpha_k, log_max, grad_output, y, grad_scaled, grad_alpha_parts,
                                           c, h, w, oh, ow, *input.stride(), *grad_output.stride(), *alpha_strides,
                                           BLOCK=block, **constexprs)
            block_in = _block(h * w)
            _backward_inputs_kernel[(n * c, triton.cdiv(h * w, block_in))](
                input, alpha_k, log_max, y, grad_scaled, grad_input, c, h, w, oh, ow, *input.stride(),
                *grad_input.stride(), *alpha_strides, BLOCK=block_in, **constexprs)
        grad_alpha = None
        if ctx.needs_input_grad[1]:
            if not is_dense(alpha):
                grad_alpha_parts = grad_alpha_parts.sum(dim=1).view(n, c)
            grad_alpha = reduce_grad_alpha(grad_alpha_parts, alpha)
        return grad_input if ctx.needs_input_grad[0] else None, grad_alpha, None, None
