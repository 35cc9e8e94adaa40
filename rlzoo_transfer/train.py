"""The main job: ``python -m rlzoo_transfer.train --game Alien --method zoo``.

Trains DER (with the chosen transfer method) for 100k agent steps under the Atari 100k protocol, evaluating every
``--eval-freq`` steps, and writes ``<log-dir>/<Game>/<method>/seed<k>/`` (see rlzoo_transfer/run.py).
Bad input (unknown game / method / hyperparameter, missing zoo, existing results) is a one-line error, exit 2.
"""
from __future__ import annotations

import argparse
import sys

from rlzoo_transfer.config import parse_overrides, progress_bar_wanted, seed_arg
from rlzoo_transfer.outputs import check_outputs


def parser(prog: str = "python -m rlzoo_transfer.train") -> argparse.ArgumentParser:
    from rlzoo_transfer.rl.registry import METHODS

    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--game", required=True, help="Atari game, e.g. Alien, Gopher, Jamesbond (any ALE game)")
    p.add_argument("--method", default="scratch", help=f"one of: {', '.join(METHODS)} (default scratch)")
    p.add_argument("--source", default=None, help="source game of --method finetune, a source of the zoo "
                   "(shipped: Seaquest, Riverraid; another zoo: -p zoo_dir=DIR)")
    p.add_argument("--seed", type=seed_arg, default=0)
    add_run_options(p)
    return p


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options every run has (train and lockstep share them)."""
    p.add_argument("--steps", type=int, default=None,
                   help="agent steps (default 100000; with --resume, the run's planned total, config.yml's steps)")
    p.add_argument("--eval-freq", type=int, default=10_000, help="agent steps between evaluations")
    p.add_argument("--eval-episodes", type=int, default=10, help="episodes per periodic evaluation")
    p.add_argument("--final-eval-episodes", type=int, default=100, help="episodes of the final evaluation")
    p.add_argument("--log-dir", default="runs", help="runs go to LOG_DIR/<Game>/<method>/seed<k>/")
    p.add_argument("-p", "--hyperparams", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override agents/*.yml values, e.g. -p learning_rate=2e-4 compile=true")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:N, mps, auto")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its checkpoint")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default: torch's, one per core - or the run's share of the "
                   "cores while other training processes run)")
    p.add_argument("--no-progress", action="store_true",
                   help="a progress line a minute instead of the bar (the default when stderr is not a terminal)")


def main(argv: list[str] | None = None, prog: str = "python -m rlzoo_transfer.train", **spec_defaults) -> int:
    p = parser(prog)
    args = p.parse_args(argv)   # before the RL stack's imports: --help and a usage error are instant
    check_outputs(p, args, folders=("log_dir",))
    from rlzoo_transfer.config import ConfigError, check_ranges, check_threads, resolve_device
    from rlzoo_transfer.games import UnknownGameError
    from rlzoo_transfer.rl.registry import UnknownMethodError, get_method
    from rlzoo_transfer.run import (RunError, RunIncomplete, RunSpec, command_line, finished_at, interrupted,
                                    planned_steps, run_folder, run_training, write_refused)
    from rlzoo_transfer.threads import threads_chosen
    from rlzoo_transfer.zoo import ZooError

    folder = None
    try:
        import torch

        check_threads(args.threads)
        device = resolve_device(args.device)
        if args.threads > 0:
            torch.set_num_threads(args.threads)
        method = get_method(args.method)
        if method.needs_source and not args.source:
            raise UnknownMethodError(f"--method {args.method} needs --source (e.g. --source Seaquest)")
        if args.source and not method.needs_source:
            raise UnknownMethodError(f"--method {args.method} takes no --source (only finetune does); "
                                     f"its sources are the zoo's (-p sources=...)")
        check_ranges(args, positive=("steps", "eval_freq", "eval_episodes", "final_eval_episodes"))
        spec = RunSpec(game=args.game, method=args.method, seed=args.seed, steps=args.steps,
                       eval_freq=args.eval_freq, eval_episodes=args.eval_episodes,
                       final_eval_episodes=args.final_eval_episodes, log_dir=args.log_dir,
                       hyperparams=parse_overrides(args.hyperparams), source=args.source, device=device,
                       resume=args.resume, progress_bar=progress_bar_wanted(args.no_progress),
                       command=command_line(prog, argv), share_cores=not threads_chosen(args.threads),
                       **spec_defaults)
        folder = run_folder(spec)
        finished = finished_at(folder) if args.resume else None
        if finished is not None and finished >= planned_steps(spec):  # the final evaluation would only be redone
            print(f"done: {folder} (finished at step {finished}: nothing to resume)")
            return 0
        run_dir = run_training(spec)
    except (ConfigError, UnknownGameError, UnknownMethodError, RunError, ZooError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunIncomplete as e:  # SIGINT / SIGTERM during training: checkpointed at the step reached
        print(str(e), file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training began
        return interrupted([folder] if folder else [])
    except OSError as e:  # a full disk, say: the files written so far are complete
        return write_refused(e, [folder] if folder else [])
    print(f"done: {run_dir}")
    from rlzoo_transfer.run import summarize_after_run

    report = summarize_after_run(run_dir)
    if report is not None:
        print(f"report: {report} (curve: {run_dir / 'curve.png'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
