"""The sections of ``benchmarks/gpu_check.py``: each one a function ``(quick, deadline, result)``
that fills the dict ``result`` as it goes (so that a section stopped at its time limit still
reports what it measured) and lists what went wrong under ``result["failures"]``.

Each runs in its own process (the driver's ``--section``), on CUDA, or with ``--quick`` on the CPU
with the Triton kernels interpreted (``TRITON_INTERPRET=1``). A section that runs out of time
stops between cases and says how many it ran.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Section:
    """One section: its function, its time on one H200 (and with ``--quick``), and whether it needs a cold Triton cache."""

    run: Callable[[bool, float, dict], None]
    budget_s: float
    quick_budget_s: float
    minimum_s: float = 10.0
    fresh_triton_cache: bool = False

    def budget(self, quick: bool) -> float:
        return self.quick_budget_s if quick else self.budget_s


def _torch_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")  # CPU: TRITON_INTERPRET=1 (the driver)


def environment(quick: bool, deadline: float, result: dict) -> None:
    """Versions, the GPU, and whether the packages lit_ppool needs import."""
    import importlib

    import torch

    modules = ["lit_ppool", "triton", "lightning", "torchmetrics", "timm", "segmentation_models_pytorch",
               "jsonargparse", "docstring_parser", "typeshed_client", "torchdata", "matplotlib"]
    versions = {}
    for name in modules:
        try:
            versions[name] = getattr(importlib.import_module(name), "__version__", "present")
        except Exception as exc:  # noqa: BLE001 (reported: a missing package is what this section is for)
            versions[name] = f"MISSING ({type(exc).__name__}: {exc})"
    result.update(versions=versions, torch=torch.__version__, cuda=torch.version.cuda,
                  failures=[name for name, version in versions.items() if version.startswith("MISSING")])
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        result.update(gpu=properties.name, capability=f"{properties.major}.{properties.minor}",
                      memory_gib=round(properties.total_memory / 2**30, 1))


def parity(quick: bool, deadline: float, result: dict) -> None:
    """The fused-vs-float64 parity grid of tests/helpers/kernel_parity.py on the GPU, both layouts."""
    import itertools

    import torch

    from lit_ppool.kernels.triton_kernels import TritonPPool2dFunction

    from helpers.kernel_parity import cases, parity_failures

    device = _torch_device()
    dtypes = (torch.float32, torch.float16, torch.bfloat16)
    alphas = (1.5,) if quick else (0.0, 1e-3, 1.5, 100.0)
    shape = (1, 2, 6, 7) if quick else (2, 3, 33, 35)
    grid = list(itertools.product(("nchw", "channels_last"), cases(dtypes=dtypes, alphas=alphas, shape=shape)))
    if quick:
        grid = grid[:: max(1, len(grid) // 6)]
    failures = []
    result.update(cases=0, total=len(grid), failures=failures,
                  grid="8 geometries x fp32/fp16/bf16 x alpha {0, 1e-3, 1.5, 100} x per-layer/per-channel "
                       "x NCHW/channels-last, output and both gradients")
    for layout, (spec, x, alpha, geometry) in grid:
        if time.monotonic() > deadline:
            break
        x = x.to(device)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        for quantity, error, allowed in parity_failures(TritonPPool2dFunction, x, alpha.to(device), geometry):
            failures.append({"geometry": str(spec), "dtype": str(x.dtype), "layout": layout,
                             "alpha": alpha.tolist(), "quantity": quantity, "error": error, "allowed": allowed})
        result["cases"] += 1


def cuda_tests(quick: bool, deadline: float, result: dict) -> None:
    """``pytest -m cuda`` on the test modules that have CUDA tests."""
    files = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py")
                   if "mark.cuda" in p.read_text())
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", *files]
    try:
        done = subprocess.run(command, check=False, cwd=ROOT, capture_output=True, text=True,
                              timeout=max(1.0, deadline - time.monotonic()))
        output, returncode = done.stdout + done.stderr, done.returncode
    except subprocess.TimeoutExpired as exc:
        output, returncode = str(exc.stdout or "") + "\n(timed out)", None
    summary = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|skipped|error)", line)]
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", "\n".join(summary[-1:]))}
    ok = returncode == 0 or (returncode == 5 and quick)  # 5: none collected (no GPU in a CPU smoke run)
    failed = [line for line in output.splitlines() if line.startswith(("FAILED", "ERROR"))] or [output[-1500:]]
    result.update(command=" ".join(command), returncode=returncode, summary=summary[-1] if summary else "",
                  counts=counts, failures=[] if ok else failed)


def _timed_ms(fn: Callable[[], object], device, warmup: int, reps: int) -> float:
    """Median milliseconds of ``fn``: CUDA events on a GPU (after ``warmup`` calls), else the host clock."""
    import statistics

    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(times)


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _first_call_s(fn: Callable[[], object], device) -> float:
    """Seconds of one call, synchronised: on a cold Triton cache, the kernels' compile time and one run."""
    _synchronize(device)
    begin = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - begin


