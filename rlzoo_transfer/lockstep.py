"""Train several runs in lock-step in one process: ``python -m rlzoo_transfer.lockstep``.

    python -m rlzoo_transfer.lockstep --games Alien Jamesbond --methods scratch --seeds 0 1 2 3 [train options]

trains every (game, method, seed) combination as one group (``rl/lockstep.py``): one stacked network update for
all agents per step, each agent with its own env, replay and run folder - the same folders and files as
``python -m rlzoo_transfer.train`` writes, so ``curves`` and ``--resume`` of a single run work unchanged.  The
agents must share a network shape (the same method and number of actions; hub and kflow cannot) - a clear error
otherwise.  Finished runs (``final.json``) are skipped; with ``--resume`` interrupted ones continue from their
checkpoints.  ``sweep --lockstep K`` groups a sweep's runs into such groups of at most K.
"""
from __future__ import annotations

import argparse
import sys

from rlzoo_transfer.config import parse_overrides, progress_bar_wanted, seed_arg
from rlzoo_transfer.outputs import check_outputs
from rlzoo_transfer.train import add_run_options

PROG = "python -m rlzoo_transfer.lockstep"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--games", nargs="+", default=[], help="Atari games (networks need equal action counts)")
    p.add_argument("--methods", nargs="+", default=["scratch"],
                   help="methods, NAME or NAME:SOURCE (finetune:Seaquest); all of one network shape")
    p.add_argument("--seeds", nargs="+", type=seed_arg, default=[0])
    p.add_argument("--runs", nargs="+", default=[], metavar="GAME:METHOD[:SOURCE]:SEED",
                   help="an explicit list of runs instead of the product of --games, --methods and --seeds "
                        "(what sweep --lockstep passes), e.g. Alien:scratch:0 Alien:finetune:Seaquest:1")
    add_run_options(p)
    p.add_argument("--log-every", type=float, default=60.0, metavar="SECONDS",
                   help="without a progress bar (--no-progress, or stderr not a terminal): seconds between log lines "
                        "(steps/s per agent, ETA; default 60)")
    p.add_argument("--sample-threads", type=int, default=None, metavar="N",
                   help="threads that sample the agents' replays (default: min(agents, CPU cores); 1 = serial). "
                        "Several lock-step processes on one machine may want fewer, e.g. cores / processes")
    return p


