"""Run every combination of games x methods x seeds of ``python -m rlzoo_transfer.train``.

    python -m rlzoo_transfer.sweep --games Alien Gopher Jamesbond --methods scratch zoo hub --seeds 0 1 2 3 4 \\
        [--steps 100000] [--log-dir runs] [--jobs N] [--dry-run] [-- <extra train arguments>]
    python -m rlzoo_transfer.sweep ... --backend ray --address auto

Each run is the subprocess ``sys.executable -m rlzoo_transfer.train --game G --method M --seed S --log-dir D
[--steps N] [--source X] [--resume] <extra>`` with stdout and stderr appended to ``<run dir>/train.log``, the run
folder being ``<log dir>/<Game>/<method folder>/seed<k>/`` exactly as train writes it.

* A method ``name:Source`` (e.g. ``finetune:Seaquest``) becomes ``--method name --source Source`` and the folder
  ``name-Source`` (``finetune-Seaquest``); that folder spelling is accepted as the method too.  Games are
  canonicalised as train does (``JamesBond`` -> ``Jamesbond``, ``games.resolve_game``); an unknown game is an
  error before anything runs.
* A run whose folder holds ``final.json`` is skipped.  A run whose folder already exists without it (an
  interrupted run) gets ``--resume``.  A fresh run is started without ``--resume``; note that the sweep creates
  its folder (for ``train.log``) just before starting it.
* A run counts as done when train exits 0 *and* ``final.json`` exists, failed otherwise.
* Local backend (default; both in :mod:`rlzoo_transfer.backends`): at most ``--jobs`` (default ``max(1, cpu_count
  // 2)``) runs at a time, each with ``OMP_NUM_THREADS = max(1, cpu_count // (jobs + other training processes
  already running))`` unless the environment sets it (a second sweep beside a first would otherwise oversubscribe
  the cores).
  Ray backend (``pip install 'rlzoo_transfer[ray]'``): the same commands as Ray tasks on an existing cluster
  (``--address``, e.g. ``auto``), each reserving ``--cpus-per-run`` / ``--gpus-per-run``; the workers must see the
  same file system (log dir) and have the package installed.
* A live table (rich) shows each run's status (pending / running / done / failed / skipped) and the last
  evaluation step found in its ``evaluations.csv``.

* Train's arguments after ``--`` are checked before any run starts, as train would check them (exit 2, not one
  failed run per seed): unknown options, ``-p`` keys and values for every method swept, each method's zoo sources
  against the zoo's ``zoo.yml`` (torch-free), and - only where ``-p`` sets a network setting (``hidden``, hub's
  ``k``, zoo's ``gate_norm`` ...) - the network itself, built once per (game, method, source) as train builds it
  (this alone loads torch).  The options the sweep sets itself (``--game``, ``--method``, ``--source``, ``--seed``,
  ``--log-dir``, ``--steps``, ``--resume``) are refused there, naming the sweep option to use.

``--confirm YML`` runs the game, methods and seeds of a pre-registered test (:mod:`rlzoo_transfer.confirm`), each
arm with its registered protocol (``--steps``, ``--eval-freq``, ``--eval-episodes``, ``--final-eval-episodes``, and
``-p`` for each hyperparameter off the method's defaults: :func:`registered_arguments`), and refuses to start until
the registration is committed (:func:`take_registration`).

Exit status: 0 when no run failed, 1 when one did (the summary lists them and their logs), 2 for bad arguments
or a missing Ray; 130 on Ctrl-C (the runs started are terminated; rerun the same command to resume them).
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Mapping, Sequence

import yaml

from rlzoo_transfer.backends import (BackendError, LocalBackend, RayBackend, other_training_processes,
                                     threads_per_run)
from rlzoo_transfer.config import seed_arg
from rlzoo_transfer.manifest import DEFAULT_ZOO, ZooError, read_manifest
from rlzoo_transfer.outputs import check_outputs
from rlzoo_transfer.scores import maybe_canonical_game

PENDING, RUNNING, DONE, FAILED, SKIPPED = "pending", "running", "done", "failed", "skipped"
_ORDER = (RUNNING, FAILED, PENDING, DONE, SKIPPED)
_STYLE = {PENDING: "dim", RUNNING: "cyan", DONE: "green", FAILED: "bold red", SKIPPED: "yellow"}


class SweepError(Exception):
    """Bad arguments or an unusable backend (exit status 2)."""


@dataclass(frozen=True)
class RunSpec:
    """One (game, method, seed) of the sweep.

    :param game: game name passed to ``--game`` (canonical when known)
    :param method: value of ``--method``
    :param source: value of ``--source`` (methods given as ``method:Source``), else None
    :param seed: value of ``--seed``
    """

    game: str
    method: str
    source: str | None
    seed: int

    @property
    def folder(self) -> str:
        """Method folder name written by train: ``method`` or ``method-Source``."""
        return f"{self.method}-{self.source}" if self.source else self.method

    @property
    def name(self) -> str:
        """``Game/method folder/seed<k>``."""
        return f"{self.game}/{self.folder}/seed{self.seed}"

    def run_dir(self, log_dir: Path) -> Path:
        """The run folder below ``log_dir``."""
        return Path(log_dir) / self.game / self.folder / f"seed{self.seed}"


@dataclass
class Job:
    """A planned run and its state in the sweep.

    :param spec: what to run
    :param run_dir: its folder
    :param args: the command after the Python executable (``-m module ...``)
    :param resume: whether ``--resume`` was added (the folder existed without ``final.json``)
    :param status: one of pending / running / done / failed / skipped
    """

    spec: RunSpec
    run_dir: Path
    args: list[str]
    resume: bool = False
    status: str = PENDING
    returncode: int | None = None
    note: str = ""
    started: float | None = None
    ended: float | None = None
    last_step: int | None = field(default=None)
    members: list["Job"] = field(default_factory=list)  # the lock-step group this job leads (itself included)
    led: bool = False  # trains inside another job's lock-step group

    @property
    def group(self) -> list["Job"]:
        """The runs this job's command trains: its lock-step group, or itself."""
        return self.members or [self]

    @property
    def log_path(self) -> Path:
        """``<run dir>/train.log``."""
        return self.run_dir / "train.log"

    def command(self, python: str = sys.executable) -> list[str]:
        """Full command line with the given interpreter."""
        return [python, *self.args]


