"""lit_ppool.PPool2d: the module around p_pool2d, its alpha parametrisation and state."""

import io

import pytest
import torch

from lit_ppool import PPool2d, p_pool2d

from helpers.oracle import expected_p_pool2d


def test_module_equals_functional_forward_and_backward():
    pool = PPool2d(3, 2, 1, ceil_mode=True, alpha_init=2.5)
    x = torch.rand(2, 4, 9, 9, requires_grad=True)
    out = pool(x)
    ref = p_pool2d(x, 2.5, 3, 2, 1, 1, True)
    torch.testing.assert_close(out, ref)
    (g_module,) = torch.autograd.grad(out.sum(), x)
    (g_func,) = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(g_module, g_func)
    assert pool.alpha.item() == 2.5


def test_unbatched_input():
    pool = PPool2d(2, alpha_init=1.0)
    x = torch.rand(3, 6, 6)
    torch.testing.assert_close(pool(x), pool(x.unsqueeze(0)).squeeze(0))


def test_attributes_follow_torch_pooling():
    pool = PPool2d(3, padding=1)
    reference = torch.nn.MaxPool2d(3, padding=1)
    for name in ("kernel_size", "stride", "padding", "dilation", "ceil_mode"):
        assert getattr(pool, name) == getattr(reference, name), name


def test_repr_shows_geometry_and_alpha():
    assert repr(PPool2d(2, alpha_init=0.5)) == (
        "PPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False, alpha=0.5000)"
    )
    per_channel = PPool2d(3, 2, 1, num_channels=4, alpha_init=1.0)
    with torch.no_grad():
        per_channel.alpha_raw.copy_(torch.tensor([0.5, 1.0, 1.5, 3.0]))
    text = repr(per_channel)
    assert "kernel_size=3, stride=2, padding=1" in text
    assert "4 channels: mean 1.5000, min 0.5000, max 3.0000" in text


def test_alpha_parameter_name_and_state_dict_round_trip():
    pool = PPool2d(2, num_channels=3, alpha_init=1.0)
    with torch.no_grad():
        pool.alpha_raw.copy_(torch.tensor([0.2, 4.0, 9.0]))
    assert [name for name, _ in pool.named_parameters()] == ["alpha_raw"]
    buffer = io.BytesIO()
    torch.save(pool.state_dict(), buffer)
    buffer.seek(0)
    restored = PPool2d(2, num_channels=3)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(restored.alpha, pool.alpha)
    x = torch.rand(1, 3, 6, 6)
    torch.testing.assert_close(restored(x), pool(x))


