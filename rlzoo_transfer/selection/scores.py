"""Model-selection (transferability) scores as pure numpy functions.

Every score is computed from quantities extracted once from a pretrained model on a small sample of the target
task (features, source-class probabilities, per-sample gradients) plus the target labels, without any fine-tuning.
Higher is better for every score (a better model to fine-tune), so they can all be ranked the same way.

Shapes and conventions used throughout:

* ``features``: ``(N, D)`` float, one row per target sample (e.g. the penultimate-layer activations).
* ``labels``: ``(N,)`` integer target labels in ``[0, C)``; only the classes that occur matter.
* ``source_probs``: ``(N, Cs)`` source-model class probabilities, rows summing to 1.
* ``source_labels``: ``(N,)`` integer source-task ("dummy") labels, e.g. ``source_probs.argmax(1)``.
* ``gradients``: ``(N, P)`` per-sample gradients of the model output w.r.t. (a subset of) its weights.

References:

* LFC / LGC: Deshpande et al. 2021, "A linearized framework and a new benchmark for model selection for
  fine-tuning" (eq. 6-8 and Sec. 3.3).
* LEEP: Nguyen et al. 2020, "LEEP: A New Measure to Evaluate Transferability of Learned Representations".
* NCE: Tran et al. 2019, "Transferability and Hardness of Supervised Classification Tasks".
* LogME: You et al. 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer Learning".
* H-score: Bao et al. 2019, "An Information-Theoretic Approach to Transferability in Task Transfer Learning".
* RSA: Dwivedi & Roig 2019, "Representation Similarity Analysis for Efficient Task Taxonomy & Transfer
  Learning" (as used in Deshpande et al. 2021, App. C, eq. 9-11).
* Domain similarity: Cui et al. 2018, "Large Scale Fine-Grained Categorization and Domain-Specific Transfer
  Learning" (Sec. 4.1, EMD between class-mean features).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
from scipy import optimize, sparse, spatial, stats

__all__ = [
    "UndefinedScoreError",
    "label_similarity",
    "linear_kernel",
    "kernel_label_correlation",
    "random_projection",
    "lfc",
    "lgc",
    "leep",
    "nce",
    "logme",
    "h_score",
    "rdm",
    "rdm_entries",
    "correlate_rdms",
    "rsa",
    "earth_movers_distance",
    "domain_similarity",
]

# Rows of the Gaussian projection matrix generated per step in ``random_projection`` (the matrix is produced in
# row blocks so a (P, k) matrix never has to fit in memory).  Part of the seed -> matrix contract: changing it
# changes the projection drawn for a given seed.
_PROJECTION_BLOCK_ENTRIES = 1 << 22


class UndefinedScoreError(ValueError):
    """A score is undefined for these inputs though they are well-formed: the model is degenerate on the target
    sample (all-zero or constant features, a constant kernel or RDM).  Callers ranking many models report such a
    model's score as missing instead of stopping; any other ValueError is a usage error."""


