"""Every shipped config parses (the dataset configs with their data groups), and every ablation overlay trains a step."""


import pytest
import yaml

from lit_ppool.cli import main, run_cli
from lit_ppool.layers.registry import available_poolings

from helpers.tiny import CONFIGS

FROM_SCRATCH_CONFIGS = {"quickstart.yaml", "benchmark.yaml", "crackforest.yaml"}  # the CPU benchmarks: no pretrained weights
DATASET_CONFIGS = sorted(p for p in CONFIGS.glob("*.yaml") if p.name not in FROM_SCRATCH_CONFIGS)


def test_one_ablation_file_per_registered_pooling():
    assert sorted(p.stem for p in (CONFIGS / "ablations").glob("*.yaml")) == sorted(available_poolings())


@pytest.mark.parametrize("config", DATASET_CONFIGS, ids=lambda p: p.stem)
def test_dataset_configs_parse_with_pretrained_weights(config, capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", str(config), "--print_config"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "encoder_weights: imagenet" in out and "pooling: p" in out
    resolved = yaml.safe_load(out)
    trainer, model = resolved["trainer"], resolved["model"]
    # the loggers and callbacks, in the dataset config's own folder and under its W&B name
    csv, wandb = trainer["logger"]
    assert csv["class_path"].endswith("CSVLogger") and wandb["class_path"].endswith("WandbLogger")
    assert csv["init_args"]["save_dir"] == trainer["default_root_dir"] == f"runs/{wandb['init_args']['name']}"
    assert [c["class_path"].rsplit(".", 1)[-1] for c in trainer["callbacks"]] == ["ModelCheckpoint", "LearningRateMonitor", "AlphaMonitor"]
    # SGD and the poly schedule, as long as the training
    assert model["optimizer"]["class_path"] == "torch.optim.SGD" and model["optimizer"]["init_args"]["momentum"] == 0.9
    assert model["scheduler"]["init_args"]["power"] == 0.9
    if trainer["max_steps"] > 0:
        assert model["scheduler"]["init_args"]["total_iters"] == trainer["max_steps"]


@pytest.mark.parametrize("pooling", sorted(available_poolings()))
def test_ablation_overlay_trains_one_step(pooling, tmp_path, monkeypatch):
    overlay = CONFIGS / "ablations" / f"{pooling}.yaml"
    assert yaml.safe_load(overlay.read_text()) == {"model": {"pooling": pooling, "pooling_kwargs": None}}
    monkeypatch.chdir(tmp_path)
    cli = run_cli([
        "fit", "--config", str(CONFIGS / "quickstart.yaml"), "--config", str(overlay),
        "--trainer.fast_dev_run=1", "--trainer.enable_progress_bar=false",
        "--model.model_kwargs={'decoder_channels': [32, 16, 16, 8, 8]}",
        "--data.init_args.image_size=32", "--data.init_args.batch_size=2", "--data.init_args.eval_batch_size=2",
    ])  # fmt: skip
    assert cli.model.hparams.pooling == pooling
    assert cli.model.swapped_layers == ["encoder.maxpool"]
    assert cli.trainer.callback_metrics["train/loss"].isfinite()