def canonical_game_name(name: str) -> str:
    """The game folder name train will use: ``games.resolve_game`` (any ALE game), else :mod:`scores`' spelling.

    :raises SweepError: the game is not an ALE game
    """
    try:
        from rlzoo_transfer.games import UnknownGameError, resolve_game
    except ImportError:  # a driver machine without the RL stack: known games only
        return maybe_canonical_game(name)
    try:
        return resolve_game(name)[0]
    except UnknownGameError as err:
        raise SweepError(str(err)) from err


def parse_method(text: str) -> tuple[str, str | None]:
    """``'zoo'`` -> ``('zoo', None)``; ``'finetune:Seaquest'`` -> ``('finetune', 'Seaquest')``.

    The run-folder spelling ``'finetune-Seaquest'`` (what ``eval/`` and the report show) is accepted too, when
    the part before the last ``-`` is a method that takes a source (``zoo-lite`` stays a method of its own).

    :raises SweepError: an empty method or source
    """
    method, sep, source = text.partition(":")
    if not method or (sep and not source) or ":" in source:
        raise SweepError(f"bad method {text!r}: expected NAME or NAME:SOURCE (e.g. finetune:Seaquest)")
    if not sep and "-" in method:
        name, _, folder_source = method.rpartition("-")
        if name and folder_source and _takes_source(name):
            return name, maybe_canonical_game(folder_source)
    return method, (maybe_canonical_game(source) if sep else None)


def _takes_source(name: str) -> bool:
    """Whether ``name`` is a registered method that takes ``--source`` (False without the RL stack)."""
    try:
        from rlzoo_transfer.rl.registry import METHODS
    except ImportError:
        return False
    return name in METHODS and METHODS[name].needs_source


def train_args(spec: RunSpec, log_dir: Path, steps: int | None, extra: Sequence[str], resume: bool,
               module: str = "rlzoo_transfer.train") -> list[str]:
    """Arguments of one train invocation after the interpreter: ``-m module --game ... [--resume] extra``."""
    args = ["-m", module, "--game", spec.game, "--method", spec.method, "--seed", str(spec.seed)]
    if spec.source:
        args += ["--source", spec.source]
    if steps is not None:
        args += ["--steps", str(steps)]
    args += ["--log-dir", str(log_dir)]
    if resume:
        args.append("--resume")
    return args + list(extra)


