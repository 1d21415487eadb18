"""A synthetic "detail" segmentation dataset, generated on the fly: thin lines, small blobs, textures."""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision import tv_tensors

from lit_ppool.training.data.base import SegmentationDataModule
from lit_ppool.training.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from lit_ppool.training.errors import ConfigError

__all__ = [
    "SYNTHETIC_CLASSES",
    "TEXTURE_CLASSES",
    "SyntheticDetailDataModule",
    "SyntheticDetailDataset",
    "SyntheticTexturesDataModule",
    "SyntheticTexturesDataset",
]

SYNTHETIC_CLASSES = ("background", "thin_line", "small_blob", "stripes", "dots")
TEXTURE_CLASSES = ("background", "hatch", "speckle", "stripes", "dots")
_SPLIT_ID = {"train": 0, "val": 1, "test": 2}


def _uniform(gen: torch.Generator, low: float, high: float, n: int = 1) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column coordinates of a ``size`` x ``size`` image, float32."""
    axis = torch.arange(size, dtype=torch.float32)
    return torch.meshgrid(axis, axis, indexing="ij")


class SyntheticDetailDataset(Dataset):
    """Images whose classes differ only in fine detail, designed so that pooling choices can matter.

    Every sample is generated from ``(seed, split, index)`` alone, so it is identical on
    every call, worker and process. On a smooth, noisy background:

    * ``stripes`` and ``dots`` regions (ellipses) have the background's mean colour and differ
      from it only by a texture of period 3-4 pixels: average pooling of the image washes
      them out;
    * ``thin_line`` (1 pixel wide) and ``small_blob`` (radius 1.5-3 pixels) are darker than
      their surroundings: max pooling of the image, which keeps the brightest pixel of each
      window, erases them. (Whether a trained network with max pooling loses them is a
      property of the architecture; the quickstart U-Net, with one pool and skip
      connections around it, shows no loss.)

    Items are ``{"image": tv_tensors.Image float32 (3, H, W) in [0, 1], "mask":
    tv_tensors.Mask int64 (H, W), "name": str}`` before ``transforms``.

    Args:
        length: Number of samples.
        image_size: Height and width in pixels.
        split: ``"train"``, ``"val"`` or ``"test"``: different samples for each.
        seed: Base seed.
        transforms: Joint transform applied to each sample dict.

    Raises:
        ConfigError: (a ``ValueError``) if ``split`` is unknown or a size is not positive.
    """

    def __init__(
        self,
        length: int,
        image_size: int = 64,
        split: str = "train",
        seed: int = 0,
        transforms: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        if split not in _SPLIT_ID:
            raise ConfigError(f"Expected argument `split` to be one of {sorted(_SPLIT_ID)}, but got {split!r}.")
        for arg, value in (("length", length), ("image_size", image_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"Expected argument `{arg}` to be an int >= 1, but got {value!r}.")
        self.length = length
        self.image_size = image_size
        self.split = split
        self.seed = seed
        self.transforms = transforms

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length} samples")
        image, mask = self.generate(index)
        sample = {"image": tv_tensors.Image(image), "mask": tv_tensors.Mask(mask), "name": f"synthetic_{self.split}_{index:05d}"}
        return self.transforms(sample) if self.transforms is not None else sample

    def _generator(self, index: int) -> torch.Generator:
        """The random generator of sample ``index``: a function of (seed, split, index) alone."""
        return torch.Generator().manual_seed(self.seed * 1_000_003 + _SPLIT_ID[self.split] * 100_003 + index)

    def generate(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the ``(image, mask)`` pair of sample ``index``, without transforms."""
        gen, size = self._generator(index), self.image_size
        uniform = functools.partial(_uniform, gen)
        ys, xs = _grid(size)
        base_colour = uniform(0.35, 0.65, 3).view(3, 1, 1)
        low_freq = F.interpolate(torch.rand(1, 3, 4, 4, generator=gen), size=(size, size), mode="bilinear", align_corners=False)[0]
        image = base_colour + 0.2 * (low_freq - 0.5)
        mask = torch.zeros(size, size, dtype=torch.int64)

        # textured ellipses: same mean as their surroundings, period-3/4 texture
        for label in (3, 4):
            for _ in range(int(torch.randint(1, 3, (1,), generator=gen))):
                cy, cx = uniform(0, size, 2).tolist()
                ry, rx = (uniform(0.12, 0.3, 2) * size).tolist()
                region = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
                if label == 3:
                    theta = float(uniform(0, math.pi))
                    texture = torch.sin(2 * math.pi * (xs * math.cos(theta) + ys * math.sin(theta)) / 4.0)
                else:
                    texture = torch.where((ys.long() % 3 == 0) & (xs.long() % 3 == 0), 1.0, -0.5)
                image = torch.where(region, image + 0.18 * texture, image)
                mask[region] = label

        # small dark blobs, bluish tint
        for _ in range(int(torch.randint(3, 8, (1,), generator=gen))):
            cy, cx = uniform(2, size - 2, 2).tolist()
            radius = float(uniform(1.5, 3.0))
            region = (ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2
            image = torch.where(region, image - torch.tensor([0.3, 0.3, 0.15]).view(3, 1, 1), image)
            mask[region] = 2

        # thin dark lines, one pixel wide, spanning the image
        for _ in range(int(torch.randint(2, 4, (1,), generator=gen))):
            cy, cx = uniform(0, size, 2).tolist()
            theta = float(uniform(0, math.pi))
            distance = ((xs - cx) * math.sin(theta) - (ys - cy) * math.cos(theta)).abs()
            region = distance <= 0.5
            image = torch.where(region, image - 0.3, image)
            mask[region] = 1

        image = image + 0.04 * torch.randn(3, size, size, generator=gen)
        return image.clamp(0, 1), mask


class SyntheticDetailDataModule(SegmentationDataModule):
    """DataModule of :class:`SyntheticDetailDataset`: no files, deterministic by ``seed``.

    The quickstart's dataset: five classes (``background``, ``thin_line``, ``small_blob``,
    ``stripes``, ``dots``) whose differences are all fine detail. Training samples get
    random horizontal flips; validation and test samples are fixed.

    Args:
        image_size: Height and width of every image (a multiple of 32 for smp models).
        train_size: Training samples per epoch.
        val_size: Validation samples.
        test_size: Test (and predict) samples.
        batch_size: Training batch size.
        eval_batch_size: Validation/test/predict batch size.
        num_workers: DataLoader worker processes.
        pin_memory: Pin host memory.
        seed: Base seed of the generator; ``None`` takes the run's seed (``seed_everything``, read
            from the ``PL_GLOBAL_SEED`` variable that Lightning's ``seed_everything`` sets) when the
            datasets are built, so that every seed of a comparison draws its own data.
        hflip: Random horizontal flips in training.

    Raises:
        ConfigError: (a ``ValueError``) if a size is not an int >= 1, or ``seed`` is ``None`` and
            no run seed is set when the datasets are built.
    """

    num_classes = len(SYNTHETIC_CLASSES)
    class_names = SYNTHETIC_CLASSES

    def __init__(
        self,
        image_size: int = 64,
        train_size: int = 512,
        val_size: int = 64,
        test_size: int = 64,
        batch_size: int = 16,
        eval_batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int | None = 0,
        hflip: bool = True,
    ) -> None:
        super().__init__(
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            num_workers=num_workers,
            pin_memory=pin_memory,
            crop_size=image_size,
            scale_range=(1.0, 1.0),
            hflip=hflip,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        )
        sizes = {"image_size": image_size, "train_size": train_size, "val_size": val_size, "test_size": test_size}
        for arg, value in sizes.items():  # checked here, so the CLI reports them before training
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"Expected argument `{arg}` to be an int >= 1, but got {value!r}.")
        self.image_size = image_size
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"Expected argument `seed` to be an int or None (the run's seed), but got {seed!r}.")
        self.seed = seed

    @property
    def data_seed(self) -> int:
        """The seed the data are drawn with: ``seed``, or the run's seed if ``seed`` is ``None``."""
        if self.seed is not None:
            return self.seed
        run_seed = os.environ.get("PL_GLOBAL_SEED")
        if run_seed is None:
            raise ConfigError(
                "Expected a run seed for argument `seed=None` (the data seed follows the run's seed), but none is set. "
                "Set `seed_everything` in the config (or call lightning.seed_everything), or pass an int `seed`."
            )
        return int(run_seed)

    def build_dataset(self, split: str, transforms: Callable) -> Dataset:
        return SyntheticDetailDataset(self.sizes[split], self.image_size, split, self.data_seed, transforms)


