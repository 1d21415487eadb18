"""ADE20K (SceneParsing, ADEChallengeData2016): 150 classes, 0 = "other" (ignored)."""

from __future__ import annotations

from collections.abc import Callable

from torch.utils.data import Dataset

from lit_ppool.training.data.base import SegmentationDataModule, SegmentationFileDataset, check_layout, label_lut

__all__ = ["ADE20KDataModule", "ADE20K_CLASSES"]

ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher",
    "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)  # fmt: skip
ADE20K_URL = "http://sceneparsing.csail.mit.edu/ (ADEChallengeData2016.zip)"
ADE20K_LAYOUT = """  <root>/ADEChallengeData2016/
      images/{training,validation}/ADE_<split>_<id>.jpg
      annotations/{training,validation}/ADE_<split>_<id>.png   (0 = other/ignored, 1-150 = classes)"""


class ADE20KDataModule(SegmentationDataModule):
    """ADE20K SceneParsing: 150 classes; raw label ``k`` in 1..150 becomes ``k - 1``, 0 becomes 255 (ignored).

    Reads the official ``ADEChallengeData2016`` layout under ``root``. The test (and predict)
    split is ``validation`` (the challenge test labels are not public).

    Args:
        root: Folder that contains ``ADEChallengeData2016``.
        crop_size: Training crop (default 512).
        base_size: Reference size of the random scale (default ``(512, 2048)``).
        **kwargs: Loader and augmentation arguments of
            :class:`~lit_ppool.training.data.SegmentationDataModule`.

    Raises:
        DatasetRootError: (a ``ConfigError`` and a ``FileNotFoundError``) if ``root`` does not have
            the layout above (checked at construction and setup).
    """

    num_classes = len(ADE20K_CLASSES)
    class_names = ADE20K_CLASSES

    def __init__(
        self,
        root: str,
        crop_size: int | tuple[int, int] = 512,
        base_size: int | tuple[int, int] | None = (512, 2048),
        **kwargs,
    ) -> None:
        super().__init__(crop_size=crop_size, base_size=base_size, **kwargs)
        self.root = root
        check_layout(
            root, ["ADEChallengeData2016/images", "ADEChallengeData2016/annotations"], ADE20K_LAYOUT, "ADE20K", ADE20K_URL
        )
        self.lut = label_lut({raw: raw - 1 for raw in range(1, 151)}, valid=[0])  # raw values above 150 are errors

    def build_dataset(self, split: str, transforms: Callable) -> Dataset:
        folder = "training" if split == "train" else "validation"
        base = "ADEChallengeData2016"
        root = check_layout(
            self.root, [f"{base}/images/{folder}", f"{base}/annotations/{folder}"], ADE20K_LAYOUT, "ADE20K", ADE20K_URL
        )
        images = sorted((root / base / "images" / folder).glob("*.jpg"))
        samples = [(image, root / base / "annotations" / folder / f"{image.stem}.png", image.stem) for image in images]
        return SegmentationFileDataset(samples, self.num_classes, self.lut, transforms, self.ignore_index)
