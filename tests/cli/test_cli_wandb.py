"""`lit-ppool` closes its W&B runs: the offline run file holds its exit record when the command returns."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from helpers.tiny import HELPERS, TINY_FIT
from helpers.wandb_records import records

WANDB_LOGGER = [
    "--trainer.logger=lit_ppool.training.loggers.WandbLogger", "--trainer.logger.save_dir=eval_logs",
]  # fmt: skip


# `lit-ppool` in a child process that ends as soon as the command returns: os._exit skips wandb's exit
# hook, which would otherwise finish a run the command left open (late, under load).
COMMAND_THEN_EXIT = """
import os, sys, traceback
from lit_ppool.cli import main
try:
    main(sys.argv[1:])
    code = 0
except SystemExit as exc:
    code = exc.code if isinstance(exc.code, int) else 1
except BaseException:
    traceback.print_exc()
    code = 1
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
"""


def _lit_ppool(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(HELPERS), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "-c", COMMAND_THEN_EXIT, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def _exit_codes(folder: Path) -> list[int | None]:
    """Per offline run under ``folder``, read at once: the exit code of its exit record (None: not closed)."""
    codes = []
    for run_file in sorted(folder.glob("wandb/offline-run-*/run-*.wandb")):
        exits = [record.exit for record in records(run_file) if record.WhichOneof("record_type") == "exit"]
        codes.append(exits[-1].exit_code if exits else None)
    return codes


def test_fit_and_test_close_their_wandb_runs_before_the_command_returns(tmp_path):
    fit = _lit_ppool(tmp_path, "fit", *TINY_FIT, "--trainer.limit_val_batches=1")
    assert fit.returncode == 0, fit.stderr[-3000:]
    assert _exit_codes(tmp_path) == [0]
    assert "litlogger" not in fit.stdout + fit.stderr  # item 6: Lightning's tip is not printed by the command
    (ckpt,) = tmp_path.glob("lightning_logs/quickstart/version_0/checkpoints/last.ckpt")
    test = _lit_ppool(tmp_path, "test", *TINY_FIT, f"--ckpt_path={ckpt}", "--trainer.limit_test_batches=1",
                      *WANDB_LOGGER)
    assert test.returncode == 0, test.stderr[-3000:]
    assert _exit_codes(tmp_path / "eval_logs") == [0]


def test_a_failing_fit_closes_its_wandb_run_as_failed(tmp_path):
    fit = _lit_ppool(tmp_path, "fit", *TINY_FIT, "--trainer.callbacks+=fault_injection.RaiseAtStep",
                     "--trainer.callbacks.step=1")
    assert fit.returncode != 0 and "injected failure at step 1" in fit.stderr
    assert _exit_codes(tmp_path) == [1]


def test_finish_wandb_runs_finishes_only_runs_its_loggers_started(tmp_path):
    import wandb
    from lightning.pytorch.loggers import CSVLogger

    from lit_ppool.training.loggers import WandbLogger, finish_wandb_runs

    logger = WandbLogger(save_dir=str(tmp_path), mode="offline")
    assert finish_wandb_runs([logger, CSVLogger(tmp_path)]) == []  # its run was never created: none is started
    assert not list(tmp_path.glob("wandb/offline-run-*"))
    run_id = logger.experiment.id
    assert finish_wandb_runs([CSVLogger(tmp_path), WandbLogger(save_dir=str(tmp_path), mode="offline")]) == []
    assert wandb.run is not None and wandb.run.id == run_id  # another logger's run: left open
    assert finish_wandb_runs([CSVLogger(tmp_path), logger], exit_code=3) == [run_id]
    assert wandb.run is None
    # this process keeps its wandb service, whose writer may append the exit record a moment after finish()
    # returns under load (the commands above exit, and their files are read at once)
    deadline = time.monotonic() + 30
    while _exit_codes(tmp_path) == [None] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _exit_codes(tmp_path) == [3]
