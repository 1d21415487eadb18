"""Loggers: W&B that runs offline unless told otherwise, the CLI config in every logger, and the
histogram, image and chart calls of the loggers that have them.

The callbacks stay logger-agnostic: they call :func:`log_histogram`, :func:`log_figure`,
:func:`log_line_series`, :func:`define_metric_group` and :func:`run_dir`, which go through one
table of small adapters (:data:`LOGGER_ADAPTERS`) that use each logger's own documented API
(``WandbLogger.log_metrics`` / ``log_image``, TensorBoard's ``SummaryWriter``) and do nothing
where a logger has no such thing (``CSVLogger``, unknown loggers).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment

from lit_ppool.training.errors import ConfigError

if TYPE_CHECKING:
    import lightning as L
    from matplotlib.figure import Figure
    from torch import Tensor

__all__ = [
    "LOGGER_ADAPTERS",
    "WANDB_MODES",
    "LoggerAdapter",
    "SaveConfigToLoggers",
    "WandbLogger",
    "define_metric_group",
    "finish_wandb_runs",
    "log_figure",
    "log_histogram",
    "log_line_series",
    "logger_adapter",
    "resolve_wandb_mode",
    "run_dir",
]

WANDB_MODES = ("offline", "online", "disabled")
"""The ``mode`` values of :func:`wandb.init` that :class:`WandbLogger` accepts."""


def resolve_wandb_mode(mode: str | None = None) -> str:
    """The W&B mode: ``mode`` if given, else the ``WANDB_MODE`` environment variable, else ``"offline"``.

    Raises:
        ConfigError: (a ``ValueError``) if the mode is not one of :data:`WANDB_MODES`.

    Example:
        >>> resolve_wandb_mode("online")
        'online'
    """
    resolved = mode or os.environ.get("WANDB_MODE") or "offline"
    resolved = {"dryrun": "offline", "run": "online"}.get(resolved, resolved)  # wandb's older spellings
    if resolved not in WANDB_MODES:
        source = "argument `mode`" if mode else "environment variable `WANDB_MODE`"
        raise ConfigError(f"Expected {source} to be one of {list(WANDB_MODES)}, but got {resolved!r}.")
    return resolved


class WandbLogger(_LightningWandbLogger):
    """Lightning's :class:`~lightning.pytorch.loggers.WandbLogger`, offline unless told otherwise.

    With no ``mode`` and no ``WANDB_MODE`` in the environment the run is written offline
    (no account, no network, no login prompt) to ``<save_dir>/wandb/offline-run-*``; upload it
    later with ``wandb sync <that directory>``. ``mode="online"`` (or ``WANDB_MODE=online``)
    logs live. Model checkpoints are not uploaded unless ``log_model`` is set, which needs
    online mode.

    Args:
        name: Display name of the run.
        save_dir: Parent directory of ``wandb/``; default ``WANDB_DIR`` or the working directory.
        version: Run id, to resume a run.
        mode: ``"offline"``, ``"online"`` or ``"disabled"``; default ``WANDB_MODE`` or ``"offline"``.
        project: W&B project; default ``WANDB_PROJECT`` or ``"lit_ppool"``.
        entity: W&B user or team (online mode).
        group: Run group, e.g. one per ablation table.
        tags: Run tags.
        log_model: Upload checkpoints as W&B artifacts (``True`` at the end, ``"all"`` as saved);
            online mode only.
        prefix: Prefix of every metric key.
        **kwargs: Other arguments of :func:`wandb.init` (``notes``, ``job_type``, ``settings``, ...).

    Raises:
        ConfigError: (a ``ValueError``) if ``mode`` (or ``WANDB_MODE``) is unknown, or ``log_model``
            is set outside online mode.
    """

    def __init__(
        self,
        name: str | None = None,
        save_dir: str | None = None,
        version: str | None = None,
        mode: Literal["offline", "online", "disabled"] | None = None,
        project: str | None = None,
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        log_model: Literal["all"] | bool = False,
        prefix: str = "",
        **kwargs: Any,
    ) -> None:
        mode = resolve_wandb_mode(mode)
        if log_model and mode != "online":
            raise ConfigError(
                f"Expected argument `log_model` to be False when the W&B mode is {mode!r} (checkpoints are "
                f"uploaded only online), but got {log_model!r}. Set `mode: online` or WANDB_MODE=online."
            )
        self.mode = mode
        super().__init__(
            name=name,
            # absolute: wandb resolves a relative dir again later, against whatever the working directory is then
            save_dir=os.path.abspath(save_dir or os.environ.get("WANDB_DIR") or "."),
            version=version,
            project=project or os.environ.get("WANDB_PROJECT") or "lit_ppool",
            log_model=log_model,
            prefix=prefix,
            mode=mode,  # to wandb.init: never the process-wide WANDB_MODE that `offline=True` would set
            entity=entity,
            group=group,
            tags=tags,
            **kwargs,
        )
        self.attached_copy = False  # True in the copy a ddp_spawn worker unpickles (see __getstate__)

    def __getstate__(self) -> dict[str, Any]:
        # Lightning's pickled copy attaches to this process's run (ddp_spawn); remember that it is one
        return {**super().__getstate__(), "attached_copy": True}

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        """The ``wandb`` run (created on first use, on rank zero; a dummy elsewhere)."""
        # wandb 0.17 (our floor) does not create a missing `dir`: it logs to the system temp folder instead
        os.makedirs(self.save_dir, exist_ok=True)
        if self.attached_copy:
            import wandb

            # A ddp_spawn worker attaches to the run that the main process started. The attached run
            # takes its media folder from the process-wide settings, not from the run: point those at
            # save_dir (once), or images and tables land in ./wandb of the working directory.
            wandb.setup(settings=wandb.Settings(root_dir=self.save_dir))
            self.attached_copy = False
        return _LightningWandbLogger.experiment.fget(self)


def finish_wandb_runs(loggers: Iterable[Logger], exit_code: int = 0) -> list[str]:
    """Finish the W&B runs that ``loggers`` started; return their ids.

    Lightning's ``WandbLogger`` never finishes its run: wandb's exit hook does, as the process
    exits, and an offline run's exit record can reach its file long after (a ``wandb sync``
    started right away would upload an open run). ``run.finish`` writes it now. A logger whose
    run was never created starts none here; other loggers are left alone.

    Args:
        loggers: The Trainer's loggers.
        exit_code: 0 marks the runs finished, anything else failed.

    Example:
        >>> finish_wandb_runs([CSVLogger("logs")])  # no W&B logger: nothing to finish
        []
    """
    if "wandb" not in sys.modules:  # nothing imported wandb, so no run was started
        return []
    import wandb

    run = wandb.run  # the run a WandbLogger created or reused; its `version` is that run's id once created
    finished = []
    for logger in loggers:
        if isinstance(logger, _LightningWandbLogger) and run is not None and logger.version == run.id:
            run.finish(exit_code=exit_code)
            finished.append(run.id)
            run = wandb.run
    return finished


class SaveConfigToLoggers(SaveConfigCallback):
    """LightningCLI's config callback that also logs the whole config as the loggers' hyperparameters.

    The config (the ``config.yaml`` next to the logs, as a nested dict: ``model.pooling``,
    ``trainer.max_epochs``, ...) goes to ``log_hyperparams`` of every logger of the Trainer:
    the W&B run config, TensorBoard's hparams, the CSV logger's ``hparams.yaml``. Not for
    ``predict``, which logs nothing else. Runs on rank zero only. A ``validate``, ``test`` or
    ``predict`` without a logger saves nothing (there is no log folder of its own to save to).
    """

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" and not trainer.loggers:
            return
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "predict" or not trainer.loggers:
            return
        import yaml

        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams(config)


class LoggerAdapter:
    """What a logger can show beyond scalars, through its own documented API; this default shows nothing.

    One subclass per logger class, in :data:`LOGGER_ADAPTERS`; :func:`logger_adapter` finds a
    logger's. Each ``log_*`` method returns whether it logged, so callers can tell.

    Example:
        >>> from lightning.pytorch.loggers import CSVLogger
        >>> logger_adapter(CSVLogger("logs")).log_histogram(CSVLogger("logs"), "h", torch.ones(3), step=0)
        False
    """

    def define_metric_group(self, logger: Logger, pattern: str) -> None:
        """Plot the keys matching ``pattern`` against the global step, where the logger groups keys."""

    def log_histogram(self, logger: Logger, key: str, values: Tensor, step: int) -> bool:
        """Log a histogram of the flat float CPU tensor ``values``."""
        return False

    def log_figure(self, logger: Logger, key: str, figure: Figure, path: Path, step: int) -> bool:
        """Log a matplotlib figure, already saved as the PNG ``path``."""
        return False

    def log_line_series(
        self, logger: Logger, key: str, xs: list[float], ys: list[list[float]], names: list[str], title: str, step: int
    ) -> bool:
        """Log several curves over ``xs`` as one chart."""
        return False

    def run_dir(self, logger: Logger) -> Path | None:
        """The folder of this run's files, or ``None`` if the logger has none."""
        return Path(logger.save_dir) if logger.save_dir else None


