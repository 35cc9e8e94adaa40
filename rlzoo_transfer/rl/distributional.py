"""The categorical (C51) projection as pure functions (Bellemare, Dabney & Munos 2017, Algorithm 1).

``project_distribution`` maps a distribution on arbitrary (per-sample) support points onto a fixed support
z_1 < ... < z_K with spacing dz:

    m_i = sum_j clip(1 - |clip(s_j, z_1, z_K) - z_i| / dz, 0, 1) * p_j                                    (1)

which is Algorithm 1's split of each atom's mass between its two neighbours, written without floor/ceil (so an
atom that lands exactly on z_i gives all its mass to z_i).  ``categorical_target`` forms the n-step Bellman
target support s_j = R + gamma^n * (1 - done) * z_j and projects the target network's probabilities on it.
"""
from __future__ import annotations

import torch


def project_distribution(supports: torch.Tensor, weights: torch.Tensor, target_support: torch.Tensor) -> torch.Tensor:
    """Project weights on ``supports`` onto the evenly spaced ``target_support`` (eq. 1).

    :param supports: (B, N) support points of each source distribution
    :param weights: (B, N) probabilities on them (rows sum to 1)
    :param target_support: (K,) evenly spaced, increasing
    :return: (B, K) projected probabilities (rows sum to the rows of ``weights``)
    """
    if supports.shape != weights.shape:
        raise ValueError(f"supports {tuple(supports.shape)} and weights {tuple(weights.shape)} differ in shape")
    vmin, vmax = target_support[0], target_support[-1]
    dz = target_support[1] - target_support[0]
    clipped = supports.clamp(vmin, vmax)  # (B, N)
    dist = (clipped.unsqueeze(1) - target_support.view(1, -1, 1)).abs()  # (B, K, N)
    kernel = (1.0 - dist / dz).clamp(0.0, 1.0)
    return torch.bmm(kernel, weights.unsqueeze(-1)).squeeze(-1)


def categorical_target(next_probs: torch.Tensor, returns: torch.Tensor, discounts: torch.Tensor,
                       support: torch.Tensor) -> torch.Tensor:
    """Projected n-step distributional Bellman target.

    :param next_probs: (B, K) target-network probabilities of the bootstrap action (double-Q selected)
    :param returns: (B,) n-step discounted reward sum R
    :param discounts: (B,) gamma^n * (1 - done) (0 where the window ended in a terminal)
    :param support: (K,) atoms z
    :return: (B, K) target probabilities m
    """
    tz = returns.unsqueeze(1) + discounts.unsqueeze(1) * support.unsqueeze(0)
    return project_distribution(tz, next_probs, support)
