"""The run plumbing shared by the vision CLIs (classify, landmarks, select): bad-input errors, the run record
(versions, commit), atomic files, the training loop with its checkpoints, and the options every fine-tuning run has.

A run folder ``--out`` gets ``config.json`` (resolved configuration + :func:`environment`), ``tb/``
(tensorboard), ``checkpoint.pt`` (every ``--save-every`` iterations and at the end) and what the CLI adds.
``checkpoint.pt`` holds only tensors, numbers, strings and containers of them - model, optimiser and scheduler
state_dicts, the batch stream's position, the RNG states (numpy's as a tensor) and the configuration - so
``--resume`` reads it with ``torch.load(weights_only=True)`` and never unpickles code.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from rlzoo_transfer import provenance, rngstate
from rlzoo_transfer.atomic import replacing, write_atomic
from rlzoo_transfer.config import check_ranges as config_check_ranges
from rlzoo_transfer.config import seed_arg
from rlzoo_transfer.layers import flat_stats
from rlzoo_transfer.stop import RunIncomplete, interrupted, interrupts_surface, stop_on_signals
from rlzoo_transfer.vision.data import BatchStream, DataError
from rlzoo_transfer.vision.resnet import ARCHS, CheckpointError, check_backbone_keys, load_state_dict_file
from rlzoo_transfer.vision.zoo import METHODS, UnknownMethodError, check_method

USER_ERRORS = (DataError, CheckpointError, UnknownMethodError, ValueError, FileNotFoundError)


class UsageError(Exception):
    """Bad input found before training starts (the CLIs print it as one line and exit with status 2)."""


# ------------------------------------------------------------------------------------------------ run plumbing
def environment() -> dict[str, Any]:
    """Versions, commit (``provenance``: sha and whether the code differs from it), host facts and the command
    line, to write beside results."""
    return {"versions": provenance.versions(("rlzoo_transfer", "torch", "numpy", "scipy", "scikit-learn", "pillow",
                                             "tqdm", "tensorboard")),
            "commit": provenance.git_head(), "dirty": provenance.git_dirty(), "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "argv": sys.argv,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (temporary file + rename)."""
    write_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_atomic(obj: Any, path: str | Path) -> None:
    """``torch.save`` atomically (temporary file + rename)."""
    with interrupts_surface(), replacing(path) as tmp:
        torch.save(obj, tmp)


def check_ranges(cfg: Any, positive: Sequence[str] = (), non_negative: Sequence[str] = ()) -> None:
    """UsageError naming every field of ``cfg`` out of its range (``--batch-size 0`` was a ValueError traceback deep in
    the data loader, ``--iters 0`` a "trained" model that never took a step): ``config.check_ranges``."""
    config_check_ranges(cfg, positive, non_negative, error=UsageError)


def pick_device(device: str) -> torch.device:
    """``--device`` (auto | cpu | cuda[:i] | mps) -> torch.device; UsageError for one this machine lacks."""
    from rlzoo_transfer.config import ConfigError, resolve_device

    try:
        return torch.device(resolve_device(device))
    except ConfigError as e:
        raise UsageError(str(e)) from None


def load_zoo(paths: Sequence[str], sha256: Sequence[str] | None, template: nn.Module) -> list[dict]:
    """The zoo's state_dicts, each checked against ``template``'s backbone (CheckpointError names the file)."""
    if sha256 and len(sha256) != len(paths):
        raise ValueError(f"--sha256 needs one digest per --zoo checkpoint ({len(paths)}), got {len(sha256)}")
    out = []
    for i, p in enumerate(paths):
        sd = load_state_dict_file(p, sha256[i] if sha256 else None)
        check_backbone_keys(template, sd, name=str(p))
        out.append(sd)
    return out


# ------------------------------------------------------------------------------------------------ training loop
@dataclass
class FitState:
    iteration: int = 0
    history: list = field(default_factory=list)   # (iteration, loss parts) every log_every
    seconds: float = 0.0


