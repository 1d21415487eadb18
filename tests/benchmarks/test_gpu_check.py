"""The parts of benchmarks/gpu_check.sh that need no GPU: arguments, the summary, the wheel list."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from helpers.tiny import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))

from gpu_check_sections import op_timings  # noqa: E402
from gpu_check_summary import write_summary  # noqa: E402


def _driver(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), *args],
                          check=False, capture_output=True, text=True, cwd=ROOT)


def test_driver_help_and_argument_errors():
    result = _driver("--help")
    assert result.returncode == 0
    assert "--quick" in result.stdout and "--out" in result.stdout and "--sections" in result.stdout
    result = _driver("--sections", "parity,warp_speed")
    assert result.returncode == 2
    assert "expected --sections to name some of environment, parity" in result.stderr
    assert "but got 'parity,warp_speed'" in result.stderr
    result = _driver("--budget", "-5")
    assert result.returncode == 2 and "positive number of seconds, but got -5" in result.stderr


def test_shell_script_help_and_argument_errors():
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--help"], check=False, capture_output=True, text=True)
    assert result.returncode == 0 and "fetch_gpu_wheels.sh" in result.stdout
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--out"], check=False, capture_output=True, text=True)
    assert result.returncode == 2 and "--out needs a folder" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where there is no GPU")
def test_driver_without_cuda_says_so(tmp_path):
    result = _driver("--out", str(tmp_path))
    assert result.returncode == 2
    assert "needs a CUDA device" in result.stderr and "--quick" in result.stderr
    assert not list(tmp_path.iterdir())


def _op_rows(p_ms: float) -> list[dict]:
    rows = []
    for dtype in ("float32", "bfloat16"):
        for geometry in ("VGG 2x2 s2", "ResNet stem 3x3 s2 p1"):
            for pooling, both_ms in (("F.max_pool2d", 1.0), ("lit_ppool p_pool2d", p_ms)):
                row = {"dtype": dtype, "layout": "nchw", "geometry": geometry, "pooling": pooling,
                       "forward_ms": both_ms / 2, "both_ms": both_ms, "kept_mib": 8.0}
                if pooling != "F.max_pool2d":
                    row.update(first_forward_s=1.25, first_backward_s=2.5)
                rows.append(row)
    return rows


def _fabricated_results() -> dict:
    step = {"encoder": "resnet34", "mode": "eager", "swapped": 1, "max_ms": 100.0, "p_ms": 102.0,
            "max_first_step_s": 3.0, "p_first_step_s": 3.5}
    return {
        "meta": {"date": "2026-12-02T10:00:00", "device": "NVIDIA H200", "cuda": True, "python": "3.12.3",
                 "torch": "2.11.0", "triton": "3.6.0", "quick": False, "budget_s": 500, "wall_s": 345.6},
        "sections": {
            "parity": {"status": "ok", "seconds": 50.0, "result": {"cases": 384, "total": 384, "failures": []}},
            "cuda_tests": {"status": "failed", "seconds": 30.0, "error": None,
                           "result": {"command": "pytest -m cuda", "summary": "1 failed, 5 passed in 20s",
                                      "failures": ["FAILED tests/test_kernels.py::test_x"]}},
            "large_tensor": {"status": "timed out", "seconds": 70.0, "error": "TimeoutError: ran past 60 s\n...",
                             "result": {"rows": [{"layout": "nchw", "shape": [1, 64, 5800, 5800], "numel": 2152960000,
                                                  "errors": {"output": 1e-3, "grad input": 2e-3}, "allowed": 1.6e-2,
                                                  "grad_alpha_finite": True}]}},
            "op_timings": {"status": "ok", "seconds": 80.0,
                           "result": {"shape": [32, 64, 256, 256], "warmup": 5, "reps": 20, "timer": "CUDA events",
                                      "rows": _op_rows(1.1)}},
            "model_steps": {"status": "ok", "seconds": 90.0,
                            "result": {"batch": [8, 3, 512, 512], "precision": "bf16-mixed", "rows": [
                                step, {**step, "encoder": "vgg16", "swapped": 5, "p_ms": 110.0}]}},
            "fit": {"status": "skipped", "seconds": 0.0, "result": None, "error": "out of time: 5 s of the budget left"},
        },
    }


def test_summary_tables_and_targets(tmp_path):
    results = _fabricated_results()
    markdown = write_summary(results, tmp_path)
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == results
    assert (tmp_path / "gpu_check.md").read_text() == markdown
    assert "device: NVIDIA H200; Python 3.12.3, torch 2.11.0, triton 3.6.0; 345.6 s of a 500 s budget" in markdown
    assert "| cuda_tests | failed | 30.0 | 1 failure(s): FAILED tests/test_kernels.py::test_x |" in markdown
    assert "| large_tensor | timed out | 70.0 | TimeoutError: ran past 60 s |" in markdown
    assert "| fit | skipped | 0.0 | out of time: 5 s of the budget left |" in markdown
    assert "384 of 384 cases run" in markdown
    assert "| nchw | (1, 64, 5800, 5800) | 2,152,960,000 | 1.0e-03 | 2.0e-03 | 1.6e-02 | True |" in markdown
    assert "(CUDA events, median of 20 after 5 warm-up)" in markdown
    assert "| VGG 2x2 s2 | lit_ppool p_pool2d | 0.550 | 1.10 | 1.100 | 1.10 | 8.0 MiB | 1.25 fwd, 2.50 bwd |" in markdown
    assert "CPU smoke run" not in markdown
    assert "| resnet34 | eager | 1 | 100.0 | 102.0 | 1.020 | 3.0 / 3.5 |" in markdown
    targets = markdown.split("**Against the targets**")[1]
    assert "| CUDA forward+backward <= 1.2x F.max_pool2d, float32, nchw (VGG / stem) | 1.10x / 1.10x | met |" in targets
    assert "| CUDA forward+backward <= 1.2x F.max_pool2d, bfloat16, channels-last (VGG / stem) | - / - | not measured |" in targets
    assert "| Unet resnet34 step, P <= 1.03x max pooling, eager | 1.020x | met |" in targets
    assert "| Unet vgg16 step, P <= 1.03x max pooling, eager | 1.100x | missed |" in targets
    assert "| Unet vgg16 step, P <= 1.03x max pooling, compiled | - | not measured |" in targets


def test_summary_of_a_cpu_run_gives_no_verdict(tmp_path):
    results = _fabricated_results()
    results["meta"].update(device="CPU (x86_64), no CUDA device", cuda=False, quick=True)
    results["sections"]["op_timings"]["result"]["timer"] = "host clock, CPU"
    markdown = write_summary(results, tmp_path)
    assert "**CPU smoke run, no verdict**: no CUDA device" in markdown.split("| section |")[0]
    assert "(host clock, CPU, median of 20 after 5 warm-up)" in markdown
    assert "CUDA events" not in markdown
    targets = markdown.split("**Against the targets**")[1]
    assert targets.strip() == "CPU smoke run, no verdict: the targets are for CUDA timings."
    for verdict in ("| met |", "| missed |", "not measured"):
        assert verdict not in markdown


def test_quick_op_timings_say_which_clock_they_used():
    result = {}
    op_timings(True, float("inf"), result)
    assert result["timer"] == ("CUDA events" if torch.cuda.is_available() else "host clock, CPU")
    assert {row["pooling"] for row in result["rows"]} == {"F.max_pool2d", "F.avg_pool2d", "lit_ppool p_pool2d"}


def test_summary_of_a_run_that_measured_nothing(tmp_path):
    markdown = write_summary({"meta": {}, "sections": {}}, tmp_path)
    assert markdown.count("not measured") == 8


def _names(path: Path) -> set[str]:
    lines = [line.split("#")[0].strip() for line in path.read_text().splitlines()]
    return {canonicalize_name(re.split(r"[=<>!~\[; ]", line)[0]) for line in lines if line}


def test_wheel_list_covers_what_the_gpu_image_lacks():
    """Every lit_ppool dependency, with the extras it asks for and what they need in turn (read from the
    installed metadata), is on the GPU image, carried as a wheel, or named as not carried."""
    image = _names(ROOT / "benchmarks" / "gpu_image_packages.txt")
    wheels_text = (ROOT / "benchmarks" / "gpu_wheels.txt").read_text()
    carried = _names(ROOT / "benchmarks" / "gpu_wheels.txt")
    not_carried = {canonicalize_name(n) for n in re.findall(r"^# not carried: ([\w.-]+)", wheels_text, flags=re.MULTILINE)}
    environment = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
                   "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython"}
    missing, seen = [], set()
    pending = [(Requirement(r), "lit_ppool") for r in importlib.metadata.requires("lit_ppool")
               if "extra ==" not in r]
    while pending:
        requirement, parent = pending.pop()
        name = canonicalize_name(requirement.name)
        if (name, tuple(requirement.extras)) in seen or name in image or name in not_carried:
            continue
        seen.add((name, tuple(requirement.extras)))
        if name not in carried:
            missing.append(f"{name} (needed by {parent})")
            continue
        for text in importlib.metadata.requires(requirement.name) or []:
            needed = Requirement(text)
            extras = [{**environment, "extra": extra} for extra in requirement.extras] or [{**environment, "extra": ""}]
            if needed.marker is None or any(needed.marker.evaluate(env) for env in extras):
                pending.append((needed, requirement.name))
    assert not missing
    assert carried - image == carried, "a carried wheel is on the image already"
