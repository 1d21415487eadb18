"""The benchmark command of docs/performance.md runs from a checkout and prints every table (smoke run, no timings checked)."""

import os
import re
import subprocess
import sys

from helpers.tiny import ROOT


def test_benchmark_quick_run_prints_all_tables():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--rounds", "1"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    titles = re.findall(r"^\*\*(.+?)\*\*$", result.stdout, flags=re.M)
    assert titles == [
        "CPU float32, input (2, 8, 32, 32)",
        "CPU bfloat16, input (2, 8, 32, 32)",
        "CPU float32, channels-last, input (2, 8, 32, 32)",
        "One training step of smp.Unet, CPU float32, batch 1x3x64x64, 21 classes",
    ]
    # Every table has its max-pooling baseline and our row for both geometries. (The bytes kept
    # for backward round to 0.0 MiB at these sizes; test_kernels.py compares them exactly.)
    ours = re.findall(r"^\| .+ \| lit_ppool p_pool2d \| .* \| ([\d.]+) MiB \|$", result.stdout, flags=re.M)
    max_pool = re.findall(r"^\| .+ \| F\.max_pool2d \| .* \| ([\d.]+) MiB \|$", result.stdout, flags=re.M)
    assert len(ours) == len(max_pool) == 6
    assert re.search(r"^\| resnet34 \| 1 \|", result.stdout, flags=re.M)
    assert re.search(r"^\| vgg16 \| 5 \|", result.stdout, flags=re.M)


def test_benchmark_only_option_selects_the_tables():
    for only, expected in [("ops", 3), ("model", 1)]:
        result = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--rounds", "1", "--only", only],
            capture_output=True, text=True, cwd=ROOT, check=False,
            env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},  # the CPU tables only, also on a GPU machine
        )
        assert result.returncode == 0, result.stderr[-3000:]
        titles = re.findall(r"^\*\*(.+?)\*\*$", result.stdout, flags=re.M)
        assert len(titles) == expected and all(("smp.Unet" in title) == (only == "model") for title in titles), titles


def test_dense_alpha_benchmark_quick_run_prints_every_candidate():
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "dense_alpha.py"), "--quick", "--rounds", "1"],
        capture_output=True, text=True, cwd=ROOT, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.findall(r"^\*\*(.+?)\*\*$", result.stdout, flags=re.M) == ["Dense alpha, CPU float32, 1 rounds"]
    candidates = re.findall(r"^\| quick [^|]+ \| ([^|]+) \| [\d.]+ \|", result.stdout, flags=re.M)
    per_pool = ["F.max_pool2d", "p_pool2d per-channel alpha", "p_pool2d dense alpha (N, C, Ho, Wo)",
                "p_pool2d dense alpha (N, 1, Ho, Wo)"]
    assert candidates == per_pool * 2
