"""Cityscapes (fine annotations), label ids mapped to the 19 evaluation train ids."""

from __future__ import annotations

from collections.abc import Callable

from torch.utils.data import Dataset

from lit_ppool.training.data.base import SegmentationDataModule, SegmentationFileDataset, check_layout, label_lut

__all__ = ["CityscapesDataModule", "CITYSCAPES_CLASSES", "CITYSCAPES_LABEL_TO_TRAIN_ID"]

CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)  # fmt: skip
CITYSCAPES_LABEL_TO_TRAIN_ID = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10,
    24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
"""The official ``labelIds`` -> ``trainIds`` table; every other id is ignored (255)."""
CITYSCAPES_URL = "https://www.cityscapes-dataset.com/downloads/ (leftImg8bit_trainvaltest.zip, gtFine_trainvaltest.zip)"
CITYSCAPES_LAYOUT = """  <root>/
      leftImg8bit/{train,val,test}/<city>/<city>_<seq>_<frame>_leftImg8bit.png
      gtFine/{train,val,test}/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png"""


class CityscapesDataModule(SegmentationDataModule):
    """Cityscapes semantic segmentation: 19 classes, the official ``labelIds`` -> ``trainIds`` mapping.

    Reads the official ``leftImg8bit`` / ``gtFine`` layout under ``root``. Labels are the
    ``*_gtFine_labelIds.png`` files, mapped with :data:`CITYSCAPES_LABEL_TO_TRAIN_ID` (all other
    ids, e.g. license plate or ego vehicle, become 255 and are ignored). The public test
    labels are empty, so the test (and predict) split is ``val``.

    Args:
        root: Folder that contains ``leftImg8bit`` and ``gtFine``.
        crop_size: Training crop (default ``(512, 1024)``).
        base_size: Reference size of the random scale (default ``(1024, 2048)``, the full frame).
        **kwargs: Loader and augmentation arguments of
            :class:`~lit_ppool.training.data.SegmentationDataModule`.

    Raises:
        DatasetRootError: (a ``ConfigError`` and a ``FileNotFoundError``) if ``root`` does not have
            the layout above (checked at construction and setup) or a split folder is empty.
    """

    num_classes = len(CITYSCAPES_CLASSES)
    class_names = CITYSCAPES_CLASSES

    def __init__(
        self,
        root: str,
        crop_size: int | tuple[int, int] = (512, 1024),
        base_size: int | tuple[int, int] | None = (1024, 2048),
        **kwargs,
    ) -> None:
        super().__init__(crop_size=crop_size, base_size=base_size, **kwargs)
        self.root = root
        check_layout(root, ["leftImg8bit", "gtFine"], CITYSCAPES_LAYOUT, "Cityscapes", CITYSCAPES_URL)
        # labelIds are 0-33 (255: license plate's -1, should it be written); any other value is an error
        self.lut = label_lut(CITYSCAPES_LABEL_TO_TRAIN_ID, valid=[*range(34), 255])

    def build_dataset(self, split: str, transforms: Callable) -> Dataset:
        folder = "train" if split == "train" else "val"
        root = check_layout(
            self.root, [f"leftImg8bit/{folder}", f"gtFine/{folder}"], CITYSCAPES_LAYOUT, "Cityscapes", CITYSCAPES_URL
        )
        images = sorted((root / "leftImg8bit" / folder).glob("*/*_leftImg8bit.png"))
        if not images:
            check_layout(root, [f"leftImg8bit/{folder}/<city>/*_leftImg8bit.png"], CITYSCAPES_LAYOUT, "Cityscapes", CITYSCAPES_URL)
        samples = []
        for image in images:
            stem = image.name[: -len("_leftImg8bit.png")]
            samples.append((image, root / "gtFine" / folder / image.parent.name / f"{stem}_gtFine_labelIds.png", stem))
        return SegmentationFileDataset(samples, self.num_classes, self.lut, transforms, self.ignore_index)
