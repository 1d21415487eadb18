"""The fused kernels against the reference path, the backend switch and the automatic choice."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from lit_ppool import PPool2d, p_pool2d
from lit_ppool.functional import pool_geometry, pool_output_shape
from lit_ppool.kernels import dispatch
from lit_ppool.kernels.cpu import CppPPool2dFunction, load_extension
from lit_ppool.kernels.reference import PPool2dFunction

from helpers.kernel_parity import (
    TOLERANCES,
    cases,
    dense_alpha,
    dense_cases,
    make_input,
    nan_failures,
    parity_failures,
    run,
)
from helpers.saved import saved_for_backward
from helpers.tiny import HELPERS

ALPHA = torch.ones(1)  # one alpha per layer: what select_function is asked about


def test_cpu_kernel_builds_here():
    """The machines that run this suite have a compiler: the fast path must not silently fall back."""
    assert load_extension() is not None


# ------------------------------------------------------------------------------ CPU parity


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
def test_cpu_kernel_matches_reference(dtype, layout):
    failures = []
    for spec, x, alpha, geometry in cases(dtypes=(dtype,), alphas=(0.0, 1e-3, 1.5, 100.0)):
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        failures += [(spec, alpha.tolist(), *failure) for failure in parity_failures(CppPPool2dFunction, x, alpha, geometry)]
    assert not failures


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
def test_cpu_kernel_matches_reference_with_a_dense_alpha(dtype, layout):
    """One alpha per window, in [0, 1.5] and in [0, 100] with exact zeros: the full map and the
    (N, 1, H_out, W_out) and (1, 1, H_out, W_out) maps that broadcast to it."""
    failures = []
    for spec, x, alpha, geometry in dense_cases(dtypes=(dtype,)):
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        failures += [
            (spec, tuple(alpha.shape), *failure) for failure in parity_failures(CppPPool2dFunction, x, alpha, geometry)
        ]
    assert not failures


@pytest.mark.parametrize("layout", ["channels_last", "sliced", "wide"])
def test_cpu_kernel_handles_layouts_and_widths(layout):
    """Channels-last with more channels than vector lanes and a tail, non-contiguous inputs, and
    widths that span several vector lanes and a tail."""
    if layout == "channels_last":
        x = make_input((2, 37, 12, 12), torch.float32).contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        x = make_input((2, 5, 12, 30), torch.float32)[..., 3:27:2]
    else:
        x = make_input((1, 2, 6, 77), torch.float32)
    for spec in [(2, 2, 0, 1, False), (3, 2, 1, 1, False)]:
        geometry = pool_geometry(*spec)
        assert not parity_failures(CppPPool2dFunction, x, torch.tensor([2.0]), geometry), spec
        dense = dense_alpha((*x.shape[:2], *pool_output_shape(tuple(x.shape[-2:]), geometry)), "full", 4.0)
        assert not parity_failures(CppPPool2dFunction, x, dense, geometry), spec
    if layout == "channels_last":
        per_channel = torch.linspace(0.0, 4.0, x.shape[1])
        assert not parity_failures(CppPPool2dFunction, x, per_channel, pool_geometry(3, 2, 1))
        x = x.detach().requires_grad_()
        out = CppPPool2dFunction.apply(x, torch.tensor([1.0]), pool_geometry(2), (6, 6))
        out.sum().backward()
        assert out.is_contiguous(memory_format=torch.channels_last)
        assert x.grad.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_cpu_kernel_special_values(layout):
    """Zeros, subnormals, 1e4, negatives, NaN and padding-only windows behave as in the reference."""
    x = torch.zeros(1, 4, 6, 6)
    x[0, 1] = 1e-40  # subnormal
    x[0, 2] = torch.rand(6, 6) * 1e4
    x[0, 3] = torch.rand(6, 6) - 0.5
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    for alpha in (0.0, 1e-3, 1.0, 100.0):
        for spec in [(2, 2, 0, 1, False), (3, 1, 1, 1, False), (2, 2, 1, 3, True)]:
            geometry = pool_geometry(*spec)
            failures = parity_failures(CppPPool2dFunction, x, torch.tensor([alpha]), geometry, tolerance=1e-4)
            assert not failures, (alpha, spec, failures)
    x[0, 0, 2, 3] = float("nan")
    out = p_pool2d(x, 1.0, 2)
    assert torch.isnan(out[0, 0, 1, 1]) and torch.isnan(out[0, 0]).sum() == 1
    assert torch.isfinite(out[0, 1:]).all()


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_cpu_kernel_special_values_with_a_dense_alpha(layout):
    """The inputs above under a map of alphas in [0, 100] (zeros, 1e-3 and 100 among them); then NaN
    in one input and in one window's alpha: NaN where the reference has it (that window's output,
    dL/dalpha and the dL/dx of its inputs), nowhere else."""
    x = torch.zeros(1, 4, 6, 6)
    x[0, 1] = 1e-40
    x[0, 2] = torch.rand(6, 6, generator=torch.Generator().manual_seed(0)) * 1e4
    x[0, 3] = torch.rand(6, 6, generator=torch.Generator().manual_seed(1)) - 0.5
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    for spec in [(2, 2, 0, 1, False), (3, 1, 1, 1, False), (2, 2, 1, 3, True)]:
        geometry = pool_geometry(*spec)
        alpha = dense_alpha((1, 4, *pool_output_shape((6, 6), geometry)), "full", 100.0)
        alpha.view(-1)[2::11] = 1e-3
        failures = parity_failures(CppPPool2dFunction, x, alpha, geometry, tolerance=1e-4)
        assert not failures, (spec, failures)
    x = make_input((2, 20, 8, 8), torch.float32)
    x[1, 2, 5, 6] = float("nan")
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    alpha = dense_alpha((2, 20, 4, 4), "full", 4.0)
    alpha[0, 17, 2, 1] = float("nan")
    assert not nan_failures(CppPPool2dFunction, x, alpha, pool_geometry(2))
    out = p_pool2d(x, alpha, 2)
    assert out.isnan().sum() == 2 and out[0, 17, 2, 1].isnan() and out[1, 2, 2, 3].isnan()


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_cpu_kernel_dense_alpha_of_one_value_per_channel_is_the_flat_alpha(layout):
    """A full map holding each channel's alpha everywhere: the same output and dL/dx bit for bit
    (the same window math), and dL/dalpha that sums over the map to the flat alpha's."""
    x = make_input((2, 20, 12, 13), torch.float32)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    flat = torch.linspace(0.0, 3.0, 20)
    for spec in [(2, 2, 0, 1, False), (3, 2, 1, 1, False), (3, 1, 1, 2, True)]:
        geometry = pool_geometry(*spec)
        out_size = pool_output_shape((12, 13), geometry)
        dense = flat.view(1, 20, 1, 1).expand(2, 20, *out_size).clone()
        grad = torch.randn(2, 20, *out_size, generator=torch.Generator().manual_seed(2))
        out_flat, grad_x_flat, grad_alpha_flat = run(CppPPool2dFunction, x, flat, geometry, grad)
        out_dense, grad_x_dense, grad_alpha_dense = run(CppPPool2dFunction, x, dense, geometry, grad)
        assert torch.equal(out_dense, out_flat) and torch.equal(grad_x_dense, grad_x_flat), spec
        assert grad_alpha_dense.shape == dense.shape
        torch.testing.assert_close(grad_alpha_dense.sum(dim=(0, 2, 3)), grad_alpha_flat)


