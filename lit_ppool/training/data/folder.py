"""A user's own folder of images and masks, in the layouts such folders come in.

Layouts (``images`` and ``masks`` are ``image_dir`` and ``mask_dir``; split folders are
``split_dirs``), found in this order:

1. split folders, each with both: ``<root>/{train,val,test}/{images,masks}/``;
2. split sub-folders: ``<root>/images/{train,val,test}/`` beside ``<root>/masks/{train,val,test}/``;
3. one pool: ``<root>/images/`` and ``<root>/masks/``, split by ``splits`` (a list file of
   stems, or a list of stems, per split) or else by ``split`` fractions, a seeded split
   that depends only on the stems and ``split_seed``, so it is the same on every machine.

A mask belongs to the image with its file stem, its name given by ``mask_pattern``
(``"{stem}.png"``, ``"{stem}_mask.png"``, ...); masks may sit beside their images
(``mask_dir`` equal to ``image_dir``). Everything that would make a run use fewer or other
samples than the folder holds is an error before any model is built: images without masks,
masks without images, two images with one stem, unknown stems in a split list, an empty
split, and (with ``check_files``) a file that cannot be decoded, a mask whose size is not its
image's, or a label value that no class has.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image
from torch.utils.data import Dataset

from lit_ppool.training.data.base import Sample, SegmentationDataModule, SegmentationFileDataset, label_lut
from lit_ppool.training.data.checks import IGNORE_INDEX, BadSampleError, BadSampleWarning, DatasetRootError
from lit_ppool.training.errors import ConfigError

__all__ = ["FolderDataModule", "FolderDataset", "DatasetLayoutError", "read_seg", "seeded_split"]

SPLITS = ("train", "val", "test")
PATTERN_FIELD = "{stem}"


class DatasetLayoutError(ConfigError):
    """A dataset folder whose files do not pair up or split as configured (a ``ConfigError``)."""


@functools.cache
def image_suffixes() -> frozenset[str]:
    """File suffixes of the formats PIL can open (lower case, with the dot; save-only formats such as PDF left out)."""
    return frozenset(suffix.lower() for suffix, name in Image.registered_extensions().items() if name in Image.OPEN)


def read_seg(path: str | os.PathLike) -> np.ndarray:
    """The segment map of a Berkeley segmentation (``.seg``) text file, as used by CrackForest.

    The header (``width``, ``height``, ...) ends at a line ``data``; each following line is a run
    ``segment row col_first col_last`` (0-based, inclusive). Every pixel must be covered exactly once.

    Returns:
        ``(height, width)`` int64 array of segment ids.

    Raises:
        BadSampleError: If the file is malformed, naming it and the problem.

    Example:
        >>> import tempfile, pathlib
        >>> text = "width 3\\nheight 2\\nsegments 2\\ndata\\n0 0 0 2\\n0 1 0 0\\n1 1 1 2\\n"
        >>> file = pathlib.Path(tempfile.mkdtemp()) / "x.seg"; _ = file.write_text(text)
        >>> read_seg(file)
        array([[0, 0, 0],
               [0, 1, 1]])
    """
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as err:
        raise BadSampleError(f"Could not read the .seg file {str(path)!r}: {err}", path) from err
    header, found, data = text.partition("\ndata")
    fields = dict(line.split(None, 1) for line in header.splitlines() if len(line.split(None, 1)) == 2)
    try:
        width, height = int(fields["width"]), int(fields["height"])
        runs = np.array(data.split("\n", 1)[1].split() if found and "\n" in data else [], dtype=np.int64).reshape(-1, 4)
    except (KeyError, ValueError) as err:
        raise BadSampleError(
            f"Expected {str(path)!r} to be a Berkeley .seg file (a header with width and height, a line 'data', "
            f"then runs 'segment row col_first col_last'), but it is not ({type(err).__name__}: {err}).",
            path,
        ) from None
    segment, row, first, last = runs.T
    bad = (segment < 0) | (row < 0) | (row >= height) | (first < 0) | (last < first) | (last >= width)
    lengths = last - first + 1
    if bad.any() or lengths.sum() != width * height:
        reason = f"run {runs[bad][0].tolist()} is outside the image" if bad.any() else f"they cover {lengths.sum()} pixels"
        raise BadSampleError(f"Expected the runs of {str(path)!r} to cover its {height}x{width} pixels once each, but {reason}.", path)
    starts = row * width + first
    positions = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    labels = np.full(width * height, -1, dtype=np.int64)
    labels[positions] = np.repeat(segment, lengths)
    if (labels < 0).any():
        raise BadSampleError(f"Expected the runs of {str(path)!r} to cover every pixel once, but some overlap.", path)
    return labels.reshape(height, width)


def seeded_split(stems: Sequence[str], fractions: Sequence[float], seed: int) -> dict[str, list[str]]:
    """Split ``stems`` into train/val/test by ``fractions``, the same on every machine and library version.

    The stems are ordered by the SHA-256 of ``"<seed>:<stem>"`` (no random generator), so the
    split depends only on the set of stems and the seed, not on the order of the files, the
    machine or a library version. The first ``round(n * test)`` stems are test, the next
    ``round(n * val)`` val, the rest train; adding or removing files can move others between
    splits (the datamodule logs a fingerprint of each split).

    Example:
        >>> seeded_split([f"{i:03d}" for i in range(10)], (0.6, 0.2, 0.2), 0)["test"]
        ['005', '007']
    """
    order = sorted(stems, key=lambda stem: hashlib.sha256(f"{seed}:{stem}".encode()).hexdigest())
    n_val, n_test = round(len(order) * fractions[1]), round(len(order) * fractions[2])
    chosen = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
    return {split: sorted(names) for split, names in chosen.items()}


def split_digest(samples: Sequence[Sample]) -> str:
    """``"<count> samples, sha256 <12 hex digits of the sorted stems>"``: which samples a split holds, in one line."""
    stems = "\n".join(sorted(name for _, _, name in samples))
    return f"{len(samples)} samples, sha256 {hashlib.sha256(stems.encode()).hexdigest()[:12]}"


def _sample_problem(dataset: SegmentationFileDataset, index: int) -> str | None:
    """Why sample ``index`` of ``dataset`` is bad (:meth:`~SegmentationFileDataset.check`), or ``None``."""
    try:
        dataset.check(index)
    except BadSampleError as err:
        return str(err)
    return None


def _names(items: Sequence[str], limit: int = 5) -> str:
    """The first ``limit`` items, quoted, and how many more."""
    shown = ", ".join(repr(item) for item in list(items)[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


class FolderDataset(SegmentationFileDataset):
    """:class:`SegmentationFileDataset` whose masks may also be colours (``palette``), binary, or ``.seg`` files.

    Args:
        samples: ``(image path, mask path, name)`` triples.
        palette: ``{(r, g, b): train id}``; with it, masks are read as RGB and every colour must be listed.
        binary: Masks of 0 and 1 or 255 (not both 1 and 255 in one mask: then 255 may be void).
        **kwargs: Arguments of :class:`SegmentationFileDataset`.
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        *args: Any,
        palette: Mapping[tuple[int, int, int], int] | None = None,
        binary: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(samples, *args, **kwargs)
        self.binary = binary
        self.palette = dict(palette) if palette else None
        table = {(r << 16) | (g << 8) | b: index for (r, g, b), index in (self.palette or {}).items()}  # one int per colour
        self._colour_codes = np.array(sorted(table), dtype=np.int64)
        self._colour_classes = np.array([table[code] for code in self._colour_codes], dtype=np.int64)

    def read_mask(self, path: Path, image_path: Path) -> np.ndarray:
        if path.suffix.lower() == ".seg":
            return read_seg(path)
        if self.palette is None:
            raw = super().read_mask(path, image_path)
            if self.binary and (raw == 1).any() and (raw == 255).any():
                raise BadSampleError(
                    f"Expected a binary mask of 0 and 1 or of 0 and 255, but {str(path)!r} holds 0, 1 and 255: is 255 "
                    "void? Then pass value_map {255: 255} (ignored) in place of binary=True.",
                    path,
                )
            return raw
        rgb = np.array(self._open(path, "RGB", f"label image {str(path)!r} of image {str(image_path)!r}")).astype(np.int64)
        codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        index = np.clip(np.searchsorted(self._colour_codes, codes), 0, len(self._colour_codes) - 1)
        unknown = self._colour_codes[index] != codes
        if unknown.any():
            colours = [((c >> 16) & 255, (c >> 8) & 255, c & 255) for c in np.unique(codes[unknown])[:5].tolist()]
            raise BadSampleError(
                f"Expected every colour of {str(path)!r} to be in `palette`, but got {colours} "
                f"({int(unknown.sum())} pixels). Add them to `palette` (as a class or the ignore_index).",
                path,
            )
        return self._colour_classes[index]


