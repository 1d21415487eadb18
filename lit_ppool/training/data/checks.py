"""Bad input of the file datasets: errors that name the file and the problem, and the opt-in skip policy.

Policy ``on_bad_sample`` of :class:`~lit_ppool.training.data.SegmentationDataModule`:

* ``"raise"`` (default): the first bad sample stops the run with a :class:`BadSampleError`
  naming the file and the problem (also from DataLoader worker processes, where PyTorch
  re-raises it in the main process with the same message).
* ``"skip"``: a bad sample is left out and recorded. In the training split the dataset
  returns the next good sample in its place, so every batch keeps its size and DDP processes
  stay in step; in the validation/test/predict splits it is dropped from its batch (metrics
  never count a sample twice; a batch may get smaller or empty, and an empty batch is
  skipped by the module). Records travel inside the batches (``batch["skipped"]``, a list of
  ``(path, problem)``), so they reach the main process whatever ``num_workers`` is; the
  datamodule collects them in ``on_before_batch_transfer`` and reports them at the end of the
  stage (``teardown``) as a :class:`BadSampleWarning`, each process for its own share of the data.

Files that are missing are found when the datasets are set up (a ``stat`` per file): they
raise at once, or with ``"skip"`` their samples are dropped from the list and reported too.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lit_ppool.training.errors import ConfigError

__all__ = [
    "BAD_SAMPLE_POLICIES",
    "IGNORE_INDEX",
    "BadSampleError",
    "BadSampleLog",
    "BadSampleWarning",
    "DatasetRootError",
    "UnreadableFileError",
    "check_labels",
    "check_policy",
    "find_missing_files",
    "format_values",
    "invalid_raw_labels",
    "load_or_skip",
]

BAD_SAMPLE_POLICIES = ("raise", "skip")

IGNORE_INDEX = 255
"""The label of ignored pixels (void, padding) in every datamodule, the loss and the metrics."""


class BadSampleError(ValueError):
    """A sample that cannot be used: unreadable or missing file, image/mask size mismatch, labels out of range.

    Args:
        message: What is wrong, naming the file.
        path: The offending file.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)


class UnreadableFileError(BadSampleError, OSError):
    """A missing, corrupt or truncated image or label file (also an ``OSError``)."""


class DatasetRootError(ConfigError, FileNotFoundError):
    """A dataset root that is missing or lacks the dataset's layout (a ``ConfigError`` and a ``FileNotFoundError``)."""


class BadSampleWarning(UserWarning):
    """Bad samples were skipped (``on_bad_sample="skip"``); the message lists the files and the problems."""


def check_policy(on_bad_sample: Any) -> str:
    """Return ``on_bad_sample`` if it is a valid policy, else raise a :class:`ConfigError` listing them."""
    if on_bad_sample not in BAD_SAMPLE_POLICIES:
        raise ConfigError(f"Expected argument `on_bad_sample` to be one of {list(BAD_SAMPLE_POLICIES)}, but got {on_bad_sample!r}.")
    return on_bad_sample


def format_values(values: Iterable[int]) -> str:
    """Sorted integers as compact ranges.

    Example:
        >>> format_values([255, 0, 1, 2, 3, 7])
        '0-3, 7, 255'
    """
    values = sorted({int(v) for v in values})
    parts: list[str] = []
    start = prev = None
    for value in values + [None]:
        if start is not None and (value is None or value != prev + 1):
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if value is not None and start is None:
            start = value
        prev = value
    return ", ".join(parts)


def find_missing_files(samples: Sequence[tuple[Path, Path | None, str]]) -> dict[int, tuple[str, str]]:
    """Samples whose image or label file does not exist: ``index -> (path, problem)``; one ``stat`` per file."""
    missing = {}
    for index, (image, mask, name) in enumerate(samples):
        if not os.path.isfile(image):
            missing[index] = (str(image), f"Missing image {str(image)!r} of sample {name!r}.")
        elif mask is not None and not os.path.isfile(mask):
            missing[index] = (str(mask), f"Missing label image {str(mask)!r} of image {str(image)!r}.")
    return missing


