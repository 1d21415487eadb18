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

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_ppool.training.data.base import SegmentationDataModule
from lit_ppool.training.module import ConfigError, PPoolSegmentationModule
from lit_ppool.training.writer import PaletteMaskWriter

__all__ = ["PPoolCLI", "main", "run_cli"]


class PPoolCLI(LightningCLI):
    """LightningCLI with lit_ppool's defaults.

    * ``--data`` takes any :class:`~lit_ppool.training.data.SegmentationDataModule`
      (``class_path``), the synthetic detail data by default; ``model.num_classes`` and
      ``model.ignore_index`` are taken from the datamodule.
    * The config is saved next to the logs and overwritten on a second run.
    * An invalid model configuration (unknown arch, encoder or pooling name) ends the
      command with a one-line error listing the valid choices, not a traceback.
    * ``predict`` writes palette PNG masks named after the images, by default to
      ``<default_root_dir>/predictions`` (add a :class:`~lit_ppool.PaletteMaskWriter` to
      ``trainer.callbacks`` to choose the folder).
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"data": {"class_path": "lit_ppool.training.data.SyntheticDetailDataModule"}})
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.ignore_index", "model.ignore_index", apply_on="instantiate")

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ConfigError as err:
            self.parser.error(str(err))

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
        save_config_kwargs={"overwrite": True},
        args=args,
    )


def main(args: Any = None) -> None:
    """Entry point of the ``lit-ppool`` console script (returns nothing, so the exit status is 0)."""
    run_cli(args)


if __name__ == "__main__":
    main()
