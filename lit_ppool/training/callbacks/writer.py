"""Write predicted label maps as colour-palette PNG files."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image

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

    Args:
        output_dir: Folder for the PNG files (created if missing).
        palette: Flat ``[r, g, b, ...]`` palette; default :func:`voc_palette`.
    """

    def __init__(self, output_dir: str | Path = "predictions", palette: Sequence[int] | None = None) -> None:
        super().__init__(write_interval="batch")
        self.written = 0
        """PNG files written by this process in the current ``predict``."""
        self.output_dir = Path(output_dir)
        self.palette = list(palette) if palette is not None else voc_palette()
        if len(self.palette) % 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in self.palette):
            raise ValueError("Expected argument `palette` to be a flat list of r, g, b ints in [0, 255], but got another value.")

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
        self.output_dir.mkdir(parents=True, exist_ok=True)
        for mask, name in zip(prediction["masks"], prediction["names"]):
            image = Image.fromarray(mask.cpu().numpy().astype(np.uint8))  # "L", made "P" by putpalette
            image.putpalette(self.palette)
            image.save(self.output_dir / f"{Path(name).stem}.png")
            self.written += 1

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.written = 0

    def on_predict_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Say where the masks went (the count is rank zero's share under DDP)."""
        rank_zero_info(f"lit_ppool: wrote {self.written} palette PNG mask(s) to {self.output_dir}")
