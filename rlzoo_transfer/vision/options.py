"""The vision CLIs' settings, without torch: architecture and method names, the options every fine-tuning run
shares, the one-line argparse and the CLI driver.  ``classify``, ``landmarks`` and ``select`` parse their
arguments with these before importing torch, so ``--help`` and a mistyped option answer at once (0.2 s, not
the 3 s of loading torch); the training itself is in the modules :func:`cli_main` imports afterwards."""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from rlzoo_transfer.config import check_ranges as config_check_ranges
from rlzoo_transfer.config import seed_arg
from rlzoo_transfer.outputs import check_outputs
from rlzoo_transfer.stop import RunIncomplete, interrupted

ARCHS = ("resnet18", "resnet50", "small")
METHODS = ("scratch", "single", "zoo", "zoo-lite", "zoo-avg", "ensemble", "hub")
ZOO_METHODS = ("zoo", "zoo-lite", "zoo-avg")                          # the methods built of AdaAgg layers
ALIGN_STAGES = ("all", "official")   # where the zoo methods use channel alignment T (resnet.unaligned_convs)
BN_STATS = ("average", "reset")      # how the zoo network's BatchNorm running statistics start (resnet.zoo_resnet)
SCORES = ("lfc", "lgc", "leep", "nce", "logme", "h_score")          # select: the model-selection scores
REFERENCE_SCORES = ("rsa", "domain_similarity")   # select: scores that need more than the zoo and the target
ALL_SCORES = SCORES + REFERENCE_SCORES


class UnknownMethodError(ValueError):
    pass


class UsageError(Exception):
    """Bad input found before training starts (the CLIs print it as one line and exit with status 2)."""


def check_method(method: str) -> str:
    if method not in METHODS:
        raise UnknownMethodError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return method


def check_ranges(cfg: Any, positive: Sequence[str] = (), non_negative: Sequence[str] = ()) -> None:
    """UsageError naming every field of ``cfg`` out of its range (``--batch-size 0`` was a ValueError traceback deep in
    the data loader, ``--iters 0`` a "trained" model that never took a step): ``config.check_ranges``."""
    config_check_ranges(cfg, positive, non_negative, error=UsageError)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr and exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


@dataclass(kw_only=True)
class FineTuneConfig:
    """The fields every vision fine-tuning run has: its data, zoo and method (:func:`add_method_args`) and its life
    (:func:`add_run_args`).  A CLI's config subclasses it with its task's fields and its ``out`` default (the run
    folder has none here); keyword-only, so fields with and without defaults may come in any order."""
    data: str
    zoo: list = field(default_factory=list)
    sha256: list = field(default_factory=list)
    method: str = "zoo"
    arch: str = "resnet50"
    width: int = 16
    no_align: bool = False
    align_stages: str = "all"
    bn_stats: str = "average"
    hub_k: int = 2
    hub_lambda: float = 0.1
    seed: int = 0
    out: str
    resume: bool = False
    save_every: int = 1000
    log_every: int = 50
    eval_every: int = 0
    device: str = "auto"
    workers: int = 0
    threads: int = 0
    tensorboard: bool = True
    progress: bool = True


def add_method_args(p: argparse.ArgumentParser, d: FineTuneConfig) -> None:
    """The zoo, its architecture and the transfer method of a vision fine-tuning CLI, with ``d``'s defaults."""
    p.add_argument("--zoo", nargs="*", default=[], help="torchvision-format state_dicts of --arch (the sources)")
    p.add_argument("--arch", default=d.arch, help=f"one of {', '.join(ARCHS)} (default {d.arch})")
    p.add_argument("--width", type=int, default=d.width, help=f"base width of --arch small (default {d.width})")
    p.add_argument("--sha256", nargs="*", default=[], help="expected sha256 (or >= 8-digit prefix) per --zoo file")
    p.add_argument("--method", default=d.method, help=f"one of {', '.join(METHODS)} (default {d.method})")
    p.add_argument("--no-align", action="store_true", help="zoo methods without channel alignment (w/o T)")
    p.add_argument("--align-stages", choices=ALIGN_STAGES, default=d.align_stages,
                   help="zoo methods: T in every stage (all, the paper's description) or only in the stem and the "
                   f"last two stages (official, thuml/Zoo-Tuning's ResNet-50); default {d.align_stages}")
    p.add_argument("--bn-stats", choices=BN_STATS, default=d.bn_stats,
                   help="zoo methods: BatchNorm running statistics averaged over the sources (average) or reset to "
                   f"0 / 1 (reset, the official code); default {d.bn_stats}")
    p.add_argument("--hub-k", type=int, default=d.hub_k, help=f"hub: models activated per sample (default {d.hub_k})")
    p.add_argument("--hub-lambda", type=float, default=d.hub_lambda,
                   help=f"hub: explore-loss weight (default {d.hub_lambda})")


