"""The Trainer subcommands of ``lit-ppool`` (fit, validate, test, predict): LightningCLI for
:class:`~lit_ppool.PPoolSegmentationModule`.

:func:`run_cli` runs them from Python; :mod:`lit_ppool.cli` assembles the whole ``lit-ppool``
command line (these four, ``compare`` and ``export``) and hands these four to :class:`PPoolCLI`.
``lit-ppool compare`` checks its runs' configs with :func:`run_cli` (this module sits below both).

Usage::

    lit-ppool fit --config configs/quickstart.yaml
    lit-ppool test --config configs/quickstart.yaml --ckpt_path last   # the newest run's last.ckpt
    lit-ppool predict --config configs/quickstart.yaml --ckpt_path last  # palette PNGs in the run folder
    lit-ppool fit --config configs/quickstart.yaml --print_config
"""

from __future__ import annotations

import logging
import re
import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lit_ppool import __version__
from lit_ppool.kernels.dispatch import get_backend
from lit_ppool.training.callbacks import PaletteMaskWriter, RandomStateCheckpoint
from lit_ppool.training.data.base import SegmentationDataModule
from lit_ppool.training.loggers import SaveConfigToLoggers, finish_wandb_runs, resolve_wandb_mode
from lit_ppool.training.module import ConfigError, PPoolSegmentationModule
from lit_ppool.training.plugins import AtomicCheckpointIO
from lit_ppool.training.record import evaluation_record, write_record
from lit_ppool.training.runs import (
    checkpoint_path_problem,
    find_last_checkpoint,
    occupied_checkpoint_folder,
    run_dir_of,
    runs_root,
)
from lit_ppool.training.weights import skip_pretrained_weights

__all__ = ["PPoolArgumentParser", "PPoolCLI", "environment_problem", "plain_text", "run_cli"]

# the description of PPoolCLI's own top-level parser (`lit-ppool --config CFG fit ...`); `lit-ppool --help` is lit_ppool.cli's
DESCRIPTION = f"lit-ppool {__version__}: the Trainer subcommands of lit-ppool (LightningCLI). `lit-ppool --help` lists them all."

EVAL_SUBCOMMANDS = ("validate", "test", "predict")

# Third-party deprecation notices that every run would print and that nothing here can act on.
_KNOWN_HARMLESS_WARNINGS = (
    # torchdata's StatefulDataLoader calls the deprecated torch.set_vital
    (r"'set_vital' is deprecated", UserWarning, r"torchdata\.stateful_dataloader"),
    # Lightning's pytree helper (CombinedLoader's) builds torch's deprecated LeafSpec; matched by any module of
    # lightning.pytorch, so that no private module is named
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning, r"lightning\.pytorch\."),
)

# Third-party advertising that every run would print: (message, module that logs it). Lightning logs
# these through `rank_zero_info`, whose records carry the calling module (stacklevel) and come from
# one of the loggers in _RANK_ZERO_LOGGERS.
_KNOWN_ADVERTISING = (
    (r"Tip: .*\blitlogger\b", "logger_connector"),  # on every Trainer without a LitLogger
    (r"Tip: .*\blitmodels\b", "callback_connector"),  # on every Trainer with the default ModelCheckpoint
)
_RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
)


class _DropKnownAdvertising(logging.Filter):
    """Drops the log records of :data:`_KNOWN_ADVERTISING`, matched by message and logging module."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(
            record.module == module and re.search(pattern, message) for pattern, module in _KNOWN_ADVERTISING
        )


_ADVERTISING_FILTER = _DropKnownAdvertising()


def _quiet_known_warnings() -> None:
    """Silence :data:`_KNOWN_HARMLESS_WARNINGS` and :data:`_KNOWN_ADVERTISING` (idempotent)."""
    for message, category, module in _KNOWN_HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    for name in _RANK_ZERO_LOGGERS:
        logging.getLogger(name).addFilter(_ADVERTISING_FILTER)  # adding the same filter again is a no-op


_SPHINX_ROLE = re.compile(r":[a-z]+:`~?([^`<]*?)\s*(?:<[^>]*>)?`")
_DOUBLE_BACKTICKS = re.compile(r"``([^`]*)``")


def plain_text(text: str) -> str:
    """Help text without reStructuredText markup: ``:class:`~a.B``` -> ``B``, double backticks -> plain.

    Example:
        >>> plain_text("A :class:`~lightning.pytorch.Trainer` with ``max_epochs``.")
        'A Trainer with max_epochs.'
    """

    def role(match: re.Match) -> str:
        target = match.group(1)
        return target.rsplit(".", 1)[-1] if match.group(0).split("`")[1].startswith("~") else target

    return _DOUBLE_BACKTICKS.sub(r"\1", _SPHINX_ROLE.sub(role, text))


def environment_problem() -> str | None:
    """What is wrong with the environment variables lit-ppool reads (``WANDB_MODE``, ``LIT_PPOOL_BACKEND``), or ``None``."""
    try:
        resolve_wandb_mode()
        get_backend()
    except ValueError as err:
        return str(err)
    return None


class PPoolArgumentParser(LightningArgumentParser):
    """LightningCLI's parser whose ``--help`` shows plain text instead of docstring markup."""

    def format_help(self) -> str:
        return plain_text(super().format_help())


