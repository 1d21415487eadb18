"""BoundaryIoU against a float64 numpy reference: hand-made masks, random masks, ignore_index, DDP, the module."""

import math

import lightning as L
import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import lit_ppool
from lit_ppool import PPoolSegmentationModule, SyntheticDetailDataModule
from lit_ppool.training.metrics import BoundaryIoU, inner_boundary

IGNORE = 255


def erode_reference(mask, iterations):
    """Binary erosion by a 3x3 square, ``iterations`` times, the outside counting as background (zeros)."""
    height, width = mask.shape
    for _ in range(iterations):
        padded = np.zeros((height + 2, width + 2), dtype=bool)
        padded[1:-1, 1:-1] = mask
        eroded = np.ones((height, width), dtype=bool)
        for dy in range(3):
            for dx in range(3):
                eroded &= padded[dy : dy + height, dx : dx + width]
        mask = eroded
    return mask


def counts_reference(preds, target, num_classes, ignore_index=IGNORE, dilation_ratio=0.02):
    """Per-class intersection and union of the inner boundary bands, image by image."""
    intersection, union = np.zeros(num_classes, np.int64), np.zeros(num_classes, np.int64)
    for pred, gt in zip(np.asarray(preds), np.asarray(target)):
        height, width = gt.shape
        dilation = max(1, round(dilation_ratio * np.sqrt(height**2 + width**2)))
        valid = np.ones(gt.shape, dtype=bool) if ignore_index is None else gt != ignore_index
        for c in range(num_classes):
            gt_band = (gt == c) & ~erode_reference(gt == c, dilation)
            pred_band = (pred == c) & ~erode_reference(pred == c, dilation)
            intersection[c] += np.sum(gt_band & pred_band & valid)
            union[c] += np.sum((gt_band | pred_band) & valid)
    return intersection, union


def iou_reference(intersection, union):
    """Per-class IoU in float64 (nan where the union is empty) and its mean over the other classes."""
    with np.errstate(invalid="ignore"):
        per_class = intersection.astype(np.float64) / union
    return per_class, per_class[union > 0].mean() if (union > 0).any() else math.nan


def square_masks():
    """A 10x10 square (class 1) in a 20x20 image (class 0), predicted one pixel to the right: d = 1."""
    target = torch.zeros(1, 20, 20, dtype=torch.long)
    target[:, 5:15, 5:15] = 1
    preds = torch.zeros_like(target)
    preds[:, 5:15, 6:16] = 1
    return preds, target