# ----------------------------------------------------------------------------------------------------------------
# input validation
# ----------------------------------------------------------------------------------------------------------------
def _as_matrix(x, name: str) -> np.ndarray:
    """Return ``x`` as a finite float64 array of shape (N, D) with N >= 1, D >= 1, else raise ValueError."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def _as_labels(labels, n: int | None, name: str = "labels") -> np.ndarray:
    """Return ``labels`` as an int64 array of shape (n,) with values >= 0, else raise ValueError."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array (N,), got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has length {arr.shape[0]} but there are {n} samples")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} must be non-empty")
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
        raise ValueError(f"{name} must be integers in [0, C), got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.min() < 0:
        raise ValueError(f"{name} must be integers in [0, C), got a negative label {arr.min()}")
    return arr


def _need_two_classes(labels: np.ndarray, what: str) -> None:
    if np.unique(labels).size < 2:
        raise ValueError(f"{what} needs at least two distinct classes in labels")


# ----------------------------------------------------------------------------------------------------------------
# kernels and the label-correlation scores (Deshpande et al. 2021)
# ----------------------------------------------------------------------------------------------------------------
def label_similarity(labels) -> np.ndarray:
    """Label similarity matrix K_Y (Deshpande et al. 2021, Sec. 3.3).

    ``(K_Y)_ij = 1`` if ``labels[i] == labels[j]`` and ``-1`` otherwise; for binary labels y = +-1 this is
    ``y y^T`` (eq. 7).

    :param labels: ``(N,)`` integer labels in ``[0, C)``
    :return: ``(N, N)`` float64 matrix with entries in {-1, +1}
    """
    y = _as_labels(labels, None)
    return np.where(y[:, None] == y[None, :], 1.0, -1.0)


def linear_kernel(features) -> np.ndarray:
    """Feature similarity matrix Theta_F = F F^T (eq. 6); with gradients in place of features it is the empirical
    NTK Theta = grad f grad f^T (eq. 2).

    :param features: ``(N, D)`` features (or ``(N, P)`` gradients)
    :return: ``(N, N)`` Gram matrix
    """
    f = _as_matrix(features, "features")
    return f @ f.T


def kernel_label_correlation(kernel, labels) -> float:
    """Normalised label correlation of an explicit kernel, eq. (8) of Deshpande et al. 2021::

        S = (Theta - mu_Theta) . (K_Y - mu_K) / (||Theta - mu_Theta||_2 ||K_Y - mu_K||_2)

    where ``.`` is the sum of the element-wise product, ``mu`` the mean of all entries and ``||.||_2`` the
    Frobenius norm: the Pearson correlation between the N^2 entries of ``kernel`` and of ``label_similarity``.

    :param kernel: ``(N, N)`` kernel matrix (e.g. ``linear_kernel(features)``)
    :param labels: ``(N,)`` integer labels in ``[0, C)`` with at least two distinct classes
    :return: correlation in [-1, 1]
    :raises ValueError: non-square kernel, length mismatch, a single class, or a constant kernel
    """
    theta = _as_matrix(kernel, "kernel")
    if theta.shape[0] != theta.shape[1]:
        raise ValueError(f"kernel must be square (N, N), got shape {theta.shape}")
    y = _as_labels(labels, theta.shape[0])
    _need_two_classes(y, "kernel_label_correlation")
    k = label_similarity(y)
    theta_c = theta - theta.mean()
    k_c = k - k.mean()
    denom = np.linalg.norm(theta_c) * np.linalg.norm(k_c)
    if denom == 0.0:
        raise UndefinedScoreError("kernel is constant; its correlation with the labels is undefined")
    return float(np.sum(theta_c * k_c) / denom)


def _linear_kernel_label_correlation(f: np.ndarray, y: np.ndarray) -> float:
    """eq. (8) for Theta = F F^T without forming the (N, N) matrices.

    With t = sum_i f_i, t_c = sum_{i in class c} f_i and n_c the class counts:
    sum(Theta) = |t|^2, Theta . K_Y = 2 sum_c |t_c|^2 - |t|^2, sum(K_Y) = 2 sum_c n_c^2 - N^2,
    ||Theta||_F^2 = ||F^T F||_F^2 = ||F F^T||_F^2 (whichever is smaller), ||K_Y||_F^2 = N^2.
    """
    n = f.shape[0]
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    class_sums = np.zeros((counts.size, f.shape[1]))
    np.add.at(class_sums, inverse, f)
    total = class_sums.sum(axis=0)
    nn = float(n) * n
    sum_theta = float(total @ total)
    theta_dot_k = 2.0 * float(np.sum(class_sums * class_sums)) - sum_theta
    sum_k = 2.0 * float(np.sum(counts.astype(np.float64) ** 2)) - nn
    mu_theta, mu_k = sum_theta / nn, sum_k / nn
    gram = f.T @ f if f.shape[1] <= n else f @ f.T
    theta_sq = float(np.sum(gram * gram))
    numerator = theta_dot_k - nn * mu_theta * mu_k
    var_theta = theta_sq - nn * mu_theta**2
    var_k = nn - nn * mu_k**2
    if var_theta <= 1e-12 * max(theta_sq, np.finfo(float).tiny):
        raise UndefinedScoreError("the kernel F F^T is constant; its correlation with the labels is undefined")
    return float(numerator / np.sqrt(var_theta * var_k))


def lfc(features, labels) -> float:
    """Label-Feature Correlation (Deshpande et al. 2021, Sec. 3.2-3.3).

    eq. (8) with the feature kernel Theta_F = F F^T of eq. (6)::

        S_LF = (Theta_F - mu) . (K_Y - mu_K) / (||Theta_F - mu|| ||K_Y - mu_K||)

    i.e. the Pearson correlation between the entries of F F^T and of the label similarity matrix K_Y (+1 same
    class, -1 otherwise).  Computed in O(N D min(N, D)) time without forming N x N matrices; identical to
    ``kernel_label_correlation(linear_kernel(features), labels)``.  Features are used raw (no centring), as in
    the paper.

    :param features: ``(N, D)`` features of the target samples, e.g. the layer before the classifier
    :param labels: ``(N,)`` integer target labels in ``[0, C)``, at least two classes
    :return: correlation in [-1, 1]; higher is better
    """
    f = _as_matrix(features, "features")
    y = _as_labels(labels, f.shape[0])
    _need_two_classes(y, "lfc")
    return _linear_kernel_label_correlation(f, y)


def random_projection(x, proj_dim: int, seed: int = 0) -> np.ndarray:
    """Seeded Gaussian random projection ``x R`` with ``R_ij ~ N(0, 1 / proj_dim)`` i.i.d., shape (P, proj_dim).

    ``E[R R^T] = I`` so inner products (and hence the kernel x x^T) are preserved in expectation
    (Johnson-Lindenstrauss).  ``R`` is drawn from ``numpy.random.default_rng(seed)`` in row blocks, so it never
    has to be held in memory whole; the result depends only on ``(seed, P, proj_dim)``.

    :param x: ``(N, P)`` array
    :param proj_dim: output dimension k >= 1
    :param seed: seed of the projection
    :return: ``(N, proj_dim)`` projected array
    """
    a = _as_matrix(x, "x")
    if int(proj_dim) != proj_dim or proj_dim < 1:
        raise ValueError(f"proj_dim must be a positive integer, got {proj_dim}")
    proj_dim = int(proj_dim)
    rng = np.random.default_rng(seed)
    rows = max(1, _PROJECTION_BLOCK_ENTRIES // proj_dim)
    out = np.zeros((a.shape[0], proj_dim))
    scale = 1.0 / np.sqrt(proj_dim)
    for start in range(0, a.shape[1], rows):
        stop = min(start + rows, a.shape[1])
        block = rng.standard_normal((stop - start, proj_dim))
        out += a[:, start:stop] @ block
    return out * scale


def lgc(gradients, labels, proj_dim: int | None = 10000, seed: int = 0) -> float:
    """Label-Gradient Correlation (Deshpande et al. 2021, eq. 7-8).

    eq. (8) with the empirical NTK Theta = G G^T of eq. (2), G the per-sample gradients::

        S_LG = (Theta - mu_Theta) . (K_Y - mu_K) / (||Theta - mu_Theta|| ||K_Y - mu_K||)

    As in Sec. 3.3, gradients longer than ``proj_dim`` are first reduced with the seeded Gaussian
    ``random_projection`` (approximate, deterministic given ``seed``); shorter ones are used exactly, and then
    ``lgc(g, y) == lfc(g, y)``.  Note that the projection costs O(N P proj_dim) while the exact kernel costs
    O(N^2 P): pass ``proj_dim=None`` to always use the exact kernel.

    :param gradients: ``(N, P)`` per-sample gradients (e.g. of the last conv layer's weights)
    :param labels: ``(N,)`` integer target labels in ``[0, C)``, at least two classes
    :param proj_dim: projection dimension (10k in the paper); ``None`` disables the projection
    :param seed: seed of the projection
    :return: correlation in [-1, 1]; higher is better
    """
    g = _as_matrix(gradients, "gradients")
    y = _as_labels(labels, g.shape[0])
    _need_two_classes(y, "lgc")
    if proj_dim is not None and g.shape[1] > proj_dim:
        g = random_projection(g, proj_dim, seed)
    return _linear_kernel_label_correlation(g, y)


# ----------------------------------------------------------------------------------------------------------------
# LEEP and NCE
# ----------------------------------------------------------------------------------------------------------------
def leep(source_probs, labels) -> float:
    """Log Expected Empirical Prediction (Nguyen et al. 2020).

    With theta(x_i) = ``source_probs[i]`` over the Cs source classes z:

    1. empirical joint   P(y, z) = (1/N) sum_{i: y_i = y} theta(x_i)_z
    2. conditional       P(y | z) = P(y, z) / P(z),  P(z) = sum_y P(y, z)
    3. LEEP = (1/N) sum_i log( sum_z P(y_i | z) theta(x_i)_z )

    Source classes never predicted (P(z) = 0) contribute nothing.  LEEP <= 0; it is 0 when the source
    probabilities are one-hot and determine the label.

    :param source_probs: ``(N, Cs)`` source-model probabilities on the target samples, rows summing to 1
    :param labels: ``(N,)`` integer target labels in ``[0, C)``
    :return: the average log-likelihood of the expected empirical predictor; higher is better
    """
    theta = _as_matrix(source_probs, "source_probs")
    y = _as_labels(labels, theta.shape[0])
    if np.any(theta < 0) or not np.allclose(theta.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("source_probs must be non-negative with rows summing to 1 (apply softmax first)")
    n = theta.shape[0]
    joint = np.zeros((int(y.max()) + 1, theta.shape[1]))
    np.add.at(joint, y, theta)
    joint /= n
    marginal = joint.sum(axis=0)
    cond = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)  # P(y | z)
    eep = np.sum(cond[y] * theta, axis=1)
    return float(np.mean(np.log(eep)))


def nce(source_labels, labels) -> float:
    """Negative Conditional Entropy (Tran et al. 2019).

    With the empirical joint P(y, z) of target labels y and source labels z (e.g. the source model's argmax
    predictions) over the N samples::

        NCE = -H(Y | Z) = sum_{y, z} P(y, z) log P(y | z),   P(y | z) = P(y, z) / P(z)

    NCE <= 0, with 0 when z determines y, and -H(Y) when z is independent of y.

    :param source_labels: ``(N,)`` integer source labels in ``[0, Cs)``
    :param labels: ``(N,)`` integer target labels in ``[0, C)``
    :return: negative conditional entropy in nats; higher is better
    """
    z = _as_labels(source_labels, None, "source_labels")
    y = _as_labels(labels, z.shape[0])
    joint = np.zeros((int(y.max()) + 1, int(z.max()) + 1))
    np.add.at(joint, (y, z), 1.0)
    joint /= z.shape[0]
    marginal = joint.sum(axis=0, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log((joint / np.where(marginal > 0, marginal, 1.0))[nz])))


# ----------------------------------------------------------------------------------------------------------------
# LogME
# ----------------------------------------------------------------------------------------------------------------
def _logme_evidence(s2: np.ndarray, z: np.ndarray, y_sq: float, n: int, d: int, alpha: float, beta: float):
    """Log evidence log p(y | F, alpha, beta) of Bayesian linear regression, from the SVD F = U diag(s) V^T.

    Model: w ~ N(0, alpha^-1 I_D), y | F, w ~ N(F w, beta^-1 I_N), i.e. y ~ N(0, alpha^-1 F F^T + beta^-1 I).
    With A = alpha I + beta F^T F and m = beta A^-1 F^T y (posterior mean)::

        L = N/2 log beta + D/2 log alpha - N/2 log 2 pi - beta/2 |F m - y|^2 - alpha/2 |m|^2 - 1/2 log|A|

    In the SVD basis (z = U^T y, r = len(s) singular values):
    |m|^2 = sum (beta s z / (alpha + beta s^2))^2, |F m - y|^2 = sum (alpha z / (alpha + beta s^2))^2
    + (|y|^2 - |z|^2), log|A| = sum log(alpha + beta s^2) + (D - r) log alpha.

    :return: (L, gamma, |m|^2, |F m - y|^2) where gamma = sum beta s^2 / (alpha + beta s^2)
    """
    denom = alpha + beta * s2
    m_sq = float(np.sum((beta * np.sqrt(s2) * z / denom) ** 2))
    res = float(np.sum((alpha * z / denom) ** 2)) + max(y_sq - float(z @ z), 0.0)
    logdet = float(np.sum(np.log(denom))) + (d - s2.size) * np.log(alpha)
    evidence = (
        0.5 * n * np.log(beta)
        + 0.5 * d * np.log(alpha)
        - 0.5 * n * np.log(2.0 * np.pi)
        - 0.5 * beta * res
        - 0.5 * alpha * m_sq
        - 0.5 * logdet
    )
    gamma = float(np.sum(beta * s2 / denom))
    return float(evidence), gamma, m_sq, res


def _logme_fixed_point(s2, z, y_sq, n, d, tol, max_iter):
    """MacKay's fixed-point iteration for the evidence maximiser, starting from alpha = beta = 1::

        gamma = sum_j beta s_j^2 / (alpha + beta s_j^2),  alpha <- gamma / |m|^2,  beta <- (N - gamma) / |F m - y|^2

    :return: (L / N at the final alpha, beta;  alpha;  beta)
    """
    tiny = np.finfo(np.float64).tiny
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        _, gamma, m_sq, res = _logme_evidence(s2, z, y_sq, n, d, alpha, beta)
        new_alpha = max(gamma / max(m_sq, tiny), tiny)
        new_beta = max((n - gamma) / max(res, tiny), tiny)
        converged = abs(new_alpha - alpha) <= tol * alpha and abs(new_beta - beta) <= tol * beta
        alpha, beta = new_alpha, new_beta
        if converged:
            break
    evidence = _logme_evidence(s2, z, y_sq, n, d, alpha, beta)[0]
    return evidence / n, alpha, beta


def logme(features, labels, tol: float = 1e-6, max_iter: int = 1000) -> float:
    """LogME (You et al. 2021): maximum log evidence of a Bayesian linear model on the features, per sample.

    For each class c present in ``labels`` the target is the indicator y_c = 1[labels == c] (N,); the model is
    w ~ N(0, alpha^-1 I), y_c ~ N(F w, beta^-1 I) and its log evidence (marginal likelihood)::

        L(alpha, beta) = N/2 log beta + D/2 log alpha - N/2 log 2 pi - beta/2 |F m - y|^2 - alpha/2 |m|^2
                         - 1/2 log|alpha I + beta F^T F|,      m = beta (alpha I + beta F^T F)^-1 F^T y

    is maximised over (alpha, beta) by the fixed-point iteration alpha = gamma / |m|^2,
    beta = (N - gamma) / |F m - y|^2, gamma = sum_j beta s_j^2 / (alpha + beta s_j^2) (s_j the singular values
    of F).  LogME = mean over classes of L* / N.  One SVD of F serves all classes.  Features are used raw.

    :param features: ``(N, D)`` target features
    :param labels: ``(N,)`` integer target labels in ``[0, C)``
    :param tol: relative change of alpha and beta at which the iteration stops
    :param max_iter: maximum number of fixed-point steps per class
    :return: average per-sample log evidence (nats); higher is better
    """
    f = _as_matrix(features, "features")
    y = _as_labels(labels, f.shape[0])
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    if s.max() == 0.0:
        raise UndefinedScoreError("features are all zero; LogME is undefined")
    s2 = s**2
    values = []
    for c in np.unique(y):
        target = (y == c).astype(np.float64)
        z = u.T @ target
        values.append(_logme_fixed_point(s2, z, float(target @ target), n, d, tol, max_iter)[0])
    return float(np.mean(values))


# ----------------------------------------------------------------------------------------------------------------
# H-score
# ----------------------------------------------------------------------------------------------------------------
def h_score(features, labels, rtol: float = 1e-10) -> float:
    """H-score (Bao et al. 2019)::

        H(f) = tr( cov(f)^-1 cov(E[f | Y]) )

    where cov(f) is the (D, D) covariance of the features and cov(E[f | Y]) the covariance of the features with
    each sample replaced by its class mean (the between-class covariance).  Both use the 1/N normalisation.
    cov(f) is inverted on its range only (pseudo-inverse), dropping eigenvalues below ``rtol`` times the largest,
    so constant or collinear feature dimensions are allowed.  0 <= H <= min(C - 1, D).

    :param features: ``(N, D)`` target features
    :param labels: ``(N,)`` integer target labels in ``[0, C)``
    :param rtol: relative eigenvalue cut-off of the pseudo-inverse
    :return: H-score; higher is better
    """
    f = _as_matrix(features, "features")
    y = _as_labels(labels, f.shape[0])
    n = f.shape[0]
    fc = f - f.mean(axis=0)
    _, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    class_sums = np.zeros((counts.size, f.shape[1]))
    np.add.at(class_sums, inverse, fc)
    class_means = class_sums / counts[:, None]
    cov_f = fc.T @ fc / n
    # cov(E[f|Y]) = sum_c (n_c / N) mu_c mu_c^T  (the mu_c are already centred)
    cov_between = (class_means * (counts / n)[:, None]).T @ class_means
    eigval, eigvec = np.linalg.eigh(cov_f)
    if eigval[-1] <= 0.0:
        raise UndefinedScoreError("features are constant; H-score is undefined")
    keep = eigval > rtol * eigval[-1]
    v = eigvec[:, keep]
    return float(np.sum(np.einsum("dk,de,ek->k", v, cov_between, v) / eigval[keep]))


# ----------------------------------------------------------------------------------------------------------------
# RSA
# ----------------------------------------------------------------------------------------------------------------
def rdm(features) -> np.ndarray:
    """Representation dissimilarity matrix (Deshpande et al. 2021, eq. 9): ``rdm_ij = 1 - corr(f(x_i), f(x_j))``,
    the Pearson correlation being taken across the D feature dimensions.

    :param features: ``(N, D)`` features, D >= 2, no sample with constant features
    :return: ``(N, N)`` symmetric matrix with zero diagonal and entries in [0, 2]
    """
    f = _as_matrix(features, "features")
    if f.shape[1] < 2:
        raise ValueError("rdm needs at least 2 feature dimensions to correlate samples")
    fc = f - f.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(fc, axis=1)
    if np.any(norms == 0.0):
        raise UndefinedScoreError("some samples have constant features; their correlation is undefined")
    fn = fc / norms[:, None]
    return 1.0 - np.clip(fn @ fn.T, -1.0, 1.0)


def rsa(features, reference_features, method: str = "spearman") -> float:
    """Representation Similarity Analysis score (Dwivedi & Roig 2019; Deshpande et al. 2021, eq. 9-11)::

        S_RSA = spearmanr( triu(rdm(features)), triu(rdm(reference_features)) )

    over the N (N - 1) / 2 entries above the diagonal of each RDM, where ``reference_features`` come from a small
    model trained on the target task.  ``method="pearson"`` uses Pearson's correlation instead.

    :param features: ``(N, D)`` features of the candidate pretrained model on the target samples
    :param reference_features: ``(N, D')`` features of the reference model on the same samples (any D')
    :param method: ``"spearman"`` (default, as in the paper) or ``"pearson"``
    :return: correlation in [-1, 1]; higher is better
    """
    if method not in ("spearman", "pearson"):
        raise ValueError(f"method must be 'spearman' or 'pearson', got {method!r}")
    a = _as_matrix(features, "features")
    b = _as_matrix(reference_features, "reference_features")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"features and reference_features must have the same N, got {a.shape[0]} and {b.shape[0]}")
    if a.shape[0] < 3:
        raise ValueError("rsa needs at least 3 samples (2 off-diagonal RDM entries)")
    return correlate_rdms(rdm_entries(a, "features"), rdm_entries(b, "reference_features"), method)


