"""Golden and property tests for rlzoo_transfer.selection (scores and ranking).

Real data: scikit-learn's bundled ``load_digits`` (1797 8x8 images, 10 classes; no download).  Its raw pixels
are an informative "feature extractor" for the digit labels; Gaussian noise of the same shape is not.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import optimize, stats

from rlzoo_transfer.selection import (UndefinedScoreError, best_of_top_k, domain_similarity, earth_movers_distance,
                                      h_score, kernel_label_correlation, label_similarity, leep, lfc, lgc,
                                      linear_kernel, logme, nce, random_projection, rank_models, rdm, rdm_entries,
                                      rsa, spearman, trials_to_best)
from rlzoo_transfer.selection.scores import _logme_evidence

datasets = pytest.importorskip("sklearn.datasets")


@pytest.fixture(scope="module")
def digits():
    x, y = datasets.load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(y))[:600]  # keep every test light
    return x[idx].astype(np.float64), y[idx].astype(np.int64)


@pytest.fixture(scope="module")
def noise(digits):
    x, _ = digits
    return np.random.default_rng(1).standard_normal(x.shape)


def _softmax(logits):
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------------------------
# label similarity, kernels, LFC, LGC
# ------------------------------------------------------------------------------------------------------------
def test_label_similarity_hand_case():
    k = label_similarity(np.array([0, 1, 0]))
    np.testing.assert_array_equal(k, [[1, -1, 1], [-1, 1, -1], [1, -1, 1]])


def test_lfc_equals_one_when_kernel_is_label_similarity():
    y = np.array([0, 0, 1, 2, 2, 2, 1, 0])
    f = 3.0 * np.eye(3)[y]  # F F^T = 9 * [y_i == y_j] = 4.5 (K_Y + 1): an affine image of K_Y
    assert lfc(f, y) == pytest.approx(1.0, abs=1e-12)
    assert kernel_label_correlation(label_similarity(y), y) == pytest.approx(1.0, abs=1e-12)


def test_lfc_hand_case():
    # f = [1, 1, -1], y = [0, 0, 1]: Theta = f f^T, K_Y = f f^T as well (binary +-1 labels, eq. 7) -> 1.
    # With f = [1, 2, 0]: Theta = [[1,2,0],[2,4,0],[0,0,0]], mean 1; K = [[1,1,-1],[1,1,-1],[-1,-1,1]], mean 1/9.
    # (Theta-1).(K-1/9) = Theta.K - 9*1*(1/9) = (1+2+2+4) - 1 = 8; ||Theta-1||^2 = 25 - 9 = 16;
    # ||K-1/9||^2 = 9 - 9/81 = 80/9  ->  8 / (4 * sqrt(80/9)) = 6 / sqrt(80) = 0.670820...
    assert lfc(np.array([[1.0], [1.0], [-1.0]]), [0, 0, 1]) == pytest.approx(1.0)
    assert lfc(np.array([[1.0], [2.0], [0.0]]), [0, 0, 1]) == pytest.approx(6 / math.sqrt(80))


def test_lfc_matches_explicit_kernel_on_digits(digits, noise):
    x, y = digits
    for f in (x, noise, x[:50]):  # D < N, D < N, D > N paths of the closed form
        n = f.shape[0]
        assert lfc(f, y[:n]) == pytest.approx(kernel_label_correlation(linear_kernel(f), y[:n]), abs=1e-9)
    assert lfc(x, y) > 0.2 > 0.05 > lfc(noise, y)


def test_lgc_exact_below_proj_dim_and_projected_above(digits):
    x, y = digits
    assert lgc(x, y) == lfc(x, y)  # 64 <= 10000: no projection
    assert lgc(x, y, proj_dim=None) == lfc(x, y)
    rng = np.random.default_rng(2)
    g = np.hstack([x, rng.standard_normal((len(y), 1000))])[:200]  # P = 1064 > proj_dim
    exact = lfc(g, y[:200])
    approx = lgc(g, y[:200], proj_dim=400, seed=3)
    assert approx != exact and approx == pytest.approx(exact, abs=0.05)  # Johnson-Lindenstrauss


def test_random_projection_deterministic_given_seed():
    g = np.random.default_rng(0).standard_normal((20, 300))
    a = random_projection(g, 50, seed=7)
    b = random_projection(g, 50, seed=7)
    c = random_projection(g, 50, seed=8)
    assert a.shape == (20, 50)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    y = np.arange(20) % 3
    assert lgc(g, y, proj_dim=50, seed=7) == lgc(g, y, proj_dim=50, seed=7)
    assert lgc(g, y, proj_dim=50, seed=7) != lgc(g, y, proj_dim=50, seed=8)


def test_random_projection_preserves_inner_products_in_expectation():
    g = np.random.default_rng(0).standard_normal((4, 200))
    p = random_projection(g, 20000, seed=0)  # R_ij ~ N(0, 1/k): E[R R^T] = I
    np.testing.assert_allclose(p @ p.T, g @ g.T, atol=0.1 * 200)


# ------------------------------------------------------------------------------------------------------------
# LEEP
# ------------------------------------------------------------------------------------------------------------
def test_leep_one_hot_aligned_is_zero():
    y = np.array([0, 1, 2, 1, 0])
    assert leep(np.eye(3)[y], y) == pytest.approx(0.0)  # P(y|z) = 1[y = z] -> EEP = 1 -> log 1
    perm = np.array([2, 0, 1])  # source classes a relabelling of the target's: still determined
    assert leep(np.eye(3)[perm[y]], y) == pytest.approx(0.0)


def test_leep_hand_case():
    # theta(x1) = (1, 0), y1 = 0;  theta(x2) = (.5, .5), y2 = 1.
    # P(y, z) = 1/2 [[1, 0], [.5, .5]] = [[.5, 0], [.25, .25]];  P(z) = (.75, .25)
    # P(y | z=0) = (2/3, 1/3), P(y | z=1) = (0, 1)
    # EEP(x1) = 2/3 * 1 = 2/3;  EEP(x2) = 1/3 * .5 + 1 * .5 = 2/3  ->  LEEP = log(2/3)
    assert leep(np.array([[1.0, 0.0], [0.5, 0.5]]), [0, 1]) == pytest.approx(math.log(2 / 3))


def test_leep_uninformative_source_is_minus_entropy():
    # constant theta: P(y | z) = P(y) for every z, EEP(x_i) = P(y_i) -> LEEP = sum_y P(y) log P(y) = -H(Y)
    y = np.array([0, 0, 0, 1])
    value = leep(np.full((4, 5), 0.2), y)
    assert value == pytest.approx(0.75 * math.log(0.75) + 0.25 * math.log(0.25))


def test_leep_on_digits_prefers_informative_source(digits):
    x, y = digits
    rng = np.random.default_rng(0)
    # a "source model": softmax of nearest-class-mean logits on pixels, vs a random source model
    means = np.stack([x[y == c].mean(0) for c in range(10)])
    good = _softmax(-0.01 * ((x[:, None, :] - means[None]) ** 2).sum(-1))
    bad = _softmax(rng.standard_normal((len(y), 10)))
    assert leep(good, y) > leep(bad, y)
    assert leep(good, y) <= 0.0


# ------------------------------------------------------------------------------------------------------------
# NCE
# ------------------------------------------------------------------------------------------------------------
def test_nce_hand_cases():
    y = np.array([0, 1, 2, 2, 1])
    assert nce(y, y) == pytest.approx(0.0)  # perfectly predictive source labels
    assert nce((y + 1) % 3, y) == pytest.approx(0.0)  # any bijection of them too
    # z = [0,0,1,1], y = [0,1,1,1]: P(0,0)=P(1,0)=1/4, P(1,1)=1/2; P(z)=(1/2,1/2)
    # NCE = 1/4 log 1/2 + 1/4 log 1/2 + 1/2 log 1 = -1/2 log 2
    assert nce([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(-0.5 * math.log(2))
    # independent source labels: -H(Y) = -log 2 for balanced binary labels
    assert nce([0, 0, 0, 0], [0, 1, 0, 1]) == pytest.approx(-math.log(2))


# ------------------------------------------------------------------------------------------------------------
# LogME
# ------------------------------------------------------------------------------------------------------------
def test_logme_evidence_hand_case():
    # F = [[1], [0]], y = [1, 0], alpha = beta = 1: y ~ N(0, F F^T + I) = N(0, diag(2, 1))
    # log p = -1/2 * (1/2) - 1/2 log 2 - log(2 pi)
    f = np.array([[1.0], [0.0]])
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    y = np.array([1.0, 0.0])
    value = _logme_evidence(s**2, u.T @ y, 1.0, 2, 1, 1.0, 1.0)[0]
    assert value == pytest.approx(-0.25 - 0.5 * math.log(2) - math.log(2 * math.pi))


@pytest.mark.parametrize("n,d", [(30, 5), (8, 12)])
def test_logme_evidence_is_gaussian_marginal_likelihood(n, d):
    rng = np.random.default_rng(n)
    f, y = rng.standard_normal((n, d)), rng.standard_normal(n)
    alpha, beta = 0.7, 2.5
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    value = _logme_evidence(s**2, u.T @ y, float(y @ y), n, d, alpha, beta)[0]
    expected = stats.multivariate_normal(np.zeros(n), f @ f.T / alpha + np.eye(n) / beta).logpdf(y)
    assert value == pytest.approx(expected, rel=1e-10)


def test_logme_fixed_point_reaches_the_evidence_maximum():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((40, 3))
    labels = (f[:, 0] + 0.5 * rng.standard_normal(40) > 0).astype(int)
    u, s, _ = np.linalg.svd(f, full_matrices=False)

    def neg_mean_evidence(log_ab):
        out = []
        for c in (0, 1):
            t = (labels == c).astype(float)
            out.append(_logme_evidence(s**2, u.T @ t, float(t @ t), 40, 3, *np.exp(log_ab[2 * c : 2 * c + 2]))[0])
        return -np.mean(out) / 40

    best = optimize.minimize(neg_mean_evidence, np.zeros(4), method="Nelder-Mead",
                             options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 20000})
    assert logme(f, labels) == pytest.approx(-best.fun, abs=1e-7)


def test_logme_prefers_informative_features(digits, noise):
    x, y = digits
    assert logme(x, y) > logme(noise, y)
    assert logme(x[:40], y[:40]) > logme(noise[:40], y[:40])  # D > N path


# ------------------------------------------------------------------------------------------------------------
# H-score
# ------------------------------------------------------------------------------------------------------------
def test_h_score_hand_case():
    # f = [0, 2, 4, 6], y = [0, 0, 1, 1]: var(f) = (9+1+1+9)/4 = 5; class means (1, 1, 5, 5), var 4 -> 4/5
    assert h_score(np.array([[0.0], [2.0], [4.0], [6.0]]), [0, 0, 1, 1]) == pytest.approx(0.8)


def test_h_score_prefers_informative_features(digits, noise):
    x, y = digits  # digits has constant (always-zero) pixels: the pseudo-inverse handles them
    hx, hn = h_score(x, y), h_score(noise, y)
    assert hx > hn
    assert 0.0 <= hn < hx <= 9.0 + 1e-9  # bounded by C - 1


# ------------------------------------------------------------------------------------------------------------
# RSA
# ------------------------------------------------------------------------------------------------------------
def test_rdm_hand_case():
    f = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [3.0, 2.0, 1.0]])
    np.testing.assert_allclose(rdm(f), [[0, 0, 2], [0, 0, 2], [2, 2, 0]], atol=1e-12)


def test_rsa_self_is_one_and_noise_is_near_zero(digits, noise):
    x, _ = digits
    x, z = x[:150], noise[:150]
    assert rsa(x, x) == pytest.approx(1.0)
    assert rsa(x, x, method="pearson") == pytest.approx(1.0)
    assert rsa(x, 3.0 * x + 1.0) == pytest.approx(1.0)  # RDMs are invariant to affine maps of the features
    assert abs(rsa(x, z)) < 0.1
    assert rsa(x, x + 5.0 * z) > rsa(x, z)


def test_rsa_is_spearman_of_the_rdms_upper_triangles(digits, noise):
    """Against an independent computation (1 - np.corrcoef for the RDMs, scipy's spearmanr / pearsonr): the default
    is the paper's rank correlation, not Pearson's, which differs by far more than the tolerance here."""
    x, z = digits[0][:120], noise[:120]
    y = (np.exp(x / 4.0) + 3.0 * z)[:, :40]   # a nonlinear, noisy view of the same images, of another width
    iu = np.triu_indices(len(x), k=1)
    da, db = (1.0 - np.corrcoef(x))[iu], (1.0 - np.corrcoef(y))[iu]
    spearman, pearson = stats.spearmanr(da, db).statistic, stats.pearsonr(da, db).statistic
    assert abs(spearman - pearson) > 0.02
    assert rsa(x, y) == pytest.approx(spearman, abs=1e-9)
    assert rsa(x, y, method="pearson") == pytest.approx(pearson, abs=1e-9)


def test_degenerate_features_are_undefined_not_usage_errors(digits):
    """A collapsed model (all-zero features, one feature vector for every image) gets UndefinedScoreError, a
    ValueError that callers ranking a zoo tell apart from bad input; rsa names the side that is degenerate."""
    x, y = digits[0][:60], digits[1][:60]
    zero, same = np.zeros_like(x), np.tile(x[:1], (60, 1))
    for score, f in ((lfc, zero), (lfc, same), (logme, zero), (h_score, same), (h_score, zero)):
        with pytest.raises(UndefinedScoreError):
            score(f, y)
    with pytest.raises(UndefinedScoreError, match="kernel is constant"):
        kernel_label_correlation(np.ones((60, 60)), y)
    with pytest.raises(UndefinedScoreError, match="^features: some samples have constant features"):
        rsa(zero, x)
    with pytest.raises(UndefinedScoreError, match="^reference_features: the RDM is constant"):
        rsa(x, same)                                  # every pair of samples equally (dis)similar
    with pytest.raises(UndefinedScoreError, match="reference_features"):
        rdm_entries(same, "reference_features")
    assert rdm_entries(x[:2]).shape == (1,)            # one entry has no spread to lack: rsa's own N >= 3 rule
    with pytest.raises(ValueError, match="at least 3 samples"):
        rsa(x[:2], x[:2])
    assert issubclass(UndefinedScoreError, ValueError)
    with pytest.raises(ValueError) as bad:            # bad input stays a plain ValueError
        lfc(x, y[:10])
    assert not isinstance(bad.value, UndefinedScoreError)


# ------------------------------------------------------------------------------------------------------------
# Domain similarity / EMD
# ------------------------------------------------------------------------------------------------------------
def test_emd_hand_cases():
    # one source mass at 0, target masses .5 at 3 and .5 at 5 -> EMD = .5*3 + .5*5 = 4
    assert earth_movers_distance([[3.0, 5.0]], [1.0], [1.0, 1.0]) == pytest.approx(4.0)
    # uniform 2 vs 2: the assignment path; best permutation is the anti-diagonal (1 + 2) / 2
    assert earth_movers_distance([[4.0, 1.0], [2.0, 9.0]], [1, 1], [1, 1]) == pytest.approx(1.5)


def test_emd_assignment_matches_linprog():
    rng = np.random.default_rng(0)
    cost = rng.random((6, 6))
    uniform = earth_movers_distance(cost, np.ones(6), np.ones(6))  # linear_sum_assignment
    nudged = earth_movers_distance(cost, np.ones(6) + 1e-7 * np.arange(6), np.ones(6))  # linprog
    assert uniform == pytest.approx(nudged, abs=1e-5)


def test_domain_similarity_hand_cases():
    fs = np.array([[0.0], [0.0]])
    ft = np.array([[3.0], [5.0]])
    # source class mean 0 (weight 1); target class means 3 and 5 (weights 1/2) -> EMD 4 -> exp(-0.04)
    assert domain_similarity(fs, [0, 0], ft, [0, 1]) == pytest.approx(math.exp(-0.04))
    assert domain_similarity(ft, [0, 1], ft, [1, 0]) == pytest.approx(1.0)  # same domain
    # class frequencies weight the means: target masses 1/3 at 3, 2/3 at 5 -> EMD 13/3
    value = domain_similarity(fs, [0, 0], np.array([[3.0], [5.0], [5.0]]), [0, 1, 1], gamma=1.0)
    assert value == pytest.approx(math.exp(-13 / 3))
    # sampled features, the whole domain's class counts: target classes 0 and 1 with 30 and 10 images -> masses
    # 3/4 at 3, 1/4 at 5 -> EMD 3.5 (the sample's own counts, 1 and 1, would give 4)
    value = domain_similarity(fs, [0, 0], ft, [0, 1], gamma=1.0, target_counts={0: 30, 1: 10})
    assert value == pytest.approx(math.exp(-3.5))
    # the min-count rule counts the domain's images: class 1 with 4 < 5 leaves, class 0 alone -> EMD 3
    value = domain_similarity(fs, [0, 0], ft, [0, 1], gamma=1.0, min_class_count=5, source_counts={0: 9},
                              target_counts={0: 30, 1: 4})
    assert value == pytest.approx(math.exp(-3.0))
    with pytest.raises(ValueError, match="class 1 of the samples has no count"):
        domain_similarity(fs, [0, 0], ft, [0, 1], target_counts={0: 30})


def test_domain_similarity_on_digits(digits):
    x, y = digits
    src, tgt = slice(0, 300), slice(300, 600)
    same = domain_similarity(x[src], y[src], x[tgt], y[tgt])
    shifted = domain_similarity(x[src], y[src], x[tgt] + 8.0, y[tgt])
    assert 0.0 < shifted < same <= 1.0
    # min_class_count drops small classes
    with pytest.raises(ValueError, match="min_class_count"):
        domain_similarity(x[:5], y[:5], x[tgt], y[tgt], min_class_count=10)


# ------------------------------------------------------------------------------------------------------------
# invariance to label permutation (every label-based score)
# ------------------------------------------------------------------------------------------------------------
def test_label_permutation_invariance(digits):
    x, y = digits
    x, y = x[:200], y[:200]
    perm = np.random.default_rng(5).permutation(10)
    yp = perm[y]
    rng = np.random.default_rng(6)
    probs = _softmax(rng.standard_normal((200, 7)) + 2.0 * np.eye(7)[y % 7])
    z = probs.argmax(1)
    zp = np.random.default_rng(7).permutation(7)[z]
    g = np.hstack([x, rng.standard_normal((200, 100))])
    assert lfc(x, yp) == pytest.approx(lfc(x, y), abs=1e-12)
    assert lgc(g, yp, proj_dim=32) == pytest.approx(lgc(g, y, proj_dim=32), abs=1e-12)
    assert leep(probs, yp) == pytest.approx(leep(probs, y), abs=1e-12)
    assert leep(probs[:, ::-1], y) == pytest.approx(leep(probs, y), abs=1e-12)  # source classes permuted
    assert nce(zp, yp) == pytest.approx(nce(z, y), abs=1e-12)
    assert logme(x, yp) == pytest.approx(logme(x, y), abs=1e-10)
    assert h_score(x, yp) == pytest.approx(h_score(x, y), abs=1e-9)
    assert domain_similarity(x[:100], yp[:100], x[100:], y[100:]) == pytest.approx(
        domain_similarity(x[:100], y[:100], x[100:], y[100:]), abs=1e-12
    )


# ------------------------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------------------------
def test_clear_errors_on_bad_shapes():
    f = np.ones((4, 3)) + np.arange(12).reshape(4, 3) ** 2
    y = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="length 3 but there are 4 samples"):
        lfc(f, y[:3])
    with pytest.raises(ValueError, match="2-D"):
        lfc(f[0], y)
    with pytest.raises(ValueError, match="1-D"):
        logme(f, y[:, None])
    with pytest.raises(ValueError, match="integers"):
        h_score(f, y.astype(float))
    with pytest.raises(ValueError, match="negative"):
        lfc(f, [0, -1, 0, 1])
    with pytest.raises(ValueError, match="two distinct classes"):
        lfc(f, [0, 0, 0, 0])
    with pytest.raises(ValueError, match="NaN"):
        logme(np.where(f > 50, np.nan, f), y)
    with pytest.raises(ValueError, match="square"):
        kernel_label_correlation(f, y)
    with pytest.raises(ValueError, match="rows summing to 1"):
        leep(np.ones((4, 2)), y)
    with pytest.raises(ValueError, match="length"):
        leep(np.full((4, 2), 0.5), y[:2])
    with pytest.raises(ValueError, match="length"):
        nce([0, 1], y)
    with pytest.raises(ValueError, match="same N"):
        rsa(f, f[:3])
    with pytest.raises(ValueError, match="same D"):
        domain_similarity(f, y, f[:, :2], y)
    with pytest.raises(ValueError, match="length"):
        domain_similarity(f, y, f, y[:3])
    with pytest.raises(ValueError, match="proj_dim"):
        random_projection(f, 0)
    with pytest.raises(ValueError, match="shapes"):
        earth_movers_distance(np.ones((2, 3)), [1, 1], [1, 1])


# ------------------------------------------------------------------------------------------------------------
# ranking
# ------------------------------------------------------------------------------------------------------------
def test_rank_models_and_ties():
    assert rank_models({"a": 0.1, "b": 0.9, "c": 0.5}) == ["b", "c", "a"]
    assert rank_models({"x": 1.0, "y": 1.0, "z": 2.0}) == ["z", "x", "y"]  # ties keep insertion order
    with pytest.raises(ValueError, match="NaN"):
        rank_models({"a": float("nan")})


def test_spearman_and_trials_to_best():
    acc = {"a": 70.0, "b": 90.0, "c": 80.0, "d": 60.0}
    perfect = {"a": 0.3, "b": 0.9, "c": 0.5, "d": 0.1}
    reversed_ = {k: -v for k, v in perfect.items()}
    assert spearman(perfect, acc) == pytest.approx(1.0)
    assert spearman(reversed_, acc) == pytest.approx(-1.0)
    assert trials_to_best(perfect, acc) == 1
    assert trials_to_best(reversed_, acc) == 4
    # b is scored third: c, a, then b
    assert trials_to_best({"a": 0.5, "b": 0.2, "c": 0.9, "d": 0.1}, acc) == 3
    assert best_of_top_k({"a": 0.5, "b": 0.2, "c": 0.9, "d": 0.1}, acc, k=2) == 80.0
    assert spearman([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(stats.spearmanr([1, 2, 3, 4], [10, 30, 20, 40])[0])
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="same models"):
        spearman({"a": 1, "b": 2}, {"a": 1, "c": 2})
    with pytest.raises(ValueError, match="both be mappings"):
        trials_to_best({"a": 1}, [1.0])
