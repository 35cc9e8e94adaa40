"""The figures of a set of runs: evaluation curves per game and side by side (bands across seeds, dashed incomplete
runs, published marks), and the AdaAgg gate / Hub-Pathway weight plots.  Every PNG is written atomically."""
from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Iterable

import numpy as np

from rlzoo_transfer import scores
from rlzoo_transfer.atomic import replacing
from rlzoo_transfer.rundata import Run


def safe_name(name: str) -> str:
    """File-name-safe version of a game or method name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def published_label(algo: str) -> str:
    """The label of a published reference row or marker, e.g. ``DER (published)``."""
    return f"{algo} (published)"


def pyplot():
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
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    _draw_game(ax, game, rows, runs, methods, band, plt.rcParams["axes.prop_cycle"].by_key()["color"])
    ax.set_ylabel("mean evaluation return")
    ax.set_title(f"{game} (band: {'± 1 std' if band == 'std' else '95% CI'} across seeds)")
    fig.tight_layout()
    save_png(fig, path)


def plot_all_games(games: list[str], rows: list[dict], runs: list[Run], methods: list[str], path: Path,
                   band: str) -> None:
    """The papers' layout: one panel per game side by side, each method in the same colour in every panel."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(games), figsize=(5.2 * len(games), 4.2), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, game in zip(axes[0], games):
        _draw_game(ax, game, [r for r in rows if r["game"] == game], [r for r in runs if r.game == game], methods,
                   band, colors, legend_size=7)
        ax.set_title(game)
    axes[0][0].set_ylabel("mean evaluation return")
    fig.suptitle(f"100k-step evaluation curves (band: {'± 1 std' if band == 'std' else '95% CI'} across seeds)")
    fig.tight_layout()
    save_png(fig, path)


def save_png(fig, path: Path) -> None:
    """Save a figure as PNG atomically and close it."""
    try:
        with replacing(path) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        pyplot().close(fig)


def _mean_series(rows: Iterable[tuple]) -> dict[tuple, tuple[list[int], list[float]]]:
    """``(step, *key, value)`` rows of several runs -> key -> (steps, mean value per step)."""
    acc = defaultdict(lambda: defaultdict(list))
    for step, *key, value in rows:
        acc[tuple(key)][step].append(value)
    return {k: (sorted(v), [float(np.mean(v[s])) for s in sorted(v)]) for k, v in acc.items()}


def plot_stat(series: dict, title: str, ylabel: str, path: Path) -> None:
    """One line per key of :func:`_mean_series`: color per first key part, line style per second."""
    plt = pyplot()
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
    save_png(fig, path)


def plot_diagnostics(runs: list[Run], out: Path) -> list[tuple[str, str, str, str, int]]:
    """Gate, pathway and flow-weight plots per (game, method) with logged statistics: the mean over its complete runs
    (an unfinished run would enter the mean only for its first steps and bend the lines); over the unfinished ones,
    and titled so, only while none is complete.

    :return: ``(kind, game, method, file name, n_runs)`` per plot written
    """
    written = []
    groups = defaultdict(list)
    for run in runs:
        groups[(run.game, run.method)].append(run)
    for (game, method), group in sorted(groups.items()):
        for kind, attr, ylabel in (("gates", "gates", "mean gate"), ("pathway", "pathway", "mean pathway weight"),
                                   ("flow", "flow", "mean flow weight")):
            logged = [r for r in group if getattr(r, attr)]
            if not logged:
                continue
            complete = [r for r in logged if r.complete]
            logged = complete or logged
            which = ("complete" if complete else "unfinished") + (" run" if len(logged) == 1 else " runs")
            name = f"{kind}_{safe_name(game)}_{safe_name(method)}.png"
            rows = [row for r in logged for row in getattr(r, attr)]
            plot_stat(_mean_series(rows), f"{game} / {method}: {kind} (mean of {len(logged)} {which})", ylabel,
                      out / name)
            written.append((kind, game, method, name, len(logged)))
    return written
