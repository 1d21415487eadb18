"""Fuzzing p_pool2d against the float64 oracle: random shapes, geometries, dtypes, alphas and extreme values.

Hypothesis draws the cases (``derandomize=True``: the same cases on every run, no example
database). The input values mix zeros, subnormals, values below the EPS floor, ordinary
activations, 1e4 and negatives; alpha is a float, a 1-element tensor or one value per
channel, including 0, tiny values and alpha_max = 100. For every finite input, the output
and both gradients are finite and match the oracle (evaluated on the same, already
rounded, input values) within the rounding of the dtype; an invalid geometry raises a
``ValueError`` or ``TypeError`` that says what was expected, never a crash.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lit_ppool.functional import p_pool2d

from helpers.oracle import expected_p_pool2d

FUZZ = settings(
    max_examples=250, derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
DTYPES = [torch.float64, torch.float32, torch.float16, torch.bfloat16]
# rtol of the output dtype's rounding; computation runs in float32 (float64 for float64)
RTOL = {torch.float64: 1e-9, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}
ALPHAS = [0.0, 1e-12, 1e-6, 1e-3, 0.5, 1.0, 2.0, 7.5, 30.0, 99.999, 100.0]
VALUE_KINDS = ["zero", "subnormal", "below_eps", "ordinary", "large", "negative"]


def _values(kind: str, n: int, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, generator=gen, dtype=torch.float64)
    if kind == "zero":
        return torch.zeros(n, dtype=torch.float64)
    if kind == "subnormal":  # subnormal in the input dtype (float32's for float64)
        tiny = torch.finfo(dtype if dtype != torch.float64 else torch.float32).tiny
        return tiny * (0.01 + 0.98 * u)
    if kind == "below_eps":  # normal numbers under the 1e-6 floor of the weights
        return 10 ** (-30 + 22 * u)
    if kind == "ordinary":
        return 10 * u
    if kind == "large":
        return 1e4 * (0.5 + 0.5 * u)
    return -10 * u  # negative: outside the method's domain, documented behaviour


@st.composite
def geometries(draw):
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = draw(st.none() | st.tuples(st.integers(1, 3), st.integers(1, 3)))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    return kernel, stride, padding, dilation, draw(st.booleans())


@st.composite
def cases(draw):
    kernel, stride, padding, dilation, ceil_mode = draw(geometries())
    dtype = draw(st.sampled_from(DTYPES))
    batched = draw(st.booleans())
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    # at least one full window fits, so max_pool2d defines the output
    min_h, min_w = (dilation[d] * (kernel[d] - 1) + 1 - 2 * padding[d] for d in range(2))
    h = draw(st.integers(max(1, min_h), max(1, min_h) + 8))
    w = draw(st.integers(max(1, min_w), max(1, min_w) + 8))
    shape = (n, c, h, w) if batched else (c, h, w)

    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    kinds = draw(st.lists(st.sampled_from(VALUE_KINDS), min_size=1, max_size=4, unique=True))
    numel = math.prod(shape)
    pick = torch.randint(len(kinds), (numel,), generator=gen)
    x = torch.zeros(numel, dtype=torch.float64)
    for i, kind in enumerate(kinds):
        x = torch.where(pick == i, _values(kind, numel, dtype, gen), x)
    x = x.reshape(shape).to(dtype)

    alpha_form = draw(st.sampled_from(["float", "tensor", "per_channel"]))
    alpha_value = st.sampled_from(ALPHAS) | st.floats(0.0, 100.0)
    if alpha_form == "float":
        alpha = draw(alpha_value)
    elif alpha_form == "tensor":
        alpha = torch.tensor([draw(alpha_value)])
    else:
        alpha = torch.tensor(draw(st.lists(alpha_value, min_size=c, max_size=c)))
    return x, alpha, (kernel, stride, padding, dilation, ceil_mode)


def _max_pool(x, geometry):
    kernel, stride, padding, dilation, ceil_mode = geometry
    return F.max_pool2d(x.double(), kernel, stride if stride is not None else kernel, padding, dilation, ceil_mode)


@FUZZ
@given(cases())
def test_p_pool2d_is_finite_and_matches_the_oracle(case):
    x, alpha, geometry = case
    x = x.requires_grad_()
    alpha_t = alpha.clone().requires_grad_() if isinstance(alpha, torch.Tensor) else None
    out = p_pool2d(x, alpha_t if alpha_t is not None else alpha, *geometry)

    reference_shape = _max_pool(x.detach(), geometry)
    assert out.shape == reference_shape.shape and out.dtype == x.dtype
    assert out.isfinite().all()
    padding_only = reference_shape.isinf()  # windows of padding alone (dilation): documented to give 0
    assert (out[padding_only] == 0).all()

    x64 = x.detach().double().requires_grad_()
    alpha64 = alpha.double().requires_grad_() if isinstance(alpha, torch.Tensor) else alpha
    expected = expected_p_pool2d(x64, alpha64, *geometry)
    scale = x.detach().abs().max().double().item()
    rtol = RTOL[x.dtype]
    resolution = torch.finfo(x.dtype).tiny * torch.finfo(x.dtype).eps  # spacing of the dtype's subnormals
    torch.testing.assert_close(
        out.detach().double()[~padding_only], expected.detach()[~padding_only], rtol=rtol, atol=rtol * scale + resolution
    )

    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    inputs = (x, alpha_t) if alpha_t is not None else (x,)
    grads = torch.autograd.grad(out, inputs, upstream.to(out.dtype))
    if padding_only.any():  # the oracle's gradient is NaN there by construction: check ours is finite
        assert all(g.isfinite().all() for g in grads)
        return
    references = torch.autograd.grad(expected, (x64, alpha64) if alpha_t is not None else (x64,), upstream)
    gx, ex = grads[0].double(), references[0]
    # finite wherever the true gradient fits the dtype (dy/dx_i = w_i (1 + alpha (x_i - y) / x_i) can
    # exceed float16's 65504 next to x_i ~ 1e-6); within rounding of its largest entry
    representable = ex.abs() <= torch.finfo(x.dtype).max / 2
    assert gx[representable].isfinite().all()
    torch.testing.assert_close(
        gx[representable], ex[representable], rtol=10 * rtol, atol=10 * rtol * ex[representable].abs().max().item() + resolution
    )
    if alpha_t is not None:
        ga, ea = grads[1].double(), references[1]
        assert ga.isfinite().all()  # float32 or wider whatever the input dtype
        # dL/dalpha sums w log(x) (x - y) over every output: compare to the size of its terms
        terms = (upstream.abs().sum() * scale * 70).item()
        torch.testing.assert_close(ga, ea, rtol=10 * rtol, atol=10 * rtol * terms + 1e-30)


@FUZZ
@given(
    kernel=st.integers(-1, 5),
    stride=st.integers(-1, 4),
    padding=st.integers(-1, 4),
    dilation=st.integers(-1, 3),
    ceil_mode=st.booleans(),
    size=st.tuples(st.integers(1, 6), st.integers(1, 6)),
)
def test_any_geometry_gives_the_max_pool_shape_or_a_clear_error(kernel, stride, padding, dilation, ceil_mode, size):
    x = torch.rand(1, 2, *size)
    try:
        reference = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode)
    except (RuntimeError, ValueError):
        reference = None
    if reference is not None and reference.numel() > 0 and kernel >= 1 and stride >= 1 and dilation >= 1:
        assert p_pool2d(x, 1.5, kernel, stride, padding, dilation, ceil_mode).shape == reference.shape
        return
    with pytest.raises((ValueError, TypeError), match=r"Expected|too small"):
        p_pool2d(x, 1.5, kernel, stride, padding, dilation, ceil_mode)


@pytest.mark.parametrize("alpha", [-1e-9, -1.0, float("nan"), float("inf"), float("-inf"), True, "1.0"])
def test_invalid_alpha_is_refused_clearly(alpha):
    with pytest.raises((ValueError, TypeError), match="alpha"):
        p_pool2d(torch.rand(1, 2, 4, 4), alpha, 2)
