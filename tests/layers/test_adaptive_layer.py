"""AdaptivePPool2d: the side branch as published, the pooling with its dense alpha, gradients, options, the table."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_ppool import AdaptivePPool2d, create_pool2d, p_pool2d, swap_pooling
from lit_ppool.layers.registry import pool_with_padding, resolve_pooling

from helpers.oracle import expected_p_pool2d

# (kernel, stride, padding, dilation, ceil_mode)
GEOMETRIES = [(2, 2, 0, 1, False), (3, 2, 1, 1, False), (3, 2, 1, 1, True), ((2, 3), (1, 2), (1, 1), 2, False), (3, 3, 0, 1, True)]


def _branch_by_hand(layer: AdaptivePPool2d, x, padding):
    """The published branch written out: dwconv(k, s, p, d) -> PReLU -> dw 1x1 conv with bias -> clamp."""
    c = layer.num_channels
    h = F.conv2d(x, layer.window_conv.weight, None, layer.stride, padding, layer.dilation, groups=c)
    h = F.prelu(h, layer.activation.weight)
    h = F.conv2d(h, layer.alpha_conv.weight, layer.alpha_conv.bias, groups=c)
    return h.clamp(layer.alpha_min, layer.alpha_max)


@pytest.mark.parametrize("k, s, p, d, ceil", GEOMETRIES)
def test_output_shape_is_max_pooling_s_and_the_alpha_map_has_it(k, s, p, d, ceil):
    layer = AdaptivePPool2d(k, s, p, d, ceil, num_channels=3)
    for size in ((9, 9), (10, 7)):
        x = torch.rand(2, 3, *size)
        expected = F.max_pool2d(x, k, s, p, d, ceil).shape
        assert layer(x).shape == expected
        assert layer.alpha_map(x).shape == expected
        assert layer(x[0]).shape == expected[1:]


@pytest.mark.parametrize("k, s, p, d, ceil", [g for g in GEOMETRIES if not g[-1]])
def test_alpha_map_is_the_published_branch_and_forward_pools_with_it(k, s, p, d, ceil):
    torch.manual_seed(0)
    layer = AdaptivePPool2d(k, s, p, d, ceil, num_channels=3, alpha_min=0.0, alpha_init=2.0).double()
    x = torch.relu(torch.randn(2, 3, 9, 10, dtype=torch.float64))
    alpha = layer.alpha_map(x)
    torch.testing.assert_close(alpha, _branch_by_hand(layer, x, p))
    torch.testing.assert_close(layer(x), expected_p_pool2d(x, alpha, k, s, p, d, ceil))


def test_the_map_is_clamped_to_the_range_and_starts_at_alpha_init():
    layer = AdaptivePPool2d(2, num_channels=4, alpha_min=1.0, alpha_max=50.0, alpha_init=30.0)
    with torch.no_grad():
        layer.alpha_conv.weight.fill_(0.0)
    torch.testing.assert_close(layer.alpha_map(torch.rand(1, 4, 8, 8)), torch.full((1, 4, 4, 4), 30.0))
    with torch.no_grad():
        layer.alpha_conv.weight.fill_(1e4)
    alpha = layer.alpha_map(torch.randn(2, 4, 8, 8))
    assert alpha.min() >= 1.0 and alpha.max() <= 50.0
    assert (alpha == 1.0).any() and (alpha == 50.0).any()


def test_a_window_pools_like_max_where_alpha_is_high_and_like_average_where_it_is_low():
    layer = AdaptivePPool2d(2, num_channels=1, alpha_min=0.0, alpha_max=100.0, alpha_init=0.0)
    with torch.no_grad():  # alpha = 100 on the left half of the output, 0 on the right
        layer.window_conv.weight.fill_(0.0)
        layer.alpha_conv.bias.fill_(0.0)
    x = torch.rand(1, 1, 4, 8) + 0.1
    left = torch.zeros(1, 1, 2, 4, dtype=torch.bool)
    left[..., :2] = True
    alpha = torch.where(left, 100.0, 0.0)
    torch.testing.assert_close(p_pool2d(x, alpha, 2)[..., :2], F.max_pool2d(x, 2)[..., :2], rtol=2e-2, atol=0)
    torch.testing.assert_close(p_pool2d(x, alpha, 2)[..., 2:], F.avg_pool2d(x, 2)[..., 2:])


def test_gradcheck_through_the_branch_and_the_input():
    torch.manual_seed(0)
    layer = AdaptivePPool2d(3, 2, 1, num_channels=2, alpha_min=0.0, alpha_max=50.0, alpha_init=3.0).double()
    with torch.no_grad():
        layer.alpha_conv.weight.mul_(0.5)  # keeps every alpha inside the range (the clamp is not differentiable at its ends)
    x = (torch.rand(1, 2, 7, 6, dtype=torch.float64) + 0.1).requires_grad_()
    params = dict(layer.named_parameters())

    def pooled(x, *values):
        return torch.func.functional_call(layer, dict(zip(params, values)), (x,))

    assert torch.autograd.gradcheck(pooled, (x, *(p.detach().requires_grad_() for p in params.values())))


def test_every_branch_parameter_gets_a_gradient():
    layer = AdaptivePPool2d(2, num_channels=3)
    layer(torch.rand(2, 3, 8, 8)).square().sum().backward()
    for name, parameter in layer.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_same_padding_runs_the_branch_at_the_new_geometry():
    layer = AdaptivePPool2d(3, 2, num_channels=2)
    x = torch.rand(1, 2, 9, 9)
    out = pool_with_padding(layer, x, 1, True)
    assert out.shape == F.max_pool2d(x, 3, 2, 1, 1, True).shape
    torch.testing.assert_close(out, p_pool2d(x, layer.alpha_map(x, 1, True), 3, 2, 1, 1, True))


@pytest.mark.parametrize(
    "options, match",
    [
        ({}, "num_channels.*int > 0"),
        ({"num_channels": 0}, "num_channels"),
        ({"num_channels": 2, "alpha_min": 5.0, "alpha_max": 5.0}, "alpha_min < alpha_max"),
        ({"num_channels": 2, "alpha_min": -1.0}, "0 <= alpha_min"),
        ({"num_channels": 2, "alpha_init": 60.0}, r"alpha_init.*\[alpha_min=1.0, alpha_max=50.0\]"),
        ({"num_channels": 2, "alpha_max": float("inf")}, "alpha_max.*finite"),
    ],
)
def test_bad_options_are_refused_clearly(options, match):
    with pytest.raises(ValueError, match=match):
        AdaptivePPool2d(2, **options)


def test_an_input_with_another_channel_count_is_refused():
    with pytest.raises(ValueError, match=r"AdaptivePPool2d was built with num_channels=4"):
        AdaptivePPool2d(2, num_channels=4)(torch.rand(1, 3, 8, 8))


def test_the_table_builds_and_swaps_it():
    resolved = resolve_pooling("p_adaptive")
    assert resolved.needs_channels and resolved.spec.learnable and not resolved.spec.has_alpha
    assert isinstance(create_pool2d("p-adaptive", 2, num_channels=3), AdaptivePPool2d)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 4, 3, padding=1), nn.MaxPool2d(3, 2, 1))
    report = swap_pooling(model, "p_adaptive", example_input=torch.rand(1, 3, 16, 16))
    assert [type(swap.new) for swap in report] == [AdaptivePPool2d, AdaptivePPool2d]
    assert (model[2].num_channels, model[4].num_channels) == (8, 4)
    assert model(torch.rand(2, 3, 16, 20)).shape == (2, 4, 4, 5)


def test_init_options_rebuild_the_layer():
    layer = AdaptivePPool2d(3, 2, 1, num_channels=5, alpha_min=0.5, alpha_max=20.0, alpha_init=4.0)
    rebuilt = AdaptivePPool2d(3, 2, 1, **layer.init_options())
    rebuilt.load_state_dict(layer.state_dict())
    x = torch.rand(1, 5, 9, 9)
    torch.testing.assert_close(rebuilt(x), layer(x))
