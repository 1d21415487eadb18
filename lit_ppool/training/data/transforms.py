"""Joint image/mask transforms (torchvision.transforms.v2) and the padding collate function."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

from lit_ppool.training.data.checks import IGNORE_INDEX
from lit_ppool.training.errors import ConfigError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "train_transforms", "eval_transforms", "pad_collate"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _to_tensors(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [
        v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]


def _resize(resize: int | tuple[int, int] | None) -> list[v2.Transform]:
    """The fixed resize of every split: images antialiased, masks nearest-neighbour (``v2`` does so for a ``Mask``)."""
    if resize is None:
        return []
    size = [resize, resize] if isinstance(resize, int) else list(resize)
    if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size):
        raise ConfigError(f"Expected argument `resize` to be an int or (height, width) of ints >= 1, or None, but got {resize!r}.")
    return [v2.Resize(size, antialias=True)]


def train_transforms(
    crop_size: int | tuple[int, int],
    base_size: int | tuple[int, int] | None = None,
    scale_range: tuple[float, float] = (0.5, 2.0),
    hflip: bool = True,
    ignore_index: int = IGNORE_INDEX,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    resize: int | tuple[int, int] | None = None,
) -> v2.Compose:
    """Training augmentation applied jointly to ``{"image": Image, "mask": Mask}`` samples.

    An optional fixed resize (``resize``, as in evaluation), random scale (the image is
    resized to fit ``base_size`` times a factor drawn from ``scale_range``, masks with
    nearest-neighbour), random crop of ``crop_size`` (padding the image with 0 and the mask
    with ``ignore_index`` where it is smaller), random horizontal flip, then conversion to
    float32 image / int64 mask and normalisation.

    Args:
        crop_size: Training crop, int or ``(h, w)``; a multiple of 32 for smp models.
        base_size: Reference size of the random scale; ``None`` scales relative to ``crop_size``.
        scale_range: ``(low, high)`` scale factors.
        hflip: Whether to flip horizontally with probability 0.5.
        ignore_index: Mask value for padded pixels.
        mean: Normalisation mean (RGB, of images in [0, 1]).
        std: Normalisation standard deviation.
        resize: Resize every image to this ``(h, w)`` (or square size) first; ``None`` keeps its size.

    Raises:
        ConfigError: (a ``ValueError``) if ``scale_range`` is not an increasing pair of positive numbers
            or ``resize`` is not a size.
    """
    low, high = scale_range
    if not 0 < low <= high:
        raise ConfigError(f"Expected argument `scale_range` to be (low, high) with 0 < low <= high, but got {scale_range}.")
    crop = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    base = crop if base_size is None else ((base_size, base_size) if isinstance(base_size, int) else tuple(base_size))
    steps: list[v2.Transform] = _resize(resize)
    if (low, high) != (1.0, 1.0):
        steps.append(v2.ScaleJitter(target_size=base, scale_range=(low, high), antialias=True))
    steps.append(v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: ignore_index}))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps + _to_tensors(mean, std))


def eval_transforms(
    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD, resize: int | tuple[int, int] | None = None
) -> v2.Compose:
    """Evaluation transform: full resolution (or the fixed ``resize``), float32 image / int64 mask, normalised."""
    return v2.Compose(_resize(resize) + _to_tensors(mean, std))


def pad_collate(batch: list[dict[str, Any]], ignore_index: int = IGNORE_INDEX, size_divisor: int = 32) -> dict[str, Any]:
    """Stack samples of different sizes, padding bottom/right to a common multiple of ``size_divisor``.

    Images are padded with 0 (the mean after normalisation) and masks with ``ignore_index``,
    so padding never counts in the loss or the metrics. The batch keeps each sample's
    original ``size`` (h, w) and ``name`` so predictions can be cropped back and saved.

    Bad samples skipped by the dataset (``on_bad_sample="skip"``, items without ``"image"``)
    are dropped; their ``(path, problem)`` records, and those of samples that replaced a bad
    one, are gathered under ``"skipped"``. If every sample was bad the batch is empty (N = 0).

    Returns:
        ``{"image": (N, 3, H, W) float, "mask": (N, H, W) int64 (if present), "size": (N, 2)
        int64, "name": list[str]}``, plus ``"skipped": list[(path, problem)]`` if any.
    """
    skipped = [record for sample in batch for record in sample.get("skipped", ())]
    batch = [sample for sample in batch if "image" in sample]
    if not batch:
        empty = {"image": torch.zeros(0, 3, size_divisor, size_divisor), "mask": torch.zeros(0, size_divisor, size_divisor, dtype=torch.int64)}
        return {**empty, "size": torch.zeros(0, 2, dtype=torch.int64), "name": [], "skipped": skipped}
    heights = [sample["image"].shape[-2] for sample in batch]
    widths = [sample["image"].shape[-1] for sample in batch]
    height = -(-max(heights) // size_divisor) * size_divisor
    width = -(-max(widths) // size_divisor) * size_divisor
    out: dict[str, Any] = {
        "image": torch.stack(
            [F.pad(s["image"].as_subclass(torch.Tensor), (0, width - w, 0, height - h)) for s, h, w in zip(batch, heights, widths)]
        ),
        "size": torch.tensor(list(zip(heights, widths)), dtype=torch.int64),
        "name": [s.get("name", str(i)) for i, s in enumerate(batch)],
    }
    if all(sample.get("mask") is not None for sample in batch):
        out["mask"] = torch.stack(
            [
                F.pad(s["mask"].as_subclass(torch.Tensor), (0, width - w, 0, height - h), value=ignore_index)
                for s, h, w in zip(batch, heights, widths)
            ]
        )
    if skipped:
        out["skipped"] = skipped
    return out