def op_timings(quick: bool, deadline: float, result: dict) -> None:
    """max, avg and P-pooling forward and forward+backward, both geometries, fp32/bf16, NCHW/channels-last."""
    import torch
    import torch.nn.functional as F
    from run import GEOMETRIES

    from lit_ppool import p_pool2d

    device = _torch_device()
    shape = (2, 8, 32, 32) if quick else (32, 64, 256, 256)
    warmup, reps = (1, 2) if quick else (5, 20)
    rows = result.setdefault("rows", [])
    result.update(shape=list(shape), warmup=warmup, reps=reps, failures=[],
                  timer="CUDA events" if device.type == "cuda" else "host clock, CPU")
    for dtype, layout, (geometry, (k, s, p)) in _op_grid(GEOMETRIES):
        if time.monotonic() > deadline:
            result["failures"].append("out of time before the grid was done")
            return
        x = torch.rand(shape, device=device, dtype=dtype).contiguous(memory_format=layout[1])
        x_grad = x.clone().requires_grad_()
        alpha = torch.tensor([1.5], device=device, requires_grad=True)
        ops = {"F.max_pool2d": lambda t, k=k, s=s, p=p: F.max_pool2d(t, k, s, p),
               "F.avg_pool2d": lambda t, k=k, s=s, p=p: F.avg_pool2d(t, k, s, p, count_include_pad=False),
               "lit_ppool p_pool2d": lambda t, k=k, s=s, p=p, alpha=alpha: p_pool2d(t, alpha, k, s, p)}
        for name, op in ops.items():
            row = {"dtype": str(dtype).removeprefix("torch."), "layout": layout[0], "geometry": geometry,
                   "pooling": name}
            rows.append(_op_row(row, op, x, x_grad, device, warmup, reps, first_calls=name == "lit_ppool p_pool2d"))


def _op_row(row: dict, op, x, x_grad, device, warmup: int, reps: int, first_calls: bool) -> dict:
    """``row`` with forward and forward+backward ms, bytes kept for backward and, if ``first_calls``,
    the seconds of the first forward and backward calls (on a cold Triton cache: their compile time)."""
    import torch
    from run import saved_bytes

    if first_calls:
        row["first_forward_s"] = _first_call_s(lambda: op(x), device)
    grad = torch.randn(op(x).shape, device=device, dtype=x.dtype)
    if first_calls:
        row["first_backward_s"] = _first_call_s(lambda: op(x_grad).backward(grad), device)
    with torch.no_grad():
        row["forward_ms"] = _timed_ms(lambda: op(x), device, warmup, reps)
    row["both_ms"] = _timed_ms(lambda: op(x_grad).backward(grad), device, warmup, reps)
    row["kept_mib"] = saved_bytes(op, x_grad) / 2**20
    return row


def _op_grid(geometries):
    import itertools

    import torch

    layouts = (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last))
    return itertools.product((torch.float32, torch.bfloat16), layouts, geometries.items())


