"""A `lit-ppool fit` killed with SIGKILL resumes exactly, and a kill during a checkpoint write loses nothing.

Real subprocesses of ``python -m lit_ppool.cli``, killed by the test-only callbacks of
``fault_injection.py``. Runs are on CPU with one thread and ``deterministic: true``, so the
same state and the same data give bit-identical results: the resumed run is compared with
the uninterrupted one by exact equality (``torch.equal``), and any state that a checkpoint
failed to carry (dataloader position, random state, optimiser moments, scheduler, alpha)
would show up as a difference.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_ppool import PPool2d, PPoolSegmentationModule

from helpers.tiny import HELPERS

CONFIG = """\
seed_everything: 0
trainer:
  accelerator: cpu
  devices: 1
  max_epochs: 2
  deterministic: true
  logger: false
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args:
        dirpath: checkpoints
        save_top_k: 0
        save_last: true
        every_n_train_steps: {every_n_train_steps}
model:
  arch: Unet
  encoder_name: tu-resnet10t  # two pooling layers, 0.4 M parameters: checkpoints of 5 MB
  encoder_weights: null
  model_kwargs: {{encoder_depth: 3, decoder_channels: [16, 8, 8]}}
  alpha_lr_mult: 10.0
  optimizer:
    class_path: torch.optim.AdamW
    init_args: {{lr: 0.003, weight_decay: 0.0001}}
  scheduler:
    class_path: torch.optim.lr_scheduler.PolynomialLR
    init_args: {{total_iters: 16, power: 0.9}}
data:
  class_path: lit_ppool.SyntheticDetailDataModule
  init_args: {{image_size: 32, train_size: 16, val_size: 4, test_size: 4, batch_size: 2, eval_batch_size: 4, hflip: true}}
