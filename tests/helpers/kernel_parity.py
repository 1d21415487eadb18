"""Parity of a fused P-pooling Function with the reference Function: forward and both gradients.

Every path is measured against the reference path run in float64 (the oracle). Shared by
the CPU kernel tests, the Triton interpreter run (``triton_interpreter_check.py``)
and the CUDA tests.
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


def cases(dtypes=(torch.float32,), alphas=(0.0, 1.5, 100.0), shape=(2, 3, 9, 11)):
    """(x, alpha, geometry) triples over the geometry grid, dtypes, alpha values, per-layer and per-channel."""
    for spec, dtype, value, per_channel in itertools.product(GEOMETRIES, dtypes, alphas, (False, True)):
        geometry = pool_geometry(*spec)
        channels = shape[1]
        alpha = torch.full((channels,) if per_channel else (1,), value)
        if per_channel:
            alpha = alpha * torch.linspace(0.5, 1.0, channels)
        yield spec, make_input(shape, dtype), alpha, geometry
