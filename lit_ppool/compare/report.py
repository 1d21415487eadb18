"""The comparison's outputs: ``compare.md``, ``compare.csv``, ``runs.csv`` and ``compare.png``."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path

from lit_ppool.compare.stats import PairedDifference, paired_difference, summarize
from lit_ppool.layers.registry import REFERENCE_POOLING
from lit_ppool.training.record import (
    BOUNDARY_IOU,
    F1,
    IOU,
    MIOU,
    PIXEL_ACC,
    PRECISION,
    RECALL,
    TRIMAP_MIOU,
    RunRecord,
    metric_key,
)

__all__ = ["CLASS_METRICS", "METRICS", "Comparison", "class_key", "write_report"]

STAGE = "test"
"""The stage whose metrics are compared (the runs' ``test-last.json``)."""

METRICS = (
    (metric_key(STAGE, MIOU), "mIoU"),
    (metric_key(STAGE, BOUNDARY_IOU), "Boundary IoU"),
    (metric_key(STAGE, TRIMAP_MIOU), "trimap mIoU"),
    (metric_key(STAGE, PIXEL_ACC), "pixel acc"),
)
"""The headline metrics: key in the run results, column title."""

CLASS_METRICS = (
    (IOU, "IoU", metric_key(STAGE, MIOU)),
    (F1, "F1", None),
    (PRECISION, "precision", None),
    (RECALL, "recall", None),
    (BOUNDARY_IOU, "Boundary IoU", metric_key(STAGE, BOUNDARY_IOU)),
)
"""The per-class metric families: family (see :func:`class_key`), title, headline metric of the last column.

F1, precision and recall have none: thin-structure work reports the foreground class's scores, and the
module logs no macro F1.
"""


def class_key(family: str, name: str = "") -> str:
    """The run results' key of ``family``'s score of class ``name`` (``test/F1/crack``); by default the prefix."""
    return metric_key(STAGE, family, name)


class Comparison:
    """Run results grouped by pooling, in the order asked for; the first pooling is the reference."""

    def __init__(self, results: Sequence[RunRecord], poolings: Sequence[str] | None = None) -> None:
        found = sorted({r.pooling for r in results}, key=lambda name: (name != REFERENCE_POOLING, name))
        self.poolings = [p for p in (poolings or found) if p in found] + [p for p in found if p not in (poolings or found)]
        self.results = {p: {r.seed: r for r in results if r.pooling == p} for p in self.poolings}
        self.reference = self.poolings[0] if self.poolings else None
        first = next(iter(results), None)
        self.classes = first.class_names(class_key(IOU)) if first is not None else []
        self.metrics = [(key, title) for key, title in METRICS if any(key in r.metrics for r in results)]
        self.class_metrics = [
            (family, title, headline)
            for family, title, headline in CLASS_METRICS
            if self.classes and any(key.startswith(class_key(family)) for r in results for key in r.metrics)
        ]  # runs from before a family was logged have none of its keys

    def values(self, pooling: str, key: str) -> dict[int, float]:
        """Seed -> metric ``key`` of ``pooling`` (seeds without it left out)."""
        return {seed: r.metrics[key] for seed, r in self.results[pooling].items() if key in r.metrics}

    def difference(self, pooling: str, key: str) -> PairedDifference:
        """``pooling - reference`` on ``key``, paired by seed."""
        return paired_difference(self.values(self.reference, key), self.values(pooling, key))


def _mean(values: dict[int, float]) -> str:
    summary = summarize(list(values.values()))
    return "-" if summary.n == 0 else f"{summary.mean:.3f}"


def _mean_std(values: dict[int, float]) -> str:
    summary = summarize(list(values.values()))
    if summary.n == 0:
        return "-"
    return f"{summary.mean:.3f}" if summary.n < 2 else f"{summary.mean:.3f} ± {summary.std:.3f}"


def _difference(d: PairedDifference) -> str:
    if d.n == 0:
        return "-"
    if not d.interval_known:
        return f"{d.mean:+.3f} (n too small)"
    mark = " *" if d.excludes_zero else ""
    return f"{d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]{mark}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " if i == 0 else " ---: " for i in range(len(header))) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _summary_tables(c: Comparison) -> list[str]:
    lines = ["## Test metrics (mean ± std over seeds)", ""]
    lines += _table(["pooling", "seeds", *(title for _, title in c.metrics)],
                    [[p, str(len(c.results[p])), *(_mean_std(c.values(p, key)) for key, _ in c.metrics)] for p in c.poolings])  # fmt: skip
    lines += ["", f"## Paired difference to `{c.reference}` (mean over seeds [95% t-interval]; * = interval excludes 0)", ""]
    others = c.poolings[1:]
    lines += _table(["pooling", *(f"Δ {title}" for _, title in c.metrics)],
                    [[p, *(_difference(c.difference(p, key)) for key, _ in c.metrics)] for p in others])  # fmt: skip
    return lines


