"""Fine-tune a zoo of ResNets on an image-classification task and report top-1 accuracy.

    python -m rlzoo_transfer.vision.classify --data DIR --zoo a.pt b.pt c.pt --method zoo --out runs/cls/zoo

Defaults are the papers' protocol (Zoo-Tuning Sec. 4.2, Hub-Pathway Sec. 4.1): ResNet-50, the last layer
replaced by a randomly initialised one, SGD lr 0.01 momentum 0.9, batch 48, 15k iterations, lr x0.1 at 6k and
12k, random-resized 224 x 224 crops.  The papers give no weight decay and no flips: both default off
(``--weight-decay``, ``--hflip``).  With ``--iters`` and no ``--milestones`` the decays fall at 40% and 80% of
the run (6k / 15k, 12k / 15k).  Test images: shorter side to 224 / 0.875, centre crop (``--crop-pct``).

``--data``: an ImageFolder-style directory (``DIR/train/<class>/*.png``, ``DIR/test/<class>/*.png``) or a CSV list
``path,label,split`` (vision/data.py).  ``--zoo``: torchvision-format state_dicts of ``--arch`` (vision/resnet.py);
their classifier heads are ignored.  ``--method``: scratch | single | zoo | zoo-lite | zoo-avg | ensemble | hub
(vision/zoo.py).

The run folder ``--out`` gets ``config.json`` (resolved configuration, package versions, git commit),
``tb/`` (tensorboard: losses, learning rate, gates / pathway weights, test accuracy), ``checkpoint.pt``
(every ``--save-every`` iterations and at the end; ``--resume`` continues from it - exactly, with
``--workers 0``), ``model.pt`` (the final weights) and ``results.json`` (written atomically).  Bad input (missing
data, a checkpoint of another architecture, an unknown method) is one line on stderr and exit status 2.

The training loop (:func:`fit`) and the run plumbing are shared with vision/landmarks.py.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rlzoo_transfer.atomic import replacing, write_atomic
from rlzoo_transfer.config import check_ranges as config_check_ranges, seed_arg
from rlzoo_transfer.layers import flat_stats
from rlzoo_transfer.vision.data import (BatchStream, DataError, ImageDataset, EvalTransform, TrainTransform,
                                        open_split, predict_batches)
from rlzoo_transfer.vision.resnet import (ARCHS, CheckpointError, build_resnet, check_backbone_keys, count_params,
                                          load_state_dict_file)
from rlzoo_transfer.vision.zoo import (METHODS, Ensemble, UnknownMethodError, build_method, check_method,
                                       inference_model, mean_softmax_log, objective)

USER_ERRORS = (DataError, CheckpointError, UnknownMethodError, ValueError, FileNotFoundError)


class UsageError(Exception):
    """Bad input found before training starts (the CLIs print it as one line and exit with status 2)."""


# ------------------------------------------------------------------------------------------------ run plumbing
def git_commit(cwd: str | Path | None = None) -> str | None:
    """``git rev-parse HEAD`` of the package's repository (None outside a git checkout)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def git_dirty(cwd: str | Path | None = None) -> bool | None:
    """True when the package's code differs from the commit (changed or untracked files under rlzoo_transfer/,
    scripts/ or agents/); None outside a git checkout."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", ":/rlzoo_transfer", ":/scripts", ":/agents"],
                             cwd=cwd or Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10,
                             check=True).stdout
        return bool(out.strip())
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    """Versions, commit, host facts and the command line, to write beside results."""
    import importlib.metadata as md

    versions = {}
    for pkg in ("torch", "numpy", "scipy", "scikit-learn", "pillow", "tqdm", "tensorboard"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {"python": platform.python_version(), "versions": versions, "commit": git_commit(),
            "dirty": git_dirty(), "platform": platform.platform(), "torch_threads": torch.get_num_threads(),
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
    with replacing(path) as tmp:
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


def milestones_for(iters: int, milestones: Sequence[int] | None) -> list[int]:
    """The lr decay iterations: given, or the papers' 6k / 12k of 15k scaled to ``iters``."""
    if milestones is not None:
        return sorted(int(m) for m in milestones)
    return [round(0.4 * iters), round(0.8 * iters)]


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
        eval_every: int = 0, desc: str = "fine-tune") -> FitState:
    """Train ``model`` from ``state.iteration`` to ``iters`` (one batch per iteration; scheduler stepped per
    iteration), logging loss parts to ``writer`` and a tqdm bar (it/s, ETA), checkpointing via ``checkpoint``."""
    from tqdm.auto import tqdm

    model.train()
    bar = tqdm(total=iters, initial=state.iteration, desc=desc, disable=not progress, dynamic_ncols=True,
               mininterval=1.0)
    running: dict[str, float] = {}
    count, t0 = 0, time.perf_counter()
    while state.iteration < iters:
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


