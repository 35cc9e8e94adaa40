"""Evaluation curves, final scores and aggregate statistics of a set of runs.

    python -m rlzoo_transfer.curves runs/ --out eval/ [--reps 2000] [--seed 0] [--band std|ci] [--baseline scratch]
                                   [--readme README.md]

Reads every run folder ``<root>/<Game>/<method>/seed<k>/`` below the given roots (the layout written by
``python -m rlzoo_transfer.train``) and writes into ``--out``:

* ``curves_<Game>.png``: mean evaluation return against agent steps, one line per method; the line is the
  mean over the *complete* seeds, the shaded band is +- one sample standard deviation (``ddof=1``) across those
  seeds (``--band std``, default) or the 95 % Student-t confidence interval of that mean (``--band ci``:
  ``mean +- t(0.975, n-1) * std / sqrt(n)``).  Incomplete runs are drawn one dashed line each and are never part of
  the mean or band.  Published DER and SPR scores (:mod:`rlzoo_transfer.scores`) are marked at the last step.
* ``curves_all.png`` (two or more games): the same panels side by side, the papers' layout.
* ``curves.csv``: the curves of the plots, ``game,method,step,mean,std,n_seeds`` (complete runs only).
* ``runs.csv``: one row per run folder (complete or not) with its final score and last evaluated step.
* ``gates_<Game>_<method>.png`` / ``pathway_<Game>_<method>.png``: mean AdaAgg gate per layer and source
  (``gates.csv``) or mean Hub-Pathway weight per source model (``pathway.csv``) against steps, averaged over every
  run of that game and method that logged them (these are diagnostics, so incomplete runs count too).
* ``report.md``: final scores (mean +- std over seeds of the ``final.json`` means), human-normalised scores,
  game-balanced IQM and mean of HNS with 95 % stratified bootstrap intervals, probability of improvement over the baseline, published
  reference rows, the transfer measures of :func:`transfer_measures` (jump-start, area under the curve), the
  plots, how many seeds a difference needs (:func:`report_seeds_section`), and a table of incomplete runs.  Only
  runs with ``final.json`` enter final scores.
* with ``--readme MD``: the compact results table of :mod:`rlzoo_transfer.results_table`, spliced between the
  markers of that markdown file (the rest of it untouched).

Every file is written atomically (`rlzoo_transfer.atomic`): an interrupted run of the command leaves the previous
version in place, never half a file.

Exit status: 0 on success, 1 when no run folder is found, 2 for a missing root, an unreadable run file or a
--readme file without its markers.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
import warnings
from collections import defaultdict
from functools import partial
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import yaml

from rlzoo_transfer import scores
from rlzoo_transfer.atomic import replacing, write_atomic
from rlzoo_transfer.config import seed_arg

_SEED_DIR = re.compile(r"^seed(\d+)$")


class RunFolderError(Exception):
    """A root that does not exist, or a run file that cannot be read."""


class NoRunsError(Exception):
    """No run folder below the given roots."""


class BaselineError(Exception):
    """``--baseline`` names no method of the runs."""


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
        """Total agent steps the run was started for (``config.yml`` ``steps``, else ``final.json``)."""
        steps = self.config.get("steps") or (self.final or {}).get("steps")
        return int(steps) if steps is not None else None

    @property
    def final_mean(self) -> float:
        """Mean return of the final evaluation (``final.json``); NaN for incomplete runs."""
        return float(self.final["mean"]) if self.final is not None else float("nan")


# ----------------------------------------------------------------------------------------------- reading


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
    """Rows ``(step, *keys, value)`` of ``gates.csv`` / ``pathway.csv``; empty when the file is absent."""
    rows = _read_csv_rows(path, ("step", *keys, value))
    try:
        return [(int(float(r["step"])), *(r[k] for k in keys), float(r[value])) for r in rows]
    except ValueError as err:
        raise RunFolderError(f"{path}: {err}") from err


def _read_yaml(path: Path) -> dict:
    """Parsed YAML mapping, ``{}`` when the file is absent."""
    if not path.is_file():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RunFolderError(f"{path}: not valid YAML ({err})") from err
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
    )


def load_runs(roots: Iterable[Path]) -> list[Run]:
    """Every run below ``roots``; a (game, method, seed) found twice is kept once, with a warning."""
    runs, seen = [], {}
    for root in roots:
        for run_dir in find_run_dirs(Path(root)):
            run = load_run(run_dir)
            key = (run.game, run.method, run.seed)
            if key in seen:
                warnings.warn(f"{run_dir}: duplicate of {seen[key]}, ignored")
                continue
            seen[key] = run_dir
            runs.append(run)
    return runs


# ------------------------------------------------------------------------------------------ aggregation


def method_order(methods: Iterable[str], baseline: str = "scratch") -> list[str]:
    """Methods sorted by name with the baseline first."""
    return sorted(set(methods), key=lambda m: (m != baseline, m))


def games_of(runs: Iterable[Run]) -> list[str]:
    """Games in the order of :data:`scores.GAMES`, unknown games after them by name."""
    known = list(scores.GAMES)
    return sorted({r.game for r in runs}, key=lambda g: (known.index(g) if g in known else len(known), g))


def aggregate_curves(runs: Iterable[Run]) -> list[dict]:
    """Across-seed curves of complete runs: rows ``game, method, step, mean, std, n_seeds``.

    At each step, the statistics use the seeds that evaluated at that step; ``std`` is the sample standard
    deviation (``ddof=1``, 0 for one seed) of the seeds' evaluation means.
    """
    values = defaultdict(list)
    for run in runs:
        if run.complete:
            for ev in run.evaluations:
                values[(run.game, run.method, ev.step)].append(ev.mean)
    rows = []
    for (game, method, step), vals in values.items():
        mean, std, n = scores.mean_std(vals)
        rows.append(dict(game=game, method=method, step=step, mean=mean, std=std, n_seeds=n))
    return sorted(rows, key=lambda r: (r["game"], r["method"], r["step"]))


def final_scores(runs: Iterable[Run]) -> dict[tuple[str, str], list[float]]:
    """(game, method) -> ``final.json`` means of its complete runs, in seed order."""
    table = defaultdict(list)
    for run in sorted(runs, key=lambda r: r.seed):
        if run.complete:
            table[(run.game, run.method)].append(run.final_mean)
    return dict(table)


def hns_groups(finals: dict[tuple[str, str], list[float]], method: str) -> dict[str, np.ndarray]:
    """Game -> HNS of the method's complete runs, for games with known random / human scores."""
    return {
        game: scores.human_normalized(vals, game)
        for (game, m), vals in finals.items()
        if m == method and game in scores.GAMES
    }


