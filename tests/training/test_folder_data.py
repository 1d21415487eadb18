"""A user's own folder of images and masks, and CrackForest: layouts, mask formats, and one clear error per problem."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lit_ppool import CrackForestDataModule, FolderDataModule
from lit_ppool.training.data.checks import BadSampleWarning, DatasetRootError
from lit_ppool.training.data.crackforest import CRACKFOREST_SPLIT
from lit_ppool.training.data.folder import DatasetLayoutError, read_seg, seeded_split
from lit_ppool.training.errors import ConfigError

from helpers.folders import crack_segments, crackforest_clone, write_image, write_seg

LOADER = dict(batch_size=2, eval_batch_size=2, num_workers=0, pin_memory=False, crop_size=32, scale_range=(1.0, 1.0))
SIZE = (24, 40)  # (H, W)


def write_mask(path: Path, values=(0, 1, 2), size=SIZE) -> np.ndarray:
    """A mask whose rows cycle through ``values``; RGB if the values are colours."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = np.array(values, dtype=np.uint8)[np.arange(size[0]) % len(values)]
    mask = np.repeat(rows[:, None], size[1], axis=1)
    Image.fromarray(mask).save(path)
    return mask


def flat_folder(root: Path, count=10, suffix=".jpg", values=(0, 1, 2)) -> Path:
    for i in range(count):
        write_image(root / "images" / f"img{i:02d}{suffix}", seed=i)
        write_mask(root / "masks" / f"img{i:02d}.png", values)
    return root


def all_stems(datamodule) -> dict[str, list[str]]:
    return {split: [name for _, _, name in samples] for split, samples in datamodule.samples.items()}


def eval_batch(datamodule, stage="test"):
    datamodule.setup(stage)
    return next(iter(datamodule.test_dataloader() if stage == "test" else datamodule.val_dataloader()))


# --- layouts -----------------------------------------------------------------------------------


def test_one_pool_is_split_by_seed_the_same_way_every_time(tmp_path):
    flat_folder(tmp_path, 20)
    kwargs = dict(classes=["a", "b", "c"], split=(0.6, 0.2, 0.2), split_seed=1, **LOADER)
    first, second = FolderDataModule(str(tmp_path), **kwargs), FolderDataModule(str(tmp_path), **kwargs)
    stems = all_stems(first)
    assert stems == all_stems(second)
    assert [len(stems[s]) for s in ("train", "val", "test")] == [12, 4, 4]
    assert sorted(sum(stems.values(), [])) == [f"img{i:02d}" for i in range(20)]  # disjoint, complete
    assert all_stems(FolderDataModule(str(tmp_path), **{**kwargs, "split_seed": 2})) != stems
    assert first.num_classes == 3 and first.class_names == ("a", "b", "c")


def test_seeded_split_depends_only_on_stems_and_seed():
    stems = [f"{i:03d}" for i in range(50)]
    split = seeded_split(stems, (0.7, 0.1, 0.2), 0)
    assert split == seeded_split(list(reversed(stems)), (0.7, 0.1, 0.2), 0)
    assert [len(split[s]) for s in ("train", "val", "test")] == [35, 5, 10]
    assert seeded_split(stems, (0.7, 0.1, 0.2), 1) != split


def test_the_split_is_fingerprinted_in_the_hyperparameters(tmp_path):
    flat_folder(tmp_path, 10)
    datamodule = FolderDataModule(str(tmp_path), classes=["a", "b", "c"], split=(0.6, 0.2, 0.2), **LOADER)
    fingerprint = datamodule.hparams["split_fingerprint"]
    assert fingerprint["train"].startswith("6 samples, sha256 ") and fingerprint["val"].startswith("2 samples")
    (tmp_path / "masks" / "img00.png").rename(tmp_path / "masks" / "img10.png")
    (tmp_path / "images" / "img00.jpg").rename(tmp_path / "images" / "img10.jpg")
    other = FolderDataModule(str(tmp_path), classes=["a", "b", "c"], split=(0.6, 0.2, 0.2), **LOADER)
    assert other.hparams["split_fingerprint"] != fingerprint  # same sizes, other files: told apart


def test_split_arguments_with_split_folders_are_an_error(tmp_path):
    for split in ("train", "val"):
        write_image(tmp_path / split / "images" / "a.png")
        write_mask(tmp_path / split / "masks" / "a.png")
    message = _error(tmp_path, {"split": (0.5, 0.5, 0)})
    assert "only for a single pool" in message and "which are the split" in message


