"""Shared pieces of the datamodules: a file-list segmentation dataset and a base DataModule."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchdata.stateful_dataloader import StatefulDataLoader
from torchvision import tv_tensors

from lit_ppool.training.data.checks import (
    IGNORE_INDEX,
    BadSampleError,
    BadSampleLog,
    BadSampleWarning,
    DatasetRootError,
    UnreadableFileError,
    check_labels,
    check_policy,
    find_missing_files,
    format_values,
    invalid_raw_labels,
    load_or_skip,
)
from lit_ppool.training.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transforms, pad_collate, train_transforms
from lit_ppool.training.errors import ConfigError

__all__ = ["IGNORE_INDEX", "SegmentationDataModule", "SegmentationFileDataset", "Sample", "check_batch_labels", "check_layout", "label_lut"]

Sample = tuple[Path, Path | None, str]
"""``(image path, mask path or None, name)`` of one sample."""


def label_lut(mapping: dict[int, int], default: int = IGNORE_INDEX, valid: Sequence[int] | None = None) -> np.ndarray:
    """A 256-entry lookup table (int16) that maps raw label values to train ids.

    Raw values not in ``mapping`` map to ``default`` if they are in ``valid`` (or if ``valid`` is
    None) and to ``-1`` otherwise: a value the dataset never uses, reported as a bad sample.
    """
    lut = np.full(256, default if valid is None else -1, dtype=np.int16)
    if valid is not None:
        lut[list(valid)] = default
    for raw, train_id in mapping.items():
        lut[raw] = train_id
    return lut


def check_layout(root: str | Path, required: Sequence[str], layout: str, name: str, url: str) -> Path:
    """Return ``root`` as a Path, or raise if one of the ``required`` entries is missing under it.

    Raises:
        DatasetRootError: (a ``ConfigError`` and a ``FileNotFoundError``) naming the missing entry,
            the expected layout and the download page.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetRootError(
            f"Expected argument `root` to be a {name} root with this layout:\n{layout}\n"
            f"but got {str(root)!r}, which {'is not a folder' if root.exists() else 'does not exist'}. "
            f"Download {name} from {url} and pass the folder that holds it as `root`."
        )
    for entry in required:
        if not (root / entry).exists():
            raise DatasetRootError(
                f"Expected argument `root` to be a {name} root with this layout:\n{layout}\n"
                f"but got {str(root)!r}, where {entry!r} is missing. Download {name} from {url} "
                f"and pass the folder that holds it as `root`."
            )
    return root