def aggregate_hns(finals: dict, method: str, reps: int = 2000, seed: int = 0,
                  games: Iterable[str] | None = None) -> dict | None:
    """IQM and mean of the method's HNS over all runs x games (only ``games`` if given), each with a stratified
    bootstrap 95 % CI.  Games with different numbers of seeds count the same (:func:`scores.aggregate_statistics`).

    :return: ``dict(iqm=(point, low, high), mean=(point, low, high), n_runs, n_games, seeds)``, ``seeds`` the runs
        per game in the games' sorted order; None without data
    """
    groups = hns_groups(finals, method)
    if games is not None:
        keep = set(games)
        groups = {g: v for g, v in groups.items() if g in keep}
    if not groups:
        return None
    data = [groups[g] for g in sorted(groups)]
    seeds = [len(d) for d in data]
    iqm_stat, mean_stat = scores.aggregate_statistics(seeds)
    return dict(
        iqm=scores.stratified_bootstrap_ci(data, statistic=iqm_stat, reps=reps, seed=seed),
        mean=scores.stratified_bootstrap_ci(data, statistic=mean_stat, reps=reps, seed=seed),
        n_runs=int(sum(seeds)),
        n_games=len(data),
        seeds=seeds,
    )


def improvement_over(finals: dict, method: str, baseline: str, reps: int = 2000, seed: int = 0) -> dict | None:
    """Probability of improvement of ``method`` over ``baseline`` on the games both completed, with a 95 % CI.

    :return: ``dict(poi=(point, low, high), games=[...])``; None when they share no game
    """
    games = sorted(g for (g, m) in finals if m == method and (g, baseline) in finals)
    if not games:
        return None
    x = [finals[(g, method)] for g in games]
    y = [finals[(g, baseline)] for g in games]
    return dict(poi=scores.probability_of_improvement_ci(x, y, reps=reps, seed=seed), games=games)


def mean_return_over_training(run: Run) -> float:
    """Trapezoidal area under the run's evaluation curve / the steps it spans (its only evaluation's mean when
    there is one; NaN with none): Taylor & Stone's *total reward*, normalised to a return."""
    if not run.evaluations:
        return float("nan")
    steps = np.array([e.step for e in run.evaluations], dtype=float)
    means = np.array([e.mean for e in run.evaluations], dtype=float)
    width = steps[-1] - steps[0]
    return float(np.sum((means[1:] + means[:-1]) / 2 * np.diff(steps)) / width) if width > 0 else float(means[0])


