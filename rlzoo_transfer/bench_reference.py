"""The yardstick of ``bench``'s update target: DER written the straightforward eager way (Kaixhin/Rainbow style), with
its own network, loss and learner and none of this package's DER code, so that "our update <= 0.8x the reference"
compares against an independent implementation.  The module names of :class:`RefDERNet` equal DERNetwork's, so a
DER state_dict loads into it and the two losses can be checked against each other (``tests/test_bench.py``)."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class RefNoisyLinear(nn.Module):
    """Factorised-Gaussian noisy linear layer, written plainly (Fortunato et al. 2018; Kaixhin/Rainbow).

    Parameter and buffer names are NoisyLinear's, so a DERNetwork state_dict loads into the reference network.
    """

    def __init__(self, in_features: int, out_features: int, std_init: float = 0.1):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_mu = nn.Parameter(torch.empty(out_features, in_features))
        self.weight_sigma = nn.Parameter(torch.empty(out_features, in_features))
        self.register_buffer("weight_epsilon", torch.empty(out_features, in_features))
        self.bias_mu = nn.Parameter(torch.empty(out_features))
        self.bias_sigma = nn.Parameter(torch.empty(out_features))
        self.register_buffer("bias_epsilon", torch.empty(out_features))
        mu_range = 1.0 / math.sqrt(in_features)
        with torch.no_grad():
            self.weight_mu.uniform_(-mu_range, mu_range)
            self.weight_sigma.fill_(std_init / math.sqrt(in_features))
            self.bias_mu.uniform_(-mu_range, mu_range)
            self.bias_sigma.fill_(std_init / math.sqrt(out_features))
        self.reset_noise()

    @staticmethod
    def _scale_noise(size: int, device) -> torch.Tensor:
        x = torch.randn(size, device=device)
        return x.sign().mul_(x.abs().sqrt_())

    def reset_noise(self) -> None:
        eps_in = self._scale_noise(self.in_features, self.weight_mu.device)
        eps_out = self._scale_noise(self.out_features, self.weight_mu.device)
        self.weight_epsilon.copy_(eps_out.outer(eps_in))
        self.bias_epsilon.copy_(eps_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return F.linear(x, self.weight_mu + self.weight_sigma * self.weight_epsilon,
                            self.bias_mu + self.bias_sigma * self.bias_epsilon)
        return F.linear(x, self.weight_mu, self.bias_mu)


class RefDERNet(nn.Module):
    """DER's network, written plainly: conv 4->32 5x5 s5, conv 32->64 5x5 s5, noisy dueling C51 head.

    Module names equal DERNetwork's (rl/policies.py), so ``load_state_dict(der_net.state_dict())`` works.
    """

    def __init__(self, n_actions: int, atoms: int = 51, hidden: int = 256, in_channels: int = 4,
                 noisy_std: float = 0.1):
        super().__init__()
        self.n_actions, self.atoms = n_actions, atoms
        self.conv1 = nn.Conv2d(in_channels, 32, 5, stride=5)
        self.conv2 = nn.Conv2d(32, 64, 5, stride=5)
        self.value_hidden = RefNoisyLinear(576, hidden, noisy_std)
        self.value_out = RefNoisyLinear(hidden, atoms, noisy_std)
        self.advantage_hidden = RefNoisyLinear(576, hidden, noisy_std)
        self.advantage_out = RefNoisyLinear(hidden, n_actions * atoms, noisy_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 4, 84, 84) float in [0, 1] -> log p (B, A, atoms)."""
        x = F.relu(self.conv2(F.relu(self.conv1(x)))).view(-1, 576)
        v = self.value_out(F.relu(self.value_hidden(x))).view(-1, 1, self.atoms)
        a = self.advantage_out(F.relu(self.advantage_hidden(x))).view(-1, self.n_actions, self.atoms)
        q = v + a - a.mean(1, keepdim=True)
        return F.log_softmax(q, dim=2)

    def reset_noise(self) -> None:
        for layer in (self.value_hidden, self.value_out, self.advantage_hidden, self.advantage_out):
            layer.reset_noise()


