"""The classification fine-tuning run of ``python -m rlzoo_transfer.vision.classify`` (its protocol, data and run
folder are described there): the papers' learning-rate schedule, top-1 / NLL evaluation, and the run itself.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from rlzoo_transfer.layers import flat_stats
from rlzoo_transfer.vision.data import (BatchStream, DataError, EvalTransform, ImageDataset, TenCropTransform,
                                        TrainTransform, open_split, predict_batches)
from rlzoo_transfer.vision.options import UsageError, check_choices, check_ranges
from rlzoo_transfer.vision.resnet import build_resnet, count_params
from rlzoo_transfer.vision.runtime import (USER_ERRORS, finished_results, load_zoo, pick_device, save_atomic,
                                           seed_everything, train_run, write_json)
from rlzoo_transfer.vision.zoo import Ensemble, build_method, inference_model, mean_softmax_log, objective

if TYPE_CHECKING:
    from rlzoo_transfer.vision.classify import ClassifyConfig


def milestones_for(iters: int, milestones: Sequence[int] | None) -> list[int]:
    """The lr decay iterations: given, or the papers' 6k / 12k of 15k scaled to ``iters``."""
    if milestones is not None:
        return sorted(int(m) for m in milestones)
    return [round(0.4 * iters), round(0.8 * iters)]


def cross_entropy_per_sample(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y, reduction="none")


@torch.no_grad()
def evaluate_classifier(model: nn.Module, dataset, device: torch.device, batch_size: int = 256) -> dict[str, float]:
    """top-1 accuracy (%) and mean negative log-likelihood of ``model`` (evaluation mode) on ``dataset``.

    Items of shape (V, C, H, W) (``TenCropTransform``) are V views of one image: the prediction is the mean of the
    model's V logits, as the official Zoo-Tuning code's sum of ten-crop logits - for an :class:`Ensemble`, whose
    output is the log of its members' mean probabilities, the log of the mean probability over the V views too
    (soft voting over members and views alike); ``batch_size`` images make ``V * batch_size`` forward rows.
    """
    was = model.training
    model.eval()
    correct, nll, n = 0, 0.0, 0
    for x, y in predict_batches(dataset, batch_size):
        if x.dim() == 5:   # (B, V, C, H, W)
            views = model(x.flatten(0, 1).to(device)).unflatten(0, x.shape[:2])
            out = views.logsumexp(1) - math.log(views.shape[1]) if isinstance(model, Ensemble) else views.mean(1)
        else:
            out = model(x.to(device))
        y = y.to(device)
        correct += int((out.argmax(-1) == y).sum())
        nll += float(F.cross_entropy(out.float(), y, reduction="sum"))
        n += len(y)
    model.train(was)
    return {"top1": 100.0 * correct / n, "nll": nll / n}


def prepare(cfg: ClassifyConfig):
    """Data, template, zoo and network of a run (everything that can fail on bad input, before any training)."""
    check_choices(cfg)
    train = open_split(cfg.data, "train")
    test = open_split(cfg.data, "test", train.classes)
    ncls = len(train.classes)
    if ncls < 2:
        raise DataError(f"{cfg.data}: the train split has {ncls} class; need at least 2")
    seed_everything(cfg.seed)
    template = lambda: build_resnet(cfg.arch, ncls, cfg.width)   # noqa: E731
    sources = load_zoo(cfg.zoo, cfg.sha256, template())
    model = build_method(cfg.method, template, sources, mean_softmax_log, align=not cfg.no_align,
                         align_stages=cfg.align_stages, bn_stats=cfg.bn_stats, hub_k=cfg.hub_k)
    train_ds = ImageDataset(train, TrainTransform(cfg.image_size, cfg.crop_scale, hflip=cfg.hflip))
    test_ds = ImageDataset(test, (TenCropTransform if cfg.ten_crop else EvalTransform)(cfg.image_size, cfg.crop_pct))
    return train_ds, test_ds, model


def run_classification(cfg: ClassifyConfig) -> dict[str, Any]:
    """Fine-tune ``cfg.method`` on ``cfg.data``; writes the run folder and returns the results dict - with
    ``cfg.resume`` on a finished run, its results.json, the folder left as it is."""
    check_ranges(cfg, positive=("iters", "lr", "batch_size", "width", "image_size", "log_every", "gamma", "crop_pct",
                                "hub_k"),
                 non_negative=("momentum", "weight_decay", "save_every", "eval_every", "workers", "threads",
                               "hub_lambda"))
    if cfg.crop_pct > 1:
        raise UsageError(f"out of range: --crop-pct {cfg.crop_pct} (must be <= 1)")
    if cfg.momentum >= 1:
        raise UsageError(f"out of range: --momentum {cfg.momentum} (must be < 1)")
    if cfg.nesterov and cfg.momentum == 0:
        raise UsageError("--nesterov needs a momentum > 0 (--momentum)")
    if cfg.ten_crop and cfg.crop_pct == 1:
        raise UsageError("--ten-crop needs --crop-pct below 1: at 1 the image is resized to the crop size, so the "
                         "five crops would be one")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    try:
        train_ds, test_ds, model = prepare(cfg)
    except USER_ERRORS as e:
        raise UsageError(str(e)) from e
    model.to(device)
    config = asdict(cfg) | {"milestones": milestones_for(cfg.iters, cfg.milestones),
                            "classes": train_ds.split.classes, "n_train": len(train_ds), "n_test": len(test_ds)}
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                nesterov=cfg.nesterov)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, config["milestones"], cfg.gamma)
    stream = BatchStream(train_ds, cfg.batch_size, seed=cfg.seed, workers=cfg.workers)
    eval_batch = 25 if cfg.ten_crop else 256   # images per evaluation batch (x 10 views with --ten-crop)
    loss_fn = lambda net, x, y: objective(net, net(x), y, cross_entropy_per_sample, cfg.hub_lambda)  # noqa: E731
    ran = train_run(cfg, config, model, optimizer, scheduler, stream, cfg.iters, loss_fn, device,
                    lambda: evaluate_classifier(model, test_ds, device, eval_batch))
    if ran is None:                                    # --resume of a finished run: left as it is
        return finished_results(cfg.out)
    state, metrics = ran
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
        results["members_top1"] = [evaluate_classifier(m_, test_ds, device, eval_batch)["top1"] for m_ in model.models]
    save_atomic(model.state_dict(), Path(cfg.out) / "model.pt")
    write_json(Path(cfg.out) / "results.json", results)
    return results
