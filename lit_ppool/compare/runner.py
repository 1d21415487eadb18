"""``lit-ppool compare``: a config for several poolings x seeds, as ordinary Lightning runs, then the tables.

Each (pooling, seed) run lives in ``<output>/<pooling>/seed_<seed>/``: a one-screen config
overlay ``run.yaml`` (the pooling, the seed, and loggers that write into the run folder and
group the W&B runs), the logs of its two commands (``fit.log``, ``test.log``), and what those
write (``checkpoints/``, ``metrics.csv``, ``config.yaml``, ``alpha.png``, ``test-last.json``).
A run counts as finished once its ``test-last.json`` exists; ``fit`` is called with
``--ckpt_path last``, so an interrupted run resumes from its last checkpoint.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lit_ppool.compare.report import Comparison, write_report
from lit_ppool.layers.registry import available_poolings
from lit_ppool.training.record import RESULT_FILE, load_results

__all__ = ["Run", "main", "plan_runs"]

EPILOG = """\
Every other argument is a LightningCLI override passed to each run's fit and test, e.g.
--trainer.max_epochs=2. Examples:
  lit-ppool compare --config configs/benchmark.yaml --poolings max,avg,p --seeds 10
  lit-ppool compare --config configs/benchmark.yaml --print-commands   # one line per run, for a cluster
  lit-ppool compare --aggregate compare_benchmark                      # tables from finished run folders
