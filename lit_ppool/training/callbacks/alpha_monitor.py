"""AlphaMonitor: log and plot every P-pooling layer's alpha while a model trains, and draw the alpha maps of the adaptive ones."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import nn

from lit_ppool.layers.adaptive import AdaptivePPool2d
from lit_ppool.layers.ppool import PPool2d, PPoolBase
from lit_ppool.layers.registry import resolve_pooling
from lit_ppool.training.alpha_maps import (
    ALPHA_PERCENTILES,
    AlphaMapCapture,
    adaptive_layers,
    alpha_map_figure,
    log_names,
    map_statistics,
    upsampled_mean,
)
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
    from torch import Tensor

__all__ = ["AlphaMonitor", "adaptive_layers", "alpha_layers"]

PREFIX = "alpha"


def _has_alpha(pooling: Any) -> bool:
    """Whether a module's ``pooling`` hyperparameter names a pooling with an alpha, learned or predicted (``False`` if none)."""
    try:
        spec = resolve_pooling(pooling).spec
    except ValueError:  # no pooling hyperparameter, or not one of the table
        return False
    return spec.has_alpha or spec.predicts_alpha


def _images_of(batch: Any) -> Tensor | None:
    """The images of a batch: ``batch["image"]``, the first item of a tuple or list, or the batch tensor itself."""
    if isinstance(batch, dict):
        batch = batch.get("image")
    elif isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    return batch if isinstance(batch, torch.Tensor) and batch.dim() == 4 else None


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
    return log_names((name, layer) for name, layer in module.named_modules() if isinstance(layer, PPoolBase))


