"""DataModules with joint image/mask augmentation: synthetic detail data and the real benchmarks."""

from lit_ppool.training.data.ade20k import ADE20KDataModule
from lit_ppool.training.data.base import SegmentationDataModule, SegmentationFileDataset
from lit_ppool.training.data.camvid import CamVidDataModule
from lit_ppool.training.data.cityscapes import CityscapesDataModule
from lit_ppool.training.data.crackforest import CrackForestDataModule
from lit_ppool.training.data.folder import FolderDataModule
from lit_ppool.training.data.synthetic import (
    SyntheticDetailDataModule,
    SyntheticDetailDataset,
    SyntheticTexturesDataModule,
    SyntheticTexturesDataset,
)
from lit_ppool.training.data.voc import VOCDataModule

__all__ = [
    "ADE20KDataModule",
    "CamVidDataModule",
    "CityscapesDataModule",
    "CrackForestDataModule",
    "FolderDataModule",
    "VOCDataModule",
    "SegmentationDataModule",
    "SegmentationFileDataset",
    "SyntheticDetailDataModule",
    "SyntheticDetailDataset",
    "SyntheticTexturesDataModule",
    "SyntheticTexturesDataset",
]