def test_cpu_kernel_checks_the_sign_of_a_dense_alpha():
    """A negative value anywhere in the map is refused as a flat alpha is; NaN passes (it makes its windows NaN)."""
    x = torch.rand(2, 3, 8, 8)
    for shape in [(2, 3, 4, 4), (1, 1, 4, 4)]:
        for layout in (torch.contiguous_format, torch.channels_last):
            alpha = torch.full(shape, 0.5)
            alpha[0, 0, 3, 2] = -0.5
            with pytest.raises(ValueError, match=r"`alpha` >= 0 .* it holds -0.5.* clamp a tensor alpha"):
                p_pool2d(x.contiguous(memory_format=layout), alpha, 2)
    alpha = torch.full((2, 3, 4, 4), 0.5)
    alpha[1, 2, 0, 0] = float("nan")
    assert p_pool2d(x, alpha, 2).isnan().sum() == 1
    with pytest.raises(ValueError, match="it holds -0.5"):  # a NaN ahead of it does not hide a negative value
        p_pool2d(x, torch.tensor([float("nan"), -0.5, 1.0]), 2)


# The kernel's other builds: AVX2 uses the same inlined exp/log with 8 lanes and other
# intrinsics, the portable default the library exp/log. Only ISAs this CPU can run.
_OTHER_ISAS = {"AVX512": ["avx2", "default"], "AVX2": ["default"]}.get(torch.backends.cpu.get_cpu_capability(), [])


