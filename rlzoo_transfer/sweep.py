"""Run every combination of games x methods x seeds of ``python -m rlzoo_transfer.train``.

    python -m rlzoo_transfer.sweep --games Alien Gopher Jamesbond --methods scratch zoo hub --seeds 0 1 2 3 4 \\
        [--steps 100000] [--log-dir runs] [--jobs N] [--dry-run] [-- <extra train arguments>]
    python -m rlzoo_transfer.sweep ... --backend ray --address auto

Each run is the subprocess ``sys.executable -m rlzoo_transfer.train --game G --method M --seed S --log-dir D
[--steps N] [--source X] [--resume] <extra>`` with stdout and stderr appended to ``<run dir>/train.log``, the run
folder being ``<log dir>/<Game>/<method folder>/seed<k>/`` exactly as train writes it.

* A method ``name:Source`` (e.g. ``finetune:Seaquest``) becomes ``--method name --source Source`` and the folder
  ``name-Source`` (``finetune-Seaquest``); that folder spelling is accepted as the method too.  Games are
  canonicalised as train does (``JamesBond`` -> ``Jamesbond``, ``games.resolve_game``); an unknown game is an
  error before anything runs.
* A run whose folder holds ``final.json`` is skipped.  A run whose folder already exists without it (an
  interrupted run) gets ``--resume``.  A fresh run is started without ``--resume``; note that the sweep creates
  its folder (for ``train.log``) just before starting it.
* A run counts as done when train exits 0 *and* ``final.json`` exists, failed otherwise.
* Local backend (default; both in :mod:`rlzoo_transfer.backends`): at most ``--jobs`` (default ``max(1, cpu_count
  // 2)``) runs at a time, each with ``OMP_NUM_THREADS = max(1, cpu_count // (jobs + other training processes
  already running))`` unless the environment sets it (a second sweep beside a first would otherwise oversubscribe
  the cores).
  Ray backend (``pip install 'rlzoo_transfer[ray]'``): the same commands as Ray tasks on an existing cluster
  (``--address``, e.g. ``auto``), each reserving ``--cpus-per-run`` / ``--gpus-per-run``; the workers must see the
  same file system (log dir) and have the package installed.
* A live table (rich) shows each run's status (pending / running / done / failed / skipped) and the last
  evaluation step found in its ``evaluations.csv``.

* Train's arguments after ``--`` are checked before any run starts, as train would check them (exit 2, not one
  failed run per seed): unknown options, ``-p`` keys and values for every method swept, each method's zoo sources
  against the zoo's ``zoo.yml`` (torch-free), and - only where ``-p`` sets a network setting (``hidden``, hub's
  ``k``, zoo's ``gate_norm`` ...) - the network itself, built once per (game, method, source) as train builds it
  (this alone loads torch).  The options the sweep sets itself (``--game``, ``--method``, ``--source``, ``--seed``,
  ``--log-dir``, ``--steps``, ``--resume``) are refused there, naming the sweep option to use.

``--confirm YML`` runs the game, methods and seeds of a pre-registered test (:mod:`rlzoo_transfer.confirm`), each
arm with its registered protocol (``--steps``, ``--eval-freq``, ``--eval-episodes``, ``--final-eval-episodes``, and
``-p`` for each hyperparameter off the method's defaults), and refuses to start until the registration is committed
(both in :mod:`rlzoo_transfer.sweep_checks`: ``registered_arguments``, ``take_registration``).

What runs (jobs, commands, skip / resume, lock-step groups) is planned in :mod:`rlzoo_transfer.sweep_plan`, train's
arguments are judged in :mod:`rlzoo_transfer.sweep_checks`; this module runs the plan and is the CLI.

Exit status: 0 when no run failed, 1 when one did (the summary lists them and their logs), 2 for bad arguments
or a missing Ray; 130 on Ctrl-C (the runs started are terminated; rerun the same command to resume them).
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

from rlzoo_transfer.backends import BackendError, LocalBackend, RayBackend
from rlzoo_transfer.config import seed_arg
from rlzoo_transfer.outputs import check_outputs
from rlzoo_transfer.sweep_checks import (check_networks, check_pending_sources, check_train_arguments,
                                         take_registration)
from rlzoo_transfer.sweep_plan import (DONE, FAILED, PENDING, RUNNING, SKIPPED, Job, RunSpec, SweepError,
                                       canonical_game_name, lockstep_groups, parse_method, plan, train_args)
from rlzoo_transfer.threads import other_training_processes, threads_per_run

__all__ = ["DONE", "FAILED", "PENDING", "RUNNING", "SKIPPED", "Job", "RunSpec", "SweepError", "canonical_game_name",
           "lockstep_groups", "parse_method", "plan", "train_args", "last_eval_step", "main"]

_ORDER = (RUNNING, FAILED, PENDING, DONE, SKIPPED)
_STYLE = {PENDING: "dim", RUNNING: "cyan", DONE: "green", FAILED: "bold red", SKIPPED: "yellow"}


def last_eval_step(run_dir: Path) -> int | None:
    """Step of the last complete row of ``run_dir/evaluations.csv``; None when there is none yet."""
    path = run_dir / "evaluations.csv"
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines[1:]):
        head = line.split(",", 1)[0].strip()
        try:
            return int(float(head))
        except ValueError:
            continue
    return None


# ------------------------------------------------------------------------------------------- execution


def _finish(job: Job, rc: int) -> None:
    """Record a run's end: done when it exited 0 and wrote ``final.json``."""
    job.returncode, job.ended = rc, time.monotonic()
    job.last_step = last_eval_step(job.run_dir)
    if rc == 0 and (job.run_dir / "final.json").is_file():
        job.status = DONE
    else:
        job.status = FAILED
        job.note = f"exit {rc}" if rc != 0 else "exit 0 but no final.json"


