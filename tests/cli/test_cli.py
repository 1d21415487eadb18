"""The `lit-ppool` command: quickstart config end to end (tiny sizes), predict, print_config, errors."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lit_ppool import PPool2d, PPoolSegmentationModule
from lit_ppool.cli import main, run_cli
from lit_ppool.layers.registry import POOLINGS

from helpers.tiny import QUICKSTART, TINY_FIT


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")


def _digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_quickstart_fit_test_predict_end_to_end(tmp_path):
    cli = run_cli(["fit", *TINY_FIT])
    assert cli.model.hparams.num_classes == 5  # linked from the datamodule
    assert "val/mIoU" in cli.trainer.callback_metrics
    run0 = tmp_path / "lightning_logs" / "quickstart" / "version_0"
    last0, best0 = run0 / "checkpoints" / "last.ckpt", run0 / "checkpoints" / "best.ckpt"
    assert last0.is_file() and best0.is_file()
    digests = {path: _digest(path) for path in (last0, best0)}
    trained_alpha = cli.model.model.encoder.maxpool.alpha_raw.detach().clone()

    # a second fit of the same config is a new run: its own folder, the first run's files untouched
    main(["fit", *TINY_FIT])
    run1 = tmp_path / "lightning_logs" / "quickstart" / "version_1"
    last1 = run1 / "checkpoints" / "last.ckpt"
    assert last1.is_file() and (run1 / "config.yaml").is_file()
    assert {path: _digest(path) for path in digests} == digests

    restored = PPoolSegmentationModule.load_from_checkpoint(last0, weights_only=True)
    assert isinstance(restored.model.encoder.maxpool, PPool2d)
    assert torch.equal(restored.model.encoder.maxpool.alpha_raw, torch.load(last0, weights_only=True)["state_dict"]["model.encoder.maxpool.alpha_raw"])
    assert not torch.equal(restored.model.encoder.maxpool.alpha_raw, torch.ones(()))
    assert trained_alpha.shape == restored.model.encoder.maxpool.alpha_raw.shape

    # `last` is the newest run's last.ckpt; evaluation adds no log version and no W&B run
    wandb_runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    cli = run_cli(["test", *TINY_FIT, "--ckpt_path=last"])
    assert Path(cli.config_init.test.ckpt_path).resolve() == last1
    mIoU = cli.trainer.callback_metrics["test/mIoU"].item()
    assert 0.0 <= mIoU <= 1.0
    assert {"test/pixel_acc", "test/trimap_mIoU", "test/IoU/thin_line"} <= set(cli.trainer.callback_metrics)
    written = json.loads((run1 / "test-last.json").read_text())
    assert Path(written["checkpoint"]).resolve() == last1 and written["metrics"]["test/mIoU"] == pytest.approx(mIoU)

    main(["predict", *TINY_FIT, f"--ckpt_path={last0}"])
    masks = sorted((run0 / "predictions" / "last").glob("*.png"))
    assert [m.name for m in masks] == [f"synthetic_test_{i:05d}.png" for i in range(4)]
    with Image.open(masks[0]) as image:
        assert image.mode == "P" and image.size == (32, 32)
        assert image.getpalette()[3:6] == [128, 0, 0]  # VOC colour of class 1
        assert np.array(image).max() < 5
    assert sorted(p.name for p in (tmp_path / "lightning_logs" / "quickstart").iterdir()) == ["version_0", "version_1"]
    assert sorted((tmp_path / "wandb").glob("offline-run-*")) == wandb_runs
    assert not (tmp_path / "config.yaml").exists() and not (tmp_path / "predictions").exists()


def test_overrides_reach_the_model():
    cli = run_cli(["fit", *TINY_FIT, "--model.pooling=avg", "--trainer.max_steps=1", "--trainer.limit_val_batches=0"])
    assert isinstance(cli.model.model.encoder.maxpool, POOLINGS["avg"])
    assert cli.model.hparams.pooling == "avg"


def test_print_config_shows_the_setup(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", QUICKSTART, "--print_config"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "pooling: p" in out and "SyntheticDetailDataModule" in out and "encoder_name: resnet18" in out


@pytest.mark.parametrize(
    ("flag", "listed"),
    [("--model.encoder_name=resnet7", "Did you mean 'resnet50'"), ("--model.pooling=maxx", "softpool"), ("--model.arch=UNetz", "DeepLabV3Plus")],
)
def test_unknown_names_fail_before_training_with_the_choices_and_no_traceback(flag, listed, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["fit", *TINY_FIT, flag])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Expected argument" in err and listed in err and "Traceback" not in err
    assert not (tmp_path / "lightning_logs").exists() and not (tmp_path / "wandb").exists()


def test_console_script_exits_zero(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", "import sys; from lit_ppool.cli import main; sys.exit(main())", "fit", "--config", QUICKSTART, "--print_config"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "PPoolCLI object" not in result.stderr
