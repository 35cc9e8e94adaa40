"""``report.md`` of a set of runs: final and human-normalised scores with published rows, the aggregate with
bootstrap CIs, probability of improvement, transfer measures, seeds needed, the figures and the incomplete runs;
and the markdown helpers the README's results table and each run's own report share."""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from rlzoo_transfer import scores
from rlzoo_transfer.aggregate import (aggregate_hns, final_scores, games_of, hns_groups, improvement_over,
                                      method_order, transfer_measures)
from rlzoo_transfer.atomic import write_atomic
from rlzoo_transfer.plots import published_label
from rlzoo_transfer.rundata import Run


def md_table(header: Sequence[str], rows: Iterable[Sequence]) -> list[str]:
    """Markdown table lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _fmt_ci(triple: tuple[float, float, float], digits: int = 3) -> str:
    """``point [low, high]``."""
    p, lo, hi = triple
    return f"{p:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


#: Mark of a bootstrap interval over a game with only 2 seeds, and its footnote (report and README table).
NARROW_MARK = "†"
NARROW_NOTE = ("† a game with only 2 seeds: the bootstrap resamples two values there, so the interval shows little "
               "more than the spread of those two seeds and comes out too narrow (a t interval for the mean of two "
               "values is ~6x wider than a normal one) - not a 95 % confidence interval in earnest.")
FEW_SEEDS_NOTE = ("With 3-5 seeds a game the bootstrap intervals are still narrower than the data warrant: resampling "
                  "n values reproduces (n - 1) / n of their variance (at n = 3 an interval ~0.8x as wide as their own "
                  "spread gives) and its percentiles ignore how few values estimated the spread. Read overlapping "
                  "intervals as no difference shown, and a gap between intervals with care.")


def few_seeds(seeds_per_row) -> bool:
    """Whether :data:`FEW_SEEDS_NOTE` applies: a row with an interval whose fewest seeds a game are 3 to 5."""
    return any(seeds and 2 < min(seeds) <= 5 for seeds in seeds_per_row)


def fmt_aggregate_ci(triple: tuple[float, float, float], seeds: Sequence[int], digits: int = 3) -> str:
    """``point [low, high]``, marked with :data:`NARROW_MARK` when a game has only 2 seeds (the caller has made sure
    every game has >= 2)."""
    return _fmt_ci(triple, digits) + (f" {NARROW_MARK}" if min(seeds) == 2 else "")


def _fmt_point_only(triple: tuple[float, float, float], digits: int = 3, why: str = "1 seed per game") -> str:
    """``point (<why>: no CI)``: resampling a single seed gives a zero-width interval that would read as
    certainty, so none is shown."""
    return f"{triple[0]:.{digits}f} ({why}: no CI)"


def _poi_has_ci(x_groups: Sequence[Sequence[float]], y_groups: Sequence[Sequence[float]]) -> bool:
    """A probability of improvement gets a bootstrap CI only when both methods have >= 2 seeds on every game: with
    one seed on a side, the interval shows the other side's spread only (e.g. [1, 1] from one lucky run)."""
    return all(len(x) >= 2 and len(y) >= 2 for x, y in zip(x_groups, y_groups))


def fmt_final(vals: list[float] | None, seeds: str = "n={}") -> str:
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


def commits_summary(commits: list[str]) -> str:
    """``Commit: <sha>`` for one commit, else how many (the full list, one per run, is ``runs.csv``'s column)."""
    if not commits:
        return "Commit: unknown"
    if len(commits) == 1:
        return f"Commit: {commits[0]}"
    dirty = sum(c.endswith("-dirty") for c in commits)
    return f"{len(commits)} commits" + (f" ({dirty} with uncommitted changes, `-dirty`)" if dirty else "")


