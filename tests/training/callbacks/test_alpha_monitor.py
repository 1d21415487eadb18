"""AlphaMonitor: keys and values in CSV, offline W&B and TensorBoard; intervals; plot; adaptive layers' maps;
errors; the CLI; DDP."""

import csv
import math
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import wandb
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lit_ppool import AdaptivePPool2d, AlphaMonitor, GlobalPPool2d, PPool2d
from lit_ppool.training.callbacks.alpha_monitor import alpha_layers
from lit_ppool.training.loggers import (
    LOGGER_ADAPTERS,
    LoggerAdapter,
    WandbLogger,
    log_figure,
    log_histogram,
    log_line_series,
    logger_adapter,
    resolve_wandb_mode,
    run_dir,
)

from helpers.tiny import CONFIGS
from helpers.wandb_records import config as wandb_config
from helpers.wandb_records import history as wandb_history
from helpers.wandb_records import wait_until_closed

LAYERS = ("features_2", "features_5", "head_0")  # scalar, per-channel, global (scalar)


class TinyModule(L.LightningModule):
    """Two P-pooling layers and a global one, on 8x8 images; Adam moves alpha visibly every step."""

    def __init__(self, with_ppool: bool = True):
        super().__init__()
        pool = PPool2d if with_ppool else lambda k, **_: nn.MaxPool2d(k)
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), pool(2, alpha_init=1.0),
            nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), pool(2, alpha_init=2.0, num_channels=4),
        )  # fmt: skip
        self.head = nn.Sequential(GlobalPPool2d(alpha_init=0.5) if with_ppool else nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return F.cross_entropy(self.head(self.features(images)), labels)

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.1)

    def train_dataloader(self):
        generator = torch.Generator().manual_seed(0)
        data = TensorDataset(torch.rand(64, 3, 8, 8, generator=generator), torch.randint(0, 2, (64,), generator=generator))
        return DataLoader(data, batch_size=4)


