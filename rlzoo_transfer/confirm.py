"""Pre-registered confirmatory tests: fix the test of a lead *before* the fresh seeds that test it are run.

    python -m rlzoo_transfer.confirm register --game Jamesbond --method hub --baseline scratch \\
        --seeds 100 101 102 103 104 105 106 107 --alternative greater --runs eval/runs \\
        --out eval/confirm/Jamesbond-hub.yml
    python -m rlzoo_transfer.sweep --confirm eval/confirm/Jamesbond-hub.yml    # once the file is committed
    python -m rlzoo_transfer.confirm check eval/confirm/Jamesbond-hub.yml --runs runs   # the live runs

Why: the report compares every method with the baseline on every game (18 comparisons for 6 methods x 3 games), and
the largest of those differences is, by being picked as the largest, an overestimate with an optimistic p-value.
Adding seeds to the same comparison does not cure that.  What does is a new experiment whose analysis is fixed in
advance: one game, one method against the baseline, seeds never run before, one test at one ``alpha``, run once
every registered run is complete.  ``register`` writes that plan as YAML (commit it before the runs start: the git
history is the evidence it came first); ``check`` and ``curves --confirm`` evaluate it.

The registration records (choices a careful experimenter makes; all checked again at evaluation):

* the **seeds**, which must have no run folder for either arm anywhere under ``--runs`` or ``--log-dir`` when
  registering, and the **test**: Welch's t-test on the runs' final scores (mean return of the final evaluation
  episodes), one-sided (``greater``: "method > baseline", the direction the exploratory runs suggested) or
  two-sided, at ``alpha``;
* the **protocol** of both arms - the exploratory runs' resolved hyperparameters and their steps / evaluation
  settings, which must agree across those runs; a confirmatory run whose ``config.yml`` differs from them, that
  started before the registration (its ``started`` stamp, the machine's local time as the registration's), or that
  was made at a commit without the registration file (where git knows that commit) is a **deviation**, listed
  beside the result;
* the **planning numbers**: the exploratory difference and its p-value, the seed-to-seed standard deviation pooled
  over every method of the game (as the report's "Seeds needed"), the power the registered seeds have against the
  exploratory difference, and the smallest difference they detect with 80 % power.  The exploratory difference is
  inflated by its selection, so a careful plan powers for less than it; the file says what the seeds can see.

Until every registered run is complete the evaluation shows each run's state and final score but no test: a test
looked at early and stopped when it "works" no longer holds its ``alpha``.

Exit status of ``register``: 0 written, 2 bad input (unknown method or game in the runs, a seed already used, an
existing file, exploratory runs that disagree).  ``check``: 0 when evaluated or still pending, 2 for a bad file.
"""
from __future__ import annotations

import argparse
import difflib
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import yaml

from rlzoo_transfer import scores, yamlfile
from rlzoo_transfer.atomic import write_atomic
from rlzoo_transfer.config import seed_arg
from rlzoo_transfer.outputs import check_outputs
from rlzoo_transfer.provenance import file_in_commit, git_commit
from rlzoo_transfer.report import md_table
from rlzoo_transfer.rl.registry import pinned
from rlzoo_transfer.rundata import Run, RunFolderError, find_run_dirs, load_runs
from rlzoo_transfer.stop import one_line_interrupt

#: ``config.yml`` keys that fix how a run is trained and scored (beside ``hyperparams``).
PROTOCOL_KEYS = ("steps", "eval_freq", "eval_episodes", "final_eval_episodes", "n_envs")
#: Hyperparameters that do not change what is learned (compiling the same update).
IGNORED_HYPERPARAMS = ("compile",)
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
PLANNED_POWER = 0.8
#: Fractions of the exploratory difference the report also gives the registered seeds' power against.
SHRUNK = (0.5, 0.75)


class ConfirmError(Exception):
    """A registration that cannot be written or read."""


@dataclass
class Registration:
    """One pre-registered test: ``method`` against ``baseline`` on ``game`` at the fresh ``seeds``.

    ``protocol[arm]`` holds the arm's PROTOCOL_KEYS and ``hyperparams``; ``planning`` the numbers the plan was made
    with (see the module docstring).
    """

    game: str
    method: str
    baseline: str
    seeds: list[int]
    alternative: str
    alpha: float
    hypothesis: str
    registered: str
    commit: str
    command: str
    protocol: dict
    planning: dict = field(default_factory=dict)

    @property
    def arms(self) -> tuple[str, str]:
        return self.method, self.baseline

    def covers(self, run: Run) -> bool:
        """Whether ``run`` is one of the registered runs (its game, an arm, a registered seed)."""
        return run.game.lower() == self.game.lower() and run.method in self.arms and run.seed in self.seeds