class SyntheticTexturesDataset(SyntheticDetailDataset):
    """Regions whose class is told apart only by fine detail inside them: the pooling benchmark.

    Built so that what a pooling layer keeps decides the result, for networks whose features
    pass through their pools with no full-resolution skip around them (the paper's setting).
    On a smooth background with Gaussian noise and *impulse noise* (isolated single pixels,
    2% of all pixels, brighter or darker), 2-4 elliptic regions (radii 7-16 px) carry:

    * ``hatch``: thin dark lines, 1 px wide, every 6 px (sparse detail);
    * ``speckle``: small dark dots (radius about 1.3 px) on a 6 px grid (sparse detail,
      resembling the impulse noise);
    * ``stripes``: a dense zero-mean sinusoid of period 3.5 px (texture against flat);
    * ``dots``: a dense zero-mean grid of bright dots of period 3 px (texture against flat).

    The mechanics: sparse detail covers a small part of each pooling window, so average
    pooling dilutes it; max pooling keeps it, but also keeps the impulse noise of the
    background, which looks like speckle; dense textures survive both. The region labels are
    large enough for an output stride of 8. Same item format and arguments as
    :class:`SyntheticDetailDataset`.
    """

    impulse_fraction = 0.02

    def generate(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the ``(image, mask)`` pair of sample ``index``, without transforms."""
        gen, size = self._generator(index), self.image_size
        uniform = functools.partial(_uniform, gen)
        ys, xs = _grid(size)
        low_freq = F.interpolate(torch.rand(1, 3, 4, 4, generator=gen), size=(size, size), mode="bilinear", align_corners=False)[0]
        image = uniform(0.35, 0.65, 3).view(3, 1, 1) + 0.2 * (low_freq - 0.5)
        detail = torch.zeros(size, size)
        mask = torch.zeros(size, size, dtype=torch.int64)
        count = int(torch.randint(2, 5, (1,), generator=gen))
        for label in (torch.randperm(4, generator=gen)[:count] + 1).tolist():
            cy, cx = uniform(8, size - 8, 2).tolist()
            ry, rx = uniform(7, 16, 2).tolist()
            region = ((ys - cy) / ry) ** 2 + ((xs - cx) / rx) ** 2 <= 1
            detail = torch.where(region, self._pattern(label, ys, xs, float(uniform(0, math.pi))), detail)
            mask[region] = label
        image = image + 0.3 * detail
        hit = torch.rand(size, size, generator=gen) < self.impulse_fraction
        sign = torch.where(torch.rand(size, size, generator=gen) < 0.5, -1.0, 1.0)
        image = torch.where(hit, image + 0.3 * sign, image)
        image = image + 0.04 * torch.randn(3, size, size, generator=gen)
        return image.clamp(0, 1), mask

    @staticmethod
    def _pattern(label: int, ys: torch.Tensor, xs: torch.Tensor, theta: float) -> torch.Tensor:
        """The detail of class ``label`` at orientation ``theta``, in [-1, 1] (dark < 0 < bright)."""
        along = xs * math.cos(theta) + ys * math.sin(theta)
        across = -xs * math.sin(theta) + ys * math.cos(theta)
        if label == 1:  # hatch
            return torch.where(along % 6.0 < 1.0, -1.0, 0.0)
        if label == 2:  # speckle
            off_along, off_across = along - 6 * torch.round(along / 6), across - 6 * torch.round(across / 6)
            return torch.where(off_along**2 + off_across**2 <= 1.6, -1.0, 0.0)
        if label == 3:  # stripes
            return 0.6 * torch.sin(2 * math.pi * along / 3.5)
        return 0.6 * torch.where((ys.long() % 3 == 0) & (xs.long() % 3 == 0), 1.0, -0.125)  # dots


class SyntheticTexturesDataModule(SyntheticDetailDataModule):
    """DataModule of :class:`SyntheticTexturesDataset`: the pooling benchmark of ``configs/benchmark.yaml``.

    Five classes (``background``, ``hatch``, ``speckle``, ``stripes``, ``dots``); arguments as
    :class:`SyntheticDetailDataModule`.
    """

    class_names = TEXTURE_CLASSES

    def build_dataset(self, split: str, transforms: Callable) -> Dataset:
        return SyntheticTexturesDataset(self.sizes[split], self.image_size, split, self.data_seed, transforms)
