"""Segmentation metrics: mIoU against a hand-written confusion matrix, per-class F1, the trimap mIoU, label checks."""

import numpy as np
import pytest
import torch
from torchmetrics.classification import MulticlassJaccardIndex

from lit_ppool import PPoolSegmentationModule
from lit_ppool.training.data.checks import check_labels
from lit_ppool.training.metrics import TrimapJaccardIndex, boundary_band

from helpers.tiny import TINY_MODEL

IGNORE = 255


def confusion_miou(preds, target, num_classes, ignore_index):
    """Dataset mIoU from an explicit confusion matrix; classes absent from preds and target are skipped."""
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for p, t in zip(preds.flatten().tolist(), target.flatten().tolist()):
        if t != ignore_index:
            confusion[t, p] += 1
    ious = []
    for c in range(num_classes):
        tp = confusion[c, c].item()
        union = confusion[c, :].sum().item() + confusion[:, c].sum().item() - tp
        if union > 0:
            ious.append(tp / union)
    return sum(ious) / len(ious)


def test_miou_matches_confusion_matrix_with_ignore_and_absent_class():
    gen = torch.Generator().manual_seed(0)
    num_classes = 5  # class 4 appears nowhere: neither predicted nor in the targets
    target = torch.randint(0, 4, (3, 9, 11), generator=gen)
    target[:, :2] = IGNORE
    preds = torch.randint(0, 4, (3, 9, 11), generator=gen)
    preds[target == 1] = 1  # make the classes differ in IoU
    preds[:, :2] = 3  # predictions on ignored pixels must not count
    metric = MulticlassJaccardIndex(num_classes, average="macro", ignore_index=IGNORE)
    for i in range(3):  # accumulated over batches: a dataset-level score, not a mean of per-image scores
        metric.update(preds[i : i + 1], target[i : i + 1])
    expected = confusion_miou(preds, target, num_classes, IGNORE)
    assert metric.compute().item() == pytest.approx(expected, abs=1e-6)
    # the absent class does not drag the mean down: a naive 5-class mean would differ
    assert expected * 4 / 5 != pytest.approx(metric.compute().item(), abs=1e-3)


def f1_precision_recall(preds, target, num_classes, ignore_index):
    """Per-class F1, precision and recall (float64) from tp, fp, fn over the non-ignored pixels; 0/0 gives 0."""
    keep = target != ignore_index
    p, t = preds[keep], target[keep]
    scores = {"F1": [], "precision": [], "recall": []}
    for c in range(num_classes):
        tp = np.sum((p == c) & (t == c), dtype=np.float64)
        fp = np.sum((p == c) & (t != c), dtype=np.float64)
        fn = np.sum((p != c) & (t == c), dtype=np.float64)
        scores["F1"].append(2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0)
        scores["precision"].append(tp / (tp + fp) if tp + fp else 0.0)
        scores["recall"].append(tp / (tp + fn) if tp + fn else 0.0)
    return scores


def test_module_f1_precision_recall_per_class_match_counts_with_ignore_and_absent_class():
    module = PPoolSegmentationModule(**TINY_MODEL)  # 5 classes: "class_0" ... "class_4"
    rng = np.random.default_rng(0)
    target = rng.integers(0, 3, (3, 12, 10))  # classes 0, 1, 2
    target[:, :3] = IGNORE
    preds = rng.integers(0, 4, (3, 12, 10))  # class 3 is predicted but in no target: precision 0, recall 0/0
    preds[target == 2] = 2  # make the classes differ in F1
    preds[:, :3] = 1  # predictions on ignored pixels must not count (class 1's precision would drop)
    # class 4 is in neither the targets nor the predictions: 0/0 everywhere
    metrics = module.test_metrics
    for i in range(3):  # accumulated over batches: a dataset-level score
        metrics.update(torch.from_numpy(preds[i : i + 1]), torch.from_numpy(target[i : i + 1]))
    values = metrics.compute()
    expected = f1_precision_recall(preds, target, 5, IGNORE)
    for family, scores in expected.items():
        for c, score in enumerate(scores):
            assert values[f"test/{family}/class_{c}"].item() == pytest.approx(score, abs=1e-6), (family, c)
    assert 0.0 < expected["F1"][1] < expected["F1"][2] < 1.0 and expected["precision"][3] == 0.0
    for family in expected:  # the documented value of an absent class
        assert values[f"test/{family}/class_4"].item() == 0.0
    assert "test/F1" not in values  # per-class only: no macro F1


def test_boundary_band_marks_pixels_near_label_changes():
    target = torch.zeros(1, 6, 8, dtype=torch.long)
    target[:, :, 4:] = 1
    band = boundary_band(target, width=1)
    expected = torch.zeros(1, 6, 8, dtype=torch.bool)
    expected[:, :, 3:5] = True
    assert torch.equal(band, expected)
    assert torch.equal(boundary_band(target, width=2)[0, 0], torch.tensor([0, 0, 1, 1, 1, 1, 0, 0], dtype=torch.bool))


def test_trimap_miou_is_miou_restricted_to_the_band():
    gen = torch.Generator().manual_seed(1)
    target = torch.zeros(2, 16, 16, dtype=torch.long)
    target[:, 4:12, 4:12] = 1
    target[:, 7, :] = 2  # a thin line
    target[0, 0, :] = IGNORE
    preds = target.clone()
    preds[torch.rand(preds.shape, generator=gen) < 0.3] = 0
    preds[preds == IGNORE] = 0
    metric = TrimapJaccardIndex(num_classes=3, width=2, ignore_index=IGNORE)
    metric.update(preds, target)
    band = boundary_band(target, 2)
    expected = confusion_miou(preds, target.masked_fill(~band, IGNORE), 3, IGNORE)
    assert metric.compute().item() == pytest.approx(expected, abs=1e-6)
    # far from boundaries nothing counts: errors there do not change the score
    preds_far = preds.clone()
    preds_far[~band & (target != IGNORE)] = 2
    metric.reset()
    metric.update(preds_far, target)
    assert metric.compute().item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("width", [0, -1, 1.5, True])
def test_trimap_rejects_bad_width(width):
    with pytest.raises(ValueError, match="Expected argument `width`"):
        TrimapJaccardIndex(num_classes=3, width=width)


def test_check_labels_names_the_offending_value_and_source():
    check_labels(torch.tensor([0, 2, IGNORE]), 3, IGNORE)
    with pytest.raises(ValueError, match=r"my_file.png.*\[3, 7\]"):
        check_labels(torch.tensor([0, 3, 7, IGNORE]), 3, IGNORE, source="my_file.png")
    with pytest.raises(ValueError, match=r"\[-1\]"):
        check_labels(torch.tensor([-1, 0]), 3, IGNORE)
