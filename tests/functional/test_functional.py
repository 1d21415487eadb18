"""lit_ppool.functional.p_pool2d: geometry, limits, oracle parity, gradients, numerics, properties."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from lit_ppool.functional import EPS, p_pool2d

from helpers.oracle import EPS as ORACLE_EPS
from helpers.oracle import expected_p_pool2d
from helpers.saved import saved_for_backward


def _geometries():
    """Every kernel 1-4, stride 1-3, padding 0..k//2, dilation 1-2, ceil_mode on/off."""
    for k, s, d, ceil in itertools.product(range(1, 5), range(1, 4), (1, 2), (False, True)):
        for p in range(k // 2 + 1):
            yield k, s, p, d, ceil


GEOMETRIES = list(_geometries())


def _torch_max_pool_or_error(x, k, s, p, d, ceil):
    try:
        return F.max_pool2d(x, k, s, p, d, ceil)
    except RuntimeError:
        return None


def test_eps_matches_the_oracle():
    assert EPS == ORACLE_EPS


# ----------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("size", [(7, 7), (8, 6), (5, 9)])
@pytest.mark.parametrize("batched", [True, False])
def test_output_shape_and_values_match_max_pool_geometry_on_the_whole_grid(size, batched):
    """Same output shape as F.max_pool2d (or an error where it errs) and oracle values, for every geometry."""
    x = torch.rand(2, 3, *size, dtype=torch.float64) + 0.05
    if not batched:
        x = x[0]
    checked = 0
    for k, s, p, d, ceil in GEOMETRIES:
        reference = _torch_max_pool_or_error(x, k, s, p, d, ceil)
        if reference is None:
            with pytest.raises(ValueError):
                p_pool2d(x, 1.5, k, s, p, d, ceil)
            continue
        out = p_pool2d(x, 1.5, k, s, p, d, ceil)
        assert out.shape == reference.shape, (k, s, p, d, ceil)
        if torch.isinf(reference).any():
            # a window made of padding alone (dilation): documented to give 0
            assert torch.equal(out[torch.isinf(reference)], torch.zeros_like(out[torch.isinf(reference)]))
            continue
        torch.testing.assert_close(out, expected_p_pool2d(x, 1.5, k, s, p, d, ceil), rtol=1e-10, atol=1e-12)
        checked += 1
    assert checked >= len(GEOMETRIES) // 2


def test_rectangular_geometry():
    x = torch.rand(1, 2, 11, 9, dtype=torch.float64)
    args = ((3, 2), (2, 1), (1, 0), (1, 2), True)
    out = p_pool2d(x, 2.0, *args)
    assert out.shape == F.max_pool2d(x, *args).shape
    torch.testing.assert_close(out, expected_p_pool2d(x, 2.0, *args))


def test_non_contiguous_and_channels_last_inputs():
    base = torch.rand(2, 3, 10, 12, dtype=torch.float64)
    expected = expected_p_pool2d(base, 2.0, 3, 2, 1)
    for x in (base.transpose(2, 3).contiguous().transpose(2, 3), base.to(memory_format=torch.channels_last)):
        torch.testing.assert_close(p_pool2d(x, 2.0, 3, 2, 1), expected)
    sliced = torch.rand(2, 3, 10, 24, dtype=torch.float64)[..., ::2]
    torch.testing.assert_close(p_pool2d(sliced, 2.0, 2), expected_p_pool2d(sliced, 2.0, 2))


# ------------------------------------------------------------------------------------ limits


@pytest.mark.parametrize(
    "k, s, p, ceil", [(2, 2, 0, False), (3, 2, 1, False), (3, 2, 1, True), (2, 2, 1, True), (3, 1, 1, False), (4, 3, 2, True)]
)
def test_alpha_zero_is_average_pooling_forward_and_backward(k, s, p, ceil):
    x = (torch.rand(2, 3, 9, 8, dtype=torch.float64) + 0.1).requires_grad_()
    out = p_pool2d(x, 0.0, k, s, p, 1, ceil)
    x_ref = x.detach().clone().requires_grad_()
    ref = F.avg_pool2d(x_ref, k, s, p, ceil, count_include_pad=False)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    grad = torch.rand_like(out)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-6)


def _distinct(shape, dtype=torch.float64):
    """Distinct positive values at least 5% apart, so that alpha = 1e3 is max pooling to machine precision."""
    numel = math.prod(shape)
    return torch.exp(0.05 * torch.randperm(numel, dtype=dtype)).reshape(shape) * 0.01


