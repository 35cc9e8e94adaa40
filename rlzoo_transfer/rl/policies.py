"""The DER network and ``DERPolicy``, a custom SB3 policy around it.

DER network (van Hasselt et al. 2019; Kaixhin/Rainbow with its data-efficient flags; REFERENCE.md):

    torso: Conv(4->32, 5x5, stride 5) ReLU, Conv(32->64, 5x5, stride 5) ReLU, flatten -> 576
    head (dueling, noisy, C51):
        value:     NoisyLinear(576, 256) ReLU NoisyLinear(256, K)          -> v (B, 1, K)
        advantage: NoisyLinear(576, 256) ReLU NoisyLinear(256, A * K)      -> a (B, A, K)
        logits = v + a - mean_A(a);  log p(z_k | s, a) = log_softmax_k(logits)

Every transfer method returns a network with the same contract: ``forward(x) -> log_probs (B, A, K)`` for
``x`` float in [0, 1] of shape (B, 4, 84, 84), and optionally ``auxiliary_loss(ctx) -> {name: scalar}`` (added to
the DER loss, see ``AuxContext``) and ``statistics() -> {name: float}`` (logged).
"""
from __future__ import annotations

import copy
from typing import Any, Callable, NamedTuple

import torch
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from rlzoo_transfer.layers.noisy import NoisyLinear, reset_noise


