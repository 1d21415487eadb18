"""``lit-ppool export``: a training checkpoint to a shareable folder (smp/Hub layout or ONNX), with a model card.

::

    lit-ppool export --ckpt_path lightning_logs/quickstart/version_0/checkpoints/last.ckpt --output exported/
    lit-ppool export --ckpt_path ... --output exported_onnx/ --format onnx --opset 18
    lit-ppool export --ckpt_path ... --output baked/ --bake

The model card takes the checkpoint's run folder into account: the metrics of
``lit-ppool validate|test`` (``<run>/validate-<ckpt>.json``, ``<run>/test-<ckpt>.json``, else
the last ``val/*`` and ``test/*`` values of ``<run>/metrics.csv``), the training config
(``<run>/config.yaml``, else the checkpoint's hyper-parameters) and the alpha plot
(``<run>/alpha.png``).
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from jsonargparse import ArgumentParser
from torch import nn

from lit_ppool.sharing.card import model_card
from lit_ppool.sharing.hub import save_pretrained

__all__ = ["add_arguments", "export_checkpoint"]

DEFAULT_OPSET = 18
SUMMARY = "A shareable model folder (smp / Hub layout) or ONNX, with a model card, from a checkpoint."
DESCRIPTION = """\
Export a lit-ppool training checkpoint: the smp / Hugging Face Hub layout that
lit_ppool.from_pretrained loads (--format hub), or ONNX (--format onnx), with a model card.
"""
EPILOG = None


def add_arguments(parser: ArgumentParser) -> None:
    """Add the options of ``lit-ppool export`` (the arguments of :func:`export_checkpoint`) to its parser."""
    parser.add_argument("--ckpt_path", type=str, required=True, help="training checkpoint (e.g. <run>/checkpoints/last.ckpt)")
    parser.add_argument("--output", type=str, required=True, help="folder to write (created)")
    parser.add_argument(
        "--format", choices=["hub", "onnx"], default="hub", help="hub: config.json, model.safetensors, README.md; onnx: model.onnx, README.md"
    )
    parser.add_argument("--bake", action="store_true", help="turn P-pooling layers whose alpha sits at a limit into native pooling (error measured)")
    parser.add_argument("--bake_atol", type=float, default=1e-4, help="largest max abs output difference a baked layer may make")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset")
    parser.add_argument(
        "--example_size", type=int, nargs=2, default=[64, 64], metavar=("H", "W"),
        help="height and width of the random example input used to trace ONNX and measure baking",
    )  # fmt: skip


def _load_module(ckpt_path: Path) -> Any:
    from lit_ppool.training.module import PPoolSegmentationModule
    from lit_ppool.training.runs import checkpoint_path_problem

    problem = checkpoint_path_problem(str(ckpt_path))
    if problem is not None:
        raise FileNotFoundError(f"Expected --ckpt_path to be a checkpoint file, but got {problem}.")
    try:
        return PPoolSegmentationModule.load_from_checkpoint(ckpt_path, map_location="cpu")
    except (KeyError, TypeError, RuntimeError) as err:
        raise ValueError(
            f"Expected {ckpt_path} to be a checkpoint of a lit-ppool run (PPoolSegmentationModule), but loading it "
            f"failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from None


def _csv_metrics(path: Path) -> dict[str, float]:
    """The last logged value of every ``val/*`` and ``test/*`` column of a CSVLogger's metrics.csv."""
    from lit_ppool.training.record import LOGGED_STAGES, metric_key

    prefixes = tuple(metric_key(stage, "") for stage in LOGGED_STAGES)
    metrics: dict[str, float] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if key and key.startswith(prefixes) and value not in (None, ""):
                    metrics[key] = float(value)
    return metrics


def run_metrics(ckpt_path: Path) -> dict[str, float]:
    """The checkpoint's metrics: its ``validate`` and ``test`` run records over its run's metrics.csv's last values.

    Raises:
        ValueError: If a run record of the checkpoint is not valid (naming it).
    """
    from lit_ppool.training.record import RECORD_STAGES, read_record, record_path
    from lit_ppool.training.runs import run_dir_of

    run_dir = run_dir_of(ckpt_path)
    metrics = _csv_metrics(run_dir / "metrics.csv") if (run_dir / "metrics.csv").is_file() else {}
    for stage in RECORD_STAGES:
        path = record_path(ckpt_path, stage)
        if path.is_file():  # this checkpoint's own evaluation wins over the training log
            metrics.update(read_record(path).metrics)
    return dict(sorted(metrics.items()))


def _bake(model: nn.Module, example: torch.Tensor, atol: float) -> str:
    """Bake the model in place; the card section listing what was baked (with the measured error) and what was kept."""
    from lit_ppool.surgery import bake_pooling

    report = bake_pooling(model, example, atol=atol)
    lines = [
        (f"Layers whose alpha sits at a limit were replaced by native pooling where the largest absolute output "
        f"difference, measured on a random input of shape {tuple(example.shape)}, was within {atol:g}."),
        "", "| layer | now | measured max abs error |", "| --- | --- | ---: |",
    ]
    lines += [f"| `{b.name}` | {type(b.new).__name__} | {b.error:.3g} |" for b in report]
    lines += [f"| `{k.name}` | kept ({k.reason}) | - |" for k in report.kept]
    for b in report:
        print(f"lit-ppool export: baked {b.name}: {type(b.old).__name__} -> {type(b.new).__name__} (max abs error {b.error:.3g})")
    for k in report.kept:
        print(f"lit-ppool export: kept {k.name}: {k.reason}")
    return "\n".join(lines)


def _training_config(run_dir: Path, hparams: dict[str, Any]) -> str | dict[str, Any]:
    path = run_dir / "config.yaml"
    return path.read_text() if path.is_file() else {k: v for k, v in hparams.items() if not k.startswith("_")}


def _compare_with_onnxruntime(path: Path, model: nn.Module, example: torch.Tensor) -> str:
    """One line: the max abs difference between onnxruntime and torch on ``example``, or why it was not run."""
    try:
        import onnxruntime
    except ImportError:
        return "onnxruntime is not installed: the model was checked with onnx.checker only, not run."
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(None, {"input": example.numpy()})
    with torch.no_grad():
        expected = model(example)
    error = (torch.from_numpy(output) - expected).abs().max().item()
    return f"onnxruntime {onnxruntime.__version__} against torch on one input of shape {tuple(example.shape)}: max abs difference {error:.3g}."


def _export_onnx(model: nn.Module, folder: Path, example: torch.Tensor, opset: int) -> str:
    """Write ``model.onnx`` (dynamic batch, height and width), check it, and return the card section."""
    import onnx

    path = folder / "model.onnx"
    axes = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():  # dynamic_axes names the ONNX dims; the checker below verifies the result
        warnings.filterwarnings("ignore", message=".*'dynamic_axes' is not recommended")
        torch.onnx.export(
            model, (example,), path, dynamo=True, opset_version=opset, input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": axes, "logits": axes}, external_data=False,
        )
    onnx.checker.check_model(str(path), full_check=True)
    compared = _compare_with_onnxruntime(path, model, example)
    print(f"lit-ppool export: wrote {path} (opset {opset}); onnx.checker passed; {compared}")
    return (
        f"`model.onnx`, opset {opset}, exported with `torch.onnx.export(..., dynamo=True)`. Input `input`: "
        f"float32 `(batch, {example.shape[1]}, height, width)`; output `logits`: float32 `(batch, classes, height, "
        "width)`. Batch, height and width are dynamic axes (height and width must suit the encoder's depth, "
        f"e.g. multiples of 32 for depth 5). `onnx.checker` passed. {compared}"
    )


def export_checkpoint(
    ckpt_path: str | Path,
    output: str | Path,
    format: str = "hub",
    bake: bool = False,
    bake_atol: float = 1e-4,
    opset: int = DEFAULT_OPSET,
    example_size: Sequence[int] = (64, 64),
) -> None:
    """``lit-ppool export``: write the checkpoint's model to ``output`` with a model card.

    Args:
        ckpt_path: A training checkpoint of a lit-ppool run (``<run>/checkpoints/last.ckpt``).
        output: The folder to write (created).
        format: ``"hub"`` (config.json, model.safetensors, README.md: what :func:`lit_ppool.from_pretrained`
            loads) or ``"onnx"`` (model.onnx, README.md).
        bake: Turn P-pooling layers whose alpha sits at a limit into native pooling (the error is measured).
        bake_atol: The largest max abs output difference a baked layer may make.
        opset: The ONNX opset.
        example_size: Height and width of the random example input that traces ONNX and measures baking.

    Raises:
        FileNotFoundError: ``ckpt_path`` does not exist or is not a checkpoint file.
        ValueError: ``ckpt_path`` is not a checkpoint of a lit-ppool run.
        FileExistsError: ``output`` is a file.
    """
    from lit_ppool.training.runs import run_dir_of

    ckpt_path = Path(ckpt_path).expanduser()
    output = Path(output).expanduser()
    if output.is_file():
        raise FileExistsError(f"Expected --output to be a folder, but got the file {output}.")
    module = _load_module(ckpt_path)
    model = module.model.eval()
    run_dir = run_dir_of(ckpt_path)
    in_channels = model.config.get("in_channels", 3)
    example = torch.rand(1, in_channels, *example_size)
    sections: dict[str, str] = {"Exported from": f"The checkpoint `{ckpt_path.name}` of the run `{run_dir.name}` (`lit-ppool export`)."}
    if bake:
        sections["Baked pooling"] = _bake(model, example, bake_atol)
    plot = run_dir / "alpha.png"
    card = {"metrics": run_metrics(ckpt_path), "training_config": _training_config(run_dir, dict(module.hparams))}
    if format == "hub":
        save_pretrained(model, output, alpha_plot=plot if plot.is_file() else None, sections=sections, **card)
        print(f"lit-ppool export: wrote {output} (config.json, model.safetensors, README.md); load it with lit_ppool.from_pretrained({str(output)!r})")
        return
    output.mkdir(parents=True, exist_ok=True)
    sections["ONNX"] = _export_onnx(model, output, example, opset)
    if plot.is_file():
        (output / "alpha.png").write_bytes(plot.read_bytes())
    loading = (
        "Run `model.onnx` with any ONNX runtime (the swapped pooling is plain ONNX operators):",
        ("import numpy as np\nimport onnxruntime as ort\n\nsession = ort.InferenceSession(\"model.onnx\")\n"
         "logits = session.run(None, {\"input\": image.astype(np.float32)})[0]"),
    )
    text = model_card(model, plot_name="alpha.png" if plot.is_file() else None, sections=sections, loading=loading, **card)
    (output / "README.md").write_text(text)