def _class_tables(c: Comparison, family: str, title: str, headline: str | None) -> list[str]:
    """The per-class ``family`` scores (mean over seeds, then the headline) and their paired differences."""
    keys = [class_key(family, name) for name in c.classes]
    columns, logged = dict(zip(keys, c.classes)), dict(c.metrics)
    if headline in logged:  # the headline (mean over classes) last, when the runs logged it
        columns[headline] = logged[headline]
    lines = ["", f"## Per-class {title} (mean over seeds), laid out like the paper's table", ""]
    lines += _table(["pooling", *columns.values()],
                    [[p, *(_mean(c.values(p, key)) for key in columns)] for p in c.poolings])  # fmt: skip
    lines += ["", f"## Per-class {title}: paired difference to `{c.reference}` [95% t-interval] "
              "(where each pooling wins)", ""]  # fmt: skip
    lines += _table(["pooling", *c.classes],
                    [[p, *(_difference(c.difference(p, key)) for key in keys)] for p in c.poolings[1:]])  # fmt: skip
    return lines


def _alpha_table(c: Comparison) -> list[str]:
    rows = []
    for p in c.poolings:
        layers = list(dict.fromkeys(name for r in c.results[p].values() for name in r.alpha))  # network order
        for name in layers:
            learned = [r.alpha[name]["mean"] for r in c.results[p].values() if name in r.alpha]
            init = next(r.alpha[name].get("init") for r in c.results[p].values() if name in r.alpha)
            summary = summarize(learned)
            rows.append([p, name, "-" if init is None else f"{init:.3f}", f"{summary.mean:.3f}",
                         f"{min(learned):.3f} – {max(learned):.3f}"])  # fmt: skip
    if not rows:
        return []
    lines = ["", "## Learned alpha per layer (0 = average, large = max pooling), over seeds", ""]
    return lines + _table(["pooling", "layer", "initial", "learned mean", "learned range"], rows)


def _markdown(c: Comparison, title: str, notes: Sequence[str]) -> str:
    lines = [f"# {title}", ""]
    lines += [f"- {note}" for note in notes]
    lines += ["", *_summary_tables(c)]
    for family in c.class_metrics:
        lines += _class_tables(c, *family)
    lines += [*_alpha_table(c), "", "![compare.png](compare.png)", ""]
    return "\n".join(lines)


def _write_csv(c: Comparison, path: Path) -> None:
    keys = [key for key, _ in c.metrics]
    keys += [class_key(family, name) for family, _, _ in c.class_metrics for name in c.classes]
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["pooling", "seeds", *(f"{k}_{s}" for k in keys for s in ("mean", "std", "diff", "diff_low", "diff_high"))])
        for p in c.poolings:
            row: list[object] = [p, len(c.results[p])]
            for key in keys:
                summary, d = summarize(list(c.values(p, key).values())), c.difference(p, key)
                row += [summary.mean, summary.std, d.mean, d.low, d.high]
            writer.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in row])


def _write_runs_csv(c: Comparison, path: Path) -> None:
    keys = sorted({key for runs in c.results.values() for r in runs.values() for key in r.metrics})
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["pooling", "seed", *keys, "result_file"])
        for p in c.poolings:
            for seed, r in sorted(c.results[p].items()):
                writer.writerow([p, seed, *(r.metrics.get(key, "") for key in keys), r.path or ""])


def _plot(c: Comparison, path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.2 * max(1, len(c.metrics)), 3.6), layout="constrained")
    axes = figure.subplots(1, max(1, len(c.metrics)), squeeze=False)[0]
    colours = [f"C{i}" for i in range(len(c.poolings))]
    for ax, (key, title) in zip(axes, c.metrics):
        for i, (p, colour) in enumerate(zip(c.poolings, colours)):
            values = list(c.values(p, key).values())
            if not values:
                continue
            spread = [i + 0.08 * (j - (len(values) - 1) / 2) for j in range(len(values))]
            ax.scatter(spread, values, color=colour, alpha=0.55, s=22, label="seeds" if i == 0 else None)
            summary = summarize(values)
            ax.errorbar([i], [summary.mean], yerr=[0 if math.isnan(summary.std) else summary.std], color=colour,
                        marker="D", markersize=7, capsize=4, linewidth=1.5)  # fmt: skip
        ax.set_xticks(range(len(c.poolings)), c.poolings)
        ax.set_xlim(-0.6, len(c.poolings) - 0.4)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("test score (dots: seeds; diamond: mean ± std)")
    figure.savefig(path, dpi=110)


def write_report(c: Comparison, folder: str | Path, title: str, notes: Sequence[str] = ()) -> dict[str, Path]:
    """Write ``compare.md``, ``compare.csv``, ``runs.csv`` and ``compare.png`` into ``folder``; return their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / name for name in ("compare.md", "compare.csv", "runs.csv", "compare.png")}
    paths["compare.md"].write_text(_markdown(c, title, notes))
    _write_csv(c, paths["compare.csv"])
    _write_runs_csv(c, paths["runs.csv"])
    _plot(c, paths["compare.png"])
    return paths