def transfer_measures(runs: Iterable[Run], baseline: str = "scratch") -> list[dict]:
    """Transfer measures of Taylor & Stone (JMLR 2009, "Transfer learning for RL domains: a survey") per (game,
    method), over complete runs.

    * ``start``: mean over seeds of the first evaluation's mean return (step ``start_step``, 0 for runs of
      ``train``): the *jump-start* is ``start`` minus the baseline's (None when their first steps differ).
    * ``area``: mean over seeds of the run's average return over training, the trapezoidal area under its
      evaluation curve divided by the steps it spans (*total reward*, normalised to a return); compared by
      difference with the baseline's (None when the spans differ).
    * ``final``: mean over seeds of ``final.json`` means (*asymptotic performance* at this budget).

    :return: rows ``game, method, n, start_step, start, area, areas, base_areas, final, d_start, d_area,
        d_final``: ``areas`` per seed, ``base_areas`` the baseline's (None when not comparable); the ``d_*`` are
        differences to the baseline of the same game (None without a complete baseline run)
    """
    groups: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        if run.complete and run.evaluations:
            groups[(run.game, run.method)].append(run)

    def summary(group: list[Run]) -> dict:
        spans = {(r.evaluations[0].step, r.evaluations[-1].step) for r in group}
        areas = [mean_return_over_training(r) for r in group]
        first_steps = {s for s, _ in spans}
        return dict(n=len(group), start_step=first_steps.pop() if len(first_steps) == 1 else None,
                    start=float(np.mean([r.evaluations[0].mean for r in group])), area=float(np.mean(areas)),
                    areas=areas,
                    span=spans.pop() if len(spans) == 1 else None,
                    final=float(np.mean([r.final_mean for r in group])))

    stats = {key: summary(group) for key, group in groups.items()}
    rows = []
    for (game, method), st in sorted(stats.items()):
        base = stats.get((game, baseline))
        same_start = base is not None and st["start_step"] is not None and st["start_step"] == base["start_step"]
        same_span = base is not None and st["span"] is not None and st["span"] == base["span"]
        rows.append(dict(game=game, method=method, n=st["n"], start_step=st["start_step"], start=st["start"],
                         area=st["area"], areas=st["areas"], base_areas=base["areas"] if same_span else None,
                         final=st["final"],
                         d_start=st["start"] - base["start"] if same_start else None,
                         d_area=st["area"] - base["area"] if same_span else None,
                         d_final=st["final"] - base["final"] if base is not None else None))
    return rows


# ---------------------------------------------------------------------------------------------- writing


def _safe(name: str) -> str:
    """File-name-safe version of a game or method name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def write_curves_csv(rows: list[dict], path: Path) -> None:
    """Write the rows of :func:`aggregate_curves` to ``path``."""
    with replacing(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["game", "method", "step", "mean", "std", "n_seeds"])
        writer.writeheader()
        writer.writerows(rows)


def write_runs_csv(runs: list[Run], path: Path) -> None:
    """One row per run: identity, completeness, last step, final mean / std / episodes, folder."""
    fields = ["game", "method", "seed", "complete", "last_step", "planned_steps",
              "final_mean", "final_std", "n_episodes", "path"]
    with replacing(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in sorted(runs, key=lambda r: (r.game, r.method, r.seed)):
            final = r.final or {}
            writer.writerow(dict(game=r.game, method=r.method, seed=r.seed, complete=int(r.complete),
                                 last_step=r.last_step if r.last_step is not None else "",
                                 planned_steps=r.planned_steps or "", final_mean=final.get("mean", ""),
                                 final_std=final.get("std", ""), n_episodes=final.get("n_episodes", ""),
                                 path=str(r.path)))


def _pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(row: dict, band: str) -> float:
    """Half-width of the shaded band: one std, or the Student-t 95 % CI of the mean."""
    if band == "std":
        return row["std"]
    n = row["n_seeds"]
    if n < 2:
        return 0.0
    from scipy import stats

    return float(stats.t.ppf(0.975, n - 1) * row["std"] / math.sqrt(n))


def _draw_game(ax, game: str, rows: list[dict], runs: list[Run], methods: list[str], band: str, colors: list,
               legend_size: int = 8) -> None:
    """One game's curves on ``ax``: a line and band per method (colour fixed by the method's index in
    ``methods``), a dashed line per incomplete run, published marks at the last step."""
    for i, method in enumerate(methods):
        color = colors[i % len(colors)]
        mrows = [r for r in rows if r["method"] == method]
        if mrows:
            steps = np.array([r["step"] for r in mrows])
            mean = np.array([r["mean"] for r in mrows])
            half = np.array([_band(r, band) for r in mrows])
            n_seeds = max(r["n_seeds"] for r in mrows)
            ax.plot(steps, mean, color=color, label=f"{method} (n={n_seeds})")
            ax.fill_between(steps, mean - half, mean + half, color=color, alpha=0.2, linewidth=0)
        partial = [r for r in runs if r.method == method and not r.complete and r.evaluations]
        for j, run in enumerate(partial):
            label = f"{method} incomplete ({len(partial)})" if j == 0 else None
            ax.plot([e.step for e in run.evaluations], [e.mean for e in run.evaluations], color=color,
                    linestyle="--", linewidth=1, marker=".", label=label)
    x_max = max([r.planned_steps or 0 for r in runs] + [r["step"] for r in rows] + [1])
    ref = scores.GAMES.get(game)
    markers = iter("s^Dv")
    for algo in scores.REFERENCE_ALGORITHMS if ref else ():
        if algo in ref.published:
            ax.plot([x_max], [ref.published[algo]], marker=next(markers), color="black", linestyle="none",
                    label=published_label(algo))
    ax.set_xlim(0, x_max * 1.02)
    ax.set_xlabel("agent steps")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=legend_size)


def plot_game(game: str, rows: list[dict], runs: list[Run], methods: list[str], path: Path, band: str) -> None:
    """Curves of one game: a line and band per method, a dashed line per incomplete run, published marks."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _draw_game(ax, game, rows, runs, methods, band, plt.rcParams["axes.prop_cycle"].by_key()["color"])
    ax.set_ylabel("mean evaluation return")
    ax.set_title(f"{game} (band: {'± 1 std' if band == 'std' else '95% CI'} across seeds)")
    fig.tight_layout()
    _save_png(fig, path)


