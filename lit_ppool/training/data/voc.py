"""PASCAL VOC 2012 segmentation, with the optional SBD-augmented training set."""

from __future__ import annotations

from collections.abc import Callable

from torch.utils.data import Dataset

from lit_ppool.training.data.base import SegmentationDataModule, SegmentationFileDataset, check_layout

__all__ = ["VOCDataModule", "VOC_CLASSES"]

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
VOC_URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ (SBD: http://home.bharathh.info/pubs/codes/SBD/download.html)"
VOC_LAYOUT = """  <root>/VOCdevkit/VOC2012/
      JPEGImages/<id>.jpg
      SegmentationClass/<id>.png                 (palette PNG: 0-20, 255 = void)
      ImageSets/Segmentation/{train,val}.txt
      SegmentationClassAug/<id>.png              (only with use_sbd=True: 0-20, 255)
      ImageSets/Segmentation/train_aug.txt       (only with use_sbd=True)"""


class VOCDataModule(SegmentationDataModule):
    """PASCAL VOC 2012 semantic segmentation: 21 classes (background + 20), 255 = void (ignored).

    Reads the official ``VOCdevkit/VOC2012`` layout under ``root``. With ``use_sbd=True`` the
    training set is the SBD-augmented ``train_aug`` list (10,582 images, labels in
    ``SegmentationClassAug``), the usual setup of the paper's table. VOC's test labels are
    not public, so the test (and predict) split is ``val``.

    Args:
        root: Folder that contains ``VOCdevkit``.
        use_sbd: Train on ``ImageSets/Segmentation/train_aug.txt`` with ``SegmentationClassAug`` masks.
        crop_size: Training crop (default 512, multiple of 32).
        base_size: Reference size of the random scale (default 512).
        **kwargs: Loader and augmentation arguments of
            :class:`~lit_ppool.training.data.SegmentationDataModule`.

    Raises:
        DatasetRootError: (a ``ConfigError`` and a ``FileNotFoundError``) if ``root`` does not have
            the layout above, at construction (the folders) or setup (the split lists); the message
            names the layout and the download page.
    """

    num_classes = len(VOC_CLASSES)
    class_names = VOC_CLASSES

    def __init__(
        self,
        root: str,
        use_sbd: bool = False,
        crop_size: int | tuple[int, int] = 512,
        base_size: int | tuple[int, int] | None = 512,
        **kwargs,
    ) -> None:
        super().__init__(crop_size=crop_size, base_size=base_size, **kwargs)
        self.root = root
        self.use_sbd = use_sbd
        base = "VOCdevkit/VOC2012"
        folders = ["JPEGImages", "SegmentationClass", "ImageSets/Segmentation"] + (["SegmentationClassAug"] if use_sbd else [])
        check_layout(root, [f"{base}/{folder}" for folder in folders], VOC_LAYOUT, "PASCAL VOC 2012", VOC_URL)

    def build_dataset(self, split: str, transforms: Callable) -> Dataset:
        sbd = self.use_sbd and split == "train"
        list_file = "train_aug.txt" if sbd else ("train.txt" if split == "train" else "val.txt")
        mask_dir = "SegmentationClassAug" if sbd else "SegmentationClass"
        base = "VOCdevkit/VOC2012"
        root = check_layout(
            self.root,
            [f"{base}/JPEGImages", f"{base}/{mask_dir}", f"{base}/ImageSets/Segmentation/{list_file}"],
            VOC_LAYOUT,
            "PASCAL VOC 2012",
            VOC_URL,
        )
        voc = root / base
        ids = [line.split()[0] for line in (voc / "ImageSets/Segmentation" / list_file).read_text().splitlines() if line.strip()]
        samples = [(voc / "JPEGImages" / f"{i}.jpg", voc / mask_dir / f"{i}.png", i) for i in ids]
        return SegmentationFileDataset(samples, self.num_classes, None, transforms, self.ignore_index)