def test_split_folders_each_holding_images_and_masks(tmp_path):
    for split, count in (("train", 4), ("valid", 2), ("test", 3)):
        for i in range(count):
            write_image(tmp_path / split / "img" / f"{split}{i}.png", seed=i)
            write_mask(tmp_path / split / "gt" / f"{split}{i}.png")
    datamodule = FolderDataModule(
        str(tmp_path), classes=["a", "b", "c"], image_dir="img", mask_dir="gt", split_dirs={"val": "valid"}, **LOADER
    )
    assert {split: len(names) for split, names in all_stems(datamodule).items()} == {"train": 4, "val": 2, "test": 3}
    batch = eval_batch(datamodule, "validate")
    assert batch["image"].shape[1:] == (3, 32, 64) and set(batch["mask"].unique().tolist()) <= {0, 1, 2, 255}


def test_split_sub_folders_beside_each_other_and_no_test_split(tmp_path):
    for split, count in (("train", 3), ("val", 2)):
        for i in range(count):
            write_image(tmp_path / "images" / split / f"{i}.tif", seed=i)
            write_mask(tmp_path / "masks" / split / f"{i}.png")
    datamodule = FolderDataModule(str(tmp_path), classes=["a", "b", "c"], **LOADER)
    assert sorted(datamodule.samples) == ["train", "val"]
    with pytest.raises(DatasetLayoutError, match="Expected a test split .* only \\['train', 'val'\\]"):
        datamodule.setup("test")


def test_split_list_files_and_inline_lists(tmp_path):
    flat_folder(tmp_path, 6)
    (tmp_path / "train.txt").write_text("img00\nimg01.jpg\n# a comment\nimg02\n")
    splits = {"train": "train.txt", "val": ["img03"], "test": ["img04", "img05"]}
    datamodule = FolderDataModule(str(tmp_path), classes=["a", "b", "c"], splits=splits, **LOADER)
    assert all_stems(datamodule) == {"train": ["img00", "img01", "img02"], "val": ["img03"], "test": ["img04", "img05"]}


def test_masks_beside_their_images_with_a_name_pattern(tmp_path):
    for i in range(5):
        write_image(tmp_path / "data" / f"x{i}.jpg", seed=i)
        write_mask(tmp_path / "data" / f"x{i}_seg_mask.png")
    datamodule = FolderDataModule(
        str(tmp_path), classes=["a", "b", "c"], image_dir="data", mask_dir="data", mask_pattern="{stem}_seg_mask.png",
        split=(0.6, 0.2, 0.2), **LOADER,
    )  # fmt: skip
    assert sorted(sum(all_stems(datamodule).values(), [])) == [f"x{i}" for i in range(5)]
    with pytest.raises(ConfigError, match="apart from their images"):
        FolderDataModule(str(tmp_path), classes=["a", "b"], image_dir="data", mask_dir="data", mask_pattern="{stem}.png")


# --- mask formats --------------------------------------------------------------------------------


def test_index_masks_with_ignore_and_a_value_map(tmp_path):
    flat_folder(tmp_path, 3, values=(0, 2, 255))
    datamodule = FolderDataModule(str(tmp_path), classes=["bg", "fg"], value_map={2: 1}, split=(0, 0, 1), **LOADER)
    batch = eval_batch(datamodule)
    rows = batch["mask"][0, : SIZE[0], 0].tolist()
    assert rows[:3] == [0, 1, 255]


def test_rgb_masks_with_a_palette_as_a_list_or_a_table(tmp_path):
    colours = [(0, 0, 0), (255, 0, 0), (0, 128, 255)]
    rows = np.array(colours + [(255, 255, 255)], dtype=np.uint8)[np.arange(SIZE[0]) % 4]
    (tmp_path / "masks").mkdir()
    for i in range(2):
        write_image(tmp_path / "images" / f"{i}.png", seed=i)
        Image.fromarray(np.repeat(rows[:, None], SIZE[1], axis=1)).save(tmp_path / "masks" / f"{i}.png")
    table = {"0,0,0": 0, "#ff0000": 1, "0,128,255": 2, "255,255,255": 255}
    datamodule = FolderDataModule(str(tmp_path), classes=["a", "b", "c"], palette=table, split=(0, 0, 1), **LOADER)
    assert eval_batch(datamodule)["mask"][0, :4, 0].tolist() == [0, 1, 2, 255]
    with pytest.raises(DatasetLayoutError, match=r"colour.*\(255, 255, 255\)"):  # white is in no class of a list palette
        FolderDataModule(str(tmp_path), classes=["a", "b", "c"], palette=[list(c) for c in colours], split=(0, 0, 1), **LOADER)
    with pytest.raises(DatasetLayoutError, match="colour -> class table"):  # an RGB mask read as class indices
        FolderDataModule(str(tmp_path), classes=["a", "b", "c"], split=(0, 0, 1), **LOADER)


