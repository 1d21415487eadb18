"""AlphaMonitor: log and plot every P-pooling layer's alpha while a model trains."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lit_ppool.layers.ppool import PPool2d, PPoolBase
from lit_ppool.layers.registry import resolve_pooling
from lit_ppool.training.loggers import (
    define_metric_group,
    log_figure,
    log_histogram,
    log_line_series,
    run_dir,
)

if TYPE_CHECKING:
    import lightning as L
    from matplotlib.figure import Figure

__all__ = ["AlphaMonitor", "alpha_layers"]

PREFIX = "alpha"


def _has_alpha(pooling: Any) -> bool:
    """Whether a module's ``pooling`` hyperparameter names a pooling with an alpha (the table says; ``False`` if none)."""
    try:
        return resolve_pooling(pooling).spec.has_alpha
    except ValueError:  # no pooling hyperparameter, or not one of the table
        return False


def alpha_layers(module: nn.Module) -> dict[str, PPool2d]:
    """The P-pooling layers of ``module`` (:class:`~lit_ppool.PPool2d` and subclasses) under their log names.

    A log name is the qualified module name with dots replaced by underscores; the leading
    ``model.`` is dropped when every P-pooling layer sits under ``model`` (as in
    :class:`~lit_ppool.PPoolSegmentationModule`), so names match ``swap_pooling``'s report.

    Example:
        >>> from lit_ppool import PPool2d
        >>> list(alpha_layers(nn.Sequential(nn.Conv2d(3, 3, 1), PPool2d(2))))
        ['1']
    """
    found = [(name, layer) for name, layer in module.named_modules() if isinstance(layer, PPoolBase)]
    if found and all(name.startswith("model.") for name, _ in found):
        found = [(name[len("model.") :], layer) for name, layer in found]
    return {name.replace(".", "_"): layer for name, layer in found}