def plot_all_games(games: list[str], rows: list[dict], runs: list[Run], methods: list[str], path: Path,
                   band: str) -> None:
    """The papers' layout: one panel per game side by side, each method in the same colour in every panel."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(games), figsize=(5.2 * len(games), 4.2), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, game in zip(axes[0], games):
        _draw_game(ax, game, [r for r in rows if r["game"] == game], [r for r in runs if r.game == game], methods,
                   band, colors, legend_size=7)
        ax.set_title(game)
    axes[0][0].set_ylabel("mean evaluation return")
    fig.suptitle(f"100k-step evaluation curves (band: {'± 1 std' if band == 'std' else '95% CI'} across seeds)")
    fig.tight_layout()
    _save_png(fig, path)


def _save_png(fig, path: Path) -> None:
    """Save a figure as PNG atomically and close it."""
    try:
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        _pyplot().close(fig)


def _mean_series(rows: Iterable[tuple]) -> dict[tuple, tuple[list[int], list[float]]]:
    """``(step, *key, value)`` rows of several runs -> key -> (steps, mean value per step)."""
    acc = defaultdict(lambda: defaultdict(list))
    for step, *key, value in rows:
        acc[tuple(key)][step].append(value)
    return {k: (sorted(v), [float(np.mean(v[s])) for s in sorted(v)]) for k, v in acc.items()}


def plot_stat(series: dict, title: str, ylabel: str, path: Path) -> None:
    """One line per key of :func:`_mean_series`: color per first key part, line style per second."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    firsts = sorted({k[0] for k in series})
    seconds = sorted({k[-1] for k in series})
    styles = ["-", "--", ":", "-."]
    for key in sorted(series):
        steps, values = series[key]
        ax.plot(steps, values, color=colors[firsts.index(key[0]) % len(colors)],
                linestyle=styles[seconds.index(key[-1]) % len(styles)] if len(key) > 1 else "-",
                label=" / ".join(key), marker="." if len(steps) == 1 else None)
    ax.set_xlabel("agent steps")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    _save_png(fig, path)