def test_binary_masks(tmp_path):
    flat_folder(tmp_path, 2, values=(0, 255))
    datamodule = FolderDataModule(str(tmp_path), binary=True, split=(0, 0, 1), **LOADER)
    assert datamodule.class_names == ("background", "foreground") and datamodule.num_classes == 2
    assert eval_batch(datamodule)["mask"][0, :2, 0].tolist() == [0, 1]
    write_mask(tmp_path / "masks" / "img01.png", values=(0, 1, 255))  # 255 may be void here: ambiguous
    with pytest.raises(DatasetLayoutError, match="holds 0, 1 and 255"):
        FolderDataModule(str(tmp_path), binary=True, split=(0, 0, 1), **LOADER)


def test_one_bit_and_grey_rgb_masks_are_class_indices(tmp_path):
    flat_folder(tmp_path, 2)
    rows = (np.arange(SIZE[0]) % 2).astype(bool)
    Image.fromarray(np.repeat(rows[:, None], SIZE[1], axis=1)).save(tmp_path / "masks" / "img00.png")  # mode "1"
    grey = np.repeat(np.repeat((np.arange(SIZE[0]) % 3).astype(np.uint8)[:, None], SIZE[1], axis=1)[..., None], 3, axis=2)
    Image.fromarray(grey).save(tmp_path / "masks" / "img01.png")  # RGB, every channel equal
    datamodule = FolderDataModule(str(tmp_path), classes=["a", "b", "c"], split=(0, 0, 1), **LOADER)
    datamodule.setup("test")
    masks = {item["name"]: item["mask"][:3, 0].tolist() for item in datamodule.datasets["test"]}
    assert masks == {"img00": [0, 1, 0], "img01": [0, 1, 2]}


def test_resize_sets_the_resolution_of_every_split(tmp_path):
    flat_folder(tmp_path, 4)
    datamodule = FolderDataModule(str(tmp_path), classes=["a", "b", "c"], split=(0.5, 0.25, 0.25), **{**LOADER, "resize": (12, 20)})
    assert eval_batch(datamodule)["size"].tolist() == [[12, 20]]
    datamodule.setup("fit")
    assert next(iter(datamodule.train_dataloader()))["mask"].shape[1:] == (32, 32)  # padded with ignore to the crop


# --- one clear error per problem, at construction -----------------------------------------------


def _error(tmp_path, kwargs=None) -> str:
    with pytest.raises(ConfigError) as info:
        FolderDataModule(str(tmp_path), **{"classes": ["a", "b", "c"], **LOADER, **(kwargs or {})})
    return str(info.value)


def test_images_without_masks_are_counted_and_named(tmp_path):
    flat_folder(tmp_path, 8)
    for i in (1, 5, 6):
        (tmp_path / "masks" / f"img{i:02d}.png").unlink()
    message = _error(tmp_path)
    assert "3 of 8 images have no mask '{stem}.png'" in message and "'img01.jpg', 'img05.jpg', 'img06.jpg'" in message
    assert "`mask_pattern`" in message


def test_masks_without_images_and_two_images_with_one_stem(tmp_path):
    flat_folder(tmp_path, 3)
    write_mask(tmp_path / "masks" / "orphan.png")
    write_image(tmp_path / "images" / "img00.png")
    message = _error(tmp_path)
    assert "1 mask(s) have no image" in message and "'orphan.png'" in message
    assert "two images" in message and "img00.jpg / img00.png" in message


def test_a_size_mismatch_is_named(tmp_path):
    flat_folder(tmp_path, 4)
    write_mask(tmp_path / "masks" / "img02.png", size=(SIZE[0], SIZE[1] + 2))
    message = _error(tmp_path)
    assert "1 of 4 samples are not" in message and "img02.png" in message and "(24, 40)" in message and "(24, 42)" in message


