"""Bad data: every fault names the file and the problem; on_bad_sample="skip" leaves samples out and reports them."""

import re
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from test_data import (
    LOADER,
    make_ade20k,
    make_camvid,
    make_cityscapes,
    make_voc,
    write_image,
    write_labels,
)

from lit_ppool import (
    ADE20KDataModule,
    CamVidDataModule,
    CityscapesDataModule,
    PPoolSegmentationModule,
    VOCDataModule,
)
from lit_ppool.training.data.checks import BadSampleError, BadSampleWarning, UnreadableFileError
from lit_ppool.training.data.transforms import pad_collate
from lit_ppool.training.errors import ConfigError

VOC = "VOCdevkit/VOC2012"
TINY_VOC_MODEL = {"arch": "Unet", "encoder_name": "resnet18", "encoder_weights": None, "num_classes": 21,
                  "model_kwargs": {"decoder_channels": [32, 16, 16, 8, 8]}}  # fmt: skip


def corrupt(path: Path):
    path.write_bytes(b"not an image at all")


def truncate(path: Path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def rgb_mask(path: Path):
    """A colour mask (grey masks saved as RGB are read as grey)."""
    colours = np.zeros((40, 48, 3), dtype=np.uint8)
    colours[..., 0] = 128
    Image.fromarray(colours).save(path)


FAULTS = {
    # fault: (file to break, how, exception, message pattern)
    "corrupt image": ("JPEGImages/2007_000003.jpg", corrupt, UnreadableFileError, r"Could not read image '.*2007_000003\.jpg' \(a corrupt, truncated"),
    "truncated image": ("JPEGImages/2007_000003.jpg", truncate, UnreadableFileError, r"Could not read image '.*2007_000003\.jpg'.*truncated"),
    "missing mask": ("SegmentationClass/2007_000003.png", Path.unlink, UnreadableFileError,
                     r"Missing label image '.*SegmentationClass/2007_000003\.png' of image '.*JPEGImages/2007_000003\.jpg'"),
    "corrupt mask": ("SegmentationClass/2007_000003.png", corrupt, UnreadableFileError, r"Could not read label image '.*2007_000003\.png'"),
    "size mismatch": ("SegmentationClass/2007_000003.png", lambda p: write_labels(p, [0, 15], size=(30, 48)), BadSampleError,
                      r"label image '.*2007_000003\.png' to have the size \(H, W\) of its image '.*2007_000003\.jpg', \(40, 48\), but got \(30, 48\)"),
    "label out of range": ("SegmentationClass/2007_000003.png", lambda p: write_labels(p, [0, 42, 21]), BadSampleError,
                           r"labels of '.*2007_000003\.png' to be in \[0, 21\) or the ignore_index 255, but got \[21, 42\]"),
    "rgb mask": ("SegmentationClass/2007_000003.png", rgb_mask, BadSampleError,
                 r"single-channel label image \(class indices\), but got shape \(40, 48, 3\) in '.*2007_000003\.png'"),
}  # fmt: skip


@pytest.mark.parametrize("fault", FAULTS)
def test_bad_sample_names_the_file_and_the_problem(tmp_path, fault):
    make_voc(tmp_path)
    relative, breaks, error, pattern = FAULTS[fault]
    datamodule = VOCDataModule(root=str(tmp_path), **LOADER)
    datamodule.setup("validate")
    breaks(tmp_path / VOC / relative)  # after setup: the file goes bad while the run is going
    with pytest.raises(error, match=pattern) as info:
        datamodule.datasets["val"][0]
    assert info.value.path == str(tmp_path / VOC / relative)


@pytest.mark.parametrize(
    ("datamodule_class", "make", "relative", "raw", "valid"),
    [
        (CamVidDataModule, make_camvid, "valannot/0001TP_000.png", [0, 3, 12, 200], "{0-11}"),
        (ADE20KDataModule, make_ade20k, "ADEChallengeData2016/annotations/validation/ADE_val_00000000.png", [0, 1, 151], "{0-150}"),
        (CityscapesDataModule, make_cityscapes, "gtFine/val/frankfurt/frankfurt_000000_000010_gtFine_labelIds.png", [7, 34, 26], "{0-33, 255}"),
    ],
)
def test_raw_label_the_dataset_never_uses_is_reported_not_ignored(tmp_path, datamodule_class, make, relative, raw, valid):
    make(tmp_path)
    write_labels(tmp_path / relative, raw)
    datamodule = datamodule_class(root=str(tmp_path), **LOADER)
    datamodule.setup("validate")
    index = [str(mask) for _, mask, _ in datamodule.datasets["val"].samples].index(str(tmp_path / relative))
    bad = sorted(set(raw) - {0, 1, 3, 7, 26})
    pattern = rf"raw label values of '.*{re.escape(Path(relative).name)}' to be in {re.escape(valid)}.*but got {re.escape(str(bad))}"
    with pytest.raises(BadSampleError, match=pattern):
        datamodule.datasets["val"][index]


def test_missing_files_are_found_at_setup_before_any_sample_is_read(tmp_path):
    make_voc(tmp_path)
    (tmp_path / VOC / "SegmentationClass/2007_000002.png").unlink()
    (tmp_path / VOC / "ImageSets/Segmentation/train.txt").write_text("2007_000001\n2007_000002\n2007_000777\n")
    with pytest.raises(UnreadableFileError, match=r"2 of 3 samples miss one: Missing label image '.*2007_000002\.png'.*"
                                                  r"Missing image '.*2007_000777\.jpg'.*on_bad_sample='skip'"):  # fmt: skip
        VOCDataModule(root=str(tmp_path), **LOADER).setup("fit")


def test_errors_in_dataloader_workers_name_the_file(tmp_path):
    make_voc(tmp_path)
    corrupt(tmp_path / VOC / "JPEGImages/2007_000003.jpg")
    datamodule = VOCDataModule(root=str(tmp_path), **{**LOADER, "num_workers": 2})
    datamodule.setup("validate")
    with pytest.raises(OSError, match=r"Could not read image '.*2007_000003\.jpg'"):
        next(iter(datamodule.val_dataloader()))


def test_invalid_policy_lists_the_choices(tmp_path):
    make_voc(tmp_path)
    with pytest.raises(ConfigError, match=r"Expected argument `on_bad_sample` to be one of \['raise', 'skip'\], but got 'ignore'"):
        VOCDataModule(root=str(tmp_path), on_bad_sample="ignore", **LOADER)


# --- on_bad_sample="skip" ------------------------------------------------------------------------


def make_bad_voc(root: Path) -> dict[str, str]:
    """A VOC tree with one bad sample of each kind; returns path -> fault."""
    make_voc(root)
    voc = root / VOC
    lists = voc / "ImageSets" / "Segmentation"
    (lists / "train.txt").write_text("2007_000001\n2007_000002\n2007_000005\n")
    (lists / "val.txt").write_text("2007_000003\n2007_000004\n2007_000006\n")
    write_image(voc / "JPEGImages/2007_000004.jpg", seed=4)
    write_labels(voc / "SegmentationClass/2007_000004.png", [0, 99])
    write_image(voc / "JPEGImages/2007_000005.jpg", seed=5)  # its mask is missing
    write_image(voc / "JPEGImages/2007_000006.jpg", seed=6)
    write_labels(voc / "SegmentationClass/2007_000006.png", [0, 15], size=(20, 48))
    corrupt(voc / "JPEGImages/2007_000002.jpg")
    return {
        str(voc / "JPEGImages/2007_000002.jpg"): "Could not read image",
        str(voc / "SegmentationClass/2007_000005.png"): "Missing label image",
        str(voc / "SegmentationClass/2007_000004.png"): "but got [99]",
        str(voc / "SegmentationClass/2007_000006.png"): "to have the size",
    }


def test_skip_keeps_training_batches_full_and_drops_bad_evaluation_samples_across_workers(tmp_path):
    bad = make_bad_voc(tmp_path)
    datamodule = VOCDataModule(root=str(tmp_path), on_bad_sample="skip", **{**LOADER, "num_workers": 2, "eval_batch_size": 3})
    datamodule.setup("fit")
    assert len(datamodule.datasets["train"]) == 2  # the sample without a mask left the list at setup
    train = next(iter(datamodule.train_dataloader()))
    assert train["image"].shape[0] == 2 and train["name"].count("2007_000001") == 2  # the corrupt one was replaced
    assert [path for path, _ in train["skipped"]] == [str(tmp_path / VOC / "JPEGImages/2007_000002.jpg")]
    val = next(iter(datamodule.val_dataloader()))
    assert val["name"] == ["2007_000003"] and val["image"].shape[0] == val["mask"].shape[0] == 1
    assert sorted(path for path, _ in val["skipped"]) == [str(tmp_path / VOC / f"SegmentationClass/2007_00000{i}.png") for i in (4, 6)]
    assert set(bad) >= {path for path, _ in val["skipped"]}


def test_pad_collate_of_only_bad_samples_is_an_empty_batch_the_module_skips():
    batch = pad_collate([{"skipped": [("a.png", "bad a")]}, {"skipped": [("b.png", "bad b")]}])
    assert batch["image"].shape[0] == 0 and batch["name"] == [] and batch["skipped"] == [("a.png", "bad a"), ("b.png", "bad b")]
    module = PPoolSegmentationModule(**TINY_VOC_MODEL)
    module.validation_step(batch, 0)
    assert module.val_metrics["mIoU"].update_count == 0
    assert module.predict_step(batch, 0) == {"masks": [], "names": []}


def test_skip_trains_and_reports_every_bad_file_at_the_end_of_the_stage(tmp_path):
    bad = make_bad_voc(tmp_path)
    datamodule = VOCDataModule(root=str(tmp_path), on_bad_sample="skip", **{**LOADER, "num_workers": 2, "eval_batch_size": 1})
    module = PPoolSegmentationModule(**TINY_VOC_MODEL)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, datamodule)
    reports = [str(w.message) for w in caught if issubclass(w.category, BadSampleWarning)]
    assert len(reports) == 1 and "left out 4 bad sample(s) during fit" in reports[0]
    for path, problem in bad.items():
        assert path in reports[0] and problem in datamodule.bad_samples.problems[path]
    assert datamodule.bad_samples.count >= 4  # the corrupt training image is met once per epoch
    assert torch.isfinite(trainer.callback_metrics["val/loss"])  # the empty validation batches were skipped
    assert 0 <= trainer.callback_metrics["val/mIoU"] <= 1
