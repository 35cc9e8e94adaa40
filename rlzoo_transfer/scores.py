"""Reference scores of the Atari 100k games and the aggregate statistics used to report them.

Everything here is a pure function of its arguments (numpy in, floats out), so that every number in
``eval/report.md`` can be checked by hand.

Reference scores (``/work/shared/REFERENCE.md``, "Published scores at 100k agent steps"):

* random / human: Dopamine ``normalization_utils.py``;
* DER (2019): the SPR paper's table; SPR, DrQ(eps), EfficientZero: rliable / iris data;
* BBF: its scores CSV, means over its seeds (approximate).  Riverraid is not one of the 26 Atari 100k games:
  only random, human and BBF are known for it.

Aggregates follow Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice" (the ``rliable``
library), re-implemented here with numpy / scipy:

* human-normalised score ``HNS = (score - random) / (human - random)``;
* IQM = ``scipy.stats.trim_mean(x, 0.25)`` over all runs x games (the mean of the middle 50 %) - the report uses
  its game-balanced form, :func:`weighted_iqm` with :func:`game_weights` (:func:`aggregate_statistics`), equal to
  it for equal seeds per game and a run count divisible by 4;
* 95 % *stratified* bootstrap confidence intervals: each replicate resamples, with replacement, the seeds of
  every game separately (the number of runs per game is kept), recomputes the statistic, and the interval is
  the 2.5 / 97.5 percentiles of the replicates (rliable's default ``percentile`` method);
* probability of improvement ``P(X > Y)``: for one game, the fraction of (run of X, run of Y) pairs in which X
  scores higher, ties counting 1/2 (the Mann-Whitney U statistic divided by ``n * m``), averaged over games;
  its interval resamples the seeds of X and of Y independently within each game.

How many seeds a comparison needs (:func:`pooled_std`, :func:`detectable_difference`): the seed-to-seed standard
deviation of final scores pooled over methods, and the smallest true difference of two methods' means that a
two-sided two-sample t-test at ``alpha`` finds with probability ``power`` at ``n`` seeds a side (noncentral t, not
the normal approximation ``(z_{1-alpha/2} + z_power) sd sqrt(2/n)``, which is ~25 % too optimistic at n = 3).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

# scipy.stats / optimize (~2 s to import) load in the functions that use them: sweep and rundata need only the
# game tables


@dataclass(frozen=True)
class GameScores:
    """Reference scores of one game.

    :param random: mean return of a uniformly random policy
    :param human: mean return of the human tester
    :param published: algorithm name -> published mean return at 100k agent steps
    """

    random: float
    human: float
    published: Mapping[str, float] = field(default_factory=dict)


#: Canonical game name (ALE's CamelCase, e.g. ``Jamesbond``) -> reference scores (REFERENCE.md).
GAMES: dict[str, GameScores] = {
    "Alien": GameScores(227.8, 7127.7, {"DER": 739.9, "SPR": 841.9, "DrQ(eps)": 865.2,
                                        "EfficientZero": 808.5, "BBF": 1174.0}),
    "Gopher": GameScores(257.6, 2412.5, {"DER": 349.5, "SPR": 660.6, "DrQ(eps)": 621.6,
                                         "EfficientZero": 3260.3, "BBF": 1415.0}),
    "Jamesbond": GameScores(29.0, 302.8, {"DER": 301.6, "SPR": 366.5, "DrQ(eps)": 349.1,
                                          "EfficientZero": 517.0, "BBF": 1195.0}),
    "Seaquest": GameScores(68.4, 42054.7, {"DER": 354.1, "SPR": 558.1, "DrQ(eps)": 352.3,
                                           "EfficientZero": 1100.2, "BBF": 1150.0}),
    "Riverraid": GameScores(1338.5, 17118.0, {"BBF": 6786.0}),
}

#: Published algorithms shown as reference rows in the report.
REFERENCE_ALGORITHMS: tuple[str, ...] = ("DER", "SPR")

_KEY = {re.sub(r"[^a-z0-9]", "", name.lower()): name for name in GAMES}


def _normalise_key(name: str) -> str:
    """Lower-case ``name`` and strip ALE decorations: ``ALE/``, ``NoFrameskip-v4``, ``-v5``, ``_`` and ``-``."""
    key = name.strip()
    key = re.sub(r"^ALE/", "", key, flags=re.IGNORECASE)
    key = re.sub(r"(NoFrameskip)?-v\d+$", "", key, flags=re.IGNORECASE)
    return re.sub(r"[^a-z0-9]", "", key.lower())


def canonical_game(name: str) -> str:
    """Canonical spelling of a known game: ``'JamesBond'``, ``'jamesbond'``, ``'ALE/Jamesbond-v5'`` -> ``'Jamesbond'``.

    :param name: any common spelling of the game
    :raises KeyError: the game is not in :data:`GAMES`
    """
    key = _normalise_key(name)
    if key not in _KEY:
        raise KeyError(f"unknown game {name!r}; known games: {', '.join(GAMES)}")
    return _KEY[key]


def maybe_canonical_game(name: str) -> str:
    """:func:`canonical_game` for known games, ``name`` unchanged for others."""
    try:
        return canonical_game(name)
    except KeyError:
        return name


def human_normalized(score, game: str):
    """Human-normalised score ``(score - random) / (human - random)``; works on floats and arrays.

    :param score: raw mean return(s)
    :param game: any spelling accepted by :func:`canonical_game`
    """
    ref = GAMES[canonical_game(game)]
    return (np.asarray(score, dtype=float) - ref.random) / (ref.human - ref.random)


def mean_std(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (``ddof=1``; 0 for a single value) and count of ``values``."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), 0
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    return float(x.mean()), std, int(x.size)


def iqm(values, axis: int | None = None):
    """Interquartile mean: ``scipy.stats.trim_mean(values, 0.25)`` (drops the lowest and highest 25 %).

    :param values: scores; flattened when ``axis`` is None
    :param axis: axis to reduce along
    """
    from scipy import stats

    x = np.asarray(values, dtype=float)
    if axis is None:
        x = x.ravel()
        axis = 0
    return stats.trim_mean(x, 0.25, axis=axis)


def weighted_iqm(values, weights, axis: int = -1):
    """Interquartile mean of a weighted sample: ``2 * integral_{0.25}^{0.75} Q(u) du``.

    ``Q`` is the quantile function of the distribution that puts mass ``w_i / sum(w)`` on ``x_i``; each value
    contributes its mass's overlap with the middle half [0.25, 0.75] of the cumulative mass.  With equal weights
    and a sample size divisible by 4 this is ``scipy.stats.trim_mean(x, 0.25)``; otherwise the values at the
    quartiles count in part (trim_mean drops or keeps them whole).

    :param values: array (..., n)
    :param weights: (n,) non-negative, not all zero, broadcast over ``values``'s other axes
    :param axis: the sample axis
    :return: array (...) of interquartile means
    """
    x = np.moveaxis(np.asarray(values, dtype=float), axis, -1)
    w = np.broadcast_to(np.asarray(weights, dtype=float), x.shape)
    order = np.argsort(x, axis=-1, kind="stable")
    x = np.take_along_axis(x, order, -1)
    w = np.take_along_axis(w, order, -1)
    w = w / w.sum(-1, keepdims=True)
    upper = np.cumsum(w, -1)
    lower = upper - w
    overlap = np.clip(np.minimum(upper, 0.75) - np.maximum(lower, 0.25), 0.0, None)
    return (x * overlap).sum(-1) / 0.5


def game_weights(sizes: Sequence[int]) -> np.ndarray:
    """Per-run weights (sum n_g,) that give each of G games the same total weight: ``1 / (G n_g)`` for a run of a
    game with ``n_g`` runs, in the games' order (the layout of :func:`stratified_bootstrap_ci`'s samples)."""
    sizes = [int(n) for n in sizes]
    return np.concatenate([np.full(n, 1.0 / (len(sizes) * n)) for n in sizes])


def aggregate_statistics(sizes: Sequence[int]) -> tuple[Callable, Callable]:
    """``(iqm, mean)`` statistics over runs x games for :func:`stratified_bootstrap_ci`, each mapping (reps,
    sum n_g) -> (reps,): :func:`weighted_iqm` and the weighted mean with :func:`game_weights`.

    Every game counts the same.  Pooling the runs (rliable's ``trim_mean`` over runs x games) weights each game by
    its number of seeds, so in an unfinished sweep the game with most seeds would dominate.  With the same number
    of seeds on every game the mean is the pooled mean, and the IQM is ``trim_mean(x, 0.25)`` whenever the number
    of runs is divisible by 4 (otherwise the runs at the quartiles count in part instead of whole or not at all);
    one estimator for every row keeps rows with different seed counts comparable.
    """
    w = game_weights(sizes)
    return (lambda x: weighted_iqm(x, w, axis=1)), (lambda x: (x * w).sum(axis=1))


def _stack_per_game(per_game: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate per-game arrays of shape ``(reps, n_g)`` along the run axis -> ``(reps, sum n_g)``."""
    return np.concatenate(per_game, axis=1)


def _check_groups(groups: Sequence[Sequence[float]]) -> list[np.ndarray]:
    """Validate a list of per-game score lists: at least one game, each with at least one run."""
    arrays = [np.asarray(g, dtype=float).ravel() for g in groups]
    if not arrays or any(a.size == 0 for a in arrays):
        raise ValueError("need at least one game, each with at least one run")
    return arrays


def stratified_bootstrap_ci(
    groups: Sequence[Sequence[float]],
    statistic: Callable[[np.ndarray], np.ndarray] = lambda x: iqm(x, axis=1),
    reps: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Point estimate and percentile confidence interval of an aggregate over games, by stratified bootstrap.

    Each replicate draws, for every game ``g``, ``n_g`` runs with replacement from that game's ``n_g`` runs,
    concatenates the draws of all games and evaluates ``statistic`` on them.

    :param groups: one sequence of run scores per game (e.g. HNS of each seed), lengths may differ
    :param statistic: maps an array ``(reps, n_runs)`` to ``(reps,)``; default the IQM along axis 1
    :param reps: number of bootstrap replicates
    :param seed: seed of the numpy generator (same seed, same interval)
    :param confidence: coverage of the interval
    :return: ``(point, low, high)``; the point estimate uses the original data
    """
    arrays = _check_groups(groups)
    rng = np.random.default_rng(seed)
    point = float(statistic(np.concatenate(arrays)[None, :])[0])
    draws = [a[rng.integers(0, a.size, size=(reps, a.size))] for a in arrays]
    replicates = statistic(_stack_per_game(draws))
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return point, float(low), float(high)


def _prob_greater(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``P(X > Y) + P(X = Y) / 2`` over all pairs, batched: ``x (..., n)``, ``y (..., m)`` -> ``(...)``."""
    diff = x[..., :, None] - y[..., None, :]
    return (diff > 0).mean(axis=(-2, -1)) + 0.5 * (diff == 0).mean(axis=(-2, -1))


def probability_of_improvement(x_groups: Sequence[Sequence[float]], y_groups: Sequence[Sequence[float]]) -> float:
    """Average over games of ``P(X > Y)`` (ties count 1/2), X and Y the run scores of two methods.

    :param x_groups: per game, the scores of method X's runs
    :param y_groups: per game (same order), the scores of method Y's runs
    """
    xs, ys = _check_groups(x_groups), _check_groups(y_groups)
    if len(xs) != len(ys):
        raise ValueError("x_groups and y_groups must list the same games")
    return float(np.mean([_prob_greater(x, y) for x, y in zip(xs, ys)]))


def probability_of_improvement_ci(
    x_groups: Sequence[Sequence[float]],
    y_groups: Sequence[Sequence[float]],
    reps: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """:func:`probability_of_improvement` with a stratified, independent bootstrap interval.

    Each replicate resamples the runs of X and, independently, those of Y within every game.

    :return: ``(point, low, high)``
    """
    xs, ys = _check_groups(x_groups), _check_groups(y_groups)
    if len(xs) != len(ys):
        raise ValueError("x_groups and y_groups must list the same games")
    rng = np.random.default_rng(seed)
    per_game = []
    for x, y in zip(xs, ys):
        xb = x[rng.integers(0, x.size, size=(reps, x.size))]
        yb = y[rng.integers(0, y.size, size=(reps, y.size))]
        per_game.append(_prob_greater(xb, yb))
    replicates = np.mean(per_game, axis=0)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return probability_of_improvement(xs, ys), float(low), float(high)


def pooled_std(groups: Sequence[Sequence[float]]) -> tuple[float, int]:
    """Pooled sample standard deviation of several groups, and its degrees of freedom.

    ``sd = sqrt(sum_g sum_i (x_gi - mean_g)^2 / sum_g (n_g - 1))`` over the groups with >= 2 values (a group of one
    says nothing about spread); ``(nan, 0)`` when there is none.
    """
    sq, dof = 0.0, 0
    for g in groups:
        x = np.asarray(g, dtype=float)
        if x.size >= 2:
            sq += float(((x - x.mean()) ** 2).sum())
            dof += x.size - 1
    return (math.sqrt(sq / dof), dof) if dof else (float("nan"), 0)


ALTERNATIVES = ("two-sided", "greater")


def _check_alternative(alternative: str) -> None:
    if alternative not in ALTERNATIVES:
        raise ValueError(f"alternative must be one of {', '.join(ALTERNATIVES)}, got {alternative!r}")


def t_test_power(effect: float, n: int, alpha: float = 0.05, alternative: str = "two-sided") -> float:
    """Power of the two-sample t-test with ``n`` values a side against a true difference of ``effect`` standard
    deviations, ``T ~ noncentral t(2n - 2, effect sqrt(n / 2))``: two-sided ``P(|T| > t_{1-alpha/2, 2n-2})``, or
    for ``alternative="greater"`` (the test of "x > y") ``P(T > t_{1-alpha, 2n-2})``."""
    from scipy import stats

    _check_alternative(alternative)
    df = 2 * n - 2
    nc = effect * math.sqrt(n / 2)
    if alternative == "greater":
        return float(stats.nct.sf(stats.t.ppf(1 - alpha, df), df, nc))
    crit = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))


def detectable_difference(sd: float, n: int, alpha: float = 0.05, power: float = 0.8,
                          alternative: str = "two-sided") -> float:
    """Smallest difference of two means (in the units of ``sd``) that the t-test at ``alpha`` (two-sided, or
    one-sided for ``alternative="greater"``) detects with probability ``power`` at ``n >= 2`` seeds a side:
    ``sd * d`` where ``t_test_power(d, n, alpha, alternative) = power``."""
    from scipy import optimize, stats

    _check_alternative(alternative)
    if n < 2:
        raise ValueError("a t-test needs n >= 2 seeds a side")
    tail = alpha / 2 if alternative == "two-sided" else alpha
    hi = (stats.norm.ppf(1 - tail) + stats.norm.ppf(power)) * math.sqrt(2 / n)   # the normal approximation:
    while t_test_power(hi, n, alpha, alternative) < power:                        # a lower bound of d
        hi *= 2
    return sd * float(optimize.brentq(lambda d: t_test_power(d, n, alpha, alternative) - power, 0.0, hi))


def welch_difference(x: Sequence[float], y: Sequence[float], confidence: float = 0.95,
                     alternative: str = "two-sided") -> dict:
    """Difference of means ``mean(x) - mean(y)`` with Welch's t interval and p-value (unequal variances).

    ``se = sqrt(s_x^2 / n_x + s_y^2 / n_y)`` (sample variances, ddof=1), Welch-Satterthwaite degrees of freedom
    ``nu = se^4 / ((s_x^2/n_x)^2 / (n_x-1) + (s_y^2/n_y)^2 / (n_y-1))``, interval ``diff +- t(1-(1-c)/2, nu) se``,
    ``p = 2 P(T_nu > |diff| / se)``; for ``alternative="greater"`` (the one-sided test of "mean x > mean y") ``p =
    P(T_nu > diff / se)`` (the interval stays two-sided; ``bound = diff - t(c, nu) se`` is the one-sided lower
    confidence bound that matches it: p < 1 - c exactly when bound > 0).  With no spread on either side (se = 0) the
    interval and bound are the point and p is 0 for a difference in the tested direction, 1 otherwise.

    :return: ``dict(diff, low, high, bound, p, dof, n_x, n_y)``
    :raises ValueError: a side with fewer than 2 values (no variance to estimate)
    """
    from scipy import stats

    _check_alternative(alternative)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or len(y) < 2:
        raise ValueError("Welch's test needs >= 2 values a side")
    diff = float(x.mean() - y.mean())
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    if se == 0.0:
        shown = diff > 0.0 if alternative == "greater" else diff != 0.0
        return dict(diff=diff, low=diff, high=diff, bound=diff, p=float(not shown), dof=float("nan"), n_x=len(x),
                    n_y=len(y))
    dof = se ** 4 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    half = float(stats.t.ppf(1 - (1 - confidence) / 2, dof)) * se
    bound = diff - float(stats.t.ppf(confidence, dof)) * se
    p = float(stats.t.sf(diff / se, dof) if alternative == "greater" else 2 * stats.t.sf(abs(diff) / se, dof))
    return dict(diff=diff, low=diff - half, high=diff + half, bound=bound, p=p, dof=float(dof), n_x=len(x),
                n_y=len(y))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given): the k-th smallest of m is multiplied by (m - k + 1),
    made non-decreasing in that order and capped at 1.  Rejecting where the adjusted p < alpha keeps the chance of
    any false "difference" among the m comparisons below alpha."""
    order = np.argsort(pvalues, kind="stable")
    m, out, running = len(pvalues), [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out
