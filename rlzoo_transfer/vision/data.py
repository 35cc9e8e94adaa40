"""Image-classification data: ImageFolder-style directories or CSV lists, transforms without torchvision, and a
resumable batch stream.

Data formats (``open_split(data, split)``):

* a directory ``DIR/<split>/<class>/*.{png,jpg,jpeg,bmp,gif,webp,tif,tiff}`` (torchvision's ImageFolder layout;
  classes are the sorted sub-directory names of ``DIR/train``);
* a CSV file with the columns ``path,label,split`` (a header row is optional; ``path`` relative to the CSV's
  folder; ``label`` a class name or an integer; ``split`` e.g. ``train`` / ``test``).  Classes are the sorted
  distinct labels of the train split (numerically sorted when all are integers).

Transforms act on uint8 tensors (C, H, W) and follow torchvision's algorithms:

* train: ``random_resized_crop`` (area fraction U(scale), log aspect ratio U(log 3/4, log 4/3), 10 tries then
  a centre crop; resized with antialiased bilinear interpolation), optional horizontal flip;
* test: resize the shorter side to ``size / crop_pct`` and take the centre ``size`` crop (crop_pct 0.875 is the
  usual 256 -> 224); ``crop_pct = 1`` resizes the whole image to ``size``;
* both: scale to [0, 1] and normalise with ImageNet's mean / std (the sources' preprocessing).

Grayscale and palette images are converted to RGB (3 channels), so torchvision weights load unchanged.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataError(ValueError):
    """Unusable data: missing directory or file, empty split, unknown classes, malformed CSV."""


@dataclass
class Split:
    """One split of a classification data set: image paths, integer labels and the class names."""
    paths: list[Path]
    labels: list[int]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.paths)


# --------------------------------------------------------------------------------------------------- readers
def _folder_split(root: Path, split: str, classes: Sequence[str] | None) -> Split:
    d = root / split
    if not d.is_dir():
        raise DataError(f"{d}: no such directory (expected {root}/{split}/<class>/<image>)")
    found = sorted(p.name for p in d.iterdir() if p.is_dir())
    if classes is None:
        classes = found
    unknown = [c for c in found if c not in classes]
    if unknown:
        raise DataError(f"{d}: class folder {unknown[0]!r} is not a class of the train split")
    paths, labels = [], []
    for ci, c in enumerate(classes):
        if not (d / c).is_dir():
            continue
        for p in sorted((d / c).iterdir()):
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(p)
                labels.append(ci)
    return Split(paths, labels, list(classes))


def read_text(path: str | Path) -> str:
    """The UTF-8 text of a data file; DataError naming it when it is not text (``str(UnicodeDecodeError)`` says
    neither which file nor what was expected)."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 text file") from None


def csv_rows(path: str | Path) -> list[list[str]]:
    """The rows of a UTF-8 CSV file (csv module dialect); DataError naming it when it is not text or not CSV."""
    try:
        return list(csv.reader(io.StringIO(read_text(path), newline="")))
    except csv.Error as e:                            # e.g. a field over csv's size limit: not a ValueError
        raise DataError(f"{path}: not a CSV file ({e})") from None


def _read_csv(path: Path) -> list[tuple[str, str, str]]:
    rows = []
    for i, row in enumerate(csv_rows(path)):
        if not row or row[0].startswith("#"):
            continue
        if i == 0 and [c.strip().lower() for c in row[:3]] == ["path", "label", "split"]:
            continue
        if len(row) < 3:
            raise DataError(f"{path}:{i + 1}: expected 'path,label,split', got {row!r}")
        rows.append((row[0].strip(), row[1].strip(), row[2].strip()))
    return rows


