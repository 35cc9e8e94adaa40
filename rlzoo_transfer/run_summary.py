"""The files a person looks at after one run: ``curve.png`` and ``report.md`` in the run folder.

``python -m rlzoo_transfer.train`` (and ``lockstep``) write them when a run finishes; ``python -m
rlzoo_transfer.run_summary RUN_DIR ...`` (re)writes them for any run folder, finished or not.

* ``curve.png``: the run's evaluation return against agent steps, shaded +- one std over the evaluation's episodes
  (one seed: the band is the spread of episodes, not of seeds), the final evaluation as a point with its standard
  error, the game's random score as a dotted line and the published DER / SPR scores at 100k as markers.
* ``gates_<game>_<method>.png`` / ``pathway_<game>_<method>.png`` / ``flow_<game>_<method>.png`` for runs that
  logged AdaAgg gates, Hub-Pathway weights or Knowledge Flow weights (the plots of ``curves``).
* ``report.md``: final score with its standard error and human-normalised score beside random, human and the
  published scores; the transfer measures of Taylor & Stone (jump-start = the step-0 evaluation, mean return over
  training = area under the evaluation curve / steps); the evaluation table; how the run was made.

Comparing runs (seeds, methods) is ``python -m rlzoo_transfer.curves``'s job; this module reads one run.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from rlzoo_transfer import scores
from rlzoo_transfer.aggregate import mean_return_over_training
from rlzoo_transfer.atomic import write_atomic
from rlzoo_transfer.plots import plot_diagnostics, pyplot, save_png
from rlzoo_transfer.report import md_table
from rlzoo_transfer.rundata import Run, RunFolderError, load_run
from rlzoo_transfer.stop import one_line_interrupt


def plot_run(run: Run, path: Path) -> None:
    """``curve.png`` of one run (see the module docstring)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    steps = np.array([e.step for e in run.evaluations], dtype=float)
    mean = np.array([e.mean for e in run.evaluations], dtype=float)
    std = np.array([e.std for e in run.evaluations], dtype=float)
    if len(steps):
        n_eps = run.evaluations[-1].n_episodes
        ax.plot(steps, mean, marker=".", label=f"{run.method}, seed {run.seed} ({n_eps} episodes per evaluation)")
        ax.fill_between(steps, mean - std, mean + std, alpha=0.2, linewidth=0)
    x_end = max([run.planned_steps or 0, *(steps.tolist() or [0]), 1])
    if run.final is not None:
        n = int(run.final.get("n_episodes", 1))
        se = float(run.final.get("std", 0.0)) / math.sqrt(max(n, 1))
        ax.errorbar([run.final.get("steps", x_end)], [run.final_mean], yerr=[se], marker="o", color="C3",
                    capsize=4, linestyle="none", label=f"final: {run.final_mean:.1f} ± {se:.1f} s.e. ({n} episodes)")
    ref = scores.GAMES.get(run.game)
    if ref is not None:
        ax.axhline(ref.random, color="grey", linestyle=":", linewidth=1, label=f"random ({ref.random:.1f})")
        markers = iter("s^Dv")
        for algo in scores.REFERENCE_ALGORITHMS:
            if algo in ref.published:
                ax.plot([x_end * 1.025], [ref.published[algo]], marker=next(markers), color="black",
                        linestyle="none", label=f"{algo} @100k (published)")
    ax.set_xlim(0, x_end * 1.06)
    ax.set_xlabel("agent steps")
    ax.set_ylabel("evaluation return")
    status = "" if run.complete else " - unfinished"
    ax.set_title(f"{run.game} / {run.method} / seed {run.seed}{status} (band: ± 1 std over episodes)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


def _score_rows(run: Run) -> list[list[str]]:
    """Rows ``name | score | HNS``: this run's final score, then random, human and the published scores."""
    ref = scores.GAMES.get(run.game)

    def hns(v: float) -> str:
        return f"{float(scores.human_normalized(v, run.game)):.3f}" if ref is not None else "-"

    rows = []
    if run.final is not None:
        n = int(run.final.get("n_episodes", 1))
        se = float(run.final.get("std", 0.0)) / math.sqrt(max(n, 1))
        rows.append([f"this run ({n} episodes)", f"**{run.final_mean:.1f}** ± {se:.1f} s.e.", hns(run.final_mean)])
    if ref is not None:
        rows += [["random", f"{ref.random:.1f}", "0.000"], ["human", f"{ref.human:.1f}", "1.000"]]
        rows += [[f"{algo} @100k (published)", f"{ref.published[algo]:.1f}", hns(ref.published[algo])]
                 for algo in scores.REFERENCE_ALGORITHMS if algo in ref.published]
    return rows


def report_lines(run: Run, diagnostics: Sequence[tuple]) -> list[str]:
    """The markdown of ``report.md`` for one run."""
    steps = run.final.get("steps") if run.final else run.last_step
    lines = [f"# {run.game} / {run.method} / seed {run.seed}", ""]
    if run.complete:
        lines += [f"Finished: {int(steps):,} agent steps; final evaluation over "
                  f"{int(run.final.get('n_episodes', 0))} episodes (episode std {float(run.final.get('std', 0)):.1f}).",
                  ""]
    else:
        lines += [f"**Unfinished**: last evaluation at step {run.last_step}, of {run.planned_steps} planned (if it "
                  "was stopped, the same command with `--resume` continues it).", ""]
    rows = _score_rows(run)
    if rows:
        lines += md_table(["", "score", "human-normalised"], rows) + [""]
    if run.evaluations:
        first = run.evaluations[0]
        area = mean_return_over_training(run) if len(run.evaluations) > 1 else None
        lines += [f"Jump-start (evaluation at step {first.step}): **{first.mean:.1f}**"
                  + (f"; mean return over training (area under the curve / steps): **{area:.1f}**" if area is not None
                     else "") + ". Compare them with a scratch run's (`python -m rlzoo_transfer.curves`).", ""]
    lines += ["![evaluation curve](curve.png)", ""]
    for kind, _game, _method, name, _n in diagnostics:
        lines += [f"![{kind}]({name})", ""]
    if run.evaluations:
        lines += ["## Evaluations", ""]
        lines += md_table(["step", "mean", "std", "episodes"],
                          [[f"{e.step:,}", f"{e.mean:.1f}", f"{e.std:.1f}", e.n_episodes]
                           for e in run.evaluations]) + [""]
    cfg = run.config
    lines += ["## How it was made", ""]
    if cfg.get("command"):
        lines += [f"Command: `{cfg['command']}`", ""]
    if cfg.get("commit"):
        lines += [f"Commit: `{cfg['commit']}`", ""]
    lines += ["Resolved hyperparameters, package versions and the sources used: `config.yml`. Numbers: "
              "`evaluations.csv`, `final.json`.", ""]
    return lines


def write_run_summary(run_dir: Path) -> Path:
    """Write ``curve.png``, the gate / pathway plots and ``report.md`` into ``run_dir``; returns the report's path.

    :raises RunFolderError: ``run_dir`` is not a ``seed<k>`` run folder or a file in it is unreadable
    """
    run_dir = Path(run_dir)
    run = load_run(run_dir)
    plot_run(run, run_dir / "curve.png")
    diagnostics = plot_diagnostics([run], run_dir)
    path = run_dir / "report.md"
    write_atomic(path, "\n".join(report_lines(run, diagnostics)))
    return path


@one_line_interrupt
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: (re)write the summary of each run folder given; 0 ok, 2 a folder that is not a run."""
    p = argparse.ArgumentParser(prog="python -m rlzoo_transfer.run_summary", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders, e.g. runs/Alien/zoo/seed0")
    args = p.parse_args(argv)
    for run_dir in args.runs:
        if not run_dir.is_dir():
            print(f"error: no run folder {run_dir}", file=sys.stderr)
            return 2
        try:
            print(f"wrote {write_run_summary(run_dir)}")
        except RunFolderError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