"""


@dataclass(frozen=True)
class Run:
    """One (pooling, seed) run of a comparison and its folder."""

    pooling: str
    seed: int
    directory: Path

    @property
    def finished(self) -> bool:
        return (self.directory / RESULT_FILE).is_file()

    def overlay(self, experiment: str, output: Path) -> str:
        """The ``run.yaml`` config overlay of this run."""
        tags = f"[{experiment}, 'pooling={self.pooling}', 'seed={self.seed}']"
        return (
            f"# lit-ppool compare: experiment {experiment}, pooling {self.pooling}, seed {self.seed}\n"
            f"seed_everything: {self.seed}\n"
            f"model:\n  pooling: {self.pooling}\n  pooling_kwargs: null\n"
            f"trainer:\n  default_root_dir: {self.directory}\n  logger:\n"
            f"    - class_path: lightning.pytorch.loggers.CSVLogger   # the run folder itself\n"
            f"      init_args: {{save_dir: {self.directory}, name: '', version: ''}}\n"
            f"    - class_path: lit_ppool.training.loggers.WandbLogger\n"
            f"      init_args: {{name: {experiment}-{self.pooling}-seed{self.seed}, group: {experiment}, "
            f"job_type: {self.pooling}, tags: {tags}, save_dir: {output}}}\n"
        )

    def commands(self, configs: Sequence[str], overrides: Sequence[str]) -> tuple[list[str], list[str]]:
        """The ``lit-ppool fit`` and ``lit-ppool test`` arguments of this run (without the program)."""
        base = [arg for config in configs for arg in ("--config", config)]
        base += ["--config", str(self.directory / "run.yaml"), *overrides]
        fit = ["fit", *base, "--ckpt_path", "last"]
        test = ["test", *base, "--ckpt_path", str(self.directory / "checkpoints" / "last.ckpt")]
        return fit, test


def plan_runs(output: Path, poolings: Sequence[str], seeds: Sequence[int]) -> list[Run]:
    """The runs of a comparison, pooling-major."""
    return [Run(p, s, output / p / f"seed_{s}") for p in poolings for s in seeds]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lit-ppool compare",
        description="Run a config for several poolings x seeds (fit, then test of the last checkpoint), "
        "then write compare.md, compare.csv, runs.csv and compare.png.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", action="append", default=[], help="base config (repeat to layer overlays)")
    parser.add_argument("--poolings", default="max,p", help="comma-separated registry names; the first is the reference")
    parser.add_argument("--seeds", default="3", help="a count N (seeds 0..N-1) or a comma-separated list of seeds")
    parser.add_argument("--output", help="folder of the runs and tables (default: compare_<config name>)")
    parser.add_argument("--name", help="experiment name: W&B group and tag (default: the output folder's name)")
    parser.add_argument("--print-commands", action="store_true", help="print each run's fit && test command and exit")
    parser.add_argument("--aggregate", metavar="DIR", help="only build the tables from the run results under DIR")
    return parser


def _poolings(text: str, parser: argparse.ArgumentParser) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in available_poolings()]
    if not names or unknown:
        parser.error(f"Expected --poolings to be registry names from {available_poolings()}, but got {text!r}.")
    if len(set(names)) != len(names):
        parser.error(f"Expected --poolings without repeats, but got {text!r}.")
    return names


def _seeds(text: str, parser: argparse.ArgumentParser) -> list[int]:
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        parser.error(f"Expected --seeds to be a count or a list of ints, but got {text!r}.")
    if len(values) == 1:
        if values[0] < 1:
            parser.error(f"Expected --seeds to be a count >= 1 (or a list of seeds), but got {text!r}.")
        return list(range(values[0]))
    return values


def _check_config(configs: Sequence[str], overrides: Sequence[str], poolings: Sequence[str]) -> None:
    """Build each pooling's model, data and trainer as ``fit`` would (no training), and the fit and test
    datasets (a run tests after it trains): bad configs and missing splits fail here."""
    from lit_ppool.cli import run_cli

    for index, pooling in enumerate(poolings):
        args = [a for c in configs for a in ("--config", c)] + [*overrides, f"--model.pooling={pooling}", "--model.pooling_kwargs=null"]
        with warnings.catch_warnings():  # LightningCLI warns that sys.argv (compare's own) is not what it parses
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            cli = run_cli(args, run=False)
        if index == 0 and cli.datamodule is not None:  # the data do not depend on the pooling
            for stage in ("fit", "test"):
                cli.datamodule.setup(stage)


def _run_logged(args: Sequence[str], log: Path) -> tuple[int, float]:
    started = time.perf_counter()
    with open(log, "w") as file:
        code = subprocess.call([sys.executable, "-m", "lit_ppool.cli", *args], stdout=file, stderr=subprocess.STDOUT)
    return code, time.perf_counter() - started


def _run_all(runs: Sequence[Run], configs: Sequence[str], overrides: Sequence[str], experiment: str, output: Path) -> list[str]:
    """Fit and test every unfinished run, one after another; return the failures (with their logs)."""
    failures = []
    for index, run in enumerate(runs, 1):
        label = f"[{index}/{len(runs)}] {run.pooling} seed {run.seed}"
        if run.finished:
            print(f"{label}: finished earlier ({run.directory / RESULT_FILE})", flush=True)
            continue
        run.directory.mkdir(parents=True, exist_ok=True)
        (run.directory / "run.yaml").write_text(run.overlay(experiment, output))
        fit, test = run.commands(configs, overrides)
        for stage, args in (("fit", fit), ("test", test)):
            code, seconds = _run_logged(args, run.directory / f"{stage}.log")
            print(f"{label}: {stage} {'done' if code == 0 else 'FAILED'} in {seconds:.0f} s", flush=True)
            if code != 0:
                failures.append(f"{run.pooling} seed {run.seed}: {stage} failed (exit {code}), see {run.directory / f'{stage}.log'}")
                break
    return failures


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``lit-ppool compare``; returns the exit status (non-zero if a run failed)."""
    parser = _parser()
    options, overrides = parser.parse_known_args(sys.argv[2:] if argv is None else list(argv))
    overrides = [arg for arg in overrides if arg != "--"]
    poolings = _poolings(options.poolings, parser)
    if options.aggregate:
        folder = Path(options.aggregate)
        results = load_results(folder)
        if not results:
            parser.error(f"Expected run results ({RESULT_FILE}) under {str(folder)!r}, but found none.")
        explicit = "--poolings" in (argv or sys.argv)
        paths = write_report(Comparison(results, poolings if explicit else None), folder, f"Comparison: {folder.name}",
                             [f"aggregated from {len(results)} run(s) under {folder}"])  # fmt: skip
        print(paths["compare.md"].read_text())
        return 0
    if not options.config:
        parser.error("Expected --config (the base config of every run), or --aggregate DIR.")
    seeds = _seeds(options.seeds, parser)
    output = Path(options.output or f"compare_{Path(options.config[0]).stem}")
    experiment = options.name or output.name
    runs = plan_runs(output, poolings, seeds)
    if options.print_commands:
        for run in runs:
            run.directory.mkdir(parents=True, exist_ok=True)
            (run.directory / "run.yaml").write_text(run.overlay(experiment, output))
            fit, test = run.commands(options.config, overrides)
            print(f"{shlex.join(['lit-ppool', *fit])} && {shlex.join(['lit-ppool', *test])}")
        return 0
    from lit_ppool.training.errors import ConfigError  # imports Lightning: not for --help or --print-commands

    try:
        _check_config(options.config, overrides, poolings)
    except ConfigError as err:  # the datasets' errors (run_cli reports the others itself)
        parser.error(str(err))
    failures = _run_all(runs, options.config, overrides, experiment, output)
    results = [r for r in load_results(output) if r.pooling in poolings and r.seed in seeds]
    notes = [f"config: {', '.join(options.config)}{' ' + shlex.join(overrides) if overrides else ''}",
             f"poolings: {', '.join(poolings)}; seeds: {', '.join(map(str, seeds))}; "
             f"{len(results)} of {len(runs)} runs with results; metrics of the last checkpoint on the test split"]  # fmt: skip
    notes += [f"missing: {failure}" for failure in failures]
    if results:
        paths = write_report(Comparison(results, poolings), output, f"Comparison: {experiment}", notes)
        print(paths["compare.md"].read_text())
    for failure in failures:
        print(f"lit-ppool compare: {failure}", file=sys.stderr)
    return 1 if failures else 0
