"""Judging model-selection scores against measured fine-tuning accuracies (Deshpande et al. 2021, Sec. 4.3).

A model-selection method gives each zoo model a score; fine-tuning gives each a test accuracy.  The score is a
good proxy when ranking by score agrees with ranking by accuracy (``spearman``, Fig. 6b), and it is useful when
few models must be fine-tuned, in score order, before reaching the best one (``trials_to_best``, Fig. 6a) or
when the best of the top-k is close to the best overall (``best_of_top_k``, Fig. 4).

``scores`` and ``accuracies`` are either two mappings ``{model name: value}`` with the same keys, or two
sequences of the same length (model i is position i in both).
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from scipy import stats

__all__ = ["rank_models", "spearman", "trials_to_best", "best_of_top_k"]


def _as_mapping(values, name: str) -> dict:
    if isinstance(values, Mapping):
        out = dict(values)
    else:
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim != 1:
            raise ValueError(f"{name} must be a mapping or a 1-D sequence, got shape {arr.shape}")
        out = dict(enumerate(arr.tolist()))
    for key, value in out.items():
        if value is None or math.isnan(float(value)):
            raise ValueError(f"{name}[{key!r}] is NaN or missing")
    return out


def _aligned(scores, accuracies) -> tuple[dict, dict]:
    if isinstance(scores, Mapping) != isinstance(accuracies, Mapping):
        raise ValueError("scores and accuracies must both be mappings or both be sequences")
    s = _as_mapping(scores, "scores")
    a = _as_mapping(accuracies, "accuracies")
    if set(s) != set(a):
        missing = sorted(map(str, set(s) ^ set(a)))
        raise ValueError(f"scores and accuracies must cover the same models; mismatched: {missing}")
    if not s:
        raise ValueError("no models given")
    return s, a


def rank_models(scores: Mapping[str, float]) -> list[str]:
    """Model names ordered by decreasing score (the order in which to fine-tune them).

    Ties keep the mapping's insertion order (a stable sort), so the result is deterministic.

    :param scores: ``{model name: score}``, higher is better; NaN is an error
    :return: list of names, best first
    """
    s = _as_mapping(scores, "scores")
    return sorted(s, key=lambda name: -float(s[name]))


def spearman(scores, accuracies) -> float:
    """Spearman rank correlation between model-selection scores and fine-tuning accuracies (Fig. 6b).

    Pearson correlation of the ranks (ties get their average rank).

    :param scores: ``{model: score}`` or a sequence
    :param accuracies: ``{model: accuracy}`` or a sequence, same models
    :return: correlation in [-1, 1]; NaN when either side is constant
    :raises ValueError: mismatched models, NaN values, or fewer than 2 models
    """
    s, a = _aligned(scores, accuracies)
    if len(s) < 2:
        raise ValueError("spearman needs at least 2 models")
    keys = list(s)
    rs = stats.rankdata([float(s[k]) for k in keys])
    ra = stats.rankdata([float(a[k]) for k in keys])
    rs, ra = rs - rs.mean(), ra - ra.mean()
    denom = float(np.linalg.norm(rs) * np.linalg.norm(ra))
    return float(rs @ ra / denom) if denom > 0 else float("nan")


def trials_to_best(scores, accuracies) -> int:
    """Number of models fine-tuned, in ``rank_models`` order, until one with the highest accuracy is reached
    (Fig. 6a).  1 means the top-scored model is (one of) the best; ``len(scores)`` is the worst case.

    :param scores: ``{model: score}`` or a sequence
    :param accuracies: ``{model: accuracy}`` or a sequence, same models
    :return: 1-based position of the first truly best model in score order
    """
    s, a = _aligned(scores, accuracies)
    best = max(float(v) for v in a.values())
    for trial, name in enumerate(rank_models(s), start=1):
        if float(a[name]) == best:
            return trial
    raise AssertionError("unreachable: the best model is always in the ranking")  # pragma: no cover


def best_of_top_k(scores, accuracies, k: int = 3) -> float:
    """Best accuracy among the ``k`` top-scored models (fine-tune the top-k, keep the best; Fig. 4).

    :param scores: ``{model: score}`` or a sequence
    :param accuracies: ``{model: accuracy}`` or a sequence, same models
    :param k: number of selections, >= 1 (capped at the number of models)
    :return: max accuracy over the top-k models
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k}")
    s, a = _aligned(scores, accuracies)
    return max(float(a[name]) for name in rank_models(s)[: int(k)])
