"""``lit-ppool compare``: a config for several poolings x seeds, as ordinary Lightning runs, then the tables.

Each (pooling, seed) run lives in ``<output>/<pooling>/seed_<seed>/``: a one-screen config
overlay ``run.yaml`` (the pooling, the seed, and loggers that write into the run folder and
group the W&B runs), the logs of its two commands (``fit.log``, ``test.log``), and what those
write (``checkpoints/``, ``metrics.csv``, ``config.yaml``, ``alpha.png``, ``test-last.json``).
A run counts as finished once its ``test-last.json`` exists; ``fit`` is called with
``--ckpt_path last``, so an interrupted run resumes from its last checkpoint.

The unfinished runs go to a launcher (:mod:`lit_ppool.compare.launch`, through submitit): here, at
most ``--jobs`` at once, or a SLURM job array (``--launcher slurm``).
"""

from __future__ import annotations

import shlex
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from jsonargparse import ArgumentParser
from jsonargparse.typing import register_type

from lit_ppool.compare import launch
from lit_ppool.compare.launch import SUBMITIT_FOLDER, Launcher, RunTask, read_launcher_block, run_local, submit_slurm, watch
from lit_ppool.compare.report import Comparison, write_report
from lit_ppool.layers.registry import REFERENCE_POOLING, available_poolings
from lit_ppool.training.errors import ConfigError
from lit_ppool.training.lightning_cli import run_cli
from lit_ppool.training.record import RESULT_FILE, load_results, record_path

__all__ = ["Names", "Run", "Seeds", "add_arguments", "plan_runs", "run_comparison", "split_overrides"]

SUMMARY = "Poolings x seeds of a config (fit, then test), with error bars."
DESCRIPTION = """\
Run a config for several poolings x seeds (fit, then test of the last checkpoint),
then write compare.md, compare.csv, runs.csv and compare.png.
"""
EPILOG = """\
Every other argument is a LightningCLI override passed to each run's fit and test, e.g.
--trainer.max_epochs=2. Examples:
  lit-ppool compare --config configs/benchmark.yaml --poolings max,avg,p --seeds 10
  lit-ppool compare --config configs/benchmark.yaml --jobs 2          # two runs at once
  lit-ppool compare --config configs/benchmark.yaml --launcher slurm --partition gpu --time 120 --gpus_per_run 1
  lit-ppool compare --config configs/benchmark.yaml --config slurm.yaml   # a YAML file of one launcher: block
  lit-ppool compare --config configs/benchmark.yaml --print_commands   # one line per run, for a scheduler of yours
  lit-ppool compare --aggregate compare_benchmark                      # tables from finished run folders
"""

# compare's own options that take a value, and its flags; every other argument is a LightningCLI override of its runs
VALUE_OPTIONS = ("--config", "--poolings", "--seeds", "--output", "--name", "--aggregate", *launch.VALUE_OPTIONS)
FLAG_OPTIONS = ("-h", "--help", "--print_commands", *launch.FLAG_OPTIONS)

# the check of a config for a SLURM launch runs here, on a machine that may have no GPU
CHECK_ON_CPU = ["--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.num_nodes=1"]


class Names(list):
    """The value of ``--poolings``: names given as ``max,avg,p`` or as a list, ``[max, avg, p]``."""


class Seeds(list):
    """A list of seeds for ``--seeds``: ``0,7,9`` or ``[0, 7, 9]`` (a single int there is a count)."""


def _items(value: str | Sequence) -> list[str]:
    """The items of ``a,b,c``, or of a list (jsonargparse has loaded ``[a, b, c]`` already)."""
    return [str(item).strip() for item in (value.split(",") if isinstance(value, str) else value)]


def _seeds(value: str | Sequence) -> Seeds:
    """:class:`Seeds` from ``0,7,9`` or ``[0, 7, 9]``."""
    try:
        return Seeds(int(item) for item in _items(value))
    except (TypeError, ValueError):
        raise ValueError(f"Expected a count or a list of ints (0,7,9 or [0, 7, 9]), but got {value!r}.") from None


register_type(Names, serializer=list, deserializer=lambda value: Names(_items(value)))
register_type(Seeds, serializer=list, deserializer=_seeds)