def test_a_label_value_that_no_class_has_is_named(tmp_path):
    flat_folder(tmp_path, 4)
    write_mask(tmp_path / "masks" / "img03.png", values=(0, 7))
    message = _error(tmp_path)
    assert "img03.png" in message and "[7]" in message


def test_an_unreadable_file_is_named(tmp_path):
    flat_folder(tmp_path, 4)
    (tmp_path / "images" / "img01.jpg").write_bytes(b"not a jpeg at all")
    message = _error(tmp_path)
    assert "img01.jpg" in message and "Could not read" in message


def test_a_truncated_image_is_found_before_training(tmp_path):
    flat_folder(tmp_path, 4)
    path = tmp_path / "images" / "img02.jpg"
    path.write_bytes(path.read_bytes()[:200])
    assert "img02.jpg" in _error(tmp_path)


def test_an_empty_split_and_an_empty_folder(tmp_path):
    flat_folder(tmp_path, 3)
    assert "but val, test are empty" in _error(tmp_path, {"split": (0.9, 0.05, 0.05)})  # 5% of 3 images rounds to 0
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    assert "but train, val, test are empty" in _error(empty)


def test_split_list_lines_are_whole_stems(tmp_path):
    for name in ("IMG 001", "IMG 002", "IMG 003"):
        write_image(tmp_path / "images" / f"{name}.png")
        write_mask(tmp_path / "masks" / f"{name}.png")
    (tmp_path / "val.txt").write_text("  IMG 002  \n  # IMG 003\n")
    datamodule = FolderDataModule(str(tmp_path), classes=["a", "b", "c"], splits={"train": ["IMG 001"], "val": "val.txt"}, **LOADER)
    assert all_stems(datamodule) == {"train": ["IMG 001"], "val": ["IMG 002"]}


def test_bad_split_lists(tmp_path):
    flat_folder(tmp_path, 4)
    twice = _error(tmp_path, {"splits": {"train": ["img00", "img01", "img00"], "val": ["img02"]}})
    assert "listed twice" in twice and "'img00'" in twice
    leak = _error(tmp_path, {"splits": {"train": ["img00", "img01"], "val": ["img01"], "test": ["img02"]}})
    assert "also in the train split" in leak and "'img01'" in leak
    unknown = _error(tmp_path, {"splits": {"train": ["img00", "nope"], "val": ["img01"], "test": ["img02"]}})
    assert "neither image nor mask" in unknown and "'nope'" in unknown
    missing = _error(tmp_path, {"splits": {"train": "lists/train.txt", "val": ["img01"], "test": ["img02"]}})
    assert "lists/train.txt' (one stem per line) to exist, but it does not" in missing