def parse_runs(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """(game, method text, seed) of every run: ``--runs`` items, else the product of games x methods x seeds."""
    from rlzoo_transfer.config import MAX_SEED, ConfigError

    if args.runs:
        out = []
        for item in args.runs:
            parts = item.split(":")
            try:
                seed = seed_arg(parts[-1]) if len(parts) in (3, 4) and all(parts) else None
            except argparse.ArgumentTypeError:
                seed = None
            if seed is None:
                raise ConfigError(f"bad --runs item {item!r}: expected GAME:METHOD:SEED or GAME:METHOD:SOURCE:SEED "
                                  f"(seed 0 to {MAX_SEED})")
            out.append((parts[0], ":".join(parts[1:-1]), seed))
        return out
    if not args.games:
        raise ConfigError("give --games (with --methods and --seeds) or --runs")
    return [(g, m, s) for g in args.games for m in args.methods for s in args.seeds]


def check_group(specs) -> None:
    """LockstepError, before any run folder is written, unless ``specs`` can train as one group."""
    check_action_counts(specs)
    check_distinct(specs)
    check_planned_totals(specs)


def check_planned_totals(specs) -> None:
    """LockstepError unless every spec is planned for the same total of steps (``run.planned_steps``: a resume
    without ``--steps`` continues to its ``config.yml``'s), before any run folder is written: the group steps to
    agent 0's total, so a run planned for another would stop short of it or train past it."""
    from rlzoo_transfer.rl.lockstep import LockstepError
    from rlzoo_transfer.run import planned_steps, run_folder

    if len({planned_steps(spec) for spec in specs}) > 1:
        plans = ", ".join(f"{run_folder(spec)} {spec.steps}" for spec in specs)
        raise LockstepError(f"the agents are planned for different totals of steps ({plans}); give --steps, or "
                            "resume them as single runs")


def run_lockstep(specs, progress: bool = True, log_every: float = 60.0, sample_threads: int | None = None) -> list:
    """Prepare, train in lock-step and finish ``specs`` (``run.RunSpec``s); returns their run folders.

    Every run is finished (final evaluation) or, at a time limit or a stop, checkpointed before any error is raised.
    """
    from rlzoo_transfer.rl.checkpoint import find_checkpoint
    from rlzoo_transfer.rl.evaluation import EvaluationStopped
    from rlzoo_transfer.rl.lockstep import Lockstep
    from rlzoo_transfer.run import (RunIncomplete, finish_run, prepare_run, refusals_in_writer_threads,
                                    stop_incomplete)
    from rlzoo_transfer.stop import stop_on_signals

    check_group(specs)
    runs, stopped = [], {}   # stopped: id(run) -> its RunIncomplete
    try:
        for spec in specs:
            runs.append(prepare_run(spec))
        with stop_on_signals() as stop, refusals_in_writer_threads():
            for r in runs:
                r.callback.stop = stop
            try:
                Lockstep(runs, progress=progress, log_every=log_every, sample_threads=sample_threads).learn()
                evaluating = False
            except EvaluationStopped:   # every agent is at the same step, before its update
                evaluating = True
            for r in runs:  # checkpoints inside the handlers: a sweep's SIGTERM must not cut them short
                try:
                    stop_incomplete(r, during_evaluation=evaluating)
                except RunIncomplete as e:
                    stopped[id(r)] = e
            done = []
            for r in runs:   # a stop during one final evaluation stops the ones after it at their first game step
                if id(r) not in stopped:
                    try:
                        done.append(finish_run(r))
                    except RunIncomplete as e:
                        stopped[id(r)] = e
    except BaseException:
        for r in runs:
            r.env.close()
        raise
    if stopped:   # one message for the group: the runs share the reason and the step
        first = next(iter(stopped.values()))
        saved = [str(r.run_dir) for r in runs if id(r) in stopped and find_checkpoint(r.run_dir)]
        where = f"checkpoints in {', '.join(saved)}" if saved else "no checkpoints yet: they start afresh"
        raise RunIncomplete(f"{first.reason} ({where})", first.exit_status, first.reason)
    return done


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)   # before the RL stack's imports: --help and a usage error are instant
    check_outputs(p, args, folders=("log_dir",))
    from rlzoo_transfer.config import ConfigError, check_ranges, check_threads, resolve_device
    from rlzoo_transfer.games import UnknownGameError, resolve_game
    from rlzoo_transfer.rl.lockstep import LockstepError
    from rlzoo_transfer.rl.registry import UnknownMethodError, get_method
    from rlzoo_transfer.run import (RunError, RunIncomplete, RunSpec, command_line, interrupted, run_folder,
                                    write_refused)
    from rlzoo_transfer.threads import threads_chosen
    from rlzoo_transfer.zoo import ZooError

    command = command_line(PROG, argv)
    specs = []
    try:
        import torch

        check_threads(args.threads)
        device = resolve_device(args.device)
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        check_ranges(args, positive=("steps", "eval_freq", "eval_episodes", "final_eval_episodes", "log_every",
                                     "sample_threads"))
        overrides = parse_overrides(args.hyperparams)
        for game, text, seed in parse_runs(args):
            game = resolve_game(game)[0]
            name, _, source = text.partition(":")
            method = get_method(name)
            if method.needs_source and not source:
                raise UnknownMethodError(f"method {name} needs a source: write {name}:Seaquest")
            if not method.lockstep:
                raise LockstepError(f"method {name} has an auxiliary loss and cannot train in lock-step; "
                                    f"use python -m rlzoo_transfer.train --method {name}")
            spec = RunSpec(game=game, method=name, seed=seed, steps=args.steps, eval_freq=args.eval_freq,
                           eval_episodes=args.eval_episodes, final_eval_episodes=args.final_eval_episodes,
                           log_dir=args.log_dir, hyperparams=dict(overrides), source=source or None,
                           device=device, resume=args.resume, progress_bar=False, command=command,
                           share_cores=not threads_chosen(args.threads))
            if (run_folder(spec) / "final.json").exists():
                print(f"skip {run_folder(spec)}: final.json exists", file=sys.stderr)
                continue
            specs.append(spec)
        if not specs:
            print("nothing to train: every run is finished")
            return 0
        dirs = run_lockstep(specs, progress=progress_bar_wanted(args.no_progress), log_every=args.log_every,
                            sample_threads=args.sample_threads)
    except (ConfigError, UnknownGameError, UnknownMethodError, RunError, ZooError, LockstepError,
            FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunIncomplete as e:  # a time limit (3) or SIGINT / SIGTERM (128 + its number): checkpointed
        print(str(e), file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training began
        return interrupted([run_folder(spec) for spec in specs])
    except OSError as e:  # a full disk, say: the files written so far are complete
        return write_refused(e, [run_folder(spec) for spec in specs])
    from rlzoo_transfer.run import summarize_after_run

    for d in dirs:
        print(f"done: {d}")
        summarize_after_run(d)
    return 0


def check_distinct(specs) -> None:
    """LockstepError, before any run folder is written, for a run listed twice (``--seeds 0 0``, or ``JamesBond``
    beside ``Jamesbond``): both agents would write the same folder."""
    from collections import Counter

    from rlzoo_transfer.rl.lockstep import LockstepError
    from rlzoo_transfer.run import run_folder

    twice = [str(folder) for folder, n in Counter(run_folder(spec) for spec in specs).items() if n > 1]
    if twice:
        raise LockstepError(f"{', '.join(twice)} is listed more than once in this group: each run of a group needs "
                            "its own game, method or seed")


def check_action_counts(specs) -> None:
    """LockstepError, before any run folder is written, for games with different numbers of actions: their output
    layers differ, so their networks cannot be stacked (``rl.lockstep.check_compatible`` would find it only after
    each run's ``config.yml`` was written)."""
    from rlzoo_transfer.games import action_meanings
    from rlzoo_transfer.rl.lockstep import LockstepError

    counts = {spec.game: len(action_meanings(spec.game)) for spec in specs}
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{game} {n}" for game, n in counts.items())
        raise LockstepError(f"games with different numbers of actions ({listed}) cannot share one lock-step group: "
                            "run them in separate groups (e.g. Alien and Jamesbond have 18, Gopher 8)")


if __name__ == "__main__":
    sys.exit(main())