def plot_diagnostics(runs: list[Run], out: Path) -> list[tuple[str, str, str, str, int]]:
    """Gate and pathway plots per (game, method) with logged statistics: the mean over its complete runs (an
    unfinished run would enter the mean only for its first steps and bend the lines); over the unfinished ones,
    and titled so, only while none is complete.

    :return: ``(kind, game, method, file name, n_runs)`` per plot written
    """
    written = []
    groups = defaultdict(list)
    for run in runs:
        groups[(run.game, run.method)].append(run)
    for (game, method), group in sorted(groups.items()):
        for kind, attr, ylabel in (("gates", "gates", "mean gate"), ("pathway", "pathway", "mean pathway weight")):
            logged = [r for r in group if getattr(r, attr)]
            if not logged:
                continue
            complete = [r for r in logged if r.complete]
            logged = complete or logged
            which = "complete runs" if complete else "unfinished runs"
            name = f"{kind}_{_safe(game)}_{_safe(method)}.png"
            rows = [row for r in logged for row in getattr(r, attr)]
            plot_stat(_mean_series(rows), f"{game} / {method}: {kind} (mean of {len(logged)} {which})", ylabel,
                      out / name)
            written.append((kind, game, method, name, len(logged)))
    return written


# ---------------------------------------------------------------------------------------------- report


def md_table(header: Sequence[str], rows: Iterable[Sequence]) -> list[str]:
    """Markdown table lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _fmt_ci(triple: tuple[float, float, float], digits: int = 3) -> str:
    """``point [low, high]``."""
    p, lo, hi = triple
    return f"{p:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _fmt_point_only(triple: tuple[float, float, float], digits: int = 3, why: str = "1 seed per game") -> str:
    """``point (<why>: no CI)``: resampling a single seed gives a zero-width interval that would read as
    certainty, so none is shown."""
    return f"{triple[0]:.{digits}f} ({why}: no CI)"


def _poi_has_ci(x_groups: Sequence[Sequence[float]], y_groups: Sequence[Sequence[float]]) -> bool:
    """A probability of improvement gets a bootstrap CI only when both methods have >= 2 seeds on every game: with
    one seed on a side, the interval shows the other side's spread only (e.g. [1, 1] from one lucky run)."""
    return all(len(x) >= 2 and len(y) >= 2 for x, y in zip(x_groups, y_groups))


def _fmt_final(vals: list[float] | None, seeds: str = "n={}") -> str:
    """``mean +- std (n=k)`` of a list of final means (no std for one seed), ``-`` when empty.

    ``seeds`` formats the seed count in the brackets (``"{}"`` gives the README table's ``(3)``)."""
    if not vals:
        return "-"
    mean, std, n = scores.mean_std(vals)
    count = seeds.format(n)
    return f"{mean:.1f} ({count})" if n == 1 else f"{mean:.1f} ± {std:.1f} ({count})"


def _fmt_hns(vals: list[float] | None, game: str) -> str:
    """Mean HNS of a list of final means, ``-`` when empty or the game has no reference scores."""
    if not vals or game not in scores.GAMES:
        return "-"
    return f"{float(np.mean(scores.human_normalized(vals, game))):.3f}"


def reference_rows(games: list[str], fmt) -> list[tuple[str, list[str]]]:
    """``(algorithm, cells)`` of each published reference algorithm (REFERENCE.md): one cell per game,
    ``fmt(score, game)`` or ``-`` where the algorithm has no published score for the game."""
    rows = []
    for algo in scores.REFERENCE_ALGORITHMS:
        cells = []
        for g in games:
            ref = scores.GAMES.get(g)
            cells.append(fmt(ref.published[algo], g) if ref and algo in ref.published else "-")
        rows.append((algo, cells))
    return rows


def published_label(algo: str) -> str:
    """The label of a published reference row or marker, e.g. ``DER (published)``."""
    return f"{algo} (published)"


def report_final_section(finals: dict, games: list[str], methods: list[str]) -> list[str]:
    """Raw final scores and HNS tables, methods x games, with published rows."""
    lines = ["## Final scores", "",
             "Mean ± sample std (ddof=1) over seeds of each complete run's final evaluation mean "
             "(`final.json`); `n` = number of complete seeds. Incomplete runs are excluded (see below).", ""]
    rows = [[m, *(_fmt_final(finals.get((g, m))) for g in games)] for m in methods]
    rows += [[published_label(a), *c] for a, c in reference_rows(games, lambda v, g: f"{v:.1f}")]
    rows += [["random", *(f"{scores.GAMES[g].random:.1f}" if g in scores.GAMES else "-" for g in games)],
             ["human", *(f"{scores.GAMES[g].human:.1f}" if g in scores.GAMES else "-" for g in games)]]
    lines += md_table(["method", *games], rows)
    lines += ["", "## Human-normalised scores", "",
              "HNS = (score − random) / (human − random), mean over complete seeds.", ""]
    rows = [[m, *(_fmt_hns(finals.get((g, m)), g) for g in games)] for m in methods]
    rows += [[published_label(a), *c]
             for a, c in reference_rows(games, lambda v, g: f"{float(scores.human_normalized(v, g)):.3f}")]
    lines += md_table(["method", *games], rows)
    return lines + [""]