@pytest.mark.parametrize("k, s, p, d, ceil", [(2, 2, 0, 1, False), (3, 2, 1, 1, False), (3, 2, 1, 2, True), (2, 1, 0, 1, False)])
def test_large_alpha_is_max_pooling_forward_and_backward(k, s, p, d, ceil):
    x = _distinct((2, 3, 7, 6)).requires_grad_()
    out = p_pool2d(x, 1e3, k, s, p, d, ceil)
    x_ref = x.detach().clone().requires_grad_()
    ref = F.max_pool2d(x_ref, k, s, p, d, ceil)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=0)
    grad = torch.rand_like(out) + 0.5
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "k, s, p, d, ceil", [(2, 2, 0, 1, False), (3, 2, 1, 1, True), (3, 1, 1, 2, False), ((2, 3), (1, 2), (1, 1), 1, True)]
)
@pytest.mark.parametrize("per_channel", [False, True])
def test_gradcheck_input_and_alpha(seed, k, s, p, d, ceil, per_channel):
    torch.manual_seed(seed)
    x = (torch.rand(2, 3, 6, 7, dtype=torch.float64) + 0.1).requires_grad_()
    alpha = (torch.rand(3 if per_channel else 1, dtype=torch.float64) * 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, a: p_pool2d(x, a, k, s, p, d, ceil), (x, alpha))


def test_gradcheck_on_relu_maps_with_zeros():
    """The documented x = 0 rule (weight held constant below EPS) is what finite differences see."""
    x = torch.relu(torch.randn(1, 2, 6, 6, dtype=torch.float64)).requires_grad_()
    assert (x == 0).any()
    for a in (0.0, 0.5, 2.0):
        alpha = torch.tensor([a], dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda x, alpha: p_pool2d(x, alpha, 2), (x, alpha))


@pytest.mark.parametrize("per_channel", [False, True])
def test_gradients_match_autograd_through_the_oracle(per_channel):
    x = torch.relu(torch.randn(2, 4, 9, 9, dtype=torch.float64)).requires_grad_()
    alpha = (torch.rand(4 if per_channel else 1, dtype=torch.float64) * 4).requires_grad_()
    grad = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    gx, ga = torch.autograd.grad(p_pool2d(x, alpha, 3, 2, 1, 1, True), (x, alpha), grad)
    ex, ea = torch.autograd.grad(expected_p_pool2d(x, alpha, 3, 2, 1, 1, True), (x, alpha), grad)
    torch.testing.assert_close(gx, ex)
    torch.testing.assert_close(ga, ea)


def test_gradient_at_zero_is_the_window_weight():
    """Rule at x = 0: dy/dx_i = w_i (the weight term is zero below EPS)."""
    x = torch.tensor([[[[0.0, 0.0], [0.0, 2.0]]]], dtype=torch.float64, requires_grad=True)
    (g0,) = torch.autograd.grad(p_pool2d(x, 0.0, 2).sum(), x)
    torch.testing.assert_close(g0, torch.full_like(x, 0.25))  # average pooling
    (g1,) = torch.autograd.grad(p_pool2d(x, 1.0, 2).sum(), x)
    zero_weight = EPS / (3 * EPS + 2.0)  # w ~ max(x, EPS)^1
    torch.testing.assert_close(g1[0, 0, 0, 0], torch.tensor(zero_weight, dtype=torch.float64))


def test_backward_keeps_no_window_sized_tensor():
    """Saved for backward: the input, alpha and one output-sized float32 tensor; nothing k*k-sized."""
    x = torch.rand(2, 8, 32, 32, requires_grad=True)
    alpha = torch.tensor(1.0, requires_grad=True)
    out, saved = saved_for_backward(lambda: p_pool2d(x, alpha, 3, 2, 1))
    extra = [t for t in saved if t.data_ptr() != x.data_ptr() and t.numel() > 1]
    assert len(extra) == 1
    assert extra[0].shape == out.shape and extra[0].dtype == torch.float32
    assert sum(t.numel() for t in saved) <= x.numel() + out.numel() + alpha.numel()


# ------------------------------------------------------------------------------------ dtypes

DTYPE_TOLERANCES = {torch.float32: (1e-5, 1e-6), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1e-2)}


