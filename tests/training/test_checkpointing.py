"""AtomicCheckpointIO and RandomStateCheckpoint in process; the kill tests are in test_resume.py."""

import random

import numpy as np
import pytest
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_ppool import PPoolSegmentationModule
from lit_ppool.cli import PPoolCLI
from lit_ppool.training.checkpointing import AtomicCheckpointIO, RandomStateCheckpoint
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


def test_random_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    callback = RandomStateCheckpoint()
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    torch.save({"callbacks": {callback.state_key: callback.state_dict()}}, tmp_path / "c.ckpt")
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])

    torch.manual_seed(99), np.random.seed(99), random.seed(99)  # what a fresh process does
    restored = RandomStateCheckpoint()
    restored.load_state_dict(torch.load(tmp_path / "c.ckpt", weights_only=True)["callbacks"][restored.state_key])
    assert torch.rand(1).item() != expected[0][0].item()  # not restored before the training loop starts
    restored.on_train_start(None, None)
    assert torch.equal(torch.rand(4), expected[0])
    assert np.array_equal(np.random.rand(4), expected[1])
    assert [random.random() for _ in range(4)] == expected[2]
    state = torch.rand(1)
    restored.on_train_start(None, None)  # restores once only
    assert not torch.equal(torch.rand(1), state)


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
