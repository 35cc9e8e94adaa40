"""The categorical (C51) projection against hand-computed golden vectors (Dopamine's style)."""
from __future__ import annotations

import pytest
import torch

from rlzoo_transfer.rl.distributional import categorical_target, project_distribution


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_dopamine_golden_case():
    # Dopamine's project_distribution test: supports [0..4] clipped onto [3..7] pile up at 3 and 4.
    out = project_distribution(t([[0, 1, 2, 3, 4]]), t([[.1, .2, .1, .3, .3]]), t([3, 4, 5, 6, 7]))
    torch.testing.assert_close(out, t([[.7, .3, 0, 0, 0]]))


def test_dopamine_golden_batch():
    # Dopamine's batched case: a second row whose support is shifted, spacing 1 on target support [3..7].
    supports = t([[0, 2, 4, 6, 8], [1, 3, 4, 5, 6]])
    weights = t([[.1, .6, .1, .1, .1], [.1, .2, .5, .1, .1]])
    out = project_distribution(supports, weights, t([3, 4, 5, 6, 7]))
    # row 0: 0,2 -> 3 (.7); 4 -> 4 (.1); 6 -> 6 (.1); 8 -> 7 (.1)
    # row 1: 1,3 -> 3 (.3); 4 -> 4 (.5); 5 -> 5 (.1); 6 -> 6 (.1)
    torch.testing.assert_close(out, t([[.7, .1, 0, .1, .1], [.3, .5, .1, .1, 0]]))


def test_atom_between_two_target_atoms_is_split_linearly():
    target = t([3, 4, 5, 6, 7])
    torch.testing.assert_close(project_distribution(t([[3.5]]), t([[1.0]]), target), t([[.5, .5, 0, 0, 0]]))
    torch.testing.assert_close(project_distribution(t([[5.25]]), t([[1.0]]), target), t([[0, 0, .75, .25, 0]]))
    # above v_max and below v_min: clipped to the end atoms
    torch.testing.assert_close(project_distribution(t([[9.0, -2.0]]), t([[.4, .6]]), target),
                               t([[.6, 0, 0, 0, .4]]))


def test_non_unit_spacing():
    target = t([-1.0, -0.5, 0.0, 0.5, 1.0])  # dz = 0.5
    out = project_distribution(t([[-0.9, 0.1, 0.75]]), t([[.2, .3, .5]]), target)
    # -0.9: 80% to -1, 20% to -0.5; 0.1: 80% to 0, 20% to 0.5; 0.75: 50/50 between 0.5 and 1
    torch.testing.assert_close(out, t([[.16, .04, .24, .06 + .25, .25]]))


def test_mass_is_conserved_and_non_negative():
    g = torch.Generator().manual_seed(0)
    support = torch.linspace(-10, 10, 51, dtype=torch.float64)
    src = torch.randn(64, 51, generator=g, dtype=torch.float64) * 8
    w = torch.softmax(torch.randn(64, 51, generator=g, dtype=torch.float64), -1)
    out = project_distribution(src, w, support)
    assert out.shape == (64, 51)
    assert (out >= 0).all()
    torch.testing.assert_close(out.sum(-1), w.sum(-1))
    # the mean is preserved wherever no atom was clipped (a linear split keeps the first moment)
    inside = (src.abs() <= 10).all(-1)
    torch.testing.assert_close((out * support).sum(-1)[inside], (w * src).sum(-1)[inside])


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        project_distribution(t([[0, 1]]), t([[1.0]]), t([0, 1]))


def test_categorical_target_discount_zero_puts_all_mass_on_the_clipped_return():
    support = torch.linspace(-10, 10, 51)
    probs = torch.softmax(torch.randn(4, 51, generator=torch.Generator().manual_seed(1)), -1)
    returns = torch.tensor([0.4, -2.0, 15.0, -30.0])  # on an atom, on an atom, above v_max, below v_min
    m = categorical_target(probs, returns, torch.zeros(4), support)
    expected = torch.zeros(4, 51)
    expected[0, 26] = 1.0  # z_26 = 0.4
    expected[1, 20] = 1.0  # z_20 = -2.0
    expected[2, 50] = 1.0
    expected[3, 0] = 1.0
    torch.testing.assert_close(m, expected, atol=1e-5, rtol=0)


def test_categorical_target_hand_computed_with_gamma():
    # support [-2, -1, 0, 1, 2]; R = 0.5, gamma^n = 0.5: Tz = 0.5 + 0.5 z = [-0.5, 0, 0.5, 1, 1.5]
    support = t([-2, -1, 0, 1, 2])
    probs = t([[.1, .2, .3, .2, .2]])
    m = categorical_target(probs, t([0.5]), t([0.5]), support)
    # -0.5 -> (-1: .05, 0: .05); 0 -> 0: .2; 0.5 -> (0: .15, 1: .15); 1 -> 1: .2; 1.5 -> (1: .1, 2: .1)
    torch.testing.assert_close(m, t([[0, .05, .05 + .2 + .15, .15 + .2 + .1, .1]]))
    # a terminal window (discount 0) ignores the next distribution entirely
    torch.testing.assert_close(categorical_target(probs, t([0.5]), t([0.0]), support), t([[0, 0, .5, .5, 0]]))