@pytest.mark.parametrize("dtype", list(DTYPE_TOLERANCES))
@pytest.mark.parametrize("alpha", [0.0, 1.0, 7.5])
def test_low_precision_matches_the_oracle(dtype, alpha):
    rtol, atol = DTYPE_TOLERANCES[dtype]
    x = torch.relu(torch.randn(2, 3, 10, 10)).to(dtype).requires_grad_()
    a = torch.tensor([alpha], requires_grad=True)
    out = p_pool2d(x, a, 3, 2, 1)
    assert out.dtype == dtype
    x64 = x.detach().double().requires_grad_()
    a64 = a.detach().double().requires_grad_()
    ref = expected_p_pool2d(x64, a64, 3, 2, 1)
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol)
    grad = torch.rand_like(ref)
    gx, ga = torch.autograd.grad(out, (x, a), grad.to(dtype))
    ex, ea = torch.autograd.grad(ref, (x64, a64), grad)
    assert gx.dtype == dtype and ga.dtype == torch.float32
    torch.testing.assert_close(gx.double(), ex, rtol=rtol, atol=atol)
    # dL/dalpha sums many terms: compare relative to their scale
    torch.testing.assert_close(ga.double(), ea, rtol=rtol, atol=atol * ex.abs().sum().item() / ex.numel() * 10)


def test_autocast_bf16_on_cpu():
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    x = torch.rand(2, 3, 12, 12)
    alpha = torch.tensor(2.0, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = torch.relu(conv(x))
        assert features.dtype == torch.bfloat16
        out = p_pool2d(features, alpha, 2)
        direct = p_pool2d(x, alpha, 2)  # float32 input stays float32 and is unaffected by autocast
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), expected_p_pool2d(features.detach().double(), 2.0, 2), rtol=1.6e-2, atol=1e-2)
    assert direct.dtype == torch.float32
    torch.testing.assert_close(direct, p_pool2d(x, alpha, 2))
    out.float().sum().backward()
    assert torch.isfinite(alpha.grad) and torch.isfinite(conv.weight.grad).all()


# -------------------------------------------------------------------------- numerics, domain

