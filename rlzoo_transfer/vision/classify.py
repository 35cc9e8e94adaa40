"""Fine-tune a zoo of ResNets on an image-classification task and report top-1 accuracy.

    python -m rlzoo_transfer.vision.classify --data DIR --zoo a.pt b.pt c.pt --method zoo --out runs/cls/zoo

Defaults are the papers' protocol (Zoo-Tuning Sec. 4.2, Hub-Pathway Sec. 4.1): ResNet-50, the last layer
replaced by a randomly initialised one, SGD lr 0.01 momentum 0.9, batch 48, 15k iterations, lr x0.1 at 6k and
12k, random-resized 224 x 224 crops.  The papers give no weight decay and no flips: both default off
(``--weight-decay``, ``--hflip``).  With ``--iters`` and no ``--milestones`` the decays fall at 40% and 80% of
the run (6k / 15k, 12k / 15k).  Test images: shorter side to 224 / 0.875, centre crop (``--crop-pct``).

The official thuml/Zoo-Tuning code goes beyond what the papers state: random flips, weight decay 5e-4, Nesterov
momentum, and a ten-crop test (four corners and the centre of the image and of its mirror, logits summed); add
``--hflip --weight-decay 5e-4 --nesterov --ten-crop`` to follow it (it also resizes images to 256 x 256 before the
crops, where the test transform here keeps the aspect ratio).  The defaults stay with the papers' text.

``--data``: an ImageFolder-style directory (``DIR/train/<class>/*.png``, ``DIR/test/<class>/*.png``) or a CSV list
``path,label,split`` (vision/data.py).  ``--zoo``: torchvision-format state_dicts of ``--arch`` (vision/resnet.py);
their classifier heads are ignored.  ``--method``: scratch | single | zoo | zoo-lite | zoo-avg | ensemble | hub
(vision/zoo.py).

The run folder ``--out`` gets ``config.json`` (resolved configuration, package versions, git commit),
``tb/`` (tensorboard: losses, learning rate, gates / pathway weights, test accuracy), ``checkpoint.pt``
(every ``--save-every`` iterations and at the end; ``--resume`` continues from it - exactly, with
``--workers 0``), ``model.pt`` (the final weights) and ``results.json`` (written atomically).  An ``--out`` that
already holds a run (results.json, model.pt, checkpoint.pt or config.json) is refused without ``--resume``, before
anything is read or written; ``--resume`` continues an unfinished run and leaves a finished one as it is (exit
status 0, its results printed again).  A missing or empty folder, or one with only other files, is free.  Bad
input (missing data, a checkpoint of another architecture, an unknown method, a used ``--out``) is one line on
stderr and exit status 2.

This module is the CLI and its settings (torch-free: ``--help`` answers at once); the run is
vision/classification.py's, its training loop and run plumbing vision/runtime.py's, shared with
vision/landmarks.py.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Sequence

from rlzoo_transfer.vision.options import FineTuneConfig, OneLineParser, add_method_args, add_run_args, cli_main


# ------------------------------------------------------------------------------------------------ classification
@dataclass(kw_only=True)
class ClassifyConfig(FineTuneConfig):
    """Resolved configuration of a classification fine-tuning run (see the module docstring and ``--help``)."""
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
    nesterov: bool = False
    ten_crop: bool = False
    out: str = "runs/classify"


def build_parser() -> OneLineParser:
    d = ClassifyConfig(data="")
    p = OneLineParser(prog="python -m rlzoo_transfer.vision.classify",
                      description="Fine-tune a zoo of ResNets on an image-classification task "
                                  "(top-1 on the test split).")
    p.add_argument("--data", required=True, help="ImageFolder-style DIR (DIR/train/<class>/*, DIR/test/<class>/*) "
                   "or a CSV list path,label,split")
    add_method_args(p, d)
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
    p.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    p.add_argument("--ten-crop", action="store_true",
                   help="test on ten views (4 corners + centre, and mirrored), outputs averaged")
    add_run_args(p, d)
    return p


def run(cfg: ClassifyConfig) -> dict[str, Any]:
    """:func:`~rlzoo_transfer.vision.classification.run_classification`, imported only now (it loads torch)."""
    from rlzoo_transfer.vision.classification import run_classification

    return run_classification(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(build_parser(), lambda a: ClassifyConfig(**a | {"crop_scale": tuple(a["crop_scale"])}), run,
                    ("method", "top1", "test_nll", "iterations", "it_per_s"), argv)


if __name__ == "__main__":
    sys.exit(main())
