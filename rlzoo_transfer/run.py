"""One training run, start to finish: config -> env -> method's network -> DER -> callbacks -> files.

The run folder (``<log_dir>/<Game>/<method>/seed<k>/``) gets: ``config.yml`` (resolved hyperparameters, the zoo
sources' sha256s, package versions, git commit, command, ``steps``: the planned total; each ``--resume`` adds its
step, commit, versions and command under ``resumes``, and one with another ``--steps`` sets ``steps`` to the new
total, its entry keeping the one before as ``previous_steps``), ``evaluations.csv`` (step, mean, std, n_episodes,
returns), ``final.json`` (the final evaluation; its presence marks a complete run), ``model.zip`` (SB3 format),
``checkpoint/`` (for ``--resume``), ``tb/`` (tensorboard), and for transfer methods ``gates.csv`` / ``pathway.csv`` /
``flow.csv``.  The CLIs then add the files to look at (``curve.png``, ``report.md``:
:mod:`rlzoo_transfer.run_summary`).
"""
from __future__ import annotations

import csv
import errno
import json
import shlex
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import yaml
from stable_baselines3.common.callbacks import ProgressBarCallback

from rlzoo_transfer import yamlfile
from rlzoo_transfer.config import ConfigError, load_config, split_config
from rlzoo_transfer.envs import make_env
from rlzoo_transfer.games import action_meanings, resolve_game
from rlzoo_transfer.provenance import git_commit, versions
from rlzoo_transfer.rl.callbacks import (CoreShareCallback, EvalCheckpointCallback, ProgressLogCallback,
                                         read_evaluations, write_atomic, write_evaluations)
from rlzoo_transfer.rl.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from rlzoo_transfer.rl.der import DER
from rlzoo_transfer.rl.evaluation import EvaluationStopped, evaluate
from rlzoo_transfer.rl.policies import DERPolicy
from rlzoo_transfer.rl.registry import get_method, pinned
from rlzoo_transfer.statedict import first_line, mismatch
from rlzoo_transfer.stop import RunIncomplete
from rlzoo_transfer.stop import interrupted as stop_interrupted
from rlzoo_transfer.stop import stop_on_signals
from rlzoo_transfer.threads import CoreShare
from rlzoo_transfer.zoo import ZooError
from rlzoo_transfer.zoo import provenance as zoo_provenance

DEFAULT_STEPS = 100_000   # a run's agent steps where --steps is not given (and no planned total is recorded)


class RunError(RuntimeError):
    """A run that cannot start (existing results, missing checkpoint); the message says what to do."""


@dataclass
class RunSpec:
    game: str
    method: str = "scratch"
    seed: int = 0
    steps: int | None = 100_000  # None: a resumed run's planned total (config.yml's steps), else DEFAULT_STEPS
    eval_freq: int = 10_000
    eval_episodes: int = 10
    final_eval_episodes: int = 100
    log_dir: str = "runs"
    run_dir: str | None = None  # overrides the <log_dir>/<Game>/<method>/seed<k> layout
    hyperparams: dict[str, Any] = field(default_factory=dict)
    source: str | None = None  # finetune's source game
    device: str = "cpu"
    resume: bool = False
    n_envs: int = 1
    progress_bar: bool = True
    checkpoint_freq: int | None = None  # default: every evaluation
    max_minutes: float | None = None  # wall-clock budget; past it the run checkpoints and stops
    finish_on_time_limit: bool = False  # ... or finishes (final evaluation) at the step reached
    eval_envs: int = 8
    eval_at_start: bool = True
    command: str = ""
    share_cores: bool = False  # keep to this run's share of the cores while other training runs (threads.py)


def command_line(prog: str, argv: list[str] | None) -> str:
    """The command a run records: ``prog`` (e.g. ``python -m rlzoo_transfer.train``) and its arguments, quoted so
    the line can be pasted into a shell; ``argv`` None means this process's own arguments."""
    return " ".join([prog, shlex.join(sys.argv[1:] if argv is None else argv)]).rstrip()


