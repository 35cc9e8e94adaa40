"""NoisyLinear (factorised Gaussian noise): noise structure and statistics, initialisation, training vs evaluation."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rlzoo_transfer.layers.noisy import NoisyLinear, reset_noise, scale_noise, set_noise


def test_scale_noise_statistics_match_theory():
    # f(x) = sign(x) sqrt|x|, x ~ N(0,1): E f = 0, E f^2 = E|x| = sqrt(2/pi), E f^4 = E x^2 = 1, symmetric
    f = scale_noise(400_000, generator=torch.Generator().manual_seed(0)).double()
    assert f.shape == (400_000,)
    assert abs(f.mean().item()) < 0.005
    assert f.pow(2).mean().item() == pytest.approx(math.sqrt(2 / math.pi), abs=0.005)
    assert f.pow(4).mean().item() == pytest.approx(1.0, abs=0.01)
    assert (f > 0).double().mean().item() == pytest.approx(0.5, abs=0.005)


def test_noise_is_factorised():
    torch.manual_seed(0)
    layer = NoisyLinear(7, 5)
    for _ in range(3):
        layer.reset_noise()
        eps_w, eps_b = layer.weight_epsilon, layer.bias_epsilon
        assert eps_w.shape == (5, 7) and eps_b.shape == (5,)
        # weight_epsilon = outer(f(eps_out), f(eps_in)) with bias_epsilon = f(eps_out): rank one, rows scale by bias
        f_in = eps_w[0] / eps_b[0]
        torch.testing.assert_close(eps_w, torch.outer(eps_b, f_in))
        assert torch.linalg.matrix_rank(eps_w).item() == 1


def test_noise_samples_have_the_factorised_statistics():
    torch.manual_seed(1)
    layer = NoisyLinear(64, 32)
    ws, bs = [], []
    for _ in range(400):
        layer.reset_noise()
        ws.append(layer.weight_epsilon.clone())
        bs.append(layer.bias_epsilon.clone())
    w, b = torch.stack(ws).double(), torch.stack(bs).double()
    # E eps_w = 0; E eps_w^2 = E f(x)^2 E f(y)^2 = 2/pi; E eps_b^2 = sqrt(2/pi)
    assert abs(w.mean().item()) < 0.01
    assert w.pow(2).mean().item() == pytest.approx(2 / math.pi, rel=0.03)
    assert b.pow(2).mean().item() == pytest.approx(math.sqrt(2 / math.pi), rel=0.03)
    # successive samples are independent draws, not one frozen sample
    assert not torch.equal(ws[0], ws[1])


@pytest.mark.parametrize("n_in,n_out,sigma0", [(576, 256, 0.1), (256, 51, 0.5)])
def test_initialisation(n_in, n_out, sigma0):
    layer = NoisyLinear(n_in, n_out, sigma0)
    assert layer.weight_mu.shape == layer.weight_sigma.shape == (n_out, n_in)
    torch.testing.assert_close(layer.weight_sigma, torch.full((n_out, n_in), sigma0 / math.sqrt(n_in)))
    torch.testing.assert_close(layer.bias_sigma, torch.full((n_out,), sigma0 / math.sqrt(n_in)))
    bound = 1 / math.sqrt(n_in)
    assert layer.weight_mu.abs().max() <= bound and layer.bias_mu.abs().max() <= bound
    assert layer.weight_mu.abs().max() > 0.9 * bound  # uniform over the whole range, not a narrow one
    # epsilon buffers live in the state dict (a saved model keeps them), sigma and mu are parameters
    names = dict(layer.named_parameters())
    assert set(names) == {"weight_mu", "weight_sigma", "bias_mu", "bias_sigma"}
    assert {"weight_epsilon", "bias_epsilon"} <= set(layer.state_dict())


def test_eval_mode_uses_the_mean_weights_and_is_deterministic():
    torch.manual_seed(2)
    layer = NoisyLinear(10, 4)
    x = torch.randn(6, 10)
    layer.eval()
    assert not layer.noisy
    y = layer(x)
    torch.testing.assert_close(y, F.linear(x, layer.weight_mu, layer.bias_mu))
    layer.reset_noise()
    torch.testing.assert_close(layer(x), y, rtol=0, atol=0)


def test_training_mode_is_noisy_and_changes_with_reset_noise():
    torch.manual_seed(3)
    layer = NoisyLinear(10, 4, sigma0=0.5)
    x = torch.randn(6, 10)
    layer.train()
    assert layer.noisy
    y1 = layer(x)
    w = layer.weight_mu + layer.weight_sigma * layer.weight_epsilon
    b = layer.bias_mu + layer.bias_sigma * layer.bias_epsilon
    torch.testing.assert_close(y1, F.linear(x, w, b))
    torch.testing.assert_close(layer(x), y1, rtol=0, atol=0)  # same noise sample: same output
    layer.reset_noise()
    y2 = layer(x)
    assert not torch.allclose(y1, y2)
    assert not torch.allclose(y1, F.linear(x, layer.weight_mu, layer.bias_mu))
    # gradients reach both mu and sigma
    y2.sum().backward()
    assert layer.weight_sigma.grad is not None and layer.weight_sigma.grad.abs().sum() > 0
    assert layer.weight_mu.grad.abs().sum() > 0


def test_set_noise_and_reset_noise_on_a_module_tree():
    torch.manual_seed(4)
    net = nn.Sequential(NoisyLinear(5, 8), nn.ReLU(), NoisyLinear(8, 3))
    x = torch.randn(4, 5)
    net.train()
    mean = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
    for lin, noisy in ((mean[0], net[0]), (mean[2], net[2])):
        lin.weight.data.copy_(noisy.weight_mu)
        lin.bias.data.copy_(noisy.bias_mu)
    set_noise(net, False)
    assert not net[0].noisy and not net[2].noisy
    torch.testing.assert_close(net(x), mean(x))
    set_noise(net, True)
    noisy_out = net(x)
    assert not torch.allclose(noisy_out, mean(x))
    before = [net[0].weight_epsilon.clone(), net[2].weight_epsilon.clone()]
    reset_noise(net)
    assert not torch.equal(before[0], net[0].weight_epsilon) and not torch.equal(before[1], net[2].weight_epsilon)
    assert not torch.allclose(net(x), noisy_out)