def _fields() -> list[str]:
    return list(Registration.__dataclass_fields__)


def load_registration(path: Path) -> Registration:
    """Read and check a registration file.

    :raises ConfirmError: unreadable YAML, an unknown or missing key (with the closest valid one), a bad value
    """
    data = yamlfile.load(path, ConfirmError)
    if not isinstance(data, dict):
        raise ConfirmError(f"{path}: expected a mapping (a file written by `confirm register`)")
    valid = _fields()
    for key in data:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            raise ConfirmError(f"{path}: unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    missing = [k for k in valid if k not in data and k != "planning"]
    if missing:
        raise ConfirmError(f"{path}: missing {', '.join(missing)}")
    reg = Registration(**data)
    reg.registered = str(reg.registered)   # an unquoted YAML timestamp loads as a datetime; str() gives TIME_FORMAT
    seeds = reg.seeds if isinstance(reg.seeds, list) else []
    if not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfirmError(f"{path}: seeds must be a list of >= 2 distinct non-negative integers, got {reg.seeds!r}")
    if len(seeds) < 2:
        raise ConfirmError(f"{path}: a t-test needs >= 2 seeds a side, got {seeds}")
    if reg.alternative not in scores.ALTERNATIVES:
        raise ConfirmError(f"{path}: alternative must be one of {', '.join(scores.ALTERNATIVES)}")
    if not (isinstance(reg.alpha, float) and 0 < reg.alpha < 1):
        raise ConfirmError(f"{path}: alpha must be a number between 0 and 1, got {reg.alpha!r}")
    if not isinstance(reg.protocol, dict) or set(reg.protocol) != set(reg.arms):
        raise ConfirmError(f"{path}: protocol must hold the settings of exactly {reg.method} and {reg.baseline}")
    return reg


def run_protocol(run: Run) -> dict:
    """What a run's ``config.yml`` fixes about training and scoring: PROTOCOL_KEYS and the hyperparameters."""
    hyper = {k: v for k, v in pinned(run.config.get("method"), run.config.get("hyperparams") or {}).items()
             if k not in IGNORED_HYPERPARAMS}
    return {**{k: run.config.get(k) for k in PROTOCOL_KEYS}, "hyperparams": hyper}


def protocol_differences(expected: dict, actual: dict) -> list[str]:
    """``key: expected -> actual`` for every setting that differs (hyperparameters by name)."""
    out = [f"{k}: {expected.get(k)!r} -> {actual.get(k)!r}" for k in PROTOCOL_KEYS if expected.get(k) != actual.get(k)]
    eh, ah = expected.get("hyperparams") or {}, actual.get("hyperparams") or {}
    out += [f"{k}: {eh.get(k)!r} -> {ah.get(k)!r}" for k in sorted(set(eh) | set(ah)) if eh.get(k) != ah.get(k)]
    return out


def _arm_protocol(runs: list[Run], arm: str) -> dict:
    """The protocol every complete exploratory run of ``arm`` shares.

    :raises ConfirmError: no complete run, or runs that disagree (named, with the setting)
    """
    done = [r for r in runs if r.method == arm and r.complete]
    if not done:
        raise ConfirmError(f"no complete run of {arm!r} to take its protocol from")
    first = run_protocol(done[0])
    for r in done[1:]:
        diffs = protocol_differences(first, run_protocol(r))
        if diffs:
            raise ConfirmError(f"the exploratory runs of {arm!r} disagree ({done[0].path} vs {r.path}: "
                               f"{'; '.join(diffs)}); register from runs made with one protocol")
    return first


def register(game: str, method: str, baseline: str, seeds: Sequence[int], alternative: str, alpha: float,
             roots: Sequence[Path], log_dirs: Sequence[Path] = ()) -> Registration:
    """Build the registration of ``method`` vs ``baseline`` on ``game`` from the exploratory runs under ``roots``.

    :raises ConfirmError: the game or an arm has no complete runs, a seed is not fresh, the runs disagree
    """
    if method == baseline:
        raise ConfirmError("the method and the baseline must differ")
    all_runs = load_runs(roots)
    games = sorted({r.game for r in all_runs})
    game_runs = [r for r in all_runs if r.game.lower() == game.lower()]
    if not game_runs:
        raise ConfirmError(f"no runs of game {game!r} under {', '.join(map(str, roots))} (games: {', '.join(games)})")
    game = game_runs[0].game
    methods = sorted({r.method for r in game_runs})
    for arm in (method, baseline):
        if arm not in methods:
            close = difflib.get_close_matches(arm, methods, n=1)
            raise ConfirmError(f"no runs of method {arm!r} on {game}" + (f" (did you mean {close[0]!r}?)" if close
                                                                         else "") + f"; methods: {', '.join(methods)}")
    seeds = list(seeds)
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ConfirmError(f"give >= 2 distinct seeds, got {seeds}")
    for root in [*roots, *log_dirs]:
        used = [d for d in (find_run_dirs(root) if Path(root).is_dir() else [])
                if d.parent.name in (method, baseline) and d.parent.parent.name.lower() == game.lower()
                and int(d.name[4:]) in seeds]
        if used:
            raise ConfirmError(f"seed {used[0].name[4:]} of {used[0].parent.name} on {game} has already been run "
                               f"({used[0]}): a confirmatory test needs seeds never run before for both arms")
    protocol = {arm: _arm_protocol(game_runs, arm) for arm in (method, baseline)}
    finals = {arm: [r.final_mean for r in game_runs if r.method == arm and r.complete] for arm in (method, baseline)}
    n = len(seeds)
    sd, dof = scores.pooled_std([[r.final_mean for r in game_runs if r.method == m and r.complete] for m in methods])
    planning = {"exploratory": {arm: {"n": len(v), "mean": round(float(np.mean(v)), 2)} for arm, v in finals.items()}}
    if min(len(v) for v in finals.values()) >= 2:
        w = scores.welch_difference(finals[method], finals[baseline])
        planning["exploratory"].update(diff=round(w["diff"], 2), p_two_sided=round(w["p"], 4))
        if dof:
            planning.update(
                pooled_std=round(sd, 2), pooled_std_dof=dof,
                power_at_exploratory_diff=round(scores.t_test_power(abs(w["diff"]) / sd, n, alpha, alternative), 3),
                detectable_at_80_percent_power=round(scores.detectable_difference(
                    sd, n, alpha, PLANNED_POWER, alternative), 1))
    direction = "higher than" if alternative == "greater" else "different from"
    seed_text = " ".join(map(str, seeds))
    command = (f"python -m rlzoo_transfer.sweep --games {game} --methods {method} {baseline} --seeds {seed_text}")
    return Registration(
        game=game, method=method, baseline=baseline, seeds=seeds, alternative=alternative, alpha=float(alpha),
        hypothesis=f"{method}'s final score on {game} is {direction} {baseline}'s (Welch's t-test on the final "
                   f"scores of seeds {seed_text}, {alternative}, alpha {alpha})",
        registered=time.strftime(TIME_FORMAT), commit=git_commit(), command=command, protocol=protocol,
        planning=planning)


def write_registration(reg: Registration, path: Path) -> None:
    """Write ``reg`` as YAML; never over an existing file (a registration is not edited after the fact)."""
    if path.exists():
        raise ConfirmError(f"{path} exists: a registration is fixed once written; choose another --out")
    header = ("# Pre-registered confirmatory test (python -m rlzoo_transfer.confirm). Commit it before its runs "
              "start;\n# do not edit: `confirm check` and `curves --confirm` evaluate exactly this.\n")
    write_atomic(path, header + yaml.safe_dump(asdict(reg), sort_keys=False))


@dataclass
class Cell:
    """One registered (arm, seed): its run if any, and its deviations from the registration."""

    arm: str
    seed: int
    run: Run | None
    deviations: list[str]

    @property
    def state(self) -> str:
        if self.run is None:
            return "not started"
        if self.run.complete:
            return f"{self.run.final_mean:.1f}"
        step = self.run.last_step
        return "running (no evaluation yet)" if step is None else f"incomplete (evaluated to step {step})"


def evaluate(reg: Registration, runs: Iterable[Run], path: Path | None = None) -> dict:
    """The registration's cells and, once every registered run is complete, its test.

    With the registration's ``path``, a run made at a commit that git knows and that does not contain that file
    is a deviation too (the strongest evidence of order the repository has: the run's code predates the plan).

    :return: ``dict(cells, complete, result)``; ``result`` is None while runs are missing, else
        ``welch_difference(method finals, baseline finals, alternative=reg.alternative)`` with ``rejected`` (p <
        alpha) added
    """
    by_key = {(r.game.lower(), r.method, r.seed): r for r in runs}
    cells = []
    for arm in reg.arms:
        for seed in reg.seeds:
            run = by_key.get((reg.game.lower(), arm, seed))
            deviations = []
            if run is not None and run.config:
                deviations = protocol_differences(reg.protocol[arm], run_protocol(run))
                started = str(run.config.get("started") or "")
                if started and started < reg.registered:
                    deviations.insert(0, f"started {started}, before the registration ({reg.registered})")
                deviations[:0] = [f"made at commit {c[:12]}, which does not contain {path}" for c in run.commits
                                  if path is not None and file_in_commit(c, path) is False]   # start, then resumes
            cells.append(Cell(arm, seed, run, deviations))
    complete = all(c.run is not None and c.run.complete for c in cells)
    result = None
    if complete:
        finals = {arm: [c.run.final_mean for c in cells if c.arm == arm] for arm in reg.arms}
        result = scores.welch_difference(finals[reg.method], finals[reg.baseline], confidence=1 - reg.alpha,
                                         alternative=reg.alternative)   # intervals at the test's level
        result["rejected"] = result["p"] < reg.alpha
    return dict(cells=cells, complete=complete, result=result)


def _power(reg: Registration, diff: float) -> float:
    """Power of the registered test at its seeds against a true difference ``diff`` (planning's pooled std)."""
    return scores.t_test_power(diff / reg.planning["pooled_std"], len(reg.seeds), reg.alpha, reg.alternative)


def section_lines(reg: Registration, path: Path, runs: list[Run]) -> list[str]:
    """Markdown for one registration: what was registered, each run's state, the test once complete."""
    ev = evaluate(reg, runs, path)
    cells = ev["cells"]
    done = sum(c.run is not None and c.run.complete for c in cells)
    plan = reg.planning or {}
    lines = [f"### {reg.game}: `{reg.method}` vs `{reg.baseline}`", "",
             f"Registered {reg.registered} at commit `{str(reg.commit)[:12]}` in `{path}`: {reg.hypothesis}. "
             f"Run with `python -m rlzoo_transfer.sweep --confirm {path}` (the registered protocol for each arm)."]
    if "detectable_at_80_percent_power" in plan:
        expl = plan["exploratory"]
        lines[-1] += (f" Planned from the exploratory runs ({reg.method} {expl[reg.method]['mean']} at "
                      f"{expl[reg.method]['n']} seeds, {reg.baseline} {expl[reg.baseline]['mean']} at "
                      f"{expl[reg.baseline]['n']}: {expl['diff']:+.1f}, two-sided p {expl['p_two_sided']:.3f}; "
                      f"pooled seed std {plan['pooled_std']}): {len(reg.seeds)} seeds a side detect "
                      f"{plan['detectable_at_80_percent_power']} with 80 % power and have power "
                      f"{plan['power_at_exploratory_diff']:.2f} against the exploratory difference, which its "
                      "selection as the largest of many inflates; against " + ", ".join(
                          f"{f * abs(expl['diff']):+.0f} ({f:.0%} of it): {_power(reg, f * abs(expl['diff'])):.2f}"
                          for f in SHRUNK) + ".")
    lines += ["", f"{done} of {len(cells)} registered runs complete.", ""]
    rows = [[seed, *(next(c for c in cells if c.arm == arm and c.seed == seed).state for arm in reg.arms)]
            for seed in reg.seeds]
    lines += md_table(["seed", f"`{reg.method}`", f"`{reg.baseline}`"], rows) + [""]
    deviations = [(c, d) for c in cells for d in c.deviations]
    if deviations:
        lines += ["Deviations from the registration (the test below is computed, but does not confirm as "
                  "registered):", ""] + [f"- `{c.arm}` seed {c.seed}: {d}" for c, d in deviations] + [""]
    r = ev["result"]
    if r is None:
        lines += [f"Test: pending until all {len(cells)} runs are complete (no interim p-value: stopping early when "
                  "it looks significant would break its alpha).", ""]
    else:
        verdict = ("**confirmed**" if r["rejected"] else "**not confirmed**") + (
            " (with deviations)" if deviations else "")
        level = f"{100 * (1 - reg.alpha):g} %"
        bound = (f"; the one-sided {level} bound that matches the test: > {r['bound']:+.1f}"
                 if reg.alternative == "greater" else "")
        lines += [f"Test: {reg.method} - {reg.baseline} = {r['diff']:+.1f} [two-sided {level} CI {r['low']:+.1f}, "
                  f"{r['high']:+.1f}{bound}], Welch {reg.alternative} p = {r['p']:.4f} at alpha {reg.alpha}: "
                  f"{verdict}.", ""]
    return lines


def summary_line(reg: Registration, path: Path, runs: list[Run]) -> str:
    """One line for the README: the registered comparison, how many of its runs are complete, the verdict."""
    ev = evaluate(reg, runs, path)
    done = sum(c.run is not None and c.run.complete for c in ev["cells"])
    sign = ">" if reg.alternative == "greater" else "vs"
    seeds = (f"{reg.seeds[0]}-{reg.seeds[-1]}" if reg.seeds == list(range(reg.seeds[0], reg.seeds[-1] + 1))
             else " ".join(map(str, reg.seeds)))
    head = (f"Pre-registered test ([`{path}`]({path})): `{reg.method}` {sign} `{reg.baseline}` on {reg.game}, "
            f"fresh seeds {seeds}: {done} of {len(ev['cells'])} runs complete")
    r = ev["result"]
    if r is None:
        return head + ", test pending."
    deviated = any(c.deviations for c in ev["cells"])
    verdict = "confirmed" if r["rejected"] else "not confirmed"
    return (head + f"; {r['diff']:+.1f}, Welch {reg.alternative} p = {r['p']:.4f}: **{verdict}**"
            + (" (with deviations, see report.md)." if deviated else "."))


def report_section(paths: Sequence[Path], runs: list[Run]) -> list[str]:
    """``## Confirmatory tests`` for ``report.md``: one subsection per registration file.

    :raises ConfirmError: an unreadable registration
    """
    if not paths:
        return []
    lines = ["## Confirmatory tests (pre-registered)", "",
             "Each test below was fixed in a registration file before its runs started (`python -m "
             "rlzoo_transfer.confirm`): one comparison, fresh seeds, one test, evaluated once all its runs are "
             "complete. Its runs are kept out of the exploratory tables and curves above, so that the sample that "
             "tests a hypothesis is not pooled with the one that suggested it.",
             ""]
    for path in paths:
        lines += section_lines(load_registration(path), Path(path), runs)
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rlzoo_transfer.confirm", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("register", help="write a registration from the exploratory runs (before the new runs)")
    r.add_argument("--game", required=True)
    r.add_argument("--method", required=True, help="run-folder name, e.g. hub or finetune-Riverraid")
    r.add_argument("--baseline", default="scratch", help="default: scratch")
    r.add_argument("--seeds", nargs="+", type=seed_arg, required=True, help="fresh seeds, e.g. 100 101 ... 107")
    r.add_argument("--alternative", choices=scores.ALTERNATIVES, default="two-sided",
                   help="greater: the one-sided test of method > baseline (default: two-sided)")
    r.add_argument("--alpha", type=float, default=0.05, help="default: 0.05")
    r.add_argument("--runs", nargs="+", type=Path, default=[Path("eval/runs")],
                   help="exploratory run roots (default: eval/runs)")
    r.add_argument("--log-dir", nargs="*", type=Path, default=[Path("runs")],
                   help="further roots where the seeds must not exist yet (default: runs)")
    r.add_argument("--out", type=Path, required=True, help="registration file to write, e.g. eval/confirm/X.yml")
    c = sub.add_parser("check", help="print the state of a registration and its test once complete")
    c.add_argument("registration", type=Path)
    c.add_argument("--runs", nargs="+", type=Path, default=[Path("eval/runs")], help="run roots (default: eval/runs)")
    return p


@one_line_interrupt
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "register":
        check_outputs(parser, args, files=("out",))
    try:
        if args.command == "register":
            if not 0 < args.alpha < 1:
                raise ConfirmError(f"--alpha must be between 0 and 1, got {args.alpha}")
            if args.out.exists():
                raise ConfirmError(f"{args.out} exists: a registration is fixed once written; choose another --out")
            reg = register(args.game, args.method, args.baseline, args.seeds, args.alternative, args.alpha,
                           args.runs, args.log_dir)
            write_registration(reg, args.out)
            diff = (reg.planning.get("exploratory") or {}).get("diff")
            if reg.alternative == "greater" and diff is not None and diff <= 0:
                print(f"warning: the exploratory runs point the other way ({reg.method} - {reg.baseline} = "
                      f"{diff:+.1f}); the registered test asks whether {reg.method} is higher", file=sys.stderr)
            print(f"wrote {args.out}; commit it before the runs start, then run:\n"
                  f"  python -m rlzoo_transfer.sweep --confirm {args.out}\n  (it gives each arm's runs the "
                  "registered protocol: steps, evaluation settings, hyperparameters)")
        else:
            reg = load_registration(args.registration)
            print("\n".join(section_lines(reg, args.registration, load_runs(args.runs))))
    except (ConfirmError, RunFolderError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
