"""Run folders as data: find the ``<root>/<Game>/<method>/seed<k>/`` folders that ``python -m rlzoo_transfer.train``
writes and read each into a :class:`Run` (its config, evaluations, final score, gate, pathway and flow logs).

A truncated last CSV row (a run still writing) is dropped; any other unreadable file is a :class:`RunFolderError`
naming it.
"""
from __future__ import annotations

import csv
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from rlzoo_transfer import scores, yamlfile
from rlzoo_transfer.rl.registry import pinned

_SEED_DIR = re.compile(r"^seed(\d+)$")


class RunFolderError(Exception):
    """A root that does not exist, or a run file that cannot be read."""


class NoRunsError(Exception):
    """No run folder below the given roots."""


@dataclass
class Evaluation:
    """One row of ``evaluations.csv``: evaluation at agent step ``step`` over ``n_episodes`` episodes."""

    step: int
    mean: float
    std: float
    n_episodes: int
    returns: list[float] = field(default_factory=list)


@dataclass
class Run:
    """One run folder ``<Game>/<method>/seed<k>/`` and what it has written so far.

    :param path: the run folder
    :param game: canonical game name (folder name, canonicalised when the game is known)
    :param method: method folder name, e.g. ``zoo`` or ``finetune-Seaquest``
    :param seed: the ``k`` of ``seed<k>``
    :param config: parsed ``config.yml`` (empty when absent)
    :param evaluations: rows of ``evaluations.csv`` sorted by step
    :param final: parsed ``final.json``; None while the run is incomplete
    :param gates: rows of ``gates.csv`` as ``(step, layer, source, gate)``
    :param pathway: rows of ``pathway.csv`` as ``(step, model, weight)``
    :param flow: rows of ``flow.csv`` as ``(step, point, model, weight)`` (Knowledge Flow runs)
    """

    path: Path
    game: str
    method: str
    seed: int
    config: dict = field(default_factory=dict)
    evaluations: list[Evaluation] = field(default_factory=list)
    final: dict | None = None
    gates: list[tuple] = field(default_factory=list)
    pathway: list[tuple] = field(default_factory=list)
    flow: list[tuple] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """True when the run wrote ``final.json``."""
        return self.final is not None

    @property
    def last_step(self) -> int | None:
        """Step of the last evaluation written, None before the first one."""
        return self.evaluations[-1].step if self.evaluations else None

    @property
    def planned_steps(self) -> int | None:
        """The run's planned total of agent steps (``config.yml`` ``steps``: a ``--resume`` to another total updates
        it; else ``final.json``'s)."""
        steps = self.config.get("steps") or (self.final or {}).get("steps")
        return int(steps) if steps is not None else None

    @property
    def resumes(self) -> list[dict]:
        """``config.yml``'s ``resumes`` (step, commit, ... of each ``--resume``); empty for a run never resumed."""
        return [r for r in self.config.get("resumes") or [] if isinstance(r, dict)]

    @property
    def commits(self) -> list[str]:
        """Every commit the run was trained at: ``config.yml``'s ``commit`` (its start), then each ``resumes``
        entry's that differs (a run stopped and resumed after a ``git pull`` spans both); empty when unrecorded."""
        found = [self.config.get("commit")] + [r.get("commit") for r in self.resumes]
        return list(dict.fromkeys(str(c) for c in found if c))

    @property
    def final_mean(self) -> float:
        """Mean return of the final evaluation (``final.json``); NaN for incomplete runs."""
        return float(self.final["mean"]) if self.final is not None else float("nan")




def find_run_dirs(root: Path) -> list[Path]:
    """All folders named ``seed<k>`` at or below ``root`` (not descending into them), sorted.

    :raises RunFolderError: ``root`` does not exist or is not a folder
    """
    root = Path(root)
    if not root.is_dir():
        raise RunFolderError(f"no such run folder: {root}")
    if _SEED_DIR.match(root.resolve().name):
        return [root]
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        for name in list(dirnames):
            if _SEED_DIR.match(name):
                found.append(Path(dirpath) / name)
                dirnames.remove(name)
    return sorted(found)


def _read_csv_rows(path: Path, columns: Sequence[str]) -> list[dict]:
    """Rows of a CSV file with the given columns; a truncated last row (run still writing) is dropped.

    :raises RunFolderError: the header lacks one of ``columns``
    """
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise RunFolderError(f"{path}: missing column(s) {', '.join(missing)}")
        return [row for row in reader if all(row.get(c) not in (None, "") for c in columns)]


def read_evaluations(path: Path) -> list[Evaluation]:
    """Parse ``evaluations.csv`` (``step,mean,std,n_episodes,returns``) sorted by step."""
    rows = _read_csv_rows(path, ("step", "mean"))
    try:
        evals = [
            Evaluation(
                step=int(float(r["step"])),
                mean=float(r["mean"]),
                std=float(r.get("std") or 0.0),
                n_episodes=int(float(r.get("n_episodes") or 0)),
                returns=[float(v) for v in (r.get("returns") or "").split()],
            )
            for r in rows
        ]
    except ValueError as err:
        raise RunFolderError(f"{path}: {err}") from err
    return sorted(evals, key=lambda e: e.step)