def plan(games: Sequence[str], methods: Sequence[str], seeds: Sequence[int], log_dir: Path,
         steps: int | None = None, extra: Sequence[str] = (), module: str = "rlzoo_transfer.train",
         method_extra: Mapping[tuple[str, str | None], Sequence[str]] | None = None) -> list[Job]:
    """One job per combination (duplicates removed), with skip / resume decided from the folders.

    Seed-major order - every game x method of seed 0, then of seed 1, ... - so a sweep stopped part-way (a budget,
    a session's end) leaves every (game, method) with the same number of seeds, i.e. a comparable picture.
    ``method_extra`` maps a parsed method ``(name, source)`` to train arguments of its runs alone, put before
    ``extra`` (``--confirm``: each arm's registered protocol).
    """
    parsed = [parse_method(m) for m in methods]
    games = [canonical_game_name(g) for g in games]
    specs = dict.fromkeys(RunSpec(g, m, src, s) for s in seeds for g in games for (m, src) in parsed)
    jobs = []
    for spec in specs:
        run_dir = spec.run_dir(log_dir)
        finished = (run_dir / "final.json").is_file()
        resume = run_dir.is_dir() and not finished
        own = [*(method_extra or {}).get((spec.method, spec.source), ()), *extra]
        job = Job(spec, run_dir, train_args(spec, log_dir, steps, own, resume, module), resume=resume)
        if finished:
            job.status, job.note = SKIPPED, "final.json exists"
        jobs.append(job)
    return jobs


def lockstep_groups(jobs: list[Job], size: int, log_dir: Path, steps: int | None, extra: Sequence[str],
                    sample_threads: int | None = None,
                    method_extra: Mapping[tuple[str, str | None], Sequence[str]] | None = None) -> None:
    """Merge pending jobs into lock-step groups of at most ``size`` runs (in place).

    Runs can share a group when their networks have one shape: the same method (and source) and games with the
    same number of actions (Alien and Jamesbond: 18; Gopher: 8).  Hub and kflow runs stay single.  The first job
    of a group leads it: its command is ``-m rlzoo_transfer.lockstep --runs ... --resume`` and its ``train.log``
    holds the group's output.  ``sample_threads`` goes to the groups' ``lockstep --sample-threads`` only (train
    has no such option, so the runs left single never see it); ``method_extra`` as in :func:`plan`.
    """
    from rlzoo_transfer.games import action_meanings
    from rlzoo_transfer.rl.registry import get_method

    buckets: dict[tuple, list[Job]] = {}
    n_actions: dict[str, int] = {}
    for job in jobs:
        if job.status != PENDING or not get_method(job.spec.method).lockstep:
            continue
        if job.spec.game not in n_actions:
            n_actions[job.spec.game] = len(action_meanings(job.spec.game))
        buckets.setdefault((job.spec.method, job.spec.source, n_actions[job.spec.game]), []).append(job)
    for bucket in buckets.values():
        for i in range(0, len(bucket), size):
            chunk = bucket[i:i + size]
            if len(chunk) == 1:
                continue
            lead = chunk[0]
            runs = [":".join([j.spec.game, j.spec.method, *([j.spec.source] if j.spec.source else []),
                              str(j.spec.seed)]) for j in chunk]
            lead.args = ["-m", "rlzoo_transfer.lockstep", "--runs", *runs, "--log-dir", str(log_dir),
                         *(["--steps", str(steps)] if steps is not None else []), "--resume",
                         *(["--sample-threads", str(sample_threads)] if sample_threads is not None else []),
                         *(method_extra or {}).get((lead.spec.method, lead.spec.source), ()), *extra]
            lead.members = chunk
            for j in chunk[1:]:
                j.led, j.note = True, f"lock-step with {lead.spec.name}"


def last_eval_step(run_dir: Path) -> int | None:
    """Step of the last complete row of ``run_dir/evaluations.csv``; None when there is none yet."""
    path = run_dir / "evaluations.csv"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines[1:]):
        head = line.split(",", 1)[0].strip()
        try:
            return int(float(head))
        except ValueError:
            continue
    return None


# ------------------------------------------------------------------------------------------- execution


def _finish(job: Job, rc: int) -> None:
    """Record a run's end: done when it exited 0 and wrote ``final.json``."""
    job.returncode, job.ended = rc, time.monotonic()
    job.last_step = last_eval_step(job.run_dir)
    if rc == 0 and (job.run_dir / "final.json").is_file():
        job.status = DONE
    else:
        job.status = FAILED
        job.note = f"exit {rc}" if rc != 0 else "exit 0 but no final.json"


def _elapsed(job: Job) -> str:
    """``m:ss`` since the run started, blank before."""
    if job.started is None:
        return ""
    secs = int((job.ended or time.monotonic()) - job.started)
    return f"{secs // 60}:{secs % 60:02d}"


def render_table(jobs: Sequence[Job], title: str = "sweep"):
    """rich Table of the jobs (running and failed first): run, status, last evaluation step, elapsed, note."""
    from rich.table import Table

    counts = "  ".join(f"{s}: {n}" for s in _STYLE if (n := sum(j.status == s for j in jobs)))
    table = Table(title=f"{title}  ({counts})")
    table.add_column("run", no_wrap=True)
    for col in ("status", "last eval step", "elapsed", "note"):
        table.add_column(col)
    for job in sorted(jobs, key=lambda j: _ORDER.index(j.status)):
        step = "" if job.last_step is None else str(job.last_step)
        note = job.note or ("resume" if job.resume and job.status in (PENDING, RUNNING) else "")
        table.add_row(job.spec.name, f"[{_STYLE[job.status]}]{job.status}[/]", step, _elapsed(job), note)
    return table


