"""Fused CPU P-pooling: the C++ kernel in ``csrc/p_pool2d_cpu.cpp``, built on first use.

The kernel is compiled once per machine and torch version with
:func:`torch.utils.cpp_extension.load` (a C++ compiler is needed; about a minute on a
2-core machine) and cached in torch's extension directory (``TORCH_EXTENSIONS_DIR``,
default ``~/.cache/torch_extensions``). One build serves every geometry and dtype. It is
compiled for the CPU's vector ISA as torch reports it (AVX512, AVX2 or the portable
default), and with OpenMP where torch's threads are OpenMP threads, so that it runs on torch's
intra-op threads (``torch.set_num_threads``) like torch's own pooling. A build announces
itself on stderr (``lit_ppool: building the fused CPU P-pooling kernel ...``) when loading
takes longer than a cached load would. If the build fails,
:func:`load_extension` warns once and returns ``None`` and P-pooling runs on the reference path.

Alpha reaches the kernel as float32 in one of two forms: flat (one value, or one per
channel) or dense (one value per output: a map that broadcasts to the output is expanded to
the output's shape, in the output's memory layout, NCHW-contiguous or channels-last). The
kernel's backward returns dL/dalpha per (n, c) plane for a flat alpha and per output for a
dense one; :func:`lit_ppool.kernels.common.reduce_grad_alpha` sums either to alpha's shape.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import sys
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lit_ppool.kernels.common import EPS, is_channels_last, is_dense, reduce_grad_alpha

__all__ = ["CppPPool2dFunction", "load_extension"]

SOURCE = Path(__file__).with_name("csrc") / "p_pool2d_cpu.cpp"

_ISA_FLAGS = {
    "AVX512": ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512", "-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-mfma"],
    "AVX2": ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
}


BUILD_NOTICE_AFTER_S = 3.0
"""Seconds after which a load that is still running is announced as a build (a cached load takes < 1 s)."""


def _announce_build() -> None:
    print(
        "lit_ppool: building the fused CPU P-pooling kernel (once per machine and torch version, about a minute) ...",
        file=sys.stderr,
        flush=True,
    )


class _NoCudaNotice(logging.Filter):
    """Drops torch's "No CUDA runtime is found" notice, which building a CPU kernel with a CUDA build of torch prints."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


