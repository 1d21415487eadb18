"""The run record: the metrics of one evaluation of a checkpoint, in one JSON file next to its run.

``lit-ppool validate`` and ``lit-ppool test`` write it; ``lit-ppool compare`` builds its tables
from the ``test-last.json`` records alone, and ``lit-ppool export`` puts the metrics into the
model card. This module owns every fact about it:

* the file name: ``<run>/<stage>-<checkpoint stem>.json`` (:func:`record_path`), where ``<run>``
  is the checkpoint's run folder (:func:`~lit_ppool.training.runs.run_dir_of`) and ``<stage>``
  is ``validate`` or ``test``; compare reads :data:`RESULT_FILE`;
* the schema, version :data:`RECORD_VERSION`::

      {"version": 1, "checkpoint": "<run>/checkpoints/last.ckpt", "pooling": "p", "seed": 0,
       "metrics": {"test/mIoU": 0.77, "test/IoU/crack": 0.52, ...},
       "alpha": {"encoder_maxpool": {"mean": 1.9, "min": 1.9, "max": 1.9, "init": 1.0}, ...}}

  ``alpha`` has a layer's learned alpha (per-channel: the mean, min and max over channels) and
  ``init`` its ``alpha_init``; for an adaptive P-pooling layer (:class:`~lit_ppool.AdaptivePPool2d`)
  the mean, min and max of the alpha it predicted over every window of the evaluated images
  (:attr:`~lit_ppool.PPoolSegmentationModule.alpha_map_summary`) and ``init`` the initial bias
  of its side branch, which every window starts near;

  ``seed`` is ``null`` for a run without ``seed_everything``. A record without ``version`` was
  written before the field existed; it has the same fields and reads as version
  :data:`LEGACY_VERSION`;
* writing (:func:`evaluation_record`, :func:`write_record`), reading and validating
  (:func:`read_record`, :func:`load_results`);
* the metric names that the training module logs and the others read: ``<stage>/<metric>``
  for the headline metrics (:data:`HEADLINE_METRICS`) and ``<stage>/<family>/<class name>`` for
  the per-class families (:data:`CLASS_FAMILIES`), built by :func:`metric_key`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_ppool.training.alpha_maps import adaptive_layers
from lit_ppool.training.callbacks.alpha_monitor import alpha_layers
from lit_ppool.training.runs import run_dir_of

__all__ = [
    "BOUNDARY_IOU",
    "CLASS_FAMILIES",
    "F1",
    "HEADLINE_METRICS",
    "IOU",
    "LEGACY_VERSION",
    "LOGGED_STAGES",
    "MIOU",
    "PIXEL_ACC",
    "PRECISION",
    "RECALL",
    "RECORD_STAGES",
    "RECORD_VERSION",
    "RESULT_FILE",
    "RunRecord",
    "TRIMAP_MIOU",
    "evaluation_record",
    "load_results",
    "metric_key",
    "read_record",
    "record_name",
    "record_path",
    "write_record",
]

# --- metric names ------------------------------------------------------------------------------------

MIOU = "mIoU"
"""Macro IoU over the classes (``MulticlassJaccardIndex(average="macro")``)."""
BOUNDARY_IOU = "boundary_IoU"
"""Boundary IoU: the headline (mean over the classes present) and the per-class family."""
TRIMAP_MIOU = "trimap_mIoU"
"""mIoU within a band around the ground-truth boundaries."""
PIXEL_ACC = "pixel_acc"
"""Pixel accuracy over the pixels that are not ignored."""
IOU, F1, PRECISION, RECALL = "IoU", "F1", "precision", "recall"
"""The other per-class families (no macro F1, precision or recall is logged)."""

HEADLINE_METRICS = (MIOU, BOUNDARY_IOU, TRIMAP_MIOU, PIXEL_ACC)
"""The scalar metrics of a stage, logged as ``<stage>/<metric>``."""
CLASS_FAMILIES = (IOU, BOUNDARY_IOU, F1, PRECISION, RECALL)
"""The per-class metrics of a stage, logged as ``<stage>/<family>/<class name>``."""


LOGGED_STAGES = ("val", "test")
"""The stages of the evaluation metrics as their keys name them (``lit-ppool validate`` logs ``val/...``)."""


def metric_key(stage: str, metric: str, class_name: str | None = None) -> str:
    """The logged key of ``metric`` in ``stage`` (one of :data:`LOGGED_STAGES`), of one class when ``class_name`` is given.

    An empty last part gives a prefix: ``metric_key("val", "")`` starts every ``val`` key,
    ``metric_key("val", IOU, "")`` every key of the IoU family.

    Example:
        >>> metric_key("test", MIOU), metric_key("test", F1, "crack"), metric_key("val", IOU, "")
        ('test/mIoU', 'test/F1/crack', 'val/IoU/')
    """
    return f"{stage}/{metric}" if class_name is None else f"{stage}/{metric}/{class_name}"


# --- the file ----------------------------------------------------------------------------------------

RECORD_VERSION = 1
"""The schema version that :func:`write_record` writes."""
LEGACY_VERSION = 0
"""The version of a record written before records had one (the fields of version 1)."""
RECORD_STAGES = ("validate", "test")
"""The ``lit-ppool`` subcommands that write a record."""


def record_name(checkpoint: str | Path, stage: str) -> str:
    """The file name of the record of ``stage`` on ``checkpoint``: ``<stage>-<checkpoint stem>.json``.

    Raises:
        ValueError: If ``stage`` is not one of :data:`RECORD_STAGES`.

    Example:
        >>> record_name("runs/version_0/checkpoints/last.ckpt", "test")
        'test-last.json'
    """
    if stage not in RECORD_STAGES:
        raise ValueError(f"Expected argument `stage` to be one of {list(RECORD_STAGES)}, but got {stage!r}.")
    return f"{stage}-{Path(checkpoint).stem}.json"


def record_path(checkpoint: str | Path, stage: str) -> Path:
    """Where the record of ``stage`` on ``checkpoint`` lives: ``<run>/<stage>-<checkpoint stem>.json``.

    Example:
        >>> record_path("runs/version_0/checkpoints/last.ckpt", "validate").as_posix()
        'runs/version_0/validate-last.json'
    """
    return run_dir_of(checkpoint) / record_name(checkpoint, stage)


RESULT_FILE = record_name("last.ckpt", "test")
"""``test-last.json``: the record of ``lit-ppool test --ckpt_path <run>/checkpoints/last.ckpt``, which compare reads."""


# --- the record --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """One evaluation of a checkpoint: its run's pooling and seed, the metrics and every P-pooling layer's alpha.

    Args:
        pooling: The pooling registry name the model was trained with.
        seed: The run's ``seed_everything``, or ``None`` for a run that was not seeded.
        metrics: Logged key (:func:`metric_key`) -> value.
        alpha: Layer log name -> ``{"mean", "min", "max", "init"}`` of its learned alpha (adaptive
            layers: of the alpha predicted over the evaluated images).
        path: The file it was read from (``None`` before it is written).
        checkpoint: The checkpoint that was evaluated.
        version: The schema version it was read from (:data:`LEGACY_VERSION` for a record without one).
    """

    pooling: str
    seed: int | None
    metrics: dict[str, float]
    alpha: dict[str, dict[str, float | None]] = field(default_factory=dict)
    path: Path | None = None
    checkpoint: str | None = None
    version: int = RECORD_VERSION

    def class_names(self, prefix: str = metric_key("test", IOU, "")) -> list[str]:
        """The classes with a per-class metric under ``prefix``, in the order they were logged."""
        return [key[len(prefix) :] for key in self.metrics if key.startswith(prefix)]

    def to_json(self) -> dict[str, Any]:
        """The record as written to its file, at the current :data:`RECORD_VERSION`."""
        return {
            "version": RECORD_VERSION,
            "checkpoint": self.checkpoint,
            "pooling": self.pooling,
            "seed": self.seed,
            "metrics": self.metrics,
            "alpha": self.alpha,
        }


def _alpha_summary(module: Any) -> dict[str, dict[str, float | None]]:
    """Every P-pooling layer's learned alpha; an adaptive layer's predicted alpha over the evaluation, if collected."""
    summary = {}
    for name, layer in alpha_layers(module).items():
        alpha = layer.alpha.detach().float()
        summary[name] = {"mean": alpha.mean().item(), "min": alpha.min().item(), "max": alpha.max().item(),
                         "init": layer.alpha_init}  # fmt: skip
    predicted = getattr(module, "alpha_map_summary", {})  # PPoolSegmentationModule's, from the evaluation's epoch
    for name, layer in adaptive_layers(module).items():
        if name in predicted:
            summary[name] = {**predicted[name], "init": layer.alpha_init}
    return summary


def evaluation_record(checkpoint: str | Path, module: Any, metrics: Mapping[str, Any], seed: Any) -> RunRecord:
    """The record of an evaluation of ``checkpoint`` by ``module`` (a :class:`~lit_ppool.PPoolSegmentationModule`).

    Args:
        checkpoint: The checkpoint that was evaluated.
        module: The evaluated module: its ``pooling`` hyperparameter, its P-pooling layers' alpha and
            its ``alpha_map_summary`` (the adaptive layers' predicted alpha over the evaluation).
        metrics: The Trainer's ``callback_metrics``; the scalar ones are kept.
        seed: The run's ``seed_everything``; anything but an int is recorded as ``None``.
    """
    scalars = {key: float(value) for key, value in metrics.items() if value.numel() == 1}
    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    return RunRecord(module.hparams.get("pooling"), seed, scalars, _alpha_summary(module), checkpoint=str(checkpoint))


def write_record(record: RunRecord, stage: str) -> Path:
    """Write ``record`` to :func:`record_path` of its checkpoint and ``stage``; return the path.

    Raises:
        ValueError: If the record names no checkpoint, or ``stage`` is not one of :data:`RECORD_STAGES`.
    """
    if record.checkpoint is None:
        raise ValueError("Expected the run record to name its checkpoint (it decides the file), but it names none.")
    path = record_path(record.checkpoint, stage)
    path.write_text(json.dumps(record.to_json(), indent=2) + "\n")
    return path


# --- reading -----------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _problem(data: Any) -> tuple[str, str, Any] | None:
    """The first invalid field of ``data`` (a parsed record): its name, what was expected, and the value; or ``None``."""
    if not isinstance(data, dict):
        return "the content", "a JSON object", type(data).__name__
    version = data.get("version", LEGACY_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= RECORD_VERSION:
        return "`version`", f"at most {RECORD_VERSION} (a newer lit-ppool wrote it: upgrade lit-ppool to read it)", version
    seed = data.get("seed")
    checks = (
        ("`pooling`", "a pooling name", data.get("pooling"), isinstance(data.get("pooling"), str)),
        # seed_everything: false was written as false before version 1
        ("`seed`", "an int or null", seed, seed is None or seed is False or (isinstance(seed, int) and not isinstance(seed, bool))),
        ("`metrics`", "an object of metric name -> number", data.get("metrics"),
         isinstance(data.get("metrics"), dict) and all(_is_number(v) for v in data["metrics"].values())),
        ("`alpha`", "an object of layer name -> alpha summary", data.get("alpha"),
         isinstance(data.get("alpha", {}), dict) and all(isinstance(v, dict) for v in data.get("alpha", {}).values())),
    )  # fmt: skip
    return next(((name, expected, value) for name, expected, value, valid in checks if not valid), None)


def read_record(path: str | Path) -> RunRecord:
    """The run record in ``path``, validated; a record without ``version`` reads as :data:`LEGACY_VERSION`.

    Raises:
        ValueError: If the file is not JSON or not a run record (naming the file and the field).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"Expected {str(path)!r} to be JSON, but it could not be read ({err}). Evaluate its checkpoint again "
            "(lit-ppool test --ckpt_path ...) to rewrite it, or delete it."
        ) from err
    problem = _problem(data)
    if problem is not None:
        name, expected, value = problem
        raise ValueError(
            f"Expected {name} of the run record {str(path)!r} to be {expected}, but got {value!r}. Evaluate its "
            "checkpoint again (lit-ppool test --ckpt_path ...) to rewrite it, or move the file away."
        )
    seed = None if data.get("seed") is False else data.get("seed")
    return RunRecord(data["pooling"], seed, {key: float(value) for key, value in data["metrics"].items()},
                     data.get("alpha", {}), path, data.get("checkpoint"), data.get("version", LEGACY_VERSION))  # fmt: skip


def load_results(folder: str | Path) -> list[RunRecord]:
    """The :data:`RESULT_FILE` records under ``folder`` (any depth), one per (pooling, seed): the newest file wins.

    Raises:
        ValueError: If a record cannot be read or has no seed (naming the file).
    """
    found: dict[tuple[str, int], RunRecord] = {}
    for path in sorted(Path(folder).rglob(RESULT_FILE), key=lambda p: p.stat().st_mtime):
        record = read_record(path)
        if record.seed is None:
            raise ValueError(
                f"Expected the seed in {str(path)!r} to be an int (seed_everything), but got None: a comparison "
                "pairs runs by seed. Give the run a seed_everything and test it again, or move the file away."
            )
        found[(record.pooling, record.seed)] = record
    return sorted(found.values(), key=lambda r: (r.pooling, r.seed))