def large_tensor(quick: bool, deadline: float, result: dict) -> None:
    """p_pool2d (stem 3x3 s2 p1) on a bfloat16 tensor of more than 2**31 elements, NCHW and channels-last:
    output and dL/dx of the first and last channel against the float64 reference run on those channels."""
    import torch

    from lit_ppool.functional import pool_geometry, pool_output_shape
    from lit_ppool.kernels.reference import PPool2dFunction
    from lit_ppool.kernels.triton_kernels import TritonPPool2dFunction

    from helpers.kernel_parity import TOLERANCES

    device = _torch_device()
    shape = (1, 4, 40, 40) if quick else (1, 64, 5800, 5800)  # 2.15e9 elements > 2**31
    geometry = pool_geometry(3, 2, 1)
    out_size = pool_output_shape(shape[-2:], geometry)
    rows, failures = result.setdefault("rows", []), result.setdefault("failures", [])
    for name, layout in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
        if time.monotonic() > deadline:
            failures.append(f"out of time before {name}")
            return
        x = torch.empty(shape, device=device, dtype=torch.bfloat16, memory_format=layout).uniform_(0, 2)
        x.requires_grad_()
        alpha = torch.tensor([1.5], device=device, requires_grad=True)
        grad = torch.randn(shape[0], shape[1], *out_size, device=device, dtype=torch.bfloat16)
        output = TritonPPool2dFunction.apply(x, alpha, geometry, out_size)
        output.backward(grad)
        channels = torch.tensor([0, shape[1] - 1], device=device)
        x_ref = x.detach().index_select(1, channels).double().requires_grad_()
        reference = PPool2dFunction.apply(x_ref, alpha.detach().double(), geometry, out_size)
        reference.backward(grad.index_select(1, channels).double())
        errors = {"output": _relative_error(output.detach().index_select(1, channels), reference),
                  "grad input": _relative_error(x.grad.index_select(1, channels), x_ref.grad)}
        row = {"layout": name, "shape": list(shape), "numel": x.numel(), "int64_index": x.numel() >= 2**31,
               "errors": errors, "allowed": TOLERANCES[torch.bfloat16],
               "grad_alpha_finite": bool(torch.isfinite(alpha.grad).all())}
        rows.append(row)
        if max(errors.values()) > row["allowed"] or not row["grad_alpha_finite"]:
            failures.append(f"{name}: errors {errors}, allowed {row['allowed']}")
        del x, output, grad, x_ref, reference
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _relative_error(value, reference) -> float:
    return ((value.double() - reference).abs().max() / reference.abs().max().clamp_min(1e-6)).item()


def model_steps(quick: bool, deadline: float, result: dict) -> None:
    """One bf16-mixed training step of smp.Unet (resnet34, vgg16), P vs max pooling, eager and torch.compile."""
    import torch

    device = _torch_device()
    batch, size = (1, 64) if quick else (8, 512)
    warmup, reps = (1, 2) if quick else (3, 10)
    x = torch.rand(batch, 3, size, size, device=device)
    target = torch.randint(0, 21, (batch, size, size), device=device)
    rows, failures = result.setdefault("rows", []), result.setdefault("failures", [])
    result.update(batch=[batch, 3, size, size], precision="bf16-mixed", warmup=warmup, reps=reps)
    modes = ("eager",) if quick else ("eager", "compiled")  # compiling on the CPU is for the GPU run only
    for mode in modes:
        for encoder in ("resnet34", "vgg16"):
            if time.monotonic() > deadline:
                failures.append(f"out of time before {encoder} {mode}")
                return
            row = {"encoder": encoder, "mode": mode}
            for pooling in ("max", "p"):
                step, row["swapped"], first_s = _unet_step(encoder, pooling, mode, x, target, device)
                row[f"{pooling}_first_step_s"] = first_s
                row[f"{pooling}_ms"] = _timed_ms(step, device, warmup, reps)
            rows.append(row)


def _unet_step(encoder: str, pooling: str, mode: str, x, target, device):
    """A training step closure for smp.Unet with ``pooling``, its swap count and its first call's seconds."""
    import segmentation_models_pytorch as smp
    import torch
    import torch.nn.functional as F

    from lit_ppool import swap_pooling

    torch.manual_seed(0)
    model = smp.Unet(encoder, encoder_weights=None, classes=21).to(device)
    swapped = len(swap_pooling(model, to="p")) if pooling == "p" else 0
    forward = torch.compile(model) if mode == "compiled" else model
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(forward(x), target)
        loss.backward()
        optimizer.step()

    return step, swapped, _first_call_s(step, device)


