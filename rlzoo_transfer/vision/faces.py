"""Facial-landmark data: the 300W conventions (mirror pairs, inter-ocular NME), readers of ``.pts`` folders and CSV
lists, the crop / rotation / scale / flip geometry, the training and test data set, and synthetic faces for tests.

Coordinates: (x, y) = (column, row) in pixels, pixel centres at integers (0-based).  NME is computed in the frame
of the test crop: it is invariant to the similarity transform between crop and original image.  The face box is
the landmarks' bounding box enlarged by ``box_scale`` (square, same centre); for the test split, face boxes of
their own (e.g. a detector's: ``--test-boxes``, :func:`attach_boxes`) may replace it, so that no test crop is
placed with the ground truth it is scored against.

Data (``--data`` of vision/landmarks.py):

* a directory ``DIR/<split>/*.{png,jpg,...}``, each image with its 300W-style ``.pts`` file of the same stem
  (``version: 1`` / ``n_points: K`` / ``{`` / K lines ``x y`` / ``}``), splits ``train`` and ``test``;
* a CSV list ``path,split,x0,y0,x1,y1,...`` (header optional; paths relative to the CSV's folder).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from rlzoo_transfer.atomic import write_atomic
from rlzoo_transfer.vision.data import (IMAGE_EXTENSIONS, DataError, check_split, csv_rows, load_image, normalize,
                                        read_text)
from rlzoo_transfer.vision.heatmaps import gaussian_heatmaps, image_to_heatmap

# 300W / iBUG 68-point mirror pairs (0-based; 1-based: jaw 1-17, brows 18-27, nose 28-36, eyes 37-48, mouth 49-68)
FLIP_PAIRS_300W = [(0, 16), (1, 15), (2, 14), (3, 13), (4, 12), (5, 11), (6, 10), (7, 9),
                   (17, 26), (18, 25), (19, 24), (20, 23), (21, 22), (31, 35), (32, 34),
                   (36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46),
                   (48, 54), (49, 53), (50, 52), (55, 59), (56, 58), (60, 64), (61, 63), (65, 67)]
EYES_300W = (36, 45)     # outer eye corners: the inter-ocular normalisation of 300W
# The synthetic faces of :func:`synthetic_faces`: 0 left eye, 1 right eye, 2 nose, 3 left / 4 right mouth corner
FLIP_PAIRS_SYNTHETIC = [(0, 1), (3, 4)]
EYES_SYNTHETIC = (0, 1)


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


#: The named mirror maps and the number of landmarks each is for.
NAMED_FLIP_PAIRS = {"300w": (FLIP_PAIRS_300W, 68), "synthetic": (FLIP_PAIRS_SYNTHETIC, 5)}


def parse_flip_pairs(spec: str | None, k: int | None = None) -> list[tuple[int, int]]:
    """``"300w"``, ``"synthetic"``, ``"none"``, ``"0-1,3-4"`` or a file with one ``i j`` pair per line.

    A named map is refused for another number of landmarks ``k``: 300W's pairs are valid indices of WFLW's 98
    points too, but mirror other points there, so a flipped training image would get wrong labels.
    """
    if spec is None or spec == "none":
        return []
    if spec in NAMED_FLIP_PAIRS:
        pairs, points = NAMED_FLIP_PAIRS[spec]
        if k is not None and k != points:
            raise ValueError(f"--flip-pairs {spec} is the mirror map of {points} landmarks, the data have {k}: give "
                             "the data set's own pairs ('i-j,k-l,...' or a file of 'i j' lines), or --flip-pairs none")
        pairs = list(pairs)
    elif Path(spec).is_file():
        pairs = []
        for line in read_text(spec).splitlines():
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


def read_pts(path: str | Path) -> np.ndarray:
    """A 300W-style ``.pts`` file -> (K, 2) float array."""
    lines = [ln.strip() for ln in read_text(path).splitlines() if ln.strip()]
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
    points: np.ndarray                  # (N, K, 2)
    boxes: np.ndarray | None = None     # (N, 4) face boxes x0, y0, x1, y1; None: the landmarks' bounding boxes

    def __len__(self) -> int:
        return len(self.paths)


def read_boxes(path: str | Path) -> dict[Path, np.ndarray]:
    """Face boxes, one CSV row ``image,x0,y0,x1,y1`` per image (header and ``#`` lines skipped; pixels, (x0, y0)
    the top-left and (x1, y1) the bottom-right corner; image paths relative to the file's folder, or bare file
    names) -> {image path as resolved against the file's folder: (4,) box}."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such face-box file")
    boxes: dict[Path, np.ndarray] = {}
    for i, row in enumerate(csv_rows(path)):
        if not row or row[0].startswith("#") or (i == 0 and row[0].strip().lower() in ("path", "image")):
            continue
        if len(row) != 5:
            raise DataError(f"{path}:{i + 1}: expected image,x0,y0,x1,y1, got {len(row)} fields")
        try:
            box = np.array([float(v) for v in row[1:]], dtype=np.float64)
        except ValueError:
            raise DataError(f"{path}:{i + 1}: non-numeric box coordinate") from None
        if not np.all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
            raise DataError(f"{path}:{i + 1}: the box needs x1 > x0 and y1 > y0, got {row[1:]}")
        image = Path(row[0].strip())
        image = image if image.is_absolute() else path.parent / image
        if image in boxes:
            raise DataError(f"{path}:{i + 1}: a second box for {image}")
        boxes[image] = box
    return boxes


def attach_boxes(split: LandmarkSplit, boxes_file: str | Path) -> LandmarkSplit:
    """``split`` with the face box of each of its images from ``boxes_file`` (:func:`read_boxes`), matched by path,
    or by file name for rows whose path names no existing file (e.g. bare names in a file kept elsewhere) where
    only one such row has it: a row that names an image (``train/0001.png``) never stands for another one
    (``test/0001.png``); DataError naming the first image without a box.  Rows for other images (e.g. the train
    split's) are ignored."""
    boxes_file = Path(boxes_file)
    boxes = read_boxes(boxes_file)
    resolved = {p.resolve(): b for p, b in boxes.items()}
    names: dict[str, list[np.ndarray]] = {}
    for p, b in boxes.items():
        if not p.is_file():
            names.setdefault(p.name, []).append(b)
    out = []
    for p in split.paths:
        box = resolved.get(p.resolve())
        if box is None and len(names.get(p.name, [])) == 1:
            box = names[p.name][0]
        if box is None:
            why = "several rows name" if len(names.get(p.name, [])) > 1 else "no row names"
            raise DataError(f"{boxes_file}: {why} the image {p} (give its path relative to the box file's folder; a "
                            "bare name counts only where no file of that path exists)")
        out.append(box)
    return LandmarkSplit(split.paths, split.points, np.stack(out))


def read_landmark_csv(path: str | Path, split: str) -> LandmarkSplit:
    """Rows ``path,split,x0,y0,...,x{K-1},y{K-1}`` (header optional) of ``split``."""
    path = Path(path)
    paths, pts = [], []
    for i, row in enumerate(csv_rows(path)):
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
    return check_split(data, split, s)


def crop_transform(points: np.ndarray, out_size: int, box_scale: float = 1.25, rotate_deg: float = 0.0,
                   scale: float = 1.0, flip: bool = False, box: np.ndarray | None = None) -> np.ndarray:
    """3x3 matrix mapping original image coordinates to the ``out_size`` crop: the square box (the face box, by
    default the landmarks' bounding box, x ``box_scale`` on its longer side) around its centre, scaled by ``scale``,
    rotated by ``rotate_deg`` about the centre, mirrored when ``flip``.  ``box``: (x0, y0, x1, y1) instead of the
    landmarks' bounding box."""
    lo, hi = (np.nanmin(points, 0), np.nanmax(points, 0)) if box is None else (np.asarray(box[:2]), np.asarray(box[2:]))
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

    def test_crop(self, i: int) -> np.ndarray:
        """The evaluation crop of face ``i``: around its face box when the split has boxes, else its landmarks'."""
        box = None if self.split.boxes is None else self.split.boxes[i]
        return crop_transform(self.split.points[i], self.size, self.box_scale, box=box)

    def transform(self, i: int, generator: torch.Generator | None = None) -> tuple[np.ndarray, bool]:
        if not self.train:
            return self.test_crop(i), False
        u = torch.rand(3, generator=generator).tolist()
        rot = (2 * u[0] - 1) * self.rotate
        sc = self.scale[0] + u[1] * (self.scale[1] - self.scale[0])
        flip = self.flip and u[2] < 0.5
        return crop_transform(self.split.points[i], self.size, self.box_scale, rot, sc, flip), flip

    def points(self, i: int) -> np.ndarray:
        """(K, 2) ground truth in the test crop's frame."""
        return apply_transform(self.test_crop(i), self.split.points[i])

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
