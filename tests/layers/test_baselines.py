"""The paper's baselines: each checked against its formula, its limits and its gradients."""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_ppool.layers.baselines import (
    AveragePool2d,
    DetailPreservingPool2d,
    GatedPool2d,
    LpPool2d,
    MixedPool2d,
    SoftPool2d,
    StridedConvPool2d,
)
from lit_ppool.layers.registry import create_pool2d, pool_requires_num_channels
from lit_ppool.layers.same import SamePadPool2d

LEARNED = ["lp", "gated", "mixed", "dpp", "strided_conv", "softpool"]


def build(name, *args, **kwargs):
    if pool_requires_num_channels(name):
        kwargs.setdefault("num_channels", 2)
    if name == "lp":
        kwargs.setdefault("learnable", True)
    return create_pool2d(name, *args, **kwargs)


def windows64(x, k, s, p=0):
    """Each window of x as the last dim, float64, padding marked NaN (a naive reference)."""
    x = F.pad(x.double(), (p, p, p, p), value=math.nan)
    return x.unfold(2, k, s).unfold(3, k, s).flatten(-2)


# ---------------------------------------------------------------- common properties
@pytest.mark.parametrize("name", LEARNED)
def test_gradcheck_float64(name):
    torch.manual_seed(0)
    layer = build(name, 3, stride=2, padding=1, ceil_mode=True).double()
    x = (torch.rand(1, 2, 5, 6, dtype=torch.float64) + 0.1).requires_grad_()
    params = [p for p in layer.parameters()]
    assert torch.autograd.gradcheck(lambda x, *ps: layer(x), (x, *params), atol=1e-6)


