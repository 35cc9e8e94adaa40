"""Evaluation curves, final scores and aggregate statistics of a set of runs.

    python -m rlzoo_transfer.curves runs/ --out eval/ [--reps 2000] [--seed 0] [--band std|ci] [--baseline scratch]
                                   [--readme README.md] [--confirm eval/confirm/*.yml] [--seeds 0 1 2 3 4]

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
  game-balanced IQM and mean of HNS with 95 % stratified bootstrap intervals, probability of improvement over the
  baseline, published reference rows, the difference of each method's mean final score to the baseline's per game
  with Welch's 95 % interval and Holm-adjusted p-values (:func:`report.report_difference_section`), the transfer
  measures of :func:`aggregate.transfer_measures` (jump-start, area under the curve), the plots, how many seeds a
  difference needs (:func:`report.report_seeds_section`), the pre-registered tests given with ``--confirm``
  (:mod:`rlzoo_transfer.confirm`: each run's state, the test once all its runs are complete), and a table of
  incomplete runs.  Only runs with ``final.json`` enter final scores.  The runs of a ``--confirm`` registration
  (its game, method and baseline at its seeds) are kept out of every table, curve and plot but ``runs.csv`` and
  its own section: the sample that tests a hypothesis is not pooled with the one that suggested it.
* with ``--readme MD``: the compact results table of :mod:`rlzoo_transfer.results_table`, spliced between the
  markers of that markdown file (the rest of it untouched), with a line per ``--confirm`` registration.

The work is in four modules: :mod:`rlzoo_transfer.rundata` reads the runs, :mod:`rlzoo_transfer.aggregate`
computes the statistics, :mod:`rlzoo_transfer.plots` draws and :mod:`rlzoo_transfer.report` writes ``report.md``;
this module writes the CSVs and runs them.  Every file is written atomically (:mod:`rlzoo_transfer.atomic`): an
interrupted run of the command leaves the previous version in place, never half a file.

``--seeds`` keeps only the run folders of those seeds (every output, ``runs.csv`` included): with as many seeds
of every game and method, the pooled IQM (rliable's, each run counting the same) compares across methods the way
published aggregates do, instead of following how many seeds each game happens to have.

Exit status: 0 on success, 1 when no run folder is found, 2 for a missing root, an unreadable run file or
registration, or a --readme file without its markers.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path
from typing import Sequence

from rlzoo_transfer.aggregate import aggregate_curves, games_of, method_order
from rlzoo_transfer.atomic import replacing
from rlzoo_transfer.config import seed_arg
from rlzoo_transfer.confirm import ConfirmError, load_registration
from rlzoo_transfer.outputs import check_outputs
from rlzoo_transfer.plots import plot_all_games, plot_diagnostics, plot_game, safe_name
from rlzoo_transfer.report import write_report
from rlzoo_transfer.results_table import MarkerError, check_markdown, update_markdown
from rlzoo_transfer.rundata import NoRunsError, Run, RunFolderError, load_runs, protocol_differences
from rlzoo_transfer.stop import one_line_interrupt


class BaselineError(Exception):
    """``--baseline`` names no method of the runs."""


def write_curves_csv(rows: list[dict], path: Path) -> None:
    """Write the rows of :func:`aggregate_curves` to ``path``."""
    with replacing(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["game", "method", "step", "mean", "std", "n_seeds"])
        writer.writeheader()
        writer.writerows(rows)


def write_runs_csv(runs: list[Run], path: Path) -> None:
    """One row per run: identity, completeness, last step, final mean / std / episodes, the final episodes' median
    and how many distinct returns they have (a greedy policy under the protocol's little randomness - 0-30 no-ops,
    epsilon 0.001 - can replay a few games, and a mean over them is lumpier than its std suggests), the commit its
    ``config.yml`` records (``-dirty``: made with uncommitted changes), its resumes (``step@commit``, space-separated),
    folder."""
    fields = ["game", "method", "seed", "complete", "last_step", "planned_steps",
              "final_mean", "final_std", "n_episodes", "final_median", "final_distinct", "commit", "resumes", "path"]
    with replacing(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in sorted(runs, key=lambda r: (r.game, r.method, r.seed)):
            final = r.final or {}
            returns = final.get("returns") or []
            writer.writerow(dict(game=r.game, method=r.method, seed=r.seed, complete=int(r.complete),
                                 last_step=r.last_step if r.last_step is not None else "",
                                 planned_steps=r.planned_steps or "", final_mean=final.get("mean", ""),
                                 final_std=final.get("std", ""), n_episodes=final.get("n_episodes", ""),
                                 final_median=statistics.median(returns) if returns else "",
                                 final_distinct=len(set(returns)) if returns else "",
                                 commit=r.config.get("commit") or "",
                                 resumes=" ".join(f"{x.get('step')}@{x.get('commit')}" for x in r.resumes),
                                 path=str(r.path)))


def build_parser() -> argparse.ArgumentParser:
    """Command-line arguments of ``python -m rlzoo_transfer.curves``."""
    p = argparse.ArgumentParser(prog="python -m rlzoo_transfer.curves", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("roots", nargs="+", type=Path, help="run roots (e.g. runs/) or run folders seed<k>/")
    p.add_argument("--out", type=Path, default=Path("eval"),
                   help="output folder (default: eval, the repository's committed results; give your own)")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap replicates (default: 2000)")
    p.add_argument("--seed", type=seed_arg, default=0, help="bootstrap seed (default: 0)")
    p.add_argument("--band", choices=("std", "ci"), default="std",
                   help="shaded band: +- 1 std across seeds (default) or 95%% t CI of the mean")
    p.add_argument("--baseline", default=None,
                   help="method the others are compared with (default: scratch; a named one must be among the runs)")
    p.add_argument("--readme", type=Path, default=None, metavar="MD",
                   help="also rewrite the results table between the '<!-- results-table:start -->' and "
                        "'<!-- results-table:end -->' markers of this markdown file (e.g. README.md)")
    p.add_argument("--confirm", nargs="+", type=Path, default=[], metavar="YML",
                   help="pre-registered tests (python -m rlzoo_transfer.confirm register) to evaluate in report.md")
    p.add_argument("--seeds", nargs="+", type=seed_arg, default=None, metavar="K",
                   help="only the runs of these seeds (e.g. 0 1 2 3 4: equal seeds per game for the pooled IQM)")
    return p


def run_report(args) -> Path:
    """Load the runs and write every output of the module; returns the path of ``report.md``.

    :raises RunFolderError: a missing root or unreadable run file
    :raises NoRunsError: no run folder below the roots
    :raises BaselineError: a ``--baseline`` given is not a method of the runs (before any file is written); without
        one, ``scratch`` is the baseline, and a set of runs without it gets tables without comparisons
    :raises ConfirmError: an unreadable ``--confirm`` registration (before any file is written)
    """
    registrations = [load_registration(path) for path in args.confirm]
    all_runs = load_runs(args.roots)
    if not all_runs:
        raise NoRunsError(f"no run folders (<Game>/<method>/seed<k>/) found under {', '.join(map(str, args.roots))}")
    if args.seeds is not None:
        keep = set(args.seeds)
        all_runs = [r for r in all_runs if r.seed in keep]
        if not all_runs:
            raise NoRunsError(f"no run folder of seed(s) {', '.join(map(str, args.seeds))} under "
                              f"{', '.join(map(str, args.roots))}")
    runs = [r for r in all_runs if not any(reg.covers(r) for reg in registrations)]   # the exploratory runs
    if not runs:
        raise NoRunsError("every run found belongs to a pre-registered test (--confirm): python -m "
                          "rlzoo_transfer.confirm check reports them")
    methods = sorted({r.method for r in runs})
    if args.baseline is None:
        args.baseline = "scratch"
    elif args.baseline not in methods:
        import difflib

        close = difflib.get_close_matches(args.baseline, methods, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise BaselineError(f"--baseline {args.baseline!r} is not a method of these runs.{hint} "
                            f"Methods: {', '.join(methods)}")
    mixed = protocol_differences(runs)
    for line in mixed:
        print(f"warning: {line}: averaged as one method (report.md says so)", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = aggregate_curves(runs)
    write_curves_csv(rows, args.out / "curves.csv")
    write_runs_csv(all_runs, args.out / "runs.csv")
    curve_files = {}
    for game in games_of(runs):
        game_runs = [r for r in runs if r.game == game]
        name = f"curves_{safe_name(game)}.png"
        plot_game(game, [r for r in rows if r["game"] == game], game_runs,
                  method_order([r.method for r in game_runs], args.baseline), args.out / name, args.band)
        curve_files[game] = name
    if len(curve_files) > 1:
        plot_all_games(games_of(runs), rows, runs, method_order([r.method for r in runs], args.baseline),
                       args.out / "curves_all.png", args.band)
    diagnostics = plot_diagnostics(runs, args.out)
    path = write_report(runs, args.out, curve_files, diagnostics, args, all_runs, mixed)
    if args.readme is not None:
        update_markdown(args.readme, runs, args.baseline, args.reps, args.seed, args.confirm, all_runs)
    return path


@one_line_interrupt
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 no runs, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_outputs(parser, args, folders=("out",), files=("readme",))
    if args.reps < 1:
        print("error: --reps must be >= 1", file=sys.stderr)
        return 2
    if args.readme is not None:
        try:
            check_markdown(args.readme)
        except MarkerError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    try:
        path = run_report(args)
    except (RunFolderError, BaselineError, ConfirmError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NoRunsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except MarkerError as err:
        print(f"error: {err} (the --out files were written)", file=sys.stderr)
        return 2
    print(f"wrote {path}" + (f" and the results table of {args.readme}" if args.readme is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