def report_final_section(finals: dict, games: list[str], methods: list[str]) -> list[str]:
    """Raw final scores and HNS tables, methods x games, with published rows."""
    lines = ["## Final scores", "",
             "Mean ± sample std (ddof=1) over seeds of each complete run's final evaluation mean "
             "(`final.json`); `n` = number of complete seeds. Incomplete runs are excluded (see below).", ""]
    rows = [[m, *(fmt_final(finals.get((g, m))) for g in games)] for m in methods]
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
             "the interval would read as more certain than the data are. The pooled IQM is rliable's: "
             "`trim_mean(x, 0.25)` over all runs x games as they are, each run counting the same (a game with more "
             "seeds weighs more), the form most published aggregates use; with 3 games the two can differ much, "
             "since a game whose HNS is far from the others' (Jamesbond's, here) decides which runs straddle the "
             "quartiles.", ""]
    header = ["method", "IQM HNS [95% CI]", "mean HNS [95% CI]", "pooled IQM [95% CI]", "games", "runs",
              "seeds per game"]

    shown_ci_seeds: list[list[int]] = []   # seeds per game of every row shown with an interval

    def table(games: list[str] | None) -> list[list]:
        rows = []
        for m in methods:
            agg = aggregate_hns(finals, m, reps, seed, games)
            if agg:
                if min(agg["seeds"]) >= 2:
                    fmt = partial(fmt_aggregate_ci, seeds=agg["seeds"])
                    shown_ci_seeds.append(agg["seeds"])
                else:
                    why = "1 seed per game" if max(agg["seeds"]) == 1 else "a game with 1 seed"
                    fmt = partial(_fmt_point_only, why=why)
                rows.append([m, fmt(agg["iqm"]), fmt(agg["mean"]), fmt(agg["iqm_pooled"]), agg["n_games"],
                             agg["n_runs"], " / ".join(str(n) for n in agg["seeds"])])
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
    if any(NARROW_MARK in line for line in lines):
        lines += ["", NARROW_NOTE]
    if few_seeds(shown_ci_seeds):
        lines += ["", FEW_SEEDS_NOTE]
    lines += ["", f"## Probability of improvement over {baseline}", "",
              f"P(X > Y) of a run of the method beating a run of {baseline} on the same game (ties count 1/2), "
              "averaged over the games both completed; 95 % CI by stratified bootstrap over seeds, shown when both "
              "methods have >= 2 seeds on every game (with one seed on a side it would show only the other side's "
              "spread).", ""]
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


def report_difference_section(finals: dict, games: list[str], methods: list[str], baseline: str,
                              confidence: float = 0.95) -> list[str]:
    """Per game and method: the difference of mean final scores to the baseline with Welch's 95 % interval
    (:func:`scores.welch_difference`), its p-value and the Holm-adjusted p over every comparison of the table
    (:func:`scores.holm`); only pairs with >= 2 seeds a side."""
    found = []
    for game in games:
        base = finals.get((game, baseline), [])
        for m in methods:
            vals = finals.get((game, m), [])
            if m != baseline and len(vals) >= 2 and len(base) >= 2:
                found.append((game, m, scores.welch_difference(vals, base, confidence)))
    if not found:
        return []
    adjusted = scores.holm([w["p"] for _, _, w in found])
    rows = [[game, m, f"{w['n_x']} / {w['n_y']}", f"{w['diff']:+.1f} [{w['low']:+.1f}, {w['high']:+.1f}]",
             f"{w['p']:.3f}", f"{p_holm:.3f}"] for (game, m, w), p_holm in zip(found, adjusted)]
    alpha = 1 - confidence
    n_small, n_holm = sum(w["p"] < alpha for _, _, w in found), sum(p < alpha for p in adjusted)
    verb = "has" if n_small == 1 else "have"
    return [f"## Difference to {baseline}", "",
            f"Mean final score of the method minus `{baseline}`'s on the same game, with Welch's "
            f"{confidence:.0%} t interval (unequal variances) and two-sided p-value; pairs with >= 2 complete seeds a "
            f"side. With {len(found)} comparisons, about {len(found) * alpha:.1f} would show p < "
            f"{alpha:.2f} by chance alone: the Holm-adjusted p (over this table) is the one to read for "
            f"\"is any of these a difference\". Here {n_small} of {len(found)} {verb} p < {alpha:.2f}, "
            f"{n_holm} after adjustment.", "",
            *md_table(["game", "method", "seeds (method / " + baseline + ")", f"difference [{confidence:.0%} CI]",
                       "p", "p (Holm)"], rows), ""]


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
            "two-sided two-sample t-test at 5 % detects with 80 % power at n seeds a side (Student's, equal "
            "variances; noncentral t); in brackets as a share of "
            f"`{baseline}`'s mean. A true difference smaller than this is missed more than one time in five. "
            "Welch's test, which the tables above use, estimates its degrees of freedom and has less power with few "
            "seeds, so at n = 3-5 these are lower bounds on what it detects.",
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