def rng_state() -> dict:
    out = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_checkpointer(path: Path, model, optimizer, scheduler, stream, config: dict) -> Callable[[FitState], None]:
    def save(state: FitState) -> None:
        save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "stream": stream.state(), "iteration": state.iteration,
                     "history": state.history, "seconds": state.seconds, "rng": rng_state(), "config": config}, path)
    return save


def resume_from(path: Path, model, optimizer, scheduler, stream, config: dict, keys: Sequence[str]) -> FitState:
    """Restore a run; ValueError if the checkpoint was made with another value of one of ``keys``."""
    ck = torch.load(path, map_location="cpu", weights_only=False)
    for k in keys:
        if ck["config"].get(k) != config.get(k):
            raise ValueError(f"{path}: made with {k}={ck['config'].get(k)!r}, this run has {config.get(k)!r}; "
                             "use another --out or drop --resume")
    model.load_state_dict(ck["model"])
    optimizer.load_state_dict(ck["optimizer"])
    scheduler.load_state_dict(ck["scheduler"])
    stream.load_state(ck["stream"])
    set_rng_state(ck["rng"])
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


# ------------------------------------------------------------------------------------------------ classification
@dataclass
class ClassifyConfig:
    """Resolved configuration of a classification fine-tuning run (see the module docstring and ``--help``)."""
    data: str
    zoo: list = field(default_factory=list)
    method: str = "zoo"
    arch: str = "resnet50"
    width: int = 16
    sha256: list = field(default_factory=list)
    iters: int = 15000
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 48
    milestones: list | None = None
    gamma: float = 0.1
    image_size: int = 224
    crop_scale: tuple = (0.08, 1.0)
    crop_pct: float = 0.875
    hflip: bool = False
    no_align: bool = False
    hub_k: int = 2
    hub_lambda: float = 0.1
    seed: int = 0
    out: str = "runs/classify"
    resume: bool = False
    save_every: int = 1000
    log_every: int = 50
    eval_every: int = 0
    device: str = "auto"
    workers: int = 0
    threads: int = 0
    tensorboard: bool = True
    progress: bool = True


def cross_entropy_per_sample(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y, reduction="none")


@torch.no_grad()
def evaluate_classifier(model: nn.Module, dataset, device: torch.device, batch_size: int = 256) -> dict[str, float]:
    """top-1 accuracy (%) and mean negative log-likelihood of ``model`` (evaluation mode) on ``dataset``."""
    was = model.training
    model.eval()
    correct, nll, n = 0, 0.0, 0
    for x, y in predict_batches(dataset, batch_size):
        out = model(x.to(device))
        y = y.to(device)
        correct += int((out.argmax(-1) == y).sum())
        nll += float(F.cross_entropy(out.float(), y, reduction="sum"))
        n += len(y)
    model.train(was)
    return {"top1": 100.0 * correct / n, "nll": nll / n}