def blobs(batches, batch_size, num_classes, seed):
    """Random blobby label maps (upsampled coarse labels) of varying sizes, and predictions that are partly wrong."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(batches):
        height, width = 40 + 7 * i, 52 - 5 * i
        coarse = torch.randint(0, num_classes, (batch_size, 1, 5, 6), generator=gen).float()
        target = F.interpolate(coarse, size=(height, width), mode="nearest").squeeze(1).long()
        preds = torch.roll(target, shifts=(i % 3, 1 - i % 2), dims=(1, 2))
        noise = torch.rand(preds.shape, generator=gen) < 0.05
        preds[noise] = torch.randint(0, num_classes, (int(noise.sum()),), generator=gen)
        target[torch.rand(target.shape, generator=gen) < 0.05] = IGNORE
        target[:, :3, :4] = IGNORE  # an ignored block, as padding leaves
        out.append((preds, target))
    return out


def test_hand_made_square_shifted_by_one_pixel():
    preds, target = square_masks()
    metric = BoundaryIoU(num_classes=2)
    metric.update(preds, target)
    # class 1: each band is the 10x10 ring of 100 - 8 * 8 = 36 px; they share the top and bottom rows over
    #   columns 6-14 (2 * 9 = 18 px); the side columns of one ring fall inside the other's interior.
    #   union = 36 + 36 - 18 = 54
    # class 0 (background, the image outside counts as background): each band is the image's border ring
    #   (4 * 20 - 4 = 76 px) plus the 12x12 ring just outside the square (144 - 100 = 44 px); the two outer
    #   rings share rows 4 and 15 over columns 5-15 (2 * 11 = 22 px).
    #   intersection = 76 + 22 = 98, union = 120 + 120 - 98 = 142
    assert metric.intersection.tolist() == [98, 18]
    assert metric.union.tolist() == [142, 54]
    assert metric.compute().item() == pytest.approx((98 / 142 + 18 / 54) / 2, abs=1e-6)
    assert counts_reference(preds, target, 2)[0].tolist() == [98, 18]


def test_hand_made_ignored_row_delimits_a_band_but_is_never_counted():
    preds, target = square_masks()
    target[:, 0, :] = IGNORE
    metric = BoundaryIoU(num_classes=2)
    metric.update(preds, target)
    # class 0 over the valid rows 1-19: the target band is row 1 (next to the ignored row, 20 px), row 19
    #   (20 px), columns 0 and 19 of rows 2-18 (34 px) and the 44 px ring: 118 px. The predicted band is the
    #   border ring less row 0 (56 px) and its 44 px ring: 100 px. Shared: 56 + 22 = 78; union 118 + 100 - 78.
    assert metric.intersection.tolist() == [78, 18]
    assert metric.union.tolist() == [140, 54]


def test_inner_boundary_is_the_iterated_3x3_erosion():
    gen = torch.Generator().manual_seed(3)
    masks = F.interpolate(torch.rand(3, 1, 4, 5, generator=gen), size=(17, 23), mode="nearest").squeeze(1) > 0.4
    for width in (1, 2, 4):
        expected = [m & ~erode_reference(m, width) for m in masks.numpy()]
        assert np.array_equal(inner_boundary(masks, width).numpy(), np.stack(expected)), width


@pytest.mark.parametrize("dilation_ratio", [0.02, 0.06])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_masks_accumulated_over_batches_match_the_reference(seed, dilation_ratio):
    num_classes = 4
    data = blobs(batches=3, batch_size=2, num_classes=num_classes, seed=seed)
    metric = BoundaryIoU(num_classes, dilation_ratio=dilation_ratio)
    per_class = BoundaryIoU(num_classes, dilation_ratio=dilation_ratio, average="none")
    intersection, union = np.zeros(num_classes, np.int64), np.zeros(num_classes, np.int64)
    for preds, target in data:
        metric.update(preds, target)
        per_class.update(preds, target)
        batch_intersection, batch_union = counts_reference(preds, target, num_classes, dilation_ratio=dilation_ratio)
        intersection += batch_intersection
        union += batch_union
    assert metric.intersection.tolist() == intersection.tolist()
    assert metric.union.tolist() == union.tolist()
    expected_per_class, expected_mean = iou_reference(intersection, union)
    assert metric.compute().item() == pytest.approx(expected_mean, abs=1e-6)
    assert per_class.compute().double().numpy() == pytest.approx(expected_per_class, abs=1e-6, nan_ok=True)


def test_ignored_pixels_never_count():
    preds, target = blobs(batches=1, batch_size=2, num_classes=3, seed=4)[0]  # 40x52: d = 1
    changed = preds.clone()  # new predictions where every pixel within d is ignored (the corner block)
    changed[:, :2, :3] = (changed[:, :2, :3] + 1) % 3
    counts = []
    for ignore_index in (IGNORE, None):  # None: 255 is a label of no class, and every pixel counts
        before = BoundaryIoU(3, ignore_index=ignore_index, validate_args=False)
        after = BoundaryIoU(3, ignore_index=ignore_index, validate_args=False)
        before.update(preds, target)
        after.update(changed, target)
        counts.append((before.intersection.tolist() + before.union.tolist(), after.intersection.tolist() + after.union.tolist()))
        expected = counts_reference(preds, target, 3, ignore_index=ignore_index)
        assert before.intersection.tolist() + before.union.tolist() == np.concatenate(expected).tolist()
    assert counts[0][0] == counts[0][1]  # ignored: the change is invisible
    assert counts[1][0] != counts[1][1]  # counted: the same change shows
    all_ignored = BoundaryIoU(3)
    all_ignored.update(preds, torch.full_like(target, IGNORE))
    assert all_ignored.union.tolist() == [0, 0, 0]
    assert math.isnan(all_ignored.compute().item())


def test_absent_classes_are_left_out_of_the_mean_and_nan_per_class():
    preds, target = square_masks()  # classes 2 and 3 appear nowhere
    metric, per_class = BoundaryIoU(4), BoundaryIoU(4, average="none")
    metric.update(preds, target)
    per_class.update(preds, target)
    ious = per_class.compute()
    assert ious[:2].tolist() == pytest.approx([98 / 142, 18 / 54], abs=1e-6)
    assert torch.isnan(ious[2:]).all()
    assert metric.compute().item() == pytest.approx((98 / 142 + 18 / 54) / 2, abs=1e-6)


def test_scores_input_equals_argmax_labels():
    preds, target = blobs(batches=1, batch_size=2, num_classes=3, seed=5)[0]
    scores = torch.randn(2, 3, *target.shape[1:])
    scores.scatter_(1, preds.unsqueeze(1), 10.0)
    from_scores, from_labels = BoundaryIoU(3), BoundaryIoU(3)
    from_scores.update(scores, target)
    from_labels.update(preds, target)
    assert torch.equal(from_scores.intersection, from_labels.intersection)
    assert torch.equal(from_scores.union, from_labels.union)


def test_lit_ppool_exports_boundary_iou():
    assert lit_ppool.BoundaryIoU is BoundaryIoU


def _ddp_worker(rank, world_size, store, out_folder, data):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        metric, per_class = BoundaryIoU(4), BoundaryIoU(4, average="none")
        for preds, target in data[rank::world_size]:
            metric.update(preds, target)
            per_class.update(preds, target)
        torch.save({"mean": metric.compute(), "per_class": per_class.compute()}, out_folder / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ddp_processes_match_one(tmp_path):
    data = blobs(batches=4, batch_size=1, num_classes=4, seed=6)
    single, single_per_class = BoundaryIoU(4), BoundaryIoU(4, average="none")
    for preds, target in data:
        single.update(preds, target)
        single_per_class.update(preds, target)
    # fork: the workers inherit the imports (a spawned process spends seconds importing torch and lit_ppool)
    mp.start_processes(_ddp_worker, args=(2, tmp_path / "store", tmp_path, data), nprocs=2, start_method="fork")
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert torch.equal(result["mean"], single.compute()), rank
        torch.testing.assert_close(result["per_class"], single_per_class.compute(), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"num_classes": 0}, "num_classes"),
        ({"num_classes": 2.0}, "num_classes"),
        ({"num_classes": 2, "ignore_index": "255"}, "ignore_index"),
        ({"num_classes": 2, "dilation_ratio": 0}, "dilation_ratio"),
        ({"num_classes": 2, "dilation_ratio": True}, "dilation_ratio"),
        ({"num_classes": 2, "average": "micro"}, "average"),
    ],
)
def test_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=f"Expected argument `{name}`"):
        BoundaryIoU(**kwargs)


def test_rejects_bad_inputs():
    metric = BoundaryIoU(3)
    target = torch.zeros(2, 8, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="Expected `preds`"):
        metric.update(torch.zeros(2, 8, 9, dtype=torch.long), target)
    with pytest.raises(ValueError, match="Expected `preds`"):
        metric.update(torch.randn(2, 4, 8, 8), target)  # 4 score channels for 3 classes
    with pytest.raises(ValueError, match=r"Expected `preds` labels.*\[3\]"):
        metric.update(torch.full_like(target, 3), target)
    with pytest.raises(ValueError, match=r"Expected labels of target.*\[7\]"):
        metric.update(target, torch.full_like(target, 7))
    with pytest.raises(ValueError, match="Expected `target`"):
        metric.update(target, target.float())


def test_module_logs_boundary_iou_and_per_class(tmp_path):
    module = PPoolSegmentationModule(
        arch="Unet", encoder_name="resnet18", encoder_weights=None, num_classes=5, pooling="max",
        model_kwargs={"decoder_channels": [32, 16, 16, 8, 8]},
    )  # fmt: skip
    data = SyntheticDetailDataModule(image_size=32, train_size=4, val_size=4, batch_size=2, eval_batch_size=2)
    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, data)
    trainer.validate(module, data, verbose=False)
    metrics = trainer.callback_metrics
    for key in ("val/boundary_IoU", "val/boundary_IoU/thin_line", "val/IoU/thin_line", "val/trimap_mIoU"):
        assert key in metrics, key
    assert 0.0 <= metrics["val/boundary_IoU"].item() <= 1.0
    # the macro is the mean of the per-class values over the classes present: the bands are computed once
    per_class = torch.stack([value for key, value in metrics.items() if key.startswith("val/boundary_IoU/")])
    assert per_class.shape == (5,)
    assert torch.allclose(metrics["val/boundary_IoU"], per_class.nanmean(), equal_nan=True)
    assert sum(isinstance(m, BoundaryIoU) for m in module.val_metrics.modules()) == 1