def execute(jobs: list[Job], backend, parallel: int, live=None, poll: float = 0.2, echo=None) -> None:
    """Run the pending jobs, at most ``parallel`` at a time, refreshing ``live`` (a rich Live) while waiting.

    :param echo: optional ``callable(str)`` told of each start and end (plain logging without a live table)
    """
    queue = [j for j in jobs if j.status == PENDING and not j.led]
    running: dict[int, Job] = {}
    try:
        while queue or running:
            while queue and len(running) < parallel:
                job = queue.pop(0)
                for member in job.group:
                    member.status, member.started = RUNNING, time.monotonic()
                running[backend.submit(job)] = job
                if echo:
                    echo(f"start {job.spec.name}: {shlex.join(job.command())}")
            for handle, rc in backend.wait(list(running), timeout=poll):
                job = running.pop(handle)
                for member in job.group:
                    _finish(member, rc)
                    if echo:
                        echo(f"{member.status} {member.spec.name} ({member.note or 'ok'}, {_elapsed(member)})")
            for job in running.values():
                for member in job.group:
                    member.last_step = last_eval_step(member.run_dir)
            if live is not None:
                live.update(render_table(jobs))
    except KeyboardInterrupt:
        backend.cancel()
        for job in running.values():
            for member in job.group:
                member.status, member.note = FAILED, "interrupted"
        raise


def summary(jobs: Sequence[Job]) -> str:
    """Counts per status and one line per failed run with its log."""
    counts = ", ".join(f"{sum(j.status == s for j in jobs)} {s}" for s in (DONE, SKIPPED, FAILED, PENDING)
                       if any(j.status == s for j in jobs))
    lines = [f"sweep: {len(jobs)} runs: {counts}"]
    lines += [f"  FAILED {j.spec.name}: {j.note}; log: {j.log_path}" for j in jobs if j.status == FAILED]
    return "\n".join(lines)


