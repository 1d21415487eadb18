"""lit_ppool: polynomial pooling (P-pooling) for detail-sensitive semantic segmentation."""

from lit_ppool.functional import p_pool2d
from lit_ppool.layers import AdaptivePPool2d, GlobalPPool2d, PPool2d, PPoolBase
from lit_ppool.layers.registry import available_poolings, create_pool2d, get_pool_layer
from lit_ppool.sharing import from_pretrained, save_pretrained
from lit_ppool.surgery import Swap, SwapReport, bake_pooling, swap_pooling

__all__ = ["PPool2d", "p_pool2d"]
__all__ += ["AdaptivePPool2d", "GlobalPPool2d", "PPoolBase"]
__all__ += ["Swap", "SwapReport", "available_poolings", "bake_pooling", "create_pool2d", "get_pool_layer", "swap_pooling"]
__all__ += ["from_pretrained", "save_pretrained"]
__version__ = "0.1.0"

# Training API (LightningModule, datamodules, CLI pieces): imported on first access, so that
# `import lit_ppool` for the op alone does not import Lightning and smp.
_TRAINING_EXPORTS = {
    "PPoolSegmentationModule": "lit_ppool.training.module",
    "PaletteMaskWriter": "lit_ppool.training.callbacks.writer",
    "TrimapJaccardIndex": "lit_ppool.training.metrics",
    "BoundaryIoU": "lit_ppool.training.metrics",
    "SegmentationDataModule": "lit_ppool.training.data.base",
    "SyntheticDetailDataModule": "lit_ppool.training.data.synthetic",
    "SyntheticTexturesDataModule": "lit_ppool.training.data.synthetic",
    "VOCDataModule": "lit_ppool.training.data.voc",
    "CityscapesDataModule": "lit_ppool.training.data.cityscapes",
    "ADE20KDataModule": "lit_ppool.training.data.ade20k",
    "CamVidDataModule": "lit_ppool.training.data.camvid",
    "CrackForestDataModule": "lit_ppool.training.data.crackforest",
    "FolderDataModule": "lit_ppool.training.data.folder",
    "AlphaMonitor": "lit_ppool.training.callbacks.alpha_monitor",
    "AtomicCheckpointIO": "lit_ppool.training.plugins.checkpoint_io",
    "RandomStateCheckpoint": "lit_ppool.training.callbacks.random_state",
    "NonFiniteLossError": "lit_ppool.training.faults",
}
__all__ += list(_TRAINING_EXPORTS)


def __getattr__(name: str):
    if name in _TRAINING_EXPORTS:
        import importlib

        return getattr(importlib.import_module(_TRAINING_EXPORTS[name]), name)
    raise AttributeError(f"module 'lit_ppool' has no attribute {name!r}")
