"""Parity of a fused P-pooling Function with the reference Function: forward and both gradients.

Every path is measured against the reference path run in float64 (the oracle), with alpha
flat (one value, or one per channel: :func:`cases`) or dense (one per window, and the maps
that broadcast to it: :func:`dense_cases`). Shared by the CPU kernel tests, the Triton
interpreter run (``triton_interpreter_check.py``) and the CUDA tests.
"""

from __future__ import annotations

import itertools

import torch

from lit_ppool.functional import pool_geometry, pool_output_shape
from lit_ppool.kernels.reference import PPool2dFunction

# (kernel, stride, padding, dilation, ceil_mode): the VGG and ResNet-stem pools, overlapping,
# dilated, ceil-mode, rectangular, 1x1 and stride > kernel windows.
GEOMETRIES = [
    (2, 2, 0, 1, False),
    (3, 2, 1, 1, False),
    (3, 1, 1, 1, False),
    (3, 2, 1, 2, True),
    (4, 3, 2, 1, True),
    ((2, 3), (1, 2), (1, 0), (2, 1), False),
    (1, 2, 0, 1, False),
    (2, 3, 0, 1, True),
]

# Relative tolerances of the fused paths against the float64 oracle, per input dtype.
TOLERANCES = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
# Where the float32 reference itself is further off the oracle than the tolerance (dL/dalpha
# of strongly peaked windows, alpha = 100, whose terms cancel), a fused path may be off by up
# to this many times the reference's own error.
CONDITIONING_FACTOR = 4.0
QUANTITIES = ("output", "grad input", "grad alpha")


def make_input(shape, dtype, device="cpu", seed=0):
    """Post-ReLU-like activations with exact zeros, one all-zero window region and a few negatives."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(shape, generator=generator) * 2)
    x[..., 0, :3] = 0.0
    x[..., -1, -1] = -0.25
    return x.to(device=device, dtype=dtype)


def run(function, x, alpha, geometry, grad):
    """Output, dL/dx and dL/dalpha of ``function`` for the upstream gradient ``grad``."""
    x = x.detach().requires_grad_()  # no copy: the function sees x's own strides
    alpha = alpha.detach().clone().requires_grad_()
    out_size = pool_output_shape(tuple(x.shape[-2:]), geometry)
    output = function.apply(x, alpha, geometry, out_size)
    output.backward(grad)
    return output.detach(), x.grad, alpha.grad


def relative_errors(function, x, alpha, geometry, seed=0):
    """max |f - oracle| / max |oracle| for output, dL/dx and dL/dalpha of ``function``.

    The oracle is the reference path in float64 on the same (rounded) input and upstream
    gradient, so low-precision errors measure only the fused kernel's own rounding.
    """
    out_size = pool_output_shape(tuple(x.shape[-2:]), geometry)
    generator = torch.Generator().manual_seed(seed + 1)
    grad = torch.randn(*x.shape[:-2], *out_size, generator=generator).to(device=x.device, dtype=x.dtype)
    fused = run(function, x, alpha, geometry, grad)
    oracle = run(PPool2dFunction, x.double(), alpha.double(), geometry, grad.double())
    return [((f.double() - o).abs().max() / o.abs().max().clamp_min(1e-6)).item() for f, o in zip(fused, oracle)]


def parity_failures(function, x, alpha, geometry, tolerance=None):
    """The quantities on which ``function`` is further off the oracle than allowed, as
    ``(quantity, error, allowed)``: the dtype's tolerance, or a few times the error of the
    float32 reference path where that is larger (an ill-conditioned case)."""
    tolerance = TOLERANCES[x.dtype] if tolerance is None else tolerance
    fused = relative_errors(function, x, alpha, geometry)
    reference = relative_errors(PPool2dFunction, x.float(), alpha.float(), geometry)
    return [
        (quantity, error, allowed)
        for quantity, error, reference_error in zip(QUANTITIES, fused, reference)
        if error > (allowed := max(tolerance, CONDITIONING_FACTOR * reference_error))
    ]


def nan_failures(function, x, alpha, geometry, seed=0):
    """Where NaN is about (in the input or in alpha): the quantities on which ``function`` puts NaN
    elsewhere than the float64 oracle does, or is further off it than the dtype's tolerance
    where both are finite, as ``(quantity, error or "NaN elsewhere", allowed)``."""
    out_size = pool_output_shape(tuple(x.shape[-2:]), geometry)
    generator = torch.Generator().manual_seed(seed + 1)
    grad = torch.randn(*x.shape[:-2], *out_size, generator=generator).to(device=x.device, dtype=x.dtype)
    fused = run(function, x, alpha, geometry, grad)
    oracle = run(PPool2dFunction, x.double(), alpha.double(), geometry, grad.double())
    failures = []
    for quantity, f, o in zip(QUANTITIES, fused, oracle):
        f = f.double()
        if not torch.equal(f.isnan(), o.isnan()):
            failures.append((quantity, "NaN elsewhere", "the oracle's NaN"))
            continue
        finite = ~o.isnan()
        error = ((f - o)[finite].abs().max() / o[finite].abs().max().clamp_min(1e-6)).item()
        if error > TOLERANCES[x.dtype]:
            failures.append((quantity, error, TOLERANCES[x.dtype]))
    return failures


def cases(dtypes=(torch.float32,), alphas=(0.0, 1.5, 100.0), shape=(2, 3, 9, 11)):
    """(x, alpha, geometry) triples over the geometry grid, dtypes, alpha values, per-layer and per-channel."""
    for spec, dtype, value, per_channel in itertools.product(GEOMETRIES, dtypes, alphas, (False, True)):
        geometry = pool_geometry(*spec)
        channels = shape[1]
        alpha = torch.full((channels,) if per_channel else (1,), value)
        if per_channel:
            alpha = alpha * torch.linspace(0.5, 1.0, channels)
        yield spec, make_input(shape, dtype), alpha, geometry


# Dense alphas: the full (N, C, H_out, W_out) map and the two maps that broadcast to it.
DENSE_FORMS = ("full", "per_image", "per_position")


def dense_alpha(out_shape, form: str, top: float, seed: int = 0) -> torch.Tensor:
    """A dense alpha of ``form`` for an output of ``out_shape``: values spread over [0, top],
    with exact zeros and ``top`` itself among them.

    ``form``: ``"full"`` (N, C, H_out, W_out), ``"per_image"`` (N, 1, H_out, W_out) or
    ``"per_position"`` (1, 1, H_out, W_out).
    """
    n, c, out_h, out_w = out_shape
    shape = {"full": (n, c, out_h, out_w), "per_image": (n, 1, out_h, out_w), "per_position": (1, 1, out_h, out_w)}[form]
    alpha = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) * top
    alpha.view(-1)[::5] = 0.0
    alpha.view(-1)[1::7] = top
    return alpha


def dense_cases(dtypes=(torch.float32,), tops=(1.5, 100.0), forms=DENSE_FORMS, shape=(2, 3, 9, 11)):
    """(spec, x, alpha, geometry) over the geometry grid, dtypes, alpha ranges [0, top] and dense forms."""
    for spec, dtype, top, form in itertools.product(GEOMETRIES, dtypes, tops, forms):
        geometry = pool_geometry(*spec)
        out_shape = (*shape[:2], *pool_output_shape(tuple(shape[-2:]), geometry))
        yield spec, make_input(shape, dtype), dense_alpha(out_shape, form, top), geometry