class _CSVAdapter(LoggerAdapter):
    def run_dir(self, logger: Logger) -> Path | None:
        return Path(logger.log_dir)


class _TensorBoardAdapter(_CSVAdapter):
    def log_histogram(self, logger: Logger, key: str, values: Tensor, step: int) -> bool:
        logger.experiment.add_histogram(key, values, global_step=step)
        return True

    def log_figure(self, logger: Logger, key: str, figure: Figure, path: Path, step: int) -> bool:
        logger.experiment.add_figure(key, figure, global_step=step, close=False)
        return True


class _WandbAdapter(LoggerAdapter):
    def define_metric_group(self, logger: Logger, pattern: str) -> None:
        logger.experiment.define_metric(pattern, step_metric="trainer/global_step", summary="last")

    def log_histogram(self, logger: Logger, key: str, values: Tensor, step: int) -> bool:
        import wandb

        logger.log_metrics({key: wandb.Histogram(values.numpy())}, step=step)  # type: ignore[dict-item]
        return True

    def log_figure(self, logger: Logger, key: str, figure: Figure, path: Path, step: int) -> bool:
        logger.log_image(key=key, images=[str(path)], step=step)
        return True

    def log_line_series(
        self, logger: Logger, key: str, xs: list[float], ys: list[list[float]], names: list[str], title: str, step: int
    ) -> bool:
        import wandb

        chart = wandb.plot.line_series(xs=xs, ys=ys, keys=names, title=title, xname="step")
        logger.log_metrics({key: chart}, step=step)  # type: ignore[dict-item]
        return True

    def run_dir(self, logger: Logger) -> Path | None:
        return Path(logger.experiment.dir)


