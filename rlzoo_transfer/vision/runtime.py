"""The run plumbing shared by the vision CLIs (classify, landmarks, select): the errors that are the user's, the
run record (versions, commit), atomic files, and the training loop with its checkpoints.  The options and the CLI
driver, which must not import torch, are vision/options.py's.

A run folder ``--out`` gets ``config.json`` (resolved configuration + :func:`environment`), ``tb/``
(tensorboard), ``checkpoint.pt`` (every ``--save-every`` iterations and at the end) and what the CLI adds; the
CLIs refuse an ``--out`` that holds a run unless ``--resume`` (``options.check_run_folder``), and ``--resume`` of a
finished run writes nothing.  Called directly (the digits experiment, eval/diagnostics), a run without ``resume``
replaces the folder's files.
``checkpoint.pt`` holds only tensors, numbers, strings and containers of them - model, optimiser and scheduler
state_dicts, the batch stream's position, the RNG states (numpy's as a tensor) and the configuration - so
``--resume`` reads it with ``torch.load(weights_only=True)`` and never unpickles code.
"""
from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from rlzoo_transfer import provenance, rngstate
from rlzoo_transfer.atomic import save_torch, write_atomic
from rlzoo_transfer.layers import flat_stats
from rlzoo_transfer.statedict import mismatch
from rlzoo_transfer.stop import RunIncomplete, interrupts_surface, stop_on_signals
from rlzoo_transfer.vision.data import BatchStream, DataError
from rlzoo_transfer.vision.options import UnknownMethodError, UsageError
from rlzoo_transfer.vision.resnet import CheckpointError, check_backbone_keys, load_state_dict_file

USER_ERRORS = (DataError, CheckpointError, UnknownMethodError, ValueError, FileNotFoundError)


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
    """``torch.save`` atomically (:func:`rlzoo_transfer.atomic.save_torch`), a Ctrl-C surfacing as itself."""
    with interrupts_surface():
        save_torch(obj, path)


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


#: Config keys a resumed run may change: where and how it runs and reports, not what it trains.
MAY_DIFFER_ON_RESUME = frozenset({"out", "resume", "sha256", "save_every", "log_every", "eval_every", "device",
                                  "workers", "threads", "tensorboard", "progress"})


def resume_from(path: Path, model, optimizer, scheduler, stream, config: dict, keys: Sequence[str],
                defaults: dict | None = None) -> FitState:
    """Restore a run from its ``checkpoint.pt`` (read with ``weights_only=True``); ValueError if the file is not a
    checkpoint this code wrote, or was made with another value of one of ``keys``.  A key the checkpoint lacks (an
    option added since it was written) counts as its value in ``defaults`` - what that older version did - and is
    not compared when it has none there."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        missing = [k for k in CHECKPOINT_KEYS if k not in ck] + ([] if "numpy_key" in ck.get("rng", {}) else ["rng"])
        if missing:   # an older layout (numpy's RNG state as a tuple) or another file altogether
            raise KeyError(f"no {', '.join(missing)}")
    except Exception as e:   # truncated, another format, or pickled objects the safe loader refuses
        raise ValueError(f"{path}: not a readable checkpoint of this version ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); delete it or use another --out") from None
    saved = {k: v for k, v in (defaults or {}).items() if k in keys} | ck["config"]
    for k in keys:
        if k in saved and saved[k] != config.get(k):
            raise ValueError(f"{path}: made with {k}={saved[k]!r}, this run has {config.get(k)!r}; resume with the "
                             "run's own settings (its config.json), use another --out, or drop --resume")
    try:
        model.load_state_dict(ck["model"])
    except RuntimeError as e:   # weights of another network (a setting this version does not record)
        raise ValueError(f"{path}: its weights do not fit this run's network ({mismatch(e)}); use another --out "
                         "or drop --resume") from None
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    stream.load_state(ck["stream"])
    rngstate.restore(ck["rng"])
    return FitState(ck["iteration"], list(ck["history"]), float(ck["seconds"]))


def finished_results(out: str | Path) -> dict[str, Any]:
    """The ``results.json`` of the finished run in ``out`` (:func:`train_run` returned None); UsageError if it is
    unreadable."""
    path = Path(out) / "results.json"
    try:
        results = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{path} is unreadable ({type(e).__name__}: {e}); restore it, or run again into another "
                         "--out") from None
    if not isinstance(results, dict):
        raise UsageError(f"{path} is not a run's results (a JSON object); restore it, or run again into another --out")
    return results


def open_writer(out: Path, enabled: bool):
    if not enabled:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(out / "tb"))


def train_run(cfg: Any, config: dict, model: nn.Module, optimizer, scheduler, stream: BatchStream, iters: int,
              loss_fn: Callable, device: torch.device,
              evaluate_model: Callable[[], dict]) -> tuple[FitState, dict] | None:
    """The common life of a fine-tuning run in ``cfg.out``: resume from ``checkpoint.pt`` (``cfg.resume``; every key
    of ``config`` but :data:`MAY_DIFFER_ON_RESUME` must match the checkpoint's), write ``config.json``, :func:`fit`
    to ``iters`` with checkpoints and test evaluations (``evaluate_model()`` -> metrics, logged as ``test/<name>``),
    a last checkpoint and the final evaluation.  SIGINT / SIGTERM (:mod:`rlzoo_transfer.stop`) end the run after the
    iteration in progress with a checkpoint there and raise :class:`RunIncomplete`; ``--resume`` continues it
    exactly.  Returns the fit state and the final metrics, or None when ``cfg.resume`` finds the run finished
    (``results.json``; its checkpoint, if any, checked as above): nothing is trained or written then.  Without
    ``cfg.resume`` the folder's files are replaced: the CLIs refuse a folder that holds a run before calling this
    (``options.check_run_folder``)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ck_path = out / "checkpoint.pt"
    state = FitState()
    if cfg.resume and ck_path.exists():
        keys = [k for k in config if k not in MAY_DIFFER_ON_RESUME]
        defaults = {f.name: f.default for f in fields(cfg) if f.default is not MISSING}
        try:
            state = resume_from(ck_path, model, optimizer, scheduler, stream, config, keys, defaults)
        except ValueError as e:
            raise UsageError(str(e)) from e
    if cfg.resume and (out / "results.json").exists():
        return None   # finished: its model.pt, results.json and config.json stay as they are
    write_json(out / "config.json", {"config": config, "environment": environment()})   # after: a refusal keeps it
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
