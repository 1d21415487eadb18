"""The alpha maps of adaptive P-pooling layers: find the layers, capture the maps a forward pass
pools with, summarise them and draw them.

An :class:`~lit_ppool.AdaptivePPool2d` has no alpha of its own: it predicts one for every output
window and channel (:meth:`~lit_ppool.AdaptivePPool2d.alpha_map`). The training code watches those
maps through this module: :class:`~lit_ppool.AlphaMonitor` (statistics and overlays of a fixed
validation batch), :class:`~lit_ppool.PaletteMaskWriter` (one PNG per image and layer in
``predict``) and :class:`~lit_ppool.PPoolSegmentationModule` (mean, min and max over a
``validate`` or ``test`` epoch, for the run record).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_ppool.layers.adaptive import AdaptivePPool2d
from lit_ppool.layers.same import SamePadPool2d

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "ALPHA_COLORMAP",
    "ALPHA_PERCENTILES",
    "AlphaMapCapture",
    "AlphaMapStats",
    "adaptive_layers",
    "alpha_map_figure",
    "alpha_map_of",
    "colorize",
    "log_names",
    "map_statistics",
    "upsampled_mean",
]

ALPHA_PERCENTILES = (5, 25, 50, 75, 95)
"""The percentiles of the predicted alpha that :func:`map_statistics` gives (keys ``p5`` ... ``p95``)."""
ALPHA_COLORMAP = "magma"
"""The matplotlib colour map of the drawn alpha maps: dark is the layer's ``alpha_min``, bright its ``alpha_max``."""


def log_names(found: Iterable[tuple[str, nn.Module]]) -> dict[str, nn.Module]:
    """Qualified module names -> log names: dots replaced by underscores, a leading ``model.`` that every name has dropped.

    Example:
        >>> list(log_names([("model.encoder.maxpool", nn.Identity())]))
        ['encoder_maxpool']
    """
    found = list(found)
    if found and all(name.startswith("model.") for name, _ in found):
        found = [(name[len("model.") :], layer) for name, layer in found]
    return {name.replace(".", "_"): layer for name, layer in found}


def adaptive_layers(module: nn.Module) -> dict[str, AdaptivePPool2d]:
    """The adaptive P-pooling layers (:class:`~lit_ppool.AdaptivePPool2d`) of ``module`` under their log names.

    Named as :func:`~lit_ppool.training.callbacks.alpha_monitor.alpha_layers` names the P-pooling
    layers (:func:`log_names`); a layer wrapped for "same" padding is named with its ``pool`` suffix.

    Example:
        >>> list(adaptive_layers(nn.Sequential(nn.Conv2d(3, 3, 1), AdaptivePPool2d(2, num_channels=3))))
        ['1']
    """
    return log_names((name, layer) for name, layer in module.named_modules() if isinstance(layer, AdaptivePPool2d))


def alpha_map_of(module: nn.Module, input: Tensor) -> Tensor:
    """The alpha map that ``module`` (an adaptive layer, or a :class:`~lit_ppool.layers.same.SamePadPool2d` around one) pools ``input`` with."""
    if isinstance(module, SamePadPool2d):
        padding, (crop_h, crop_w) = module.same_padding_for(input)
        return module.pool.alpha_map(input, padding, True)[..., crop_h:, crop_w:]
    return module.alpha_map(input)