class RecordAlpha(Callback):
    """The layers' effective alpha at every global step, read independently of AlphaMonitor."""

    def __init__(self):
        self.at_step = {}

    def _record(self, trainer, pl_module):
        layers = {"features_2": pl_module.features[2], "features_5": pl_module.features[5], "head_0": pl_module.head[0]}
        self.at_step[trainer.global_step] = {name: layer.alpha.detach().clone() for name, layer in layers.items()}

    def on_train_start(self, trainer, pl_module):
        self._record(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._record(trainer, pl_module)


def fit(tmp_path, monitor, logger, max_steps=6, **trainer_kwargs):
    record = RecordAlpha()
    defaults = dict(
        accelerator="cpu", devices=1, max_steps=max_steps, max_epochs=1, logger=logger, callbacks=[monitor, record],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer = L.Trainer(**{**defaults, **trainer_kwargs})
    trainer.fit(TinyModule())
    return trainer, record


def csv_rows(logger):
    with open(Path(logger.log_dir) / "metrics.csv", newline="") as file:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(file)]


def finished_run_file(folder):
    """Finish the W&B run and return its closed ``.wandb`` file, the only one under ``folder``."""
    wandb.finish()
    (run_file,) = Path(folder).glob("wandb/offline-run-*/run-*.wandb")
    return wait_until_closed(run_file)


def alpha_rows(rows, key="alpha/features_2"):
    return [row for row in rows if key in row]


def assert_logged_values_match(rows, record):
    """Every logged alpha equals the layer's alpha at that step (mean/min/max of a per-channel one)."""
    for row in rows:
        expected = record.at_step[int(row["step"])]
        assert row["alpha/features_2"] == pytest.approx(expected["features_2"].item(), rel=1e-6)
        assert row["alpha/head_0"] == pytest.approx(expected["head_0"].item(), rel=1e-6)
        channels = expected["features_5"]
        assert row["alpha/features_5"] == pytest.approx(channels.mean().item(), rel=1e-6)
        assert row["alpha/features_5/min"] == pytest.approx(channels.min().item(), rel=1e-6)
        assert row["alpha/features_5/max"] == pytest.approx(channels.max().item(), rel=1e-6)


def test_alpha_layers_names_drop_model_prefix_and_dots():
    assert list(alpha_layers(TinyModule())) == list(LAYERS)
    wrapped = nn.Module()
    wrapped.model = nn.Sequential(nn.Sequential(nn.Identity(), PPool2d(2)))
    assert list(alpha_layers(wrapped)) == ["0_1"]  # "model.0.1": common model. prefix dropped
    assert alpha_layers(nn.Sequential(nn.MaxPool2d(2))) == {}


def test_csv_logs_every_n_steps_with_the_layers_alpha_and_plots_one_line_per_layer(tmp_path):
    monitor = AlphaMonitor(every_n_steps=2)
    logger = CSVLogger(tmp_path)
    _, record = fit(tmp_path, monitor, logger)

    rows = alpha_rows(csv_rows(logger))
    assert [int(row["step"]) for row in rows] == [0, 2, 4, 6]  # initial value, then one per interval
    for key in ("alpha/features_2", "alpha/features_5", "alpha/features_5/min", "alpha/features_5/max", "alpha/head_0"):
        assert all(key in row for row in rows), key
    assert not any("hist" in key for row in rows for key in row)  # no histograms in a CSV
    assert_logged_values_match(rows, record)
    assert rows[-1]["alpha/features_2"] != rows[0]["alpha/features_2"]  # alpha moved, and the log shows it
    assert rows[0]["alpha/features_5/min"] < rows[-1]["alpha/features_5/max"]

    assert monitor.steps == [0, 2, 4, 6] and list(monitor.history) == list(LAYERS)
    assert monitor.history["features_2"] == [row["alpha/features_2"] for row in rows]
    assert monitor.plot_path == Path(logger.log_dir) / "alpha.png"
    with Image.open(monitor.plot_path) as image:
        assert image.format == "PNG" and image.size[0] > 300
    (axes,) = monitor.plot().axes
    assert [line.get_label() for line in axes.lines] == list(LAYERS)  # one line per layer
    assert list(axes.lines[0].get_xdata()) == [0, 2, 4, 6]
    assert list(axes.lines[1].get_ydata()) == monitor.history["features_5"]


def test_default_interval_is_the_trainers_log_every_n_steps(tmp_path):
    logger = CSVLogger(tmp_path)
    fit(tmp_path, AlphaMonitor(), logger, log_every_n_steps=3)
    assert [int(row["step"]) for row in alpha_rows(csv_rows(logger))] == [0, 3, 6]


def test_epoch_interval_logs_once_per_epoch(tmp_path):
    logger = CSVLogger(tmp_path)
    _, record = fit(tmp_path, AlphaMonitor(logging_interval="epoch"), logger, max_steps=-1, max_epochs=3, limit_train_batches=2)
    rows = alpha_rows(csv_rows(logger))
    assert [int(row["step"]) for row in rows] == [0, 2, 4, 6]
    assert_logged_values_match(rows, record)


def test_resumed_fit_continues_the_history_from_the_checkpoint(tmp_path):
    first = AlphaMonitor(every_n_steps=2)
    trainer, _ = fit(tmp_path, first, CSVLogger(tmp_path), max_steps=4)
    trainer.save_checkpoint(tmp_path / "step4.ckpt", weights_only=False)
    resumed = AlphaMonitor(every_n_steps=2)
    trainer = L.Trainer(
        max_steps=8, max_epochs=3, logger=CSVLogger(tmp_path), callbacks=[resumed], enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(TinyModule(), ckpt_path=tmp_path / "step4.ckpt", weights_only=True)
    assert resumed.steps == [0, 2, 4, 6, 8]  # the checkpoint's history, then the resumed steps, no duplicate
    assert resumed.history["features_2"][:3] == first.history["features_2"]
    (axes,) = resumed.plot().axes
    assert list(axes.lines[0].get_xdata()) == [0, 2, 4, 6, 8]


def test_offline_wandb_run_holds_alpha_history_histograms_and_plot(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline is the default, not the environment's doing
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    logger = WandbLogger(name="tiny")
    assert logger.mode == "offline" and logger.save_dir == str(tmp_path / "wandb_dir")
    logger.log_hyperparams({"model": {"pooling": "p"}})
    monitor = AlphaMonitor(every_n_steps=2)
    _, record = fit(tmp_path, monitor, logger, max_steps=4)
    run_dir = Path(logger.experiment.dir).parent
    run_file = finished_run_file(tmp_path / "wandb_dir")
    assert run_file.parent == run_dir
    rows = wandb_history(run_file)
    alpha = [row for row in rows if "alpha/features_2" in row]
    assert [row["trainer/global_step"] for row in alpha] == [0, 2, 4]
    assert_logged_values_match([{**row, "step": row["trainer/global_step"]} for row in alpha], record)
    histograms = [row for row in rows if row.get("alpha/features_5/hist/_type") == "histogram"]
    assert [row["trainer/global_step"] for row in histograms] == [0, 2, 4]
    assert sum(histograms[-1]["alpha/features_5/hist/values"]) == 4  # one count per channel
    assert any(row.get("alpha/plot/_type") == "images/separated" for row in rows)
    assert any("alpha/all_layers_table/_type" in row for row in rows)  # one chart with every layer
    assert list(run_dir.glob("files/media/images/alpha/plot_*.png"))
    assert wandb_config(run_file)["model"] == {"pooling": "p"}


def test_tensorboard_gets_scalars_histograms_and_the_plot(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path)
    _, record = fit(tmp_path, AlphaMonitor(every_n_steps=3), logger)
    events = EventAccumulator(logger.log_dir, size_guidance={"images": 0, "histograms": 0}).Reload()
    tags = events.Tags()
    scalars = events.Scalars("alpha/features_2")
    assert [event.step for event in scalars] == [0, 3, 6]
    assert scalars[-1].value == pytest.approx(record.at_step[6]["features_2"].item(), rel=1e-6)
    assert {"alpha/features_5", "alpha/features_5/min", "alpha/features_5/max", "alpha/head_0"} <= set(tags["scalars"])
    assert [event.step for event in events.Histograms("alpha/features_5/hist")] == [0, 3, 6]
    assert events.Histograms("alpha/features_5/hist")[-1].histogram_value.num == 4
    assert tags["images"] == ["alpha/plot"]
    assert (Path(logger.log_dir) / "alpha.png").is_file()


def test_with_two_loggers_both_get_the_same_keys(tmp_path):
    csv_logger, wandb_logger = CSVLogger(tmp_path), WandbLogger(save_dir=str(tmp_path))
    fit(tmp_path, AlphaMonitor(every_n_steps=3), [csv_logger, wandb_logger])
    run_file = finished_run_file(tmp_path)
    csv_keys = {key for row in csv_rows(csv_logger) for key in row if key.startswith("alpha/")}
    wandb_keys = {key for row in wandb_history(run_file) for key in row if key.startswith("alpha/") and key.count("/") <= 2}
    assert csv_keys == {"alpha/features_2", "alpha/features_5", "alpha/features_5/min", "alpha/features_5/max", "alpha/head_0"}
    assert csv_keys <= wandb_keys
    assert (Path(csv_logger.log_dir) / "alpha.png").is_file()  # the first logger's directory


def test_model_without_ppool_is_an_error_unless_not_strict(tmp_path):
    with pytest.raises(MisconfigurationException, match=r"no P-pooling layer.*strict=False"):
        L.Trainer(max_steps=1, logger=CSVLogger(tmp_path), callbacks=[AlphaMonitor()], enable_progress_bar=False).fit(TinyModule(with_ppool=False))
    logger = CSVLogger(tmp_path, name="lenient")
    monitor = AlphaMonitor(strict=False)
    with pytest.warns(UserWarning, match="no P-pooling layer"):
        L.Trainer(max_steps=2, logger=logger, callbacks=[monitor], enable_progress_bar=False).fit(TinyModule(with_ppool=False))
    assert monitor.steps == [] and monitor.plot_path is None
    assert not (Path(logger.log_dir) / "alpha.png").exists()


@pytest.mark.parametrize(
    ("pooling", "fix"),
    [("P", "pooling='P' but no pooling layer"), ("p_adaptive", "pooling='p_adaptive' but no pooling layer"),
     ("max", "swap the model's pooling to 'p'")],
)  # fmt: skip
def test_the_fix_depends_on_whether_the_pooling_has_alpha(tmp_path, pooling, fix):
    module = TinyModule(with_ppool=False)
    module.save_hyperparameters({"pooling": pooling})
    with pytest.raises(MisconfigurationException, match=fix):
        L.Trainer(max_steps=1, logger=CSVLogger(tmp_path), callbacks=[AlphaMonitor()], enable_progress_bar=False).fit(module)


def test_no_logger_is_an_error(tmp_path):
    trainer = L.Trainer(max_steps=1, logger=False, callbacks=[AlphaMonitor()], default_root_dir=tmp_path, enable_progress_bar=False)
    with pytest.raises(MisconfigurationException, match="no logger"):
        trainer.fit(TinyModule())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"logging_interval": "batch"}, "logging_interval"),
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"every_n_steps": 2.5}, "every_n_steps"),
        ({"every_n_steps": True}, "every_n_steps"),
        ({"logging_interval": "epoch", "every_n_steps": 2}, "every_n_steps"),
        ({"plot_filename": "plots/alpha.png"}, "plot_filename"),
        ({"plot_filename": "alpha.jpg"}, "plot_filename"),
        ({"num_images": 0}, "num_images"),
        ({"map_dirname": "maps/alpha"}, "map_dirname"),
        ({"map_dirname": ".."}, "map_dirname"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=rf"Expected argument `{match}`"):
        AlphaMonitor(**kwargs)


