"""Tiny datasets written in real on-disk layouts: image files and CrackForest's Berkeley ``.seg`` labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: Path, size=(24, 40), seed=0) -> None:
    """A random RGB image of ``size`` (H, W), in the format of the file suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def write_seg(path: Path, segments: np.ndarray) -> None:
    """A Berkeley .seg file as CrackForest ships it: header, ``data``, then one run per row and segment."""
    height, width = segments.shape
    lines = [f"width {width}", f"height {height}", f"segments {segments.max() + 1}", "gray 1", "format ascii cr", "data"]
    for row in range(height):
        start = 0
        for col in range(1, width + 1):
            if col == width or segments[row, col] != segments[row, start]:
                lines.append(f"{segments[row, start]} {row} {start} {col - 1}")
                start = col
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def crack_segments(size=(16, 24), seed=0) -> np.ndarray:
    """Background 0, a 1 px crack (1) across the image, and a region enclosed by cracks (2)."""
    segments = np.zeros(size, dtype=np.int64)
    segments[size[0] // 2, :] = 1
    segments[: size[0] // 2, (seed % 5) + 2] = 1
    segments[1:3, 10:14] = 2
    return segments


def crackforest_clone(root: Path, size=(16, 24), extras=2) -> Path:
    """The public repository's layout: all 118 labelled images, plus unlabelled extras without a .seg."""
    for i in range(1, 119):
        write_image(root / "image" / f"{i:03d}.jpg", size=size, seed=i)
        write_seg(root / "seg" / f"{i:03d}.seg", crack_segments(size, i))
    for i in range(119, 119 + extras):
        write_image(root / "image" / f"{i:03d}.jpg", size=size, seed=i)
    return root