def correlate_rdms(da: np.ndarray, db: np.ndarray, method: str = "spearman") -> float:
    """RSA's correlation of two RDMs' upper triangles (:func:`rdm_entries`, the same N): so that a reference RDM
    compared with many models is computed once.  ``method`` as in :func:`rsa`."""
    if da.shape != db.shape or da.ndim != 1:
        raise ValueError(f"the RDM entries must be two vectors of one length, got {da.shape} and {db.shape}")
    if da.size < 2:
        raise ValueError("rsa needs at least 3 samples (2 off-diagonal RDM entries)")
    if method == "spearman":
        da, db = stats.rankdata(da), stats.rankdata(db)
    da, db = da - da.mean(), db - db.mean()
    return float(da @ db / (np.linalg.norm(da) * np.linalg.norm(db)))


def rdm_entries(features, name: str = "features") -> np.ndarray:
    """The N (N - 1) / 2 entries above the diagonal of ``rdm(features)``, the vector RSA correlates.

    :raises UndefinedScoreError: (naming ``name``) a sample with constant features, or all entries equal
    """
    f = _as_matrix(features, name)
    try:
        d = rdm(f)[np.triu_indices(f.shape[0], k=1)]
    except UndefinedScoreError as e:
        raise UndefinedScoreError(f"{name}: {e}") from None
    if d.size > 1 and np.ptp(d) <= 1e-12:                 # entries lie in [0, 2]; below this it is rounding noise
        raise UndefinedScoreError(f"{name}: the RDM is constant; its correlation is undefined")
    return d