"""
STEPS_PER_EPOCH = 8  # 16 training samples, batch size 2: 16 steps in 2 epochs


_STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _no_leftover_processes():
    yield
    while _STARTED:
        process = _STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait()


def _start_fit(run_dir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start `python -m lit_ppool.cli fit --config ../config.yaml *args` in ``run_dir`` (output in log.txt)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    python_path = [str(HELPERS), *filter(None, [os.environ.get("PYTHONPATH")])]
    child_env = {**os.environ, "PYTHONPATH": os.pathsep.join(python_path), "OMP_NUM_THREADS": "1", **(env or {})}
    with open(run_dir / "log.txt", "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "lit_ppool.cli", "fit", "--config", "../config.yaml", *args],
            cwd=run_dir, env=child_env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    _STARTED.append(process)
    return process


def _wait(process: subprocess.Popen) -> int:
    return process.wait(timeout=600)


def _tail(run_dir: Path) -> str:
    return (run_dir / "log.txt").read_text(errors="replace")[-3000:]


def _write_config(tmp_path: Path, every_n_train_steps: int) -> None:
    (tmp_path / "config.yaml").write_text(CONFIG.format(every_n_train_steps=every_n_train_steps))


@pytest.mark.slow
def test_fit_killed_mid_epoch_resumes_from_last_exactly(tmp_path):
    """SIGKILL at step 12 (epoch 2, batch 4 of 8); the last checkpoint is from step 10, mid-epoch.

    `--ckpt_path last` then ends with the same weights, alphas, AdamW moments, scheduler
    and validation metrics as the unbroken run, bit for bit.
    """
    _write_config(tmp_path, every_n_train_steps=5)
    record = "--trainer.callbacks+=fault_injection.SaveFinalState"
    unbroken = _start_fit(tmp_path / "unbroken", record)
    killed = _start_fit(tmp_path / "killed", record, "--trainer.callbacks+=fault_injection.KillAtStep", "--trainer.callbacks.step=12")
    assert _wait(killed) == -signal.SIGKILL, _tail(tmp_path / "killed")
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 10 and checkpoint["epoch"] == 1  # mid-epoch: 2 of 8 batches done
    assert not (tmp_path / "killed" / "final.pt").exists()

    resumed = _start_fit(tmp_path / "killed", record, "--ckpt_path", "last")
    assert _wait(resumed) == 0, _tail(tmp_path / "killed")
    assert _wait(unbroken) == 0, _tail(tmp_path / "unbroken")

    expected = torch.load(tmp_path / "unbroken" / "final.pt", weights_only=True)
    got = torch.load(tmp_path / "killed" / "final.pt", weights_only=True)
    assert expected["global_step"] == got["global_step"] == 2 * STEPS_PER_EPOCH
    assert expected["batches_run_in_this_process"] == 16 and got["batches_run_in_this_process"] == 6  # steps 11-16

    assert set(got["alpha"]) == set(expected["alpha"]) == {"model.encoder.model.maxpool", "model.encoder.model.layer2.0.downsample.0"}
    for name, alpha in expected["alpha"].items():
        assert torch.equal(got["alpha"][name], alpha), (name, got["alpha"][name].item(), alpha.item())
        assert alpha.item() != 1.0  # alpha did train away from its initial value
    assert got["state_dict"].keys() == expected["state_dict"].keys()
    different = [key for key, value in expected["state_dict"].items() if not torch.equal(got["state_dict"][key], value)]
    assert not different, f"{len(different)} tensors differ after the resume, e.g. {different[:5]}"
    for index, state in expected["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(got["optimizer"]["state"][index][key], value), (index, key)
    assert got["scheduler"] == expected["scheduler"]
    assert {k for k in expected["metrics"] if k.startswith("val/")} >= {"val/mIoU", "val/loss", "val/trimap_mIoU"}
    assert got["metrics"].keys() == expected["metrics"].keys()
    for key, value in expected["metrics"].items():
        assert torch.equal(got["metrics"][key], value), (key, got["metrics"][key], value)


@pytest.mark.slow
def test_kill_while_writing_a_checkpoint_leaves_the_previous_last_checkpoint_intact(tmp_path):
    """SIGKILL halfway through writing the second `last.ckpt` (a real kill, bytes half written).

    `$TMPDIR` is made to behave like a separate mount (renames out of it fail with EXDEV),
    the layout of a cluster node with a local /tmp and checkpoints on shared storage.
    The `last.ckpt` of the first save must still be there, byte for byte, and load.
    """
    _write_config(tmp_path, every_n_train_steps=1)
    node_tmp = tmp_path / "node_local_tmp"
    node_tmp.mkdir()
    run_dir = tmp_path / "run"
    checkpoint_dir = run_dir / "checkpoints"
    process = _start_fit(
        run_dir,
        "--trainer.max_steps=3", "--trainer.limit_val_batches=0",
        "--trainer.callbacks+=fault_injection.TornCheckpointWrite",
        f"--trainer.callbacks.checkpoint_dir={checkpoint_dir}",
        f"--trainer.callbacks.tmpdir_on_other_filesystem={node_tmp}",
        env={"TMPDIR": str(node_tmp)},
    )  # fmt: skip
    assert _wait(process) == -signal.SIGKILL, _tail(run_dir)
    assert (run_dir / "kill_point.txt").read_text().startswith("killed while writing"), "the kill did not hit a write"

    last = checkpoint_dir / "last.ckpt"
    assert hashlib.sha256(last.read_bytes()).hexdigest() == (run_dir / "last_before_kill.sha256").read_text()
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 1
    assert sorted(p.name for p in checkpoint_dir.glob("*.ckpt")) == ["last.ckpt"]  # no torn file named like a checkpoint
    restored = PPoolSegmentationModule.load_from_checkpoint(last, weights_only=True)
    pool = restored.model.encoder.model.maxpool
    assert isinstance(pool, PPool2d)
    assert torch.equal(pool.alpha_raw, checkpoint["state_dict"]["model.encoder.model.maxpool.alpha_raw"])