@functools.cache
def load_extension() -> ModuleType | None:
    """Build (first call on a machine) or load the CPU kernel; ``None`` if that is impossible."""
    capability = torch.backends.cpu.get_cpu_capability()
    # one build folder per ISA and per checkout: two checkouts (or installs) on one machine would
    # otherwise rewrite each other's build file and rebuild on every load
    checkout = hashlib.sha1(str(SOURCE.resolve()).encode()).hexdigest()[:8]
    isa = re.sub(r"\W", "_", capability.lower())
    name = f"lit_ppool_p_pool2d_cpu_{isa}_{checkout}"
    notice = threading.Timer(BUILD_NOTICE_AFTER_S, _announce_build)
    notice.daemon = True
    try:
        logging.getLogger("torch.utils.cpp_extension").addFilter(_NoCudaNotice())
        from torch.utils.cpp_extension import load

        _put_ninja_on_path()
        started = time.perf_counter()
        notice.start()
        threads = _openmp_flags()
        extension = load(
            name=name,
            sources=[str(SOURCE)],
            extra_cflags=["-O3", *_ISA_FLAGS.get(capability, []), *threads],
            extra_ldflags=threads,
        )
        elapsed = time.perf_counter() - started
        if elapsed >= BUILD_NOTICE_AFTER_S:  # the notice was printed
            print(f"lit_ppool: the CPU kernel is ready ({elapsed:.0f} s)", file=sys.stderr, flush=True)
        return extension
    except Exception as err:  # no compiler, no headers, an unsupported platform ...
        warnings.warn(
            f"lit_ppool could not build its fused CPU P-pooling kernel ({type(err).__name__}: {err}). "
            "P-pooling runs on the slower reference path. Install a C++ compiler (and `ninja`) to get "
            "the fast path, or set LIT_PPOOL_BACKEND=reference to skip the build.",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    finally:
        notice.cancel()


def _openmp_flags() -> list[str]:
    """``-fopenmp`` where torch's intra-op threads are OpenMP threads (on Linux), else nothing.

    ``at::parallel_for`` is a header template: in a torch whose ATen parallel backend is OpenMP
    it spreads the work over torch's threads only if the extension itself is compiled with
    OpenMP, and runs the whole loop on the calling thread otherwise. Linking with ``-fopenmp``
    adds a dependency on ``libgomp.so.1``; torch's Linux wheels ship a ``libgomp.so.1`` of their
    own, which is then the one runtime in the process (checked for the wheels this project
    tests with). Elsewhere (macOS's clang and MSVC take other flags, a torch with the native
    thread pool needs none) the kernel is built as before: its loops then run on one thread
    where torch uses OpenMP, and on torch's pool otherwise.
    """
    backend_is_openmp = "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()
    return ["-fopenmp"] if sys.platform.startswith("linux") and backend_is_openmp else []


def _put_ninja_on_path() -> None:
    """torch looks for ``ninja`` on PATH; the ``ninja`` wheel's binary is there only in an activated venv."""
    try:
        import ninja
    except ImportError:
        return
    if ninja.BIN_DIR not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _flat_geometry(geometry, out_size) -> list[int]:
    kernel, stride, padding, dilation = geometry[:4]
    return [*kernel, *stride, *padding, *dilation, *out_size]


def _kernel_layout(input: Tensor) -> Tensor:
    """Channels-last inputs go to the channels-last kernel as they are; anything else is made NCHW-contiguous."""
    return input if is_channels_last(input) else input.contiguous()


def _kernel_alpha(alpha: Tensor, input: Tensor, out_size) -> Tensor:
    """``alpha`` in float32 as the kernel takes it: flat and contiguous, or dense, expanded to the
    output's shape in the layout of ``input`` (already in its kernel layout), which the output has."""
    alpha = alpha.detach().to(torch.float32)
    if not is_dense(alpha):
        return alpha.contiguous()
    layout = torch.channels_last if is_channels_last(input) else torch.contiguous_format
    return alpha.expand(*input.shape[:2], *out_size).contiguous(memory_format=layout)


class CppPPool2dFunction(torch.autograd.Function):
    """Autograd Function of the fused CPU path (float32, float16 and bfloat16 inputs).

    Takes alpha flat (one value, or one per channel) or dense (4-d, broadcasting to the
    output). Saves the input, alpha as given (at most output-sized) and the log of the window
    maximum (one float32 value per output): nothing window-sized. Channels-last inputs are
    computed in that layout (no copy), and so are the output and the gradients.
    """

    @staticmethod
    def forward(ctx, input: Tensor, alpha: Tensor, geometry, out_size) -> Tensor:
        extension = load_extension()
        flat = _flat_geometry(geometry, out_size)
        input_k = _kernel_layout(input)
        output, log_max = extension.forward(input_k, _kernel_alpha(alpha, input_k, out_size), flat, EPS)
        ctx.save_for_backward(input, alpha, log_max)
        ctx.flat_geometry = flat
        return output

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: Tensor):
        input, alpha, log_max = ctx.saved_tensors
        extension = load_extension()
        input = _kernel_layout(input)
        alpha_f32 = _kernel_alpha(alpha, input, log_max.shape[-2:])
        layout = torch.channels_last if is_channels_last(input) else torch.contiguous_format
        grad_output = grad_output.to(input.dtype).contiguous(memory_format=layout)
        grad_input, grad_alpha_parts = extension.backward(input, alpha_f32, log_max, grad_output, ctx.flat_geometry, EPS)
        # per (n, c) plane for a flat alpha, per output for a dense one
        grad_alpha = reduce_grad_alpha(grad_alpha_parts, alpha) if ctx.needs_input_grad[1] else None
        return grad_input if ctx.needs_input_grad[0] else None, grad_alpha, None, None

