"""Segmentation metrics beyond torchmetrics' own: the trimap mIoU and the Boundary IoU."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import MulticlassJaccardIndex

from lit_ppool.training.data.checks import IGNORE_INDEX, check_labels

__all__ = ["BoundaryIoU", "TrimapJaccardIndex", "boundary_band", "inner_boundary"]


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

    def __init__(self, num_classes: int, width: int = 3, ignore_index: int | None = IGNORE_INDEX, **kwargs: Any) -> None:
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


def inner_boundary(mask: Tensor, width: int) -> Tensor:
    """The inner boundary band of binary masks: the mask minus its erosion by a 3x3 square applied ``width`` times.

    The image outside counts as background, so a mask touching the image border has a band
    along it (as in the Boundary IoU reference code). One max-pooling of the padded complement
    with kernel ``2 * width + 1`` is the ``width``-fold 3x3 erosion.

    Args:
        mask: Boolean masks of shape ``(N, H, W)``.
        width: Width of the band in pixels, ``>= 1``.

    Returns:
        Boolean tensor of shape ``(N, H, W)``.

    Example:
        >>> inner_boundary(torch.ones(1, 3, 4, dtype=torch.bool), 1).int()
        tensor([[[1, 1, 1, 1],
                 [1, 0, 0, 1],
                 [1, 1, 1, 1]]], dtype=torch.int32)
    """
    complement = F.pad((~mask).unsqueeze(1).float(), (width,) * 4, value=1.0)
    eroded = F.max_pool2d(complement, 2 * width + 1, stride=1).squeeze(1) == 0
    return mask & ~eroded


def _boundary_iou_validate_args(num_classes: Any, ignore_index: Any, dilation_ratio: Any, average: Any) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"Expected argument `num_classes` to be an int >= 1, but got {num_classes!r}.")
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise ValueError(f"Expected argument `ignore_index` to be an int or None, but got {ignore_index!r}.")
    if isinstance(dilation_ratio, bool) or not isinstance(dilation_ratio, (int, float)) or not dilation_ratio > 0:
        raise ValueError(f"Expected argument `dilation_ratio` to be a number > 0, but got {dilation_ratio!r}.")
    if average not in ("macro", "none"):
        raise ValueError(f"Expected argument `average` to be one of ['macro', 'none'], but got {average!r}.")


def _boundary_iou_format(preds: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Label maps ``(N, H, W)`` from labels or ``(N, C, H, W)`` scores, after checking the shapes."""
    if target.ndim != 3 or target.is_floating_point():
        raise ValueError(
            f"Expected `target` to be integer labels of shape (N, H, W), but got {target.dtype} {tuple(target.shape)}."
        )
    if preds.ndim == 4 and preds.shape[1] == num_classes:
        preds = preds.argmax(dim=1)
    if preds.shape != target.shape or preds.is_floating_point():
        raise ValueError(
            f"Expected `preds` to be integer labels of the shape of `target` {tuple(target.shape)} or scores of shape "
            f"(N, num_classes={num_classes}, H, W), but got {preds.dtype} {tuple(preds.shape)}."
        )
    return preds


def _boundary_iou_update(
    preds: Tensor, target: Tensor, num_classes: int, ignore_index: int | None, dilation_ratio: float
) -> tuple[Tensor, Tensor]:
    """Per-class intersection and union of the boundary bands of ``preds`` and ``target`` (label maps)."""
    height, width = target.shape[-2:]
    dilation = max(1, round(dilation_ratio * math.sqrt(height * height + width * width)))
    valid = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    intersection, union = [], []
    for c in range(num_classes):  # one class at a time: memory of one mask, not of a one-hot tensor
        target_band = inner_boundary(target == c, dilation)
        preds_band = inner_boundary(preds == c, dilation)
        intersection.append((target_band & preds_band & valid).sum())
        union.append(((target_band | preds_band) & valid).sum())
    return torch.stack(intersection), torch.stack(union)


