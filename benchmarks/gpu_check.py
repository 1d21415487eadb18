"""Every GPU check of lit_ppool in one run: CUDA tests, parity, large tensors, op and model timings, a fit.

    python benchmarks/gpu_check.py --out DIR            # on a CUDA machine (benchmarks/gpu_check.sh runs it)
    python benchmarks/gpu_check.py --quick --out DIR    # tiny sizes; on CPU the Triton kernels run interpreted

Each section runs in its own process with its own time limit (a crashed kernel leaves the next
sections a clean CUDA context); a failed or timed-out section is recorded and the run goes on.
``gpu_check.json`` and ``gpu_check.md`` are rewritten in DIR after every section, so a run cut
short still leaves what it measured. Timings are reported against the targets, never asserted.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

from gpu_check_sections import SECTIONS  # noqa: E402 (importable only after the sys.path line above)
from gpu_check_summary import write_summary  # noqa: E402

TOTAL_BUDGET_S = 500.0
"""Default time for all sections together (about 8.3 minutes), so that the run stays under 9."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--section`` is internal (the driver runs each section through it)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_check_out"),
                        help="folder for gpu_check.json and gpu_check.md (default: $OUT or ./gpu_check_out)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and short limits (smoke run)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run, in this order (default: {','.join(SECTIONS)})")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for all sections together (default {TOTAL_BUDGET_S:.0f}, --quick 120)")
    parser.add_argument("--section", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.sections.split(",") if name.strip()]
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names:
        parser.error(f"expected --sections to name some of {', '.join(SECTIONS)}, but got {args.sections!r}")
    args.sections = names
    if args.budget is not None and args.budget <= 0:
        parser.error(f"expected --budget to be a positive number of seconds, but got {args.budget}")
    args.budget = args.budget or (120.0 if args.quick else TOTAL_BUDGET_S)
    return args


def run_one_section(args: argparse.Namespace) -> int:
    """Child process: run one section and write its result (or its error) as JSON to ``args.result``."""
    import signal
    import traceback

    def out_of_time(signum, frame):
        raise TimeoutError(f"the section ran past its {args.limit:.0f} s")

    deadline = time.monotonic() + args.limit
    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(int(args.limit) + 10)  # a call that ignored the deadline; the driver kills at +20 s
    result, status, error = {}, "ok", None
    try:
        SECTIONS[args.section].run(args.quick, deadline, result)
    except Exception as exc:  # noqa: BLE001 (recorded with what the section measured so far; the driver goes on)
        status = "timed out" if isinstance(exc, TimeoutError) else "failed"
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-2000:]}"
    signal.alarm(0)
    if status == "ok" and result.get("failures"):
        status = "failed"
    args.result.write_text(json.dumps({"status": status, "result": result, "error": error}, default=str))
    return 0


def spawn_section(name: str, args: argparse.Namespace, limit: float, workdir: Path) -> dict:
    """Run section ``name`` in a child process for at most ``limit`` seconds; its record for the summary."""
    result_file = workdir / f"{name}.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--result", str(result_file),
               "--limit", f"{limit:.0f}"] + (["--quick"] if args.quick else [])
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "GPU_CHECK_WORKDIR": str(workdir)}
    if args.quick and not _cuda_available():  # a CPU smoke run: the Triton kernels interpreted
        env.setdefault("TRITON_INTERPRET", "1")
    if SECTIONS[name].fresh_triton_cache:  # first-call compile times need a cold Triton cache
        env["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix=f"triton_{name}_", dir=workdir)
    start = time.monotonic()
    try:
        # A section stops itself at its deadline; the grace covers its interpreter start and clean-up.
        done = subprocess.run(command, check=False, env=env, cwd=ROOT, capture_output=True, text=True, timeout=limit + 20)
        returncode, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        returncode, output = None, _text(exc.stdout) + _text(exc.stderr)
    record = {"seconds": round(time.monotonic() - start, 1), "output_tail": output[-3000:]}
    if result_file.exists():
        record.update(json.loads(result_file.read_text()))
    elif returncode is None:
        record.update(status="timed out", result=None, error=f"killed after {limit + 20:.0f} s")
    else:
        record.update(status="failed", result=None, error=f"the section's process exited with {returncode}")
    return record


def _text(output) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else (output or "")


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def device_problem(quick: bool) -> str | None:
    """Why this machine cannot run the full check (no CUDA device), or None."""
    if quick or _cuda_available():
        return None
    return ("gpu_check needs a CUDA device, and torch sees none (torch.cuda.is_available() is False). "
            "Run it on a GPU machine, or pass --quick for a CPU smoke run of the script itself.")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.section:
        return run_one_section(args)
    problem = device_problem(args.quick)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    results = {"meta": run_meta(args), "sections": {}}
    start = time.monotonic()
    for name in args.sections:
        left = args.budget - (time.monotonic() - start)
        limit = min(SECTIONS[name].budget(args.quick), left)
        if limit < SECTIONS[name].minimum_s:
            results["sections"][name] = {"status": "skipped", "seconds": 0.0, "result": None,
                                         "error": f"out of time: {left:.0f} s of the budget left"}
        else:
            print(f"[gpu_check] {name}: up to {limit:.0f} s", flush=True)
            results["sections"][name] = spawn_section(name, args, limit, workdir)
            print(f"[gpu_check] {name}: {results['sections'][name]['status']} "
                  f"in {results['sections'][name]['seconds']} s", flush=True)
        results["meta"]["wall_s"] = round(time.monotonic() - start, 1)
        markdown = write_summary(results, args.out)
    print(markdown)
    return 0 if all(s["status"] in ("ok", "skipped") for s in results["sections"].values()) else 1


def run_meta(args: argparse.Namespace) -> dict:
    """Date, machine and versions for the summary's header."""
    import platform

    import torch

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cuda = torch.cuda.is_available()
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if cuda else f"CPU ({platform.machine()}), no CUDA device", "cuda": cuda,
        "python": platform.python_version(), "torch": torch.__version__, "triton": triton_version,
        "quick": args.quick, "budget_s": args.budget, "sections": args.sections,
    }


if __name__ == "__main__":
    sys.exit(main())