def test_fixed_alpha_is_a_buffer():
    pool = PPool2d(2, alpha_init=3.0, learnable=False)
    assert list(pool.parameters()) == []
    assert "alpha_raw" in pool.state_dict()


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_module_moves_to_other_dtypes(dtype):
    pool = PPool2d(2, alpha_init=2.0).to(dtype)
    assert pool.alpha_raw.dtype == dtype
    x = torch.rand(2, 3, 8, 8, dtype=dtype, requires_grad=True)
    out = pool(x)
    assert out.dtype == dtype
    tolerance = {"rtol": 1.6e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {}
    torch.testing.assert_close(out.double(), expected_p_pool2d(x.detach(), 2.0, 2), **tolerance)
    out.float().sum().backward()
    assert pool.alpha_raw.grad.dtype == dtype and torch.isfinite(pool.alpha_raw.grad)


def test_per_channel_alpha_gets_per_channel_gradients():
    pool = PPool2d(2, num_channels=3, alpha_init=1.0).double()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    x[:, 0] = 0.5  # constant channel: alpha has no effect there
    pool(x).sum().backward()
    grad = pool.alpha_raw.grad
    assert grad.shape == (3,)
    assert grad[0].abs() < 1e-12 and grad[1] > 0 and grad[2] > 0
    alpha = torch.ones(3, dtype=torch.float64, requires_grad=True)
    expected_p_pool2d(x, alpha, 2).sum().backward()
    torch.testing.assert_close(grad, alpha.grad)


def test_num_channels_mismatch_is_reported():
    pool = PPool2d(2, num_channels=4)
    with pytest.raises(ValueError, match="num_channels=4"):
        pool(torch.rand(1, 3, 8, 8))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha_init": -1.0}, "alpha_init"),
        ({"alpha_init": 200.0}, "alpha_init"),
        ({"alpha_max": 0.0}, "alpha_max"),
        ({"num_channels": 0}, "num_channels"),
        ({"padding": 3}, "at most half"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PPool2d(2, **kwargs)


# ---------------------------------------------------------------- alpha stays in range, never stuck


def _push(pool, optimiser, direction, steps, x):
    """Drive alpha with the pooling output itself: y grows with alpha, so -y pushes alpha up."""
    history = []
    for _ in range(steps):
        optimiser.zero_grad()
        (-direction * 100.0 * pool(x).sum()).backward()
        optimiser.step()
        history.append(pool.alpha.item())
    return history


@pytest.mark.parametrize("optimiser_cls, lr", [(torch.optim.Adam, 0.3), (torch.optim.SGD, 50.0)])
@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_alpha_stays_in_range_under_hard_push_and_comes_back(optimiser_cls, lr, direction):
    alpha_max = 5.0
    pool = PPool2d(2, alpha_init=2.0, alpha_max=alpha_max)
    optimiser = optimiser_cls(pool.parameters(), lr=lr)
    x = torch.rand(4, 8, 16, 16) + 0.05
    bound = alpha_max if direction > 0 else 0.0
    pushed = _push(pool, optimiser, direction, 200, x)
    assert all(0.0 <= a <= alpha_max for a in pushed)
    assert pushed[-1] == bound  # it reached the bound and stayed there
    released = _push(pool, optimiser, -direction, 40, x)
    assert all(0.0 <= a <= alpha_max for a in released)
    assert abs(released[-1] - bound) > 0.5  # and left it again once the push reversed


def test_alpha_initialised_at_zero_can_grow():
    pool = PPool2d(2, alpha_init=0.0)
    optimiser = torch.optim.SGD(pool.parameters(), lr=1.0)
    history = _push(pool, optimiser, 1.0, 5, torch.rand(2, 3, 8, 8) + 0.05)
    assert history[-1] > 0.0


# ------------------------------------------------------------------- TorchScript, compile, export


def _small_net(**pool_kwargs):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), PPool2d(**pool_kwargs))


@pytest.mark.parametrize(
    "pool_kwargs",
    [
        {"kernel_size": 2, "alpha_init": 2.0},
        {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True, "alpha_init": 0.0},
        {"kernel_size": 3, "stride": 1, "padding": 1, "dilation": 2, "num_channels": 4, "alpha_init": 5.0},
    ],
)
def test_torchscript_matches_eager_forward_and_backward(pool_kwargs):
    net = _small_net(**pool_kwargs).double()
    scripted = torch.jit.script(net)
    x = torch.rand(2, 3, 15, 15, dtype=torch.float64)
    torch.testing.assert_close(scripted(x), net(x))
    torch.testing.assert_close(scripted(x[0]), net(x[0]))
    eager_grads = torch.autograd.grad(net(x).sum(), list(net.parameters()))
    scripted_grads = torch.autograd.grad(scripted(x).sum(), list(scripted.parameters()))
    for eager, script in zip(eager_grads, scripted_grads):
        torch.testing.assert_close(script, eager)


def test_torch_compile_matches_eager():
    net = _small_net(kernel_size=3, stride=2, padding=1, alpha_init=1.5)
    compiled = torch.compile(net)
    x = torch.rand(2, 3, 16, 16)
    out = compiled(x)
    torch.testing.assert_close(out, net(x))
    (compiled_grad,) = torch.autograd.grad(out.sum(), [net[2].alpha_raw])
    (eager_grad,) = torch.autograd.grad(net(x).sum(), [net[2].alpha_raw])
    torch.testing.assert_close(compiled_grad, eager_grad)


def test_torch_export_matches_eager():
    net = _small_net(kernel_size=2, alpha_init=3.0).eval()
    x = torch.rand(1, 3, 16, 16)
    exported = torch.export.export(net, (x,))
    torch.testing.assert_close(exported.module()(x), net(x))