class AlphaMonitor(Callback):
    """Log every P-pooling layer's alpha during ``fit`` and plot it at the end.

    Alpha is each layer's effective value (:attr:`PPool2d.alpha`, after the clamp to
    ``[0, alpha_max]``): 0 is average pooling, large is max pooling. The values go to every
    logger of the Trainer (``trainer.loggers``: W&B, TensorBoard, CSV, ...) at
    ``trainer.global_step``, from rank zero only (under DDP alpha is the same on every rank).

    Logged keys, with ``<layer>`` the layer's name (see :func:`alpha_layers`), e.g.
    ``alpha/encoder_maxpool``:

    * ``alpha/<layer>``: the layer's alpha; for per-channel alpha, the mean over channels;
    * ``alpha/<layer>/min`` and ``alpha/<layer>/max``: per-channel alpha only;
    * ``alpha/<layer>/hist``: per-channel alpha only, a histogram, for loggers that have
      histograms (W&B, TensorBoard);
    * at the end of fit, ``alpha/plot``: the plot below as an image (W&B, TensorBoard) and,
      on W&B, ``alpha/all_layers``: one interactive chart with every layer's curve.

    When: at the start of training (the initial alpha), then every ``every_n_steps``
    optimiser steps (``logging_interval="step"``) or at the end of every training epoch
    (``logging_interval="epoch"``). The values logged at step ``s`` are the alphas after
    ``s`` optimiser steps, i.e. those that the batch Lightning logs at step ``s`` uses.

    At the end of fit (rank zero) the history is drawn with matplotlib, one line per layer
    (per-channel layers: the mean, with the min-max range shaded), and saved as PNG
    ``plot_filename`` in the first logger's directory: ``log_dir`` of a CSV or TensorBoard
    logger (next to ``metrics.csv`` and the CLI's ``config.yaml``), a W&B run's files
    directory, else ``trainer.default_root_dir``. Not under ``fast_dev_run``. The history
    itself is :attr:`steps` and :attr:`history`; :meth:`plot` redraws it. It is saved in
    checkpoints, so a fit resumed from one continues it.

    Args:
        logging_interval: ``"step"`` or ``"epoch"``.
        every_n_steps: Steps between two logs with ``logging_interval="step"``; default the
            Trainer's ``log_every_n_steps``.
        log_histogram: Log per-channel alphas as histograms where the logger supports it.
        plot_filename: File name of the PNG plot, or ``None`` for no plot.
        strict: If ``True`` a model without P-pooling layers is an error; if ``False`` the
            callback warns and does nothing, so one config serves every pooling.

    Raises:
        ValueError: If an argument is invalid.
        MisconfigurationException: At the start of ``fit``, if the Trainer has no logger, or
            (``strict=True``) the model has no P-pooling layer.

    Example::

        trainer = L.Trainer(logger=CSVLogger("logs"), callbacks=[AlphaMonitor(every_n_steps=10)])
        trainer.fit(PPoolSegmentationModule("Unet", "resnet18", None, num_classes=5), datamodule)
        # logs/lightning_logs/version_0/metrics.csv has a column alpha/encoder_maxpool,
        # and logs/lightning_logs/version_0/alpha.png the plot
    """

    def __init__(
        self,
        logging_interval: Literal["step", "epoch"] = "step",
        every_n_steps: int | None = None,
        log_histogram: bool = True,
        plot_filename: str | None = "alpha.png",
        strict: bool = True,
    ) -> None:
        if logging_interval not in ("step", "epoch"):
            raise ValueError(
                f"Expected argument `logging_interval` to be 'step' or 'epoch', but got {logging_interval!r}."
            )
        valid_int = isinstance(every_n_steps, int) and not isinstance(every_n_steps, bool) and every_n_steps >= 1
        if every_n_steps is not None and not valid_int:
            raise ValueError(f"Expected argument `every_n_steps` to be None or an int >= 1, but got {every_n_steps!r}.")
        if every_n_steps is not None and logging_interval != "step":
            raise ValueError(
                f"Expected argument `every_n_steps` to be None with logging_interval='epoch' (it counts steps), "
                f"but got {every_n_steps!r}."
            )
        valid_name = isinstance(plot_filename, str) and Path(plot_filename).name == plot_filename
        if plot_filename is not None and not (valid_name and plot_filename.endswith(".png")):
            raise ValueError(
                f"Expected argument `plot_filename` to be None or a file name ending in '.png', but got {plot_filename!r}."
            )
        self.logging_interval = logging_interval
        self.every_n_steps = every_n_steps
        self.log_histogram = bool(log_histogram)
        self.plot_filename = plot_filename
        self.strict = bool(strict)
        self.steps: list[int] = []
        """Global steps at which alpha was logged (rank zero)."""
        self.history: dict[str, list[float]] = {}
        """Layer name -> alpha at each of :attr:`steps` (per-channel layers: the mean)."""
        self.plot_path: Path | None = None
        """The PNG written at the end of the last fit, if any."""
        self._ranges: dict[str, list[tuple[float, float]]] = {}
        self._layers: dict[str, PPool2d] = {}
        self._last_step: int | None = None
        self._restored = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.loggers:
            raise MisconfigurationException(
                "Cannot use `AlphaMonitor` with a Trainer that has no logger: pass one, e.g. "
                "`Trainer(logger=CSVLogger('logs'))` or `trainer.logger` in the config, or remove the callback."
            )
        self._layers = alpha_layers(pl_module)
        if not self._layers:
            pooling = getattr(pl_module, "hparams", {}).get("pooling")
            if _has_alpha(pooling):
                fix = f"the model has pooling={pooling!r} but no pooling layer that could be swapped (see the swap report)"
            else:
                fix = "swap the model's pooling to 'p' (`pooling='p'`, `lit_ppool.swap_pooling(model, 'p')`)"
            message = f"`AlphaMonitor` found no P-pooling layer (lit_ppool.PPool2d) in {type(pl_module).__name__}: {fix}"
            if self.strict:
                raise MisconfigurationException(f"{message}, or pass `strict=False` to skip the callback.")
            rank_zero_warn(f"{message}. Nothing is logged (strict=False).")
            return
        if not self._restored:  # a resumed fit continues the checkpoint's history
            self.steps, self.history, self._ranges, self._last_step = [], {}, {}, None
        self._restored, self.plot_path = False, None
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                define_metric_group(logger, f"{PREFIX}/*")

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._record(trainer)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.logging_interval != "step":
            return
        every = self.every_n_steps or trainer.log_every_n_steps
        if every and trainer.global_step % every == 0:
            self._record(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.logging_interval == "epoch":
            self._record(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (self._layers and self.steps and self.plot_filename and trainer.is_global_zero) or trainer.fast_dev_run:
            return
        figure = self.plot()
        self.plot_path = self._plot_dir(trainer) / self.plot_filename
        self.plot_path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(self.plot_path, dpi=120)
        step = trainer.global_step
        names, curves = list(self.history), list(self.history.values())
        for logger in trainer.loggers:
            log_figure(logger, f"{PREFIX}/plot", figure, self.plot_path, step)
            log_line_series(logger, f"{PREFIX}/all_layers", self.steps, curves, names, "alpha per layer", step)

    def _record(self, trainer: L.Trainer) -> None:
        """Log the current alphas (once per global step) and append them to the history, on rank zero."""
        step = trainer.global_step
        if not self._layers or not trainer.is_global_zero or step == self._last_step:
            return
        self._last_step = step
        metrics: dict[str, float] = {}
        channel_alphas: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for name, layer in self._layers.items():
                alpha = layer.alpha.detach().float().cpu()
                key = f"{PREFIX}/{name}"
                metrics[key] = alpha.mean().item()
                self.history.setdefault(name, []).append(metrics[key])
                if layer.num_channels is not None:
                    low, high = alpha.min().item(), alpha.max().item()
                    metrics[f"{key}/min"], metrics[f"{key}/max"] = low, high
                    self._ranges.setdefault(name, []).append((low, high))
                    channel_alphas[f"{key}/hist"] = alpha
        self.steps.append(step)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            if self.log_histogram:
                for key, values in channel_alphas.items():
                    log_histogram(logger, key, values, step)

    def state_dict(self) -> dict[str, Any]:
        """The history, saved in checkpoints so that a resumed run plots its whole course."""
        return {"steps": list(self.steps), "history": dict(self.history), "ranges": dict(self._ranges)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = list(state_dict.get("steps", []))
        self.history = {name: list(values) for name, values in state_dict.get("history", {}).items()}
        self._ranges = {name: [tuple(pair) for pair in pairs] for name, pairs in state_dict.get("ranges", {}).items()}
        self._last_step = self.steps[-1] if self.steps else None
        self._restored = True

    @staticmethod
    def _plot_dir(trainer: L.Trainer) -> Path:
        """The first logger's run folder (rank zero only, no broadcast), else ``trainer.default_root_dir``."""
        return run_dir(trainer.loggers[0]) or Path(trainer.default_root_dir)

    def plot(self) -> Figure:
        """The alpha history as a matplotlib figure: one line per layer, against the global step.

        Per-channel layers are drawn as their mean with the min-max range shaded. The figure is
        not attached to pyplot (no display needed); ``figure.savefig`` writes it.
        """
        from matplotlib.figure import Figure

        figure = Figure(figsize=(7.0, 4.2), layout="constrained")
        axes = figure.subplots()
        marker = "o" if len(self.steps) <= 20 else None
        for name, values in self.history.items():
            (line,) = axes.plot(self.steps, values, marker=marker, markersize=3, label=name)
            if name in self._ranges:
                low, high = zip(*self._ranges[name])
                axes.fill_between(self.steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        axes.set_xlabel("step")
        axes.set_ylabel("alpha  (0 = average, large = max pooling)")
        axes.set_title("P-pooling alpha per layer")
        axes.set_ylim(bottom=0.0)
        axes.grid(alpha=0.3)
        if self.history:
            axes.legend(fontsize="small", ncols=1 + (len(self.history) - 1) // 12)
        return figure