def _sorted_classes(labels: set[str]) -> list[str]:
    if all(s.lstrip("-").isdigit() for s in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def _csv_split(path: Path, split: str, classes: Sequence[str] | None) -> Split:
    rows = _read_csv(path)
    if classes is None:
        train = {lab for _, lab, s in rows if s == "train"}
        if not train:
            raise DataError(f"{path}: no rows with split 'train'")
        classes = _sorted_classes(train)
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for p, lab, s in rows:
        if s != split:
            continue
        if lab not in index:
            raise DataError(f"{path}: label {lab!r} of {p!r} is not a class of the train split")
        paths.append((path.parent / p) if not os.path.isabs(p) else Path(p))
        labels.append(index[lab])
    return Split(paths, labels, list(classes))


def open_split(data: str | Path, split: str, classes: Sequence[str] | None = None) -> Split:
    """The ``split`` of an ImageFolder-style directory or a CSV list (module docstring).

    :param data: directory or ``.csv`` file
    :param split: e.g. ``"train"`` or ``"test"``
    :param classes: class names to index labels by (default: those of the train split)
    :raises DataError: missing data, empty split, labels outside ``classes``
    """
    data = Path(data)
    if not data.exists():
        raise DataError(f"{data}: no such data directory or CSV file")
    if classes is None and split != "train":
        classes = open_split(data, "train").classes
    return check_split(data, split, _csv_split(data, split, classes) if data.is_file()
                       else _folder_split(data, split, classes))


def check_split(data: Path, split: str, s):
    """``s`` (anything with ``paths``) if it has images and each exists; DataError naming the first gap."""
    if len(s) == 0:
        raise DataError(f"{data}: the {split!r} split has no images")
    missing = next((p for p in s.paths if not p.is_file()), None)
    if missing is not None:
        raise DataError(f"{data}: image {missing} does not exist")
    return s


def load_image(path: str | Path) -> torch.Tensor:
    """An image file as a uint8 tensor (3, H, W), RGB."""
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


# ------------------------------------------------------------------------------------------------ transforms
def resize(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(C, H, W) uint8 or float -> float (C, h, w), antialiased bilinear (torchvision's Resize on tensors)."""
    x = img.float().unsqueeze(0)
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x.squeeze(0)


def random_resized_crop_box(h: int, w: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                            generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params: (top, left, height, width) of the crop."""
    area = h * w
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        cw = int(round(math.sqrt(target * aspect)))
        ch = int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top = int(torch.randint(0, h - ch + 1, (1,), generator=generator).item())
            left = int(torch.randint(0, w - cw + 1, (1,), generator=generator).item())
            return top, left, ch, cw
    in_ratio = w / h   # fallback: centre crop at the nearest allowed ratio
    if in_ratio < min(ratio):
        cw, ch = w, int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        ch, cw = h, int(round(h * max(ratio)))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def normalize(x: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """float image in [0, 255] (C, H, W) -> (x / 255 - mean) / std."""
    m = torch.tensor(mean, dtype=x.dtype).view(-1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(-1, 1, 1)
    return (x / 255.0 - m) / s


class TrainTransform:
    """random-resized crop to ``size`` x ``size`` (+ optional horizontal flip), normalised."""

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip: bool = False):
        self.size, self.scale, self.ratio, self.hflip = size, tuple(scale), tuple(ratio), hflip

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        top, left, h, w = random_resized_crop_box(img.shape[-2], img.shape[-1], self.scale, self.ratio)
        x = resize(img[:, top:top + h, left:left + w], (self.size, self.size))
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return normalize(x)


class EvalTransform:
    """resize the shorter side to ``size / crop_pct``, centre crop ``size``, normalised."""

    def __init__(self, size: int, crop_pct: float = 0.875):
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        self.size, self.crop_pct = size, crop_pct

    def resized(self, img: torch.Tensor) -> torch.Tensor:
        """(C, H', W') uint8-range image whose shorter side is ``size / crop_pct`` (``size`` x ``size`` when
        ``crop_pct == 1``)."""
        h, w = img.shape[-2:]
        if self.crop_pct == 1.0:
            return resize(img, (self.size, self.size))
        short = int(math.floor(self.size / self.crop_pct))
        nh, nw = (short, max(short, round(w * short / h))) if h <= w else (max(short, round(h * short / w)), short)
        return resize(img, (nh, nw))

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        x = self.resized(img)
        top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
        return normalize(x[:, top:top + self.size, left:left + self.size])


class TenCropTransform(EvalTransform):
    """Ten views (10, C, size, size) of a test image, resized as :class:`EvalTransform`: the four corner crops and
    the centre crop, then the same five of the horizontally mirrored image (the official Zoo-Tuning code's
    ten-crop test; the classifier averages its outputs over the views)."""

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        x = self.resized(img)
        h, w, s = x.shape[-2], x.shape[-1], self.size
        corners = [(0, 0), (0, w - s), (h - s, 0), (h - s, w - s), ((h - s) // 2, (w - s) // 2)]
        views = [v[:, top:top + s, left:left + s] for v in (x, x.flip(-1)) for top, left in corners]
        return normalize(torch.stack(views))


# ------------------------------------------------------------------------------------------- dataset, stream
class ImageDataset(torch.utils.data.Dataset):
    """(transformed image, label) for each item of a :class:`Split`; decoded images are cached in memory when
    ``cache`` (default: when the split has at most 20k images)."""

    def __init__(self, split: Split, transform: Callable[[torch.Tensor], torch.Tensor], cache: bool | None = None):
        self.split, self.transform = split, transform
        self.cache = len(split) <= 20000 if cache is None else cache
        self._images: dict[int, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.split)

    def image(self, i: int) -> torch.Tensor:
        if i in self._images:
            return self._images[i]
        img = load_image(self.split.paths[i])
        if self.cache:
            self._images[i] = img
        return img

    def __getitem__(self, i: int):
        return self.transform(self.image(i)), self.split.labels[i]


def collate(items) -> tuple[torch.Tensor, torch.Tensor]:
    """[(x, y), ...] -> (stacked x, stacked y); integer labels become a LongTensor."""
    xs, ys = zip(*items)
    return torch.stack(xs), torch.stack(ys) if isinstance(ys[0], torch.Tensor) else torch.as_tensor(ys)


class BatchStream:
    """Endless shuffled batches whose position can be saved and restored.

    Epoch e is the permutation drawn from a generator seeded with ``seed * 100003 + e``; ``state()`` is
    ``{"epoch", "pos"}`` just after the last batch handed out (batches prefetched by workers do not count).
    The last incomplete batch of an epoch is dropped unless the data set is smaller than one batch.  With
    ``workers=0`` the transforms draw from torch's global RNG (saved with a checkpoint), so a resumed run
    sees exactly the batches it would have seen; with workers the augmentation draws differ after a resume.
    """

    def __init__(self, dataset, batch_size: int, seed: int = 0, workers: int = 0,
                 collate_fn: Callable = collate):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.workers, self.collate_fn = workers, collate_fn
        self.epoch, self.pos = 0, 0
        self._order: list[int] | None = None
        self._loader = None
        self._pending: list[dict] = []     # stream states after each batch prefetched by the workers
        self._consumed = {"epoch": 0, "pos": 0}

    def _perm(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return torch.randperm(len(self.dataset), generator=g).tolist()

    def state(self) -> dict:
        return dict(self._consumed) if self.workers > 0 else {"epoch": self.epoch, "pos": self.pos}

    def load_state(self, state: dict) -> None:
        self.epoch, self.pos, self._order = int(state["epoch"]), int(state["pos"]), None
        self._consumed, self._pending, self._loader = dict(state), [], None

    def next_indices(self) -> list[int]:
        n, b = len(self.dataset), self.batch_size
        if self._order is None:
            self._order = self._perm()
        if self.pos + min(b, n) > n:
            self.epoch, self.pos, self._order = self.epoch + 1, 0, None
            return self.next_indices()
        idx = self._order[self.pos:self.pos + min(b, n)]
        self.pos += len(idx)
        return idx

    def _index_batches(self):
        while True:
            idx = self.next_indices()
            self._pending.append({"epoch": self.epoch, "pos": self.pos})
            yield idx

    def __iter__(self):
        return self

    def __next__(self):
        if self.workers <= 0:
            return self.collate_fn([self.dataset[i] for i in self.next_indices()])
        if self._loader is None:
            self._loader = iter(torch.utils.data.DataLoader(
                self.dataset, batch_sampler=self._index_batches(), num_workers=self.workers,
                collate_fn=self.collate_fn, persistent_workers=True))
        batch = next(self._loader)
        self._consumed = self._pending.pop(0)
        return batch


def predict_batches(dataset, batch_size: int = 256):
    """(x, y) batches over ``dataset`` in order (evaluation)."""
    for start in range(0, len(dataset), batch_size):
        yield collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])


# ---------------------------------------------------------------------------------- offline data: digits
def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits (ships with the package): uint8 images (1797, 8, 8) in [0, 255] and labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images, d.target.astype(np.int64)


def write_image_folder(root: str | Path, split: str, images: np.ndarray, labels: Sequence[int],
                       class_names: Sequence[str] | None = None, prefix: str = "img") -> list[Path]:
    """Write uint8 images (N, H, W) or (N, H, W, 3) as PNGs into ``root/split/<class>/``; returns the paths."""
    from PIL import Image

    root = Path(root)
    out = []
    for i, (img, lab) in enumerate(zip(images, labels)):
        name = class_names[int(lab)] if class_names is not None else str(int(lab))
        d = root / split / name
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"{prefix}{i:05d}.png"
        Image.fromarray(np.asarray(img, dtype=np.uint8)).save(p)
        out.append(p)
    return out