LOGGER_ADAPTERS: dict[type[Logger], LoggerAdapter] = {
    _LightningWandbLogger: _WandbAdapter(),
    TensorBoardLogger: _TensorBoardAdapter(),
    CSVLogger: _CSVAdapter(),
}
"""Logger class -> its :class:`LoggerAdapter`; subclasses of a logger class get its adapter."""


def logger_adapter(logger: Logger) -> LoggerAdapter:
    """The :class:`LoggerAdapter` of ``logger``'s class (or nearest base in :data:`LOGGER_ADAPTERS`), else the no-op one.

    Example:
        >>> type(logger_adapter(TensorBoardLogger("logs"))).__name__
        '_TensorBoardAdapter'
    """
    for cls in type(logger).__mro__:
        if cls in LOGGER_ADAPTERS:
            return LOGGER_ADAPTERS[cls]
    return _NO_ADAPTER


_NO_ADAPTER = LoggerAdapter()


def define_metric_group(logger: Logger, pattern: str) -> None:
    """Group the keys matching ``pattern`` (e.g. ``"alpha/*"``) on one x-axis in a W&B run; no-op elsewhere.

    W&B plots them against ``trainer/global_step`` and keeps their last value in the run summary.
    """
    logger_adapter(logger).define_metric_group(logger, pattern)


def log_histogram(logger: Logger, key: str, values: Tensor, step: int) -> bool:
    """Log a histogram of ``values`` where the logger supports one (W&B, TensorBoard); return whether it did."""
    return logger_adapter(logger).log_histogram(logger, key, values.detach().float().cpu().flatten(), step)


def log_figure(logger: Logger, key: str, figure: Figure, path: str | Path, step: int) -> bool:
    """Log a matplotlib figure (already saved as the PNG ``path``) as an image where the logger supports
    images (W&B, TensorBoard); return whether it did."""
    return logger_adapter(logger).log_figure(logger, key, figure, Path(path), step)


def log_line_series(
    logger: Logger,
    key: str,
    xs: Sequence[float],
    ys: Sequence[Sequence[float]],
    names: Sequence[str],
    title: str,
    step: int,
) -> bool:
    """Log several curves as one interactive chart where the logger has one (W&B); return whether it did."""
    return logger_adapter(logger).log_line_series(logger, key, list(xs), [list(y) for y in ys], list(names), title, step)


def run_dir(logger: Logger) -> Path | None:
    """The folder of the logger's run: ``log_dir`` (CSV, TensorBoard), the W&B run's files folder, else ``save_dir``."""
    return logger_adapter(logger).run_dir(logger)
