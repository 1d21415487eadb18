"""Shared pieces of the datamodules: a file-list segmentation dataset and a base DataModule."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors

from lit_ppool.training.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transforms, pad_collate, train_transforms
from lit_ppool.training.metrics import check_labels

__all__ = ["SegmentationDataModule", "SegmentationFileDataset", "Sample", "check_layout", "label_lut"]

IGNORE_INDEX = 255

Sample = tuple[Path, Optional[Path], str]
"""``(image path, mask path or None, name)`` of one sample."""


def label_lut(mapping: dict[int, int], default: int = IGNORE_INDEX) -> np.ndarray:
    """A 256-entry lookup table that maps raw label values to train ids (``default`` elsewhere)."""
    lut = np.full(256, default, dtype=np.uint8)
    for raw, train_id in mapping.items():
        lut[raw] = train_id
    return lut


def check_layout(root: str | Path, required: Sequence[str], layout: str, name: str, url: str) -> Path:
    """Return ``root`` as a Path, or raise if one of the ``required`` entries is missing under it.

    Raises:
        FileNotFoundError: Naming the missing entry, the expected layout and the download page.
    """
    root = Path(root).expanduser()
    for entry in required:
        if not (root / entry).exists():
            raise FileNotFoundError(
                f"Expected argument `root` to be a {name} root with this layout:\n{layout}\n"
                f"but got {str(root)!r}, where {entry!r} is missing. Download {name} from {url} "
                f"and pass the folder that holds it as `root`."
            )
    return root


class SegmentationFileDataset(Dataset):
    """Image/mask pairs read from files, labels mapped to train ids and checked.

    Each item is ``{"image": tv_tensors.Image (uint8, 3xHxW), "mask": tv_tensors.Mask
    (HxW) or absent, "name": str}`` after ``transforms``.

    Args:
        samples: ``(image path, mask path or None, name)`` triples.
        num_classes: Number of classes; labels must be in ``[0, num_classes)`` or ``ignore_index``.
        label_lut: Optional 256-entry table mapping raw mask values to train ids.
        transforms: A joint transform applied to the sample dict.
        ignore_index: Label of ignored pixels.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        num_classes: int,
        label_lut: np.ndarray | None = None,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        self.samples = list(samples)
        self.num_classes = num_classes
        self.label_lut = label_lut
        self.transforms = transforms
        self.ignore_index = ignore_index

    def __len__(self) -> int:
        return len(self.samples)

    @staticmethod
    def _open(path: Path, mode: str | None) -> Image.Image:
        try:
            with Image.open(path) as image:
                return image.convert(mode) if mode else image.copy()
        except (OSError, ValueError) as err:
            raise OSError(f"Could not read {str(path)!r}: {err}") from err

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path, mask_path, name = self.samples[index]
        image = self._open(image_path, "RGB")
        sample: dict[str, Any] = {"image": tv_tensors.Image(torch.from_numpy(np.array(image)).permute(2, 0, 1)), "name": name}
        if mask_path is not None:
            raw = np.array(self._open(mask_path, None))
            if raw.ndim != 2:
                raise ValueError(f"Expected a single-channel label image, but got shape {raw.shape} in {str(mask_path)!r}.")
            labels = self.label_lut[raw] if self.label_lut is not None else raw
            mask = torch.from_numpy(np.ascontiguousarray(labels))
            if mask.shape != sample["image"].shape[-2:]:
                raise ValueError(
                    f"Expected the label image {str(mask_path)!r} to have the size of its image "
                    f"{tuple(sample['image'].shape[-2:])}, but got {tuple(mask.shape)}."
                )
            check_labels(mask, self.num_classes, self.ignore_index, source=repr(str(mask_path)))
            sample["mask"] = tv_tensors.Mask(mask)
        return self.transforms(sample) if self.transforms is not None else sample


class SegmentationDataModule(L.LightningDataModule):
    """Base DataModule: transforms, loaders and the dataset description shared by all datasets.

    Subclasses set ``num_classes`` and ``class_names`` and implement :meth:`build_dataset`.
    The test split doubles as the predict split; predictions keep the image names.

    Args:
        batch_size: Training batch size (per process).
        eval_batch_size: Validation/test/predict batch size; images of different sizes are
            padded to a common multiple of 32 with ignored labels.
        num_workers: DataLoader worker processes.
        pin_memory: Pin host memory for faster transfers to the GPU.
        crop_size: Training crop size (a multiple of 32).
        base_size: Reference size of the random scale (``None``: the crop size).
        scale_range: Random scale factors ``(low, high)``.
        hflip: Random horizontal flips in training.
        mean: Normalisation mean.
        std: Normalisation standard deviation.
    """

    num_classes: int
    class_names: tuple[str, ...]
    ignore_index: int = IGNORE_INDEX

    def __init__(
        self,
        batch_size: int = 8,
        eval_batch_size: int = 1,
        num_workers: int = 4,
        pin_memory: bool = True,
        crop_size: int | tuple[int, int] = 512,
        base_size: int | tuple[int, int] | None = None,
        scale_range: tuple[float, float] = (0.5, 2.0),
        hflip: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        for arg, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Expected argument `{arg}` to be an int >= 1, but got {value!r}.")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"Expected argument `num_workers` to be an int >= 0, but got {num_workers!r}.")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.train_transform = train_transforms(crop_size, base_size, scale_range, hflip, self.ignore_index, mean, std)
        self.eval_transform = eval_transforms(mean, std)
        self.datasets: dict[str, Dataset] = {}

    def build_dataset(self, split: str, transforms: Callable) -> Dataset:
        """Return the dataset of ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}[stage]
        for split in splits:
            if split not in self.datasets:
                transform = self.train_transform if split == "train" else self.eval_transform
                self.datasets[split] = self.build_dataset(split, transform)

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            shuffle=shuffle,
            drop_last=shuffle,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=functools.partial(pad_collate, ignore_index=self.ignore_index),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
