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
``--box-scale`` 1.25 (square, same centre), since no separate boxes are read.

Coordinates: (x, y) = (column, row) in pixels, pixel centres at integers (0-based).  A heatmap of stride s
maps image point p to (p + 0.5) / s - 0.5.  NME is computed in the frame of the test crop: it is invariant to
the similarity transform between crop and original image.

Data (``--data``):

* a directory ``DIR/<split>/*.{png,jpg,...}``, each image with its 300W-style ``.pts`` file of the same stem
  (``version: 1`` / ``n_points: K`` / ``{`` / K lines ``x y`` / ``}``), splits ``train`` and ``test``;
* a CSV list ``path,split,x0,y0,x1,y1,...`` (header optional; paths relative to the CSV's folder).
"""
from __future__ import annotations

import argparse
import csv
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rlzoo_transfer.vision.runtime import (USER_ERRORS, OneLineParser, UsageError, add_run_args, check_ranges,
                                           cli_main, load_zoo, pick_device, save_atomic, seed_everything, train_run,
                                           write_json)
from rlzoo_transfer.atomic import write_atomic
from rlzoo_transfer.vision.data import IMAGE_EXTENSIONS, BatchStream, DataError, load_image, normalize
from rlzoo_transfer.vision.resnet import ARCHS, ResNet, build_resnet, count_params
from rlzoo_transfer.vision.zoo import METHODS, Ensemble, build_method, check_method, inference_model, \
    mean_outputs, objective

# 300W / iBUG 68-point mirror pairs (0-based; 1-based: jaw 1-17, brows 18-27, nose 28-36, eyes 37-48, mouth 49-68)
FLIP_PAIRS_300W = [(0, 16), (1, 15), (2, 14), (3, 13), (4, 12), (5, 11), (6, 10), (7, 9),
                   (17, 26), (18, 25), (19, 24), (20, 23), (21, 22), (31, 35), (32, 34),
                   (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46),
                   (48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]
EYES_300W = (36, 45)     # outer eye corners: the inter-ocular normalisation of 300W
# The synthetic faces of :func:`synthetic_faces`: 0 left eye, 1 right eye, 2 nose, 3 left / 4 right mouth corner
FLIP_PAIRS_SYNTHETIC = [(0, 1), (3, 4)]
EYES_SYNTHETIC = (0, 1)


# ------------------------------------------------------------------------------------------------ pure functions
def image_to_heatmap(points: torch.Tensor, stride: float) -> torch.Tensor:
    """Image pixel coordinates -> heatmap coordinates at ``stride`` (pixel centres aligned)."""
    return (points + 0.5) / stride - 0.5


def heatmap_to_image(points: torch.Tensor, stride: float) -> torch.Tensor:
    return (points + 0.5) * stride - 0.5


def gaussian_heatmaps(points: torch.Tensor, size: tuple[int, int], sigma: float = 1.5) -> torch.Tensor:
    """Gaussian targets: (K, 2) heatmap coordinates -> (K, H, W), ``exp(-d^2 / (2 sigma^2))`` (peak 1 at the point).

    Points with a non-finite coordinate, or farther than 3 sigma outside the map, give an all-zero map.
    """
    h, w = size
    ys = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    p = points.float()
    px, py = p[:, 0].view(-1, 1, 1), p[:, 1].view(-1, 1, 1)
    maps = torch.exp(-((xs - px) ** 2 + (ys - py) ** 2) / (2 * sigma * sigma))
    inside = (torch.isfinite(p).all(1) & (p[:, 0] > -3 * sigma) & (p[:, 0] < w - 1 + 3 * sigma)
              & (p[:, 1] > -3 * sigma) & (p[:, 1] < h - 1 + 3 * sigma))
    return torch.nan_to_num(maps) * inside.view(-1, 1, 1)


def decode_heatmaps(heatmaps: torch.Tensor) -> torch.Tensor:
    """(..., K, H, W) -> (..., K, 2) heatmap coordinates: the arg-max, moved by 0.25 per axis towards the higher
    of its two neighbours on that axis (no move at the border or when they are equal)."""
    *lead, h, w = heatmaps.shape
    hm = heatmaps.reshape(-1, h, w)
    idx = hm.reshape(hm.shape[0], -1).argmax(-1)
    py, px = torch.div(idx, w, rounding_mode="floor"), idx % w
    coords = torch.stack([px, py], -1).to(heatmaps.dtype if heatmaps.is_floating_point() else torch.float32)
    n = torch.arange(hm.shape[0])
    xl, xr = (px - 1).clamp(0, w - 1), (px + 1).clamp(0, w - 1)
    yu, yd = (py - 1).clamp(0, h - 1), (py + 1).clamp(0, h - 1)
    dx = hm[n, py, xr] - hm[n, py, xl]
    dy = hm[n, yd, px] - hm[n, yu, px]
    dx = torch.where((px > 0) & (px < w - 1), dx, torch.zeros_like(dx))
    dy = torch.where((py > 0) & (py < h - 1), dy, torch.zeros_like(dy))
    coords = coords + 0.25 * torch.stack([torch.sign(dx), torch.sign(dy)], -1).to(coords.dtype)
    return coords.reshape(*lead, 2)


def nme(pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray,
        eyes: tuple[int, int] = EYES_300W) -> np.ndarray:
    """Normalised mean error per image: mean_k ||pred_k - target_k|| / ||target[eyes[0]] - target[eyes[1]]||.

    :param pred: (N, K, 2) predicted points
    :param target: (N, K, 2) ground truth, same frame
    :param eyes: indices of the two points whose distance normalises (outer eye corners)
    :return: (N,) NME of each image (fractions; x100 for the papers' percent)
    """
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if p.shape != t.shape or p.ndim != 3 or p.shape[-1] != 2:
        raise ValueError(f"pred and target must both be (N, K, 2), got {p.shape} and {t.shape}")
    iod = np.linalg.norm(t[:, eyes[0]] - t[:, eyes[1]], axis=-1)
    if np.any(iod <= 0):
        raise ValueError("an image has a zero inter-ocular distance")
    return np.linalg.norm(p - t, axis=-1).mean(-1) / iod


def parse_flip_pairs(spec: str | None, k: int | None = None) -> list[tuple[int, int]]:
    """``"300w"``, ``"synthetic"``, ``"none"``, ``"0-1,3-4"`` or a file with one ``i j`` pair per line."""
    if spec is None or spec == "none":
        return []
    if spec == "300w":
        pairs = list(FLIP_PAIRS_300W)
    elif spec == "synthetic":
        pairs = list(FLIP_PAIRS_SYNTHETIC)
    elif Path(spec).is_file():
        pairs = []
        for line in Path(spec).read_text().splitlines():
            line = line.split("#")[0].replace(",", " ").replace("-", " ").split()
            if line:
                pairs.append((int(line[0]), int(line[1])))
    else:
        try:
            pairs = [tuple(int(v) for v in item.split("-")) for item in spec.split(",") if item.strip()]
        except ValueError:
            raise ValueError(f"--flip-pairs {spec!r}: expected 300w, synthetic, none, 'i-j,k-l' or a file") from None
    for pr in pairs:
        if len(pr) != 2 or (k is not None and not all(0 <= i < k for i in pr)):
            raise ValueError(f"flip pair {pr} is not a pair of landmark indices in [0, {k})")
    return [tuple(pr) for pr in pairs]


def flip_permutation(k: int, pairs: Sequence[tuple[int, int]]) -> list[int]:
    """Index map of a horizontal flip: new landmark i is old landmark perm[i]."""
    perm = list(range(k))
    for a, b in pairs:
        perm[a], perm[b] = b, a
    return perm


# ------------------------------------------------------------------------------------------------ readers
def read_pts(path: str | Path) -> np.ndarray:
    """A 300W-style ``.pts`` file -> (K, 2) float array."""
    lines = [ln.strip() for ln in Path(path).read_text().splitlines() if ln.strip()]
    try:
        n = next(int(ln.split(":")[1]) for ln in lines if ln.lower().startswith("n_points"))
        start = lines.index("{") + 1
        pts = np.array([[float(v) for v in ln.split()[:2]] for ln in lines[start:start + n]], dtype=np.float64)
    except (StopIteration, ValueError, IndexError):
        raise DataError(f"{path}: not a .pts file (version / n_points / '{{' / x y lines / '}}')") from None
    if pts.shape != (n, 2):
        raise DataError(f"{path}: n_points is {n} but {len(pts)} points follow")
    return pts


def write_pts(path: str | Path, points: np.ndarray) -> None:
    pts = np.asarray(points, dtype=np.float64)
    body = "\n".join(f"{x:.3f} {y:.3f}" for x, y in pts)
    write_atomic(path, f"version: 1\nn_points: {len(pts)}\n{{\n{body}\n}}\n")


@dataclass
class LandmarkSplit:
    paths: list[Path]
    points: np.ndarray          # (N, K, 2)

    def __len__(self) -> int:
        return len(self.paths)


def read_landmark_csv(path: str | Path, split: str) -> LandmarkSplit:
    """Rows ``path,split,x0,y0,...,x{K-1},y{K-1}`` (header optional) of ``split``."""
    path = Path(path)
    paths, pts = [], []
    with open(path, newline="") as f:
        for i, row in enumerate(csv.reader(f)):
            if not row or row[0].startswith("#") or (i == 0 and row[0].strip().lower() == "path"):
                continue
            if len(row) < 4 or (len(row) - 2) % 2:
                raise DataError(f"{path}:{i + 1}: expected path,split,x0,y0,..., got {len(row)} fields")
            if row[1].strip() != split:
                continue
            try:
                xy = np.array([float(v) for v in row[2:]], dtype=np.float64).reshape(-1, 2)
            except ValueError:
                raise DataError(f"{path}:{i + 1}: non-numeric coordinate") from None
            p = Path(row[0].strip())
            paths.append(p if p.is_absolute() else path.parent / p)
            pts.append(xy)
    if pts and len({len(p) for p in pts}) != 1:
        raise DataError(f"{path}: rows of split {split!r} have different numbers of landmarks")
    return LandmarkSplit(paths, np.stack(pts) if pts else np.zeros((0, 0, 2)))


def open_landmark_split(data: str | Path, split: str) -> LandmarkSplit:
    """The ``split`` of a directory of images with ``.pts`` files or of a CSV list (module docstring)."""
    data = Path(data)
    if not data.exists():
        raise DataError(f"{data}: no such data directory or CSV file")
    if data.is_file():
        s = read_landmark_csv(data, split)
    else:
        d = data / split
        if not d.is_dir():
            raise DataError(f"{d}: no such directory (expected {data}/{split}/<image> + <image>.pts)")
        paths = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        for p in paths:
            if not p.with_suffix(".pts").is_file():
                raise DataError(f"{p}: no landmark file {p.with_suffix('.pts').name}")
        pts = [read_pts(p.with_suffix(".pts")) for p in paths]
        if pts and len({len(p) for p in pts}) != 1:
            raise DataError(f"{d}: the .pts files have different numbers of landmarks")
        s = LandmarkSplit(paths, np.stack(pts) if pts else np.zeros((0, 0, 2)))
    if len(s) == 0:
        raise DataError(f"{data}: the {split!r} split has no images")
    missing = next((p for p in s.paths if not p.is_file()), None)
    if missing is not None:
        raise DataError(f"{data}: image {missing} does not exist")
    return s


# ------------------------------------------------------------------------------------------------ geometry
def crop_transform(points: np.ndarray, out_size: int, box_scale: float = 1.25, rotate_deg: float = 0.0,
                   scale: float = 1.0, flip: bool = False) -> np.ndarray:
    """3x3 matrix mapping original image coordinates to the ``out_size`` crop: the square box (landmarks' bounding
    box x ``box_scale``) around their centre, scaled by ``scale``, rotated by ``rotate_deg`` about the centre,
    mirrored when ``flip``."""
    lo, hi = np.nanmin(points, 0), np.nanmax(points, 0)
    centre = (lo + hi) / 2
    box = max(float(np.max(hi - lo)) * box_scale, 1.0)
    s = out_size / box * scale
    a = math.radians(rotate_deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * s
    m = np.eye(3)
    m[:2, :2] = rot
    m[:2, 2] = (out_size - 1) / 2 - rot @ centre
    if flip:
        m = np.array([[-1.0, 0, out_size - 1], [0, 1, 0], [0, 0, 1]]) @ m
    return m


def apply_transform(m: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ m[:2, :2].T + m[:2, 2]


def warp_image(img: torch.Tensor, m: np.ndarray, out_size: int) -> torch.Tensor:
    """Resample (C, H, W) into the ``out_size`` x ``out_size`` crop given by ``m`` (original -> crop), bilinear,
    zeros outside the image."""
    c, h, w = img.shape
    inv = torch.as_tensor(np.linalg.inv(m), dtype=torch.float32)
    g = torch.arange(out_size, dtype=torch.float32)
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    src = torch.stack([xx, yy, torch.ones_like(xx)], -1) @ inv.T                    # (S, S, 3) original coords
    grid = torch.stack([(2 * src[..., 0] + 1) / w - 1, (2 * src[..., 1] + 1) / h - 1], -1)
    out = F.grid_sample(img.float().unsqueeze(0), grid.unsqueeze(0), mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    return out.squeeze(0)


# ------------------------------------------------------------------------------------------------ data set
class LandmarkDataset(torch.utils.data.Dataset):
    """(normalised crop (3, S, S), Gaussian heatmaps (K, S/stride, S/stride)) per face; ``points(i)`` gives the
    test-time ground truth in the crop frame.  Augmentation (``train=True``): rotation U(-rotate, rotate),
    scale U(scale), horizontal flip with probability 0.5 (swapping ``flip_pairs``)."""

    def __init__(self, split: LandmarkSplit, image_size: int = 256, stride: int = 4, sigma: float = 1.5,
                 train: bool = False, flip_pairs: Sequence[tuple[int, int]] = (), rotate: float = 30.0,
                 scale: tuple[float, float] = (0.75, 1.25), box_scale: float = 1.25, flip: bool = True):
        if image_size % stride:
            raise ValueError(f"image size {image_size} is not a multiple of the heatmap stride {stride}")
        self.split, self.size, self.stride, self.sigma, self.train = split, image_size, stride, sigma, train
        self.k = split.points.shape[1]
        self.perm = flip_permutation(self.k, flip_pairs)
        self.flip = flip and bool(flip_pairs)
        self.rotate, self.scale, self.box_scale = rotate, tuple(scale), box_scale
        self._images: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.split)

    def image(self, i: int) -> torch.Tensor:
        if i not in self._images:
            self._images[i] = load_image(self.split.paths[i])
        return self._images[i]

    def transform(self, i: int, generator: torch.Generator | None = None) -> tuple[np.ndarray, bool]:
        if not self.train:
            return crop_transform(self.split.points[i], self.size, self.box_scale), False
        u = torch.rand(3, generator=generator).tolist()
        rot = (2 * u[0] - 1) * self.rotate
        sc = self.scale[0] + u[1] * (self.scale[1] - self.scale[0])
        flip = self.flip and u[2] < 0.5
        return crop_transform(self.split.points[i], self.size, self.box_scale, rot, sc, flip), flip

    def points(self, i: int) -> np.ndarray:
        """(K, 2) ground truth in the test crop's frame."""
        return apply_transform(crop_transform(self.split.points[i], self.size, self.box_scale),
                               self.split.points[i])

    def __getitem__(self, i: int):
        m, flipped = self.transform(i)
        x = normalize(warp_image(self.image(i), m, self.size))
        pts = apply_transform(m, self.split.points[i])
        if flipped:
            pts = pts[self.perm]
        hm = self.size // self.stride
        target = gaussian_heatmaps(image_to_heatmap(torch.as_tensor(pts, dtype=torch.float32), self.stride),
                                   (hm, hm), self.sigma)
        return x, target


# ------------------------------------------------------------------------------------------------ model
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


# ------------------------------------------------------------------------------------------------ synthetic data
def synthetic_faces(n: int, size: int = 64, seed: int = 0, max_rotate: float = 25.0) -> tuple[np.ndarray, np.ndarray]:
    """Generated "faces" with known keypoints: uint8 images (n, size, size, 3) and points (n, 5, 2).

    A light ellipse (face) on a noisy dark background, rotated by U(-max_rotate, max_rotate) degrees, with two
    dark eyes (points 0 = image-left, 1 = image-right), a nose (2) and two mouth corners (3 left, 4 right) joined
    by a dark mouth line.  Position, size, rotation and brightness vary per image.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    points = np.zeros((n, 5, 2))
    for i in range(n):
        r = size * rng.uniform(0.22, 0.32)                                    # face half-width
        c = rng.uniform(0.5 * size - 0.12 * size, 0.5 * size + 0.12 * size, 2)
        a = math.radians(rng.uniform(-max_rotate, max_rotate))
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        local = np.array([[-0.42, -0.25], [0.42, -0.25], [0.0, 0.12], [-0.32, 0.48], [0.32, 0.48]]) * r
        local += rng.normal(0, 0.03 * r, local.shape)
        pts = local @ rot.T + c
        # face ellipse (semi-axes r, 1.3 r) in its own frame
        dx, dy = xx - c[0], yy - c[1]
        u = (dx * math.cos(a) + dy * math.sin(a)) / r
        v = (-dx * math.sin(a) + dy * math.cos(a)) / (1.3 * r)
        img = rng.normal(40, 12, (size, size))
        img = np.where(u ** 2 + v ** 2 <= 1, rng.uniform(150, 220), img)
        eye_r, dot_r = 0.13 * r, 0.08 * r
        for j, rad in ((0, eye_r), (1, eye_r), (2, dot_r)):
            img = np.where((xx - pts[j, 0]) ** 2 + (yy - pts[j, 1]) ** 2 <= rad ** 2, 30.0, img)
        p, q = pts[3], pts[4]                                                   # mouth: segment p-q
        t = np.clip(((xx - p[0]) * (q[0] - p[0]) + (yy - p[1]) * (q[1] - p[1])) / max(np.sum((q - p) ** 2), 1e-9), 0, 1)
        d2 = (xx - p[0] - t * (q[0] - p[0])) ** 2 + (yy - p[1] - t * (q[1] - p[1])) ** 2
        img = np.where(d2 <= (0.06 * r) ** 2 + 0.5, 50.0, img)
        img = img + rng.normal(0, 6, img.shape)
        tint = rng.uniform(0.85, 1.15, 3)
        images[i] = np.clip(img[..., None] * tint, 0, 255).astype(np.uint8)
        points[i] = pts
    return images, points


def write_landmark_folder(root: str | Path, split: str, images: np.ndarray, points: np.ndarray) -> list[Path]:
    """Write images as PNGs with 300W-style .pts files into ``root/split/``."""
    from PIL import Image

    d = Path(root) / split
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (img, pts) in enumerate(zip(images, points)):
        p = d / f"face{i:05d}.png"
        Image.fromarray(img).save(p)
        write_pts(p.with_suffix(".pts"), pts)
        out.append(p)
    return out


# ------------------------------------------------------------------------------------------------ run
@dataclass
class LandmarkConfig:
    """Resolved configuration of a landmark fine-tuning run (module docstring, ``--help``)."""
    data: str
    zoo: list = field(default_factory=list)
    method: str = "zoo"
    arch: str = "resnet50"
    width: int = 16
    sha256: list = field(default_factory=list)
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
    no_align: bool = False
    hub_k: int = 2
    hub_lambda: float = 0.1
    seed: int = 0
    out: str = "runs/landmarks"
    resume: bool = False
    save_every: int = 1000
    log_every: int = 50
    eval_every: int = 0
    device: str = "auto"
    workers: int = 0
    threads: int = 0
    tensorboard: bool = True
    progress: bool = True


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
    """Fine-tune ``cfg.method`` for landmark detection on ``cfg.data``; writes the run folder, returns results."""
    check_ranges(cfg, positive=("epochs", "lr", "batch_size", "width", "image_size", "heatmap_stride", "sigma",
                                "box_scale", "log_every", "gamma", "hub_k"),
                 non_negative=("iters", "rotate", "save_every", "eval_every", "workers", "threads", "hub_lambda"))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    try:
        check_method(cfg.method)
        if cfg.arch not in ARCHS:
            raise ValueError(f"unknown --arch {cfg.arch!r}; choose from {', '.join(ARCHS)}")
        train_split, test_split = open_landmark_split(cfg.data, "train"), open_landmark_split(cfg.data, "test")
        k = train_split.points.shape[1]
        if test_split.points.shape[1] != k:
            raise DataError(f"{cfg.data}: train has {k} landmarks, test {test_split.points.shape[1]}")
        pairs = parse_flip_pairs(cfg.flip_pairs, k)
        eyes = _eyes_for(k, cfg.eyes)
        seed_everything(cfg.seed)
        template = lambda: build_landmark_net(cfg.arch, k, cfg.width, cfg.heatmap_stride)  # noqa: E731
        sources = load_zoo(cfg.zoo, cfg.sha256, template())
        model = build_method(cfg.method, template, sources, mean_outputs, align=not cfg.no_align, hub_k=cfg.hub_k)
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
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, cfg.gamma)
    stream = BatchStream(train_ds, cfg.batch_size, seed=cfg.seed, workers=cfg.workers)
    loss_fn = lambda net, x, y: objective(net, net(x), y, heatmap_mse, cfg.hub_lambda)  # noqa: E731
    state, metrics = train_run(cfg, config, model, optimizer, scheduler, stream, iters, loss_fn, device,
                               lambda: evaluate_landmarks(model, test_ds, eyes, device),
                               ("data", "zoo", "method", "arch", "width", "iterations", "batch_size", "seed"))
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


def build_parser() -> argparse.ArgumentParser:
    d = LandmarkConfig(data="")
    p = OneLineParser(prog="python -m rlzoo_transfer.vision.landmarks",
                      description="Fine-tune a zoo of ResNets for facial-landmark detection (NME on the test split).")
    p.add_argument("--data", required=True, help="DIR with <split>/<image> + <image>.pts, or a CSV "
                   "path,split,x0,y0,...")
    p.add_argument("--zoo", nargs="*", default=[], help="torchvision-format state_dicts of --arch")
    p.add_argument("--sha256", nargs="*", default=[], help="expected sha256 (or >= 8-digit prefix) per --zoo file")
    p.add_argument("--method", default=d.method, help=f"one of {', '.join(METHODS)} (default {d.method})")
    p.add_argument("--arch", default=d.arch, help=f"one of {', '.join(ARCHS)} (default {d.arch})")
    p.add_argument("--width", type=int, default=d.width, help="base width of --arch small")
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
                   help="300w | synthetic | none | 'i-j,k-l,...' | a file of 'i j' lines (default 300w)")
    p.add_argument("--eyes", type=int, nargs=2, default=None, help="inter-ocular landmark indices for NME")
    add_run_args(p, d)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return cli_main(build_parser(), lambda a: LandmarkConfig(**a | {"scale": tuple(a["scale"])}), run_landmarks,
                    ("method", "nme", "nme_percent", "iterations", "it_per_s"), argv)


if __name__ == "__main__":
    sys.exit(main())