@pytest.mark.parametrize("name", LEARNED)
def test_finite_gradients_on_zeros_and_large_values(name):
    layer = build(name, 2)
    x = torch.zeros(1, 2, 4, 4)
    x[0, 0, 0, 0] = 1e4
    x.requires_grad_()
    layer(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    for param in layer.parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all()


@pytest.mark.parametrize("name", ["gated", "mixed", "dpp", "softpool"])  # convex combinations of the window
def test_output_within_window_range(name):
    torch.manual_seed(1)
    x = torch.randn(2, 2, 6, 6) * 3
    out = build(name, 2)(x)
    win = windows64(x, 2, 2)
    assert (out.double() >= win.amin(-1) - 1e-5).all() and (out.double() <= win.amax(-1) + 1e-5).all()


@pytest.mark.parametrize("name", LEARNED + ["avg"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_in_and_out(name, dtype):
    layer = build(name, 2)
    x = torch.rand(1, 2, 4, 4)
    out = layer(x.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), layer(x), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("name", LEARNED)
def test_unbatched_equals_batched(name):
    layer = build(name, 3, 2, 1)
    x = torch.rand(2, 7, 7)
    torch.testing.assert_close(layer(x), layer(x[None])[0])


@pytest.mark.parametrize("name", LEARNED)
def test_bad_input_is_refused_clearly(name):
    with pytest.raises(ValueError, match="Expected argument `input`"):
        build(name, 2)(torch.rand(4, 4))
    with pytest.raises(ValueError, match="too small"):
        build(name, 3)(torch.rand(1, 2, 2, 2))
    # the same errors as p_pool2d: a non-floating dtype or a non-tensor is a TypeError
    with pytest.raises(TypeError, match="floating-point"):
        build(name, 2)(torch.ones(1, 2, 4, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        build(name, 2)([[1.0]])


# ---------------------------------------------------------------- avg
def test_avg_never_counts_padding_and_refuses_dilation():
    x = torch.rand(1, 2, 7, 7)
    expected = F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False)
    torch.testing.assert_close(AveragePool2d(3, 2, 1, ceil_mode=True)(x), expected)
    with pytest.raises(ValueError, match="`dilation` to be 1"):
        AveragePool2d(3, 2, 1, dilation=2)


# ---------------------------------------------------------------- lp
@pytest.mark.parametrize("p", [1.0, 2.0, 3.5])
def test_lp_equals_torch_lppool_on_nonnegative_inputs(p):
    x = torch.rand(2, 3, 8, 6)
    torch.testing.assert_close(LpPool2d(2, norm_type=p)(x), nn.LPPool2d(p, 2)(x))


def test_lp_limits_and_learnable_p():
    x = torch.rand(1, 2, 6, 6) + 0.01
    torch.testing.assert_close(LpPool2d(2, norm_type=1.0, normalize=True)(x), F.avg_pool2d(x, 2))
    torch.testing.assert_close(LpPool2d(2, norm_type=500.0, normalize=True)(x), F.max_pool2d(x, 2), atol=1e-2, rtol=1e-2)
    layer = LpPool2d(2, norm_type=3.0, learnable=True)
    assert layer.norm_type.item() == pytest.approx(3.0)
    layer(torch.zeros(1, 1, 4, 4)).sum().backward()  # all-zero windows: nn.LPPool2d's grad is inf here
    assert torch.isfinite(layer.norm_type_raw.grad)
    with pytest.raises(ValueError, match="`norm_type`"):
        LpPool2d(2, norm_type=1.0, learnable=True)


# ---------------------------------------------------------------- mixed / gated (Lee et al. 2016)
def test_mixed_limits_and_formula():
    x = torch.randn(2, 3, 6, 6)
    mx, av = F.max_pool2d(x, 3, 2, 1), F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
    layer = MixedPool2d(3, 2, 1, mix_init=0.25)
    torch.testing.assert_close(layer(x), 0.25 * mx + 0.75 * av)
    with torch.no_grad():
        layer.mix_raw.fill_(40.0)
    torch.testing.assert_close(layer(x), mx)
    with torch.no_grad():
        layer.mix_raw.fill_(-40.0)
    torch.testing.assert_close(layer(x), av)
    with pytest.raises(ValueError, match="`mix_init`"):
        MixedPool2d(2, mix_init=1.0)


def test_gated_gate_is_responsive_to_the_region():
    torch.manual_seed(0)
    x = torch.rand(1, 2, 6, 6)
    mx, av = F.max_pool2d(x, 2), F.avg_pool2d(x, 2)
    layer = GatedPool2d(2)
    torch.testing.assert_close(layer(x), (mx + av) / 2)  # omega = 0: gate 0.5
    with torch.no_grad():
        layer.gate_weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 3.0]]))
    win = windows64(x, 2, 2)
    gate = torch.sigmoid((win * torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)).sum(-1))
    torch.testing.assert_close(layer(x).double(), gate * mx.double() + (1 - gate) * av.double())
    with torch.no_grad():
        layer.gate_weight.fill_(1e3)  # positive inputs: gate -> 1, max pooling
    torch.testing.assert_close(layer(x + 0.1), F.max_pool2d(x + 0.1, 2))


# ---------------------------------------------------------------- DPP (Saeedan et al. 2018)
def test_dpp_matches_its_formula_without_smoothing():
    torch.manual_seed(0)
    x = torch.rand(1, 2, 6, 6)
    layer = DetailPreservingPool2d(2, alpha_init=0.5, lambda_init=2.0, smooth=False)
    win = windows64(x, 2, 2)
    reference = win.mean(-1, keepdim=True)
    weight = 0.5 + ((win - reference).clamp_min(0) ** 2 + 1e-6) ** (2.0 / 2)
    torch.testing.assert_close(layer(x).double(), (weight * win).sum(-1) / weight.sum(-1))
    symmetric = DetailPreservingPool2d(2, alpha_init=0.5, lambda_init=2.0, smooth=False, symmetric=True)
    weight = 0.5 + ((win - reference) ** 2 + 1e-6) ** (2.0 / 2)
    torch.testing.assert_close(symmetric(x).double(), (weight * win).sum(-1) / weight.sum(-1))