@dataclass(frozen=True)
class Run:
    """One (pooling, seed) run of a comparison and its folder."""

    pooling: str
    seed: int
    directory: Path

    @property
    def test_checkpoint(self) -> Path:
        """The checkpoint this run is tested on: the last one of its fit."""
        return self.directory / "checkpoints" / "last.ckpt"

    @property
    def result(self) -> Path:
        """The run record its test writes (:func:`~lit_ppool.training.record.record_path`)."""
        return record_path(self.test_checkpoint, "test")

    @property
    def finished(self) -> bool:
        return self.result.is_file()

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
        test = ["test", *base, "--ckpt_path", str(self.test_checkpoint)]
        return fit, test


def plan_runs(output: Path, poolings: Sequence[str], seeds: Sequence[int]) -> list[Run]:
    """The runs of a comparison, pooling-major."""
    return [Run(p, s, output / p / f"seed_{s}") for p in poolings for s in seeds]


def add_arguments(parser: ArgumentParser) -> None:
    """Add compare's own options (:data:`VALUE_OPTIONS` and :data:`FLAG_OPTIONS`) to ``lit-ppool compare``'s parser."""
    parser.add_argument(
        "--config", action="append", default=[],
        help="base config (repeat to layer overlays; a file of one launcher: block sets the launcher options)",
    )  # fmt: skip
    parser.add_argument(
        "--poolings", type=Names | None, default=None, metavar="NAMES",
        help="registry names, max,avg,p or [max, avg, p]; the first is the reference. Unset: max,p (with --aggregate: every pooling found)",
    )  # fmt: skip
    parser.add_argument("--seeds", type=int | Seeds, default=3, help="a count N (seeds 0..N-1), or the seeds: 0,7,9 or [0, 7, 9]")
    parser.add_argument("--output", type=str | None, metavar="DIR", help="folder of the runs and tables. Unset: compare_<config name>")
    parser.add_argument("--name", type=str | None, help="experiment name: W&B group and tag. Unset: the output folder's name")
    parser.add_argument("--print_commands", action="store_true", help="print each run's fit && test command and exit")
    parser.add_argument("--aggregate", type=str | None, metavar="DIR", help="only build the tables from the run results under DIR")
    launch.add_arguments(parser)