def test_wandb_mode_follows_argument_then_environment_then_offline(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert resolve_wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert resolve_wandb_mode() == "online" and resolve_wandb_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="WANDB_MODE"):
        resolve_wandb_mode()
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(ValueError, match="log_model"):
        WandbLogger(log_model=True)
    started = []  # the keyword arguments of each wandb.init
    monkeypatch.setattr(wandb, "init", lambda **kwargs: started.append(kwargs) or object())
    monkeypatch.setattr(wandb, "run", None)  # no run in progress, which the logger would reuse
    logger = WandbLogger(mode="online", save_dir=str(tmp_path))
    assert started == []  # nothing is started before the first log
    assert logger.experiment is not None  # the first use starts the run
    assert [kwargs["mode"] for kwargs in started] == ["online"]


def test_quickstart_cli_logs_alpha_config_and_plot_without_network(tmp_path, monkeypatch):
    """The quickstart config as shipped (tiny sizes): CSV + offline W&B, the full config in the W&B run."""
    from lit_ppool.cli import run_cli

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    quickstart = CONFIGS / "quickstart.yaml"
    cli = run_cli([
        "fit", "--config", str(quickstart), "--trainer.max_epochs=1", "--trainer.limit_train_batches=4",
        "--trainer.limit_val_batches=1", "--trainer.log_every_n_steps=2", "--trainer.enable_progress_bar=false",
        "--model.model_kwargs={'decoder_channels': [32, 16, 16, 8, 8]}", "--data.init_args.image_size=32",
        "--data.init_args.train_size=16", "--data.init_args.val_size=4", "--data.init_args.batch_size=4",
    ])  # fmt: skip
    run_file = finished_run_file(tmp_path)
    log_dir = tmp_path / "lightning_logs" / "quickstart" / "version_0"
    assert {"config.yaml", "metrics.csv", "alpha.png"} <= {path.name for path in log_dir.iterdir()}
    rows = alpha_rows(csv_rows(cli.trainer.loggers[0]), "alpha/encoder_maxpool")
    assert [int(row["step"]) for row in rows] == [0, 2, 4]
    assert rows[-1]["alpha/encoder_maxpool"] == pytest.approx(cli.model.model.encoder.maxpool.alpha.item(), rel=1e-6)

    history = [row for row in wandb_history(run_file) if "alpha/encoder_maxpool" in row]
    assert [row["alpha/encoder_maxpool"] for row in history] == pytest.approx([row["alpha/encoder_maxpool"] for row in rows])
    run_config = wandb_config(run_file)
    assert run_config["model"]["pooling"] == "p" and run_config["model"]["encoder_name"] == "resnet18"
    assert run_config["trainer"]["log_every_n_steps"] == 2 and run_config["data"]["init_args"]["image_size"] == 32
    assert run_config["seed_everything"] == 0