class DERNetwork(nn.Module):
    """Data-Efficient Rainbow's torso and dueling noisy C51 head.

    :param n_actions: A
    :param n_atoms: K (51)
    :param hidden: width of the noisy hidden layers (256)
    :param sigma0: NoisyLinear initial noise scale (0.1)
    :param in_channels: stacked frames (4)
    Module paths (``conv1``, ``conv2``, ``value_hidden``, ``value_out``, ``advantage_hidden``, ``advantage_out``)
    are what zoo transfer matches layers by.
    """

    feature_dim = 576

    def __init__(self, n_actions: int, n_atoms: int = 51, hidden: int = 256, sigma0: float = 0.1,
                 in_channels: int = 4):
        super().__init__()
        self.n_actions, self.n_atoms = n_actions, n_atoms
        self.conv1 = nn.Conv2d(in_channels, 32, 5, stride=5)
        self.conv2 = nn.Conv2d(32, 64, 5, stride=5)
        self.value_hidden = NoisyLinear(self.feature_dim, hidden, sigma0)
        self.value_out = NoisyLinear(hidden, n_atoms, sigma0)
        self.advantage_hidden = NoisyLinear(self.feature_dim, hidden, sigma0)
        self.advantage_out = NoisyLinear(hidden, n_actions * n_atoms, sigma0)
        # channels-last convolutions: oneDNN on CPU skips a layout reorder per call (bench: the torso's forward +
        # backward ~0.75x); values, shapes and state_dict keys are unchanged.  Off under torch.vmap (rl/lockstep.py).
        self.channels_last = True
        self.conv1.to(memory_format=torch.channels_last)
        self.conv2.to(memory_format=torch.channels_last)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 4, 84, 84) -> (B, 576) (flattened in (C, H, W) order whatever the memory layout)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return torch.relu(self.conv2(torch.relu(self.conv1(x)))).flatten(1)

    def head(self, f: torch.Tensor) -> torch.Tensor:
        """(B, 576) -> dueling logits (B, A, K)."""
        v = self.value_out(torch.relu(self.value_hidden(f))).view(-1, 1, self.n_atoms)
        a = self.advantage_out(torch.relu(self.advantage_hidden(f))).view(-1, self.n_actions, self.n_atoms)
        return v + a - a.mean(1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 4, 84, 84) in [0, 1] -> log-probabilities over atoms (B, A, K)."""
        return torch.log_softmax(self.head(self.features(x)), dim=-1)


class AuxContext(NamedTuple):
    """What a network's ``auxiliary_loss`` may use, from the current DER update.

    obs: (B, 4, 84, 84) float input; actions: (B,); target: (B, K) projected Bellman target;
    weights: (B,) importance weights; progress: fraction of training done in [0, 1];
    per_sample_loss(log_probs (B', A, K), rows (B',)) -> (B',) the C51 cross-entropy of rows ``rows`` of the batch.
    """

    obs: torch.Tensor
    actions: torch.Tensor
    target: torch.Tensor
    weights: torch.Tensor
    progress: float
    per_sample_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_der_network(observation_space: spaces.Box, n_actions: int, **kwargs: Any) -> DERNetwork:
    """The plain DER network (``scratch``)."""
    return DERNetwork(n_actions, in_channels=observation_space.shape[0], **kwargs)


class DERPolicy(BasePolicy):
    """SB3 policy holding the online and target C51 networks.

    :param observation_space: Box (4, 84, 84) uint8
    :param action_space: Discrete(A)
    :param lr_schedule: learning-rate schedule (SB3)
    :param net_builder: ``f(observation_space, n_actions, **net_kwargs) -> network`` (see module docstring)
    :param net_kwargs: its keyword arguments (e.g. n_atoms, hidden, sigma0, zoo paths)
    :param n_atoms: K
    :param v_min: lowest atom
    :param v_max: highest atom
    """

    def __init__(self, observation_space: spaces.Box, action_space: spaces.Discrete, lr_schedule: Schedule,
                 net_builder: Callable[..., nn.Module] = build_der_network, net_kwargs: dict | None = None,
                 n_atoms: int = 51, v_min: float = -10.0, v_max: float = 10.0,
                 optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
                 optimizer_kwargs: dict[str, Any] | None = None, normalize_images: bool = False):
        super().__init__(observation_space, action_space, optimizer_class=optimizer_class,
                         optimizer_kwargs=optimizer_kwargs or {"eps": 1.5e-4}, normalize_images=False)
        self.net_builder, self.net_kwargs = net_builder, dict(net_kwargs or {})
        self.n_atoms, self.v_min, self.v_max = n_atoms, v_min, v_max
        self.register_buffer("support", torch.linspace(v_min, v_max, n_atoms))
        self.q_net = net_builder(observation_space, int(action_space.n), n_atoms=n_atoms, **self.net_kwargs)
        self.q_net_target = copy.deepcopy(self.q_net)
        self.q_net_target.requires_grad_(False)
        self.q_net_target.train(False)
        self.optimizer = self.optimizer_class(self.q_net.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(net_builder=self.net_builder, net_kwargs=self.net_kwargs, n_atoms=self.n_atoms,
                    v_min=self.v_min, v_max=self.v_max, optimizer_class=self.optimizer_class,
                    optimizer_kwargs=self.optimizer_kwargs)
        return data

    @staticmethod
    def scale(obs: torch.Tensor) -> torch.Tensor:
        """uint8 frames -> float in [0, 1]; a (B, 4, 84, 84) batch comes out channels-last.

        Channels-last is the layout DER's convolutions run in; laid out once here (on the uint8 frames, a quarter
        of the bytes; a no-op for the replay's batches, which come channels-last), no network re-lays its input
        out per forward (three float copies per update before; the update got ~10% faster).  Values and shape are
        unchanged."""
        if obs.dim() == 4:
            obs = obs.contiguous(memory_format=torch.channels_last)
        return obs.float().div_(255.0)

    def q_values(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, 4, 84, 84) uint8 -> expected returns (B, A) = sum_k z_k p_k."""
        return (self.q_net(self.scale(obs)).exp() * self.support).sum(-1)

    def forward(self, obs: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        return self._predict(obs, deterministic)

    def _predict(self, observation: torch.Tensor, deterministic: bool = True) -> torch.Tensor:
        """Greedy action w.r.t. the (noisy in training mode, mean in eval mode) Q-values: (B,)."""
        return self.q_values(observation).argmax(dim=1)

    def reset_noise(self) -> None:
        reset_noise(self.q_net)

    def reset_target_noise(self) -> None:
        reset_noise(self.q_net_target)

    def sync_target(self) -> None:
        self.q_net_target.load_state_dict(self.q_net.state_dict())

    def export(self) -> "DERPolicy":
        """A copy for evaluation / deployment holding only what acting needs, equal to the evaluation forward.

        A network that defines ``export() -> nn.Module`` gives its own acting network (``zoo-lite`` / ``zoo-avg``:
        their AdaAgg layers collapsed by ``layers.export_module``, Zoo-Tuning eq. 5, into a plain DERNetwork;
        ``kflow``: the student); any other network has its lite / average AdaAgg layers collapsed in place.  The new
        convolutions take the channels-last layout of the DERNetwork they sit in (a plain NCHW conv on a
        channels-last input is oneDNN's slow path).  The copy's optimiser is not rebuilt: it is for acting, not
        training."""
        from rlzoo_transfer.layers.adaagg import export_module

        out = copy.deepcopy(self)
        for name in ("q_net", "q_net_target"):
            net = getattr(out, name)
            net = net.export() if callable(getattr(net, "export", None)) else export_module(net)
            for mod in net.modules():
                if getattr(mod, "channels_last", False):
                    for conv in mod.modules():
                        if isinstance(conv, nn.Conv2d):
                            conv.to(memory_format=torch.channels_last)
            setattr(out, name, net)
        return out

    def auxiliary_loss(self, ctx: AuxContext) -> dict[str, torch.Tensor]:
        """Extra losses a transfer method adds to the DER loss (Hub-Pathway, Knowledge Flow); {} for DER."""
        fn = getattr(self.q_net, "auxiliary_loss", None)
        return fn(ctx) if fn is not None else {}

    def statistics(self) -> dict[str, float]:
        """Scalars to log (AdaAgg gates, pathway weights); {} for DER."""
        fn = getattr(self.q_net, "statistics", None)
        return fn() if fn is not None else {}
