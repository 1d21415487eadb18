"""P-pooling performance, in one run: the op against torch's pooling and a naive P-pooling,
and one smp U-Net training step with P-pooling against the same model with max pooling.

    python benchmarks/run.py                 # the tables of docs/performance.md (CPU; CUDA too when present)
    python benchmarks/run.py --quick         # small shapes, a smoke run
    python benchmarks/run.py --isa avx2      # the kernel built for another CPU ISA (avx2, avx512, default)
    python benchmarks/run.py --only model    # only the U-Net step table (or: --only ops)

Prints Markdown tables: median times (ms) over repeated runs, ratios to ``F.max_pool2d`` (or
to the max-pooling model), and the bytes autograd keeps for backward besides the input.
Timings are interleaved (every candidate runs once per round) so that machine load affects
all candidates alike. Each ratio is followed by its spread over the rounds: the interquartile
range [q1, q3] of the per-round ratios (each round's time over the baseline's time in the
same round).

``--isa`` re-runs the script with ``ATEN_CPU_CAPABILITY`` set, which makes torch (and so the
fused kernel, built once per ISA) use that vector ISA; the header says which one ran.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from lit_ppool import p_pool2d, swap_pooling
from lit_ppool.kernels import dispatch
from lit_ppool.kernels.common import EPS
from lit_ppool.kernels.cpu import load_extension

GEOMETRIES = {"VGG 2x2 s2": (2, 2, 0), "ResNet stem 3x3 s2 p1": (3, 2, 1)}


def naive_p_pool2d(x: torch.Tensor, alpha: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """P-pooling the obvious way: unfold every window, softmax(alpha log x) weights, autograd backward."""
    n, c, h, w = x.shape
    windows = F.unfold(x, kernel, padding=padding, stride=stride).view(n, c, kernel * kernel, -1)
    weights = torch.softmax(alpha * torch.log(windows.clamp_min(EPS)), dim=2)
    out_h = (h + 2 * padding - kernel) // stride + 1
    return (weights * windows).sum(dim=2).view(n, c, out_h, -1)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_times(candidates: dict[str, Callable[[], None]], device, rounds: int, warmup: int = 2) -> dict:
    """Seconds per round of every candidate, rounds interleaved."""
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, fn in candidates.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return times


def ratio(times: dict, name: str, baseline: str) -> str:
    """Ratio of the median times, then [q1, q3] of the per-round ratios (the run-to-run spread)."""
    per_round = [t / b for t, b in zip(times[name], times[baseline])]
    median = statistics.median(times[name]) / statistics.median(times[baseline])
    if len(per_round) < 2:
        return f"{median:.2f}"
    q1, _, q3 = statistics.quantiles(per_round, n=4, method="inclusive")
    return f"{median:.2f} [{q1:.2f}, {q3:.2f}]"


def saved_bytes(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward, besides the input itself."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        fn(x)
    unique = {t.data_ptr(): t for t in saved if t.data_ptr() != x.data_ptr()}
    return sum(t.numel() * t.element_size() for t in unique.values())


def measure_ops(ops: dict[str, Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor, device, rounds: int):
    """Each op's forward times (no grad), forward+backward times (a fixed random output gradient) and bytes kept for backward.

    Returns:
        ``(forward_times, both_times, kept)``: dicts keyed like ``ops``; the times as
        :func:`interleaved_times` gives them, ``kept`` as :func:`saved_bytes`.
    """
    x_grad = x.clone().requires_grad_()
    forward, both = {}, {}
    for name, op in ops.items():
        grad = torch.randn_like(op(x.detach()))
        forward[name] = lambda op=op: op(x)
        both[name] = lambda op=op, grad=grad: op(x_grad).backward(grad)
    with torch.no_grad():
        forward_times = interleaved_times(forward, device, rounds)
    both_times = interleaved_times(both, device, rounds)
    return forward_times, both_times, {name: saved_bytes(op, x_grad) for name, op in ops.items()}


def op_table(device: torch.device, dtype: torch.dtype, shape, rounds: int, channels_last: bool = False) -> list[str]:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.rand(shape, device=device, dtype=dtype).contiguous(memory_format=layout)
    alpha = torch.tensor([1.5], device=device, requires_grad=True)
    title = f"{device.type.upper()} {str(dtype).removeprefix('torch.')}{', channels-last' if channels_last else ''}"
    rows = [f"\n**{title}, input {tuple(shape)}**\n",
            "| geometry | pooling | forward ms | x max [IQR] | fwd+bwd ms | x max [IQR] | kept for backward |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for geometry_name, (k, s, p) in GEOMETRIES.items():
        ops = {
            "F.max_pool2d": lambda t: F.max_pool2d(t, k, s, p),
            "F.avg_pool2d": lambda t: F.avg_pool2d(t, k, s, p, count_include_pad=False),
            # lp_pool2d has no padding argument: same kernel and stride, unpadded.
            "F.lp_pool2d (p=2)": lambda t: F.lp_pool2d(t, 2.0, k, s),
            "naive unfold P-pool": lambda t: naive_p_pool2d(t, alpha, k, s, p),
            "lit_ppool p_pool2d": lambda t: p_pool2d(t, alpha, k, s, p),
        }
        forward_times, both_times, kept = measure_ops(ops, x, device, rounds)
        for name in ops:
            rows.append(
                f"| {geometry_name} | {name} | {statistics.median(forward_times[name]) * 1e3:.1f} | "
                f"{ratio(forward_times, name, 'F.max_pool2d')} | {statistics.median(both_times[name]) * 1e3:.1f} | "
                f"{ratio(both_times, name, 'F.max_pool2d')} | {kept[name] / 2**20:.1f} MiB |"
            )
    return rows


def model_table(device: torch.device, batch: int, size: int, rounds: int) -> list[str]:
    import segmentation_models_pytorch as smp

    rows = [f"\n**One training step of smp.Unet, {device.type.upper()} float32, batch {batch}x3x{size}x{size}, 21 classes**\n",
            "| encoder | pools swapped | max-pool step ms | P-pool step ms | ratio [IQR] |",
            "| --- | ---: | ---: | ---: | ---: |"]
    x = torch.rand(batch, 3, size, size, device=device)
    target = torch.randint(0, 21, (batch, size, size), device=device)
    for encoder in ("resnet34", "vgg16"):
        steps, swapped = {}, 0
        for pooling in ("max", "p"):
            torch.manual_seed(0)
            model = smp.Unet(encoder, encoder_weights=None, classes=21).to(device)
            if pooling == "p":
                swapped = len(swap_pooling(model, to="p"))
            optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

            def step(model=model, optimizer=optimizer):
                optimizer.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), target).backward()
                optimizer.step()

            steps[pooling] = step
        times = interleaved_times(steps, device, rounds, warmup=1)
        per_round = sorted(p / m for p, m in zip(times["p"], times["max"]))
        spread = ""
        if len(per_round) >= 2:
            q1, _, q3 = statistics.quantiles(per_round, n=4, method="inclusive")
            spread = f" [{q1:.3f}, {q3:.3f}]"
        median_max, median_p = statistics.median(times["max"]), statistics.median(times["p"])
        rows.append(f"| {encoder} | {swapped} | {median_max * 1e3:.0f} | {median_p * 1e3:.0f} | "
                    f"{median_p / median_max:.3f}{spread} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes and few rounds (smoke run)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per candidate")
    parser.add_argument("--model-rounds", type=int, default=None, help="timed rounds of the U-Net steps")
    parser.add_argument("--only", choices=["ops", "model"], default=None,
                        help="only the op tables, or only the U-Net step table")
    parser.add_argument("--isa", choices=["avx512", "avx2", "default"], default=None,
                        help="run with ATEN_CPU_CAPABILITY set to this ISA (the kernel is built once per ISA)")
    args = parser.parse_args()
    if args.isa is not None and os.environ.get("ATEN_CPU_CAPABILITY") != args.isa:
        # torch reads the variable when it first queries the CPU: start afresh with it set
        os.environ["ATEN_CPU_CAPABILITY"] = args.isa
        os.execv(sys.executable, [sys.executable, *sys.argv])

    start = time.perf_counter()
    extension = load_extension()
    build_s = time.perf_counter() - start
    print(f"# lit_ppool benchmark, {datetime.date.today()}")
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, CPU ISA "
          f"{torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}"
          + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"))
    print(f"backend: {dispatch.get_backend()}; CPU kernel {'ready' if extension else 'UNAVAILABLE'} "
          f"after {build_s:.1f} s (build on first use, a load afterwards)")

    rounds = args.rounds or (3 if args.quick else 15)
    op_shape = (2, 8, 32, 32) if args.quick else (8, 64, 128, 128)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for device in devices:
        if args.only != "model":
            for dtype in (torch.float32, torch.bfloat16):
                print("\n".join(op_table(device, dtype, op_shape, rounds)))
            print("\n".join(op_table(device, torch.float32, op_shape, rounds, channels_last=True)))
        if args.only == "ops":
            continue
        batch, size = (1, 64) if args.quick else ((4, 128) if device.type == "cpu" else (16, 512))
        print("\n".join(model_table(device, batch, size, args.model_rounds or max(3, rounds // 3))))


if __name__ == "__main__":
    main()