@pytest.mark.parametrize("isa", _OTHER_ISAS)
def test_cpu_kernel_builds_for_other_isas_match_reference(isa):
    env = {**os.environ, "ATEN_CPU_CAPABILITY": isa, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, str(HELPERS / "cpu_isa_check.py")], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["module"].startswith(f"lit_ppool_p_pool2d_cpu_{isa}_")  # per ISA and checkout
    assert not report["failures"], report["failures"]


def test_cpu_kernel_gradient_is_deterministic():
    x = make_input((2, 4, 16, 16), torch.float32).requires_grad_()
    alpha = torch.tensor([1.5, 0.5, 2.0, 3.0], requires_grad=True)
    grads = []
    for _ in range(2):
        p_pool2d(x, alpha, 3, 2, 1).square().sum().backward()
        grads.append((x.grad.clone(), alpha.grad.clone()))
        x.grad = alpha.grad = None
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])


@pytest.fixture
def torch_threads():
    """Sets torch's intra-op thread count for a test and restores it afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_cpu_kernel_runs_on_torchs_threads(torch_threads):
    """The kernel's parallel loops use torch's intra-op threads (a build without OpenMP ran them
    on one thread whatever torch.set_num_threads said)."""
    for threads in (1, 2, 3):  # 3: more than a 2-core machine's default OpenMP team
        torch_threads(threads)
        assert load_extension().worker_threads(64) == threads


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_cpu_kernel_results_do_not_depend_on_the_thread_count(torch_threads, layout):
    """Bit for bit. One image with 40 channels: the channels-last kernels split its channels
    into more groups the more threads there are."""
    x = make_input((1, 40, 14, 16), torch.float32)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    for spec in [(2, 2, 0, 1, False), (3, 2, 1, 1, False)]:
        geometry = pool_geometry(*spec)
        out_size = pool_output_shape((14, 16), geometry)
        grad = torch.randn(1, 40, *out_size, generator=torch.Generator().manual_seed(1))
        for alpha in (torch.linspace(0.5, 3.0, 40), dense_alpha((1, 40, *out_size), "full", 3.0)):
            results = []
            for threads in (1, 2, 3):
                torch_threads(threads)
                results.append(run(CppPPool2dFunction, x, alpha, geometry, grad))
            for quantities in zip(*results):
                assert all(torch.equal(quantities[0], other) for other in quantities[1:]), (spec, alpha.dim())


def test_cpu_kernel_keeps_less_for_backward_than_max_pool():
    """Saved: the input, alpha and one output-sized float32 tensor; max_pool2d saves int64 indices."""

    def saved_bytes(fn, x):
        out, saved = saved_for_backward(lambda: fn(x))
        extra = [t for t in saved if t.data_ptr() != x.data_ptr()]
        return out, extra, sum(t.numel() * t.element_size() for t in extra)

    x = make_input((2, 8, 32, 32), torch.float32).requires_grad_()
    out, extra, ours = saved_bytes(lambda t: p_pool2d(t, torch.tensor(1.0, requires_grad=True), 3, 2, 1), x)
    assert out.grad_fn.name() == "CppPPool2dFunctionBackward"
    assert [tuple(t.shape) for t in extra if t.numel() > 1] == [tuple(out.shape)]
    _, _, max_pool = saved_bytes(lambda t: F.max_pool2d(t, 3, 2, 1), x)
    assert ours <= max_pool


@pytest.mark.parametrize("shape", [(2, 8, 16, 16), (2, 1, 16, 16), (1, 1, 16, 16)])
def test_cpu_kernel_keeps_output_sized_tensors_for_a_dense_alpha(shape):
    """Saved with a dense alpha: the input, alpha as given (no expanded copy) and the float32 log
    window maximum; nothing window-sized."""
    x = make_input((2, 8, 32, 32), torch.float32).requires_grad_()
    alpha = torch.rand(shape, requires_grad=True)
    assert dispatch.select_function(x, alpha) is CppPPool2dFunction
    out, saved = saved_for_backward(lambda: p_pool2d(x, alpha, 3, 2, 1))
    assert out.grad_fn.name() == "CppPPool2dFunctionBackward"
    extra = [t for t in saved if t.data_ptr() not in (x.data_ptr(), alpha.data_ptr())]
    assert [(tuple(t.shape), t.dtype) for t in extra] == [(tuple(out.shape), torch.float32)]
    assert sum(t.numel() for t in saved) <= x.numel() + 2 * out.numel()
    out.backward(torch.ones_like(out))
    assert alpha.grad.shape == alpha.shape and x.grad.shape == x.shape


# --------------------------------------------------------------------------- backend choice


def test_auto_backend_choice():
    x = torch.rand(1, 2, 8, 8)
    assert dispatch.get_backend() == "auto"
    assert dispatch.select_function(x, ALPHA) is CppPPool2dFunction
    assert dispatch.select_function(x.bfloat16(), ALPHA) is CppPPool2dFunction
    assert dispatch.select_function(x.double(), ALPHA) is PPool2dFunction  # float64 stays exact
    with dispatch.use_backend("reference"):
        assert dispatch.select_function(x, ALPHA) is PPool2dFunction
        assert p_pool2d(x.requires_grad_(), 1.0, 2).grad_fn.name() == "PPool2dFunctionBackward"
    assert dispatch.get_backend() == "auto"


def test_dense_alpha_takes_the_same_path_as_a_flat_one():
    x = torch.rand(1, 2, 8, 8)
    for dense in (torch.rand(1, 2, 4, 4), torch.rand(1, 1, 4, 4)):
        assert dispatch.select_function(x, dense) is CppPPool2dFunction
        assert dispatch.select_function(x.bfloat16(), dense) is CppPPool2dFunction
        assert dispatch.select_function(x.double(), dense.double()) is PPool2dFunction
        with dispatch.use_backend("reference"):
            assert dispatch.select_function(x, dense) is PPool2dFunction


def test_compiled_model_traces_the_reference_path():
    """Under torch.compile the op is traced as plain torch ops (the fused kernels are opaque to dynamo)."""
    layer = PPool2d(2, alpha_init=1.5)
    x = make_input((2, 3, 8, 8), torch.float32)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), layer(x))


def test_backend_errors():
    with pytest.raises(ValueError, match="one of auto, reference, cpp, triton, but got 'fast'"):
        dispatch.set_backend("fast")
    with dispatch.use_backend("cpp"):
        with pytest.raises(ValueError, match="float32, float16 or bfloat16 input for backend 'cpp'"):
            p_pool2d(torch.rand(1, 1, 4, 4, dtype=torch.float64), 1.0, 2)
    with pytest.raises(ValueError, match=r"`alpha` >= 0 .* it holds -0.5.* clamp a tensor alpha"):
        p_pool2d(torch.rand(1, 2, 4, 4), torch.tensor([0.5, -0.5]), 2)
    env = {**os.environ, "LIT_PPOOL_BACKEND": "fastest"}
    code = "import torch, lit_ppool; lit_ppool.p_pool2d(torch.rand(1, 1, 4, 4), 1.0, 2)"
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.returncode != 0
    assert "environment variable `LIT_PPOOL_BACKEND` to be one of auto, reference, cpp, triton" in result.stderr


# ------------------------------------------------------------------------------------ Triton


def test_triton_kernels_match_reference_in_the_interpreter():
    """The Triton kernels run on CPU tensors under TRITON_INTERPRET=1 (tiny shapes; slow interpreter)."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, str(HELPERS / "triton_interpreter_check.py")], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == 12  # 6 flat-alpha cases, 5 dense-alpha cases, 1 with NaN in the input and in alpha
    for row in rows:
        assert not row["failures"], row