def report_aggregate_section(finals: dict, methods: list[str], baseline: str, reps: int, seed: int) -> list[str]:
    """IQM / mean HNS with bootstrap CIs, and probability of improvement over the baseline."""
    lines = ["## Aggregate (human-normalised)", "",
             "IQM and mean of the HNS of all complete runs x games, with every game counting the same: each run "
             "weighs 1 / (games x its game's seeds), so a game with more seeds does not dominate an unfinished "
             "sweep. The mean is then the mean over games of each game's mean; the IQM is the mean of the middle "
             "half of the weighted distribution (runs at a quartile count in part), which with equal seeds per game "
             "and a number of runs divisible by 4 is rliable's `scipy.stats.trim_mean(x, 0.25)`. 95 % stratified "
             f"bootstrap CIs (seeds resampled within each game, {reps} replicates, seed {seed}, percentile "
             "interval), shown only when every game has >= 2 seeds: a game with one seed adds no spread, so "
             "the interval would read as more certain than the data are.", ""]
    header = ["method", "IQM HNS [95% CI]", "mean HNS [95% CI]", "games", "runs", "seeds per game"]

    def table(games: list[str] | None) -> list[list]:
        rows = []
        for m in methods:
            agg = aggregate_hns(finals, m, reps, seed, games)
            if agg:
                if min(agg["seeds"]) >= 2:
                    fmt = _fmt_ci
                else:
                    why = "1 seed per game" if max(agg["seeds"]) == 1 else "a game with 1 seed"
                    fmt = partial(_fmt_point_only, why=why)
                rows.append([m, fmt(agg["iqm"]), fmt(agg["mean"]), agg["n_games"], agg["n_runs"],
                             " / ".join(str(n) for n in agg["seeds"])])
        return rows

    game_sets = {m: set(hns_groups(finals, m)) for m in methods}
    game_sets = {m: g for m, g in game_sets.items() if g}
    if len({frozenset(g) for g in game_sets.values()}) > 1:   # an unfinished sweep: rows over different games
        common = sorted(set.intersection(*game_sets.values()))
        if common:
            lines += [f"Over the games every method below completed ({', '.join(common)}): the comparable rows.", ""]
            lines += md_table(header, table(common)) + [""]
        lines += ["Over each method's own completed games (the games differ between rows, so rows are not "
                  "comparable):", ""]
    rows = table(None)
    lines += md_table(header, rows) if rows else ["No complete run of a game with known random / human scores."]
    lines += ["", f"## Probability of improvement over {baseline}", "",
              f"P(X > Y) of a run of the method beating a run of {baseline} on the same game (ties count 1/2), "
              "averaged over the games both completed; 95 % CI by stratified bootstrap over seeds, shown when both methods have "
              ">= 2 seeds on every game (with one seed on a side it would show only the other side's spread).", ""]
    rows = []
    for m in methods:
        res = None if m == baseline else improvement_over(finals, m, baseline, reps, seed)
        if res:
            ci = _poi_has_ci([finals[(g, m)] for g in res["games"]], [finals[(g, baseline)] for g in res["games"]])
            rows.append([m, _fmt_ci(res["poi"]) if ci else _fmt_point_only(res["poi"], why="a side with 1 seed"),
                         ", ".join(res["games"])])
    lines += md_table(["method", f"P(method > {baseline}) [95% CI]", "games"], rows) if rows else \
        [f"No method shares a completed game with `{baseline}`."]
    return lines + [""]


def report_transfer_section(runs: list[Run], games: list[str], methods: list[str], baseline: str, reps: int = 2000,
                            seed: int = 0) -> list[str]:
    """Jump-start, area under the curve and final score of every method against the baseline, per game."""
    rows = {(r["game"], r["method"]): r for r in transfer_measures(runs, baseline)}

    def cell(value: float, delta: float | None) -> str:
        return f"{value:.1f}" + ("" if delta is None else f" ({delta:+.1f})")

    table = []
    for game in games:
        for m in methods:
            r = rows.get((game, m))
            if r:
                d = (None, None, None) if m == baseline else (r["d_start"], r["d_area"], r["d_final"])
                poi = "-"
                if m != baseline and r["base_areas"] is not None:
                    triple = scores.probability_of_improvement_ci([r["areas"]], [r["base_areas"]], reps=reps, seed=seed)
                    poi = _fmt_ci(triple, 2) if _poi_has_ci([r["areas"]], [r["base_areas"]]) else f"{triple[0]:.2f}"
                table.append([game, m, r["n"], cell(r["start"], d[0]), cell(r["area"], d[1]), poi,
                              cell(r["final"], d[2])])
    if not table:
        return []
    return ["## Transfer measures", "",
            f"Taylor & Stone (2009): **jump-start** = first evaluation (step 0 for `train` runs) and **area** = mean "
            f"return over training (trapezoidal area under the evaluation curve / steps), each the mean over "
            f"complete seeds, with the difference to `{baseline}` on the same game in brackets; final = the "
            f"100-episode final score; P(area > {baseline}) = probability that a run's mean return over training "
            f"beats a {baseline} run's on the game (95 % bootstrap CI over seeds when both have >= 2 seeds, else the "
            f"point only). One seed's 10-episode evaluations are noisy: read the differences with the seed counts.", "",
            *md_table(["game", "method", "seeds", "step-0 return (jump-start)", "mean return over training",
                       f"P(area > {baseline})", "final"], table), ""]