def write_report(runs: list[Run], out: Path, curve_files: dict[str, str], diagnostics: list, args,
                 all_runs: list[Run] | None = None, mixed: Sequence[str] = ()) -> Path:
    """Assemble ``report.md`` from the (exploratory) runs and the figures already written into ``out``;
    ``all_runs`` adds the runs of the ``args.confirm`` registrations, which only their own section reports;
    ``mixed`` (:func:`rlzoo_transfer.rundata.protocol_differences`) is listed under the header as a warning."""
    finals = final_scores(runs)
    games = games_of(runs)
    methods = method_order([r.method for r in runs], args.baseline)
    n_done = sum(r.complete for r in runs)
    commits = sorted({c for r in runs for c in r.commits})
    lines = ["# Atari 100k results", "",
             f"Generated by `python -m rlzoo_transfer.curves {' '.join(map(str, args.roots))} --out {args.out}"
             + "".join(f" --confirm {c}" for c in getattr(args, "confirm", None) or [])
             + (f" --seeds {' '.join(map(str, args.seeds))}" if getattr(args, "seeds", None) else "") + "`: "
             f"{len(runs)} run folders, {n_done} complete, {len(runs) - n_done} incomplete"
             + (f" (and {len(all_runs) - len(runs)} of pre-registered tests, reported only in their section)"
                if all_runs and len(all_runs) > len(runs) else "") + ". "
             f"{commits_summary(commits)}. Per-run numbers and commits: `runs.csv`; "
             "curves: `curves.csv`. Published rows: REFERENCE.md (SPR paper table for DER, rliable data for SPR).", ""]
    if mixed:
        lines += ["**Warning: runs made differently are averaged as one method below** (different protocol or "
                  "hyperparameters; give `curves` the roots or run folders of one experiment):", ""]
        lines += [f"- {line}" for line in mixed] + [""]
    lines += report_final_section(finals, games, methods)
    lines += report_aggregate_section(finals, methods, args.baseline, args.reps, args.seed)
    lines += report_difference_section(finals, games, methods, args.baseline)
    lines += report_transfer_section(runs, games, methods, args.baseline, args.reps, args.seed)
    lines += report_seeds_section(finals, games, args.baseline)
    band = "± one sample std" if args.band == "std" else "the 95 % Student-t CI of the mean"
    lines += ["## Evaluation curves", "",
              f"Mean evaluation return over complete seeds, shaded {band} across seeds; dashed lines are "
              "incomplete runs; black markers are published DER / SPR scores at 100k steps.", ""]
    lines += [f"![{g}]({name})" for g, name in curve_files.items()] + [""]
    if diagnostics:
        lines += ["## Gates, pathway and flow weights", "",
                  "Mean AdaAgg gate per layer / source (zoo methods), mean Hub-Pathway weight per source model "
                  "(hub methods) and Knowledge Flow's weight of the student and of each teacher per flow point "
                  "(kflow), averaged over the complete runs that logged them (over the unfinished ones while none "
                  "is complete).", ""]
        for kind, game, method, name, n in diagnostics:
            runs_word = "run" if n == 1 else "runs"
            lines += [f"### {game} / {method}: {kind} ({n} {runs_word})", "", f"![{kind} {game} {method}]({name})", ""]
    from rlzoo_transfer import confirm  # confirm uses md_table from here

    lines += confirm.report_section(getattr(args, "confirm", None) or [], all_runs or runs)
    lines += report_incomplete_section(runs)
    path = out / "report.md"
    write_atomic(path, "\n".join(lines))
    return path