class PPoolCLI(LightningCLI):
    """LightningCLI with lit_ppool's defaults.

    * ``--data`` takes any :class:`~lit_ppool.training.data.SegmentationDataModule`
      (``class_path``), the synthetic detail data by default; ``model.num_classes`` and
      ``model.ignore_index`` are taken from the datamodule.
    * Runs never write over each other: the shipped configs keep checkpoints in the run's own
      versioned log folder (``<save_dir>/<name>/version_<n>/checkpoints``), and a ``fit`` whose
      checkpoint folder already holds another run's checkpoints (a ``dirpath`` set by hand)
      stops before it starts, unless it resumes from a checkpoint in that folder.
    * ``--ckpt_path last`` is the newest ``last*.ckpt`` of the config's runs (``fit`` resumes
      it, or starts from scratch with a warning when there is none; ``validate``/``test``/
      ``predict`` stop with an error). A ``--ckpt_path`` that does not exist or is not a
      checkpoint stops the command before anything is built.
    * ``--optimizer`` / ``--lr_scheduler`` are the model's ``optimizer`` / ``scheduler``, so the
      alpha parameters keep their own group (no weight decay, learning rate x ``alpha_lr_mult``).
    * ``validate``, ``test`` and ``predict`` use no logger (no new log version, no W&B run)
      unless ``--trainer.logger`` is given on their command line. ``validate`` and ``test``
      write their metrics to ``<run>/<stage>-<checkpoint name>.json`` in the checkpoint's run
      folder; ``predict`` writes palette PNG masks to ``<run>/predictions/<checkpoint name>/``
      (add a :class:`~lit_ppool.PaletteMaskWriter` to ``trainer.callbacks`` to choose the
      folder or the palette; with ``alpha_maps: true`` it also writes the adaptive P-pooling
      layers' alpha maps, into the same folder unless it names another).
    * The config is saved next to the logs and logged as the hyperparameters of every logger
      (the W&B run config holds the whole setup).
    * An invalid configuration (unknown arch, encoder, pooling or weights name, a missing
      dataset root, pretrained weights that are not cached and cannot be downloaded, a bad
      ``WANDB_MODE``) ends the command with a one-line error naming the problem, not a traceback.
    * With ``--ckpt_path`` to a checkpoint file or ``last`` the model is built without its pretrained
      encoder weights (the checkpoint holds every weight): nothing is downloaded. A ``fit`` whose
      ``last`` finds no checkpoint loads them into the model before it trains.
    * Checkpoints are written atomically (:class:`~lit_ppool.training.plugins.checkpoint_io.AtomicCheckpointIO`,
      unless ``trainer.plugins`` names another ``CheckpointIO``) and hold the random state
      (:class:`~lit_ppool.training.callbacks.random_state.RandomStateCheckpoint`, unless the config lists
      it already), so a killed ``fit`` resumes exactly with ``--ckpt_path last``.
    * The W&B runs of the Trainer's loggers are finished when the subcommand ends, failed or not
      (Lightning's ``WandbLogger`` leaves that to wandb's exit hook), so an offline run is closed
      on disk when the command returns.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)
        except BaseException as err:
            self.finish_wandb_runs(err.code if isinstance(err, SystemExit) and isinstance(err.code, int) else 1)
            raise
        if kwargs.get("run", True):  # run=False: the caller runs the Trainer, and its loggers are the caller's
            self.finish_wandb_runs(0)

    def finish_wandb_runs(self, exit_code: int) -> None:
        """Finish the W&B runs of the Trainer's loggers (:func:`~lit_ppool.training.loggers.finish_wandb_runs`)."""
        trainer = getattr(self, "trainer", None)  # not built when the command stopped before it
        if trainer is not None:
            finish_wandb_runs(trainer.loggers, exit_code)

    def config_value(self, key: str, config: Any = None) -> Any:
        """The value of dotted ``key`` (``"trainer.logger"``) in the running subcommand's config, or ``None``.

        ``config`` is ``self.config`` (parsed) by default, or ``self.config_init`` (instantiated).
        """
        config = self.config if config is None else config
        return config.get(f"{self.subcommand}.{key}" if self.subcommand else key)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"data": {"class_path": "lit_ppool.training.data.SyntheticDetailDataModule"}})
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.ignore_index", "model.ignore_index", apply_on="instantiate")

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        # which arguments came from the command line (a logger asked for in validate/test/predict)
        self.command_line = [str(a) for a in (sys.argv[1:] if args is None else args if isinstance(args, (list, tuple)) else [])]
        super().parse_arguments(parser, args)
        problem = environment_problem()
        if problem is not None:
            parser.error(problem)
        subcommand = self.config.get("subcommand")
        if subcommand:
            problem = checkpoint_path_problem(self.config[subcommand].get("ckpt_path"))
            if problem is not None:
                parser.error(
                    f"Expected argument `ckpt_path` to be a checkpoint file or 'last' (the newest last.ckpt of this "
                    f"config's runs), but {problem}."
                )

    def before_instantiate_classes(self) -> None:
        # --optimizer/--lr_scheduler of LightningCLI would replace configure_optimizers and lose the alpha group
        prefix = f"{self.subcommand}." if self.subcommand else ""
        for given, target in (("optimizer", "optimizer"), ("lr_scheduler", "scheduler")):
            if self.config_value(given) is not None:
                self.config[f"{prefix}model.{target}"] = self.config_value(given)
                self.config[f"{prefix}{given}"] = None
                rank_zero_info(
                    f"lit_ppool: --{given} is used as --model.{target}: the alpha parameters keep their own group "
                    "(no weight decay, learning rate x alpha_lr_mult)."
                )

    def instantiate_classes(self) -> None:
        # a checkpoint to load holds every weight: build the model without reading or downloading its
        # encoder_weights ("last" too; fit loads them in _resolve_last_checkpoint when there is no checkpoint)
        ckpt_path = self.config_value("ckpt_path") if self.subcommand else None
        from_checkpoint = ckpt_path == "last" or (
            isinstance(ckpt_path, (str, Path)) and Path(ckpt_path).expanduser().is_file()
        )
        try:
            with skip_pretrained_weights(from_checkpoint):
                super().instantiate_classes()
        except Exception as err:  # jsonargparse wraps errors of --data subclasses: find the ConfigError inside
            cause: BaseException | None = err
            while cause is not None and not isinstance(cause, ConfigError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            self.parser.error(str(cause))  # also a missing dataset root or unavailable pretrained weights

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        plugins = kwargs.get("plugins", self.config_value("trainer.plugins", self.config_init))
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(plugin, CheckpointIO) for plugin in plugins):
            kwargs["plugins"] = [*plugins, AtomicCheckpointIO()]
        # the config's loggers describe where its runs live (--ckpt_path last); evaluation logs nowhere by default
        logger = self.config_value("trainer.logger", self.config_init)
        self.config_loggers = [] if logger in (None, False, True) else list(logger) if isinstance(logger, (list, tuple)) else [logger]
        asked_for_logger = any(arg.startswith("--trainer.logger") for arg in self.command_line)
        if self.subcommand in EVAL_SUBCOMMANDS and not asked_for_logger:
            kwargs["logger"] = False
            # ModelCheckpoint notes that the fit logged elsewhere; true, and nothing to act on
            warnings.filterwarnings("ignore", message="The dirpath has changed from", module=r"lightning\.pytorch\.callbacks")
        trainer = super().instantiate_trainer(**kwargs)
        if not any(isinstance(callback, RandomStateCheckpoint) for callback in trainer.callbacks):
            trainer.callbacks.append(RandomStateCheckpoint())
        return trainer

    # --- checkpoints of the runs ----------------------------------------------------------------

    def _resolve_last_checkpoint(self) -> Path | None:
        """Replace ``--ckpt_path last`` by the newest last*.ckpt of this config's runs (None if there is none)."""
        ckpt_path = self.config_value("ckpt_path", self.config_init)
        if ckpt_path != "last":
            return Path(ckpt_path).expanduser() if ckpt_path else None
        found = find_last_checkpoint(self.trainer.callbacks, self.config_loggers, self.trainer.default_root_dir)
        where = runs_root(self.config_loggers, self.trainer.default_root_dir)
        if found is None and self.subcommand != "fit":
            self.parser.error(
                f"Expected argument `ckpt_path` 'last' to find a last.ckpt of this config's runs under {str(where)!r}, "
                "but there is none. Train first (lit-ppool fit) or pass the path of a checkpoint file."
            )
        if found is None:
            rank_zero_warn(f"lit_ppool: --ckpt_path last found no last.ckpt under {str(where)!r}; training from scratch.")
            try:  # the model was built without its pretrained weights in case there was a checkpoint
                self.model.load_pretrained_weights()
            except ConfigError as err:
                self.parser.error(str(err))
        else:
            rank_zero_info(f"lit_ppool: --ckpt_path last is {found}")
        self.config_init[f"{self.subcommand}.ckpt_path"] = None if found is None else str(found)
        return found

    def before_fit(self) -> None:
        resume_from = self._resolve_last_checkpoint()
        if not self.trainer.is_global_zero:
            return
        occupied = occupied_checkpoint_folder(
            self.trainer.callbacks, self.trainer.loggers, self.trainer.default_root_dir, resume_from
        )
        if occupied is not None:
            folder, names = occupied
            self.parser.error(
                f"Expected the checkpoint folder {str(folder)!r} of this run to be new, but it holds another run's "
                f"checkpoints {names[:4]}, which this run would overwrite. Resume that run with --ckpt_path last, "
                "leave ModelCheckpoint's dirpath unset (each run then gets <log dir>/version_<n>/checkpoints), "
                "or move the old checkpoints away."
            )

    def before_validate(self) -> None:
        self._resolve_last_checkpoint()

    def before_test(self) -> None:
        self._resolve_last_checkpoint()

    def after_validate(self) -> None:
        self._write_metrics("validate")

    def after_test(self) -> None:
        self._write_metrics("test")

    def _write_metrics(self, stage: str) -> None:
        """The run record of this evaluation, next to the checkpoint (:mod:`lit_ppool.training.record`)."""
        ckpt_path = self.config_value("ckpt_path", self.config_init)
        if not ckpt_path or not self.trainer.is_global_zero:
            return
        record = evaluation_record(ckpt_path, self.model, self.trainer.callback_metrics, self.config_value("seed_everything"))
        path = write_record(record, stage)
        rank_zero_info(f"lit_ppool: wrote the {stage} metrics to {path}")

    def before_predict(self) -> None:
        ckpt_path = self._resolve_last_checkpoint()
        if ckpt_path is None:
            folder = Path(self.trainer.default_root_dir) / "predictions"
        else:
            folder = run_dir_of(ckpt_path) / "predictions" / ckpt_path.stem
        writers = [callback for callback in self.trainer.callbacks if isinstance(callback, PaletteMaskWriter)]
        for writer in writers:
            if writer.output_dir is None:  # the configured writer without a folder writes where the default one would
                writer.output_dir = folder
        if not writers:
            self.trainer.callbacks.append(PaletteMaskWriter(folder))


def run_cli(args: Any = None, run: bool = True) -> PPoolCLI:
    """Run ``lit-ppool`` programmatically and return the :class:`PPoolCLI` (its ``trainer`` holds the metrics).

    Args:
        args: Command-line arguments, e.g. ``["fit", "--config", "configs/quickstart.yaml"]``;
            ``None`` reads ``sys.argv``.
        run: ``False`` only builds the model, data and trainer from ``args`` (no subcommand), which
            checks a configuration without training.
    """
    _quiet_known_warnings()
    return PPoolCLI(
        PPoolSegmentationModule,
        SegmentationDataModule,
        subclass_mode_data=True,
        save_config_callback=SaveConfigToLoggers,  # config.yaml, and the config in every logger (W&B run config)
        save_config_kwargs={"overwrite": True},
        parser_class=PPoolArgumentParser,
        parser_kwargs={"prog": "lit-ppool", "description": DESCRIPTION, "version": __version__},
        args=args,
        run=run,
    )
