"""Plot validation curves of one or more runs from their ``metrics.csv``: how the design of a benchmark was chosen.

    python tools/plot_curves.py RUN/metrics.csv [RUN2/metrics.csv ...] --keys val/IoU/crack val/F1/crack \
        --labels "run 1" "run 2" --output docs/crackforest_val_curve.png
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path


def read_curve(path: Path, key: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of ``key`` in a Lightning ``metrics.csv`` (rows without it skipped)."""
    with open(path, newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get(key)]
    return [int(row["step"]) for row in rows], [float(row[key]) for row in rows]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("metrics", nargs="+", type=Path, help="metrics.csv of each run")
    parser.add_argument("--keys", nargs="+", default=["val/mIoU"], help="metrics to plot, one panel each")
    parser.add_argument("--labels", nargs="*", help="a legend label per run (default: the run folder)")
    parser.add_argument("--output", type=Path, required=True, help="the PNG to write")
    options = parser.parse_args(argv)
    labels = options.labels or [path.parent.name for path in options.metrics]
    if len(labels) != len(options.metrics):
        parser.error(f"Expected one label per metrics file ({len(options.metrics)}), but got {len(labels)}.")

    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.2 * len(options.keys), 3.4), layout="constrained")
    axes = figure.subplots(1, len(options.keys), squeeze=False)[0]
    for ax, key in zip(axes, options.keys):
        for path, label in zip(options.metrics, labels):
            steps, values = read_curve(path, key)
            ax.plot(steps, values, marker="o", markersize=3, label=label)
        ax.set_title(key)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    options.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(options.output, dpi=110)
    print(f"wrote {options.output}")


if __name__ == "__main__":
    main()