class AlphaMapCapture:
    """Capture the alpha map that every adaptive P-pooling layer of a model pools with, as the model runs.

    Forward hooks on the layers (on the :class:`~lit_ppool.layers.same.SamePadPool2d` around a wrapped one,
    with its "same" padding) compute the layer's :meth:`~lit_ppool.AdaptivePPool2d.alpha_map` of
    its input again, without gradient, at every call: one output-sized map per layer and call,
    the cost of the layer's side branch. The hooks stay until :meth:`remove` (or the end of a
    ``with`` block).

    Args:
        module: The model whose adaptive layers (:func:`adaptive_layers`) are watched.
        on_map: Called with the layer's log name and the detached map at every call.

    Example:
        >>> model = nn.Sequential(AdaptivePPool2d(2, num_channels=3))
        >>> with AlphaMapCapture(model) as capture:
        ...     _ = model(torch.rand(1, 3, 8, 8))
        >>> capture.maps["0"].shape
        torch.Size([1, 3, 4, 4])
    """

    def __init__(self, module: nn.Module, on_map: Callable[[str, Tensor], Any] | None = None) -> None:
        self.layers = adaptive_layers(module)
        """Log name -> adaptive layer."""
        self.maps: dict[str, Tensor] = {}
        """Log name -> the map of the layer's last call, ``(N, C, H_out, W_out)`` (``(C, H_out, W_out)`` unbatched)."""
        self.on_map = on_map
        wrappers = {id(wrapper.pool): wrapper for wrapper in module.modules() if isinstance(wrapper, SamePadPool2d)}
        self._handles = [
            wrappers.get(id(layer), layer).register_forward_hook(functools.partial(self._hook, name), with_kwargs=True)
            for name, layer in self.layers.items()
        ]

    def _hook(self, name: str, module: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> None:
        input = args[0] if args else kwargs["input"]
        with torch.no_grad():
            alpha = alpha_map_of(module, input).detach()
        self.maps[name] = alpha
        if self.on_map is not None:
            self.on_map(name, alpha)

    def remove(self) -> None:
        """Remove the hooks (the captured :attr:`maps` stay)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> AlphaMapCapture:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.remove()


class AlphaMapStats:
    """Running mean, min and max of the alpha maps of named layers (over every window, channel and image).

    The totals stay on ``device`` (no host synchronisation per update) and have a row for every
    layer from the start, so that processes that saw different batches (or none) gather tensors of
    the same shape.

    Args:
        names: The layers' log names.
        device: Where the totals are kept.

    Example:
        >>> stats = AlphaMapStats(["pool"])
        >>> stats.update("pool", torch.tensor([1.0, 2.0, 6.0]))
        >>> stats.summary()
        {'pool': {'mean': 3.0, 'min': 1.0, 'max': 6.0}}
    """

    def __init__(self, names: Sequence[str], device: torch.device | str | None = None) -> None:
        self.names = list(names)
        dtype = torch.float32 if torch.device(device or "cpu").type == "mps" else torch.float64  # mps has no float64
        empty = torch.tensor([0.0, 0.0, float("inf"), float("-inf")], dtype=dtype, device=device)
        self._rows = [empty] * len(self.names)  # no in-place updates: the rows may be made in and out of inference mode

    @property
    def totals(self) -> Tensor:
        """``(layers, 4)``: sum, count, min and max per layer, in :attr:`names` order."""
        return torch.stack(self._rows) if self._rows else torch.zeros(0, 4)

    def update(self, name: str, alpha: Tensor) -> None:
        """Add every value of the map ``alpha`` of layer ``name``."""
        row = self.names.index(name)
        old, values = self._rows[row], alpha.detach().to(self._rows[row].dtype)
        self._rows[row] = torch.stack([
            old[0] + values.sum(), old[1] + values.numel(), torch.minimum(old[2], values.min()),
            torch.maximum(old[3], values.max()),
        ])  # fmt: skip

    def merge(self, totals: Tensor) -> None:
        """Replace the totals by the combined totals of several processes, ``(processes, layers, 4)`` (``all_gather``'s)."""
        if totals.dim() == 2:  # a single process: all_gather gives the tensor back as it is
            totals = totals.unsqueeze(0)
        merged = torch.stack([
            totals[..., 0].sum(0), totals[..., 1].sum(0), totals[..., 2].amin(0), totals[..., 3].amax(0),
        ], dim=-1)  # fmt: skip
        self._rows = list(merged.to(self._rows[0].dtype).unbind(0)) if self.names else []

    def summary(self) -> dict[str, dict[str, float]]:
        """Log name -> ``{"mean", "min", "max"}`` of every layer that saw a value."""
        summary = {}
        for name, (total, count, low, high) in zip(self.names, self.totals.tolist()):
            if count:
                summary[name] = {"mean": total / count, "min": low, "max": high}
        return summary


def map_statistics(alpha: Tensor) -> dict[str, float]:
    """The mean and the :data:`ALPHA_PERCENTILES` of every value of an alpha map (keys ``mean``, ``p5``, ...).

    Example:
        >>> map_statistics(torch.arange(101.0))
        {'mean': 50.0, 'p5': 5.0, 'p25': 25.0, 'p50': 50.0, 'p75': 75.0, 'p95': 95.0}
    """
    values = alpha.detach().float().cpu().numpy().ravel()
    percentiles = np.percentile(values, ALPHA_PERCENTILES)
    return {"mean": float(values.mean()), **{f"p{q}": float(v) for q, v in zip(ALPHA_PERCENTILES, percentiles)}}


def upsampled_mean(alpha: Tensor, size: Sequence[int]) -> Tensor:
    """``(N, C, h, w)`` alpha maps -> ``(N, H, W)``: the mean over the channels, upsampled (nearest) to ``size``.

    Nearest upsampling gives every pixel the alpha of the output window at its place, with no
    values in between that the layer never predicted.

    Example:
        >>> upsampled_mean(torch.tensor([[[[1.0, 3.0]], [[3.0, 5.0]]]]), (2, 4))
        tensor([[[2., 2., 4., 4.],
                 [2., 2., 4., 4.]]])
    """
    return F.interpolate(alpha.detach().float().mean(1, keepdim=True), size=tuple(size), mode="nearest")[:, 0]


def colorize(values: Tensor, low: float, high: float, colormap: str = ALPHA_COLORMAP) -> np.ndarray:
    """An ``(H, W)`` map as ``(H, W, 3)`` uint8 RGB through ``colormap``, over the fixed range ``[low, high]``.

    Example:
        >>> colorize(torch.tensor([[1.0, 50.0]]), 1.0, 50.0)[0].tolist()  # magma's ends
        [[0, 0, 4], [252, 253, 191]]
    """
    from matplotlib import colormaps

    scaled = ((values.detach().float().cpu() - low) / (high - low)).clamp(0.0, 1.0).numpy()
    return (colormaps[colormap](scaled)[..., :3] * 255).round().astype(np.uint8)


def _display(image: Tensor) -> np.ndarray:
    """A ``(C, H, W)`` image for display: stretched to [0, 1] (whatever its normalisation); RGB if 3 channels, else grey."""
    image = image.detach().float().cpu()
    image = (image - image.min()) / (image.max() - image.min()).clamp_min(1e-12)
    return image.permute(1, 2, 0).numpy() if image.shape[0] == 3 else image.mean(0).numpy()


def alpha_map_figure(images: Tensor, maps: Tensor, low: float, high: float, title: str) -> Figure:
    """A figure of images and their alpha maps: the images in the top row, below each its map over it in grey.

    The maps are drawn with :data:`ALPHA_COLORMAP` over the fixed range ``[low, high]`` (one colour
    bar), so figures of different steps compare. Each image is stretched to its own [0, 1] for
    display. The figure is not attached to pyplot; ``figure.savefig`` writes it.

    Args:
        images: ``(N, C, H, W)``.
        maps: ``(N, H, W)``, e.g. :func:`upsampled_mean` of a layer's alpha maps.
        low, high: The colour range, the layer's ``alpha_min`` and ``alpha_max``.
        title: The figure's title.
    """
    from matplotlib.figure import Figure

    count = images.shape[0]
    figure = Figure(figsize=(2.4 * count + 1.0, 5.0), layout="constrained")
    axes = figure.subplots(2, count, squeeze=False)
    shown = None
    for column in range(count):
        picture = _display(images[column])
        grey = picture.mean(-1) if picture.ndim == 3 else picture
        axes[0, column].imshow(picture, cmap=None if picture.ndim == 3 else "gray")
        axes[1, column].imshow(grey, cmap="gray")
        shown = axes[1, column].imshow(
            maps[column].detach().float().cpu().numpy(), cmap=ALPHA_COLORMAP, vmin=low, vmax=high, alpha=0.7
        )
        for ax in axes[:, column]:
            ax.set_axis_off()
    axes[0, 0].set_title("image", fontsize="small", loc="left")
    axes[1, 0].set_title("predicted alpha", fontsize="small", loc="left")
    figure.colorbar(shown, ax=axes[1, :].tolist(), label="alpha (low: average-like, high: max-like)", shrink=0.9)
    figure.suptitle(title, fontsize="medium")
    return figure
