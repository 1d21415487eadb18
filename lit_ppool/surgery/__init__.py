"""Model surgery: replace the pooling layers of any ``nn.Module`` in place, and bake them back.

:func:`swap_pooling` (:mod:`.swap`) turns the ``nn.MaxPool2d`` / ``nn.AvgPool2d`` layers of a
model (smp, timm, torchvision or your own) into any pooling of the table (and global
average/max pools, when ``include`` names them, into its global form) under the same
attribute names, and returns what it replaced and what it left alone, with the reason and a
machine-readable ``kind`` (:mod:`.report`). With an example input, one probe forward
(:mod:`.probe`) measures channel counts and finds functional pooling. :func:`bake_pooling`
(:mod:`.bake`) does the reverse for deployment: P-pooling layers whose learned alpha sits at
a limit become the native pooling they have converged to.

Example:
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.MaxPool2d(3, 1, 1))
    >>> report = swap_pooling(model, "p")
    >>> report.names, [(s.name, s.kind) for s in report.skipped]
    (['2'], [('3', 'stride_one')])
"""

from lit_ppool.surgery.bake import bake_pooling
from lit_ppool.surgery.report import (
    SKIP_KINDS,
    Bake,
    BakeReport,
    NothingSwappedWarning,
    Skip,
    SkipKind,
    Swap,
    SwapReport,
)
from lit_ppool.surgery.swap import swap_pooling

__all__ = [
    "SKIP_KINDS",
    "Bake",
    "BakeReport",
    "NothingSwappedWarning",
    "Skip",
    "SkipKind",
    "Swap",
    "SwapReport",
    "bake_pooling",
    "swap_pooling",
]
