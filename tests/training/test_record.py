"""The run record: file name rule, schema version, write -> read, old records, named errors, metric names."""

import json
import math

import pytest
import torch

from lit_ppool import PPoolSegmentationModule
from lit_ppool.training.record import (
    CLASS_FAMILIES,
    HEADLINE_METRICS,
    LEGACY_VERSION,
    RECORD_VERSION,
    RESULT_FILE,
    RunRecord,
    evaluation_record,
    load_results,
    metric_key,
    read_record,
    record_name,
    record_path,
    write_record,
)

from helpers.tiny import TINY_MODEL

METRICS = {"test/mIoU": 0.7, "test/IoU/background": 0.9, "test/IoU/crack": 0.5, "test/boundary_IoU/crack": math.nan}
ALPHA = {"encoder_maxpool": {"mean": 1.5, "min": 1.5, "max": 1.5, "init": 1.0}}


def _legacy(path, **changes):
    """A record as lit-ppool wrote it before records had a version."""
    record = {"checkpoint": str(path.parent / "checkpoints" / "last.ckpt"), "pooling": "p", "seed": 3,
              "metrics": {"test/mIoU": 0.6, "test/IoU/crack": 0.4}, "alpha": {}, **changes}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return path


def test_file_name_rule(tmp_path):
    checkpoint = tmp_path / "version_0" / "checkpoints" / "epoch=3-step=40.ckpt"
    assert record_path(checkpoint, "test") == tmp_path / "version_0" / "test-epoch=3-step=40.json"
    assert record_path(checkpoint, "validate") == tmp_path / "version_0" / "validate-epoch=3-step=40.json"
    assert record_path(tmp_path / "loose" / "last.ckpt", "test") == tmp_path / "loose" / "test-last.json"  # no checkpoints/
    assert RESULT_FILE == record_name("last.ckpt", "test") == "test-last.json"
    with pytest.raises(ValueError, match=r"`stage` to be one of \['validate', 'test'\], but got 'fit'"):
        record_name(checkpoint, "fit")


def test_write_then_read_round_trip_with_version(tmp_path):
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    written = RunRecord("p", 7, METRICS, ALPHA, checkpoint=str(checkpoint))
    path = write_record(written, "test")
    assert path == tmp_path / "run" / "test-last.json"
    raw = json.loads(path.read_text())
    assert raw["version"] == RECORD_VERSION and list(raw) == ["version", "checkpoint", "pooling", "seed", "metrics", "alpha"]
    read = read_record(path)
    assert (read.pooling, read.seed, read.alpha, read.checkpoint, read.path, read.version) == (
        "p", 7, ALPHA, str(checkpoint), path, RECORD_VERSION)  # fmt: skip
    assert read.metrics.keys() == METRICS.keys() and math.isnan(read.metrics["test/boundary_IoU/crack"])
    assert read.metrics["test/mIoU"] == 0.7 and read.class_names() == ["background", "crack"]


def test_a_record_without_checkpoint_is_not_written(tmp_path):
    with pytest.raises(ValueError, match="name its checkpoint"):
        write_record(RunRecord("p", 0, METRICS), "test")


def test_a_record_from_before_the_version_is_read(tmp_path):
    record = read_record(_legacy(tmp_path / "p" / "seed_3" / "test-last.json"))
    assert (record.version, record.pooling, record.seed, record.metrics["test/mIoU"]) == (LEGACY_VERSION, "p", 3, 0.6)
    unseeded = read_record(_legacy(tmp_path / "unseeded" / "test-last.json", seed=False))  # seed_everything: false
    assert unseeded.seed is None
    (found,) = load_results(tmp_path / "p")
    assert found.path == tmp_path / "p" / "seed_3" / "test-last.json"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pooling": None}, r"`pooling` of the run record '.*x/test-last.json' to be a pooling name, but got None"),
        ({"seed": "3"}, r"`seed` of the run record .* to be an int or null, but got '3'"),
        ({"metrics": {"test/mIoU": "high"}}, r"`metrics` of the run record .* metric name -> number"),
        ({"metrics": None}, r"`metrics` of the run record"),
        ({"alpha": [1.0]}, r"`alpha` of the run record"),
        ({"version": RECORD_VERSION + 1}, r"`version` of the run record .* upgrade lit-ppool"),
    ],
)
def test_a_malformed_record_is_named(tmp_path, changes, message):
    path = _legacy(tmp_path / "x" / "test-last.json", **changes)
    with pytest.raises(ValueError, match=message):
        read_record(path)


def test_a_record_that_is_not_json_or_not_an_object_is_named(tmp_path):
    path = tmp_path / "x" / "test-last.json"
    path.parent.mkdir()
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"x/test-last.json.* JSON"):
        read_record(path)
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"content of the run record .*x/test-last.json' to be a JSON object"):
        read_record(path)


def test_compare_needs_a_seed_and_keeps_the_newest_record(tmp_path):
    import os

    old = _legacy(tmp_path / "a" / "test-last.json")
    new = _legacy(tmp_path / "b" / "test-last.json", metrics={"test/mIoU": 0.9})
    os.utime(old, (1, 1))  # same (pooling, seed): the newer file wins
    (record,) = load_results(tmp_path)
    assert record.path == new and record.metrics == {"test/mIoU": 0.9}
    _legacy(tmp_path / "c" / "test-last.json", seed=None)
    with pytest.raises(ValueError, match=r"seed in '.*c/test-last.json' to be an int"):
        load_results(tmp_path)


def test_metric_keys():
    assert [metric_key("test", name) for name in HEADLINE_METRICS] == [
        "test/mIoU", "test/boundary_IoU", "test/trimap_mIoU", "test/pixel_acc"]  # fmt: skip
    assert [metric_key("val", family, "crack") for family in CLASS_FAMILIES] == [
        "val/IoU/crack", "val/boundary_IoU/crack", "val/F1/crack", "val/precision/crack", "val/recall/crack"]  # fmt: skip


def test_the_module_logs_the_record_metric_names_and_its_evaluation_is_recorded(tmp_path):
    module = PPoolSegmentationModule(**{**TINY_MODEL, "num_classes": 2})
    module.test_metrics.update(torch.tensor([[[0, 1], [1, 1]]]), torch.tensor([[[0, 1], [0, 1]]]))
    computed = set(module.test_metrics.compute())
    names = module.class_names
    assert computed == {metric_key("test", name) for name in HEADLINE_METRICS if name != "boundary_IoU"} | {
        metric_key("test", family, name) for family in CLASS_FAMILIES for name in names}  # fmt: skip

    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint.parent.mkdir(parents=True)
    logged = {"test/mIoU": torch.tensor(0.5), "test/IoU/class_0": torch.tensor(0.25), "histogram": torch.zeros(3)}
    path = write_record(evaluation_record(checkpoint, module, logged, seed=4), "test")
    record = read_record(path)
    assert (record.pooling, record.seed, record.metrics) == ("p", 4, {"test/mIoU": 0.5, "test/IoU/class_0": 0.25})
    assert record.alpha == {"encoder_maxpool": {"mean": pytest.approx(1.0), "min": pytest.approx(1.0),
                                                "max": pytest.approx(1.0), "init": 1.0}}  # fmt: skip
    assert evaluation_record(checkpoint, module, {}, seed=True).seed is None  # not an int seed
