"""NoisyLinear with factorised Gaussian noise (Fortunato et al., 2018, "Noisy Networks for Exploration").

    y = (mu_w + sigma_w * eps_w) x + (mu_b + sigma_b * eps_b)

with factorised noise eps_w = f(eps_out) f(eps_in)^T, eps_b = f(eps_out), f(x) = sign(x) sqrt(|x|),
eps_in ~ N(0, I_in), eps_out ~ N(0, I_out).  Initialisation (Sec. 3.2 of the paper, factorised case):
mu ~ U[-1/sqrt(in), 1/sqrt(in)], sigma = sigma0 / sqrt(in) with sigma0 = 0.1 (DER / Kaixhin's ``--noisy-std``).

In training mode the forward pass uses ``weight_mu + weight_sigma * weight_epsilon``; in evaluation mode (or with
``noise_enabled = False``) it uses the mean weights only, so evaluation is deterministic.  ``reset_noise()`` draws a
new sample; DER calls it once per agent step and once per update (the algorithm owns that schedule).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def scale_noise(size: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """f(eps) = sign(eps) * sqrt(|eps|) for eps ~ N(0, 1); shape (size,)."""
    x = torch.randn(size, generator=generator, device=device)
    return x.sign() * x.abs().sqrt()


class FactorisedNoise:
    """The factorised noise state of a noisy linear layer, for ``nn.Module`` subclasses with parameters
    ``weight_mu, weight_sigma: (..., O, I)`` and ``bias_mu, bias_sigma: (..., O)`` (``...``: e.g. the m sources of
    an AdaAgg layer, which share one noise sample).

    Buffers ``weight_epsilon = f(eps_out) f(eps_in)^T: (O, I)`` and ``bias_epsilon = f(eps_out): (O,)``; the flag
    ``noise_enabled``; ``noisy`` = training mode and noise enabled.
    """

    def _register_noise(self, out_features: int, in_features: int, **factory) -> None:
        self.noise_enabled = True
        self.register_buffer("weight_epsilon", torch.zeros(out_features, in_features, **factory))
        self.register_buffer("bias_epsilon", torch.zeros(out_features, **factory))

    @torch.no_grad()
    def reset_noise(self) -> None:
        """Draw a new factorised noise sample (in place, so compiled graphs see it)."""
        dev = self.weight_mu.device
        eps_in = scale_noise(self.weight_epsilon.shape[1], device=dev)
        eps_out = scale_noise(self.weight_epsilon.shape[0], device=dev)
        self.weight_epsilon.copy_(torch.outer(eps_out, eps_in))
        self.bias_epsilon.copy_(eps_out)

    @property
    def noisy(self) -> bool:
        """True when the forward pass adds noise (training mode and noise enabled)."""
        return self.training and self.noise_enabled

    def noisy_weight(self, noise: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu_w + sigma_w * eps_w, mu_b + sigma_b * eps_b)`` when ``noise`` and ``noisy``, else
        ``(mu_w, mu_b)``; shapes those of ``weight_mu`` and ``bias_mu``."""
        if noise and self.noisy:
            return (self.weight_mu + self.weight_sigma * self.weight_epsilon,
                    self.bias_mu + self.bias_sigma * self.bias_epsilon)
        return self.weight_mu, self.bias_mu


class NoisyLinear(FactorisedNoise, nn.Module):
    """Linear layer with learnable factorised Gaussian noise.

    :param in_features: input size ``I``
    :param out_features: output size ``O``
    :param sigma0: initial noise scale (sigma = sigma0 / sqrt(I))
    Shapes: input ``(..., I)`` -> output ``(..., O)``.  Parameters ``weight_mu, weight_sigma: (O, I)``,
    ``bias_mu, bias_sigma: (O,)``; buffers ``weight_epsilon: (O, I)``, ``bias_epsilon: (O,)``.
    """

    def __init__(self, in_features: int, out_features: int, sigma0: float = 0.1):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.sigma0 = sigma0
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_sigma = nn.Parameter(torch.empty(out_features, in_features))
        self.bias_mu = nn.Parameter(torch.empty(out_features))
        self.bias_sigma = nn.Parameter(torch.empty(out_features))
        self._register_noise(out_features, in_features)
        self.reset_parameters()
        self.reset_noise()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.weight_mu, -bound, bound)
        nn.init.uniform_(self.bias_mu, -bound, bound)
        nn.init.constant_(self.weight_sigma, self.sigma0 / math.sqrt(self.in_features))
        nn.init.constant_(self.bias_sigma, self.sigma0 / math.sqrt(self.in_features))

    def effective_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (weight (O, I), bias (O,)) the forward pass uses right now."""
        return self.noisy_weight()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w, b = self.effective_weight()
        return F.linear(x, w, b)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, sigma0={self.sigma0}"


def reset_noise(module: nn.Module) -> None:
    """Resample the noise of every NoisyLinear-like submodule (anything with ``reset_noise``)."""
    for m in module.modules():
        if m is not module and hasattr(m, "reset_noise") and callable(m.reset_noise):
            m.reset_noise()


def set_noise(module: nn.Module, enabled: bool) -> None:
    """Switch the noise of every submodule that has a ``noise_enabled`` flag on or off."""
    for m in module.modules():
        if hasattr(m, "noise_enabled"):
            m.noise_enabled = enabled