def dry_run_text(jobs: Sequence[Job], threads: str | None = None) -> str:
    """The commands the sweep would run, one per line, skipped runs commented; ``threads`` (a local sweep's
    ``OMP_NUM_THREADS`` per run) prefixes each, so that a line run by hand trains as the sweep's run would."""
    prefix = f"OMP_NUM_THREADS={shlex.quote(threads)} " if threads is not None else ""
    lines = []
    for job in jobs:
        if job.status == SKIPPED:
            lines.append(f"# skip {job.spec.name}: {job.note}")
        elif job.led:
            lines.append(f"# {job.spec.name}: {job.note}")
        else:
            lines.append(f"{prefix}{shlex.join(job.command())} >> {shlex.quote(str(job.log_path))} 2>&1")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """Command-line arguments of ``python -m rlzoo_transfer.sweep`` (train's extra arguments go after ``--``)."""
    p = argparse.ArgumentParser(prog="python -m rlzoo_transfer.sweep",
                                description="Run games x methods x seeds of rlzoo_transfer.train; "
                                            "arguments after -- are passed to every train run.")
    p.add_argument("--games", nargs="+", help="games, e.g. Alien Gopher Jamesbond")
    p.add_argument("--methods", nargs="+",
                   help="methods, e.g. scratch zoo hub finetune:Seaquest "
                        "(NAME:SOURCE or the folder name NAME-SOURCE -> --method NAME --source SOURCE)")
    p.add_argument("--seeds", nargs="+", type=seed_arg, help="seeds, e.g. 0 1 2 3 4")
    p.add_argument("--confirm", type=Path, default=None, metavar="YML",
                   help="run the runs of a pre-registered test (python -m rlzoo_transfer.confirm register) instead "
                        "of --games/--methods/--seeds; refused until the registration is committed")
    p.add_argument("--steps", type=int, default=None, help="agent steps per run (default: train's default)")
    p.add_argument("--log-dir", type=Path, default=Path("runs"), help="run root (default: runs)")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs at a time (default: max(1, cpu_count // 2) locally, "
                        "cluster CPUs / --cpus-per-run on Ray)")
    p.add_argument("--backend", choices=("local", "ray"), default="local", help="where to run (default: local)")
    p.add_argument("--address", default=None, help="Ray cluster address, e.g. auto or ray://host:10001 (ray backend)")
    p.add_argument("--cpus-per-run", type=float, default=1, help="CPUs reserved per Ray task (default: 1)")
    p.add_argument("--gpus-per-run", type=float, default=0, help="GPUs reserved per Ray task (default: 0)")
    p.add_argument("--lockstep", type=int, default=0, metavar="K",
                   help="train up to K compatible runs (same method, same number of actions) in one process, "
                        "in lock-step (python -m rlzoo_transfer.lockstep); hub and kflow runs stay single")
    p.add_argument("--sample-threads", type=int, default=None, metavar="N",
                   help="with --lockstep: threads that sample the group's replay buffers "
                        "(lockstep --sample-threads; default: lockstep's)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.add_argument("--no-live", action="store_true", help="plain log lines instead of the live table")
    p.add_argument("--train-module", default="rlzoo_transfer.train", help=argparse.SUPPRESS)
    return p


def split_extra(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split ``argv`` at the first ``--``: (sweep arguments, arguments passed through to train)."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and check the sweep's arguments; ``args.extra`` holds train's pass-through arguments."""
    parser = build_parser()
    own, extra = split_extra(argv)
    args = parser.parse_args(own)
    args.extra, args.method_extra = extra, {}
    check_outputs(parser, args, folders=("log_dir",))   # a dry run too: it shows what a real run would do
    if args.confirm is not None:
        take_registration(args, parser)
    elif not (args.games and args.methods and args.seeds):
        parser.error("give --games, --methods and --seeds (or --confirm YML)")
    if args.jobs is not None and args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if args.address and args.backend != "ray":
        parser.error("--address needs --backend ray")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.lockstep < 0:
        parser.error("--lockstep must be >= 0")
    if args.sample_threads is not None:
        if args.sample_threads < 1:
            parser.error(f"--sample-threads must be a positive number of threads, got {args.sample_threads}")
        if args.lockstep < 2:
            parser.error("--sample-threads needs --lockstep K with K >= 2 (single runs have no sampling threads)")
    from rlzoo_transfer.rl.registry import UnknownMethodError, get_method

    for text in args.methods:
        try:
            name, source = parse_method(text)
            method = get_method(name)
        except (SweepError, UnknownMethodError) as err:
            parser.error(str(err))
        if method.needs_source and not source:
            parser.error(f"method {name} needs a source: write it as {name}:SOURCE (e.g. {name}:Seaquest)")
        if source and not method.needs_source:
            parser.error(f"method {name} takes no source ({text!r}); only finetune does")
    if args.train_module == "rlzoo_transfer.train":
        check_train_arguments(parser, args.extra, args.methods, args.method_extra)
    return args


#: train options the sweep sets itself, refused after ``--`` (train would take the last one given, and the runs would
#: then not be the ones the sweep plans, skips, resumes and reports): option dest -> (option, what to use instead).
SWEEP_OWNED = {
    "game": ("--game", "use the sweep's --games"),
    "method": ("--method", "use the sweep's --methods"),
    "source": ("--source", "use the sweep's --methods NAME:SOURCE (e.g. finetune:Seaquest)"),
    "seed": ("--seed", "use the sweep's --seeds"),
    "log_dir": ("--log-dir", "use the sweep's --log-dir (where it looks for the runs)"),
    "steps": ("--steps", "use the sweep's --steps"),
    "resume": ("--resume", "the sweep resumes each interrupted run (a folder without final.json) by itself"),
}


def train_options(prog: str, unset: Sequence[str] = ()) -> argparse.ArgumentParser:
    """train's options (abbreviations resolve as train resolves them), those of :data:`SWEEP_OWNED` and the dests
    ``unset`` defaulting to None so that giving one shows."""
    from rlzoo_transfer.train import add_run_options

    own = argparse.ArgumentParser(prog=prog, add_help=False)
    for flag in ("--game", "--method", "--source", "--seed"):
        own.add_argument(flag)
    add_run_options(own)
    own.set_defaults(**dict.fromkeys([*SWEEP_OWNED, *unset]))
    return own


def run_overrides(arguments: Sequence[str], prog: str = "train") -> dict:
    """The ``-p`` overrides of train ``arguments`` (``config.parse_overrides``; raises its ConfigError)."""
    from rlzoo_transfer.config import parse_overrides

    return parse_overrides(train_options(prog).parse_args(arguments).hyperparams)


def check_train_arguments(parser: argparse.ArgumentParser, extra: Sequence[str], methods: Sequence[str],
                          method_extra: Mapping[tuple[str, str | None], Sequence[str]] | None = None) -> None:
    """``parser.error`` (exit 2) for train arguments after ``--`` that every run would reject - an unknown option, one
    the sweep sets itself (:data:`SWEEP_OWNED`), a bad ``-p`` key or value for one of ``methods`` - before the first
    run starts: a sweep of 90 runs otherwise starts 90 processes that each fail into their own train.log (the zoo
    sources: :func:`check_pending_sources`, once the plan knows which runs are pending).  ``method_extra``: see
    :func:`plan`."""
    from rlzoo_transfer.config import ConfigError, load_config
    from rlzoo_transfer.rl.registry import get_method

    prog = f"{parser.prog} (train arguments after --)"
    given = train_options(prog).parse_args(extra)
    for dest, (flag, advice) in SWEEP_OWNED.items():
        if getattr(given, dest) is not None:
            parser.error(f"after --: {flag} is set by the sweep itself: {advice}")
    for text in dict.fromkeys(methods):
        name, source = parse_method(text)
        method = get_method(name)
        try:
            overrides = run_overrides([*(method_extra or {}).get((name, source), ()), *extra], prog)
            method.check_pins(overrides)
            load_config(method.config_file, overrides)
        except ConfigError as err:
            parser.error(f"after --: {err} (method {name})")


def check_pending_sources(jobs: Sequence[Job], extra: Sequence[str],
                          method_extra: Mapping[tuple[str, str | None], Sequence[str]] | None = None) -> None:
    """SweepError naming the method whose pending runs start from a source missing from its zoo
    (:func:`check_sources`); methods whose runs are all finished are not checked (a re-run of a completed sweep
    whose zoo has moved skips them all).  The ``-p`` values were judged by :func:`check_train_arguments`."""
    from rlzoo_transfer.config import load_config
    from rlzoo_transfer.rl.registry import get_method

    for name, source in dict.fromkeys((j.spec.method, j.spec.source) for j in jobs if j.status == PENDING):
        method = get_method(name)
        config = load_config(method.config_file, run_overrides([*(method_extra or {}).get((name, source), ()),
                                                                *extra]))
        try:
            check_sources(method, source, config)
        except SweepError as err:
            raise SweepError(f"method {name}{':' + source if source else ''}: {err}") from None


def check_sources(method, source: str | None, config: dict) -> None:
    """SweepError unless every zoo source ``method`` starts from (finetune's ``source``, the ``sources`` setting of
    the others) is listed in its zoo's ``zoo.yml`` (``-p zoo_dir``, default ``pretrain/``), read without torch: train
    refuses such a source only once its run has started."""
    names = method.sources(source, config)
    if not method.from_zoo:
        return
    if not names:
        raise SweepError("no sources named: set -p sources=A,B to sources listed in the zoo's zoo.yml")
    zoo_dir = Path(config.get("zoo_dir") or DEFAULT_ZOO)
    listed = zoo_source_names(zoo_dir)
    missing = [n for n in names if n not in listed]
    if missing:
        raise SweepError(f"source {missing[0]!r} is not in {zoo_dir / 'zoo.yml'} (it has {', '.join(listed)})")


def zoo_source_names(zoo_dir: Path) -> list[str]:
    """The source names of ``zoo_dir/zoo.yml`` (``manifest.read_manifest``, torch-free).

    :raises SweepError: no readable manifest listing sources, with its message
    """
    try:
        return list(read_manifest(zoo_dir))
    except ZooError as err:
        raise SweepError(str(err)) from None


#: The observation train's networks are built for (envs.py: 4 stacked 84 x 84 frames); only its shape is read.
OBSERVATION = SimpleNamespace(shape=(4, 84, 84))


def check_networks(jobs: Sequence[Job], extra: Sequence[str],
                   method_extra: Mapping[tuple[str, str | None], Sequence[str]] | None = None) -> None:
    """SweepError for a ``-p`` value a pending run's network would reject (hub's ``k`` above its number of sources,
    zoo's ``gate_norm=foo``, a ``hidden`` the zoo's sources do not have): the methods check those values only when
    they build the network, so each (game, method, source) whose ``-p`` sets a network setting is built once here,
    as train builds it.  That needs torch, which planning loads for nothing else; without such a ``-p`` the values
    are the method's shipped ones, already judged by ``load_config`` and :func:`check_sources`."""
    seen = set()
    for job in jobs:
        key = (job.spec.game, job.spec.method, job.spec.source)
        if job.status == PENDING and key not in seen:
            seen.add(key)
            build_network(job.spec, run_overrides([*(method_extra or {}).get(key[1:], ()), *extra]))


def build_network(spec: RunSpec, overrides: dict) -> None:
    """Build ``spec``'s network with ``overrides`` as ``run.build_model`` does (``Method.policy_kwargs``, the same
    message), when they set one of its settings (``config.NETWORK_KEYS`` or the method's own); on a machine without
    torch, nothing (the runs check).

    :raises SweepError: the zoo or the network rejects the settings
    """
    from rlzoo_transfer.config import NETWORK_KEYS, load_config, split_config
    from rlzoo_transfer.rl.registry import get_method

    method = get_method(spec.method)
    config = load_config(method.config_file, overrides)
    if not set(overrides) & {*NETWORK_KEYS, *split_config(config)[2]["method"]}:
        return
    try:
        from rlzoo_transfer.games import action_meanings

        policy = method.policy_kwargs(spec.game, spec.source, config)
    except ImportError:
        return
    try:
        policy["net_builder"](OBSERVATION, len(action_meanings(spec.game)), n_atoms=policy["n_atoms"],
                              **policy["net_kwargs"])
    except ZooError as err:
        raise SweepError(f"{spec.game}/{spec.folder}: {err}") from None
    except (ValueError, TypeError) as err:
        files = "agents/der.yml" + (f" + agents/{method.config_file}.yml" if method.config_file else "")
        raise SweepError(f"{spec.game}/{spec.folder}: --method {spec.method} cannot be built with these settings: "
                         f"{err} (check the -p overrides and {files})") from None


#: What a registration's protocol fixes (``confirm.PROTOCOL_KEYS``) -> the train option that sets it; ``-p`` sets
#: its hyperparameters.  With ``--confirm`` the sweep passes them itself, and refuses them after ``--``.
PROTOCOL_OPTIONS = {"steps": "--steps", "eval_freq": "--eval-freq", "eval_episodes": "--eval-episodes",
                    "final_eval_episodes": "--final-eval-episodes", "hyperparams": "-p"}
#: Protocol settings train has no option for, and the value its runs record.
TRAIN_FIXED = {"n_envs": 1}


def take_registration(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Fill ``args.games / methods / seeds`` from the registration ``args.confirm``, and ``args.method_extra`` with
    each arm's registered protocol as train arguments (:func:`registered_arguments`).

    Refused (``parser.error``, exit 2): --games / --methods / --seeds given too, --steps or a protocol option after
    ``--`` (the runs would be deviations), an unreadable registration, a protocol this code cannot run, or a
    registration that HEAD does not contain (commit it first: each run records HEAD, and a run made at a commit
    without the registration counts as a deviation).  Where git cannot tell (no ``.git``), a note says so and the
    sweep goes on.
    """
    from rlzoo_transfer.confirm import ConfirmError, load_registration
    from rlzoo_transfer.provenance import file_in_commit, git_head

    if args.games or args.methods or args.seeds:
        parser.error("--confirm takes the game, methods and seeds from the registration: drop --games, --methods "
                     "and --seeds")
    given = train_options(f"{parser.prog} (train arguments after --)", PROTOCOL_OPTIONS).parse_args(args.extra)
    changing = [flag for dest, flag in PROTOCOL_OPTIONS.items() if getattr(given, dest) is not None]
    if args.steps is not None or changing:
        parser.error(f"--confirm runs the registered protocol: {' '.join(changing) or '--steps'} would change it")
    try:
        reg = load_registration(args.confirm)
        args.method_extra = {parse_method(arm): registered_arguments(reg, arm) for arm in reg.arms}
    except (ConfirmError, SweepError) as err:
        parser.error(f"{args.confirm}: {err}" if isinstance(err, SweepError) else str(err))
    committed = file_in_commit(git_head() or "", args.confirm)
    if committed is False:
        parser.error(f"{args.confirm} is not in the commit checked out (HEAD): commit it before its runs start "
                     f"(git add {args.confirm} && git commit), so that every run records a commit that has it")
    if committed is None:
        print(f"note: git cannot tell whether {args.confirm} is committed here; commit it before the runs start",
              file=sys.stderr)
    args.games, args.methods, args.seeds = [reg.game], [reg.method, reg.baseline], list(reg.seeds)


def registered_arguments(reg, arm: str) -> list[str]:
    """The train arguments that make a run of ``arm`` follow ``reg``'s protocol, as ``confirm check`` judges it
    (``confirm.protocol_differences``): ``--steps``, ``--eval-freq``, ``--eval-episodes``, ``--final-eval-episodes``
    as registered and ``-p key=value`` for each hyperparameter whose registered value is not the method's default.

    :raises SweepError: a protocol this code cannot reproduce - a setting train has no option for at another value
        (``n_envs``), or hyperparameters ``agents/*.yml`` no longer has, or has gained, since the registration
    """
    from rlzoo_transfer.config import ConfigError, load_config, parse_overrides
    from rlzoo_transfer.confirm import IGNORED_HYPERPARAMS, PROTOCOL_KEYS, protocol_differences
    from rlzoo_transfer.rl.registry import UnknownMethodError, get_method

    protocol = reg.protocol[arm] if isinstance(reg.protocol[arm], dict) else {}
    out = []
    for key in PROTOCOL_KEYS:
        value = protocol.get(key)
        if key in PROTOCOL_OPTIONS and type(value) is int:
            out += [PROTOCOL_OPTIONS[key], str(value)]
        elif key in PROTOCOL_OPTIONS or value not in (None, TRAIN_FIXED.get(key)):
            raise SweepError(f"{arm}'s registered {key} {value!r} is not one train can run")
    try:
        method = get_method(parse_method(arm)[0])
        defaults = method.pin(load_config(method.config_file))
    except (UnknownMethodError, ConfigError) as err:
        raise SweepError(f"arm {arm}: {err}") from None
    registered = {k: v for k, v in (protocol.get("hyperparams") or {}).items() if k not in IGNORED_HYPERPARAMS}
    overrides = [override_text(k, v) for k, v in registered.items() if k in defaults and v != defaults[k]]
    try:
        resolved = method.pin(load_config(method.config_file, parse_overrides(overrides)))
    except ConfigError as err:
        raise SweepError(f"{arm}'s registered hyperparameters: {err}") from None
    resolved = {k: v for k, v in resolved.items() if k not in IGNORED_HYPERPARAMS}
    differences = protocol_differences({"hyperparams": registered}, {"hyperparams": resolved})
    if differences:
        raise SweepError(f"{arm}'s runs cannot follow the registered hyperparameters with this code (registered -> "
                         f"what a run would record: {'; '.join(differences)}): agents/*.yml has changed since")
    return out + (["-p", *overrides] if overrides else [])


def override_text(key: str, value) -> str:
    """``key=value`` with the value as a YAML scalar, read back as ``value`` by ``config.parse_overrides``."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30).strip()
    return f"{key}={text.removesuffix('...').strip()}"


def local_plan(jobs: int | None) -> tuple[int, int]:
    """``(runs at a time, torch threads per run)`` of a local sweep: ``--jobs`` (default half the cores) and
    :func:`threads_per_run` beside the training processes already running, which it notes on stderr when
    ``OMP_NUM_THREADS`` does not decide."""
    parallel = jobs or max(1, (os.cpu_count() or 2) // 2)
    others = other_training_processes()
    threads = threads_per_run(os.cpu_count() or 1, parallel, len(others))
    if others and "OMP_NUM_THREADS" not in os.environ:
        print(f"note: {len(others)} other training process(es) already running (pids "
              f"{' '.join(map(str, others))}): each run gets {threads} torch thread(s) "
              f"(set OMP_NUM_THREADS to choose)", file=sys.stderr, flush=True)
    return parallel, threads


def _run_with_display(jobs: list[Job], backend, parallel: int, no_live: bool) -> None:
    """:func:`execute` under a rich Live table, or with plain log lines."""
    if no_live:
        execute(jobs, backend, parallel, echo=lambda s: print(s, flush=True))
        return
    from rich.live import Live

    with Live(render_table(jobs), refresh_per_second=2) as live:
        execute(jobs, backend, parallel, live=live)
        live.update(render_table(jobs))
    print()


def _raise_interrupt(signum, frame):
    """SIGTERM handler: stop like Ctrl-C, so that the runs started are terminated too."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 a run failed, 2 bad arguments / no Ray, 130 Ctrl-C)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        jobs = plan(args.games, args.methods, args.seeds, args.log_dir, args.steps, args.extra, args.train_module,
                    args.method_extra)
        if args.train_module == "rlzoo_transfer.train":
            check_pending_sources(jobs, args.extra, args.method_extra)
            check_networks(jobs, args.extra, args.method_extra)
        if args.lockstep > 1:
            lockstep_groups(jobs, args.lockstep, args.log_dir, args.steps, args.extra, args.sample_threads,
                            args.method_extra)
        local = local_plan(args.jobs) if args.backend == "local" else None
        if args.dry_run:
            try:
                threads = None if local is None else os.environ.get("OMP_NUM_THREADS") or str(local[1])
                print(dry_run_text(jobs, threads), flush=True)
            except BrokenPipeError:   # e.g. piped into head
                sys.stdout = open(os.devnull, "w")
            return 0
        if local is None:
            backend = RayBackend(args.address, args.cpus_per_run, args.gpus_per_run)
            parallel = args.jobs or backend.slots()
        else:
            parallel, threads = local
            backend = LocalBackend(threads=threads)
    except (SweepError, BackendError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main_thread else None
    try:
        _run_with_display(jobs, backend, parallel, args.no_live)
    except KeyboardInterrupt:
        print(summary(jobs), file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    print(summary(jobs))
    return 1 if any(j.status == FAILED for j in jobs) else 0


if __name__ == "__main__":
    sys.exit(main())
