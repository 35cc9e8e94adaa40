"""Facial-landmark detection on a zoo of ResNets: heatmap regression, decoding with the quarter offset, NME.

    python -m rlzoo_transfer.vision.landmarks --data DIR --zoo a.pt b.pt --method zoo --flip-pairs 300w

Protocol defaults (Zoo-Tuning Sec. 4.3, Hub-Pathway Sec. 4.2, after Sun et al. 2019 / Wu et al. 2018): faces
cropped around their box and resized to 256 x 256; augmentation by in-plane rotation U(-30, 30) degrees,
scaling U(0.75, 1.25) and random horizontal flips (which swap left / right landmark indices, ``--flip-pairs``);
Adam, lr 1e-4, batch 16, 60 epochs, lr x0.1 at epochs 30 and 50; at test time each landmark is the arg-max of
its heatmap moved a quarter pixel towards the higher neighbour (per axis; Chen et al. 2017 / HRNet's
``decode_preds``); NME normalised by the inter-ocular distance (outer eye corners: 300W points 37 and 46,
i.e. indices 36 and 45).

Choices the papers leave to their references (HRNet's facial-landmark code, Sun et al. 2019): heatmaps at
1/4 of the input (64 x 64), Gaussian targets with sigma 1.5 heatmap pixels and peak 1 (centred at the exact
sub-pixel location), mean squared error; the head on a ResNet backbone is SimpleBaseline's (Xiao et al. 2018):
``ConvTranspose2d(4x4, stride 2) + BN + ReLU`` blocks (256 channels) from the backbone's stride down to the
heatmap stride, then a 1x1 conv to K maps.  The face box is the landmarks' bounding box enlarged by
``--box-scale`` 1.25 (square, same centre; the papers do not say how they place their crops), so the test crops
are placed with the ground truth; ``--test-boxes FILE`` (CSV ``image,x0,y0,x1,y1``, e.g. a face detector's
boxes: 300W ships such boxes as .mat files, to be written out as CSV) places each test crop around its own box
instead (enlarged by ``--box-scale`` all the same), so that nothing the test is scored against decides where the
face is; the file's sha256 is recorded with the run (and checked on ``--resume``).  Training crops keep the
landmarks' boxes (augmented by rotation and scale).

This module is the CLI and its settings (torch-free: ``--help`` answers at once); the network and the run are
vision/landmark_detection.py's, the data, its geometry and NME vision/faces.py's, heatmap frames and decoding
vision/heatmaps.py's.  The run folder ``--out`` and ``--resume`` are classify's (vision/classify.py): a folder
that already holds a run is refused without ``--resume``, and a finished one is never retrained or overwritten.

Data (``--data``):

* a directory ``DIR/<split>/*.{png,jpg,...}``, each image with its 300W-style ``.pts`` file of the same stem
  (``version: 1`` / ``n_points: K`` / ``{`` / K lines ``x y`` / ``}``), splits ``train`` and ``test``;
* a CSV list ``path,split,x0,y0,x1,y1,...`` (header optional; paths relative to the CSV's folder).
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

from rlzoo_transfer.vision.options import FineTuneConfig, OneLineParser, add_method_args, add_run_args, cli_main


@dataclass(kw_only=True)
class LandmarkConfig(FineTuneConfig):
    """Resolved configuration of a landmark fine-tuning run (module docstring, ``--help``)."""
    epochs: int = 60
    iters: int = 0                       # 0: epochs x (train images // batch size)
    lr: float = 1e-4
    batch_size: int = 16
    milestones_epochs: list = field(default_factory=lambda: [30, 50])
    gamma: float = 0.1
    image_size: int = 256
    heatmap_stride: int = 4
    sigma: float = 1.5
    rotate: float = 30.0
    scale: tuple = (0.75, 1.25)
    box_scale: float = 1.25
    flip_pairs: str = "300w"
    eyes: list | None = None             # None: 300W's (36, 45) for 68 points, synthetic (0, 1) for 5, else error
    test_boxes: str | None = None        # CSV image,x0,y0,x1,y1: the test crops' face boxes (None: the landmarks')
    out: str = "runs/landmarks"


def build_parser() -> OneLineParser:
    d = LandmarkConfig(data="")
    p = OneLineParser(prog="python -m rlzoo_transfer.vision.landmarks",
                      description="Fine-tune a zoo of ResNets for facial-landmark detection (NME on the test split).")
    p.add_argument("--data", required=True, help="DIR with <split>/<image> + <image>.pts, or a CSV "
                   "path,split,x0,y0,...")
    add_method_args(p, d)
    p.add_argument("--epochs", type=int, default=d.epochs, help="default 60")
    p.add_argument("--iters", type=int, default=d.iters, help="iterations (overrides --epochs; milestones scale)")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (default 1e-4)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="default 16")
    p.add_argument("--milestones-epochs", type=int, nargs="*", default=d.milestones_epochs,
                   help="lr x gamma at these epochs (default 30 50)")
    p.add_argument("--gamma", type=float, default=d.gamma)
    p.add_argument("--image-size", type=int, default=d.image_size, help="crop size (default 256)")
    p.add_argument("--heatmap-stride", type=int, default=d.heatmap_stride, help="input / heatmap size (default 4)")
    p.add_argument("--sigma", type=float, default=d.sigma, help="Gaussian sigma in heatmap pixels (default 1.5)")
    p.add_argument("--rotate", type=float, default=d.rotate, help="max rotation in degrees (default 30)")
    p.add_argument("--scale", type=float, nargs=2, default=list(d.scale), help="scale range (default 0.75 1.25)")
    p.add_argument("--box-scale", type=float, default=d.box_scale, help="face box = landmarks' box x this")
    p.add_argument("--flip-pairs", default=d.flip_pairs,
                   help="300w (68 points) | synthetic (5) | none | 'i-j,k-l,...' | a file of 'i j' lines "
                        "(default 300w)")
    p.add_argument("--eyes", type=int, nargs=2, default=None, help="inter-ocular landmark indices for NME")
    p.add_argument("--test-boxes", default=None, help="CSV image,x0,y0,x1,y1 of face boxes (e.g. a detector's) for "
                   "the test crops, instead of the landmarks' bounding boxes")
    add_run_args(p, d)
    return p


def run(cfg: LandmarkConfig) -> dict[str, Any]:
    """:func:`~rlzoo_transfer.vision.landmark_detection.run_landmarks`, imported only now (it loads torch)."""
    from rlzoo_transfer.vision.landmark_detection import run_landmarks

    return run_landmarks(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(build_parser(), lambda a: LandmarkConfig(**a | {"scale": tuple(a["scale"])}), run,
                    ("method", "nme", "nme_percent", "iterations", "it_per_s"), argv)


if __name__ == "__main__":
    sys.exit(main())
