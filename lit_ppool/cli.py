"""The ``lit-ppool`` command: LightningCLI for :class:`~lit_ppool.PPoolSegmentationModule`.

Usage::

    lit-ppool fit --config configs/quickstart.yaml
    lit-ppool test --config configs/quickstart.yaml --ckpt_path checkpoints/quickstart/last.ckpt
    lit-ppool predict --config configs/quickstart.yaml --ckpt_path ...  # palette PNGs
    lit-ppool fit --config configs/quickstart.yaml --print_config
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO

from lit_ppool.training.checkpointing import AtomicCheckpointIO, RandomStateCheckpoint
from lit_ppool.training.data.base import SegmentationDataModule
from lit_ppool.training.loggers import SaveConfigToLoggers
from lit_ppool.training.module import ConfigError, PPoolSegmentationModule
from lit_ppool.training.weights import skip_pretrained_weights
from lit_ppool.training.writer import PaletteMaskWriter

__all__ = ["PPoolCLI", "main", "run_cli"]


class PPoolCLI(LightningCLI):
    """LightningCLI with lit_ppool's defaults.

    * ``--data`` takes any :class:`~lit_ppool.training.data.SegmentationDataModule`
      (``class_path``), the synthetic detail data by default; ``model.num_classes`` and
      ``model.ignore_index`` are taken from the datamodule.
    * The config is saved next to the logs and overwritten on a second run, and logged as the
      hyperparameters of every logger (the W&B run config holds the whole setup).
    * An invalid configuration (unknown arch, encoder, pooling or weights name, a missing
      dataset root, pretrained weights that are not cached and cannot be downloaded) ends the
      command with an error naming the problem and the valid choices, not a traceback.
    * With ``--ckpt_path`` to a checkpoint file the model is built without its pretrained
      encoder weights (the checkpoint holds every weight): nothing is downloaded.
    * ``predict`` writes palette PNG masks named after the images, by default to
      ``<default_root_dir>/predictions`` (add a :class:`~lit_ppool.PaletteMaskWriter` to
      ``trainer.callbacks`` to choose the folder).
    * Checkpoints are written atomically (:class:`~lit_ppool.training.checkpointing.AtomicCheckpointIO`,
      unless ``trainer.plugins`` names another ``CheckpointIO``) and hold the random state
      (:class:`~lit_ppool.training.checkpointing.RandomStateCheckpoint`), so a killed ``fit``
      resumes exactly with ``--ckpt_path last``.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"data": {"class_path": "lit_ppool.training.data.SyntheticDetailDataModule"}})
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.ignore_index", "model.ignore_index", apply_on="instantiate")

    def instantiate_classes(self) -> None:
        # a checkpoint file to load holds every weight: build the model without downloading encoder_weights
        ckpt_path = self.config.get(str(self.subcommand), self.config).get("ckpt_path") if self.subcommand else None
        try:
            with skip_pretrained_weights(isinstance(ckpt_path, (str, Path)) and Path(ckpt_path).is_file()):
                super().instantiate_classes()
        except Exception as err:  # jsonargparse wraps errors of --data subclasses: find the ConfigError inside
            cause: BaseException | None = err
            while cause is not None and not isinstance(cause, ConfigError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            self.parser.error(str(cause))  # also a missing dataset root or unavailable pretrained weights

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        plugins = kwargs.get("plugins", config.get("plugins"))
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        trainer = super().instantiate_trainer(**kwargs)
        if not any(isinstance(callback, RandomStateCheckpoint) for callback in trainer.callbacks):
            trainer.callbacks.append(RandomStateCheckpoint())
        return trainer

    def before_predict(self) -> None:
        if not any(isinstance(callback, PaletteMaskWriter) for callback in self.trainer.callbacks):
            self.trainer.callbacks.append(PaletteMaskWriter(Path(self.trainer.default_root_dir) / "predictions"))


def run_cli(args: Any = None) -> PPoolCLI:
    """Run ``lit-ppool`` programmatically and return the :class:`PPoolCLI` (its ``trainer`` holds the metrics).

    Args:
        args: Command-line arguments, e.g. ``["fit", "--config", "configs/quickstart.yaml"]``;
            ``None`` reads ``sys.argv``.
    """
    return PPoolCLI(
        PPoolSegmentationModule,
        SegmentationDataModule,
        subclass_mode_data=True,
        save_config_callback=SaveConfigToLoggers,  # config.yaml, and the config in every logger (W&B run config)
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def main(args: Any = None) -> None:
    """Entry point of the ``lit-ppool`` console script (returns nothing, so the exit status is 0)."""
    run_cli(args)


if __name__ == "__main__":
    main()