class SegmentationFileDataset(Dataset):
    """Image/mask pairs read from files, labels mapped to train ids and checked.

    Each item is ``{"image": tv_tensors.Image (uint8, 3xHxW), "mask": tv_tensors.Mask
    (HxW) or absent, "name": str}`` after ``transforms``.

    A bad sample raises a :class:`~lit_ppool.training.data.checks.BadSampleError` naming the
    file and the problem: a missing or undecodable file (:class:`UnreadableFileError`, also an
    ``OSError``), a label image that is not single-channel or whose size differs from its
    image's, a raw label value the dataset does not use (``-1`` in ``label_lut``), or a label
    outside ``[0, num_classes)`` other than ``ignore_index``. With ``on_bad_sample="skip"`` it is
    recorded instead (see :mod:`lit_ppool.training.data.checks`); ``substitute_bad`` returns the
    next good sample in its place (training), otherwise a record that the collate drops.

    Args:
        samples: ``(image path, mask path or None, name)`` triples.
        num_classes: Number of classes; labels must be in ``[0, num_classes)`` or ``ignore_index``.
        label_lut: Optional 256-entry table mapping raw mask values to train ids, ``-1`` for
            invalid raw values (see :func:`label_lut`).
        transforms: A joint transform applied to the sample dict.
        ignore_index: Label of ignored pixels.
        on_bad_sample: ``"raise"`` or ``"skip"``.
        substitute_bad: With ``"skip"``, return the next good sample in place of a bad one.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        num_classes: int,
        label_lut: np.ndarray | None = None,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        ignore_index: int = IGNORE_INDEX,
        on_bad_sample: str = "raise",
        substitute_bad: bool = False,
    ) -> None:
        self.samples = list(samples)
        self.num_classes = num_classes
        self.label_lut = label_lut
        self.transforms = transforms
        self.ignore_index = ignore_index
        self.on_bad_sample = check_policy(on_bad_sample)
        self.substitute_bad = substitute_bad

    def __len__(self) -> int:
        return len(self.samples)

    @staticmethod
    def _open(path: Path, mode: str | None, what: str) -> Image.Image:
        try:
            with Image.open(path) as image:
                return image.convert(mode) if mode else image.copy()
        except FileNotFoundError as err:
            raise UnreadableFileError(f"Missing {what}.", path) from err
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as err:
            raise UnreadableFileError(f"Could not read {what} (a corrupt, truncated or non-image file?): {err}", path) from err

    def __getitem__(self, index: int) -> dict[str, Any]:
        if self.on_bad_sample == "raise":
            return self._load(index)
        return load_or_skip(self._load, index, len(self), self.substitute_bad)

    def _load(self, index: int) -> dict[str, Any]:
        image_path, mask_path, name = self.samples[index]
        image = self._open(image_path, "RGB", f"image {str(image_path)!r}")
        sample: dict[str, Any] = {"image": tv_tensors.Image(torch.from_numpy(np.array(image)).permute(2, 0, 1)), "name": name}
        if mask_path is not None:
            labels = self.labels(mask_path, image_path, tuple(sample["image"].shape[-2:]))
            sample["mask"] = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(labels)))
        return self.transforms(sample) if self.transforms is not None else sample

    def check(self, index: int) -> None:
        """Decode sample ``index`` and check it as loading would, without the transforms.

        Raises:
            BadSampleError: As :meth:`__getitem__` with ``on_bad_sample="raise"``.
        """
        image_path, mask_path, _ = self.samples[index]
        image = self._open(image_path, "RGB", f"image {str(image_path)!r}")  # decodes every pixel, as loading does
        if mask_path is not None:
            self.labels(mask_path, image_path, (image.height, image.width))

    def read_mask(self, path: Path, image_path: Path) -> np.ndarray:
        """The raw label values of the mask file ``path`` (of ``image_path``); subclasses read other formats.

        Raises:
            BadSampleError: If the file cannot be read or holds no single-channel label map.
        """
        raw = np.array(self._open(path, None, f"label image {str(path)!r} of image {str(image_path)!r}"))
        if raw.dtype == bool:  # a 1-bit PNG: labels 0 and 1
            raw = raw.astype(np.uint8)
        if raw.ndim == 3 and (raw[..., :3] == raw[..., :1]).all():  # grey labels saved as RGB(A)
            raw = raw[..., 0]
        if raw.ndim != 2:
            raise BadSampleError(
                f"Expected a single-channel label image (class indices), but got shape {raw.shape} in {str(path)!r}. "
                "Colour masks need a colour -> class table (FolderDataModule's `palette`).",
                path,
            )
        return raw

    def labels(self, mask_path: Path, image_path: Path, size: tuple[int, int]) -> np.ndarray:
        """The train ids of ``mask_path``: read, size-checked against the image's ``size`` (H, W), mapped and range-checked.

        Raises:
            BadSampleError: Naming the file and the problem.
        """
        raw = self.read_mask(mask_path, image_path)
        if raw.shape != size:
            raise BadSampleError(
                f"Expected the label image {str(mask_path)!r} to have the size (H, W) of its image "
                f"{str(image_path)!r}, {size}, but got {raw.shape}.",
                mask_path,
            )
        labels = raw
        if self.label_lut is not None:
            labels, invalid = invalid_raw_labels(raw, self.label_lut)
            if invalid:
                raise BadSampleError(
                    f"Expected the raw label values of {str(mask_path)!r} to be in {{{format_values(np.flatnonzero(self.label_lut >= 0))}}} "
                    f"(mapped to {self.num_classes} classes and the ignore_index {self.ignore_index}), but got "
                    f"{invalid[:10]}{' ...' if len(invalid) > 10 else ''}.",
                    mask_path,
                )
            labels = labels.astype(np.uint8) if labels.max(initial=0) < 256 else labels
        try:
            check_labels(torch.from_numpy(np.ascontiguousarray(labels)), self.num_classes, self.ignore_index, source=repr(str(mask_path)))
        except ValueError as err:
            raise BadSampleError(str(err), mask_path) from None
        return labels


def check_batch_labels(batch: Any, num_classes: int, ignore_index: int | None) -> None:
    """:func:`check_labels` on ``batch["mask"]``, naming the batch's samples; for batches still on the host."""
    if isinstance(batch, dict) and isinstance(batch.get("mask"), torch.Tensor):
        names = batch.get("name", [])
        check_labels(batch["mask"], num_classes, ignore_index, source=f"the batch of {list(names)[:8]}")


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
        on_bad_sample: What a bad sample (missing or corrupt file, image/mask size mismatch,
            label out of range) does: ``"raise"`` stops with an error naming the file and the
            problem; ``"skip"`` leaves it out, and at the end of each stage a
            :class:`~lit_ppool.training.data.checks.BadSampleWarning` lists the files
            (``bad_samples`` holds them). See :mod:`lit_ppool.training.data.checks`.
        resize: Resize every image and mask of every split to this ``(h, w)`` (or square size)
            before anything else (images antialiased, masks nearest-neighbour): training,
            validation and test then run at that resolution, and the metrics are measured there.
            ``None`` keeps each image's own size.

    Raises:
        ConfigError: (a ``ValueError``) if an argument is invalid; ``lit-ppool`` reports it in one line.
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
        on_bad_sample: Literal["raise", "skip"] = "raise",
        resize: int | tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.on_bad_sample = check_policy(on_bad_sample)
        self.bad_samples = BadSampleLog()  # what "skip" left out in the current stage
        self._missing_files: dict[str, dict[int, tuple[str, str]]] = {}
        for arg, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"Expected argument `{arg}` to be an int >= 1, but got {value!r}.")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"Expected argument `num_workers` to be an int >= 0, but got {num_workers!r}.")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.train_transform = train_transforms(crop_size, base_size, scale_range, hflip, self.ignore_index, mean, std, resize)
        self.eval_transform = eval_transforms(mean, std, resize)
        self.datasets: dict[str, Dataset] = {}

    def build_dataset(self, split: str, transforms: Callable) -> Dataset:
        """Return the dataset of ``split`` (``"train"``, ``"val"`` or ``"test"``)."""
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}[stage]
        self.bad_samples.clear()
        for split in splits:
            if split not in self.datasets:
                transform = self.train_transform if split == "train" else self.eval_transform
                self.datasets[split] = self._checked(split, self.build_dataset(split, transform))
            self.bad_samples.record(self._missing_files.get(split, {}).values())

    def _checked(self, split: str, dataset: Dataset) -> Dataset:
        """Apply the bad-sample policy to a file dataset; find its missing files now (one stat per file)."""
        if not isinstance(dataset, SegmentationFileDataset):
            return dataset
        dataset.on_bad_sample = self.on_bad_sample
        dataset.substitute_bad = split == "train"  # batches keep their size; DDP processes stay in step
        missing = find_missing_files(dataset.samples)
        if missing and (self.on_bad_sample == "raise" or len(missing) == len(dataset)):  # all missing: a wrong root
            problems = [problem for _, problem in missing.values()]
            raise UnreadableFileError(
                f"Expected every file of the {split} split to exist, but {len(missing)} of {len(dataset)} samples "
                f"miss one: {' '.join(problems[:3])}{' ...' if len(problems) > 3 else ''} Restore them, or pass "
                f"on_bad_sample='skip' to leave these samples out.",
                next(iter(missing.values()))[0],
            )
        if missing:
            dataset.samples = [sample for index, sample in enumerate(dataset.samples) if index not in missing]
            self._missing_files[split] = missing
        return dataset

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Collect the records of skipped bad samples that the batch carries (from any worker process), and
        check its labels while they are still on the host (no device synchronisation in the training step)."""
        if isinstance(batch, dict) and "skipped" in batch:
            self.bad_samples.record(batch.pop("skipped"))
        check_batch_labels(batch, self.num_classes, self.ignore_index)
        return batch

    def teardown(self, stage: str) -> None:
        """Report the bad samples skipped during ``stage`` (each process its own)."""
        report = self.bad_samples.report(stage)
        if report is not None:
            warnings.warn(report, BadSampleWarning, stacklevel=2)

    def _loader(self, split: str, shuffle: bool = False) -> DataLoader:
        # stateful: Lightning saves the loader's position in checkpoints, so a mid-epoch resume continues exactly
        return StatefulDataLoader(
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
