"""`lit-ppool compare`: statistics, aggregation of hand-made results, and the command end to end (tiny)."""

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lit_ppool.cli import main
from lit_ppool.compare import Comparison, RunResult, load_results, paired_difference, summarize, write_report
from lit_ppool.compare.stats import student_t_quantile

from helpers.tiny import QUICKSTART, TINY_RUN
from helpers.wandb_records import records


def compare_main(args):
    """`lit-ppool compare ARGS`: its exit status."""
    return main(["compare", *args])


# --- statistics ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dof", "expected"), [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (30, 2.0423)])
def test_t_quantile_matches_the_tables(dof, expected):
    assert student_t_quantile(0.975, dof) == pytest.approx(expected, abs=2e-4)


def test_paired_difference_by_hand():
    a, b = {0: 0.60, 1: 0.70, 2: 0.65}, {0: 0.66, 1: 0.71, 2: 0.70}
    d = paired_difference(a, b)
    diffs = [0.06, 0.01, 0.05]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 2)
    half = 4.302653 * sd / math.sqrt(3)
    assert (d.n, d.mean) == (3, pytest.approx(mean))
    assert (d.low, d.high) == (pytest.approx(mean - half, abs=1e-5), pytest.approx(mean + half, abs=1e-5))
    assert d.excludes_zero is False  # 0.04 +- 0.066


def test_paired_difference_uses_only_common_seeds_and_says_n_too_small():
    d = paired_difference({0: 0.5, 1: 0.6}, {1: 0.7, 5: 0.9})
    assert d.n == 1 and d.mean == pytest.approx(0.1) and not d.interval_known and math.isnan(d.low)
    assert summarize([0.4]).n == 1 and math.isnan(summarize([0.4]).std)


# --- aggregation of hand-made results ----------------------------------------------------------------------


def _result(folder: Path, pooling: str, seed: int, miou: float, thin: float, alpha=None):
    run = folder / pooling / f"seed_{seed}"
    run.mkdir(parents=True)
    metrics = {"test/mIoU": miou, "test/boundary_IoU": miou - 0.2, "test/trimap_mIoU": miou - 0.1, "test/pixel_acc": 0.9,
               "test/IoU/background": 0.95, "test/IoU/thin": thin, "test/F1/background": 0.97,
               "test/F1/thin": thin + 0.1, "test/boundary_IoU/background": 0.8,
               "test/boundary_IoU/thin": thin - 0.2}  # fmt: skip
    record = {"checkpoint": str(run / "checkpoints/last.ckpt"), "pooling": pooling, "seed": seed, "metrics": metrics,
              "alpha": alpha or {}}  # fmt: skip
    (run / "test-last.json").write_text(json.dumps(record))


def test_aggregation_tables_on_hand_made_results(tmp_path):
    for seed, (m_max, m_p, t_max, t_p) in enumerate([(0.60, 0.66, 0.30, 0.40), (0.70, 0.71, 0.35, 0.45), (0.65, 0.70, 0.32, 0.41)]):
        _result(tmp_path, "max", seed, m_max, t_max)
        _result(tmp_path, "p", seed, m_p, t_p, {"encoder_maxpool": {"mean": 1.5 + seed, "min": 1.5 + seed, "max": 1.5 + seed, "init": 1.0}})
    _result(tmp_path, "avg", 0, 0.5, 0.1)  # one seed only: no interval
    comparison = Comparison(load_results(tmp_path), ["max", "avg", "p"])
    assert comparison.poolings == ["max", "avg", "p"] and comparison.classes == ["background", "thin"]
    paths = write_report(comparison, tmp_path, "test", ["hand-made"])
    markdown = paths["compare.md"].read_text()
    assert "| max | 3 | 0.650 ± 0.050 |" in markdown  # mean 0.65, sd 0.05
    assert "| avg | 1 | 0.500 |" in markdown and "(n too small)" in markdown
    assert "+0.040 [-0.026, +0.106]" in markdown  # the p - max mIoU interval of the test above
    assert "+0.097 [+0.082, +0.111] *" in markdown  # thin class (diffs 0.10, 0.10, 0.09): p wins on every seed
    assert "| p | encoder_maxpool | 1.000 | 2.500 | 1.500 – 3.500 |" in markdown
    section = lambda title: markdown.split(f"## {title}")[1].split("## ")[0]  # noqa: E731
    iou = section("Per-class IoU (mean over seeds)")  # thin IoU of max: 0.30, 0.35, 0.32
    assert "| pooling | background | thin | mIoU |" in iou and "| max | 0.950 | 0.323 | 0.650 |" in iou
    f1 = section("Per-class F1 (mean over seeds)")  # no macro column: the module logs no macro F1
    assert "| pooling | background | thin |\n" in f1
    assert "| max | 0.970 | 0.423 |" in f1 and "| p | 0.970 | 0.520 |" in f1
    f1_difference = section("Per-class F1: paired difference to `max`")
    assert "| avg | +0.000 (n too small) | -0.200 (n too small) |" in f1_difference
    assert "+0.097 [+0.082, +0.111] *" in f1_difference  # the thin class, as for the IoU
    boundary = section("Per-class Boundary IoU (mean over seeds)")
    assert "| pooling | background | thin | Boundary IoU |" in boundary and "| max | 0.800 | 0.123 | 0.450 |" in boundary
    assert "+0.097 [+0.082, +0.111] *" in section("Per-class Boundary IoU: paired difference to `max`")
    rows = paths["compare.csv"].read_text().splitlines()
    assert rows[0].startswith("pooling,seeds,test/mIoU_mean,test/mIoU_std,test/mIoU_diff")
    for key in ("test/IoU/thin", "test/F1/background", "test/F1/thin", "test/boundary_IoU/thin"):
        assert f",{key}_mean,{key}_std,{key}_diff,{key}_diff_low,{key}_diff_high" in rows[0], key
    assert [row.split(",")[0] for row in rows[1:]] == ["max", "avg", "p"]
    assert len(paths["runs.csv"].read_text().splitlines()) == 1 + 7
    assert paths["compare.png"].stat().st_size > 10_000


