"""Heatmap coordinates for landmark regression: image <-> heatmap frames, Gaussian targets, and decoding with the
quarter-pixel offset.

Coordinates: (x, y) = (column, row) in pixels, pixel centres at integers (0-based).  A heatmap of stride s maps
image point p to (p + 0.5) / s - 0.5.
"""
from __future__ import annotations

import torch


def image_to_heatmap(points: torch.Tensor, stride: float) -> torch.Tensor:
    """Image pixel coordinates -> heatmap coordinates at ``stride`` (pixel centres aligned)."""
    return (points + 0.5) / stride - 0.5


def heatmap_to_image(points: torch.Tensor, stride: float) -> torch.Tensor:
    """Inverse of :func:`image_to_heatmap`: heatmap coordinates at ``stride`` -> image pixel coordinates."""
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