def prepare(cfg: ClassifyConfig):
    """Data, template, zoo and network of a run (everything that can fail on bad input, before any training)."""
    check_method(cfg.method)
    if cfg.arch not in ARCHS:
        raise ValueError(f"unknown --arch {cfg.arch!r}; choose from {', '.join(ARCHS)}")
    train = open_split(cfg.data, "train")
    test = open_split(cfg.data, "test", train.classes)
    ncls = len(train.classes)
    if ncls < 2:
        raise DataError(f"{cfg.data}: the train split has {ncls} class; need at least 2")
    seed_everything(cfg.seed)
    template = lambda: build_resnet(cfg.arch, ncls, cfg.width)   # noqa: E731
    sources = load_zoo(cfg.zoo, cfg.sha256, template())
    model = build_method(cfg.method, template, sources, mean_softmax_log, align=not cfg.no_align, hub_k=cfg.hub_k)
    train_ds = ImageDataset(train, TrainTransform(cfg.image_size, cfg.crop_scale, hflip=cfg.hflip))
    test_ds = ImageDataset(test, EvalTransform(cfg.image_size, cfg.crop_pct))
    return train_ds, test_ds, model


def run_classification(cfg: ClassifyConfig) -> dict[str, Any]:
    """Fine-tune ``cfg.method`` on ``cfg.data``; writes the run folder and returns the results dict."""
    check_ranges(cfg, positive=("iters", "lr", "batch_size", "width", "image_size", "log_every", "gamma", "crop_pct",
                                "hub_k"),
                 non_negative=("momentum", "weight_decay", "save_every", "eval_every", "workers", "threads",
                               "hub_lambda"))
    if cfg.crop_pct > 1:
        raise UsageError(f"out of range: --crop-pct {cfg.crop_pct} (must be <= 1)")
    if cfg.momentum >= 1:
        raise UsageError(f"out of range: --momentum {cfg.momentum} (must be < 1)")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    try:
        train_ds, test_ds, model = prepare(cfg)
    except USER_ERRORS as e:
        raise UsageError(str(e)) from e
    model.to(device)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    config = asdict(cfg) | {"milestones": milestones_for(cfg.iters, cfg.milestones),
                            "classes": train_ds.split.classes, "n_train": len(train_ds), "n_test": len(test_ds)}
    write_json(out / "config.json", {"config": config, "environment": environment()})
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, config["milestones"], cfg.gamma)
    stream = BatchStream(train_ds, cfg.batch_size, seed=cfg.seed, workers=cfg.workers)
    ck_path = out / "checkpoint.pt"
    state = FitState()
    if cfg.resume and ck_path.exists():
        try:
            state = resume_from(ck_path, model, optimizer, scheduler, stream, config,
                                ("data", "zoo", "method", "arch", "width", "iters", "batch_size", "seed"))
        except ValueError as e:
            raise UsageError(str(e)) from e
    checkpoint = make_checkpointer(ck_path, model, optimizer, scheduler, stream, config)
    writer = open_writer(out, cfg.tensorboard)

    def evaluate(it: int) -> dict:
        metrics = evaluate_classifier(model, test_ds, device)
        if writer is not None:
            for k, v in metrics.items():
                writer.add_scalar(f"test/{k}", v, it)
        return metrics

    loss_fn = lambda net, x, y: objective(net, net(x), y, cross_entropy_per_sample, cfg.hub_lambda)  # noqa: E731
    fit(model, stream, optimizer, scheduler, cfg.iters, loss_fn, device, state, checkpoint=checkpoint,
        save_every=cfg.save_every, log_every=cfg.log_every, writer=writer, progress=cfg.progress,
        evaluate=evaluate, eval_every=cfg.eval_every, desc=cfg.method)
    checkpoint(state)
    metrics = evaluate(state.iteration)
    infer = inference_model(model)
    results = {
        "method": cfg.method, "arch": cfg.arch, "data": cfg.data, "zoo": list(cfg.zoo), "seed": cfg.seed,
        "top1": metrics["top1"], "test_nll": metrics["nll"], "iterations": state.iteration,
        "train_seconds": state.seconds, "it_per_s": state.iteration / max(state.seconds, 1e-9),
        "first_loss": state.history[0][1]["loss"] if state.history else None,
        "final_loss": state.history[-1][1]["loss"] if state.history else None,
        "params_train": count_params(model), "params_inference": count_params(infer),
        "gates": {k: v for k, v in flat_stats(model).items()},
        "history": state.history,
    }
    if isinstance(model, Ensemble):
        results["members_top1"] = [evaluate_classifier(m_, test_ds, device)["top1"] for m_ in model.models]
    save_atomic(model.state_dict(), out / "model.pt")
    write_json(out / "results.json", results)
    if writer is not None:
        writer.close()
    return results