def test_per_class_tables_only_for_the_logged_families():
    old = RunResult("max", 0, {"test/mIoU": 0.5, "test/IoU/background": 0.9, "test/IoU/thin": 0.1})  # before F1
    assert [family for family, _, _ in Comparison([old]).class_metrics] == ["IoU"]
    new = RunResult("p", 0, {**old.metrics, "test/F1/background": 0.9, "test/F1/thin": 0.2})
    assert [family for family, _, _ in Comparison([old, new]).class_metrics] == ["IoU", "F1"]


def test_a_broken_result_file_is_named(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "test-last.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"x/test-last.json.* JSON"):
        load_results(tmp_path)


# --- bad input fails before any run ------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["--poolings", "max,pp"], "registry names from"),
    (["--seeds", "0"], "count >= 1"),
    (["--seeds", "two"], "count or a list of ints"),
    ([], "Expected --config"),
])  # fmt: skip
def test_bad_arguments_fail_before_any_run(args, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = [] if args == [] else ["--config", QUICKSTART]
    with pytest.raises(SystemExit) as info:
        compare_main([*config, *args])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_a_config_that_does_not_fit_fails_before_any_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        compare_main(["--config", QUICKSTART, "--model.encoder_name=resnt18", *TINY_RUN])
    assert info.value.code == 2 and "resnet18" in capsys.readouterr().err
    assert not (tmp_path / "compare_quickstart").exists()


# --- end to end --------------------------------------------------------------------------------------------


def _run_record(path: Path, timeout: float = 300.0):
    """The run record of an offline W&B run file; wandb's service may write it after the run's process exits."""
    deadline = time.monotonic() + timeout
    while True:
        run = next((r.run for r in records(path) if r.WhichOneof("record_type") == "run"), None)
        if run is not None:
            return run
        if time.monotonic() > deadline:
            raise TimeoutError(f"Expected the W&B run file {path} to hold its run record within {timeout} s.")
        time.sleep(0.5)


def test_compare_end_to_end_resumable_and_aggregatable(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    args = ["--config", QUICKSTART, "--poolings", "max,p", "--seeds", "2",
            "--output", "cmp", *TINY_RUN]  # fmt: skip
    assert compare_main(args) == 0
    out = tmp_path / "cmp"
    for name in ("compare.md", "compare.csv", "runs.csv", "compare.png"):
        assert (out / name).is_file()
    markdown = (out / "compare.md").read_text()
    assert "| max | 2 |" in markdown and "| p | 2 |" in markdown and "Boundary IoU" in markdown
    assert "encoder_maxpool" in markdown  # the learned alpha table
    # W&B runs grouped by experiment, job_type = pooling, tagged with pooling and seed
    runs = [_run_record(f) for f in sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))]
    assert len(runs) == 4 and {run.run_group for run in runs} == {"cmp"}
    assert sorted((run.job_type, *sorted(run.tags)) for run in runs) == [
        ("max", "cmp", "pooling=max", "seed=0"), ("max", "cmp", "pooling=max", "seed=1"),
        ("p", "cmp", "pooling=p", "seed=0"), ("p", "cmp", "pooling=p", "seed=1"),
    ]  # fmt: skip
    overlays = sorted(out.glob("*/seed_*/run.yaml"))
    assert len(overlays) == 4 and "group: cmp, job_type: p" in (out / "p" / "seed_1" / "run.yaml").read_text()
    capsys.readouterr()

    # a second invocation runs nothing
    assert compare_main(args) == 0
    assert capsys.readouterr().out.count("finished earlier") == 4

    # --aggregate on copied run folders gives the same tables
    copy = tmp_path / "copied"
    for run in out.glob("*/seed_*"):
        shutil.copytree(run, copy / f"{run.parent.name}-{run.name}")
    assert compare_main(["--aggregate", str(copy), "--poolings", "max,p"]) == 0
    strip = lambda text: text.split("## Test metrics")[1]  # noqa: E731 (the header names the folder)
    assert strip((copy / "compare.md").read_text()) == strip(markdown)


def test_print_commands_run_as_printed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["--config", QUICKSTART, "--poolings", "p", "--seeds", "1", "--output", "cmp", *TINY_RUN]
    assert compare_main([*args, "--print_commands"]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith("lit-ppool fit ") and " && lit-ppool test " in line
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])  # the lit-ppool script
    result = subprocess.run(line, shell=True, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "WANDB_MODE": "offline", "PATH": path})  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads((tmp_path / "cmp" / "p" / "seed_0" / "test-last.json").read_text())
    assert record["pooling"] == "p" and record["seed"] == 0 and "test/mIoU" in record["metrics"]
    for family in ("IoU", "boundary_IoU", "F1", "precision", "recall"):
        assert f"test/{family}/thin_line" in record["metrics"], family
