"""p_pool2d with a dense alpha, one value per window: values and gradients against the float64 oracle."""

import pytest
import torch

from lit_ppool.functional import p_pool2d

from helpers.oracle import expected_p_pool2d
from helpers.saved import saved_for_backward

# (kernel, stride, padding, dilation, ceil_mode, input size, output size)
GEOMETRIES = [
    (2, 2, 0, 1, False, (6, 7), (3, 3)),
    (3, 2, 1, 1, True, (6, 7), (4, 4)),
    (3, 1, 1, 2, False, (6, 7), (4, 5)),
    ((2, 3), (1, 2), (1, 1), 1, True, (6, 7), (7, 4)),
]


def _dense(shape, seed=0, scale=4.0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=generator, dtype=torch.float64) * scale


@pytest.mark.parametrize("k, s, p, d, ceil, size, out", GEOMETRIES)
@pytest.mark.parametrize("broadcast", ["full", "per_image", "per_position"])
def test_gradcheck_input_and_dense_alpha(k, s, p, d, ceil, size, out, broadcast):
    torch.manual_seed(0)
    x = (torch.rand(2, 3, *size, dtype=torch.float64) + 0.1).requires_grad_()
    shape = {"full": (2, 3, *out), "per_image": (2, 1, *out), "per_position": (1, 1, *out)}[broadcast]
    alpha = _dense(shape).requires_grad_()
    assert p_pool2d(x, alpha, k, s, p, d, ceil).shape == (2, 3, *out)
    assert torch.autograd.gradcheck(lambda x, a: p_pool2d(x, a, k, s, p, d, ceil), (x, alpha))


def test_gradcheck_dense_alpha_on_relu_maps_with_zeros():
    x = torch.relu(torch.randn(1, 2, 6, 6, dtype=torch.float64)).requires_grad_()
    assert (x == 0).any()
    alpha = _dense((1, 2, 3, 3), scale=3.0).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, a: p_pool2d(x, a, 2), (x, alpha))


@pytest.mark.parametrize("k, s, p, d, ceil, size, out", GEOMETRIES)
def test_dense_alpha_matches_the_oracle_in_value_and_gradient(k, s, p, d, ceil, size, out):
    x = torch.relu(torch.randn(2, 4, *size, dtype=torch.float64)).requires_grad_()
    alpha = _dense((2, 4, *out), seed=1, scale=20.0).requires_grad_()
    grad = torch.randn(2, 4, *out, dtype=torch.float64)
    y = p_pool2d(x, alpha, k, s, p, d, ceil)
    expected = expected_p_pool2d(x, alpha, k, s, p, d, ceil)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(torch.autograd.grad(y, (x, alpha), grad), torch.autograd.grad(expected, (x, alpha), grad))


def test_each_window_uses_its_own_alpha():
    """Window (i, j) of a dense alpha pools exactly as the scalar alpha[i, j] pools that window."""
    x = torch.rand(1, 2, 6, 6, dtype=torch.float64)
    alpha = torch.tensor([[0.0, 1.0, 50.0], [3.0, 0.5, 0.0], [100.0, 2.0, 7.0]], dtype=torch.float64)
    y = p_pool2d(x, alpha.expand(1, 2, 3, 3), 2)
    for i in range(3):
        for j in range(3):
            window = x[..., 2 * i : 2 * i + 2, 2 * j : 2 * j + 2]
            torch.testing.assert_close(y[..., i : i + 1, j : j + 1], p_pool2d(window, alpha[i, j].item(), 2))


def test_a_constant_map_is_the_scalar_alpha_and_its_gradient_sums():
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    dense = torch.full((2, 3, 4, 4), 2.5, dtype=torch.float64, requires_grad=True)
    flat = torch.tensor([2.5], dtype=torch.float64, requires_grad=True)
    y_dense, y_flat = p_pool2d(x, dense, 2), p_pool2d(x, flat, 2)
    torch.testing.assert_close(y_dense, y_flat)
    (g_dense,) = torch.autograd.grad(y_dense.sum(), dense)
    (g_flat,) = torch.autograd.grad(y_flat.sum(), flat)
    torch.testing.assert_close(g_dense.sum().reshape(1), g_flat)


def test_a_map_that_varies_over_channels_only_is_the_per_channel_alpha():
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    per_channel = torch.tensor([0.0, 2.0, 50.0], dtype=torch.float64)
    torch.testing.assert_close(p_pool2d(x, per_channel.view(1, 3, 1, 1), 2), p_pool2d(x, per_channel, 2))


def test_unbatched_input_takes_a_three_dimensional_map():
    x = torch.rand(3, 8, 8, dtype=torch.float64)
    alpha = _dense((3, 4, 4))
    torch.testing.assert_close(p_pool2d(x, alpha, 2), p_pool2d(x.unsqueeze(0), alpha.unsqueeze(0), 2).squeeze(0))


@pytest.mark.parametrize("dtype, rtol, atol", [(torch.float32, 1e-5, 1e-6), (torch.bfloat16, 1.6e-2, 1e-2)])
def test_low_precision_dense_alpha_matches_the_oracle(dtype, rtol, atol):
    x = torch.relu(torch.randn(2, 3, 10, 10)).to(dtype).requires_grad_()
    alpha = _dense((2, 3, 5, 5), scale=10.0).float().requires_grad_()
    out = p_pool2d(x, alpha, 3, 2, 1)
    assert out.dtype == dtype
    x64, a64 = x.detach().double().requires_grad_(), alpha.detach().double().requires_grad_()
    ref = expected_p_pool2d(x64, a64, 3, 2, 1)
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol)
    grad = torch.rand_like(ref)
    gx, ga = torch.autograd.grad(out, (x, alpha), grad.to(dtype))
    ex, ea = torch.autograd.grad(ref, (x64, a64), grad)
    assert gx.dtype == dtype and ga.dtype == torch.float32 and ga.shape == alpha.shape
    torch.testing.assert_close(gx.double(), ex, rtol=rtol, atol=atol)
    torch.testing.assert_close(ga.double(), ea, rtol=rtol, atol=atol)


def test_nan_in_the_map_reaches_its_window_only():
    x = torch.rand(1, 1, 4, 4)
    alpha = torch.ones(1, 1, 2, 2)
    alpha[0, 0, 0, 1] = float("nan")
    y = p_pool2d(x, alpha, 2)
    assert torch.isnan(y[0, 0, 0, 1]) and torch.isfinite(y.flatten()[[0, 2, 3]]).all()


def test_backward_keeps_output_sized_tensors_only():
    """Saved for backward with a dense alpha: the input, the map and one output-sized tensor; nothing k*k-sized."""
    x = torch.rand(2, 8, 32, 32, requires_grad=True)
    alpha = torch.rand(2, 8, 16, 16, requires_grad=True)
    out, saved = saved_for_backward(lambda: p_pool2d(x, alpha, 3, 2, 1))
    assert sum(t.numel() for t in saved) <= x.numel() + 2 * out.numel()


@pytest.mark.parametrize(
    "shape, match",
    [
        ((1, 3, 3, 4), r"broadcast to the output's shape \(1, 3, 4, 4\)"),
        ((2, 3, 4, 4), r"broadcast to the output's shape \(1, 3, 4, 4\)"),
        ((3, 4), r"1 value .* or 3 values .*one per window"),
    ],
)
def test_a_map_of_the_wrong_shape_is_refused_clearly(shape, match):
    with pytest.raises(ValueError, match=match):
        p_pool2d(torch.rand(1, 3, 8, 8), torch.ones(shape), 2)