def fit(model: nn.Module, stream: BatchStream, optimizer: torch.optim.Optimizer, scheduler, iters: int,
        loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict]], device: torch.device,
        state: FitState, *, checkpoint: Callable[[FitState], None] | None = None, save_every: int = 0,
        log_every: int = 50, writer=None, progress: bool = True, evaluate: Callable[[int], dict] | None = None,
        eval_every: int = 0, desc: str = "fine-tune", stop: Callable[[], bool] | None = None) -> FitState:
    """Train ``model`` from ``state.iteration`` to ``iters`` (one batch per iteration; scheduler stepped per
    iteration), logging loss parts to ``writer`` and a tqdm bar (it/s, ETA), checkpointing via ``checkpoint``;
    ends early, after a whole iteration, once ``stop()`` is true."""
    from tqdm.auto import tqdm

    model.train()
    bar = tqdm(total=iters, initial=state.iteration, desc=desc, disable=not progress, dynamic_ncols=True,
               mininterval=1.0)
    running: dict[str, float] = {}
    count, t0 = 0, time.perf_counter()
    while state.iteration < iters and not (stop is not None and stop()):
        x, y = next(stream)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss, parts = loss_fn(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        state.iteration += 1
        for k, v in parts.items():
            running[k] = running.get(k, 0.0) + v
        count += 1
        bar.update(1)
        if state.iteration % log_every == 0 or state.iteration == iters:
            means = {k: v / count for k, v in running.items()}
            state.history.append((state.iteration, means))
            bar.set_postfix({k: f"{v:.4g}" for k, v in means.items()} | {"lr": f"{scheduler.get_last_lr()[0]:.3g}"})
            if writer is not None:
                for k, v in means.items():
                    writer.add_scalar(f"train/{k}", v, state.iteration)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], state.iteration)
                for k, v in flat_stats(model).items():
                    writer.add_scalar(k, v, state.iteration)
            running, count = {}, 0
        if evaluate is not None and eval_every and state.iteration % eval_every == 0 and state.iteration < iters:
            metrics = evaluate(state.iteration)
            model.train()
            bar.write(f"[{state.iteration}] " + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        if checkpoint is not None and save_every and state.iteration % save_every == 0 and state.iteration < iters:
            state.seconds += time.perf_counter() - t0
            t0 = time.perf_counter()
            checkpoint(state)
    bar.close()
    state.seconds += time.perf_counter() - t0
    return state


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


#: What :func:`make_checkpointer` writes and :func:`resume_from` needs.
CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "stream", "iteration", "history", "seconds", "rng", "config")


def make_checkpointer(path: Path, model, optimizer, scheduler, stream, config: dict) -> Callable[[FitState], None]:
    def save(state: FitState) -> None:
        save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "stream": stream.state(), "iteration": state.iteration,
                     "history": state.history, "seconds": state.seconds, "rng": rngstate.capture(),
                     "config": config}, path)
    return save


def resume_from(path: Path, model, optimizer, scheduler, stream, config: dict, keys: Sequence[str]) -> FitState:
    """Restore a run from its ``checkpoint.pt`` (read with ``weights_only=True``); ValueError if the file is not a
    checkpoint this code wrote, or was made with another value of one of ``keys``."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        missing = [k for k in CHECKPOINT_KEYS if k not in ck] + ([] if "numpy_key" in ck.get("rng", {}) else ["rng"])
        if missing:   # an older layout (numpy's RNG state as a tuple) or another file altogether
            raise KeyError(f"no {', '.join(missing)}")
    except Exception as e:   # truncated, another format, or pickled objects the safe loader refuses
        raise ValueError(f"{path}: not a readable checkpoint of this version ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); delete it or use another --out") from None
    saved = ck["config"]
    for k in keys:
        if saved.get(k) != config.get(k):
            raise ValueError(f"{path}: made with {k}={saved.get(k)!r}, this run has {config.get(k)!r}; "
                             "use another --out or drop --resume")
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    stream.load_state(ck["stream"])
    rngstate.restore(ck["rng"])
    return FitState(ck["iteration"], list(ck["history"]), float(ck["seconds"]))


def open_writer(out: Path, enabled: bool):
    if not enabled:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "tb"))


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
    p.add_argument("--hub-k", type=int, default=d.hub_k, help=f"hub: models activated per sample (default {d.hub_k})")
    p.add_argument("--hub-lambda", type=float, default=d.hub_lambda,
                   help=f"hub: explore-loss weight (default {d.hub_lambda})")


def check_choices(cfg: FineTuneConfig) -> None:
    """The run's ``--method`` and ``--arch`` name ones that exist (UnknownMethodError / ValueError otherwise)."""
    check_method(cfg.method)
    if cfg.arch not in ARCHS:
        raise ValueError(f"unknown --arch {cfg.arch!r}; choose from {', '.join(ARCHS)}")