def _read_stat_rows(path: Path, keys: Sequence[str], value: str) -> list[tuple]:
    """Rows ``(step, *keys, value)`` of ``gates.csv`` / ``pathway.csv`` / ``flow.csv``; empty when absent."""
    rows = _read_csv_rows(path, ("step", *keys, value))
    try:
        return [(int(float(r["step"])), *(r[k] for k in keys), float(r[value])) for r in rows]
    except ValueError as err:
        raise RunFolderError(f"{path}: {err}") from err


def _read_yaml(path: Path) -> dict:
    """Parsed YAML mapping, ``{}`` when the file is absent."""
    if not path.is_file():
        return {}
    data = yamlfile.load(path, RunFolderError)
    if data is not None and not isinstance(data, dict):
        raise RunFolderError(f"{path}: expected a YAML mapping")
    return data or {}


def _read_final(path: Path) -> dict | None:
    """Parsed ``final.json`` (must hold ``mean``), None when absent."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        float(data["mean"])
    except (ValueError, KeyError, TypeError) as err:
        raise RunFolderError(f"{path}: not a valid final.json ({err!r})") from err
    return data


def load_run(path: Path) -> Run:
    """Read one run folder ``.../<Game>/<method>/seed<k>/``; game and method come from the folder names."""
    path = Path(path)
    match = _SEED_DIR.match(path.resolve().name)
    if match is None:
        raise RunFolderError(f"not a run folder (expected seed<k>): {path}")
    resolved = path.resolve()
    return Run(
        path=path,
        game=scores.maybe_canonical_game(resolved.parent.parent.name),
        method=resolved.parent.name,
        seed=int(match.group(1)),
        config=_read_yaml(path / "config.yml"),
        evaluations=read_evaluations(path / "evaluations.csv"),
        final=_read_final(path / "final.json"),
        gates=_read_stat_rows(path / "gates.csv", ("layer", "source"), "gate"),
        pathway=_read_stat_rows(path / "pathway.csv", ("model",), "weight"),
        flow=_read_stat_rows(path / "flow.csv", ("point", "model"), "weight"),
    )


def _progress(run: Run) -> tuple[bool, int]:
    """How far a run has got: complete first, then the step of its last evaluation."""
    return (run.complete, run.last_step if run.last_step is not None else -1)


def load_runs(roots: Iterable[Path]) -> list[Run]:
    """Every run below ``roots``; a (game, method, seed) found twice is kept once, with a warning.

    Of two copies the one further along is kept (a complete run over an incomplete one, then the later last
    evaluation), so a published incomplete copy (``eval/runs``) never hides the finished run in ``runs/``,
    whichever root is listed first; between copies equally far along, the first listed wins.
    """
    kept: dict[tuple, Run] = {}
    for root in roots:
        for run_dir in find_run_dirs(Path(root)):
            run = load_run(run_dir)
            key = (run.game, run.method, run.seed)
            other = kept.get(key)
            if other is None:
                kept[key] = run
            elif _progress(run) > _progress(other):
                warnings.warn(f"{other.path}: duplicate of {run_dir}, which is further along; ignored")
                kept[key] = run
            else:
                warnings.warn(f"{run_dir}: duplicate of {other.path}, ignored")
    return list(kept.values())


PROTOCOL_KEYS = ("steps", "eval_freq", "eval_episodes", "final_eval_episodes", "n_envs")
_NOT_PROTOCOL = frozenset({"compile", "zoo_dir"})  # how a run was computed or where its zoo lay, not what it ran


def protocol_differences(runs: Sequence[Run]) -> list[str]:
    """One line per (game, method) whose runs were not made the same way, naming the settings that differ.

    Compared: the evaluation protocol (``config.yml``'s ``steps``, ``eval_freq``, ``eval_episodes``,
    ``final_eval_episodes``, ``n_envs``) and every hyperparameter, each where all of the group's configs record it (a
    key added after some runs were made is not a difference; ``compile`` and ``zoo_dir`` are not compared; a config
    whose ``hyperparams`` is not a mapping is left out).  ``curves`` averages a group's runs as one method, so such
    a group mixes experiments.
    """
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        if run.config and isinstance(run.config.get("hyperparams") or {}, dict):   # else a hand edit: not judged
            groups.setdefault((run.game, run.method), []).append(run)
    lines = []
    for (game, method), group in sorted(groups.items()):
        settings = [{**{k: r.config[k] for k in PROTOCOL_KEYS if k in r.config},
                     **pinned(r.config.get("method"), r.config.get("hyperparams") or {})} for r in group]
        shared = set.intersection(*(set(s) for s in settings)) - _NOT_PROTOCOL
        differ = sorted(k for k in shared if len({repr(s[k]) for s in settings}) > 1)
        if differ:
            values = "; ".join(f"{k}: {', '.join(sorted({str(s[k]) for s in settings}))}" for k in differ)
            lines.append(f"{game}/{method}: its {len(group)} runs differ in {values}")
    return lines