FIT_OVERRIDE = """\
trainer:
  accelerator: {accelerator}
  precision: {precision}
  max_epochs: 2
  limit_val_batches: 2
  log_every_n_steps: 2
  logger:  # CSV only: the GPU machine has no wandb
    - class_path: lightning.pytorch.loggers.CSVLogger
      init_args:
        save_dir: {save_dir}
        name: gpu_check
data:
  init_args:
    train_size: {train_size}
    val_size: 32
"""


def fit(quick: bool, deadline: float, result: dict) -> None:
    """``lit-ppool fit`` of configs/quickstart.yaml for two epochs in bf16-mixed and 16-mixed precision:
    the loss stays finite, alpha moves and a checkpoint is written."""
    import tempfile

    import torch

    cuda = torch.cuda.is_available()
    rows, failures = result.setdefault("rows", []), result.setdefault("failures", [])
    for precision in ("bf16-mixed", "16-mixed") if cuda else ("bf16-mixed",):  # CPU has no 16-mixed
        if time.monotonic() > deadline:
            failures.append(f"out of time before {precision}")
            return
        run_dir = Path(tempfile.mkdtemp(prefix=f"fit_{precision}_", dir=os.environ.get("GPU_CHECK_WORKDIR")))
        override = run_dir / "override.yaml"
        override.write_text(FIT_OVERRIDE.format(accelerator="gpu" if cuda else "cpu", precision=precision,
                                                save_dir=run_dir, train_size=32 if quick else 128))
        command = [sys.executable, "-m", "lit_ppool.cli", "fit", "--config", str(ROOT / "configs" / "quickstart.yaml"),
                   "--config", str(override)]
        begin = time.monotonic()
        try:
            done = subprocess.run(command, check=False, cwd=run_dir, capture_output=True, text=True,
                                  timeout=max(1.0, deadline - time.monotonic()))
            returncode, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired:
            returncode, output = None, "(timed out)"
        row = {"precision": precision, "returncode": returncode, "seconds": round(time.monotonic() - begin, 1),
               **_fit_outcome(run_dir)}
        rows.append(row)
        if not (returncode == 0 and row["finite_loss"] and row["alpha_moved"] and row["checkpoints"]):
            failures.append(f"{precision}: {row}; output: {output[-1500:]}")


def _fit_outcome(run_dir: Path) -> dict:
    """Loss, alpha and checkpoints of a fit, read from its metrics.csv and checkpoint folder."""
    import csv
    import math

    metrics = sorted(run_dir.rglob("metrics.csv"))
    records = list(csv.DictReader(metrics[-1].open())) if metrics else []
    losses = [float(r["train/loss"]) for r in records if r.get("train/loss")]
    alpha_columns = [c for c in (records[0].keys() if records else []) if re.fullmatch(r"alpha/[^/]+", c)]
    moved = {}
    for column in alpha_columns:
        values = [float(r[column]) for r in records if r.get(column)]
        moved[column] = values[-1] - values[0] if len(values) > 1 else 0.0
    return {"losses": len(losses), "first_loss": losses[0] if losses else None,
            "last_loss": losses[-1] if losses else None,
            "finite_loss": bool(losses) and all(math.isfinite(v) for v in losses),
            "alpha_change": moved, "alpha_moved": any(abs(v) > 0 for v in moved.values()),
            "checkpoints": sorted(p.name for p in run_dir.rglob("*.ckpt"))}


SECTIONS = {
    "environment": Section(environment, budget_s=30, quick_budget_s=30),
    "parity": Section(parity, budget_s=100, quick_budget_s=60),
    "cuda_tests": Section(cuda_tests, budget_s=90, quick_budget_s=60),
    "large_tensor": Section(large_tensor, budget_s=60, quick_budget_s=30),
    "op_timings": Section(op_timings, budget_s=90, quick_budget_s=60, fresh_triton_cache=True),
    "fit": Section(fit, budget_s=90, quick_budget_s=90),
    "model_steps": Section(model_steps, budget_s=200, quick_budget_s=60, minimum_s=30),
}
"""The sections in the order they run: correctness first, the compile-heavy model steps last."""