def _elapsed(job: Job) -> str:
    """``m:ss`` since the run started, blank before."""
    if job.started is None:
        return ""
    secs = int((job.ended or time.monotonic()) - job.started)
    return f"{secs // 60}:{secs % 60:02d}"


def render_table(jobs: Sequence[Job], title: str = "sweep"):
    """rich Table of the jobs (running and failed first): run, status, last evaluation step, elapsed, note."""
    from rich.table import Table

    counts = "  ".join(f"{s}: {n}" for s in _STYLE if (n := sum(j.status == s for j in jobs)))
    table = Table(title=f"{title}  ({counts})")
    table.add_column("run", no_wrap=True)
    for col in ("status", "last eval step", "elapsed", "note"):
        table.add_column(col)
    for job in sorted(jobs, key=lambda j: _ORDER.index(j.status)):
        step = "" if job.last_step is None else str(job.last_step)
        note = job.note or ("resume" if job.resume and job.status in (PENDING, RUNNING) else "")
        table.add_row(job.spec.name, f"[{_STYLE[job.status]}]{job.status}[/]", step, _elapsed(job), note)
    return table


def execute(jobs: list[Job], backend, parallel: int, live=None, poll: float = 0.2, echo=None) -> None:
    """Run the pending jobs, at most ``parallel`` at a time, refreshing ``live`` (a rich Live) while waiting.

    :param echo: optional ``callable(str)`` told of each start and end (plain logging without a live table)
    """
    queue = [j for j in jobs if j.status == PENDING and not j.led]
    running: dict[int, Job] = {}
    try:
        while queue or running:
            while queue and len(running) < parallel:
                job = queue.pop(0)
                for member in job.group:
                    member.status, member.started = RUNNING, time.monotonic()
                running[backend.submit(job)] = job
                if echo:
                    echo(f"start {job.spec.name}: {shlex.join(job.command())}")
            for handle, rc in backend.wait(list(running), timeout=poll):
                job = running.pop(handle)
                for member in job.group:
                    _finish(member, rc)
                    if echo:
                        echo(f"{member.status} {member.spec.name} ({member.note or 'ok'}, {_elapsed(member)})")
            for job in running.values():
                for member in job.group:
                    member.last_step = last_eval_step(member.run_dir)
            if live is not None:
                live.update(render_table(jobs))
    except KeyboardInterrupt:
        backend.cancel()
        for job in running.values():
            for member in job.group:
                member.status, member.note = FAILED, "interrupted"
        raise