SEEDS_NEEDED_N = (3, 5, 10)


def report_seeds_section(finals: dict, games: list[str], baseline: str, ns: Sequence[int] = SEEDS_NEEDED_N
                         ) -> list[str]:
    """Per game: the seed-to-seed std of final scores pooled over methods (:func:`scores.pooled_std`) and the
    difference of two methods' means a t-test detects at ``ns`` seeds a side (:func:`scores.detectable_difference`,
    5 %, 80 % power), also as a percentage of the baseline's mean."""
    rows = []
    for game in games:
        sd, dof = scores.pooled_std([v for (g, _), v in finals.items() if g == game])
        if not dof:
            continue
        base = float(np.mean(finals[(game, baseline)])) if (game, baseline) in finals else 0.0
        cells = []
        for n in ns:
            d = scores.detectable_difference(sd, n)
            cells.append(f"{d:.0f}" + (f" ({100 * d / base:.0f} %)" if base > 0 else ""))
        rows.append([game, f"{sd:.1f} ({dof})", *cells])
    if not rows:
        return []
    return ["## Seeds needed", "",
            "Seed-to-seed standard deviation of the final score, pooled over every method with >= 2 complete seeds "
            "(degrees of freedom in brackets), and the smallest difference of two methods' mean final scores that a "
            "two-sided two-sample t-test at 5 % detects with 80 % power at n seeds a side (noncentral t); in "
            f"brackets as a share of `{baseline}`'s mean. A true difference smaller than this is missed more than "
            "one time in five.",
            "", *md_table(["game", "pooled std (dof)", *(f"detectable at n = {n}" for n in ns)], rows), ""]


def report_incomplete_section(runs: list[Run]) -> list[str]:
    """Table of runs without ``final.json``."""
    incomplete = sorted((r for r in runs if not r.complete), key=lambda r: (r.game, r.method, r.seed))
    lines = ["## Incomplete runs", ""]
    if not incomplete:
        return lines + ["None: every run folder has its `final.json`.", ""]
    lines += ["These runs have no `final.json`: they are drawn dashed in the curves and left out of every final "
              "score, curve mean and aggregate above.", ""]
    rows = [[r.game, r.method, r.seed, r.last_step if r.last_step is not None else "-",
             r.planned_steps or "-", f"`{r.path}`"] for r in incomplete]
    return lines + md_table(["game", "method", "seed", "last step", "planned steps", "folder"], rows) + [""]


def write_report(runs: list[Run], out: Path, curve_files: dict[str, str], diagnostics: list, args) -> Path:
    """Assemble ``report.md`` from the runs and the figures already written into ``out``."""
    finals = final_scores(runs)
    games = games_of(runs)
    methods = method_order([r.method for r in runs], args.baseline)
    n_done = sum(r.complete for r in runs)
    commits = sorted({str(r.config.get("commit")) for r in runs if r.config.get("commit")})
    lines = ["# Atari 100k results", "",
             f"Generated by `python -m rlzoo_transfer.curves {' '.join(map(str, args.roots))} --out {args.out}`: "
             f"{len(runs)} run folders, {n_done} complete, {len(runs) - n_done} incomplete. "
             f"Commits: {', '.join(commits) if commits else 'unknown'}. Per-run numbers: `runs.csv`; "
             "curves: `curves.csv`. Published rows: REFERENCE.md (SPR paper table for DER, rliable data for SPR).", ""]
    lines += report_final_section(finals, games, methods)
    lines += report_aggregate_section(finals, methods, args.baseline, args.reps, args.seed)
    lines += report_transfer_section(runs, games, methods, args.baseline, args.reps, args.seed)
    lines += report_seeds_section(finals, games, args.baseline)
    band = "± one sample std" if args.band == "std" else "the 95 % Student-t CI of the mean"
    lines += ["## Evaluation curves", "",
              f"Mean evaluation return over complete seeds, shaded {band} across seeds; dashed lines are "
              "incomplete runs; black markers are published DER / SPR scores at 100k steps.", ""]
    lines += [f"![{g}]({name})" for g, name in curve_files.items()] + [""]
    if diagnostics:
        lines += ["## Gates and pathway weights", "",
                  "Mean AdaAgg gate per layer / source (zoo methods) and mean Hub-Pathway weight per source model "
                  "(hub methods), averaged over every run that logged them (incomplete runs included).", ""]
        for kind, game, method, name, n in diagnostics:
            lines += [f"### {game} / {method}: {kind} ({n} runs)", "", f"![{kind} {game} {method}]({name})", ""]
    lines += report_incomplete_section(runs)
    path = out / "report.md"
    write_atomic(path, "\n".join(lines))
    return path