def reference_loss(online: RefDERNet, target: RefDERNet, obs: torch.Tensor, actions: torch.Tensor,
                   returns: torch.Tensor, discounts: torch.Tensor, next_obs: torch.Tensor, weights: torch.Tensor,
                   v_min: float = -10.0, v_max: float = 10.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The DER loss the classic way: (PER-weighted mean loss, per-sample cross-entropy (B,)).

    Double-Q bootstrap action from the online net, target net's distribution for it, Algorithm 1 of Bellemare et
    al. (2017) with floor / ceil and ``index_add_`` (with the usual fix for atoms landing exactly on a support point).
    """
    batch, atoms = obs.shape[0], online.atoms
    support = torch.linspace(v_min, v_max, atoms, device=obs.device)
    delta_z = (v_max - v_min) / (atoms - 1)
    states, next_states = obs.float() / 255.0, next_obs.float() / 255.0
    log_p = online(states)
    log_p_a = log_p[range(batch), actions]
    with torch.no_grad():
        pns = online(next_states).exp()
        argmax_indices_ns = (support.expand_as(pns) * pns).sum(2).argmax(1)
        pns = target(next_states).exp()
        pns_a = pns[range(batch), argmax_indices_ns]
        tz = returns.unsqueeze(1) + discounts.unsqueeze(1) * support.unsqueeze(0)
        tz = tz.clamp(min=v_min, max=v_max)
        b = (tz - v_min) / delta_z
        lower, upper = b.floor().to(torch.int64), b.ceil().to(torch.int64)
        lower[(upper > 0) & (lower == upper)] -= 1
        upper[(lower < (atoms - 1)) & (lower == upper)] += 1
        m = states.new_zeros(batch, atoms)
        offset = (torch.arange(batch, device=obs.device) * atoms).unsqueeze(1).expand(batch, atoms)
        m.view(-1).index_add_(0, (lower + offset).view(-1), (pns_a * (upper.float() - b)).view(-1))
        m.view(-1).index_add_(0, (upper + offset).view(-1), (pns_a * (b - lower.float())).view(-1))
    ce = -torch.sum(m * log_p_a, 1)
    return (weights * ce).mean(), ce.detach()


class ReferenceDER:
    """A plain eager DER learner: online + target RefDERNet, Adam, one ``update(batch)`` per call.

    :param n_actions: A
    :param device: torch device
    :param lr: Adam learning rate (1e-4); ``adam_eps`` 1.5e-4; ``norm_clip`` 10 (DER / Kaixhin flags)
    """

    def __init__(self, n_actions: int, device: torch.device | str = "cpu", lr: float = 1e-4,
                 adam_eps: float = 1.5e-4, norm_clip: float = 10.0):
        self.online = RefDERNet(n_actions).to(device)
        self.online.train()
        self.target = RefDERNet(n_actions).to(device)
        self.target.load_state_dict(self.online.state_dict())
        self.target.train()
        for p in self.target.parameters():
            p.requires_grad = False
        self.norm_clip = norm_clip
        self.optimiser = torch.optim.Adam(self.online.parameters(), lr=lr, eps=adam_eps)

    def update(self, batch, resample_noise: bool = True) -> torch.Tensor:
        """One learning step on ``batch`` (a ReplaySample-like tuple); returns the per-sample loss (B,)."""
        if resample_noise:
            self.online.reset_noise()
            self.target.reset_noise()
        loss, ce = reference_loss(self.online, self.target, batch.observations, batch.actions, batch.returns,
                                  batch.discounts, batch.next_observations, batch.weights)
        self.optimiser.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.online.parameters(), self.norm_clip)
        self.optimiser.step()
        return ce
