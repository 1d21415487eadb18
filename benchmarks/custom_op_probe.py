"""Would registering the fused CPU kernel as a ``torch.library.custom_op`` speed up a compiled step?

The measurement behind the decision in docs/performance.md ("Why torch.compile traces the reference path"). Today
``torch.compile`` traces P-pooling through the reference path (plain torch ops that Inductor
fuses). This script registers the fused CPU kernel as two custom ops (forward, backward) with
``register_fake`` and ``register_autograd``, *in this script only*, and times one training step
(forward, backward, SGD) of a VGG-11 Unet with five P-pooling layers, compiled with
``fullgraph=True`` both ways, against the same step with max pooling, in one process with
interleaved rounds.

    python benchmarks/custom_op_probe.py [--rounds 10] [--size 128] [--batch 2]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import segmentation_models_pytorch as smp
import torch
from torch import Tensor

import lit_ppool.functional as functional
from lit_ppool import swap_pooling
from lit_ppool.kernels import cpu
from lit_ppool.kernels.common import EPS, reduce_grad_alpha


def _layout(input: Tensor) -> torch.memory_format:
    return torch.channels_last if cpu.is_channels_last(input) else torch.contiguous_format


@torch.library.custom_op("lit_ppool_probe::forward", mutates_args=(), device_types="cpu")
def fused_forward(input: Tensor, alpha: Tensor, flat: list[int]) -> tuple[Tensor, Tensor]:
    output, log_max = cpu.load_extension().forward(cpu._kernel_layout(input), alpha.float().contiguous(), flat, EPS)
    return output, log_max


@fused_forward.register_fake
def _(input: Tensor, alpha: Tensor, flat: list[int]) -> tuple[Tensor, Tensor]:
    shape = (input.shape[0], input.shape[1], flat[-2], flat[-1])
    layout = _layout(input)
    return (input.new_empty(shape).contiguous(memory_format=layout),
            input.new_empty(shape, dtype=torch.float32).contiguous(memory_format=layout))  # fmt: skip


@torch.library.custom_op("lit_ppool_probe::backward", mutates_args=(), device_types="cpu")
def fused_backward(
    input: Tensor, alpha: Tensor, log_max: Tensor, grad_output: Tensor, flat: list[int]
) -> tuple[Tensor, Tensor]:
    input = cpu._kernel_layout(input)
    grad_output = grad_output.to(input.dtype).contiguous(memory_format=_layout(input))
    return tuple(cpu.load_extension().backward(input, alpha.float().contiguous(), log_max, grad_output, flat, EPS))


@fused_backward.register_fake
def _(input, alpha, log_max, grad_output, flat):
    return torch.empty_like(input), input.new_empty(input.shape[:2], dtype=torch.float32)


def _setup_context(ctx, inputs, output) -> None:
    input, alpha, flat = inputs
    ctx.save_for_backward(input, alpha, output[1])
    ctx.flat = flat


def _backward(ctx, grad_output: Tensor, _grad_log_max: Tensor):
    input, alpha, log_max = ctx.saved_tensors
    grad_input, grad_planes = fused_backward(input, alpha, log_max, grad_output, ctx.flat)
    return grad_input, reduce_grad_alpha(grad_planes, alpha), None


fused_forward.register_autograd(_backward, setup_context=_setup_context)


class CustomOpFunction:
    """Stands in for the autograd Function that ``select_function`` returns."""

    @staticmethod
    def apply(input: Tensor, alpha: Tensor, geometry, out_size) -> Tensor:
        return fused_forward(input, alpha, cpu._flat_geometry(geometry, out_size))[0]


def build(pooling: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = smp.Unet("vgg11_bn", encoder_weights=None, classes=5, decoder_channels=(64, 32, 16, 16, 8))
    if pooling != "max":
        swap_pooling(model, pooling)
    return model


def make_step(model: torch.nn.Module, compiled: bool):
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    # fullgraph: the forward is one graph; AOTAutograd compiles its backward too
    forward = torch.compile(model, fullgraph=True) if compiled else model

    def step(images: Tensor, labels: Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(forward(images), labels).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    images = torch.rand(args.batch, 3, args.size, args.size)
    labels = torch.randint(0, 5, (args.batch, args.size, args.size))

    variants = {}
    original = functional.select_function
    for name, pooling, compiled, custom in (
        ("max, eager", "max", False, False),
        ("P fused, eager", "p", False, False),
        ("max, compiled", "max", True, False),
        ("P reference path, compiled (today)", "p", True, False),
        ("P fused custom_op, compiled", "p", True, True),
    ):
        step = make_step(build(pooling), compiled)
        functional.select_function = (lambda input, alpha: CustomOpFunction) if custom else original
        started = time.perf_counter()
        step(images, labels)  # compiles
        step(images, labels)
        first = time.perf_counter() - started
        variants[name] = (step, custom, first, [])
        print(f"{name}: first two steps {first:.1f} s", flush=True)

    for _ in range(args.rounds):  # interleaved rounds: drift hits every variant alike
        for _name, (step, custom, _, times) in variants.items():
            functional.select_function = (lambda input, alpha: CustomOpFunction) if custom else original
            started = time.perf_counter()
            step(images, labels)
            times.append(time.perf_counter() - started)
    functional.select_function = original

    base = statistics.median(variants["max, compiled"][3])
    print(f"\n{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}; Unet vgg11_bn, batch {args.batch}, "
          f"{args.size}x{args.size}, {args.rounds} rounds\n")  # fmt: skip
    print("| step | first two steps (s) | median step (ms) | min-max (ms) | x compiled max |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, (_, _, first, times) in variants.items():
        median = statistics.median(times)
        print(f"| {name} | {first:.1f} | {1e3 * median:.0f} | {1e3 * min(times):.0f}-{1e3 * max(times):.0f} | {median / base:.2f} |")


if __name__ == "__main__":
    main()
