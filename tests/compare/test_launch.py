"""`lit-ppool compare`'s launchers (submitit): options, the run task, local slots, the SLURM job array, progress.

The tasks here mostly run stand-in commands (a few lines of Python) instead of `lit-ppool fit`;
the slow tests at the end run the real tiny fits through the command line.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch
from submitit.helpers import DelayedSubmission

from lit_ppool.cli import main
from lit_ppool.compare.launch import (
    LOCK_FILE,
    Launcher,
    Progress,
    RunTask,
    local_environments,
    read_launcher_block,
    run_local,
)
from lit_ppool.training.errors import ConfigError

from helpers.tiny import QUICKSTART, TINY_RUN

STAMP = re.compile(r"^# lit-ppool compare: (\w+) of .* (started|ended) (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})", re.MULTILINE)


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def _task(folder: Path, label: str = "p seed 0", fit: str = "pass", test: str | None = None) -> RunTask:
    """A task whose stages are stand-ins: ``fit`` runs ``fit``; ``test`` writes the record unless given other code."""
    directory = folder / label.replace(" ", "_")
    result = directory / "test-last.json"
    test = test or f"import os, pathlib; pathlib.Path({str(result)!r}).write_text(os.environ.get('OMP_NUM_THREADS', '-'))"
    return RunTask(label, directory, result, [("fit", _python(fit)), ("test", _python(test))])


def _stamps(log: Path) -> dict[str, datetime]:
    """``{"fit started": time, ...}`` from the start and end lines of a stage log (the last attempt's)."""
    return {f"{stage} {what}": datetime.fromisoformat(when) for stage, what, when in STAMP.findall(log.read_text())}


# --- options ---------------------------------------------------------------------------------------------------


def test_command_line_wins_over_the_launcher_block_over_the_defaults(tmp_path):
    block = tmp_path / "slurm.yaml"
    block.write_text("launcher:\n  name: slurm\n  partition: gpu\n  time: 60\n  sbatch: {account: lab}\n")
    launcher = Launcher.from_options([(str(block), read_launcher_block(block))], time=30, jobs=4, wait=False)
    assert launcher == Launcher(name="slurm", jobs=4, partition="gpu", time=30, sbatch={"account": "lab"})
    assert Launcher.from_options() == Launcher(name="local")
    assert read_launcher_block(QUICKSTART) is None  # a run config
    gpu_block = tmp_path / "gpus.yaml"
    gpu_block.write_text("launcher:\n  gpus_per_run: 2\n")
    assert Launcher.from_options([(str(gpu_block), read_launcher_block(gpu_block))], gpus_per_run=0).gpus_per_run == 0  # 0 is a value
    with pytest.raises(ConfigError, match="--jobs to be at least 1"):
        Launcher.from_options(jobs=0)


@pytest.mark.parametrize(("content", "given", "message"), [
    ("launcher: {name: slurm, time: 5}\ntrainer: {max_epochs: 1}\n", {}, "YAML file of its own"),
    ("launcher: {name: pbs}\n", {}, "launcher: block of"),
    ("launcher: {name: slurm, tme: 5}\n", {}, "tme"),
    ("launcher: {jobs: 0}\n", {}, "--jobs to be at least 1"),
    ("launcher: {partition: gpu}\n", {}, "--partition only with --launcher slurm"),
    ("launcher: {name: slurm}\n", {}, "Expected --time MINUTES"),
    ("launcher: {name: slurm, time: 5}\n", {"gpus_per_run": -1}, "--gpus_per_run to be at least 0"),
])  # fmt: skip
def test_bad_launcher_options_name_the_problem(tmp_path, content, given, message):
    path = tmp_path / "launcher.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=re.escape(message)):
        Launcher.from_options([(str(path), read_launcher_block(path))], **given)


def test_local_slots_share_the_gpus_and_the_cores(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    gpus = ["0", "1", "2", "3"]
    # --jobs 1: every GPU, named (submitit's local executor hides the GPUs of a job that names none)
    assert local_environments(Launcher(), cores=8, gpus=gpus) == [{"CUDA_VISIBLE_DEVICES": "0,1,2,3"}]
    three = local_environments(Launcher(jobs=3, gpus_per_run=1), cores=8, gpus=gpus)
    assert three == [{"CUDA_VISIBLE_DEVICES": str(i), "OMP_NUM_THREADS": "2"} for i in range(3)]
    assert local_environments(Launcher(jobs=2), cores=2, gpus=[]) == [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}] * 2
    assert local_environments(Launcher(cpus_per_run=3), cores=8, gpus=gpus) == [{"CUDA_VISIBLE_DEVICES": "0,1,2,3", "OMP_NUM_THREADS": "3"}]
    with pytest.raises(ConfigError, match=r"--jobs to be at most the 1 GPU\(s\) visible here.*--gpus_per_run 0"):
        local_environments(Launcher(jobs=2), cores=8, gpus=["0"])  # no run on the CPU unless asked
    assert [env["CUDA_VISIBLE_DEVICES"] for env in local_environments(Launcher(jobs=2, gpus_per_run=0), cores=8, gpus=["0"])] == ["", ""]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # set by the user: a cap
    assert local_environments(Launcher(jobs=2, gpus_per_run=0), cores=8, gpus=gpus)[1] == {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    with pytest.raises(ConfigError, match=r"--jobs x --gpus_per_run \(3 x 2\) to be at most the 4 GPU"):
        local_environments(Launcher(jobs=3, gpus_per_run=2), cores=8, gpus=gpus)


def test_a_local_run_gets_the_gpus_of_its_slot_through_submitit(tmp_path, monkeypatch):
    """submitit's local executor sets CUDA_VISIBLE_DEVICES for its jobs ("" unless told): a run's slot names its own."""
    monkeypatch.setattr("lit_ppool.compare.launch._visible_gpus", lambda: ["0", "1"])  # this machine has no GPU
    code = "import os, pathlib; pathlib.Path({!r}).write_text(os.environ['CUDA_VISIBLE_DEVICES'])"
    task = _task(tmp_path, test=code.format(str(tmp_path / "p_seed_0" / "test-last.json")))
    outcomes = run_local([task], Launcher(), tmp_path / "submitit")
    assert outcomes["p seed 0"].ok and task.result.read_text() == "0,1"  # --jobs 1: every GPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.cuda
def test_each_local_run_sees_only_its_own_gpu(tmp_path):
    code = "import torch, pathlib; pathlib.Path({!r}).write_text(str(torch.cuda.device_count()))"
    tasks = [_task(tmp_path, f"p seed {i}", test=code.format(str(tmp_path / f"p_seed_{i}" / "test-last.json"))) for i in range(2)]
    outcomes = run_local(tasks, Launcher(jobs=2, gpus_per_run=1), tmp_path / "submitit") if torch.cuda.device_count() >= 2 else None
    if outcomes is None:
        pytest.skip("needs two CUDA devices")
    assert all(outcome.ok for outcome in outcomes.values())
    assert [task.result.read_text() for task in tasks] == ["1", "1"]


# --- the run task ----------------------------------------------------------------------------------------------


def test_a_finished_run_is_not_run_again(tmp_path):
    task = _task(tmp_path, fit="raise SystemExit(1)")
    task.directory.mkdir()
    task.result.write_text("{}")
    assert task().kind == "earlier"
    assert not (task.directory / "fit.log").exists()


def test_a_failed_stage_is_reported_with_its_log_and_the_logs_have_times(tmp_path):
    task = _task(tmp_path, fit="print('fitting')", test="raise SystemExit(3)")
    outcome = task()
    assert (outcome.kind, outcome.stage, outcome.exit_code, outcome.log) == ("failed", "test", 3, task.directory / "test.log")
    assert outcome.describe() == f"test failed (exit 3), see {task.directory / 'test.log'}"
    fit_log = (task.directory / "fit.log").read_text()
    assert "fitting" in fit_log and fit_log.count("# lit-ppool compare: fit of p seed 0") == 2
    stamps = _stamps(task.directory / "fit.log") | _stamps(task.directory / "test.log")
    assert stamps["fit started"] <= stamps["fit ended"] <= stamps["test started"] <= stamps["test ended"]


def _start(task: RunTask) -> tuple[threading.Thread, list]:
    """Run ``task`` in a thread, once its first stage is running; its outcome lands in the list."""
    outcome = []
    thread = threading.Thread(target=lambda: outcome.append(task()))
    thread.start()
    deadline = time.monotonic() + 60
    while task._process is None and time.monotonic() < deadline:  # the test's own handle on its task
        time.sleep(0.05)
    return thread, outcome


def test_two_launches_never_run_one_run_at_once(tmp_path):
    task = _task(tmp_path, fit="import time; time.sleep(30)")
    thread, _ = _start(task)
    try:
        busy = _task(tmp_path, fit="pass")()  # the same run folder, another launch
        assert busy.kind == "busy" and busy.log == task.directory / LOCK_FILE and not busy.ok
        assert f"pid {os.getpid()}" in (task.directory / LOCK_FILE).read_text()
    finally:
        task.stop()
        thread.join()
    assert _task(tmp_path, fit="pass")().kind == "done"  # released with its process


def test_a_filesystem_without_locks_runs_the_run_and_says_so(tmp_path, monkeypatch):
    def no_flock(file, operation):
        raise OSError(38, "Function not implemented")  # ENOSYS: Lustre mounted without -o flock

    monkeypatch.setattr("lit_ppool.compare.launch.fcntl.flock", no_flock)
    task = _task(tmp_path)
    assert task().kind == "done" and task.result.is_file()
    assert "p seed 0: no lock ([Errno 38] Function not implemented)" in (task.directory / "fit.log").read_text()


def test_a_run_finished_while_its_lock_was_taken_is_not_run_again(tmp_path, monkeypatch):
    task = _task(tmp_path, fit="raise SystemExit(5)")  # would fail if it ran
    real_flock = __import__("fcntl").flock

    def flock_after_another_launch_finished(file, operation):
        task.result.write_text("{}")  # the other launch wrote the record after this one looked for it
        real_flock(file, operation)

    monkeypatch.setattr("lit_ppool.compare.launch.fcntl.flock", flock_after_another_launch_finished)
    assert task().kind == "earlier" and not (task.directory / "fit.log").exists()


def test_checkpoint_stops_the_command_and_requeues_the_same_task(tmp_path):
    task = _task(tmp_path, fit="import time; time.sleep(60)")
    thread, outcome = _start(task)
    process = task._process
    requeued = task.checkpoint()  # what submitit calls at the time limit or on preemption
    thread.join(timeout=30)
    assert process.poll() is not None and outcome[0].kind == "failed" and outcome[0].stage == "fit"
    assert isinstance(requeued, DelayedSubmission) and requeued.function is task
    task.stages = (("fit", _python("pass")), task.stages[1])  # the rerun: the fit resumes and ends
    assert requeued.result().kind == "done" and task.result.is_file()


# --- progress --------------------------------------------------------------------------------------------------


def test_one_status_line_per_change_with_an_estimate():
    now = [0.0]
    progress = Progress(["a", "b", "c", "d"], parallel=2, clock=lambda: now[0])
    assert progress.update("a", "running") == "[0:00] a: running | 0 done, 1 running, 0 failed, 3 queued"
    assert progress.update("a", "running") is None  # no change, no line
    progress.update("b", "running")
    now[0] = 60.0
    line = progress.update("a", "done", "done in 60 s")
    # b has run 60 s of the mean 60; c and d wait: 2 x 60 s of work on 2 slots
    assert line == "[1:00] a: done in 60 s | 1 done, 1 running, 0 failed, 2 queued, about 1:00 left"
    now[0] = 90.0
    assert progress.update("b", "failed", "fit failed").endswith("| 1 done, 0 running, 1 failed, 2 queued, about 1:00 left")
    assert progress.summary() == "4 run(s) in 1:30: 1 done, 1 failed"


# --- submitit's executors run the tasks ---------------------------------------------------------------------


@pytest.mark.parametrize("cluster", ["local", "debug"])
def test_executors_run_at_most_jobs_tasks_at_once(tmp_path, monkeypatch, capsys, cluster):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    tasks = [_task(tmp_path, f"p seed {seed}", fit="import time; time.sleep(2)") for seed in range(2)]
    tasks.append(_task(tmp_path, "max seed 0", fit="raise SystemExit(2)"))  # queued until a slot is free
    outcomes = run_local(tasks, Launcher(jobs=2, cpus_per_run=1), tmp_path / "submitit", cluster=cluster, poll_s=0.1)
    assert [outcomes[task.label].kind for task in tasks] == ["done", "done", "failed"]
    assert [task.result.read_text() for task in tasks[:2]] == ["1"] * 2  # --cpus_per_run: the torch threads
    out = capsys.readouterr().out
    assert f"max seed 0: fit failed (exit 2), see {tasks[2].directory / 'fit.log'}" in out
    assert out.count(" running | ") == 3 and re.search(r"^3 run\(s\) in \d+:\d\d: 2 done, 1 failed$", out, re.MULTILINE)
    first_done = min(_stamps(task.directory / "test.log")["test ended"] for task in tasks[:2])
    assert _stamps(tasks[2].directory / "fit.log")["fit started"] >= first_done  # never more than --jobs at once
    spans = [(_stamps(task.directory / "fit.log")["fit started"], _stamps(task.directory / "test.log")["test ended"]) for task in tasks[:2]]
    overlap = max(spans[0][0], spans[1][0]) < min(spans[0][1], spans[1][1])
    assert overlap == (cluster == "local")  # the debug executor runs each job in this process when asked for it


# --- SLURM: the job array a user would submit by hand -----------------------------------------------------------


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """`sbatch` (records its arguments, answers job 4242) and `srun` on PATH: submitit's real SLURM path, no cluster."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\necho "$@" >> {bin_dir}/sbatch.args\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir / "sbatch.args"


def test_slurm_launch_writes_the_job_array_and_returns(tmp_path, monkeypatch, capsys, fake_slurm):
    monkeypatch.chdir(tmp_path)
    Path("slurm.yaml").write_text("launcher:\n  name: slurm\n  partition: gpu\n  time: 240\n  sbatch: {account: lab, qos: high}\n")
    args = ["--config", QUICKSTART, "--config", "slurm.yaml", "--poolings", "max,p", "--seeds", "2", "--output", "cmp",
            "--time", "90", "--gpus_per_run", "2", "--cpus_per_run", "8", "--mem_gb", "32", "--jobs", "3", *TINY_RUN]  # fmt: skip
    assert main(["compare", *args]) == 0
    script = tmp_path / "cmp" / "submitit" / "4242_submission.sh"
    (submitted,) = [line.split() for line in fake_slurm.read_text().splitlines()]  # one sbatch call: the whole array
    assert len(submitted) == 1 and Path(submitted[0]).resolve() == script.resolve()  # submitit leaves a link to it
    text = script.read_text()
    for line in ("#SBATCH --array=0-3%3", "#SBATCH --partition=gpu", "#SBATCH --time=90", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --ntasks-per-node=2", "#SBATCH --nodes=1", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB",
                 "#SBATCH --account=lab", "#SBATCH --qos=high", "#SBATCH --job-name=lit-ppool-cmp", "#SBATCH --signal=USR2@90"):  # fmt: skip
        assert line in text.splitlines(), line
    assert f"-m submitit.core._submit {tmp_path / 'cmp' / 'submitit'}" in text
    out = capsys.readouterr().out
    assert f"Submitted 4 run(s) to SLURM, job 4242; sbatch script {script}" in out
    assert [line.split()[:3] for line in out.splitlines() if line.startswith("  4242_")] == [
        ["4242_0", "max", "seed"], ["4242_1", "max", "seed"], ["4242_2", "p", "seed"], ["4242_3", "p", "seed"],
    ]  # fmt: skip
    assert "lit-ppool compare --aggregate cmp --poolings max,p" in out
    # each array task runs its run's fit and test, on two GPUs as Lightning's SLURM support expects
    task = DelayedSubmission.load(tmp_path / "cmp" / "submitit" / "4242_3_submitted.pkl").function
    assert task.label == "p seed 1" and task.env == {"OMP_NUM_THREADS": "8"}
    assert [name for name, _ in task.stages] == ["fit", "test"]
    fit = task.stages[0][1]
    assert "slurm.yaml" not in " ".join(fit) and fit[-4:] == ("--trainer.devices=2", "--trainer.num_nodes=1", "--ckpt_path", "last")
    assert not list((tmp_path / "cmp").rglob("test-last.json"))  # nothing ran here


def test_slurm_needs_a_time_limit_and_local_reads_no_slurm_options(tmp_path, monkeypatch, capsys, fake_slurm):
    monkeypatch.chdir(tmp_path)
    for extra, message in ((["--launcher", "slurm"], "Expected --time MINUTES"), (["--partition", "gpu"], "--partition only with")):
        with pytest.raises(SystemExit) as info:
            main(["compare", "--config", QUICKSTART, *extra])
        assert info.value.code == 2 and message in capsys.readouterr().err
    assert not fake_slurm.exists()


# --- end to end, real tiny runs -------------------------------------------------------------------------------


def _spans(output: Path) -> list[tuple[datetime, datetime]]:
    """(fit started, test ended) of each run under ``output``."""
    logs = sorted(output.glob("*/seed_*"))
    return [(_stamps(run / "fit.log")["fit started"], _stamps(run / "test.log")["test ended"]) for run in logs]


@pytest.mark.slow
def test_jobs_2_overlaps_two_runs_and_gives_the_tables_of_jobs_1(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the same torch threads in both: the same numbers
    args = ["compare", "--config", QUICKSTART, "--poolings", "max,p", "--seeds", "1", "--name", "cmp", *TINY_RUN]
    assert main([*args, "--output", "jobs2", "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    done = re.findall(r"^\[\d+:\d\d\] (max|p) seed 0: done in \d+ s \| .*, about \d+:\d\d left$", out, re.MULTILINE)
    assert sorted(done) == ["max", "p"] and re.search(r"^2 run\(s\) in \d+:\d\d: 2 done, 0 failed$", out, re.MULTILINE)
    assert main([*args, "--output", "jobs1"]) == 0
    (a_start, a_end), (b_start, b_end) = _spans(tmp_path / "jobs2")
    assert max(a_start, b_start) < min(a_end, b_end)  # the two runs overlapped
    (a_start, a_end), (b_start, b_end) = _spans(tmp_path / "jobs1")
    assert max(a_start, b_start) >= min(a_end, b_end)  # one after the other
    for table in ("compare.md", "compare.csv", "runs.csv"):
        jobs1, jobs2 = ((tmp_path / folder / table).read_text() for folder in ("jobs1", "jobs2"))
        assert jobs2 == jobs1.replace("jobs1", "jobs2"), table  # runs.csv names the run folders


@pytest.mark.slow
def test_a_run_killed_mid_fit_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    args = ["compare", "--config", QUICKSTART, "--poolings", "p", "--seeds", "1", "--output", "cmp"]
    args += [arg for arg in TINY_RUN if not arg.startswith("--trainer.max_steps")]
    compare = subprocess.Popen([sys.executable, "-m", "lit_ppool.cli", *args, "--trainer.max_steps=1000"], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    run = tmp_path / "cmp" / "p" / "seed_0"
    deadline = time.monotonic() + 300
    while not (run / "checkpoints" / "last.ckpt").is_file() and compare.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(compare.pid, signal.SIGKILL)  # compare, submitit's processes and the fit: a machine that went down
    compare.wait()
    step = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert 0 < step < 1000
    assert main([*args, f"--trainer.max_steps={step + 2}"]) == 0  # the same command again
    fit_log = (run / "fit.log").read_text()
    assert fit_log.count("# lit-ppool compare: fit of p seed 0 started") == 2 and "--ckpt_path last is" in fit_log
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == step + 2
    record = json.loads((run / "test-last.json").read_text())
    assert record["pooling"] == "p" and "test/mIoU" in record["metrics"]