def add_run_args(p: argparse.ArgumentParser, d: FineTuneConfig) -> None:
    """The options of a vision fine-tuning run's life (seed, run folder, checkpoints, logging, device), with ``d``'s
    defaults."""
    p.add_argument("--seed", type=seed_arg, default=d.seed)
    p.add_argument("--out", default=d.out, help=f"run folder (default {d.out})")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    p.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint period in iterations")
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="test-set evaluation period (0: at the end)")
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda[:i]")
    p.add_argument("--workers", type=int, default=d.workers, help="data-loading processes (0: in the main one)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def train_run(cfg: Any, config: dict, model: nn.Module, optimizer, scheduler, stream: BatchStream, iters: int,
              loss_fn: Callable, device: torch.device, evaluate_model: Callable[[], dict],
              resume_keys: Sequence[str]) -> tuple[FitState, dict]:
    """The common life of a fine-tuning run in ``cfg.out``: write ``config.json``, resume from ``checkpoint.pt``
    (``cfg.resume``; the ``resume_keys`` of ``config`` must match), :func:`fit` to ``iters`` with checkpoints and
    test evaluations (``evaluate_model()`` -> metrics, logged as ``test/<name>``), a last checkpoint and the final
    evaluation.  SIGINT / SIGTERM (:mod:`rlzoo_transfer.stop`) end the run after the iteration in progress with a
    checkpoint there and raise :class:`RunIncomplete`; ``--resume`` continues it exactly.  Returns the fit state and
    the final metrics."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", {"config": config, "environment": environment()})
    ck_path = out / "checkpoint.pt"
    state = FitState()
    if cfg.resume and ck_path.exists():
        try:
            state = resume_from(ck_path, model, optimizer, scheduler, stream, config, resume_keys)
        except ValueError as e:
            raise UsageError(str(e)) from e
    checkpoint = make_checkpointer(ck_path, model, optimizer, scheduler, stream, config)
    writer = open_writer(out, cfg.tensorboard)

    def evaluate(it: int) -> dict:
        metrics = evaluate_model()
        if writer is not None:
            for name, v in metrics.items():
                writer.add_scalar(f"test/{name}", v, it)
        return metrics

    try:
        with stop_on_signals(at="iteration") as request:
            fit(model, stream, optimizer, scheduler, iters, loss_fn, device, state, checkpoint=checkpoint,
                save_every=cfg.save_every, log_every=cfg.log_every, writer=writer, progress=cfg.progress,
                evaluate=evaluate, eval_every=cfg.eval_every, desc=cfg.method, stop=request.__bool__)
            checkpoint(state)   # inside: a SIGTERM after the Ctrl-C must not cut it short
        if request:
            raise RunIncomplete(f"stopped by {request.signal} at iteration {state.iteration}/{iters}; continue with "
                                f"the same command and --resume (checkpoint in {ck_path})", request.exit_status)
        metrics = evaluate(state.iteration)
    finally:
        if writer is not None:
            writer.close()
    return state, metrics


def cli_main(parser: argparse.ArgumentParser, make_config: Callable[[dict], Any], run: Callable[[Any], dict],
             keys: Sequence[str], argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, run, print the results' ``keys`` as one JSON line; a UsageError is one line on stderr and
    exit status 2, a stop by a signal (:class:`~rlzoo_transfer.stop.RunIncomplete`) one line and 128 + its number, a
    second Ctrl-C one line and 130."""
    cfg = make_config(vars(parser.parse_args(argv)))
    try:
        results = run(cfg)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RunIncomplete as e:
        print(str(e), file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        ck_path = Path(cfg.out) / "checkpoint.pt"
        return interrupted([ck_path] if ck_path.exists() else [])
    print(json.dumps({k: results[k] for k in keys}))
    return 0
