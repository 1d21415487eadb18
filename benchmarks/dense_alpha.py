"""P-pooling with a dense alpha (one value per window) against max pooling and per-channel P-pooling.

    python benchmarks/dense_alpha.py                    # the dense-alpha table of docs/performance.md
    python benchmarks/dense_alpha.py --quick            # small shapes, a smoke run
    python benchmarks/dense_alpha.py --channels-last    # the inputs in channels-last layout
    python benchmarks/dense_alpha.py --dtype bfloat16   # another input dtype (float32, float16, bfloat16)

Times forward and forward+backward of ``F.max_pool2d``, ``p_pool2d`` with one alpha per channel,
and ``p_pool2d`` with a dense alpha, both as the full map ``(N, C, H_out, W_out)`` and as one
map per image shared by the channels ``(N, 1, H_out, W_out)``; every alpha requires a gradient,
as a learned one does. Shapes: the three 2x2 stride-2 pools of the CrackForest network
(VGG-11 encoder, ``configs/crackforest.yaml``: batch 8 of 128x192 crops) and the op tables'
8x64x128x128 input of ``benchmarks/run.py`` with both of its geometries. Runs on the CPU
(``F.max_pool2d`` and the fused CPU kernel), with torch's threads as set (``--threads``).

Prints a Markdown table: median times (ms), the ratios of the medians to ``F.max_pool2d``
and to per-channel P-pooling, each followed by [q1, q3] of the per-round ratios (rounds are
interleaved, as in ``benchmarks/run.py``, whose timing helpers this script uses), and the bytes
autograd keeps for backward besides the input.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import statistics
import time

import torch
import torch.nn.functional as F

# benchmarks/ is the script's folder, so on sys.path: the shared timing helpers
from run import measure_ops, ratio

from lit_ppool import p_pool2d
from lit_ppool.kernels import dispatch
from lit_ppool.kernels.cpu import load_extension

# (label, input shape, kernel, stride, padding)
CRACKFOREST_POOLS = [
    ("CrackForest VGG pool 1, 2x2 s2", (8, 64, 128, 192), 2, 2, 0),
    ("CrackForest VGG pool 2, 2x2 s2", (8, 128, 64, 96), 2, 2, 0),
    ("CrackForest VGG pool 3, 2x2 s2", (8, 256, 32, 48), 2, 2, 0),
]
OP_TABLE_POOLS = [
    ("VGG 2x2 s2", (8, 64, 128, 128), 2, 2, 0),
    ("ResNet stem 3x3 s2 p1", (8, 64, 128, 128), 3, 2, 1),
]
QUICK_POOLS = [("quick 2x2 s2", (2, 8, 32, 48), 2, 2, 0), ("quick 3x3 s2 p1", (2, 8, 32, 32), 3, 2, 1)]
CANDIDATES = ("F.max_pool2d", "p_pool2d per-channel alpha", "p_pool2d dense alpha (N, C, Ho, Wo)",
              "p_pool2d dense alpha (N, 1, Ho, Wo)")


def _alphas(shape, out_size) -> dict[str, torch.Tensor]:
    """The learnable alphas of the P-pooling candidates, values in [0.5, 4]."""
    generator = torch.Generator().manual_seed(0)
    n, c = shape[:2]
    return {
        "p_pool2d per-channel alpha": torch.linspace(0.5, 4.0, c),
        "p_pool2d dense alpha (N, C, Ho, Wo)": 0.5 + 3.5 * torch.rand(n, c, *out_size, generator=generator),
        "p_pool2d dense alpha (N, 1, Ho, Wo)": 0.5 + 3.5 * torch.rand(n, 1, *out_size, generator=generator),
    }


def pool_rows(label: str, shape, kernel: int, stride: int, padding: int, dtype: torch.dtype, channels_last: bool,
              rounds: int) -> list[str]:
    """Table rows of one input shape and geometry: every candidate, forward and forward+backward."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.rand(shape, dtype=dtype).contiguous(memory_format=layout)
    out_size = F.max_pool2d(x[:1, :1], kernel, stride, padding).shape[-2:]
    alphas = {name: alpha.requires_grad_() for name, alpha in _alphas(shape, out_size).items()}
    ops = {"F.max_pool2d": lambda t: F.max_pool2d(t, kernel, stride, padding)}
    for name, alpha in alphas.items():
        ops[name] = lambda t, alpha=alpha: p_pool2d(t, alpha, kernel, stride, padding)
    forward_times, both_times, kept = measure_ops(ops, x, torch.device("cpu"), rounds)
    rows = []
    for name in ops:
        rows.append(
            f"| {label} {tuple(shape)} | {name} | {statistics.median(forward_times[name]) * 1e3:.1f} | "
            f"{ratio(forward_times, name, 'F.max_pool2d')} | {statistics.median(both_times[name]) * 1e3:.1f} | "
            f"{ratio(both_times, name, 'F.max_pool2d')} | {ratio(both_times, name, CANDIDATES[1])} | "
            f"{kept[name] / 2**20:.1f} MiB |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes and few rounds (smoke run)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per candidate (default 15, quick 3)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32", help="input dtype")
    parser.add_argument("--channels-last", action="store_true", help="inputs in channels-last layout")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    extension = load_extension()
    print(f"# lit_ppool dense-alpha benchmark, {datetime.date.today()}")
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, CPU ISA "
          f"{torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}")
    print(f"backend: {dispatch.get_backend()}; CPU kernel {'ready' if extension else 'UNAVAILABLE'} "
          f"after {time.perf_counter() - started:.1f} s")

    dtype = getattr(torch, args.dtype)
    rounds = args.rounds or (3 if args.quick else 15)
    pools = QUICK_POOLS if args.quick else CRACKFOREST_POOLS + OP_TABLE_POOLS
    title = f"CPU {args.dtype}{', channels-last' if args.channels_last else ''}, {rounds} rounds"
    print(f"\n**Dense alpha, {title}**\n")
    print("| input | pooling | forward ms | x max [IQR] | fwd+bwd ms | x max [IQR] | x per-channel [IQR] | "
          "kept for backward |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, shape, kernel, stride, padding in pools:
        print("\n".join(pool_rows(label, shape, kernel, stride, padding, dtype, args.channels_last, rounds)), flush=True)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
