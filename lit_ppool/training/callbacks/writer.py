"""Write predicted label maps as colour-palette PNG files, and the adaptive P-pooling layers' alpha maps beside them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from lit_ppool.training.alpha_maps import ALPHA_COLORMAP, AlphaMapCapture, colorize, upsampled_mean

__all__ = ["PaletteMaskWriter", "voc_palette"]


def voc_palette(num_colors: int = 256) -> list[int]:
    """The PASCAL VOC colour map (class ``i`` -> RGB from the bits of ``i``) as a flat PIL palette."""
    palette = []
    for index in range(num_colors):
        red = green = blue = 0
        value = index
        for shift in range(7, -1, -1):
            red |= (value & 1) << shift
            green |= ((value >> 1) & 1) << shift
            blue |= ((value >> 2) & 1) << shift
            value >>= 3
        palette += [red, green, blue]
    return palette


class PaletteMaskWriter(BasePredictionWriter):
    """Save each predicted mask as ``<output_dir>/<image name>.png``, a palette ("P" mode) PNG.

    Pixel values are the class indices (read back with ``np.array(Image.open(path))``); the
    palette is PASCAL VOC's, so the files display in colour and VOC masks match the
    official colours. Expects ``predict_step`` to return ``{"masks": [(H, W) uint8 tensor,
    ...], "names": [str, ...]}`` as :class:`~lit_ppool.PPoolSegmentationModule` does.

    With ``alpha_maps=True`` it also writes, for every image and every adaptive P-pooling layer
    (:class:`~lit_ppool.AdaptivePPool2d`, named as in :func:`~lit_ppool.training.alpha_maps.adaptive_layers`),
    the alpha map that the layer pooled the image with: ``<output_dir>/alpha/<layer>/<image name>.png``,
    an RGB PNG of the mask's size. Its pixels are the mean over channels of the layer's alpha,
    upsampled (nearest) to the input batch's size and cropped as the mask is, coloured with
    :data:`~lit_ppool.training.alpha_maps.ALPHA_COLORMAP` over the layer's fixed range
    ``[alpha_min, alpha_max]`` (dark: average-like, bright: max-like); the PNG's text chunks
    hold ``layer``, ``alpha_min``, ``alpha_max`` and ``colormap``. The maps are captured by
    forward hooks during ``predict`` (:class:`~lit_ppool.training.alpha_maps.AlphaMapCapture`),
    at the cost of each layer's side branch once more. A model without adaptive layers gets
    a warning and the masks only.

    From the command line (the masks and maps go to the checkpoint's run folder,
    ``<run>/predictions/<checkpoint name>/``, unless ``--trainer.callbacks.output_dir`` says otherwise)::

        lit-ppool predict --config cfg.yaml --ckpt_path last --trainer.callbacks+=lit_ppool.PaletteMaskWriter \\
            --trainer.callbacks.alpha_maps=true

    Args:
        output_dir: Folder for the PNG files (created if missing). ``None``: the folder that
            ``lit-ppool predict`` chooses (above), or ``<trainer.default_root_dir>/predictions``.
        palette: Flat ``[r, g, b, ...]`` palette; default :func:`voc_palette`.
        alpha_maps: Also write the adaptive layers' alpha maps.
    """

    def __init__(
        self, output_dir: str | Path | None = None, palette: Sequence[int] | None = None, alpha_maps: bool = False
    ) -> None:
        super().__init__(write_interval="batch")
        self.written = 0
        """PNG mask files written by this process in the current ``predict``."""
        self.alpha_maps_written = 0
        """Alpha map PNG files written by this process in the current ``predict``."""
        self.output_dir = None if output_dir is None else Path(output_dir)
        self.folder: Path | None = None
        """Where the current (or last) ``predict`` writes: ``output_dir``, or its default."""
        self.palette = list(palette) if palette is not None else voc_palette()
        if len(self.palette) % 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in self.palette):
            raise ValueError("Expected argument `palette` to be a flat list of r, g, b ints in [0, 255], but got another value.")
        if not isinstance(alpha_maps, bool):
            raise ValueError(f"Expected argument `alpha_maps` to be True or False, but got {alpha_maps!r}.")
        self.alpha_maps = alpha_maps
        self._capture: AlphaMapCapture | None = None

    def write_on_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        prediction: Any,
        batch_indices: Sequence[int] | None,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int,
    ) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for mask, name in zip(prediction["masks"], prediction["names"]):
            image = Image.fromarray(mask.cpu().numpy().astype(np.uint8))  # "L", made "P" by putpalette
            image.putpalette(self.palette)
            image.save(self.folder / f"{Path(name).stem}.png")
            self.written += 1
        if self._capture is not None and prediction["masks"]:
            self._write_alpha_maps(prediction, batch["image"].shape[-2:])

    def _write_alpha_maps(self, prediction: Any, size: Sequence[int]) -> None:
        """One RGB PNG per image and adaptive layer, from the maps captured in this batch's forward."""
        for layer_name, alpha in self._capture.maps.items():
            layer = self._capture.layers[layer_name]
            folder = self.folder / "alpha" / layer_name
            folder.mkdir(parents=True, exist_ok=True)
            info = PngInfo()
            for key, value in (("layer", layer_name), ("alpha_min", f"{layer.alpha_min:g}"),
                               ("alpha_max", f"{layer.alpha_max:g}"), ("colormap", ALPHA_COLORMAP)):  # fmt: skip
                info.add_text(key, value)
            for values, mask, name in zip(upsampled_mean(alpha, size), prediction["masks"], prediction["names"]):
                height, width = mask.shape[-2:]
                rgb = colorize(values[:height, :width], layer.alpha_min, layer.alpha_max)
                Image.fromarray(rgb).save(folder / f"{Path(name).stem}.png", pnginfo=info)
                self.alpha_maps_written += 1
        self._capture.maps.clear()

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.written = self.alpha_maps_written = 0
        self.folder = self.output_dir or Path(trainer.default_root_dir) / "predictions"
        if not self.alpha_maps:
            return
        self._capture = AlphaMapCapture(pl_module)
        if not self._capture.layers:
            self._remove_capture()
            rank_zero_warn(
                f"`PaletteMaskWriter(alpha_maps=True)` found no adaptive P-pooling layer (lit_ppool.AdaptivePPool2d) in "
                f"{type(pl_module).__name__}: only the masks are written. Alpha maps come from models trained with "
                "pooling='p_adaptive'."
            )

    def on_predict_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._capture is not None:
            self._capture.maps.clear()  # a batch of skipped samples runs no forward: no maps of the previous one

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Say where the masks (and alpha maps) went (the counts are rank zero's share under DDP)."""
        self._remove_capture()
        rank_zero_info(f"lit_ppool: wrote {self.written} palette PNG mask(s) to {self.folder}")
        if self.alpha_maps_written:
            rank_zero_info(f"lit_ppool: wrote {self.alpha_maps_written} alpha map PNG(s) to {self.folder / 'alpha'}")

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._remove_capture()

    def _remove_capture(self) -> None:
        if self._capture is not None:
            self._capture.remove()
            self._capture = None