def test_a_root_in_no_known_layout_lists_the_layouts_and_what_it_holds(tmp_path):
    (tmp_path / "pictures").mkdir()
    with pytest.raises(DatasetRootError) as info:
        FolderDataModule(str(tmp_path), classes=["a", "b"])
    message = str(info.value)
    assert "'pictures/'" in message and "<root>/images/ and <root>/masks/" in message and "`image_dir`" in message
    with pytest.raises(DatasetRootError, match="does not exist"):
        FolderDataModule(str(tmp_path / "nowhere"), classes=["a", "b"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"classes": None}, "`classes`"),
        ({"classes": ["a", "a"]}, "distinct"),
        ({"ignore_index": 1}, "`ignore_index`"),
        ({"value_map": {2: 9}}, "`value_map`"),
        ({"value_map": {2: 1}, "binary": True, "classes": ["a", "b"]}, "at most one"),
        ({"palette": [[0, 0, 0]]}, "`palette`"),
        ({"split": (0.5, 0.5, 0.5)}, "`split`"),
        ({"ignore_index": -1}, "[3, 255]"),
        ({"mask_pattern": "mask.png"}, "`mask_pattern`"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    flat_folder(tmp_path, 3)
    assert message in _error(tmp_path, kwargs)


def test_skip_leaves_bad_files_out_with_a_warning(tmp_path):
    flat_folder(tmp_path, 6)
    write_mask(tmp_path / "masks" / "img03.png", values=(0, 9))
    with pytest.warns(BadSampleWarning, match="left out 1 of 6 samples"):
        datamodule = FolderDataModule(str(tmp_path), classes=["a", "b", "c"], on_bad_sample="skip", split=(0.5, 0.5, 0), **LOADER)
    assert "img03" not in sum(all_stems(datamodule).values(), []) and len(sum(all_stems(datamodule).values(), [])) == 5


# --- CrackForest ---------------------------------------------------------------------------------


def test_read_seg_against_a_hand_written_mask(tmp_path):
    text = "image x.jpg\nwidth 5\nheight 3\nsegments 3\ngray 1\ninvert 0\nflipflop 0\nformat ascii cr\ndata\n"
    text += "0 0 0 4\n0 1 0 1\n1 1 2 2\n2 1 3 4\n1 2 0 0\n0 2 1 4\n"
    (tmp_path / "x.seg").write_text(text)
    expected = np.array([[0, 0, 0, 0, 0], [0, 0, 1, 2, 2], [1, 0, 0, 0, 0]])
    assert np.array_equal(read_seg(tmp_path / "x.seg"), expected)
    segments = crack_segments()
    write_seg(tmp_path / "y.seg", segments)
    assert np.array_equal(read_seg(tmp_path / "y.seg"), segments)


@pytest.mark.parametrize(
    "data, message",
    [("0 0 0 4\n0 1 0 4\n", "cover its 3x5 pixels"), ("0 0 0 9\n", "outside the image"), ("0 0 0 4\n0 0 0 4\n0 1 0 4\n", "overlap")],
)
def test_a_malformed_seg_file_is_named(tmp_path, data, message):
    from lit_ppool.training.data.checks import BadSampleError

    (tmp_path / "bad.seg").write_text("width 5\nheight 3\ndata\n" + data)
    with pytest.raises(BadSampleError, match=message) as info:
        read_seg(tmp_path / "bad.seg")
    assert "bad.seg" in str(info.value)
    (tmp_path / "none.seg").write_text("width five\n")
    with pytest.raises(BadSampleError, match="Berkeley .seg"):
        read_seg(tmp_path / "none.seg")


def test_crackforest_reads_the_public_layout_with_its_fixed_split(tmp_path):
    datamodule = CrackForestDataModule(str(crackforest_clone(tmp_path)), **{**LOADER, "crop_size": (16, 24)})
    assert datamodule.class_names == ("background", "crack") and datamodule.num_classes == 2
    assert all_stems(datamodule) == {split: list(stems) for split, stems in CRACKFOREST_SPLIT.items()}
    assert [len(CRACKFOREST_SPLIT[s]) for s in ("train", "val", "test")] == [72, 14, 32]
    batch = eval_batch(datamodule)
    expected = torch.from_numpy((crack_segments(seed=int(batch["name"][0])) == 1).astype(np.int64))  # segment 2: background
    assert torch.equal(batch["mask"][0, :16, :24], expected)


def test_crackforest_split_is_the_seeded_split_of_its_stems():
    stems = [f"{i:03d}" for i in range(1, 119)]
    assert seeded_split(stems, (72 / 118, 14 / 118, 32 / 118), 0) == {s: list(v) for s, v in CRACKFOREST_SPLIT.items()}


def test_crackforest_without_a_root_names_the_repository(tmp_path):
    with pytest.raises(DatasetRootError, match="github.com/cuilimeng/CrackForest-dataset"):
        CrackForestDataModule(str(tmp_path / "CrackForest"))


def test_crackforest_with_a_missing_label_names_it(tmp_path):
    root = crackforest_clone(tmp_path, extras=0)
    (root / "seg" / "042.seg").unlink()
    with pytest.raises(DatasetLayoutError, match="'042.jpg'"):
        CrackForestDataModule(str(root))


# --- the synthetic data's seed can follow the run's seed ------------------------------------------


def test_synthetic_seed_none_follows_the_run_seed(monkeypatch):
    from lit_ppool import SyntheticTexturesDataModule

    def first_mask(seed):
        datamodule = SyntheticTexturesDataModule(image_size=32, train_size=2, val_size=2, test_size=2, seed=seed)
        datamodule.setup("test")
        return datamodule.datasets["test"][0]["mask"]

    monkeypatch.setenv("PL_GLOBAL_SEED", "3")
    assert torch.equal(first_mask(None), first_mask(3)) and not torch.equal(first_mask(None), first_mask(0))
    monkeypatch.delenv("PL_GLOBAL_SEED")
    with pytest.raises(ConfigError, match="seed_everything"):
        first_mask(None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(first_mask(0), first_mask(0))
