"""What a sweep runs: one :class:`Job` per game x method x seed, its ``train`` command, whether it is skipped
(``final.json``) or resumed (a folder without it), and lock-step groups of compatible runs.

Torch-free (the RL registry and the game list are imported where needed), so a sweep plans on a driver machine
without the RL stack; :mod:`rlzoo_transfer.sweep` runs the plan.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from rlzoo_transfer.scores import maybe_canonical_game

PENDING, RUNNING, DONE, FAILED, SKIPPED = "pending", "running", "done", "failed", "skipped"


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


def method_arguments(method: str, source: str | None, extra: Sequence[str],
                     method_extra: Mapping[tuple[str, str | None], Sequence[str]] | None = None) -> list[str]:
    """The train arguments every run of ``(method, source)`` gets: its own from ``method_extra`` (``--confirm``: the
    arm's registered protocol) before the sweep's ``extra``."""
    return [*(method_extra or {}).get((method, source), ()), *extra]


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
        own = method_arguments(spec.method, spec.source, extra, method_extra)
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
                         *method_arguments(lead.spec.method, lead.spec.source, extra, method_extra)]
            lead.members = chunk
            for j in chunk[1:]:
                j.led, j.note = True, f"lock-step with {lead.spec.name}"