def run_folder(spec: RunSpec) -> Path:
    if spec.run_dir:
        return Path(spec.run_dir)
    game, _ = resolve_game(spec.game)
    return Path(spec.log_dir) / game / get_method(spec.method).folder(spec.source) / f"seed{spec.seed}"


def finished_at(run_dir: Path) -> int | None:
    """The agent step of ``run_dir``'s ``final.json`` (a finished run), or None without one.  An unreadable
    ``final.json`` counts as none: resuming then redoes the final evaluation and rewrites it."""
    try:
        return int(json.loads((Path(run_dir) / "final.json").read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def build_model(spec: RunSpec, config: dict[str, Any], env, tb_dir: str | None) -> DER:
    """DER with the method's network, from a resolved config."""
    algo_kwargs = split_config(config)[0]
    method = get_method(spec.method)
    policy_kwargs = method.policy_kwargs(spec.game, spec.source, config)
    try:
        return DER(DERPolicy, env, policy_kwargs=policy_kwargs, tensorboard_log=tb_dir, seed=spec.seed,
                   device=spec.device, **algo_kwargs)
    except ZooError:
        raise
    except (ValueError, TypeError) as e:   # a value the network or DER rejects, e.g. -p generator=foo
        files = "agents/der.yml" + (f" + agents/{method.config_file}.yml" if method.config_file else "")
        raise ConfigError(f"--method {spec.method} cannot be built with these settings: {e} "
                          f"(check the -p overrides and {files})") from e


@dataclass
class PreparedRun:
    """A run ready to train: what ``run_training`` (one agent) and ``rl.lockstep`` (K agents) both need."""

    spec: RunSpec
    run_dir: Path
    model: DER
    env: Any
    config: dict[str, Any]
    callback: EvalCheckpointCallback
    callbacks: list
    reset_num_timesteps: bool
    start_step: int = 0   # the model's step when training (re)started: its checkpoint's, or 0

    @property
    def remaining(self) -> int:
        return self.spec.steps - self.model.num_timesteps


def recorded_config(run_dir: Path) -> dict[str, Any] | None:
    """``run_dir/config.yml`` as a mapping, or None where it is absent, unreadable, not YAML or not a mapping (a hand
    edit): it is the run's record, while --resume needs only the checkpoint, so callers go on without it."""
    try:
        config = yamlfile.load(run_dir / "config.yml", ValueError)
    except ValueError:
        return None
    return config if isinstance(config, dict) else None


def planned_steps(spec: RunSpec, default: int = DEFAULT_STEPS) -> int:
    """``spec.steps``, set first where it is None (no ``--steps`` given): a resumed run's planned total as its
    ``config.yml`` records it (a run planned for 3000 steps resumes to 3000, not to the default), else ``default``
    (train's 100k; pretrain's 1M)."""
    if spec.steps is None:
        recorded = (recorded_config(run_folder(spec)) or {}).get("steps") if spec.resume else None
        spec.steps = recorded if type(recorded) is int and recorded > 0 else default
    return spec.steps


def record_resume(run_dir: Path, step: int, command: str, steps: int | None = None) -> None:
    """Append ``{step, commit, versions, command, time}`` to ``config.yml``'s ``resumes`` (rewritten atomically): the
    run's steps after ``step`` were trained by this code, which need not be the commit it started at.  A resume to
    another total (``steps``: its ``--steps``) sets ``config.yml``'s ``steps`` to it - the planned total that
    ``curves`` and ``confirm`` read - and its entry keeps the total planned before as ``previous_steps``."""
    config = recorded_config(run_dir)
    if config is None:
        return   # no readable record to extend: the checkpoint and evaluations are what --resume needs
    entry = {"step": int(step), "commit": git_commit(), "versions": versions(), "command": command,
             "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    total = max(int(steps), int(step)) if steps is not None else None   # a run already past --steps ends there
    if total is not None and "steps" in config and config["steps"] != total:
        entry["previous_steps"], config["steps"] = config["steps"], total
    config["resumes"] = list(config.get("resumes") or []) + [entry]
    write_atomic(run_dir / "config.yml", yaml.safe_dump(config, sort_keys=False))


#: Settings a resumed run must share with its start (``config.yml``): the checkpoint carries the model's own
#: hyperparameters, so a different ``-p`` would be ignored by the network while the evaluation used it.
#: ``--steps`` may differ (it extends or shortens the run; each resume's command is on record), as may the device.
RESUME_SETTINGS = ("eval_freq", "eval_episodes", "final_eval_episodes", "n_envs")


def check_resume_settings(run_dir: Path, spec: RunSpec, config: dict[str, Any]) -> None:
    """RunError naming the first setting (a hyperparameter after ``-p`` overrides, or one of
    :data:`RESUME_SETTINGS`) that differs from what ``run_dir/config.yml`` recorded at the start.  Keys only one side
    has (a hyperparameter added or removed since the run started) are not compared: neither value is wrong."""
    started = recorded_config(run_dir)
    if started is None:
        return   # no readable record to compare with: the checkpoint is what --resume needs
    hyperparams = started.get("hyperparams")
    hyperparams = pinned(spec.method, hyperparams) if isinstance(hyperparams, dict) else {}
    was = {**{k: started.get(k) for k in RESUME_SETTINGS if k in started},
           **{f"-p {k}": v for k, v in hyperparams.items()}}
    now = {**{k: getattr(spec, k) for k in RESUME_SETTINGS}, **{f"-p {k}": v for k, v in config.items()}}
    for key in now:
        if key in was and was[key] != now[key]:   # a key one side lacks: code of another time, not compared
            option = key if key.startswith("-p ") else "--" + key.replace("_", "-")
            raise RunError(f"cannot resume {run_dir} with other settings than it started with: {option} is "
                           f"{now[key]}, was {was[key]} ({run_dir / 'config.yml'}); resume with the run's own "
                           f"settings, or start a new run (another --seed or --log-dir)")


def resumable_evaluations(run_dir: Path) -> list[dict]:
    """The rows of ``run_dir/evaluations.csv`` (none if it is absent), or a RunError if the file cannot be read as
    the run's curve - it is written atomically, so only a hand edit or a failing disk breaks it."""
    path = run_dir / "evaluations.csv"
    try:
        rows = read_evaluations(path)
        for row in rows:
            int(row["step"]), float(row["mean"])
    except (OSError, UnicodeDecodeError, csv.Error, KeyError, TypeError, ValueError) as e:
        raise RunError(f"cannot resume {run_dir}: {path} is unreadable ({type(e).__name__}: {e}); restore it, or "
                       f"delete it to resume with the curve so far lost") from None
    return rows


def prepare_run(spec: RunSpec) -> PreparedRun:
    """Check the run folder, build (or resume) the model and its env, write ``config.yml``, make the callbacks."""
    game, _ = resolve_game(spec.game)
    spec.game = game
    planned_steps(spec)
    method = get_method(spec.method)
    method.check_pins(spec.hyperparams)
    config = method.pin(load_config(method.config_file, spec.hyperparams))
    run_dir = run_folder(spec)
    ckpt = find_checkpoint(run_dir)
    if (run_dir / "final.json").exists() and not spec.resume:
        raise RunError(f"{run_dir} already holds a finished run (final.json); choose another --seed or --log-dir")
    if run_dir.exists() and (ckpt or (run_dir / "evaluations.csv").exists()) and not spec.resume:
        raise RunError(f"{run_dir} holds an unfinished run; continue it with --resume, or use another --log-dir")
    if spec.resume and ckpt is not None:
        check_resume_settings(run_dir, spec, config)
        evaluations = resumable_evaluations(run_dir)
    torch.manual_seed(spec.seed)
    np.random.seed(spec.seed)

    env = make_env(game, spec.n_envs, seed=spec.seed)
    tb_dir = str(run_dir / "tb")
    resumed = spec.resume and ckpt is not None
    if spec.resume and not resumed:
        print(f"nothing to resume in {run_dir} (no checkpoint): starting from step 0", file=sys.stderr)
    if resumed:
        try:
            model = load_checkpoint(DER, ckpt, env, spec.device)
        except Exception as e:  # a truncated or corrupt file: say what to do, not a traceback
            env.close()
            why = mismatch(e)
            if why != first_line(e):   # a sound checkpoint of another network: the code changed, not the file
                raise RunError(f"cannot resume {run_dir}: its checkpoint does not fit the network this code builds "
                               f"for it ({why}); resume with the commit the run was made at (config.yml's commit), "
                               f"or delete {run_dir} to start afresh") from None
            raise RunError(f"cannot resume {run_dir}: its checkpoint is unreadable ({type(e).__name__}: {why}); "
                           f"delete {ckpt} and --resume to restart from step 0, or delete {run_dir} to start "
                           f"afresh") from None
        model.tensorboard_log = tb_dir
        step = model.num_timesteps
        rows = [r for r in evaluations if int(r["step"]) <= step]
        write_evaluations(run_dir / "evaluations.csv", rows)  # rows written after the checkpoint are redone
        record_resume(run_dir, step, spec.command, spec.steps)
        print(f"resuming {run_dir} from step {step}", file=sys.stderr)
    else:
        try:  # before the run folder exists: a bad zoo leaves nothing behind
            model = build_model(spec, config, env, tb_dir)
        except Exception:
            env.close()
            raise
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:   # what check_outputs could not foresee, e.g. a file system that refuses mkdir
            env.close()
            raise RunError(f"cannot create the run folder {run_dir}: {e.strerror}; choose another --log-dir") from None
        sources = get_method(spec.method).sources(spec.source, config)
        write_atomic(run_dir / "config.yml", yaml.safe_dump({
            "game": game, "method": spec.method, "source": spec.source, "seed": spec.seed, "steps": spec.steps,
            "eval_freq": spec.eval_freq, "eval_episodes": spec.eval_episodes,
            "final_eval_episodes": spec.final_eval_episodes, "n_envs": spec.n_envs, "device": spec.device,
            "hyperparams": config, "zoo": zoo_provenance(sources, config.get("zoo_dir")) if sources else None,
            "actions": action_meanings(game), "versions": versions(),
            "commit": git_commit(), "command": spec.command, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        }, sort_keys=False))
    deadline = time.time() + 60 * spec.max_minutes if spec.max_minutes else None
    callback = EvalCheckpointCallback(game, run_dir, spec.eval_freq, spec.eval_episodes, spec.seed,
                                      config["eval_epsilon"], checkpoint=lambda m: save_checkpoint(m, run_dir),
                                      checkpoint_freq=spec.checkpoint_freq, deadline=deadline,
                                      eval_envs=spec.eval_envs, eval_at_start=spec.eval_at_start,
                                      stream=None if spec.progress_bar else sys.stderr)
    callback.pending_update = resumed and model.num_timesteps > model.learning_starts
    callbacks = [callback] if spec.progress_bar else [callback, ProgressLogCallback(spec.steps, stream=sys.stderr)]
    if spec.share_cores:   # first: step 0's evaluation runs on the share too
        callbacks.insert(0, CoreShareCallback(CoreShare()))
    return PreparedRun(spec, run_dir, model, env, config, callback, callbacks,
                       reset_num_timesteps=not resumed, start_step=model.num_timesteps)


def stop_incomplete(run: PreparedRun, during_evaluation: bool = False) -> None:
    """If training stopped before ``spec.steps`` on a signal (``run.callback.stop``) or at a time limit (unless the
    spec finishes there), or a signal abandoned an evaluation (``during_evaluation``: ``learn`` left before that
    step's update, also at the last step): write the checkpoint and raise RunIncomplete, which says how to
    continue.

    An evaluation abandoned before the first step (step 0's, or a resumed run's owed one) leaves nothing new to
    save: the checkpoint on disk - none at step 0 - is where the run continues (lock-step agents may have done their
    owed update in memory by then; writing it would make the resumed run do it twice)."""
    spec, model, stop = run.spec, run.model, run.callback.stop
    if not during_evaluation and (model.num_timesteps >= spec.steps or not (stop or not spec.finish_on_time_limit)):
        return
    if not (during_evaluation and model.num_timesteps == run.start_step):
        save_checkpoint(model, run.run_dir)
    run.env.close()
    why = f"stopped by {stop.signal}" if stop else "time limit reached"
    where = " during an evaluation" if during_evaluation else ""
    reason = f"{why} at step {model.num_timesteps}/{spec.steps}{where}; continue with the same command and --resume"
    raise RunIncomplete(f"{reason} ({checkpoint_note(run.run_dir)})", stop.exit_status if stop else 3, reason)


def checkpoint_note(run_dir: Path) -> str:
    """Where a stopped run continues: ``checkpoint in <run_dir>``, or that it starts afresh without one."""
    return f"checkpoint in {run_dir}" if find_checkpoint(run_dir) else "no checkpoint yet: it starts afresh"


def finish_run(run: PreparedRun) -> Path:
    """After training: checkpoint and raise RunIncomplete if it stopped early (``stop_incomplete``), else save the
    model, evaluate ``final_eval_episodes`` games and write ``final.json``.  A stop request (``run.callback.stop``)
    during that evaluation - 100 games, minutes - abandons it with RunIncomplete: ``--resume`` continues from the
    last checkpoint - the last step's (written there unless checkpoints are off), before its update, which the
    resumed run does again (the same one: the checkpoint holds the RNG states) - and then evaluates.  A run that
    finishes at its time limit (``finish_on_time_limit``), before its planned steps, is checkpointed at the step
    reached first (unless checkpoints are off): ``--resume`` after a stop during its final evaluation, or to train
    it on, continues there, not at the last scheduled checkpoint with the steps after it to train again."""
    spec, model, run_dir, stop = run.spec, run.model, run.run_dir, run.callback.stop
    stop_incomplete(run)
    if model.num_timesteps < spec.steps and run.callback.checkpoint_freq:
        save_checkpoint(model, run_dir)
    model.save(run_dir / "model.tmp.zip")
    (run_dir / "model.tmp.zip").replace(run_dir / "model.zip")
    print(f"[{run.callback.name}] final evaluation: {spec.final_eval_episodes} games ...", file=sys.stderr,
          flush=True)
    try:
        returns = evaluate(model.policy, spec.game, spec.final_eval_episodes,
                           seed=spec.seed * 1_000_003 + 999_999_937, epsilon=run.config["eval_epsilon"],
                           max_envs=spec.eval_envs, stop=stop)
    except EvaluationStopped:
        run.env.close()
        reason = f"stopped by {stop.signal} during the final evaluation; continue with the same command and --resume"
        raise RunIncomplete(f"{reason} ({checkpoint_note(run_dir)})", stop.exit_status, reason) from None
    final = {"game": spec.game, "method": get_method(spec.method).folder(spec.source), "seed": spec.seed,
             "steps": int(model.num_timesteps), "mean": float(np.mean(returns)), "std": float(np.std(returns)),
             "n_episodes": len(returns), "returns": returns}
    write_atomic(run_dir / "final.json", json.dumps(final, indent=1))
    run.env.close()
    return run_dir


def run_training(spec: RunSpec) -> Path:
    """Train, evaluate and write the run folder; resumes from its checkpoint with ``spec.resume``.  SIGINT / SIGTERM
    during training stop it at the next agent step with a checkpoint (:mod:`rlzoo_transfer.stop`), during the final
    evaluation at its next game step."""
    run = prepare_run(spec)
    with stop_on_signals() as run.callback.stop, refusals_in_writer_threads():
        stopped = False
        # a resumed run at (or past) its last step still owes that step's update (its checkpoint precedes it),
        # and its evaluation if a stop abandoned it: learn(0) does both (the callback's training start), no step
        if run.remaining > 0 or not run.reset_num_timesteps:
            # the bar first, so that it also closes when the step-0 evaluation is stopped (below): rich's bar holds
            # the terminal's stderr until it is closed, and the message after it would be lost
            bar = [ProgressBarCallback()] if spec.progress_bar else []
            try:
                run.model.learn(max(run.remaining, 0), callback=bar + run.callbacks,
                                reset_num_timesteps=run.reset_num_timesteps, tb_log_name="DER")
            except EvaluationStopped:
                stopped = True
                for b in bar:   # learn's own end, which closes it, was skipped
                    b.on_training_end()
        # inside: a sweep's SIGTERM after the user's Ctrl-C must not cut the checkpoint short
        stop_incomplete(run, during_evaluation=stopped)
        return finish_run(run)


#: what a file system answers when it refuses a write: full, over quota, a file size limit, mounted read-only
WRITE_REFUSED = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def write_refused(err: OSError, run_dirs: Sequence[Path] = (), stream=None) -> int:
    """After an OSError while a run wrote its files: where the file system refused the write (``WRITE_REFUSED``),
    one line naming the file and the cause, and where the run continues; returns the exit status 1.  Nothing
    written before is lost: checkpoints are swapped in by renames and results written atomically, so the run
    folder holds the last complete checkpoint and evaluations.  Any other OSError is raised again."""
    if err.errno not in WRITE_REFUSED:
        raise err
    ckpts = [str(path) for path in map(find_checkpoint, run_dirs) if path is not None]
    last = f"last complete checkpoint in {', '.join(ckpts)}" if ckpts else "no checkpoint yet: it starts afresh"
    print(f"error: cannot write {err.filename or 'the run folder'}: {err.strerror}; make room (or lift the limit), "
          f"then continue with the same command and --resume ({last})", file=stream or sys.stderr)
    return 1


@contextmanager
def refusals_in_writer_threads() -> Iterator[None]:
    """While the block runs, a write the file system refuses (``WRITE_REFUSED``) in a writer's own thread -
    tensorboard's event writer flushes in one - is one line on stderr instead of that thread's traceback.  The
    writer raises the same error in the run's thread at its next write, which ends the run with
    :func:`write_refused`'s line."""
    previous = threading.excepthook

    def hook(args) -> None:
        err = args.exc_value
        if isinstance(err, OSError) and err.errno in WRITE_REFUSED:
            thread = args.thread
            who = ("tensorboard's event writer" if type(thread).__module__.startswith("tensorboard")
                   else f"thread {getattr(thread, 'name', '?')}")
            print(f"warning: {who} cannot write: {err.strerror}; it stops writing", file=sys.stderr, flush=True)
            return
        previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def interrupted(run_dirs: Sequence[Path] = (), stream=None) -> int:
    """After a KeyboardInterrupt - a second Ctrl-C during training (:mod:`rlzoo_transfer.stop`), or one before
    training began - one line saying how to continue and where the last checkpoint is; returns the exit status 130.
    ``run_dirs``: the runs' folders, as far as they are known yet."""
    return stop_interrupted([path for path in map(find_checkpoint, run_dirs) if path is not None], stream)


def summarize_after_run(run_dir: Path, stream=None) -> Path | None:
    """The run folder's ``curve.png`` and ``report.md`` (:mod:`rlzoo_transfer.run_summary`) for a run that just
    finished, or None.  Any failure is one warning line, never an error - the run's results are already written.
    That includes importing the summary code: a run that outlives a ``git pull`` of this package imports the new
    ``run_summary`` / ``curves`` beside the old modules it loaded at its start (a session's kflow run once ended in
    an ImportError traceback that way)."""
    try:
        from rlzoo_transfer.run_summary import write_run_summary

        return write_run_summary(run_dir)
    except Exception as err:  # noqa: BLE001 - the summary is a convenience; the run itself is complete
        print(f"warning: the run is complete, but its summary was not written ({type(err).__name__}: {err}); "
              f"retry with python -m rlzoo_transfer.run_summary {run_dir}", file=stream or sys.stderr)
        return None
