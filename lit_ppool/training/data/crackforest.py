"""CrackForest (CFD): 118 road photos with hand-labelled cracks 1-10 px wide, in its public repository's layout."""

from __future__ import annotations

from typing import Any

import numpy as np

from lit_ppool.training.data.base import check_layout, label_lut
from lit_ppool.training.data.checks import IGNORE_INDEX
from lit_ppool.training.data.folder import FolderDataModule

__all__ = ["CRACKFOREST_CLASSES", "CRACKFOREST_SPLIT", "CrackForestDataModule"]

CRACKFOREST_CLASSES = ("background", "crack")
CRACKFOREST_URL = "https://github.com/cuilimeng/CrackForest-dataset (git clone it: the clone is the root; non-commercial research use only)"
CRACKFOREST_LAYOUT = """  <root>/
      image/NNN.jpg     (001-118: 480x320 RGB photos; unlabelled extras are not used)
      seg/NNN.seg       (Berkeley segmentation text: segment 1 = crack, every other segment = background)"""

# 72 / 14 / 32 of images 001-118: the stems ordered by SHA-256 of "0:<stem>" (lit_ppool's seeded_split
# with seed 0), the first 32 test, the next 14 val, the rest train. Written out, so it never changes.
CRACKFOREST_SPLIT = {
    "train": (
        "001 002 003 004 006 009 010 012 013 014 015 017 018 019 020 022 025 026 027 028 029 030 032 033 034 037 "
        "038 039 040 041 042 043 045 046 051 052 056 058 059 060 061 063 064 065 067 069 072 073 074 075 080 081 "
        "083 087 088 089 091 092 093 094 095 097 100 102 104 105 106 108 109 113 114 116"
    ).split(),
    "val": "008 035 036 044 053 055 062 070 079 082 084 103 111 117".split(),
    "test": (
        "005 007 011 016 021 023 024 031 047 048 049 050 054 057 066 068 071 076 077 078 085 086 090 096 098 099 "
        "101 107 110 112 115 118"
    ).split(),
}
"""The fixed split (72 train / 14 val / 32 test image stems), the same on every machine."""


class CrackForestDataModule(FolderDataModule):
    """CrackForest, read from a clone of its public repository as is: classes ``background`` and ``crack``.

    Images ``image/NNN.jpg`` (480x320), labels ``seg/NNN.seg`` (Berkeley segmentation text,
    read by :func:`~lit_ppool.training.data.folder.read_seg`): segment 1 is crack, every other
    segment (0, and 2-3 in 22 images: background enclosed by cracks) is background. Cracks cover
    1.6% of the pixels (0.35% to 6.3% per photo). The split is :data:`CRACKFOREST_SPLIT` (72 / 14 / 32), fixed in the code.

    Args:
        root: The clone of https://github.com/cuilimeng/CrackForest-dataset (the folder holding ``image/`` and ``seg/``).
        crop_size: Training crop (default ``(320, 480)``, the full image).
        check_files: Decode every image and label when the datamodule is built (see
            :class:`~lit_ppool.training.data.folder.FolderDataModule`).
        **kwargs: Loader and augmentation arguments of
            :class:`~lit_ppool.training.data.SegmentationDataModule` (``resize``, ``scale_range``, ...).

    Raises:
        DatasetRootError: (a ``ConfigError`` and a ``FileNotFoundError``) if ``root`` lacks ``image/``
            or ``seg/``, naming the repository to clone.
        DatasetLayoutError: If an image or label of the split is missing or bad.
    """

    def __init__(
        self, root: str, crop_size: int | tuple[int, int] = (320, 480), check_files: bool = True, **kwargs: Any
    ) -> None:
        check_layout(root, ["image", "seg"], CRACKFOREST_LAYOUT, "CrackForest", CRACKFOREST_URL)
        super().__init__(  # every FolderDataModule argument fixed here, so a config cannot set one that is ignored
            root,
            classes=CRACKFOREST_CLASSES,
            image_dir="image",
            mask_dir="seg",
            mask_pattern="{stem}.seg",
            split_dirs=None,
            splits=CRACKFOREST_SPLIT,
            split=None,
            split_seed=0,
            ignore_index=IGNORE_INDEX,
            value_map=None,
            palette=None,
            binary=False,
            check_files=check_files,
            crop_size=crop_size,
            **kwargs,
        )

    def _label_lut(self, value_map: Any, binary: bool, palette: bool) -> np.ndarray:
        return label_lut({1: 1}, default=0)  # segment 1 is crack, every other segment background