def test_triton_kernels_index_offsets_past_2_31_in_the_interpreter():
    """Element offsets within a plane past 2**31 (a channels-last plane of more than 2**31 elements)
    index in int64: with int32 products the read wraps around (a crash or garbage)."""
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, str(HELPERS / "triton_interpreter_check.py"), "--offsets"],
        env=env, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == {"case": "offsets past 2**31", "failures": []}


@pytest.mark.parametrize("alpha_form", ["per layer", "per channel", "dense"])
def test_triton_kernels_compile_for_a_gpu_target(alpha_form):
    """Triton's compiler (front end to PTX and ptxas, for sm_90) without a GPU: it refuses code that
    the interpreter runs, e.g. a kernel that reads a global that is not a constexpr."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from lit_ppool.kernels import triton_kernels

    constexprs = {"PER_CHANNEL": alpha_form == "per channel", "DENSE": alpha_form == "dense", "KH": 3, "KW": 3,
                  "SH": 2, "SW": 2, "PH": 1, "PW": 1, "DH": 1, "DW": 1, "EPS": 1e-6, "INT64": False, "BLOCK": 256}
    for kernel in (triton_kernels._forward_kernel, triton_kernels._backward_windows_kernel,
                   triton_kernels._backward_inputs_kernel):
        # a bfloat16 input, float32 pointers otherwise, int32 sizes and strides
        kinds = {"x_ptr": "*bf16"}
        signature = {
            name: "constexpr" if name in constexprs else kinds.get(name, "*fp32" if name.endswith("_ptr") else "i32")
            for name in kernel.arg_names
        }
        compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                                  target=GPUTarget("cuda", 90, 32))
        assert ".entry" in compiled.asm["ptx"]


@pytest.mark.cuda
def test_triton_kernels_handle_sliced_inputs_on_cuda():
    """A non-contiguous input: dL/dx is written through its own strides, not the input's."""
    from lit_ppool.kernels.triton_kernels import TritonPPool2dFunction

    x = make_input((2, 5, 12, 30), torch.float32, device="cuda")[..., 3:27:2]
    for spec in [(2, 2, 0, 1, False), (3, 2, 1, 1, False)]:
        assert not parity_failures(TritonPPool2dFunction, x, torch.tensor([2.0], device="cuda"), pool_geometry(*spec))


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", list(TOLERANCES), ids=str)
def test_triton_kernels_match_reference_on_cuda(dtype):
    from lit_ppool.kernels.triton_kernels import TritonPPool2dFunction

    failures = []
    for spec, x, alpha, geometry in cases(dtypes=(dtype,), shape=(2, 3, 33, 35)):
        failures += [
            (spec, alpha.tolist(), *failure)
            for failure in parity_failures(TritonPPool2dFunction, x.cuda(), alpha.cuda(), geometry)
        ]
    assert not failures
    x = torch.rand(2, 3, 8, 8, device="cuda")
    assert dispatch.select_function(x, ALPHA) is TritonPPool2dFunction


@pytest.mark.cuda
def test_cuda_autocast_and_channels_last():
    layer = PPool2d(3, 2, 1, alpha_init=2.0).cuda()
    x = make_input((2, 4, 16, 16), torch.float32, device="cuda").contiguous(memory_format=torch.channels_last)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    with dispatch.use_backend("reference"):
        torch.testing.assert_close(out, layer(x))