def build_parser() -> argparse.ArgumentParser:
    d = ClassifyConfig(data="")
    p = OneLineParser(prog="python -m rlzoo_transfer.vision.classify",
                      description="Fine-tune a zoo of ResNets on an image-classification task "
                                  "(top-1 on the test split).")
    p.add_argument("--data", required=True, help="ImageFolder-style DIR (DIR/train/<class>/*, DIR/test/<class>/*) "
                   "or a CSV list path,label,split")
    p.add_argument("--zoo", nargs="*", default=[], help="torchvision-format state_dicts of --arch (the sources)")
    p.add_argument("--sha256", nargs="*", default=[], help="expected sha256 (or >= 8-digit prefix) per --zoo file")
    p.add_argument("--method", default=d.method, help=f"one of {', '.join(METHODS)} (default {d.method})")
    p.add_argument("--arch", default=d.arch, help=f"one of {', '.join(ARCHS)} (default {d.arch})")
    p.add_argument("--width", type=int, default=d.width, help="base width of --arch small (default 16)")
    p.add_argument("--iters", type=int, default=d.iters, help="training iterations (default 15000)")
    p.add_argument("--lr", type=float, default=d.lr, help="SGD learning rate (default 0.01)")
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="default 48")
    p.add_argument("--milestones", type=int, nargs="*", default=None,
                   help="lr x gamma at these iterations (default 40%% and 80%% of --iters: 6k, 12k of 15k)")
    p.add_argument("--gamma", type=float, default=d.gamma)
    p.add_argument("--image-size", type=int, default=d.image_size, help="crop size (default 224)")
    p.add_argument("--crop-scale", type=float, nargs=2, default=list(d.crop_scale),
                   help="area fraction range of the random-resized crop (default 0.08 1)")
    p.add_argument("--crop-pct", type=float, default=d.crop_pct, help="test: centre crop fraction (default 0.875)")
    p.add_argument("--hflip", action="store_true", help="random horizontal flips in training")
    p.add_argument("--no-align", action="store_true", help="zoo methods without channel alignment (w/o T)")
    p.add_argument("--hub-k", type=int, default=d.hub_k, help="hub: models activated per sample (default 2)")
    p.add_argument("--hub-lambda", type=float, default=d.hub_lambda, help="hub: explore-loss weight (default 0.1)")
    p.add_argument("--seed", type=seed_arg, default=d.seed)
    p.add_argument("--out", default=d.out, help="run folder (default runs/classify)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    p.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint period in iterations")
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="test-set evaluation period (0: at the end)")
    p.add_argument("--device", default=d.device, help="auto | cpu | cuda[:i]")
    p.add_argument("--workers", type=int, default=d.workers, help="data-loading processes (0: in the main one)")
    p.add_argument("--threads", type=int, default=d.threads, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-tensorboard", dest="tensorboard", action="store_false")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = ClassifyConfig(**{k: (tuple(v) if k == "crop_scale" else v) for k, v in vars(args).items()})
    try:
        results = run_classification(cfg)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({k: results[k] for k in ("method", "top1", "test_nll", "iterations", "it_per_s")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