# ----------------------------------------------------------------------------------------------------------------
# Domain similarity (Cui et al. 2018)
# ----------------------------------------------------------------------------------------------------------------
def earth_movers_distance(cost, source_weights, target_weights) -> float:
    """Earth Mover's Distance between two discrete distributions (Cui et al. 2018, eq. 1)::

        EMD = sum_ij f*_ij d_ij / sum_ij f*_ij,
        f* = argmin_f sum_ij f_ij d_ij  s.t. f >= 0, sum_j f_ij = w_s_i, sum_i f_ij = w_t_j

    The weights are normalised to sum to 1 each, so the total flow is 1.  Solved as a linear programme with
    ``scipy.optimize.linprog`` (HiGHS).  When both sides have the same number n of points with uniform weights,
    an optimal flow is a permutation / n (Birkhoff-von Neumann), so ``scipy.optimize.linear_sum_assignment`` is
    used instead (exact and much faster).

    :param cost: ``(m, n)`` non-negative ground distances d_ij
    :param source_weights: ``(m,)`` non-negative source masses (normalised here)
    :param target_weights: ``(n,)`` non-negative target masses (normalised here)
    :return: the EMD, in the units of ``cost``
    """
    d = _as_matrix(cost, "cost")
    ws = np.asarray(source_weights, dtype=np.float64)
    wt = np.asarray(target_weights, dtype=np.float64)
    if ws.shape != (d.shape[0],) or wt.shape != (d.shape[1],):
        raise ValueError(
            f"weights must have shapes ({d.shape[0]},) and ({d.shape[1]},), got {ws.shape} and {wt.shape}"
        )
    if np.any(ws < 0) or np.any(wt < 0) or ws.sum() <= 0 or wt.sum() <= 0:
        raise ValueError("weights must be non-negative with a positive sum")
    ws, wt = ws / ws.sum(), wt / wt.sum()
    m, n = d.shape
    if m == n and np.allclose(ws, 1.0 / m) and np.allclose(wt, 1.0 / n):
        rows, cols = optimize.linear_sum_assignment(d)
        return float(d[rows, cols].mean())
    # variables f_ij flattened row-major; row sums = ws (m equalities), column sums = wt (n equalities)
    a_eq = sparse.vstack([sparse.kron(sparse.eye(m), np.ones((1, n))), sparse.kron(np.ones((1, m)), sparse.eye(n))],
                         format="csr")   # (m + n, m n) with 2 m n non-zeros: dense it would not fit for 1000 classes
    b_eq = np.concatenate([ws, wt])
    result = optimize.linprog(d.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs")
    if not result.success:  # pragma: no cover - the transport polytope is never empty after normalisation
        raise RuntimeError(f"EMD linear programme failed: {result.message}")
    flow = result.x
    return float(flow @ d.ravel() / flow.sum())


def _class_means(f: np.ndarray, y: np.ndarray, min_count: int, domain_counts: Mapping[int, int] | None = None):
    """Class means of ``f`` over the classes in ``y`` and their weights: the classes' numbers of samples, or of
    images in the whole domain when ``domain_counts`` gives them (then also for the ``min_count`` rule)."""
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    sums = np.zeros((classes.size, f.shape[1]))
    np.add.at(sums, inverse, f)
    means = sums / counts[:, None]
    if domain_counts is not None:
        missing = [int(c) for c in classes if int(c) not in domain_counts]
        if missing:
            raise ValueError(f"class {missing[0]} of the samples has no count in the domain's class counts")
        counts = np.array([domain_counts[int(c)] for c in classes])
    keep = counts >= min_count
    return means[keep], counts[keep].astype(np.float64)


def domain_similarity(
    source_features,
    source_labels,
    target_features,
    target_labels,
    gamma: float = 0.01,
    min_class_count: int = 1,
    source_counts: Mapping[int, int] | None = None,
    target_counts: Mapping[int, int] | None = None,
) -> float:
    """Domain similarity of Cui et al. 2018 (Sec. 4.1)::

        sim(S, T) = exp(-gamma * EMD(S, T))

    where each domain is the set of its class-mean features g(c) (computed with the pretrained model), weighted
    by class frequency w_c = n_c / sum n_c, and the EMD uses the Euclidean ground distance
    d_ij = ||g(s_i) - g(t_j)||_2 (see ``earth_movers_distance``).  Classes with fewer than ``min_class_count``
    samples are dropped (Deshpande et al. 2021, App. C, drop classes with < 5 images).  When the features come
    from a sample of each domain, ``source_counts`` / ``target_counts`` (label -> number of images of the class in
    the whole domain) give Cui et al.'s weights and the rule's counts; otherwise the samples' own counts are used.

    :param source_features: ``(Ns, D)`` features of source-domain samples
    :param source_labels: ``(Ns,)`` integer source labels
    :param target_features: ``(Nt, D)`` features of target-domain samples (same D)
    :param target_labels: ``(Nt,)`` integer target labels
    :param gamma: temperature (0.01 in Cui et al.)
    :param min_class_count: minimum samples for a class to take part
    :param source_counts: optional {label: images of the class in the source domain}
    :param target_counts: optional {label: images of the class in the target domain}
    :return: similarity in (0, 1]; higher is better
    """
    fs = _as_matrix(source_features, "source_features")
    ft = _as_matrix(target_features, "target_features")
    if fs.shape[1] != ft.shape[1]:
        raise ValueError(f"source and target features must have the same D, got {fs.shape[1]} and {ft.shape[1]}")
    ys = _as_labels(source_labels, fs.shape[0], "source_labels")
    yt = _as_labels(target_labels, ft.shape[0], "target_labels")
    if gamma < 0:
        raise ValueError(f"gamma must be non-negative, got {gamma}")
    ms, ws = _class_means(fs, ys, min_class_count, source_counts)
    mt, wt = _class_means(ft, yt, min_class_count, target_counts)
    if ms.shape[0] == 0 or mt.shape[0] == 0:
        raise ValueError(f"no class has at least min_class_count={min_class_count} samples in one of the domains")
    emd = earth_movers_distance(spatial.distance.cdist(ms, mt), ws, wt)
    return float(np.exp(-gamma * emd))
