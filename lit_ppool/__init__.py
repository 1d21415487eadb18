"""lit_ppool: polynomial pooling (P-pooling) for detail-sensitive semantic segmentation."""

from lit_ppool.functional import p_pool2d
from lit_ppool.layers import PPool2d

__all__ = ["PPool2d", "p_pool2d"]
__version__ = "0.1.0"