@pytest.mark.slow
def test_ddp_writes_exactly_one_log_stream_and_one_wandb_run(tmp_path):
    csv_logger, wandb_logger = CSVLogger(tmp_path), WandbLogger(save_dir=str(tmp_path))
    trainer = L.Trainer(
        accelerator="cpu", strategy="ddp_spawn", devices=2, max_steps=4, max_epochs=1, logger=[csv_logger, wandb_logger],
        callbacks=[AlphaMonitor(every_n_steps=2)], enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(TinyModule())
    run_file = finished_run_file(tmp_path)  # exactly one W&B run

    assert [path.name for path in (tmp_path / "lightning_logs").iterdir()] == ["version_0"]
    rows = alpha_rows(csv_rows(CSVLogger(tmp_path, version=0)))  # the workers' logger, not this process's copy
    assert [int(row["step"]) for row in rows] == [0, 2, 4]  # one row per interval, not one per process
    assert all(math.isfinite(row["alpha/features_5/max"]) for row in rows)
    steps = [row["trainer/global_step"] for row in wandb_history(run_file) if "alpha/features_2" in row]
    assert steps == [0, 2, 4]
    assert list(run_file.parent.glob("files/media/images/alpha/plot_*.png"))  # the image in the run, not in ./wandb
    assert list(tmp_path.rglob("alpha.png")) == [tmp_path / "lightning_logs" / "version_0" / "alpha.png"]


def test_logger_adapters_are_one_table_with_a_no_op_default(tmp_path):
    class MyCSVLogger(CSVLogger):
        pass

    class Unknown(L.pytorch.loggers.Logger):
        name, version, save_dir = "unknown", 0, None

        def log_metrics(self, metrics, step=None):
            pass

        def log_hyperparams(self, params):
            pass

    assert logger_adapter(MyCSVLogger(tmp_path)) is LOGGER_ADAPTERS[CSVLogger]  # subclasses share their base's
    unknown = Unknown()
    assert type(logger_adapter(unknown)) is LoggerAdapter
    assert not log_histogram(unknown, "h", torch.ones(3), step=0)
    assert not log_figure(unknown, "f", None, tmp_path / "f.png", step=0)
    assert not log_line_series(unknown, "l", [0, 1], [[0.0, 1.0]], ["a"], "t", step=0)
    assert run_dir(unknown) is None and run_dir(MyCSVLogger(tmp_path, name="x")) == tmp_path / "x" / "version_0"
    assert log_histogram(TensorBoardLogger(tmp_path), "h", torch.ones(3), step=0)


# --- adaptive P-pooling: the predicted alpha of a fixed validation batch ---------------------------------------


class AdaptiveModule(L.LightningModule):
    """An adaptive P-pooling layer (``features_2``), optionally followed by a P-pooling one (``features_3``), on
    8x8 images, with a validation loader whose first batch is the fixed batch."""

    def __init__(self, with_ppool: bool = False):
        super().__init__()
        layers = [nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), AdaptivePPool2d(2, num_channels=4)]
        self.features = nn.Sequential(*layers, *([PPool2d(2, alpha_init=1.0)] if with_ppool else []))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        with torch.no_grad():  # alpha spread over the windows, not 30 everywhere
            self.features[2].alpha_conv.weight.normal_(0.0, 20.0)

    def forward(self, images):
        return self.head(self.features(images))

    def training_step(self, batch, batch_idx):
        images, labels = batch
        return F.cross_entropy(self(images), labels)

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", F.cross_entropy(self(batch[0]), batch[1]))

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.05)

    @staticmethod
    def data(seed, size):
        generator = torch.Generator().manual_seed(seed)
        return TensorDataset(torch.rand(size, 3, 8, 8, generator=generator), torch.randint(0, 2, (size,), generator=generator))

    def train_dataloader(self):
        return DataLoader(self.data(0, 16), batch_size=4)

    def val_dataloader(self):
        return DataLoader(self.data(1, 8), batch_size=4)


