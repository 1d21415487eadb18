"""Training: the LightningModule, datamodules, metrics and prediction writer behind `lit-ppool`."""

from lit_ppool.training.alpha_monitor import AlphaMonitor
from lit_ppool.training.checkpointing import AtomicCheckpointIO, RandomStateCheckpoint
from lit_ppool.training.data import (
    ADE20KDataModule,
    CamVidDataModule,
    CityscapesDataModule,
    CrackForestDataModule,
    FolderDataModule,
    SegmentationDataModule,
    SyntheticDetailDataModule,
    SyntheticTexturesDataModule,
    VOCDataModule,
)
from lit_ppool.training.faults import NonFiniteLossError
from lit_ppool.training.metrics import BoundaryIoU, TrimapJaccardIndex
from lit_ppool.training.module import ConfigError, PPoolSegmentationModule
from lit_ppool.training.writer import PaletteMaskWriter

__all__ = [
    "ADE20KDataModule",
    "AlphaMonitor",
    "AtomicCheckpointIO",
    "BoundaryIoU",
    "NonFiniteLossError",
    "RandomStateCheckpoint",
    "CamVidDataModule",
    "CityscapesDataModule",
    "CrackForestDataModule",
    "FolderDataModule",
    "VOCDataModule",
    "ConfigError",
    "PPoolSegmentationModule",
    "PaletteMaskWriter",
    "SegmentationDataModule",
    "SyntheticDetailDataModule",
    "SyntheticTexturesDataModule",
    "TrimapJaccardIndex",
]
