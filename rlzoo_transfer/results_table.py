"""The compact results table of a set of runs, and splicing it into a markdown file (the README).

    python -m rlzoo_transfer.curves eval/runs --out eval --readme README.md

writes, between the marker lines ``<!-- results-table:start -->`` and ``<!-- results-table:end -->`` of README.md
(everything outside them is left as it was), two tables built from the same runs as ``report.md``:

* **final score**: per method and game the mean +- sample std over complete seeds of the ``final.json`` means,
  the seeds in brackets, and the game-balanced IQM of human-normalised scores with its 95 % stratified bootstrap
  CI (:func:`aggregate.aggregate_hns`; point only while a game has one seed); published DER / SPR and random rows;
* **mean return over training**: the area under each method's evaluation curve / steps
  (:func:`aggregate.transfer_measures`), its difference to the baseline in brackets;
* with ``--confirm``: one line per pre-registered test, its runs complete so far and, once all are, its verdict
  (its runs are not in the tables: ``curves`` keeps them out).

So the numbers a reader sees first are always those of ``eval/``: nobody copies them by hand.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from rlzoo_transfer import aggregate, confirm, plots, report, scores
from rlzoo_transfer.atomic import write_atomic
from rlzoo_transfer.rundata import Run

START = "<!-- results-table:start -->"
END = "<!-- results-table:end -->"


class MarkerError(Exception):
    """The markdown file has no (or broken) results-table markers."""


def _iqm_cell(finals: dict, method: str, reps: int, seed: int, games: Sequence[str]) -> str:
    """The method's IQM HNS, or "-" when it lacks one of ``games`` that has human / random scores (an IQM over fewer
    games would sit in the column as if it compared with the others)."""
    agg = aggregate.aggregate_hns(finals, method, reps, seed)
    if agg is None or agg["n_games"] < sum(g in scores.GAMES for g in games):
        return "-"
    return report.fmt_aggregate_ci(agg["iqm"], agg["seeds"]) if min(agg["seeds"]) >= 2 else f"{agg['iqm'][0]:.3f}"


def table_lines(runs: Sequence[Run], baseline: str = "scratch", reps: int = 2000, seed: int = 0,
                confirm_paths: Sequence[Path] = (), all_runs: Sequence[Run] | None = None) -> list[str]:
    """The markdown of the two tables (complete runs only; incomplete ones are counted in a note), and a line per
    pre-registered test (:func:`confirm.summary_line`) over ``all_runs`` (default ``runs``)."""
    finals = aggregate.final_scores(runs)
    games = aggregate.games_of(runs)
    methods = [m for m in aggregate.method_order([r.method for r in runs], baseline)
               if any((g, m) in finals for g in games)]
    rows = [[f"`{m}`", *(report.fmt_final(finals.get((g, m)), seeds="{}") for g in games),
             _iqm_cell(finals, m, reps, seed, games)] for m in methods]
    for algo, cells in report.reference_rows(games, lambda v, g: f"{v:.1f}"):   # the report's published rows
        hns = [scores.human_normalized(scores.GAMES[g].published[algo], g) for g in games
               if g in scores.GAMES and algo in scores.GAMES[g].published]
        iqm = f"{float(scores.weighted_iqm(hns, scores.game_weights([1] * len(hns)))):.3f}" if len(hns) == len(games) \
            else "-"
        rows.append([plots.published_label(algo), *cells, iqm])
    rows.append(["random", *(f"{scores.GAMES[g].random:.1f}" if g in scores.GAMES else "-" for g in games), "0"])

    measures = {(r["game"], r["method"]): r for r in aggregate.transfer_measures(runs, baseline)}

    def area_cell(game: str, method: str) -> str:
        r = measures.get((game, method))
        if r is None:
            return "-"
        delta = "" if method == baseline or r["d_area"] is None else f" ({r['d_area']:+.0f})"
        return f"{r['area']:.0f}{delta}"

    area_rows = [[f"`{m}`", *(area_cell(g, m) for g in games)] for m in methods]
    incomplete = sum(not r.complete for r in runs)
    lines = ["Final score: mean ± std over seeds of the 100-episode final evaluations, (seeds); IQM HNS: "
             "game-balanced interquartile mean of human-normalised scores, [95 % bootstrap CI] once every game has "
             ">= 2 seeds, - for a method that has not run every game.", ""]
    lines += report.md_table(["method", *games, "IQM HNS"], rows)
    if any(report.NARROW_MARK in cell for row in rows for cell in row):
        lines += ["", report.NARROW_NOTE]
    seeds = [[len(finals[(g, m)]) for g in games if (g, m) in finals and g in scores.GAMES] for m in methods]
    if report.few_seeds(seeds):
        lines += ["", report.FEW_SEEDS_NOTE]
    lines += ["", f"Mean return over training (area under the evaluation curve / steps, mean over seeds; "
                  f"difference to `{baseline}` in brackets):", ""]
    lines += report.md_table(["method", *games], area_rows)
    lines += ["", f"{sum(r.complete for r in runs)} complete runs"
                  + (f"; {incomplete} incomplete (left out)" if incomplete else "") + "."]
    for path in confirm_paths:
        lines += ["", confirm.summary_line(confirm.load_registration(path), Path(path), list(all_runs or runs))]
    return lines


def splice(text: str, block: Sequence[str], source: str = "the file") -> str:
    """``text`` with the lines between the START and END marker lines replaced by ``block`` (markers kept).

    A marker counts only as a line of its own, so prose may quote it.

    :raises MarkerError: a marker line missing, repeated or out of order
    """
    lines = text.split("\n")
    starts = [i for i, line in enumerate(lines) if line.strip() == START]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    if len(starts) != 1 or len(ends) != 1 or starts[0] > ends[0]:
        raise MarkerError(
            f"{source} needs exactly one line '{START}' followed by one line '{END}' (found {len(starts)} start and "
            f"{len(ends)} end marker lines): put both where the results table should go")
    return "\n".join(lines[:starts[0] + 1] + list(block) + lines[ends[0]:])


def check_markdown(path: Path) -> None:
    """Check, before any work, that :func:`update_markdown` can rewrite ``path``: it exists, is text and has its
    marker lines.  ``curves`` calls it right after parsing, so a wrong ``--readme`` costs no report run.

    :raises MarkerError: a missing or unreadable file, or its markers missing, repeated or out of order
    """
    if not path.is_file():
        raise MarkerError(f"{path} does not exist (--readme names the markdown file to update)")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise MarkerError(f"{path} cannot be read as text ({err})") from None
    splice(text, [], str(path))


def update_markdown(path: Path, runs: Sequence[Run], baseline: str = "scratch", reps: int = 2000,
                    seed: int = 0, confirm_paths: Sequence[Path] = (), all_runs: Sequence[Run] | None = None) -> None:
    """Rewrite the results table of the markdown file ``path`` in place, atomically.

    :raises MarkerError: see :func:`splice`; also for a file that does not exist
    """
    if not path.is_file():
        raise MarkerError(f"{path} does not exist (--readme names the markdown file to update)")
    text = path.read_text()
    write_atomic(path, splice(text, table_lines(runs, baseline, reps, seed, confirm_paths, all_runs), str(path)))