def fit_adaptive(tmp_path, monitor, logger, with_ppool=False, **trainer_kwargs):
    module = AdaptiveModule(with_ppool)
    defaults = dict(
        accelerator="cpu", devices=1, max_epochs=2, limit_train_batches=2, logger=logger, callbacks=[monitor],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    L.Trainer(**{**defaults, **trainer_kwargs}).fit(module)
    return module


def predicted_alpha(module, images):
    """The alpha the adaptive layer predicts for ``images``, computed here without AlphaMonitor."""
    module.eval()
    with torch.no_grad():
        return module.features[2].alpha_map(module.features[1](module.features[0](images)))


MAP_KEYS = ["mean", "p5", "p25", "p50", "p75", "p95"]


def test_adaptive_layer_logs_predicted_alpha_statistics_and_draws_its_map(tmp_path):
    monitor = AlphaMonitor(num_images=3)  # strict: an adaptive layer is a P-pooling layer
    logger = CSVLogger(tmp_path)
    module = fit_adaptive(tmp_path, monitor, logger)

    rows = alpha_rows(csv_rows(logger), "alpha/features_2/mean")
    assert [int(row["step"]) for row in rows] == [2, 4]  # every validation epoch end of fit, not the sanity check
    for row in rows:
        values = [row[f"alpha/features_2/{key}"] for key in MAP_KEYS[1:]]
        assert values == sorted(values) and 1.0 <= values[0] < values[-1] <= 50.0
        assert values[0] <= row["alpha/features_2/mean"] <= values[-1]
    assert not any("alpha/features_2" in row for row in csv_rows(logger) if "alpha/features_2/mean" not in row)
    fixed = AdaptiveModule.data(1, 8).tensors[0][:3]  # the first 3 images of the first validation batch
    expected = predicted_alpha(module, fixed)
    assert rows[-1]["alpha/features_2/mean"] == pytest.approx(expected.mean().item(), rel=1e-5)
    assert rows[-1]["alpha/features_2/p50"] == pytest.approx(expected.median().item(), rel=0.05)
    assert rows[0]["alpha/features_2/mean"] != rows[-1]["alpha/features_2/mean"]  # it trained, and the log shows it

    assert monitor.map_steps == [2, 4] and monitor.history == {} and monitor.steps == []
    assert monitor.map_history["features_2"] == [row["alpha/features_2/mean"] for row in rows]
    path = Path(logger.log_dir) / "alpha_maps" / "features_2.png"
    assert monitor.map_paths == {"features_2": path}
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (820, 500)  # (2.4 x 3 images + 1) x 5 inches at 100 dpi
    assert (Path(logger.log_dir) / "alpha.png").is_file()  # the plot, with the adaptive layer's curve alone
    (axes, *_) = monitor.plot().axes
    assert [line.get_label() for line in axes.lines] == ["features_2 (predicted, mean)"]
    assert list(axes.lines[0].get_xdata()) == [2, 4]


def test_wandb_gets_the_predicted_alpha_its_histogram_and_map_next_to_learned_alpha(tmp_path):
    logger = WandbLogger(save_dir=str(tmp_path))
    monitor = AlphaMonitor(every_n_steps=2, num_images=2)
    fit_adaptive(tmp_path, monitor, logger, with_ppool=True)
    run_dir = Path(logger.experiment.dir)
    rows = wandb_history(finished_run_file(tmp_path))
    learned = [row["trainer/global_step"] for row in rows if "alpha/features_3" in row]
    assert learned == [0, 2, 4]  # the P-pooling layer as before
    maps = [row for row in rows if "alpha/features_2/mean" in row]
    assert [row["trainer/global_step"] for row in maps] == [2, 4]
    assert all(f"alpha/features_2/{key}" in row for row in maps for key in MAP_KEYS)
    assert [row["trainer/global_step"] for row in rows if row.get("alpha/features_2/map/_type") == "images/separated"] == [2, 4]
    assert [row["trainer/global_step"] for row in rows if row.get("alpha/features_2/hist/_type") == "histogram"] == [2, 4]
    assert len(list(run_dir.glob("media/images/alpha/features_2/map_*.png"))) == 2
    assert (run_dir / "alpha_maps" / "features_2.png").is_file()  # the first logger's folder: the W&B run's files
    assert any("alpha/all_layers_table/_type" in row for row in rows)
    (axes, *_) = monitor.plot().axes
    assert [line.get_label() for line in axes.lines] == ["features_3", "features_2 (predicted, mean)"]


def test_adaptive_history_is_checkpointed_and_a_fit_without_validation_says_why_there_is_no_map(tmp_path):
    monitor = AlphaMonitor(map_dirname=None)
    fit_adaptive(tmp_path, monitor, CSVLogger(tmp_path), max_epochs=1)
    assert monitor.map_paths == {} and not (Path(CSVLogger(tmp_path).log_dir) / "alpha_maps").exists()
    restored = AlphaMonitor()
    restored.load_state_dict(monitor.state_dict())
    assert (restored.map_steps, restored.map_history) == ([2], monitor.map_history)
    old = AlphaMonitor()
    old.load_state_dict({"steps": [0], "history": {"a": [1.0]}, "ranges": {}})  # a checkpoint from before
    assert (old.steps, old.map_steps, old.map_history) == ([0], [], {})

    silent = AlphaMonitor()
    with pytest.warns(UserWarning, match="no validation epoch ran"):
        fit_adaptive(tmp_path, silent, CSVLogger(tmp_path, name="no_val"), max_epochs=1, limit_val_batches=0)
    assert silent.map_steps == []


class FixedBatchForwards(Callback):
    """Per rank: the adaptive layer's forwards on 3 images (the fixed batch; the other batches hold 4) and the monitor's map steps."""

    def __init__(self, folder):
        self.folder = folder

    def on_fit_start(self, trainer, pl_module):
        self.calls = 0

        def count(module, args, output):
            self.calls += args[0].shape[0] == 3

        pl_module.features[2].register_forward_hook(count)

    def on_fit_end(self, trainer, pl_module):
        monitor = next(callback for callback in trainer.callbacks if isinstance(callback, AlphaMonitor))
        torch.save({"calls": self.calls, "map_steps": list(monitor.map_steps)}, self.folder / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_under_ddp_every_process_runs_the_fixed_batch_and_rank_zero_logs_it(tmp_path):
    """A strategy that shards the parameters (FSDP, DeepSpeed) deadlocks if only rank zero runs a forward."""
    monitor = AlphaMonitor(num_images=3, plot_filename=None, map_dirname=None)
    fit_adaptive(tmp_path, monitor, CSVLogger(tmp_path), strategy="ddp_spawn", devices=2, num_sanity_val_steps=0,
                 callbacks=[monitor, FixedBatchForwards(tmp_path)])  # fmt: skip
    rank0, rank1 = (torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1))
    assert rank0["calls"] == rank1["calls"] == 2  # one forward per validation epoch, on each process
    assert rank0["map_steps"] == [2, 4] and rank1["map_steps"] == []  # logged once, by rank zero
    metrics = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text().splitlines()
    rows = [row for row in csv.DictReader(metrics) if row.get("alpha/features_2/mean")]
    assert [int(row["step"]) for row in rows] == [2, 4]