def load_or_skip(load: Callable[[int], dict[str, Any]], index: int, length: int, substitute: bool) -> dict[str, Any]:
    """``load(index)``, recording a bad sample instead of raising.

    With ``substitute`` the next good sample (``index + 1``, ...) is returned in place of a bad
    one, with the skipped ones under ``"skipped"``; without, a bad sample becomes
    ``{"skipped": [(path, problem)]}``, which :func:`~lit_ppool.training.data.transforms.pad_collate` drops.

    Raises:
        BadSampleError: If substituting finds no good sample at all.
    """
    skipped: list[tuple[str, str]] = []
    for offset in range(length if substitute else 1):
        try:
            sample = load((index + offset) % length)
        except BadSampleError as err:
            skipped.append((err.path or "?", str(err)))
            continue
        if skipped:
            sample["skipped"] = skipped
        return sample
    if substitute:
        raise BadSampleError(
            f"Expected at least one good sample, but all {length} samples are bad; the first: {skipped[0][1]}", skipped[0][0]
        )
    return {"skipped": skipped}


class BadSampleLog:
    """The bad samples a datamodule skipped in one stage: ``problems`` maps each file to its problem.

    ``count`` counts every time a sample was skipped (a bad training sample is met once per epoch).
    """

    def __init__(self) -> None:
        self.problems: dict[str, str] = {}
        self.count = 0

    def __len__(self) -> int:
        return len(self.problems)

    def record(self, records: Iterable[tuple[str, str]]) -> None:
        """Add ``(path, problem)`` records."""
        for path, problem in records:
            self.problems.setdefault(str(path), str(problem))
            self.count += 1

    def clear(self) -> None:
        self.problems.clear()
        self.count = 0

    def report(self, stage: str, limit: int = 20) -> str | None:
        """The end-of-stage summary, or None if nothing was skipped."""
        if not self.problems:
            return None
        stage = getattr(stage, "value", stage)  # Lightning passes a TrainerFn
        lines = [f"  {problem}" for problem in list(self.problems.values())[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more (all in `datamodule.bad_samples.problems`)")
        return (
            f"lit_ppool: on_bad_sample='skip' left out {len(self.problems)} bad sample(s) during {stage} "
            f"({self.count} time(s) in all):\n" + "\n".join(lines)
        )


def invalid_raw_labels(raw: np.ndarray, lut: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Map ``raw`` through ``lut`` (``-1`` marks invalid raw values); return the labels and the invalid raw values."""
    if raw.size and (raw.min() < 0 or raw.max() >= len(lut)):
        outside = (raw < 0) | (raw >= len(lut))
        return raw, np.unique(raw[outside]).tolist()
    labels = lut[raw]
    invalid = labels < 0
    return labels, (np.unique(raw[invalid]).tolist() if invalid.any() else [])


def check_labels(target: Tensor, num_classes: int, ignore_index: int | None, source: str = "target") -> None:
    """Raise if ``target`` holds a label outside ``[0, num_classes)`` other than ``ignore_index``.

    Args:
        target: Integer label map of any shape.
        num_classes: Number of classes.
        ignore_index: The label that marks pixels to ignore, or ``None``.
        source: What ``target`` came from (a file name, a batch), named in the error.

    Raises:
        ValueError: Naming the offending values and ``source``.
    """
    invalid = (target < 0) | (target >= num_classes)
    if ignore_index is not None:
        invalid &= target != ignore_index
    if bool(invalid.any()):
        values = torch.unique(target[invalid]).tolist()
        raise ValueError(
            f"Expected labels of {source} to be in [0, {num_classes}) or the ignore_index {ignore_index}, "
            f"but got {values[:10]}{' ...' if len(values) > 10 else ''}. Check the dataset's label mapping "
            f"and `num_classes`/`ignore_index`."
        )
