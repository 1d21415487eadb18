"""Segmentation metrics beyond torchmetrics' own: the boundary-band (trimap) mIoU."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import MulticlassJaccardIndex

__all__ = ["TrimapJaccardIndex", "boundary_band"]


def boundary_band(target: Tensor, width: int) -> Tensor:
    """Pixels within ``width`` pixels (Chebyshev distance) of a change of label in ``target``.

    Args:
        target: Label maps of shape ``(N, H, W)``; any change of value counts, including a
            change to or from the ignore label. Image borders are not boundaries.
        width: Half-width of the band, ``>= 1``.

    Returns:
        Boolean tensor of shape ``(N, H, W)``.
    """
    labels = target.unsqueeze(1).float()  # label ids are small ints: exact in float32
    kernel = 2 * width + 1
    padded = F.pad(labels, (width,) * 4, mode="replicate")
    highest = F.max_pool2d(padded, kernel, stride=1)
    lowest = -F.max_pool2d(-padded, kernel, stride=1)
    return (highest != lowest).squeeze(1)


class TrimapJaccardIndex(MulticlassJaccardIndex):
    """Mean IoU restricted to a band around the ground-truth boundaries (trimap mIoU).

    The standard detail-sensitive score of segmentation papers: only pixels within
    ``width`` pixels of a change of label in the target are counted, so errors on thin
    structures, small objects and object outlines dominate it. Within the band it is the
    dataset-level macro IoU of :class:`~torchmetrics.classification.MulticlassJaccardIndex`
    (accumulated confusion matrix, summed across processes under DDP):

    .. math::

        \\text{trimap mIoU} = \\frac{1}{C} \\sum_c
        \\frac{|P_c \\cap G_c \\cap B|}{|(P_c \\cup G_c) \\cap B|},
        \\qquad B = \\{p : \\text{the target changes within width of } p\\}

    Args:
        num_classes: Number of classes.
        width: Half-width of the boundary band in pixels, ``>= 1``.
        ignore_index: Label of pixels that are never counted (they still delimit the band).
        **kwargs: Forwarded to :class:`~torchmetrics.classification.MulticlassJaccardIndex`
            (``average`` defaults to ``"macro"``).

    Raises:
        ValueError: If ``width`` is not an int ``>= 1`` or ``ignore_index`` is ``None``.

    Example:
        >>> target = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1]]])
        >>> preds = torch.tensor([[[0, 0, 0, 1], [0, 0, 0, 1]]])
        >>> TrimapJaccardIndex(num_classes=2, width=1, ignore_index=255)(preds, target)
        tensor(0.2500)
    """

    def __init__(self, num_classes: int, width: int = 3, ignore_index: int | None = 255, **kwargs: Any) -> None:
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"Expected argument `width` to be an int >= 1, but got {width!r}.")
        if ignore_index is None:
            raise ValueError(
                "Expected argument `ignore_index` to be an int (pixels outside the band are counted as ignored), "
                "but got None."
            )
        kwargs.setdefault("average", "macro")
        super().__init__(num_classes=num_classes, ignore_index=ignore_index, **kwargs)
        self.width = width

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Update the band-restricted confusion matrix with ``(N, H, W)`` (or ``(N, C, H, W)`` scores) predictions."""
        band = boundary_band(target, self.width)
        super().update(preds, target.masked_fill(~band, self.ignore_index))
