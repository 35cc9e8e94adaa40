"""Across-seed statistics of a set of runs: curves, final scores, human-normalised aggregates with bootstrap CIs,
probability of improvement and Taylor & Stone's transfer measures (the numbers of ``curves``' report and of the
README's results table)."""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import numpy as np

from rlzoo_transfer import scores
from rlzoo_transfer.rundata import Run


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
    bootstrap 95 % CI.  Games with different numbers of seeds count the same (:func:`scores.aggregate_statistics`);
    ``iqm_pooled`` is rliable's IQM of the pooled runs, ``trim_mean(x, 0.25)`` over runs x games, for comparison
    with published aggregates (a game with more seeds weighs more there).

    :return: ``dict(iqm=(point, low, high), mean=..., iqm_pooled=..., n_runs, n_games, seeds)``, ``seeds`` the runs
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
        iqm_pooled=scores.stratified_bootstrap_ci(data, statistic=lambda x: scores.iqm(x, axis=1), reps=reps,
                                                  seed=seed),
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