def check_choices(cfg: FineTuneConfig) -> None:
    """The run's ``--method`` and ``--arch`` name ones that exist (UnknownMethodError / ValueError otherwise)."""
    check_method(cfg.method)
    if cfg.arch not in ARCHS:
        raise ValueError(f"unknown --arch {cfg.arch!r}; choose from {', '.join(ARCHS)}")
    zoo_only = [flag for flag, used in (("--no-align", cfg.no_align), ("--align-stages", cfg.align_stages != "all"),
                                        ("--bn-stats", cfg.bn_stats != "average")) if used]
    if zoo_only and cfg.method not in ZOO_METHODS:
        raise UsageError(f"{zoo_only[0]} applies to the zoo methods ({', '.join(ZOO_METHODS)}), not to "
                         f"--method {cfg.method}")
    if cfg.no_align and cfg.align_stages != "all":
        raise UsageError("--align-stages chooses where T is used; --no-align uses it nowhere: give one of them")


def add_run_args(p: argparse.ArgumentParser, d: FineTuneConfig) -> None:
    """The options of a vision fine-tuning run's life (seed, run folder, checkpoints, logging, device), with ``d``'s
    defaults."""
    p.add_argument("--seed", type=seed_arg, default=d.seed)
    p.add_argument("--out", default=d.out, help=f"run folder (default {d.out}); one that holds a run needs --resume")
    p.add_argument("--resume", action="store_true", help="continue OUT's run from OUT/checkpoint.pt if it exists "
                   "(a finished run is left as it is)")
    p.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint period in iterations")
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="test-set evaluation period (0: at the end)")
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda[:i]")
    p.add_argument("--workers", type=int, default=d.workers, help="data-loading processes (0: in the main one)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")
    p.add_argument("--no-progress", dest="progress", action="store_false")


#: The files a vision run writes in its folder ``--out`` (besides ``tb/``): any of them there means a run started
#: there, ``results.json`` (written last) that it finished.
RUN_FILES = ("results.json", "model.pt", "checkpoint.pt", "config.json")


def check_run_folder(out: str | Path, resume: bool) -> bool:
    """Whether ``out`` holds a finished run (``results.json``); without ``resume``, UsageError if it holds any run
    (one of :data:`RUN_FILES`), finished or not, so that a re-run never replaces one.  A missing or empty folder, or
    one with only other files (notes, a ``tb/`` alone), is free.  Reads only (torch-free, before any work)."""
    out = Path(out)
    held = [name for name in RUN_FILES if (out / name).exists()]
    finished = "results.json" in held
    if held and not resume:
        if finished:
            raise UsageError(f"{out} already holds a finished run (results.json); choose another --out")
        raise UsageError(f"{out} holds an unfinished run ({', '.join(held)}); continue it with --resume, or use "
                         "another --out")
    return finished


def cli_main(parser: argparse.ArgumentParser, make_config: Callable[[dict], Any], run: Callable[[Any], dict],
             keys: Sequence[str], argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run, print the results' ``keys`` as one JSON line; a UsageError (among them an ``--out``
    holding a run, without ``--resume``: :func:`check_run_folder`) is one line on stderr and exit status 2, a stop by
    a signal (:class:`~rlzoo_transfer.stop.RunIncomplete`) one line and 128 + its number, a second Ctrl-C one line
    and 130.  ``--resume`` on a finished run trains and writes nothing (``run`` returns its results.json, once its
    checkpoint agrees with the settings): a ``done:`` line on stderr, its results' line, status 0.  ``run`` imports
    the training stack itself, after the parse."""
    args = parser.parse_args(argv)
    check_outputs(parser, args, folders=("out",))
    cfg = make_config(vars(args))
    try:
        finished = check_run_folder(args.out, args.resume)
        results = run(cfg)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunIncomplete as e:
        print(str(e), file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        ck_path = Path(args.out) / "checkpoint.pt"
        return interrupted([ck_path] if ck_path.exists() else [])
    if finished:
        lacking = [k for k in keys if k not in results]
        if lacking:
            print(f"error: {Path(args.out) / 'results.json'} lacks {', '.join(lacking)}: not this command's results; "
                  "restore it, or run again into another --out", file=sys.stderr)
            return 2
        print(f"done: {args.out} already holds a finished run (results.json): nothing to resume", file=sys.stderr)
    print(json.dumps({k: results[k] for k in keys}))
    return 0