# ------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """Command-line arguments of ``python -m rlzoo_transfer.curves``."""
    p = argparse.ArgumentParser(prog="python -m rlzoo_transfer.curves", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", nargs="+", type=Path, help="run roots (e.g. runs/) or run folders seed<k>/")
    p.add_argument("--out", type=Path, default=Path("eval"), help="output folder (default: eval)")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap replicates (default: 2000)")
    p.add_argument("--seed", type=seed_arg, default=0, help="bootstrap seed (default: 0)")
    p.add_argument("--band", choices=("std", "ci"), default="std",
                   help="shaded band: +- 1 std across seeds (default) or 95%% t CI of the mean")
    p.add_argument("--baseline", default=None,
                   help="method the others are compared with (default: scratch; a named one must be among the runs)")
    p.add_argument("--readme", type=Path, default=None, metavar="MD",
                   help="also rewrite the results table between the '<!-- results-table:start -->' and "
                        "'<!-- results-table:end -->' markers of this markdown file (e.g. README.md)")
    return p


def run_report(args) -> Path:
    """Load the runs and write every output of the module; returns the path of ``report.md``.

    :raises RunFolderError: a missing root or unreadable run file
    :raises NoRunsError: no run folder below the roots
    :raises BaselineError: a ``--baseline`` given is not a method of the runs (before any file is written); without
        one, ``scratch`` is the baseline, and a set of runs without it gets tables without comparisons
    """
    runs = load_runs(args.roots)
    if not runs:
        raise NoRunsError(f"no run folders (<Game>/<method>/seed<k>/) found under {', '.join(map(str, args.roots))}")
    methods = sorted({r.method for r in runs})
    if args.baseline is None:
        args.baseline = "scratch"
    elif args.baseline not in methods:
        import difflib

        close = difflib.get_close_matches(args.baseline, methods, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise BaselineError(f"--baseline {args.baseline!r} is not a method of these runs.{hint} "
                            f"Methods: {', '.join(methods)}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = aggregate_curves(runs)
    write_curves_csv(rows, args.out / "curves.csv")
    write_runs_csv(runs, args.out / "runs.csv")
    curve_files = {}
    for game in games_of(runs):
        game_runs = [r for r in runs if r.game == game]
        name = f"curves_{_safe(game)}.png"
        plot_game(game, [r for r in rows if r["game"] == game], game_runs,
                  method_order([r.method for r in game_runs], args.baseline), args.out / name, args.band)
        curve_files[game] = name
    if len(curve_files) > 1:
        plot_all_games(games_of(runs), rows, runs, method_order([r.method for r in runs], args.baseline),
                       args.out / "curves_all.png", args.band)
    diagnostics = plot_diagnostics(runs, args.out)
    path = write_report(runs, args.out, curve_files, diagnostics, args)
    if args.readme is not None:
        from rlzoo_transfer import results_table
        results_table.update_markdown(args.readme, runs, args.baseline, args.reps, args.seed)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 no runs, 2 bad input)."""
    from rlzoo_transfer.results_table import MarkerError   # results_table imports this module

    args = build_parser().parse_args(argv)
    if args.reps < 1:
        print("error: --reps must be >= 1", file=sys.stderr)
        return 2
    try:
        path = run_report(args)
    except RunFolderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NoRunsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except BaselineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except MarkerError as err:
        print(f"error: {err} (the --out files were written)", file=sys.stderr)
        return 2
    print(f"wrote {path}" + (f" and the results table of {args.readme}" if args.readme is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
