"""Where the runs of ``lit-ppool compare`` run, through submitit: here, at most ``--jobs`` at once, or as one SLURM job array.

Each run is a :class:`RunTask`, a picklable callable that runs the run's ``lit-ppool fit`` and
``lit-ppool test`` commands (their output appended to ``fit.log`` and ``test.log`` in the run
folder, between a start and an end line with the time), unless its run record exists. While it
runs it holds a lock on ``<run>/run.lock``, so that two launches of one comparison never run one
run at once. It is a :class:`submitit.helpers.Checkpointable`: at its time limit or on a
preemption submitit stops it and requeues it, and ``fit --ckpt_path last`` resumes it from its
last checkpoint.

* ``--launcher local``: submitit's local executor runs each task as a subprocess, at most
  ``--jobs`` at once (:func:`run_local`); each run sees only its own ``--gpus_per_run`` GPUs
  (``CUDA_VISIBLE_DEVICES``) and gets its share of the cores (``OMP_NUM_THREADS``).
* ``--launcher slurm``: submitit's SLURM executor writes one sbatch script, a job array of one
  task per run, and submits it (:func:`submit_slurm`); a run on several GPUs or nodes is one
  array task with one SLURM task per GPU, which Lightning's SLURM support turns into its processes.

The launcher options come from the command line (:func:`add_arguments`) or from a YAML file given
with ``--config`` whose only key is ``launcher`` (:func:`read_launcher_block`); the command line wins.
submitit's own files (the pickled tasks, the sbatch script, each task's output) are in ``<output>/submitit/``.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import time
from argparse import ArgumentError
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import submitit
import torch
import yaml
from jsonargparse import ArgumentParser
from submitit.helpers import Checkpointable

from lit_ppool.training.errors import ConfigError

__all__ = [
    "FLAG_OPTIONS", "LOCK_FILE", "Launcher", "Progress", "RunOutcome", "RunTask", "VALUE_OPTIONS", "add_arguments",
    "local_environments", "read_launcher_block", "run_local", "submit_slurm", "watch",
]  # fmt: skip

VALUE_OPTIONS = (
    "--launcher", "--jobs", "--gpus_per_run", "--cpus_per_run", "--nodes_per_run", "--partition", "--time", "--mem_gb", "--sbatch",
)  # fmt: skip
FLAG_OPTIONS = ("--wait",)
SLURM_ONLY = ("nodes_per_run", "partition", "mem_gb", "sbatch", "wait")
"""The options that only ``--launcher slurm`` reads."""

LOCK_FILE = "run.lock"
"""The file in a run folder that a running :class:`RunTask` holds a lock on."""
SUBMITIT_FOLDER = "submitit"
"""The folder of submitit's files (pickled tasks, sbatch script, task output) under a comparison's output."""
NO_TIME_LIMIT_MIN = 60 * 24 * 365
"""The time limit of a local run without ``--time`` (a year: none)."""


def add_arguments(parser: ArgumentParser) -> None:
    """Add the launcher options (:data:`VALUE_OPTIONS` and :data:`FLAG_OPTIONS`) to ``parser``.

    Every default is ``None`` (unset), so that a ``launcher:`` block can fill in what the command line leaves out.
    """
    parser.add_argument("--launcher", type=Literal["local", "slurm"] | None, metavar="{local,slurm}", help="where the runs run: local (default) or slurm")
    parser.add_argument("--jobs", type=int | None, metavar="N", help="runs at once (local: default 1; slurm: the array's limit)")
    parser.add_argument(
        "--gpus_per_run", type=int | None, metavar="G",
        help="GPUs of each run (local default: all with --jobs 1, else an equal share; slurm default: 0)",
    )  # fmt: skip
    parser.add_argument(
        "--cpus_per_run", type=int | None, metavar="C",
        help="CPU cores (torch threads) of each run; slurm: of each of its tasks, one per GPU (local default: an equal share)",
    )  # fmt: skip
    parser.add_argument("--nodes_per_run", type=int | None, metavar="N", help="slurm: nodes of each run (default 1)")
    parser.add_argument("--partition", type=str | None, metavar="NAME", help="slurm: the partition")
    parser.add_argument("--time", type=int | None, metavar="MINUTES", help="time limit of each run (slurm: required); then requeued")
    parser.add_argument("--mem_gb", type=float | None, metavar="GB", help="slurm: memory of each run per node, in GB")
    parser.add_argument(
        "--sbatch", type=dict[str, str | int | float | bool] | None, metavar="OPTIONS",
        help="slurm: more sbatch options, '{account: lab, qos: high}'",
    )  # fmt: skip
    parser.add_argument("--wait", action="store_true", help="slurm: wait for the runs, then write the tables")


def read_launcher_block(config: str | Path) -> dict | None:
    """The ``launcher:`` block of the YAML file ``config``, or ``None`` if it has none (a run config).

    Raises:
        ConfigError: If the file holds other keys beside ``launcher`` (the runs would get them).
    """
    path = Path(config)
    if not path.is_file():
        return None
    content = yaml.safe_load(path.read_text())
    if not isinstance(content, dict) or "launcher" not in content:
        return None
    if set(content) != {"launcher"}:
        raise ConfigError(
            f"Expected the launcher: block in a YAML file of its own (every other --config goes to each run), but "
            f"{str(path)!r} also holds {sorted(set(content) - {'launcher'})}. Move the block into a file such as slurm.yaml."
        )
    if not isinstance(content["launcher"], dict):
        raise ConfigError(f"Expected the launcher: block of {str(path)!r} to be a mapping, but got {content['launcher']!r}.")
    return content["launcher"]


@dataclass(frozen=True)
class Launcher:
    """The launcher options of a comparison, resolved (:meth:`from_options`): where and how its runs run."""

    name: Literal["local", "slurm"] = "local"
    jobs: int | None = None
    gpus_per_run: int | None = None
    cpus_per_run: int | None = None
    nodes_per_run: int | None = None
    partition: str | None = None
    time: int | None = None
    mem_gb: float | None = None
    sbatch: dict = field(default_factory=dict)
    wait: bool = False

    @classmethod
    def from_options(cls, blocks: Sequence[tuple[str, Mapping]] = (), **given) -> Launcher:
        """The options ``given`` on the command line (``None``, ``False``: not given) over the ``launcher:``
        blocks (``(file, block)``, a later one over an earlier one) over the defaults.

        Raises:
            ConfigError: A block with an unknown key or a value of the wrong type, a count below 1, or an
                option that the launcher does not read (``--partition`` with ``local``, say).
        """
        parser = ArgumentParser(exit_on_error=False)
        add_arguments(parser)
        options: dict = {}
        for path, block in blocks:
            values = {("launcher" if key == "name" else key): value for key, value in block.items()}
            try:
                parsed = parser.parse_object(values, defaults=False)
            except ArgumentError as err:  # jsonargparse's: the key and what it expected
                raise ConfigError(f"Expected the launcher: block of {path!r} to hold launcher options, but: {err}") from None
            options.update({key: value for key, value in vars(parsed).items() if key in values})
        options.update({key: value for key, value in given.items() if value is not None and value is not False})  # 0 is given
        name = options.pop("launcher", None) or "local"
        launcher = cls(name=name, **{key: value for key, value in options.items() if value is not None})
        launcher.check()
        return launcher

    def check(self) -> None:
        """Raise :class:`~lit_ppool.training.errors.ConfigError` on counts below their minimum, slurm options
        for a local launch, and a slurm launch without ``--time``."""
        minimum = {"jobs": 1, "gpus_per_run": 0, "cpus_per_run": 1, "nodes_per_run": 1, "time": 1, "mem_gb": 1e-3}
        for key, low in minimum.items():
            value = getattr(self, key)
            if value is not None and value < low:
                raise ConfigError(f"Expected --{key} to be at least {low:g}, but got {value}.")
        if self.name == "local":
            unread = [f"--{key}" for key in SLURM_ONLY if getattr(self, key) not in (None, False, {})]
            if unread:
                raise ConfigError(f"Expected {', '.join(unread)} only with --launcher slurm, but the launcher is local.")
        elif self.time is None:
            raise ConfigError(
                "Expected --time MINUTES with --launcher slurm: the time limit of each run (a run that reaches it is "
                "requeued and resumes from its last checkpoint), but got none."
            )

    def run_overrides(self) -> list[str]:
        """The Trainer overrides that match a run's SLURM tasks to its processes: one task per GPU (Lightning's SLURM support)."""
        gpus, nodes = self.gpus_per_run or 0, self.nodes_per_run or 1
        if self.name != "slurm" or (gpus <= 1 and nodes == 1):
            return []
        return [f"--trainer.devices={max(gpus, 1)}", f"--trainer.num_nodes={nodes}"]


def _visible_gpus() -> list[str]:
    """The GPUs this process sees, as ``CUDA_VISIBLE_DEVICES`` names them (indices if it is unset)."""
    count = torch.cuda.device_count()
    listed = [name.strip() for name in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if name.strip()]
    return (listed or [str(index) for index in range(count)])[:count]


def local_environments(launcher: Launcher, cores: int | None = None, gpus: Sequence[str] | None = None) -> list[dict[str, str]]:
    """The environment variables of each of the ``--jobs`` local slots: its GPUs and its torch threads.

    Every slot names its GPUs in ``CUDA_VISIBLE_DEVICES`` (submitit's local executor would otherwise
    hide them all): with ``--jobs 1`` and no ``--gpus_per_run``, every GPU; with ``--jobs N``, an
    equal share of at least one each; with ``--gpus_per_run 0``, none (the run trains on the CPU).
    With ``--jobs 1`` and no ``--cpus_per_run`` a run keeps torch's default threads. An
    ``OMP_NUM_THREADS`` set here caps each run's threads.

    Args:
        launcher: The local launcher.
        cores: The CPU cores to share (default: those this process may run on).
        gpus: The GPUs to share (default: those this process sees).

    Raises:
        ConfigError: If ``--jobs`` x ``--gpus_per_run`` is more than the GPUs there are, or ``--jobs``
            is more than the GPUs there are (at least one) and ``--gpus_per_run`` is not given.

    Example:
        >>> local_environments(Launcher(jobs=2), cores=2, gpus=["0", "1", "2", "3"])
        [{'CUDA_VISIBLE_DEVICES': '0,1', 'OMP_NUM_THREADS': '1'}, {'CUDA_VISIBLE_DEVICES': '2,3', 'OMP_NUM_THREADS': '1'}]
    """
    jobs = launcher.jobs or 1
    cores = len(os.sched_getaffinity(0)) if cores is None else cores
    gpus = _visible_gpus() if gpus is None else list(gpus)
    per_run = launcher.gpus_per_run if launcher.gpus_per_run is not None or jobs == 1 else len(gpus) // jobs
    if gpus and per_run == 0 and launcher.gpus_per_run is None:
        raise ConfigError(
            f"Expected --jobs to be at most the {len(gpus)} GPU(s) visible here, so that each run gets one, but got "
            f"--jobs {jobs}. Lower --jobs, or add --gpus_per_run 0 to run them on the CPU."
        )
    if per_run is not None and jobs * per_run > len(gpus):
        raise ConfigError(
            f"Expected --jobs x --gpus_per_run ({jobs} x {per_run}) to be at most the {len(gpus)} GPU(s) visible here, "
            f"but it is {jobs * per_run}. Lower --jobs or --gpus_per_run."
        )
    threads = launcher.cpus_per_run or (max(1, cores // jobs) if jobs > 1 else None)
    cap = os.environ.get("OMP_NUM_THREADS", "")
    if threads is not None and cap.isdigit() and int(cap) > 0:
        threads = min(threads, int(cap))
    environments = []
    for slot in range(jobs):
        own = gpus if per_run is None else gpus[slot * per_run : (slot + 1) * per_run]
        env = {"CUDA_VISIBLE_DEVICES": ",".join(own)}
        environments.append(env if threads is None else {**env, "OMP_NUM_THREADS": str(threads)})
    return environments


# --- one run as a submitit job ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunOutcome:
    """What a :class:`RunTask` did. ``kind``: ``"done"``, ``"earlier"`` (its record existed), ``"failed"`` (a
    stage exited with ``exit_code``, see ``log``) or ``"busy"`` (another process holds its lock, ``log``)."""

    kind: Literal["done", "earlier", "failed", "busy"]
    seconds: float = 0.0
    stage: str | None = None
    exit_code: int | None = None
    log: Path | None = None

    @property
    def ok(self) -> bool:
        return self.kind in ("done", "earlier")

    def describe(self) -> str:
        """One line: what happened and, for a failure, where to look."""
        if self.kind == "failed" and self.stage is None:
            return f"failed, see {self.log}"
        if self.kind == "failed":
            return f"{self.stage} failed (exit {self.exit_code}), see {self.log}"
        if self.kind == "busy":
            return f"not started: another process runs it (it holds {self.log})"
        return "finished earlier" if self.kind == "earlier" else f"done in {self.seconds:.0f} s"


def _now() -> str:
    return datetime.now().isoformat(sep=" ", timespec="milliseconds")


def _task_rank() -> int:
    """The rank of this process among the tasks of its submitit job (0 outside a job)."""
    try:
        return submitit.JobEnvironment().global_rank
    except RuntimeError:  # not in a submitit job: called directly
        return 0


class RunTask(Checkpointable):
    """One (pooling, seed) run as a submitit job: its stages (``fit``, then ``test``), unless its record exists.

    Args:
        label: The run's name in messages, ``"p seed 0"``.
        directory: The run folder: the logs ``<stage>.log`` and the lock :data:`LOCK_FILE`.
        result: The run record that its last stage writes; the run is finished once it exists.
        stages: ``(name, argv)`` of each command, in order.
        env: Environment variables of the commands, over this process's.
    """

    def __init__(self, label: str, directory: Path, result: Path, stages: Sequence[tuple[str, Sequence[str]]], env=None):
        self.label = label
        self.directory = Path(directory)
        self.result = Path(result)
        self.stages = tuple((name, tuple(argv)) for name, argv in stages)
        self.env = dict(env or {})
        self._process: subprocess.Popen | None = None

    def with_env(self, env: Mapping[str, str]) -> RunTask:
        """This task with ``env`` added to its environment variables."""
        return RunTask(self.label, self.directory, self.result, self.stages, {**self.env, **env})

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_process": None}  # a running command does not travel with the pickle

    def log(self, stage: str, rank: int = 0) -> Path:
        """The log of ``stage`` (of the task of ``rank`` in a run on several GPUs)."""
        return self.directory / (f"{stage}.log" if rank == 0 else f"{stage}.rank{rank}.log")

    def __call__(self) -> RunOutcome:
        started = time.monotonic()
        if self.result.is_file():
            return RunOutcome("earlier")
        rank = _task_rank()
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / LOCK_FILE, "a+") as lock:
            if rank == 0:  # the other tasks of a run on several GPUs are its other processes
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return RunOutcome("busy", log=Path(lock.name))
                except OSError as err:  # a filesystem without flock (Lustre without -o flock, some NFS mounts)
                    self._note(rank, f"no lock ({err}): a second launch of this comparison at once would run it too")
                if self.result.is_file():  # finished by another launch between the first look and the lock
                    return RunOutcome("earlier")
                lock.truncate(0)
                lock.write(f"pid {os.getpid()} on {socket.gethostname()} since {_now()}\n")
                lock.flush()
            for stage, argv in self.stages:
                code = self._run_stage(stage, argv, self.log(stage, rank), lock.fileno())
                if code != 0:
                    return RunOutcome("failed", time.monotonic() - started, stage, code, self.log(stage, rank))
        return RunOutcome("done", time.monotonic() - started)

    def _note(self, rank: int, text: str) -> None:
        """One line for the user at the top of this attempt's first stage log."""
        with open(self.log(self.stages[0][0], rank), "a") as file:
            file.write(f"# lit-ppool compare: {self.label}: {text}\n")

    def _run_stage(self, stage: str, argv: Sequence[str], log: Path, lock: int) -> int:
        """Run one command, its output appended to ``log``; the lock's file stays open in it (a killed task
        whose command lives on keeps the run locked)."""
        env = {**os.environ, **self.env}
        with open(log, "a") as file:
            file.write(f"# lit-ppool compare: {stage} of {self.label} started {_now()} (pid {os.getpid()} on {socket.gethostname()})\n")
            file.flush()
            process = self._process = subprocess.Popen(argv, stdout=file, stderr=subprocess.STDOUT, env=env, pass_fds=(lock,))
            try:
                while (code := process.poll()) is None:  # polled, not wait(): checkpoint() may stop it meanwhile
                    time.sleep(0.2)
            finally:
                self.stop()
            file.write(f"# lit-ppool compare: {stage} of {self.label} ended {_now()} with exit status {code}\n")
        return code

    def stop(self) -> None:
        """Stop the running command, if any: SIGTERM, then SIGKILL after 30 s."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        for _ in range(2):  # bounded waits: this may run in a signal handler that interrupted a poll()
            try:
                process.wait(timeout=30)
                return
            except subprocess.TimeoutExpired:
                process.kill()

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        """What submitit requeues when the job reaches its time limit or is preempted: this task again, after its
        command is stopped; the rerun skips a finished run and resumes a fit from its last checkpoint."""
        self.stop()
        return super().checkpoint(*args, **kwargs)


# --- progress ------------------------------------------------------------------------------------------------


def _clock(seconds: float) -> str:
    """``h:mm:ss`` or ``m:ss``.

    Example:
        >>> _clock(65), _clock(3725)
        ('1:05', '1:02:05')
    """
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """The status lines of a launch: one per change of a run's state (queued, running, done, failed), with the
    counts, the time since the start and an estimate of the time left from the durations of the runs done.

    Args:
        labels: The runs, all queued.
        parallel: How many run at once, for the estimate (``None``: as many as are running).
        clock: Seconds, monotonic.
    """

    STATES = ("done", "running", "failed", "queued")

    def __init__(self, labels: Sequence[str], parallel: int | None = None, clock: Callable[[], float] = time.monotonic):
        self.states = dict.fromkeys(labels, "queued")
        self.parallel = parallel
        self.clock = clock
        self.start = clock()
        self.started: dict[str, float] = {}
        self.durations: list[float] = []

    def update(self, label: str, state: str, note: str = "") -> str | None:
        """Record that ``label`` is now in ``state``: its status line, or ``None`` if the state did not change."""
        if self.states[label] == state:
            return None
        now = self.clock()
        if state == "running":
            self.started[label] = now
        elif state == "done" and label in self.started:
            self.durations.append(now - self.started[label])
        self.states[label] = state
        counts = ", ".join(f"{sum(s == name for s in self.states.values())} {name}" for name in self.STATES)
        left = self.seconds_left()
        estimate = "" if left is None else f", about {_clock(left)} left"
        return f"[{_clock(now - self.start)}] {label}: {note or state} | {counts}{estimate}"

    def seconds_left(self) -> float | None:
        """The time left if the runs to go take as long as the mean of those done (``None`` before the first).

        Example:
            >>> progress = Progress(["a", "b", "c"], parallel=1, clock=iter([0, 0, 10, 10]).__next__)
            >>> progress.update("a", "running") and progress.update("a", "done")  # 10 s
            '[0:10] a: done | 1 done, 0 running, 0 failed, 2 queued, about 0:20 left'
        """
        if not self.durations:
            return None
        mean, now = sum(self.durations) / len(self.durations), self.clock()
        running = [label for label, state in self.states.items() if state == "running"]
        work = sum(max(mean - (now - self.started[label]), 0.0) for label in running)
        work += mean * sum(state == "queued" for state in self.states.values())
        return work / max(self.parallel or len(running), 1)

    def summary(self) -> str:
        """The last line: the counts and the time since the start."""
        counts = ", ".join(f"{sum(s == name for s in self.states.values())} {name}" for name in ("done", "failed"))
        return f"{len(self.states)} run(s) in {_clock(self.clock() - self.start)}: {counts}"


def _outcome(job: submitit.Job) -> RunOutcome:
    """The outcome of a finished job; a job that ended without one (killed, cancelled) failed, see its submitit log."""
    try:
        return job.result()
    except Exception:  # submitit's UncompletedJobError or FailedJobError: the job itself did not finish
        return RunOutcome("failed", log=job.paths.stderr)


def _job_state(job: submitit.Job) -> str:
    """``done``, ``running`` or ``queued``: submitit's state of a job that has not finished, in :class:`Progress`'s words."""
    if job.done():
        return "done"
    return "running" if job.state.upper() in ("RUNNING", "COMPLETING") else "queued"


def _say(line: str | None) -> None:
    if line is not None:
        print(line, flush=True)


def run_local(tasks: Sequence[RunTask], launcher: Launcher, folder: Path, cluster: str = "local", poll_s: float = 0.5) -> dict[str, RunOutcome]:
    """Run ``tasks`` through submitit, at most ``--jobs`` at once, each with its slot's environment (:func:`local_environments`).

    Args:
        tasks: The runs to run.
        launcher: The local launcher.
        folder: submitit's folder.
        cluster: submitit's executor: ``local`` (a subprocess per task) or ``debug`` (in this process, one at a time).
        poll_s: Seconds between looks at the running jobs.

    Returns:
        The outcome of each task, by label.
    """
    slots = local_environments(launcher)
    executor = submitit.AutoExecutor(folder, cluster=cluster)
    executor.update_parameters(timeout_min=launcher.time or NO_TIME_LIMIT_MIN)
    queue, running, outcomes = deque(tasks), {}, {}
    progress = Progress([task.label for task in tasks], parallel=len(slots))
    try:
        while queue or running:
            for slot in [slot for slot in range(len(slots)) if slot not in running][: len(queue)]:
                task = queue.popleft().with_env(slots[slot])
                running[slot] = (task, executor.submit(task))
                _say(progress.update(task.label, "running"))
            finished = [slot for slot, (_, job) in running.items() if job.done()]
            for slot in finished:
                task, job = running.pop(slot)
                outcomes[task.label] = outcome = _outcome(job)
                _say(progress.update(task.label, "done" if outcome.ok else "failed", outcome.describe()))
            if running and not finished:
                time.sleep(poll_s)
    except BaseException:  # Ctrl-C: no run goes on without us
        for _, job in running.values():
            job.cancel(check=False)
        raise
    _say(progress.summary())
    return outcomes


def submit_slurm(tasks: Sequence[RunTask], launcher: Launcher, folder: Path, name: str) -> list[submitit.Job]:
    """Submit ``tasks`` as one SLURM job array named ``name`` (one task per run; one job if there is one run).

    A run with ``--gpus_per_run G`` > 1 is one array task of G SLURM tasks per node, one per GPU.
    """
    gpus = launcher.gpus_per_run or 0
    executor = submitit.AutoExecutor(folder, cluster="slurm")
    executor.update_parameters(
        name=name,
        timeout_min=launcher.time,
        nodes=launcher.nodes_per_run or 1,
        tasks_per_node=max(gpus, 1),
        gpus_per_node=gpus or None,
        cpus_per_task=launcher.cpus_per_run,
        mem_gb=launcher.mem_gb,
        slurm_partition=launcher.partition,
        slurm_array_parallelism=launcher.jobs or len(tasks),
        slurm_additional_parameters=dict(launcher.sbatch) or None,
    )
    env = {} if launcher.cpus_per_run is None else {"OMP_NUM_THREADS": str(launcher.cpus_per_run)}
    return executor.submit_array([task.with_env(env) for task in tasks])


def watch(jobs: Sequence[submitit.Job], labels: Sequence[str], parallel: int | None = None, poll_s: float = 30.0) -> dict[str, RunOutcome]:
    """Wait for submitted ``jobs`` (of the runs ``labels``), with a status line per change; their outcomes by label."""
    progress = Progress(labels, parallel)
    waiting, outcomes = dict(zip(labels, jobs)), {}
    while waiting:
        for label, job in list(waiting.items()):
            state = _job_state(job)
            if state == "done":
                outcomes[label] = outcome = _outcome(waiting.pop(label))
                state = "done" if outcome.ok else "failed"
                _say(progress.update(label, state, outcome.describe()))
            else:
                _say(progress.update(label, state))
        if waiting:
            time.sleep(poll_s)
    _say(progress.summary())
    return outcomes