def summary(jobs: Sequence[Job]) -> str:
    """Counts per status and one line per failed run with its log."""
    counts = ", ".join(f"{sum(j.status == s for j in jobs)} {s}" for s in (DONE, SKIPPED, FAILED, PENDING)
                       if any(j.status == s for j in jobs))
    lines = [f"sweep: {len(jobs)} runs: {counts}"]
    lines += [f"  FAILED {j.spec.name}: {j.note}; log: {j.log_path}" for j in jobs if j.status == FAILED]
    return "\n".join(lines)


def dry_run_text(jobs: Sequence[Job], threads: str | None = None) -> str:
    """The commands the sweep would run, one per line, skipped runs commented; ``threads`` (a local sweep's
    ``OMP_NUM_THREADS`` per run) prefixes each, so that a line run by hand trains as the sweep's run would."""
    prefix = f"OMP_NUM_THREADS={shlex.quote(threads)} " if threads is not None else ""
    lines = []
    for job in jobs:
        if job.status == SKIPPED:
            lines.append(f"# skip {job.spec.name}: {job.note}")
        elif job.led:
            lines.append(f"# {job.spec.name}: {job.note}")
        else:
            lines.append(f"{prefix}{shlex.join(job.command())} >> {shlex.quote(str(job.log_path))} 2>&1")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    """Command-line arguments of ``python -m rlzoo_transfer.sweep`` (train's extra arguments go after ``--``)."""
    p = argparse.ArgumentParser(prog="python -m rlzoo_transfer.sweep",
                                description="Run games x methods x seeds of rlzoo_transfer.train; "
                                            "arguments after -- are passed to every train run.")
    p.add_argument("--games", nargs="+", help="games, e.g. Alien Gopher Jamesbond")
    p.add_argument("--methods", nargs="+",
                   help="methods, e.g. scratch zoo hub finetune:Seaquest "
                        "(NAME:SOURCE or the folder name NAME-SOURCE -> --method NAME --source SOURCE)")
    p.add_argument("--seeds", nargs="+", type=seed_arg, help="seeds, e.g. 0 1 2 3 4")
    p.add_argument("--confirm", type=Path, default=None, metavar="YML",
                   help="run the runs of a pre-registered test (python -m rlzoo_transfer.confirm register) instead "
                        "of --games/--methods/--seeds; refused until the registration is committed")
    p.add_argument("--steps", type=int, default=None, help="agent steps per run (default: train's default)")
    p.add_argument("--log-dir", type=Path, default=Path("runs"), help="run root (default: runs)")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs at a time (default: max(1, cpu_count // 2) locally, "
                        "cluster CPUs / --cpus-per-run on Ray)")
    p.add_argument("--backend", choices=("local", "ray"), default="local", help="where to run (default: local)")
    p.add_argument("--address", default=None, help="Ray cluster address, e.g. auto or ray://host:10001 (ray backend)")
    p.add_argument("--cpus-per-run", type=float, default=1, help="CPUs reserved per Ray task (default: 1)")
    p.add_argument("--gpus-per-run", type=float, default=0, help="GPUs reserved per Ray task (default: 0)")
    p.add_argument("--lockstep", type=int, default=0, metavar="K",
                   help="train up to K compatible runs (same method, same number of actions) in one process, "
                        "in lock-step (python -m rlzoo_transfer.lockstep); hub and kflow runs stay single")
    p.add_argument("--sample-threads", type=int, default=None, metavar="N",
                   help="with --lockstep: threads that sample the group's replay buffers "
                        "(lockstep --sample-threads; default: lockstep's)")
    p.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    p.add_argument("--no-live", action="store_true", help="plain log lines instead of the live table")
    p.add_argument("--train-module", default="rlzoo_transfer.train", help=argparse.SUPPRESS)
    return p


def split_extra(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split ``argv`` at the first ``--``: (sweep arguments, arguments passed through to train)."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and check the sweep's arguments; ``args.extra`` holds train's pass-through arguments."""
    parser = build_parser()
    own, extra = split_extra(argv)
    args = parser.parse_args(own)
    args.extra, args.method_extra = extra, {}
    check_outputs(parser, args, folders=("log_dir",))   # a dry run too: it shows what a real run would do
    if args.confirm is not None:
        take_registration(args, parser)
    elif not (args.games and args.methods and args.seeds):
        parser.error("give --games, --methods and --seeds (or --confirm YML)")
    if args.jobs is not None and args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if args.address and args.backend != "ray":
        parser.error("--address needs --backend ray")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    if args.lockstep < 0:
        parser.error("--lockstep must be >= 0")
    if args.sample_threads is not None:
        if args.sample_threads < 1:
            parser.error(f"--sample-threads must be a positive number of threads, got {args.sample_threads}")
        if args.lockstep < 2:
            parser.error("--sample-threads needs --lockstep K with K >= 2 (single runs have no sampling threads)")
    from rlzoo_transfer.rl.registry import UnknownMethodError, get_method

    for text in args.methods:
        try:
            name, source = parse_method(text)
            method = get_method(name)
        except (SweepError, UnknownMethodError) as err:
            parser.error(str(err))
        if method.needs_source and not source:
            parser.error(f"method {name} needs a source: write it as {name}:SOURCE (e.g. {name}:Seaquest)")
        if source and not method.needs_source:
            parser.error(f"method {name} takes no source ({text!r}); only finetune does")
    if args.train_module == "rlzoo_transfer.train":
        check_train_arguments(parser, args.extra, args.methods, args.method_extra)
    return args


def local_plan(jobs: int | None) -> tuple[int, int]:
    """``(runs at a time, torch threads per run)`` of a local sweep: ``--jobs`` (default half the cores) and
    :func:`threads_per_run` beside the training processes already running, which it notes on stderr when
    ``OMP_NUM_THREADS`` does not decide."""
    parallel = jobs or max(1, (os.cpu_count() or 2) // 2)
    others = other_training_processes()
    threads = threads_per_run(os.cpu_count() or 1, parallel, len(others))
    if others and "OMP_NUM_THREADS" not in os.environ:
        print(f"note: {len(others)} other training process(es) already running (pids "
              f"{' '.join(map(str, others))}): each run gets {threads} torch thread(s) "
              f"(set OMP_NUM_THREADS to choose)", file=sys.stderr, flush=True)
    return parallel, threads


def _run_with_display(jobs: list[Job], backend, parallel: int, no_live: bool) -> None:
    """:func:`execute` under a rich Live table, or with plain log lines."""
    if no_live:
        execute(jobs, backend, parallel, echo=lambda s: print(s, flush=True))
        return
    from rich.live import Live

    with Live(render_table(jobs), refresh_per_second=2) as live:
        execute(jobs, backend, parallel, live=live)
        live.update(render_table(jobs))
    print()


def _raise_interrupt(signum, frame):
    """SIGTERM handler: stop like Ctrl-C, so that the runs started are terminated too."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status (0 ok, 1 a run failed, 2 bad arguments / no Ray, 130 Ctrl-C)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        jobs = plan(args.games, args.methods, args.seeds, args.log_dir, args.steps, args.extra, args.train_module,
                    args.method_extra)
        if args.train_module == "rlzoo_transfer.train":
            check_pending_sources(jobs, args.extra, args.method_extra)
            check_networks(jobs, args.extra, args.method_extra)
        if args.lockstep > 1:
            lockstep_groups(jobs, args.lockstep, args.log_dir, args.steps, args.extra, args.sample_threads,
                            args.method_extra)
        local = local_plan(args.jobs) if args.backend == "local" else None
        if args.dry_run:
            try:
                threads = None if local is None else os.environ.get("OMP_NUM_THREADS") or str(local[1])
                print(dry_run_text(jobs, threads), flush=True)
            except BrokenPipeError:   # e.g. piped into head
                sys.stdout = open(os.devnull, "w")
            return 0
        if local is None:
            backend = RayBackend(args.address, args.cpus_per_run, args.gpus_per_run)
            parallel = args.jobs or backend.slots()
        else:
            parallel, threads = local
            backend = LocalBackend(threads=threads)
    except (SweepError, BackendError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if in_main_thread else None
    try:
        _run_with_display(jobs, backend, parallel, args.no_live)
    except KeyboardInterrupt:
        print(summary(jobs), file=sys.stderr)
        return 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
    print(summary(jobs))
    return 1 if any(j.status == FAILED for j in jobs) else 0


if __name__ == "__main__":
    sys.exit(main())