def _parse_colour(key: Any) -> tuple[int, int, int]:
    """``(r, g, b)`` from a sequence, ``"r,g,b"`` or ``"#rrggbb"``."""
    if isinstance(key, str):
        text = key.strip()
        parts = [int(text[i : i + 2], 16) for i in (1, 3, 5)] if text.startswith("#") and len(text) == 7 else text.split(",")
        key = [int(part) for part in parts]
    colour = tuple(int(v) for v in key)
    if len(colour) != 3 or not all(0 <= v <= 255 for v in colour):
        raise ValueError(key)
    return colour  # type: ignore[return-value]


class FolderDataModule(SegmentationDataModule):
    """Your own folder of images and masks: one config block, every problem reported before training.

    See the module docstring for the layouts. Masks hold class indices (single-channel PNG,
    255 = ignore by default), or colours with ``palette``, or 0/255 with ``binary``; CrackForest's
    ``.seg`` files are read too. ``classes`` names the classes, in index order: it gives
    ``num_classes`` and the labels of the per-class metrics.

    Args:
        root: The dataset folder.
        classes: Class names in index order; ``binary=True`` defaults to ``["background", "foreground"]``.
        image_dir: Folder name of the images (any format PIL reads).
        mask_dir: Folder name of the masks; equal to ``image_dir`` when masks sit beside their images.
        mask_pattern: File name of the mask of an image with stem ``stem``: ``"{stem}.png"``,
            ``"{stem}_mask.png"``, ``"{stem}_seg_mask.png"``, ...
        split_dirs: Folder names of the splits, ``{"train": "train", "val": "val", "test": "test"}``
            (e.g. ``{"val": "valid"}`` changes one).
        splits: One pool only: per split, a text file of stems (one per line; a file name's
            image suffix is dropped; relative to ``root``) or a list of stems. Stems listed
            nowhere are not used. Without it, ``split`` applies.
        split: One pool only: ``(train, val, test)`` fractions of a seeded split (see :func:`seeded_split`),
            ``(0.7, 0.15, 0.15)`` if not given; a split of fraction 0 does not exist (``(0.8, 0.2, 0)``
            for fit only).
        split_seed: Seed of that split.
        ignore_index: Mask value of ignored pixels (void, outlines), in ``[len(classes), 255]``.
        value_map: Raw mask value -> class index (or ``ignore_index``), e.g. ``{2: 1}``; other
            values are class indices already.
        palette: Colour masks: one ``[r, g, b]`` per class (index order), or ``{"r,g,b" or
            "#rrggbb": class index or ignore_index}``.
        binary: Masks of 0 (background) and 255 or 1 (foreground), two classes; a mask holding both 1
            and 255 is an error (255 may be void there: use ``value_map``).
        check_files: Decode every image and mask when the datamodule is built (a thread pool;
            about a second per few hundred images): size mismatches, unreadable files and label
            values that no class has are reported then, all at once, instead of mid-training.
        **kwargs: Loader and augmentation arguments of
            :class:`~lit_ppool.training.data.SegmentationDataModule` (``batch_size``,
            ``crop_size``, ``resize``, ``scale_range``, ``on_bad_sample``, ...).

    Raises:
        DatasetRootError: If ``root`` has none of the layouts (the message lists them and what it holds).
        DatasetLayoutError: (a ``ConfigError``) If files do not pair up, a split is empty, a split
            list names unknown stems, or (``check_files``) a file is bad: one error per kind of
            problem, with its count and the first names. With ``on_bad_sample="skip"`` bad files
            are left out with a :class:`~lit_ppool.training.data.checks.BadSampleWarning` instead.
        ConfigError: If an argument is invalid.

    Example (YAML)::

        data:
          class_path: lit_ppool.FolderDataModule
          init_args: {root: data/my_set, classes: [background, crack], crop_size: 256}
    """

    def __init__(
        self,
        root: str,
        classes: Sequence[str] | None = None,
        image_dir: str = "images",
        mask_dir: str = "masks",
        mask_pattern: str = "{stem}.png",
        split_dirs: Mapping[str, str] | None = None,
        splits: Mapping[str, str | Sequence[str]] | None = None,
        split: tuple[float, float, float] | None = None,
        split_seed: int = 0,
        ignore_index: int = IGNORE_INDEX,
        value_map: Mapping[int, int] | None = None,
        palette: Sequence[Sequence[int]] | Mapping[str, int] | None = None,
        binary: bool = False,
        check_files: bool = True,
        **kwargs: Any,
    ) -> None:
        self.class_names = self._check_classes(classes, binary)
        self.num_classes = len(self.class_names)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int) or not self.num_classes <= ignore_index <= 255:
            raise ConfigError(
                f"Expected argument `ignore_index` to be a mask value in [{self.num_classes}, 255] (not a class index), "
                f"but got {ignore_index!r}."
            )
        self.ignore_index = ignore_index
        super().__init__(**kwargs)
        self.root = Path(root).expanduser()
        self.binary = binary
        self.lut = self._label_lut(value_map, binary, palette is not None)
        self.palette = self._check_palette(palette)
        self.check_files = check_files
        self.samples = self._collect_samples(image_dir, mask_dir, mask_pattern, split_dirs, splits, split, split_seed)
        self._check_not_empty()
        if check_files:
            self._check_every_file()
        self.split_fingerprint = {split: split_digest(samples) for split, samples in self.samples.items()}
        self.save_hyperparameters({"split_fingerprint": self.split_fingerprint})  # in hparams.yaml and the W&B config
        rank_zero_info(f"lit_ppool: {type(self).__name__} splits of {str(self.root)!r}: {self.split_fingerprint}")

    def _collect_samples(
        self,
        image_dir: str,
        mask_dir: str,
        mask_pattern: str,
        split_dirs: Mapping[str, str] | None,
        splits: Mapping[str, str | Sequence[str]] | None,
        split: Sequence[float],
        split_seed: int,
    ) -> dict[str, list[Sample]]:
        """``split -> samples``: the layout found, its files paired, a single pool split."""
        if PATTERN_FIELD not in mask_pattern:
            raise ConfigError(f"Expected argument `mask_pattern` to hold {PATTERN_FIELD!r} (e.g. '{{stem}}_mask.png'), but got {mask_pattern!r}.")
        dirs = {**dict(zip(SPLITS, SPLITS)), **dict(split_dirs or {})}
        if set(dirs) != set(SPLITS):
            raise ConfigError(f"Expected the keys of argument `split_dirs` to be among {list(SPLITS)}, but got {sorted(split_dirs or {})}.")
        folders = self._find_layout(image_dir, mask_dir, dirs)
        for pair in folders.values():
            self._check_same_folder_pattern(*pair, mask_pattern)
        if "all" in folders:
            stems = None if splits is None else self._read_split_lists(splits)
            pool = self._pair(*folders["all"], mask_pattern, None if stems is None else [s for names in stems.values() for s in names])
            stems = stems or self._seeded_stems(list(pool), (0.7, 0.15, 0.15) if split is None else split, split_seed)
            return {name: [pool[stem] for stem in names] for name, names in stems.items()}
        if splits is not None or split is not None:
            raise ConfigError(
                f"Expected arguments `splits` and `split` only for a single pool of images, but {str(self.root)!r} has "
                f"split folders ({', '.join(str(images) for images, _ in folders.values())}), which are the split."
            )
        paired, problems = {}, []
        for name, pair in folders.items():
            try:
                paired[name] = self._pair(*pair, mask_pattern)
            except DatasetLayoutError as err:
                problems.append(str(err))
        if problems:
            raise DatasetLayoutError(" ".join(problems))
        return {name: list(pairs.values()) for name, pairs in paired.items()}

    @staticmethod
    def _check_no_leak(stems: Mapping[str, Sequence[str]]) -> None:
        """Raise if a split list names a stem of another split, or one stem twice."""
        seen: dict[str, str] = {}
        for split, names in stems.items():
            repeated = sorted({name for name in names if name in seen} | {name for name in names if names.count(name) > 1})
            if repeated:
                where = f"also in the {seen[repeated[0]]} split" if repeated[0] in seen else "listed twice"
                raise DatasetLayoutError(
                    f"Expected each sample in one split, once, but {len(repeated)} stem(s) of the {split} split are {where}: "
                    f"{_names(repeated)}. A sample in two splits leaks test data into training; one listed twice counts twice."
                )
            seen.update(dict.fromkeys(names, split))

    @staticmethod
    def _check_classes(classes: Sequence[str] | None, binary: bool) -> tuple[str, ...]:
        """The class names, checked: distinct strings, two with ``binary``."""
        if classes is None and binary:
            return ("background", "foreground")
        if isinstance(classes, str) or not isinstance(classes, Sequence) or len(classes) < 1 + bool(binary) or not all(isinstance(c, str) for c in classes):
            raise ConfigError(
                "Expected argument `classes` to be a list of class names in index order (e.g. [background, crack])"
                f"{', two with binary=True' if binary else ''}, but got {classes!r}."
            )
        if len(set(classes)) != len(classes):
            raise ConfigError(f"Expected argument `classes` to hold distinct names, but got {list(classes)}.")
        if binary and len(classes) != 2:
            raise ConfigError(f"Expected two `classes` with binary=True (background, foreground), but got {list(classes)}.")
        return tuple(classes)

    def _label_lut(self, value_map: Mapping[int, int] | None, binary: bool, palette: bool) -> np.ndarray | None:
        """Raw value -> class index; ``-1`` for values no class has (reported as bad samples)."""
        if sum([value_map is not None, binary, palette]) > 1:
            raise ConfigError("Expected at most one of the arguments `value_map`, `binary` and `palette`, but got several.")
        if palette:
            return None  # the palette gives class indices
        if binary:
            return label_lut({0: 0, 1: 1, 255: 1}, valid=[])
        valid = {*range(self.num_classes), self.ignore_index}
        mapping = {value: value for value in valid if 0 <= value < 256}
        for raw, index in dict(value_map or {}).items():
            if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw < 256 or index not in valid:
                raise ConfigError(
                    f"Expected argument `value_map` to map raw values in [0, 255] to a class index in [0, {self.num_classes}) "
                    f"or the ignore_index {self.ignore_index}, but got {raw!r}: {index!r}."
                )
            mapping[raw] = index
        return label_lut(mapping, valid=[])

    def _check_palette(self, palette: Sequence[Sequence[int]] | Mapping[str, int] | None) -> dict[tuple[int, int, int], int] | None:
        """``{(r, g, b): class index}`` from the ``palette`` argument, checked."""
        if palette is None:
            return None
        try:
            items = palette.items() if isinstance(palette, Mapping) else [(colour, index) for index, colour in enumerate(palette)]
            table = {_parse_colour(colour): index for colour, index in items}
        except (TypeError, ValueError):
            table = None
        valid = {*range(self.num_classes), self.ignore_index}
        if not table or any(index not in valid for index in table.values()):
            raise ConfigError(
                f"Expected argument `palette` to be one [r, g, b] per class ({self.num_classes}) or {{'r,g,b' or '#rrggbb': "
                f"class index or the ignore_index {self.ignore_index}}}, but got {palette!r}."
            )
        if not isinstance(palette, Mapping) and len(table) != self.num_classes:
            raise ConfigError(f"Expected argument `palette` to give {self.num_classes} distinct colours (one per class), but got {palette!r}.")
        return table

    def _layout_error(self, image_dir: str, mask_dir: str, dirs: Mapping[str, str], problem: str) -> DatasetRootError:
        layouts = (
            f"  <root>/{dirs['train']}/{image_dir}/, <root>/{dirs['train']}/{mask_dir}/ (and {dirs['val']}/, {dirs['test']}/)\n"
            f"  <root>/{image_dir}/{dirs['train']}/ beside <root>/{mask_dir}/{dirs['train']}/ (and {dirs['val']}, {dirs['test']})\n"
            f"  <root>/{image_dir}/ and <root>/{mask_dir}/ (split by `splits` lists or `split` fractions)"
        )
        return DatasetRootError(
            f"Expected argument `root` to be a dataset folder in one of these layouts:\n{layouts}\nbut got {str(self.root)!r}, "
            f"{problem}. Set `image_dir`, `mask_dir` and `split_dirs` to your folder names."
        )

    def _find_layout(self, image_dir: str, mask_dir: str, dirs: Mapping[str, str]) -> dict[str, tuple[Path, Path]]:
        """``split -> (image folder, mask folder)``, or ``{"all": ...}`` for one pool."""
        root = self.root
        if not root.is_dir():
            raise self._layout_error(image_dir, mask_dir, dirs, "which " + ("is not a folder" if root.exists() else "does not exist"))
        split_folders = {s: (root / dirs[s] / image_dir, root / dirs[s] / mask_dir) for s in SPLITS if (root / dirs[s] / image_dir).is_dir()}
        sub_folders = {s: (root / image_dir / dirs[s], root / mask_dir / dirs[s]) for s in SPLITS if (root / image_dir / dirs[s]).is_dir()}
        found = split_folders or sub_folders
        for split, (_, masks) in found.items():
            if not masks.is_dir():
                raise self._layout_error(image_dir, mask_dir, dirs, f"where the {split} images have no mask folder {str(masks)!r}")
        if found:
            return found
        if (root / image_dir).is_dir():
            if not (root / mask_dir).is_dir():
                raise self._layout_error(image_dir, mask_dir, dirs, f"where the mask folder {mask_dir!r} is missing")
            return {"all": (root / image_dir, root / mask_dir)}
        entries = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in root.iterdir())
        raise self._layout_error(image_dir, mask_dir, dirs, f"which holds {_names(entries, 8) or 'nothing'}")

    @staticmethod
    def _check_same_folder_pattern(image_folder: Path, mask_folder: Path, pattern: str) -> None:
        prefix, suffix = pattern.split(PATTERN_FIELD, 1)
        if image_folder == mask_folder and not prefix and suffix.lower() in image_suffixes():
            raise ConfigError(
                f"Expected argument `mask_pattern` to name masks apart from their images when both are in "
                f"{str(image_folder)!r}, but got {pattern!r}, which is also an image's name. Use e.g. '{{stem}}_mask.png'."
            )

    def _pair(self, image_folder: Path, mask_folder: Path, pattern: str, wanted: Sequence[str] | None = None) -> dict[str, Sample]:
        """``stem -> (image, mask, stem)`` of one image/mask folder pair (only the ``wanted`` stems if given).

        Raises:
            DatasetLayoutError: Listing images without masks, masks without images, stems with two
                images, and wanted stems with neither.
        """
        prefix, suffix = pattern.split(PATTERN_FIELD, 1)
        mask_name = re.compile(re.escape(prefix) + "(?P<stem>.+)" + re.escape(suffix) + r"\Z", re.IGNORECASE)
        files = {folder: [p for p in sorted(folder.iterdir()) if not p.name.startswith(".") and p.is_file()] for folder in {image_folder, mask_folder}}
        masks = {m["stem"]: path for path in files[mask_folder] if (m := mask_name.match(path.name))}
        mask_files = {path.name for path in masks.values()} if image_folder == mask_folder else set()
        images: dict[str, Path] = {}
        doubles: dict[str, list[str]] = {}
        for path in files[image_folder]:
            if path.suffix.lower() in image_suffixes() and path.name not in mask_files:
                if path.stem in images:
                    doubles.setdefault(path.stem, [images[path.stem].name]).append(path.name)
                images[path.stem] = path
        if wanted is not None:
            keep = set(wanted)
            unused = len(set(images) & set(masks) - keep)
            if unused:
                rank_zero_info(f"lit_ppool: {unused} image/mask pair(s) in {str(image_folder)!r} are in no split list (not used)")
            images, masks = ({stem: path for stem, path in found.items() if stem in keep} for found in (images, masks))
            doubles = {stem: names for stem, names in doubles.items() if stem in keep}
        problems = []
        if doubles:
            problems.append(f"{len(doubles)} stem(s) have two images ({_names([' / '.join(n) for n in doubles.values()])}): keep one")
        no_mask = sorted(set(images) - set(masks))
        if no_mask:
            problems.append(
                f"{len(no_mask)} of {len(images)} images have no mask {pattern!r} in {str(mask_folder)!r}: "
                f"{_names([images[s].name for s in no_mask])}"
            )
        no_image = sorted(set(masks) - set(images))
        if no_image:
            problems.append(f"{len(no_image)} mask(s) have no image in {str(image_folder)!r}: {_names([masks[s].name for s in no_image])}")
        neither = sorted(set(wanted or ()) - set(images) - set(masks))
        if neither:
            problems.append(f"{len(neither)} stem(s) of the split lists have neither image nor mask: {_names(neither)}")
        if problems:
            raise DatasetLayoutError(
                f"Expected every image of {str(image_folder)!r} to have one mask and every mask one image, but "
                + "; ".join(problems) + f". Add or remove the files, or set `mask_pattern` (now {pattern!r}) to how "
                "your masks are named."
            )
        return {stem: (images[stem], masks[stem], stem) for stem in sorted(images)}

    @staticmethod
    def _seeded_stems(stems: Sequence[str], fractions: Sequence[float], seed: int) -> dict[str, list[str]]:
        """:func:`seeded_split` by the ``split`` fractions, checked; splits of fraction 0 left out."""
        if (
            isinstance(fractions, str)
            or len(fractions) != 3
            or any(isinstance(f, bool) or not isinstance(f, (int, float)) or f < 0 for f in fractions)
            or abs(sum(fractions) - 1) > 1e-6
        ):
            raise ConfigError(f"Expected argument `split` to be (train, val, test) fractions >= 0 summing to 1, but got {fractions!r}.")
        chosen = seeded_split(stems, fractions, seed)
        return {split: chosen[split] for split, fraction in zip(SPLITS, fractions) if fraction > 0}  # 0: no such split

    def _read_split_lists(self, splits: Mapping[str, str | Sequence[str]]) -> dict[str, list[str]]:
        """``split -> stems`` of the ``splits`` argument; a stem in two splits (or twice in one) is an error."""
        unknown = sorted(set(splits) - set(SPLITS))
        if unknown:
            raise ConfigError(f"Expected the keys of argument `splits` to be among {list(SPLITS)}, but got {unknown}.")
        stems = {split: self._read_split_list(split, entry) for split, entry in splits.items()}
        self._check_no_leak(stems)
        return stems

    def _read_split_list(self, split: str, entry: str | Sequence[str]) -> list[str]:
        """The stems of one ``splits`` entry: a list, or a text file of stems (``#`` comments, image suffixes dropped)."""
        if not isinstance(entry, str):
            return [str(name) for name in entry]
        path = Path(entry).expanduser()
        path = path if path.is_absolute() else self.root / path
        if not path.is_file():
            raise DatasetLayoutError(f"Expected the {split} split list {str(path)!r} (one stem per line) to exist, but it does not.")
        suffixes = image_suffixes()
        names = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.strip().startswith("#")]
        return [Path(name).stem if Path(name).suffix.lower() in suffixes else name for name in names]

    def _check_not_empty(self) -> None:
        """Raise if a split (or every split) holds no sample."""
        empty = [split for split, samples in self.samples.items() if not samples]
        if empty or not self.samples:
            raise DatasetLayoutError(
                f"Expected every split of {str(self.root)!r} to hold samples, but {', '.join(empty) or 'every split'} "
                f"{'is' if len(empty) == 1 else 'are'} empty. Add images, or change `split` / `splits`."
            )

    def _dataset(self, samples: Sequence[Sample], transforms: Callable | None = None) -> FolderDataset:
        """A :class:`FolderDataset` of ``samples`` with this datamodule's label mapping."""
        return FolderDataset(
            samples, self.num_classes, self.lut, transforms, self.ignore_index, palette=self.palette, binary=self.binary
        )

    def _check_every_file(self) -> None:
        """Decode every sample once (threads: PIL releases the GIL); raise or skip, reporting every bad file."""
        started = time.perf_counter()
        bad: dict[tuple[str, str], str] = {}  # (split, stem) -> problem
        for split, samples in self.samples.items():
            with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
                problems = pool.map(functools.partial(_sample_problem, self._dataset(samples)), range(len(samples)))
                bad.update({(split, stem): problem for (_, _, stem), problem in zip(samples, problems) if problem})
        count = sum(len(s) for s in self.samples.values())
        rank_zero_info(f"lit_ppool: checked {count} images and masks under {str(self.root)!r} in {time.perf_counter() - started:.1f} s")
        if not bad:
            return
        problems = list(bad.values())
        if self.on_bad_sample == "raise":
            raise DatasetLayoutError(
                f"Expected every image and mask under {str(self.root)!r} to be usable, but {len(bad)} of {count} samples "
                f"are not: {' '.join(problems[:3])}{' ...' if len(problems) > 3 else ''} Fix these files, or pass "
                "on_bad_sample='skip' to leave them out."
            )
        self.samples = {split: [s for s in samples if (split, s[2]) not in bad] for split, samples in self.samples.items()}
        warnings.warn(
            f"lit_ppool: on_bad_sample='skip' left out {len(bad)} of {count} samples under {str(self.root)!r}:\n"
            + "\n".join(f"  {problem}" for problem in problems[:20]),
            BadSampleWarning,
            stacklevel=3,
        )
        self._check_not_empty()

    def build_dataset(self, split: str, transforms: Callable) -> Dataset:
        if split not in self.samples:
            raise DatasetLayoutError(
                f"Expected a {split} split under {str(self.root)!r}, but it has only {sorted(self.samples)}. Add the "
                f"{split} folder (`split_dirs` names it if it is not {split!r}), or for a single pool of images give "
                f"{split} a fraction in `split` or a list in `splits`."
            )
        return self._dataset(self.samples[split], transforms)