ALPHAS = [0.0, 1e-3, 0.5, 1.0, 3.0, 50.0, 100.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_finite_on_zeros_tiny_and_huge_values(dtype, alpha):
    x = torch.relu(torch.randn(1, 2, 8, 8))
    x[0, 0, :4, :4] = 0.0  # all-zero windows
    x[0, 1, 0, 0] = 1e-30
    x[0, 1, 0, 3] = torch.finfo(torch.float32).tiny / 4  # subnormal in float32
    x[0, 1, 5, 5] = 1e4 if dtype != torch.float16 else 6e4
    x = x.to(dtype).requires_grad_()
    a = torch.tensor([alpha], requires_grad=True)
    out = p_pool2d(x, a, 2)
    gx, ga = torch.autograd.grad(out.float().sum(), (x, a))
    assert torch.isfinite(out).all() and torch.isfinite(gx).all() and torch.isfinite(ga).all()
    assert (out[0, 0, :2, :2] == 0).all()


def test_output_is_continuous_at_alpha_zero_on_relu_maps():
    """No jump between alpha = 0 and 1e-3, even on windows that are mostly zeros."""
    x = torch.relu(torch.randn(4, 8, 16, 16, dtype=torch.float64))
    x[0, 0, :2, :2] = torch.tensor([[0.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    y0 = p_pool2d(x, 0.0, 2)
    gaps = [(p_pool2d(x, a, 2) - y0).abs().max().item() for a in (1e-3, 1e-4, 1e-5)]
    assert gaps[0] < 0.05 * x.max().item()
    assert gaps[0] > gaps[1] > gaps[2]  # shrinks with alpha
    assert abs(p_pool2d(x, 1e-3, 2)[0, 0, 0, 0].item() - 0.25) < 0.01  # a plain x^alpha gives 1.0 here


def test_negative_inputs_are_weighted_as_zero_but_keep_their_value():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    for a in (0.0, 2.0):
        out = p_pool2d(x, a, 2)
        torch.testing.assert_close(out, expected_p_pool2d(x, a, 2))
    torch.testing.assert_close(p_pool2d(x, 0.0, 2), F.avg_pool2d(x, 2))  # alpha = 0 stays average pooling
    window = torch.tensor([[[[-1.0, -3.0], [2.0, 4.0]]]], dtype=torch.float64)
    weights = torch.tensor([EPS, EPS, 2.0, 4.0], dtype=torch.float64)
    expected = (weights * torch.tensor([-1.0, -3.0, 2.0, 4.0], dtype=torch.float64)).sum() / weights.sum()
    torch.testing.assert_close(p_pool2d(window, 1.0, 2).squeeze(), expected)
    out = p_pool2d(x, 3.0, 2)
    assert (out <= F.max_pool2d(x, 2) + 1e-12).all() and (out >= -F.max_pool2d(-x, 2) - 1e-12).all()
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(grad).all()


def test_nan_reaches_the_output_of_its_windows_only():
    x = torch.rand(1, 1, 4, 4)
    x[0, 0, 0, 0] = float("nan")
    for a in (0.0, 1.0, 100.0):
        out = p_pool2d(x, a, 2)
        assert torch.isnan(out[0, 0, 0, 0])
        assert torch.isfinite(out[0, 0, 1:, :]).all() and torch.isfinite(out[0, 0, :, 1:]).all()


# -------------------------------------------------------------------------------- properties


def test_output_lies_within_the_window_range():
    x = torch.rand(2, 3, 11, 11, dtype=torch.float64)
    lo, hi = -F.max_pool2d(-x, 3, 2, 1), F.max_pool2d(x, 3, 2, 1)
    for a in ALPHAS:
        out = p_pool2d(x, a, 3, 2, 1)
        assert (out >= lo - 1e-12).all() and (out <= hi + 1e-12).all()


def test_output_is_non_decreasing_in_alpha():
    x = torch.relu(torch.randn(2, 3, 12, 12, dtype=torch.float64))
    outs = torch.stack([p_pool2d(x, a, 3, 2, 1) for a in torch.linspace(0, 20, 41).tolist()])
    assert (outs.diff(dim=0) >= -1e-12).all()
    assert (outs[-1] - outs[0]).max() > 0.1  # and it does move


@pytest.mark.parametrize("scale", [0.25, 3.0, 100.0])
def test_positive_homogeneity(scale):
    x = torch.rand(2, 3, 9, 9, dtype=torch.float64) + 0.01  # above EPS after scaling
    torch.testing.assert_close(p_pool2d(scale * x, 2.5, 3, 2, 1), scale * p_pool2d(x, 2.5, 3, 2, 1))


def test_constant_window_gives_the_constant():
    x = torch.full((1, 2, 6, 6), 0.7, dtype=torch.float64)
    for a in ALPHAS:
        out = p_pool2d(x, a, 3, 2, 1, 1, True)
        torch.testing.assert_close(out, torch.full_like(out, 0.7))


def test_per_channel_alpha_applies_per_channel():
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    alpha = torch.tensor([0.0, 2.0, 50.0], dtype=torch.float64)
    out = p_pool2d(x, alpha, 2)
    for c, a in enumerate(alpha.tolist()):
        torch.testing.assert_close(out[:, c], p_pool2d(x[:, c : c + 1], a, 2)[:, 0])


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda x: p_pool2d(x[0, 0], 1.0, 2), ValueError, "3D .* or 4D"),
        (lambda x: p_pool2d(x.long(), 1.0, 2), TypeError, "floating-point"),
        (lambda x: p_pool2d(x, -0.5, 2), ValueError, "alpha.*>= 0"),
        (lambda x: p_pool2d(x, float("nan"), 2), ValueError, "alpha"),
        (lambda x: p_pool2d(x, torch.ones(2), 2), ValueError, "1 value .* or 3 values"),
        (lambda x: p_pool2d(x, 1.0, 2, padding=2), ValueError, "at most half"),
        (lambda x: p_pool2d(x, 1.0, 0), ValueError, "kernel_size"),
        (lambda x: p_pool2d(x, 1.0, 2, stride=0), ValueError, "stride"),
        (lambda x: p_pool2d(x, 1.0, 2.5), TypeError, "kernel_size"),
        (lambda x: p_pool2d(x, 1.0, 9), ValueError, "too small"),
    ],
)
def test_bad_input_raises_a_clear_error(call, error, match):
    with pytest.raises(error, match=match):
        call(torch.rand(1, 3, 8, 8))


def test_channel_count_check_is_the_same_for_every_layer():
    from lit_ppool import GlobalPPool2d, PPool2d, create_pool2d
    from lit_ppool.layers.registry import pool_with_padding

    x = torch.rand(1, 3, 6, 6)
    p, strided = PPool2d(2, num_channels=4), create_pool2d("strided_conv", 2, num_channels=4)
    calls = [
        ("PPool2d", p),
        ("PPool2d", lambda x: pool_with_padding(p, x, 0, False)),
        ("GlobalPPool2d", GlobalPPool2d(num_channels=4)),
        ("StridedConvPool2d", strided),
        ("StridedConvPool2d", lambda x: pool_with_padding(strided, x, 0, False)),
    ]
    for layer, call in calls:
        with pytest.raises(ValueError, match=rf"{layer} was built with num_channels=4, but got an input of shape \(1, 3, 6, 6\)"):
            call(x)