def split_overrides(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """compare's own arguments, and the LightningCLI overrides of its runs: every other argument, in order
    (after ``--``, all of them; the ``--`` itself is dropped).

    Example:
        >>> split_overrides(["--config", "a.yaml", "--trainer.max_steps=2", "--data", "my.yaml", "--seeds=2", "--print_commands"])
        (['--config', 'a.yaml', '--seeds=2', '--print_commands'], ['--trainer.max_steps=2', '--data', 'my.yaml'])
    """
    own, overrides = [], []
    rest = iter(args)
    for arg in rest:
        option = arg.split("=", 1)[0]
        if arg == "--":
            overrides += rest
        elif option in VALUE_OPTIONS:
            own += [arg] if "=" in arg else [arg, *islice(rest, 1)]  # the option and its value
        elif option in FLAG_OPTIONS:
            own.append(arg)
        else:
            overrides.append(arg)
    return own, overrides


def _checked_poolings(poolings: Sequence[str]) -> list[str]:
    """``poolings`` as a list, if they are registry names without repeats."""
    names = list(poolings)
    unknown = [name for name in names if name not in available_poolings()]
    if not names or unknown:
        raise ConfigError(f"Expected --poolings to be registry names from {available_poolings()}, but got {names}.")
    if len(set(names)) != len(names):
        raise ConfigError(f"Expected --poolings without repeats, but got {names}.")
    return names


def _seed_list(seeds: int | Sequence[int]) -> list[int]:
    """The seeds of a count N (``0..N-1``) or of a list, if there is one at least."""
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list:
        raise ConfigError(f"Expected --seeds to be a count >= 1 or a list of seeds, but got {seeds}.")
    return seed_list


def _check_config(configs: Sequence[str], overrides: Sequence[str], poolings: Sequence[str]) -> None:
    """Build each pooling's model, data and trainer as ``fit`` would (no training), and the fit and test
    datasets (a run tests after it trains): bad configs and missing splits fail here."""
    for index, pooling in enumerate(poolings):
        args = [a for c in configs for a in ("--config", c)] + [*overrides, f"--model.pooling={pooling}", "--model.pooling_kwargs=null"]
        with warnings.catch_warnings():  # LightningCLI warns that sys.argv (compare's own) is not what it parses
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
            warnings.filterwarnings("ignore", message="The `srun` command is available")  # a SLURM login node: the runs use it
            cli = run_cli(args, run=False)
        if index == 0 and cli.datamodule is not None:  # the data do not depend on the pooling
            for stage in ("fit", "test"):
                cli.datamodule.setup(stage)


def _tasks(runs: Sequence[Run], configs: Sequence[str], overrides: Sequence[str], experiment: str, output: Path) -> list[RunTask]:
    """The tasks of the unfinished runs, with their overlays written; the finished ones are named and left out."""
    tasks = []
    for index, run in enumerate(runs, 1):
        if run.finished:
            print(f"[{index}/{len(runs)}] {run.pooling} seed {run.seed}: finished earlier ({run.result})", flush=True)
            continue
        run.directory.mkdir(parents=True, exist_ok=True)
        (run.directory / "run.yaml").write_text(run.overlay(experiment, output))
        program = [sys.executable, "-m", "lit_ppool.cli"]
        fit, test = run.commands(configs, overrides)
        stages = [("fit", [*program, *fit]), ("test", [*program, *test])]
        tasks.append(RunTask(f"{run.pooling} seed {run.seed}", run.directory, run.result, stages))
    return tasks


def _print_submitted(jobs: Sequence, tasks: Sequence[RunTask], output: Path, poolings: Sequence[str]) -> None:
    """The job ids, logs and sbatch script of a SLURM launch, and the command that builds the tables afterwards."""
    print(f"Submitted {len(jobs)} run(s) to SLURM, job {jobs[0].job_id.split('_')[0]}; sbatch script {jobs[0].paths.submission_file}")
    for task, job in zip(tasks, jobs):
        print(f"  {job.job_id}  {task.label}  {job.paths.stdout}")
    print(f"When they are done (squeue --me): lit-ppool compare --aggregate {output} --poolings {','.join(poolings)}")
    print("Run this command again for runs that failed: finished runs are skipped, the others resume from their last checkpoint.")


def _launch(tasks: Sequence[RunTask], launcher: Launcher, output: Path, experiment: str, poolings: Sequence[str]) -> list[str] | None:
    """Run the tasks with ``launcher``; the failures (with their logs), or ``None`` for a SLURM launch that did not wait."""
    if not tasks:
        return []
    folder = output / SUBMITIT_FOLDER
    if launcher.name == "local":
        outcomes = run_local(tasks, launcher, folder)
    else:
        jobs = submit_slurm(tasks, launcher, folder, f"lit-ppool-{experiment}")
        _print_submitted(jobs, tasks, output, poolings)
        if not launcher.wait:
            return None
        outcomes = watch(jobs, [task.label for task in tasks], launcher.jobs)
    return [f"{label}: {outcome.describe()}" for label, outcome in outcomes.items() if not outcome.ok]


def _aggregate(folder: Path, poolings: Sequence[str] | None) -> int:
    """Build the tables from the run results under ``folder`` (every pooling found if ``poolings`` is ``None``)."""
    results = load_results(folder)
    if not results:
        raise ConfigError(f"Expected run results ({RESULT_FILE}) under {str(folder)!r}, but found none.")
    paths = write_report(Comparison(results, poolings), folder, f"Comparison: {folder.name}",
                         [f"aggregated from {len(results)} run(s) under {folder}"])  # fmt: skip
    print(paths["compare.md"].read_text())
    return 0


def _print_commands(runs: Sequence[Run], configs: Sequence[str], overrides: Sequence[str], experiment: str, output: Path) -> int:
    """Write each run's overlay and print its ``lit-ppool fit ... && lit-ppool test ...`` line."""
    for run in runs:
        run.directory.mkdir(parents=True, exist_ok=True)
        (run.directory / "run.yaml").write_text(run.overlay(experiment, output))
        fit, test = run.commands(configs, overrides)
        print(f"{shlex.join(['lit-ppool', *fit])} && {shlex.join(['lit-ppool', *test])}")
    return 0


def run_comparison(
    config: Sequence[str] = (),
    poolings: Sequence[str] | None = None,
    seeds: int | Sequence[int] = 3,
    output: str | Path | None = None,
    name: str | None = None,
    print_commands: bool = False,
    aggregate: str | Path | None = None,
    overrides: Sequence[str] = (),
    **launcher_options,
) -> int:
    """``lit-ppool compare``: fit and test every (pooling, seed) run of a config, then write the tables.

    Args:
        config: The base config of every run, then its overlays (``--config``, repeated). A YAML file
            whose only key is ``launcher`` holds launcher options instead (not passed to the runs).
        poolings: Registry names; the first is the reference of the paired differences. ``None``:
            ``max`` and ``p``, or with ``aggregate`` every pooling found.
        seeds: A count N (seeds ``0..N-1``) or the seeds.
        output: The folder of the runs and tables (``compare_<config name>`` if ``None``).
        name: The experiment name: W&B group and tag (the output folder's name if ``None``).
        print_commands: Only write each run's overlay and print its fit and test command.
        aggregate: Only build the tables from the run results under this folder.
        overrides: LightningCLI arguments for each run's fit and test, e.g. ``["--trainer.max_epochs=2"]``.
        **launcher_options: Where the runs run, over the ``launcher:`` blocks of ``config``:
            ``launcher`` (``"local"``, the default, or ``"slurm"``), ``jobs``, ``gpus_per_run``,
            ``cpus_per_run``, ``nodes_per_run``, ``partition``, ``time`` (minutes), ``mem_gb``,
            ``sbatch`` (more sbatch options) and ``wait`` (:class:`~lit_ppool.compare.launch.Launcher`).

    Returns:
        The exit status: 0, or 1 if a run failed (the others still run). A SLURM launch without
        ``wait`` returns 0 once the job array is submitted.

    Raises:
        ConfigError: Unknown or repeated poolings, a seed count below 1, no ``config``, no results
            under ``aggregate``, bad launcher options, or a config that ``fit`` would reject; before any run.
    """
    checked = _checked_poolings([REFERENCE_POOLING, "p"] if poolings is None else poolings)
    if aggregate is not None:
        return _aggregate(Path(aggregate), None if poolings is None else checked)
    blocks = {path: read_launcher_block(path) for path in config}
    config = [path for path in config if blocks[path] is None]
    if not config:
        raise ConfigError("Expected --config (the base config of every run), or --aggregate DIR.")
    launcher = Launcher.from_options([(path, block) for path, block in blocks.items() if block is not None], **launcher_options)
    seed_list = _seed_list(seeds)
    output = Path(output or f"compare_{Path(config[0]).stem}")
    experiment = name or output.name
    runs = plan_runs(output, checked, seed_list)
    if print_commands:
        return _print_commands(runs, config, overrides, experiment, output)
    _check_config(config, [*overrides, *(CHECK_ON_CPU if launcher.name == "slurm" else [])], checked)
    tasks = _tasks(runs, config, [*overrides, *launcher.run_overrides()], experiment, output)
    failures = _launch(tasks, launcher, output, experiment, checked)
    if failures is None:  # submitted; the tables come with --aggregate
        return 0
    results = [r for r in load_results(output) if r.pooling in checked and r.seed in seed_list]
    notes = [f"config: {', '.join(config)}{' ' + shlex.join(overrides) if overrides else ''}",
             f"poolings: {', '.join(checked)}; seeds: {', '.join(map(str, seed_list))}; "
             f"{len(results)} of {len(runs)} runs with results; metrics of the last checkpoint on the test split"]  # fmt: skip
    notes += [f"missing: {failure}" for failure in failures]
    if results:
        paths = write_report(Comparison(results, checked), output, f"Comparison: {experiment}", notes)
        print(paths["compare.md"].read_text())
    for failure in failures:
        print(f"lit-ppool compare: {failure}", file=sys.stderr)
    return 1 if failures else 0
