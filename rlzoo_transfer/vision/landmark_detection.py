"""The network and the run of ``python -m rlzoo_transfer.vision.landmarks`` (its protocol, the papers' choices and
the data are described there): a ResNet with SimpleBaseline's heatmap head, the heatmap loss, NME evaluation.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import nn

from rlzoo_transfer.vision.data import BatchStream, DataError
from rlzoo_transfer.vision.faces import (EYES_300W, EYES_SYNTHETIC, LandmarkDataset, attach_boxes, nme,
                                         open_landmark_split, parse_flip_pairs)
from rlzoo_transfer.vision.heatmaps import decode_heatmaps, heatmap_to_image
from rlzoo_transfer.vision.options import UsageError, check_choices, check_ranges
from rlzoo_transfer.vision.resnet import ResNet, build_resnet, count_params, sha256_of
from rlzoo_transfer.vision.runtime import (USER_ERRORS, finished_results, load_zoo, pick_device, save_atomic,
                                           seed_everything, train_run, write_json)
from rlzoo_transfer.vision.zoo import Ensemble, build_method, inference_model, mean_outputs, objective

if TYPE_CHECKING:
    from rlzoo_transfer.vision.landmarks import LandmarkConfig


class HeatmapResNet(ResNet):
    """A ResNet whose ``fc`` is replaced by a heatmap ``head`` (SimpleBaseline): ``n_up`` x
    [ConvTranspose2d(4, stride 2, pad 1, no bias), BN, ReLU] with ``deconv_width`` channels, then a 1x1 conv to
    ``num_points`` maps; n_up = log2(backbone stride / heatmap stride).  (B, 3, S, S) -> (B, K, S/s, S/s)."""

    def __init__(self, backbone: ResNet, num_points: int, heatmap_stride: int = 4, deconv_width: int = 256):
        nn.Module.__init__(self)
        for name, mod in backbone.named_children():
            if name != "fc":
                setattr(self, name, mod)
        for attr in ("block", "blocks", "widths", "stem", "in_channels", "feature_dim", "stride", "arch_name"):
            if hasattr(backbone, attr):
                setattr(self, attr, getattr(backbone, attr))
        ratio = backbone.stride / heatmap_stride
        n_up = int(round(math.log2(ratio))) if ratio >= 1 else -1
        if n_up < 0 or 2 ** n_up != ratio:
            raise ValueError(f"heatmap stride {heatmap_stride} must be the backbone stride {backbone.stride} "
                             "divided by a power of two")
        layers, cin = [], backbone.feature_dim
        for _ in range(n_up):
            layers += [nn.ConvTranspose2d(cin, deconv_width, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(deconv_width), nn.ReLU(inplace=True)]
            cin = deconv_width
        layers.append(nn.Conv2d(cin, num_points, 1))
        self.head = nn.Sequential(*layers)
        self.heatmap_stride, self.num_points = heatmap_stride, num_points
        for mod in self.head.modules():
            if isinstance(mod, (nn.ConvTranspose2d, nn.Conv2d)):
                nn.init.normal_(mod.weight, std=0.001)
                if mod.bias is not None:
                    nn.init.zeros_(mod.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_landmark_net(arch: str, num_points: int, width: int = 16, heatmap_stride: int = 4) -> HeatmapResNet:
    """``arch``'s backbone with a heatmap head (deconv width 256 for the ImageNet ResNets, 4 x width for small)."""
    backbone = build_resnet(arch, 1, width)
    return HeatmapResNet(backbone, num_points, heatmap_stride, 256 if arch != "small" else 4 * width)


