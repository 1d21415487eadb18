"""The summary of ``benchmarks/gpu_check.py``: ``gpu_check.json`` (everything) and ``gpu_check.md`` (tables, targets)."""

from __future__ import annotations

import json
from pathlib import Path

OP_TARGET = 1.2
"""CUDA forward+backward of p_pool2d as a multiple of F.max_pool2d's, fp32 and bf16, both geometries."""
STEP_TARGET = 1.03
"""smp.Unet training step with P-pooling as a multiple of the max-pooling step, eager and compiled."""
GEOMETRY_NAMES = ("VGG 2x2 s2", "ResNet stem 3x3 s2 p1")
CPU_RUN = "CPU smoke run, no verdict"
"""What a run without a CUDA device says in place of the target verdicts: its timings mean nothing for them."""


def write_summary(results: dict, out_dir: Path) -> str:
    """Write ``gpu_check.json`` and ``gpu_check.md`` into ``out_dir``; returns the Markdown."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    sections = results.get("sections", {})
    meta = results.get("meta", {})
    on_cpu = meta.get("cuda") is False
    lines = _header(meta, sections)
    for name, render in (("parity", _parity), ("cuda_tests", _cuda_tests), ("large_tensor", _large_tensor),
                         ("op_timings", _op_timings), ("model_steps", _model_steps), ("fit", _fit)):
        result = (sections.get(name) or {}).get("result")
        if result:
            lines += render(result)
    lines += _no_verdict() if on_cpu else _targets(sections)
    markdown = "\n".join(lines) + "\n"
    (out_dir / "gpu_check.md").write_text(markdown)
    return markdown


def _header(meta: dict, sections: dict) -> list[str]:
    lines = [f"# lit_ppool GPU check, {meta.get('date', '?')}", "",
             (f"device: {meta.get('device', '?')}; Python {meta.get('python', '?')}, torch {meta.get('torch', '?')}, "
             f"triton {meta.get('triton', '?')}; {'--quick, ' if meta.get('quick') else ''}"
             f"{meta.get('wall_s', '?')} s of a {meta.get('budget_s', '?')} s budget"), ""]
    if meta.get("cuda") is False:
        lines += [f"**{CPU_RUN}**: no CUDA device, so the parity checks ran the Triton kernels interpreted and every "
                  "time is a CPU's host clock; this checks the script, not the kernels' speed.", ""]
    lines += ["| section | status | seconds | note |", "| --- | --- | ---: | --- |"]
    for name, section in sections.items():
        note = (section.get("error") or "").splitlines()[:1] or _failure_note(section.get("result"))
        lines.append(f"| {name} | {section.get('status')} | {section.get('seconds', '')} | {_cell(note)} |")
    return lines


def _failure_note(result) -> list[str]:
    failures = (result or {}).get("failures") or []
    return [f"{len(failures)} failure(s): {str(failures[0])[:200]}"] if failures else []


def _cell(note: list[str]) -> str:
    return (note[0] if note else "").replace("|", "/")[:300]


def _parity(result: dict) -> list[str]:
    lines = ["", "**Parity with the float64 reference**", "",
             (f"{result.get('cases', 0)} of {result.get('total', 0)} cases run ({result.get('grid', '')}); "
             f"{len(result.get('failures', []))} out of tolerance.")]
    for failure in result.get("failures", [])[:10]:
        lines.append(f"- {failure}")
    return lines


def _cuda_tests(result: dict) -> list[str]:
    return ["", "**CUDA tests**", "", f"`{result.get('command', '')}`: {result.get('summary') or 'no summary'}"]


def _large_tensor(result: dict) -> list[str]:
    lines = ["", "**More than 2^31 elements (bfloat16, stem 3x3 s2 p1; first and last channel vs float64)**", "",
             "| layout | shape | elements | output error | grad input error | allowed | grad alpha finite |",
             "| --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for row in result.get("rows", []):
        errors = row.get("errors", {})
        lines.append(f"| {row['layout']} | {tuple(row['shape'])} | {row['numel']:,} | {errors.get('output', 0):.1e} | "
                     f"{errors.get('grad input', 0):.1e} | {row['allowed']:.1e} | {row['grad_alpha_finite']} |")
    return lines


def _op_timings(result: dict) -> list[str]:
    rows = result.get("rows", [])
    lines = []
    for dtype, layout in dict.fromkeys((r["dtype"], r["layout"]) for r in rows):
        lines += ["", (f"**{dtype}, {layout.replace('_', '-')}, input {tuple(result.get('shape', ()))}** "
                      f"({result.get('timer', 'CUDA events')}, median of {result.get('reps', '?')} after {result.get('warmup', '?')} warm-up)"), "",
                  "| geometry | pooling | forward ms | x max | fwd+bwd ms | x max | kept for backward | first call s |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for row in (r for r in rows if (r["dtype"], r["layout"]) == (dtype, layout)):
            base = _find(rows, dtype=dtype, layout=layout, geometry=row["geometry"], pooling="F.max_pool2d") or row
            first = (f"{row['first_forward_s']:.2f} fwd, {row['first_backward_s']:.2f} bwd"
                     if "first_forward_s" in row else "")
            lines.append(f"| {row['geometry']} | {row['pooling']} | {row['forward_ms']:.3f} | "
                         f"{row['forward_ms'] / base['forward_ms']:.2f} | {row['both_ms']:.3f} | "
                         f"{row['both_ms'] / base['both_ms']:.2f} | {row['kept_mib']:.1f} MiB | {first} |")
    return lines


def _model_steps(result: dict) -> list[str]:
    batch = "x".join(str(v) for v in result.get("batch", []))
    lines = ["", f"**One training step of smp.Unet, {result.get('precision', '')}, batch {batch}, 21 classes**", "",
             "| encoder | mode | pools swapped | max-pool step ms | P-pool step ms | ratio | first step s (max / P) |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in result.get("rows", []):
        lines.append(f"| {row['encoder']} | {row['mode']} | {row['swapped']} | {row['max_ms']:.1f} | {row['p_ms']:.1f} | "
                     f"{row['p_ms'] / row['max_ms']:.3f} | {row['max_first_step_s']:.1f} / {row['p_first_step_s']:.1f} |")
    return lines


def _fit(result: dict) -> list[str]:
    lines = ["", "**lit-ppool fit (configs/quickstart.yaml, 2 epochs, CSV logger)**", "",
             "| precision | exit | finite loss | first / last loss | alpha moved | checkpoints | seconds |",
             "| --- | ---: | --- | --- | --- | --- | ---: |"]
    for row in result.get("rows", []):
        losses = f"{row.get('first_loss')} / {row.get('last_loss')}"
        lines.append(f"| {row['precision']} | {row['returncode']} | {row['finite_loss']} | {losses} | "
                     f"{row['alpha_moved']} | {', '.join(row['checkpoints']) or 'none'} | {row['seconds']} |")
    return lines


def _find(rows: list[dict], **keys) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in keys.items())), None)


def _verdict(ratios: list[float | None], target: float) -> str:
    if any(r is None for r in ratios):
        return "not measured"
    return "met" if all(r <= target for r in ratios) else "missed"


def _no_verdict() -> list[str]:
    return ["", "**Against the targets**", "", f"{CPU_RUN}: the targets are for CUDA timings."]


def _targets(sections: dict) -> list[str]:
    """The targets, each with its measured ratios and met / missed / not measured."""
    ops = ((sections.get("op_timings") or {}).get("result") or {}).get("rows", [])
    steps = ((sections.get("model_steps") or {}).get("result") or {}).get("rows", [])
    lines = ["", "**Against the targets**", "", "| target | measured | verdict |", "| --- | --- | --- |"]
    for dtype in ("float32", "bfloat16"):
        for layout in ("nchw", "channels_last"):
            ratios = []
            for geometry in GEOMETRY_NAMES:
                ours = _find(ops, dtype=dtype, layout=layout, geometry=geometry, pooling="lit_ppool p_pool2d")
                base = _find(ops, dtype=dtype, layout=layout, geometry=geometry, pooling="F.max_pool2d")
                ratios.append(ours["both_ms"] / base["both_ms"] if ours and base else None)
            measured = " / ".join("-" if r is None else f"{r:.2f}x" for r in ratios)
            lines.append(f"| CUDA forward+backward <= {OP_TARGET}x F.max_pool2d, {dtype}, {layout.replace('_', '-')} "
                         f"(VGG / stem) | {measured} | {_verdict(ratios, OP_TARGET)} |")
    for mode in ("eager", "compiled"):
        for encoder in ("resnet34", "vgg16"):
            row = _find(steps, encoder=encoder, mode=mode)
            ratio = row["p_ms"] / row["max_ms"] if row else None
            lines.append(f"| Unet {encoder} step, P <= {STEP_TARGET}x max pooling, {mode} | "
                         f"{'-' if ratio is None else f'{ratio:.3f}x'} | {_verdict([ratio], STEP_TARGET)} |")
    return lines