class AlphaMonitor(Callback):
    """Log every P-pooling layer's alpha during ``fit`` and plot it at the end; draw the adaptive layers' alpha maps.

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

    Adaptive P-pooling layers (:class:`~lit_ppool.AdaptivePPool2d`, named by
    :func:`adaptive_layers`) have no alpha of their own but predict one for every window. They
    are watched on a fixed batch: the first ``num_images`` images of the first validation batch
    (dataloader 0) that the Trainer runs in this ``fit`` (the sanity check's, if any), taken
    once and kept on the CPU. Resumed, a fit takes them again from its first
    validation batch: the same images as long as the validation dataloader does not shuffle.
    At the end of every validation epoch of ``fit`` (not the sanity check) the module runs on
    them (``pl_module(images)``, eval mode, no gradient, the Trainer's precision) on every
    process, each on its own first batch (a strategy that shards the parameters, FSDP or
    DeepSpeed, needs every process in a forward), and rank zero logs, at ``trainer.global_step``:

    * ``alpha/<layer>/mean``, ``alpha/<layer>/p5``, ``/p25``, ``/p50``, ``/p75``, ``/p95``: the
      mean and percentiles of the predicted alpha over every window, channel and image;
    * ``alpha/<layer>/hist``: its histogram, for loggers that have histograms;
    * ``alpha/<layer>/map``: an image (W&B, TensorBoard) with the images in the top row and
      below each its alpha map (mean over channels, upsampled nearest to the image size) over
      it in grey, one colour bar over the layer's fixed range ``[alpha_min, alpha_max]``
      (:func:`~lit_ppool.training.alpha_maps.alpha_map_figure`), also written as the PNG
      ``<run folder>/<map_dirname>/<layer>.png`` (the latest epoch's; not under
      ``fast_dev_run``): on CrackForest, whether alpha is high along the cracks and low on
      flat road shows there.

    Without a validation loop no adaptive layer is logged (a warning at the end of fit says so).

    At the end of fit (rank zero) the history is drawn with matplotlib, one line per layer
    (per-channel layers: the mean, with the min-max range shaded; adaptive layers: the mean
    predicted alpha, dashed, with the p5-p95 range shaded), and saved as PNG
    ``plot_filename`` in the first logger's directory: ``log_dir`` of a CSV or TensorBoard
    logger (next to ``metrics.csv`` and the CLI's ``config.yaml``), a W&B run's files
    directory, else ``trainer.default_root_dir``: the run folder. Not under ``fast_dev_run``.
    ``alpha/all_layers`` has the layers with an alpha of their own only. The history itself is
    :attr:`steps` and :attr:`history` (adaptive layers: :attr:`map_steps` and
    :attr:`map_history`); :meth:`plot` redraws it. It is saved in checkpoints, so a fit resumed
    from one continues it.

    Args:
        logging_interval: ``"step"`` or ``"epoch"``.
        every_n_steps: Steps between two logs with ``logging_interval="step"``; default the
            Trainer's ``log_every_n_steps``.
        log_histogram: Log per-channel and predicted alphas as histograms where the logger supports it.
        plot_filename: File name of the PNG plot, or ``None`` for no plot.
        strict: If ``True`` a model without P-pooling layers (neither with an alpha nor adaptive)
            is an error; if ``False`` the callback warns and does nothing, so one config serves
            every pooling.
        num_images: Images of the fixed batch of the adaptive layers (fewer if the first
            validation batch is smaller).
        map_dirname: Folder, in the run folder, of the adaptive layers' alpha map PNGs, or
            ``None`` for no map images (the scalars are logged all the same).

    Raises:
        ValueError: If an argument is invalid.
        MisconfigurationException: At the start of ``fit``, if the Trainer has no logger, or
            (``strict=True``) the model has no P-pooling layer.

    Example::

        trainer = L.Trainer(logger=CSVLogger("logs"), callbacks=[AlphaMonitor(every_n_steps=10)])
        trainer.fit(PPoolSegmentationModule("Unet", "resnet18", None, num_classes=5), datamodule)
        # logs/lightning_logs/version_0/metrics.csv has a column alpha/encoder_maxpool,
        # and logs/lightning_logs/version_0/alpha.png the plot; with pooling="p_adaptive" it has
        # alpha/encoder_maxpool/mean, /p5, ... and logs/lightning_logs/version_0/alpha_maps/encoder_maxpool.png
    """

    def __init__(
        self,
        logging_interval: Literal["step", "epoch"] = "step",
        every_n_steps: int | None = None,
        log_histogram: bool = True,
        plot_filename: str | None = "alpha.png",
        strict: bool = True,
        num_images: int = 4,
        map_dirname: str | None = "alpha_maps",
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
        if isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1:
            raise ValueError(f"Expected argument `num_images` to be an int >= 1, but got {num_images!r}.")
        valid_dir = isinstance(map_dirname, str) and map_dirname not in ("", ".", "..") and Path(map_dirname).name == map_dirname
        if map_dirname is not None and not valid_dir:
            raise ValueError(f"Expected argument `map_dirname` to be None or a folder name (no path), but got {map_dirname!r}.")
        self.logging_interval = logging_interval
        self.every_n_steps = every_n_steps
        self.log_histogram = bool(log_histogram)
        self.plot_filename = plot_filename
        self.strict = bool(strict)
        self.num_images = num_images
        self.map_dirname = map_dirname
        self.steps: list[int] = []
        """Global steps at which alpha was logged (rank zero)."""
        self.history: dict[str, list[float]] = {}
        """Layer name -> alpha at each of :attr:`steps` (per-channel layers: the mean)."""
        self.map_steps: list[int] = []
        """Global steps at which the adaptive layers' alpha maps were logged (rank zero)."""
        self.map_history: dict[str, list[float]] = {}
        """Adaptive layer name -> mean predicted alpha of the fixed batch at each of :attr:`map_steps`."""
        self.plot_path: Path | None = None
        """The PNG written at the end of the last fit, if any."""
        self.map_paths: dict[str, Path] = {}
        """Adaptive layer name -> its alpha map PNG, as last written in this fit."""
        self._ranges: dict[str, list[tuple[float, float]]] = {}
        self._map_ranges: dict[str, list[tuple[float, float]]] = {}
        self._layers: dict[str, PPool2d] = {}
        self._adaptive: dict[str, AdaptivePPool2d] = {}
        self._fixed_images: torch.Tensor | None = None
        self._last_step: int | None = None
        self._last_map_step: int | None = None
        self._restored = False

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.loggers:
            raise MisconfigurationException(
                "Cannot use `AlphaMonitor` with a Trainer that has no logger: pass one, e.g. "
                "`Trainer(logger=CSVLogger('logs'))` or `trainer.logger` in the config, or remove the callback."
            )
        self._layers, self._adaptive = alpha_layers(pl_module), adaptive_layers(pl_module)
        self._fixed_images = None
        if not (self._layers or self._adaptive):
            pooling = getattr(pl_module, "hparams", {}).get("pooling")
            if _has_alpha(pooling):
                fix = f"the model has pooling={pooling!r} but no pooling layer that could be swapped (see the swap report)"
            else:
                fix = "swap the model's pooling to 'p' (`pooling='p'`, `lit_ppool.swap_pooling(model, 'p')`)"
            message = (
                f"`AlphaMonitor` found no P-pooling layer (lit_ppool.PPool2d or lit_ppool.AdaptivePPool2d) in "
                f"{type(pl_module).__name__}: {fix}"
            )
            if self.strict:
                raise MisconfigurationException(f"{message}, or pass `strict=False` to skip the callback.")
            rank_zero_warn(f"{message}. Nothing is logged (strict=False).")
            return
        if not self._restored:  # a resumed fit continues the checkpoint's history
            self.steps, self.history, self._ranges, self._last_step = [], {}, {}, None
            self.map_steps, self.map_history, self._map_ranges, self._last_map_step = [], {}, {}, None
        self._restored, self.plot_path, self.map_paths = False, None, {}
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

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._fixed_images is not None or batch_idx or dataloader_idx or not self._watching_maps(trainer):
            return
        images = _images_of(batch)
        if images is None:
            rank_zero_warn(
                "`AlphaMonitor` found no images in the first validation batch (expected a dict with 'image', a tuple or "
                "list whose first item is the images, or an (N, C, H, W) tensor): no alpha map is logged."
            )
            self._adaptive = {}
            return
        self._fixed_images = images[: self.num_images].detach().cpu().clone()

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and self._watching_maps(trainer):
            self._record_maps(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._adaptive and not self.map_steps and trainer.is_global_zero:
            rank_zero_warn(
                "`AlphaMonitor` logged no alpha map of the adaptive P-pooling layers: no validation epoch ran in this fit "
                "(they are drawn on the first validation batch at the end of every validation epoch)."
            )
        if not (self.steps or self.map_steps) or not (self.plot_filename and trainer.is_global_zero) or trainer.fast_dev_run:
            return
        figure = self.plot()
        self.plot_path = self._plot_dir(trainer) / self.plot_filename
        self.plot_path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(self.plot_path, dpi=120)
        step = trainer.global_step
        names, curves = list(self.history), list(self.history.values())
        for logger in trainer.loggers:
            log_figure(logger, f"{PREFIX}/plot", figure, self.plot_path, step)
            if names:
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

    def _watching_maps(self, trainer: L.Trainer) -> bool:
        """Whether the alpha maps are watched now: adaptive layers, in ``fit`` (every process runs their forward)."""
        return bool(self._adaptive) and trainer.state.fn == "fit"

    def _predicted_maps(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Tensor]:
        """The adaptive layers' alpha maps of the fixed batch: one forward in eval mode, without gradient."""
        precision = trainer.precision_plugin
        images = precision.convert_input(self._fixed_images.to(pl_module.device))
        was_training = pl_module.training
        pl_module.eval()
        try:
            with AlphaMapCapture(pl_module) as capture, torch.no_grad(), precision.val_step_context():
                pl_module(images)
        finally:
            pl_module.train(was_training)
        return capture.maps

    def _record_maps(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Predict the adaptive layers' maps of the fixed batch (every process); log and draw them (rank zero), once per global step."""
        step = trainer.global_step
        if self._fixed_images is None or step == self._last_map_step:
            return
        self._last_map_step = step
        maps = self._predicted_maps(trainer, pl_module)
        if not trainer.is_global_zero:
            return
        metrics: dict[str, float] = {}
        low, high = f"p{ALPHA_PERCENTILES[0]}", f"p{ALPHA_PERCENTILES[-1]}"
        for name, alpha in maps.items():
            statistics = map_statistics(alpha)
            metrics.update({f"{PREFIX}/{name}/{key}": value for key, value in statistics.items()})
            self.map_history.setdefault(name, []).append(statistics["mean"])
            self._map_ranges.setdefault(name, []).append((statistics[low], statistics[high]))
        self.map_steps.append(step)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
            if self.log_histogram:
                for name, alpha in maps.items():
                    log_histogram(logger, f"{PREFIX}/{name}/hist", alpha, step)
        if self.map_dirname is not None and not trainer.fast_dev_run:
            self._draw_maps(trainer, maps, step)

    def _draw_maps(self, trainer: L.Trainer, maps: dict[str, Tensor], step: int) -> None:
        """Write each layer's alpha map figure as ``<run folder>/<map_dirname>/<layer>.png`` and log it as an image."""
        folder = self._plot_dir(trainer) / self.map_dirname
        folder.mkdir(parents=True, exist_ok=True)
        images = self._fixed_images
        for name, alpha in maps.items():
            layer = self._adaptive[name]
            figure = alpha_map_figure(
                images, upsampled_mean(alpha, images.shape[-2:]), layer.alpha_min, layer.alpha_max,
                f"{name}: predicted alpha (mean over channels), step {step}",
            )  # fmt: skip
            path = folder / f"{name}.png"
            figure.savefig(path, dpi=100)
            self.map_paths[name] = path
            for logger in trainer.loggers:
                log_figure(logger, f"{PREFIX}/{name}/map", figure, path, step)

    def state_dict(self) -> dict[str, Any]:
        """The history, saved in checkpoints so that a resumed run plots its whole course."""
        return {
            "steps": list(self.steps), "history": dict(self.history), "ranges": dict(self._ranges),
            "map_steps": list(self.map_steps), "map_history": dict(self.map_history), "map_ranges": dict(self._map_ranges),
        }  # fmt: skip

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.steps = list(state_dict.get("steps", []))
        self.history = {name: list(values) for name, values in state_dict.get("history", {}).items()}
        self._ranges = {name: [tuple(pair) for pair in pairs] for name, pairs in state_dict.get("ranges", {}).items()}
        self._last_step = self.steps[-1] if self.steps else None
        self.map_steps = list(state_dict.get("map_steps", []))
        self.map_history = {name: list(values) for name, values in state_dict.get("map_history", {}).items()}
        self._map_ranges = {
            name: [tuple(pair) for pair in pairs] for name, pairs in state_dict.get("map_ranges", {}).items()
        }
        self._last_map_step = self.map_steps[-1] if self.map_steps else None
        self._restored = True

    @staticmethod
    def _plot_dir(trainer: L.Trainer) -> Path:
        """The first logger's run folder (rank zero only, no broadcast), else ``trainer.default_root_dir``."""
        return run_dir(trainer.loggers[0]) or Path(trainer.default_root_dir)

    def plot(self) -> Figure:
        """The alpha history as a matplotlib figure: one line per layer, against the global step.

        Per-channel layers are drawn as their mean with the min-max range shaded; adaptive layers
        as the mean predicted alpha of the fixed batch (dashed, labelled ``<layer> (predicted,
        mean)``) with the p5-p95 range shaded. The figure is not attached to pyplot (no display
        needed); ``figure.savefig`` writes it.
        """
        from matplotlib.figure import Figure

        figure = Figure(figsize=(7.0, 4.2), layout="constrained")
        axes = figure.subplots()
        curves = [(name, self.steps, values, self._ranges.get(name), "-") for name, values in self.history.items()]
        curves += [
            (f"{name} (predicted, mean)", self.map_steps, values, self._map_ranges.get(name), "--")
            for name, values in self.map_history.items()
        ]
        for label, steps, values, ranges, style in curves:
            marker = "o" if len(steps) <= 20 else None
            (line,) = axes.plot(steps, values, linestyle=style, marker=marker, markersize=3, label=label)
            if ranges:
                low, high = zip(*ranges)
                axes.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
        axes.set_xlabel("step")
        axes.set_ylabel("alpha  (0 = average, large = max pooling)")
        axes.set_title("P-pooling alpha per layer")
        axes.set_ylim(bottom=0.0)
        axes.grid(alpha=0.3)
        if curves:
            axes.legend(fontsize="small", ncols=1 + (len(curves) - 1) // 12)
        return figure