def heatmap_mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error over the (K, H, W) maps -> (B,)."""
    return (out.float() - target.float()).pow(2).flatten(1).mean(1)


@torch.no_grad()
def evaluate_landmarks(model: nn.Module, dataset: LandmarkDataset, eyes: tuple[int, int], device: torch.device,
                       batch_size: int = 64) -> dict[str, float]:
    """Mean NME (fraction) and the failure rate at NME > 0.1 of ``model`` on ``dataset`` (its test crops)."""
    was = model.training
    model.eval()
    preds, gts = [], []
    for start in range(0, len(dataset), batch_size):
        idx = range(start, min(start + batch_size, len(dataset)))
        x = torch.stack([dataset[i][0] for i in idx]).to(device)
        hm = model(x).float().cpu()
        preds.append(heatmap_to_image(decode_heatmaps(hm), dataset.stride))
        gts.extend(dataset.points(i) for i in idx)
    model.train(was)
    err = nme(torch.cat(preds).numpy(), np.stack(gts), eyes)
    return {"nme": float(err.mean()), "failure_rate": float((err > 0.1).mean())}


def _eyes_for(k: int, eyes: Sequence[int] | None) -> tuple[int, int]:
    if eyes:
        if len(eyes) != 2 or not all(0 <= e < k for e in eyes):
            raise ValueError(f"--eyes needs two landmark indices in [0, {k}), got {list(eyes)}")
        return int(eyes[0]), int(eyes[1])
    if k == 68:
        return EYES_300W
    if k == 5:
        return EYES_SYNTHETIC
    raise ValueError(f"{k} landmarks: give the inter-ocular pair with --eyes I J (e.g. WFLW 60 72, COFW 8 9)")


def run_landmarks(cfg: LandmarkConfig) -> dict[str, Any]:
    """Fine-tune ``cfg.method`` for landmark detection on ``cfg.data``; writes the run folder, returns results - with
    ``cfg.resume`` on a finished run, its results.json, the folder left as it is."""
    check_ranges(cfg, positive=("epochs", "lr", "batch_size", "width", "image_size", "heatmap_stride", "sigma",
                                "box_scale", "log_every", "gamma", "hub_k"),
                 non_negative=("iters", "rotate", "save_every", "eval_every", "workers", "threads", "hub_lambda"))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    try:
        check_choices(cfg)
        train_split, test_split = open_landmark_split(cfg.data, "train"), open_landmark_split(cfg.data, "test")
        if cfg.test_boxes is not None:
            test_split = attach_boxes(test_split, cfg.test_boxes)
        k = train_split.points.shape[1]
        if test_split.points.shape[1] != k:
            raise DataError(f"{cfg.data}: train has {k} landmarks, test {test_split.points.shape[1]}")
        pairs = parse_flip_pairs(cfg.flip_pairs, k)
        eyes = _eyes_for(k, cfg.eyes)
        seed_everything(cfg.seed)
        template = lambda: build_landmark_net(cfg.arch, k, cfg.width, cfg.heatmap_stride)  # noqa: E731
        sources = load_zoo(cfg.zoo, cfg.sha256, template())
        model = build_method(cfg.method, template, sources, mean_outputs, align=not cfg.no_align,
                             align_stages=cfg.align_stages, bn_stats=cfg.bn_stats, hub_k=cfg.hub_k)
        common = dict(image_size=cfg.image_size, stride=cfg.heatmap_stride, sigma=cfg.sigma, flip_pairs=pairs,
                      rotate=cfg.rotate, scale=cfg.scale, box_scale=cfg.box_scale)
        train_ds = LandmarkDataset(train_split, train=True, **common)
        test_ds = LandmarkDataset(test_split, train=False, **common)
    except USER_ERRORS as e:
        raise UsageError(str(e)) from e
    model.to(device)
    per_epoch = max(len(train_ds) // cfg.batch_size, 1)
    iters = cfg.iters or cfg.epochs * per_epoch
    milestones = [m * per_epoch for m in cfg.milestones_epochs] if not cfg.iters else \
        [round(iters * m / cfg.epochs) for m in cfg.milestones_epochs]
    config = asdict(cfg) | {"iterations": iters, "milestones": milestones, "num_points": k, "eyes_used": eyes,
                            "flip_pairs_used": pairs, "n_train": len(train_ds), "n_test": len(test_ds)}
    if cfg.test_boxes is not None:                    # the boxes themselves, not just their path, decide the crops
        config["test_boxes_sha256"] = sha256_of(cfg.test_boxes)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, cfg.gamma)
    stream = BatchStream(train_ds, cfg.batch_size, seed=cfg.seed, workers=cfg.workers)
    loss_fn = lambda net, x, y: objective(net, net(x), y, heatmap_mse, cfg.hub_lambda)  # noqa: E731
    ran = train_run(cfg, config, model, optimizer, scheduler, stream, iters, loss_fn, device,
                    lambda: evaluate_landmarks(model, test_ds, eyes, device))
    if ran is None:                                    # --resume of a finished run: left as it is
        return finished_results(cfg.out)
    state, metrics = ran
    results = {
        "method": cfg.method, "arch": cfg.arch, "data": cfg.data, "zoo": list(cfg.zoo), "seed": cfg.seed,
        "nme": metrics["nme"], "nme_percent": 100 * metrics["nme"], "failure_rate": metrics["failure_rate"],
        "iterations": state.iteration, "train_seconds": state.seconds,
        "it_per_s": state.iteration / max(state.seconds, 1e-9),
        "first_loss": state.history[0][1]["loss"] if state.history else None,
        "final_loss": state.history[-1][1]["loss"] if state.history else None,
        "params_train": count_params(model), "params_inference": count_params(inference_model(model)),
        "history": state.history,
    }
    if isinstance(model, Ensemble):
        results["members_nme"] = [evaluate_landmarks(m_, test_ds, eyes, device)["nme"] for m_ in model.models]
    save_atomic(model.state_dict(), Path(cfg.out) / "model.pt")
    write_json(Path(cfg.out) / "results.json", results)
    return results
