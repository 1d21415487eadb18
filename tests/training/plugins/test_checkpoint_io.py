"""AtomicCheckpointIO in process, and the CLI's checkpoint defaults (it and RandomStateCheckpoint); the kill tests are in test_resume.py."""

import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_ppool import AtomicCheckpointIO, PPoolSegmentationModule, RandomStateCheckpoint
from lit_ppool.cli import PPoolCLI
from lit_ppool.training.data.base import SegmentationDataModule


def test_atomic_save_round_trip_leaves_only_the_target_with_the_usual_permissions(tmp_path):
    io = AtomicCheckpointIO()
    target = tmp_path / "new" / "folder" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.arange(5.0)}, "global_step": 3}, target)
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "global_step": 4}, target)  # replaces
    loaded = io.load_checkpoint(target, weights_only=True)
    assert loaded["global_step"] == 4 and torch.equal(loaded["state_dict"]["w"], torch.ones(2))
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]
    (tmp_path / "plain").write_bytes(b"")
    assert target.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777  # umask, not 0600


def test_a_failed_save_keeps_the_previous_file_and_removes_its_temporary(tmp_path):
    io = AtomicCheckpointIO()
    target = tmp_path / "last.ckpt"
    io.save_checkpoint({"global_step": 1}, target)
    before = target.read_bytes()
    with pytest.raises(Exception, match="pickle|lambda"):
        io.save_checkpoint({"global_step": 2, "bad": lambda: None}, target)  # cannot be serialised
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_remote_paths_use_lightnings_writer():
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 7}, "memory://checkpoints/last.ckpt")
    assert io.load_checkpoint("memory://checkpoints/last.ckpt", weights_only=True)["global_step"] == 7


CLI_ARGS = ["--model.encoder_name=resnet18", "--model.encoder_weights=null", "--trainer.logger=false"]


def _trainer(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = PPoolCLI(PPoolSegmentationModule, SegmentationDataModule, subclass_mode_data=True, run=False, args=args)
    return cli.trainer


def test_cli_writes_atomically_and_keeps_the_random_state_by_default(tmp_path, monkeypatch):
    trainer = _trainer(CLI_ARGS, tmp_path, monkeypatch)
    assert type(trainer.strategy.checkpoint_io) is AtomicCheckpointIO
    assert sum(isinstance(c, RandomStateCheckpoint) for c in trainer.callbacks) == 1


def test_cli_keeps_a_checkpoint_io_given_in_trainer_plugins(tmp_path, monkeypatch):
    args = [*CLI_ARGS, "--trainer.plugins=lightning.pytorch.plugins.io.TorchCheckpointIO"]
    assert type(_trainer(args, tmp_path, monkeypatch).strategy.checkpoint_io) is TorchCheckpointIO