def test_dpp_limits():
    x = torch.rand(1, 2, 8, 8)
    layer = DetailPreservingPool2d(2, lambda_init=1e-12)
    torch.testing.assert_close(layer(x), F.avg_pool2d(x, 2))  # lambda -> 0: average
    detail = torch.zeros(1, 1, 4, 4)
    detail[0, 0, 0, 0] = 1.0
    strong = DetailPreservingPool2d(2, alpha_init=1e-3, lambda_init=6.0)(detail)
    assert strong[0, 0, 0, 0] > 0.9 * 1.0 > F.avg_pool2d(detail, 2)[0, 0, 0, 0]  # the detail survives
    assert DetailPreservingPool2d(2).smoothing.shape == (1, 1, 3, 3)
    assert "smoothing" not in DetailPreservingPool2d(2).state_dict()
    with pytest.raises(ValueError, match="`lambda_init`"):
        DetailPreservingPool2d(2, lambda_init=0.0)


# ---------------------------------------------------------------- strided conv
@pytest.mark.parametrize("depthwise", [True, False])
def test_strided_conv_starts_as_average(depthwise):
    x = torch.rand(2, 4, 9, 9)
    layer = StridedConvPool2d(3, 2, 1, num_channels=4, depthwise=depthwise)
    torch.testing.assert_close(layer(x), F.avg_pool2d(x, 3, 2, 1, count_include_pad=True))
    assert layer.weight.shape == ((4, 1, 3, 3) if depthwise else (4, 4, 3, 3))
    layer(x).sum().backward()
    assert layer.weight.grad.abs().sum() > 0


def test_strided_conv_needs_its_channel_count():
    with pytest.raises(ValueError, match="`num_channels`"):
        StridedConvPool2d(2)
    with pytest.raises(ValueError, match="num_channels=4"):
        StridedConvPool2d(2, num_channels=4)(torch.rand(1, 3, 4, 4))


# ---------------------------------------------------------------- SoftPool (Stergiou et al. 2021)
def test_softpool_formula_and_limits():
    torch.manual_seed(0)
    x = torch.randn(1, 2, 7, 7)
    win = windows64(x, 3, 2, 1)
    real = ~win.isnan()
    w = torch.where(real, win, -math.inf).softmax(-1)
    expected = (w * torch.where(real, win, 0.0)).sum(-1)
    torch.testing.assert_close(SoftPool2d(3, 2, 1)(x).double(), expected)
    torch.testing.assert_close(SoftPool2d(2)(x * 1e-4) * 1e4, F.avg_pool2d(x, 2), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(SoftPool2d(2)(x * 1e3), F.max_pool2d(x * 1e3, 2))
    assert torch.isfinite(SoftPool2d(2)(torch.full((1, 1, 2, 2), 1e4))).all()
    nan = torch.rand(1, 1, 4, 4)
    nan[0, 0, 0, 0] = math.nan
    assert SoftPool2d(2)(nan).isnan()[0, 0, 0, 0]


# ---------------------------------------------------------------- "same" padding
def test_same_wrapper_reproduces_timm_maxpool2d_same_exactly():
    pool2d_same = pytest.importorskip("timm.layers.pool2d_same")
    for k, s, h, w in itertools.product([1, 2, 3, 4], [1, 2, 3], [5, 6, 7, 8], [7, 10]):
        x = torch.randn(1, 2, h, w)
        expected = pool2d_same.MaxPool2dSame(k, s)(x)
        torch.testing.assert_close(SamePadPool2d(nn.MaxPool2d(k, s))(x), expected)


@pytest.mark.parametrize("name", ["avg", "p", "lp", "gated", "mixed", "dpp", "strided_conv", "softpool"])
def test_same_wrapper_keeps_timm_shapes(name):
    pool2d_same = pytest.importorskip("timm.layers.pool2d_same")
    for k, s, h in itertools.product([2, 3], [1, 2], [5, 6]):
        x = torch.rand(1, 2, h, h + 1)
        expected = pool2d_same.AvgPool2dSame(k, s)(x)
        out = SamePadPool2d(build(name, k, s))(x)
        assert out.shape == expected.shape
    if name == "avg":  # where "same" needs no padding, the values are timm's too
        x = torch.rand(1, 2, 6, 8)
        torch.testing.assert_close(SamePadPool2d(build(name, 2, 2))(x), pool2d_same.AvgPool2dSame(2, 2)(x))