def _boundary_iou_compute(intersection: Tensor, union: Tensor, average: str) -> Tensor:
    """Per-class IoU (nan where the union is empty), or its mean over the classes with a non-empty union."""
    iou = (intersection.double() / union.double()).float()  # 0 / 0 = nan: the class is absent
    return iou if average == "none" else iou.nanmean()


class BoundaryIoU(Metric):
    """Boundary IoU for semantic segmentation (Cheng et al., CVPR 2021), accumulated over the dataset.

    The IoU of each class restricted to the inner boundary bands of the ground-truth and the
    predicted masks (Cheng, Girshick, Dollar, Berg, Kirillov, "Boundary IoU: Improving
    Object-Centric Image Segmentation Evaluation"), so it measures how well outlines are
    placed, whatever the size of the object. With :math:`G_c` and :math:`P_c` the target and
    predicted masks of class :math:`c`, :math:`\\ominus` erosion by a 3x3 square applied
    :math:`d` times (the image outside counts as background) and :math:`V` the pixels whose
    label is not ``ignore_index``:

    .. math::

        G_c^d = G_c \\setminus (G_c \\ominus d), \\qquad
        \\text{Boundary IoU}_c = \\frac{|G_c^d \\cap P_c^d \\cap V|}{|(G_c^d \\cup P_c^d) \\cap V|},
        \\qquad d = \\max\\left(1, \\operatorname{round}\\left(r \\sqrt{H^2 + W^2}\\right)\\right)

    Intersections and unions are summed over every image (and every process under DDP)
    before the division; ``average="macro"`` is the mean over classes whose union is not
    empty. Ignored pixels are background for the masks, so they may delimit a band, but
    they are never counted.

    Args:
        num_classes: Number of classes.
        ignore_index: Label of pixels that are never counted, or ``None``.
        dilation_ratio: :math:`r`, the band width as a fraction of the image diagonal (0.02 as
            in the paper and detectron2's ``SemSegEvaluator``).
        average: ``"macro"`` (mean over classes, nan if none is present) or ``"none"``
            (per-class tensor, nan for classes absent from the targets and predictions).
        validate_args: Check in ``update`` that the labels are in ``[0, num_classes)`` (or
            ``ignore_index`` in the target), at the cost of a device-to-host synchronisation.
        **kwargs: Forwarded to :class:`~torchmetrics.Metric`.

    Raises:
        ValueError: If an argument is invalid, or in ``update`` if the shapes or labels are.

    Example:
        >>> target = torch.tensor([[[0, 0, 1, 1], [0, 0, 1, 1]]])
        >>> preds = torch.tensor([[[0, 0, 0, 1], [0, 0, 0, 1]]])
        >>> BoundaryIoU(num_classes=2)(preds, target)
        tensor(0.5833)
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = IGNORE_INDEX,
        dilation_ratio: float = 0.02,
        average: Literal["macro", "none"] = "macro",
        validate_args: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _boundary_iou_validate_args(num_classes, ignore_index, dilation_ratio, average)
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.dilation_ratio = float(dilation_ratio)
        self.average = average
        self.validate_args = validate_args
        self.add_state("intersection", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("union", torch.zeros(num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add the bands of ``preds`` (labels ``(N, H, W)`` or scores ``(N, C, H, W)``) and ``target`` ``(N, H, W)``."""
        preds = _boundary_iou_format(preds, target, self.num_classes)
        if self.validate_args:
            check_labels(target, self.num_classes, self.ignore_index)
            invalid = (preds < 0) | (preds >= self.num_classes)
            if bool(invalid.any()):
                values = torch.unique(preds[invalid]).tolist()
                raise ValueError(f"Expected `preds` labels to be in [0, {self.num_classes}), but got {values[:10]}.")
        intersection, union = _boundary_iou_update(preds, target, self.num_classes, self.ignore_index, self.dilation_ratio)
        self.intersection += intersection
        self.union += union

    def compute(self) -> Tensor:
        """Mean Boundary IoU over the classes present, or per class with ``average="none"``."""
        return _boundary_iou_compute(self.intersection, self.union, self.average)
