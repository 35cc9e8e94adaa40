"""Transfer methods' networks: one builder per method family, named by the registry (rl/registry.py: name ->
builder, ``agents/<file>.yml``, what the method needs).

``Method.network(game, source, settings) -> (net_builder, net_kwargs)``, where
``net_builder(observation_space, n_actions, n_atoms=..., **net_kwargs)`` returns a network with DERNetwork's
contract (rl/policies.py).  Builders are module-level functions, so SB3 can save and re-create the policy.
Adding a method touches no algorithm code.

| method | network |
| --- | --- |
| scratch | DER, random init |
| finetune (--source G) | DER initialised from source G (all layers, output rows mapped by action meaning) |
| zoo | Zoo-Tuning: every conv / linear an AdaAgg layer over the sources (adaptive per-sample gates) |
| zoo-lite | lite Zoo-Tuning: batch-mean gates, their temporal ensemble at evaluation (eq. 4-5) |
| zoo-avg | average aggregation (fixed 1/m), the paper's ablation |
| zoo-noalign | Zoo-Tuning without channel alignment T, the paper's ablation |
| hub | Hub-Pathway over the whole source policies; explore / exploit losses via auxiliary_loss |
| hub-random, hub-noexplore, hub-noexploit | its ablations |
| kflow | Knowledge Flow (Liu, Peng & Schwing 2019): teachers' layer outputs flow into a fresh student |
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from rlzoo_transfer.games import action_meanings
from rlzoo_transfer.layers import AdaAggBase, HubPathway, export_module, gate_means, set_noise, zoo_convert
from rlzoo_transfer.rl.policies import DERNetwork
from rlzoo_transfer.rl.registry import source_names as _sources
from rlzoo_transfer.zoo import DEFAULT_ZOO, load_zoo


def _zoo_state_dicts(n_actions: int, n_atoms: int, hidden: int, sigma0: float, game: str, sources: list[str],
                     zoo_dir: str | None, fresh_output: bool) -> tuple[DERNetwork, list[dict]]:
    template = DERNetwork(n_actions, n_atoms, hidden, sigma0)
    actions = action_meanings(game)
    if len(actions) != n_actions:
        raise ValueError(f"{game} has {len(actions)} actions, the network {n_actions}")
    return template, load_zoo(sources, template, actions, n_atoms, zoo_dir or DEFAULT_ZOO, fresh_output)


def _source_networks(n_actions: int, n_atoms: int, hidden: int, sigma0: float, sds: list[dict]) -> list[DERNetwork]:
    """One DERNetwork per source state_dict."""
    nets = []
    for sd in sds:
        net = DERNetwork(n_actions, n_atoms, hidden, sigma0)
        net.load_state_dict(sd)
        nets.append(net)
    return nets


# --- finetune -----------------------------------------------------------------------------------------------------
def build_finetune(observation_space, n_actions: int, n_atoms: int = 51, hidden: int = 256, sigma0: float = 0.1,
                   game: str = "", source: str = "", zoo_dir: str | None = None,
                   fresh_output: bool = False) -> DERNetwork:
    """DER whose every layer starts from ``source`` (its output rows mapped to ``game``'s actions)."""
    net, (sd,) = _zoo_state_dicts(n_actions, n_atoms, hidden, sigma0, game, [source], zoo_dir, fresh_output)
    net.load_state_dict(sd)
    return net


# --- Zoo-Tuning ---------------------------------------------------------------------------------------------------
class ZooNetwork(nn.Module):
    """A DERNetwork whose conv / linear layers are AdaAgg layers (``layers.zoo_convert``); logs its gates."""

    def __init__(self, net: nn.Module, source_names: list[str]):
        super().__init__()
        self.net, self.source_names = net, list(source_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def export(self) -> nn.Module:
        """The network to act with (changes this one in place): lite / average AdaAgg layers collapsed
        (``layers.export_module``, Zoo-Tuning eq. 5).  When none is left adaptive (``zoo-lite``, ``zoo-avg``) that
        is the wrapped plain network itself, without this wrapper (whose only other job, logging gates, has
        nothing left to log)."""
        net = export_module(self.net)
        if any(isinstance(mod, AdaAggBase) for mod in net.modules()):
            self.net = net
            return self
        return net

    def statistics(self) -> dict[str, float]:
        """``gate/<layer>/<source>``: batch-mean gate of each AdaAgg layer's last forward (Zoo-Tuning Fig. 5)."""
        return {f"gate/{layer}/{self.source_names[i]}": v
                for layer, g in gate_means(self.net).items() for i, v in enumerate(g.float().cpu().tolist())}


OUTPUT_LAYERS = ("value_out", "advantage_out")


def build_zoo(observation_space, n_actions: int, n_atoms: int = 51, hidden: int = 256, sigma0: float = 0.1,
              game: str = "", sources: str | list[str] = "Seaquest,Riverraid", zoo_dir: str | None = None,
              mode: str = "adaptive", align: bool = True, align_output: bool = False, gate_norm: str = "sum",
              fresh_output: bool = False) -> ZooNetwork:
    """Zoo-Tuning DER: every conv / linear aggregates the sources' layer (Zoo-Tuning eq. 1-2).

    ``align_output=False`` builds the two C51 output layers without alignment T: their rows are
    (action, atom) pairs, not channels, so a channel permutation has no meaning there, and T on the
    (A*51)-wide advantage layer costs more than the layer itself.  ``gate_norm="sum"``: DER has no BatchNorm,
    so gates are normalised to a convex combination that keeps the sources' scale (layers/adaagg.py).
    """
    names = _sources(sources)
    template, sds = _zoo_state_dicts(n_actions, n_atoms, hidden, sigma0, game, names, zoo_dir, fresh_output)
    net = zoo_convert(template, sds, mode=mode, align=align, gate_norm=gate_norm,
                      no_align=() if align_output else OUTPUT_LAYERS)
    return ZooNetwork(net, names)


# --- Hub-Pathway --------------------------------------------------------------------------------------------------
class SourcePolicy(nn.Module):
    """A source policy as a hub model Theta_i: (n, 4, 84, 84) -> atom log-probabilities (n, A, K).

    A wrapper only so that parameter names stay ``hub.models.<i>.net.*``, as in checkpoints made before the hub
    mixed in log space (when this module returned ``exp`` of them)."""

    def __init__(self, net: DERNetwork):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


GENERATORS = ("torso", "pooled", "linear")


def pathway_generator(kind: str, m: int, in_channels: int = 4) -> nn.Module:
    """The pathway generator G: (B, 4, 84, 84) frames -> (B, 2m) logits ``[G_p | G_n]`` (Hub-Pathway eq. 3).

    The paper's RL generator is unspecified (its vision one is a 9-layer ResNet, ~1/5 of a ResNet-50 model).
    ``"torso"`` (default): a fresh DER torso, conv(4->32, 5x5/5) ReLU conv(32->64, 5x5/5) ReLU, + Linear(576, 2m):
    as costly as a policy's own torso (~1.3M multiply-adds per frame stack), so with k = 1 every forward runs two
    torsos.  ``"pooled"``: BlockMean(4) to 21x21, conv(4->16, 3x3/2) ReLU (10x10), Linear(1600, 2m): ~60k
    multiply-adds, ~1/20 of the torso's (~1/4 of its time at batch 32, bench) - a cheaper router on a coarser frame.
    ``"linear"``: BlockMean(8) to 10x10 (the last 4 rows and columns dropped), Linear(400, 2m): ~800 multiply-adds,
    a linear router on a very coarse frame, for when the generator's own cost matters most (hub with k = 1, bench).
    """
    if kind == "torso":
        net = nn.Sequential(nn.Conv2d(in_channels, 32, 5, stride=5), nn.ReLU(), nn.Conv2d(32, 64, 5, stride=5),
                            nn.ReLU(), nn.Flatten(), nn.Linear(DERNetwork.feature_dim, 2 * m))
    elif kind == "pooled":
        net = nn.Sequential(BlockMean(4), nn.Conv2d(in_channels, 16, 3, stride=2), nn.ReLU(), nn.Flatten(),
                            nn.Linear(16 * 10 * 10, 2 * m))
    elif kind == "linear":
        net = nn.Sequential(BlockMean(8), nn.Flatten(), nn.Linear(in_channels * 10 * 10, 2 * m))
    else:
        raise ValueError(f"unknown pathway generator {kind!r}: choose one of {', '.join(GENERATORS)}")
    for mod in net:   # the frames arrive channels-last (DERPolicy.scale); an NCHW conv on them is the slow path
        if isinstance(mod, nn.Conv2d):
            mod.to(memory_format=torch.channels_last)
    return net


class BlockMean(nn.Module):
    """Average pooling over non-overlapping s x s blocks, (B, C, H, W) -> (B, C, H // s, W // s): equal to
    ``nn.AvgPool2d(s)``, computed as a depthwise convolution with the fixed kernel 1 / s^2, which oneDNN runs ~3x
    faster than the CPU pooling kernel on DER's channels-last batches (bench: ~0.25 vs ~0.8 ms at batch 32)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, s = x.shape[1], self.size
        return F.conv2d(x, x.new_full((c, 1, s, s), 1.0 / (s * s)), stride=s, groups=c)


class HubNetwork(nn.Module):
    """Hub-Pathway DER: routed, aggregated ensemble of the source policies (Hub-Pathway eq. 1-5).

    Pathway generator (eq. 3, ``[G_p | G_n]`` logits (B, 2m)), see :func:`pathway_generator`.
    Aggregation: the top-k weights are renormalised so the output is a proper mixture of the activated models'
    atom distributions, p(z | s, a) = sum_i G_bar_i(s) p_i(z | s, a); DER's C51 cross-entropy on it is L_task.
    ``auxiliary_loss``: explore_weight * L_explore (eq. 4, trains G) + L_exploit (eq. 5: each activated model's
    own C51 loss on the rows routed to it, PER-weighted, trains Theta_i).
    Both losses work on log-probabilities all the way (HubPathway ``log_space``: the mixture is a logsumexp of
    log G_bar_i + log p_i).  Before that (every hub run published up to 2026-12-06) the mixture and each model's
    output were probabilities, logged as ``log(clamp(p, 1e-8))``: an atom below 1e-8 had no gradient, which on Gopher
    silenced the exploit loss of the Seaquest source (98 % of its (action, atom) probabilities below 1e-8 on
    Gopher frames, log p down to -125; Alien 0 %, Jamesbond <= 0.4 %).
    """

    def __init__(self, models: list[DERNetwork], source_names: list[str], k: int = 2, explore_weight: float = 0.1,
                 random_pathway: bool = False, explore: bool = True, exploit: bool = True,
                 generator: str = "torso"):
        super().__init__()
        m = len(models)
        generator = pathway_generator(generator, m)
        self.hub = HubPathway([SourcePolicy(net) for net in models], generator=generator, k=k,
                              renormalize=True, random_pathway=random_pathway, explore=explore, exploit=exploit,
                              log_space=True)
        self.source_names, self.explore_weight = list(source_names), explore_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hub(x)

    def auxiliary_loss(self, ctx) -> dict[str, torch.Tensor]:
        out = {}
        if self.hub.explore and not self.hub.random_pathway:
            out["explore_loss"] = self.explore_weight * self.hub.explore_loss()
        if self.hub.exploit:
            def loss_fn(log_probs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
                return ctx.weights[rows] * ctx.per_sample_loss(log_probs, rows)

            out["exploit_loss"] = self.hub.exploit_loss(loss_fn)
        return out

    def statistics(self) -> dict[str, float]:
        """``pathway/<source>``: batch-mean pathway weight G(x) of the last forward (Hub-Pathway Fig. 3a)."""
        if self.hub.last_pathway is None:
            return {}
        return {f"pathway/{self.source_names[i]}": v for i, v in enumerate(self.hub.last_pathway.cpu().tolist())}


def build_hub(observation_space, n_actions: int, n_atoms: int = 51, hidden: int = 256, sigma0: float = 0.1,
              game: str = "", sources: str | list[str] = "Seaquest,Riverraid", zoo_dir: str | None = None,
              k: int = 2, explore_weight: float = 0.1, random_pathway: bool = False, explore: bool = True,
              exploit: bool = True, fresh_output: bool = False, generator: str = "torso") -> HubNetwork:
    names = _sources(sources)
    _, sds = _zoo_state_dicts(n_actions, n_atoms, hidden, sigma0, game, names, zoo_dir, fresh_output)
    models = _source_networks(n_actions, n_atoms, hidden, sigma0, sds)
    return HubNetwork(models, names, k, explore_weight, random_pathway, explore, exploit, generator)


# --- Knowledge Flow -----------------------------------------------------------------------------------------------
FLOW_POINTS = ("conv1", "conv2", "value_hidden", "advantage_hidden")


def _identity_transform(layer: nn.Module) -> nn.Module:
    """A trainable transform Q of a teacher's output at a flow point, initialised to identity."""
    if isinstance(layer, nn.Conv2d):
        t = nn.Conv2d(layer.out_channels, layer.out_channels, 1, bias=False)
        nn.init.dirac_(t.weight)
    else:
        t = nn.Linear(layer.out_features, layer.out_features, bias=False)
        nn.init.eye_(t.weight)
    return t


class KnowledgeFlowNetwork(nn.Module):
    """Knowledge Flow (Liu, Peng & Schwing, ICLR 2019) for DER.

    At each flow point l (after conv1, conv2 and both noisy hidden layers, post-ReLU) the student's activation is
        h^l <- w_0^l h^l + sum_i w_i^l Q_i^l(t_i^l),   (w_0^l, ..., w_m^l) = softmax(theta^l)          (KF eq. 1)
    with t_i^l teacher i's own activation (teachers frozen, noise off) and Q_i^l trainable (1x1 conv / linear,
    identity at init); theta^l starts at 0 (equal weights).  The dependency loss
    lambda(t) * sum_l sum_{i>=1} w_i^l, lambda(t) = dependency_weight * progress, drives the teacher weights to 0
    over training, so the student becomes independent.  At evaluation (eval mode) only the student computes.
    Not implemented: the paper's second regulariser, a Kullback-Leibler term on the student's output besides the
    dependency loss (found missing on 2026-12-06 in a review; the paper is not among this project's references,
    so its exact form is to be taken from the paper before it is added - every kflow run so far lacks it).
    """

    def __init__(self, student: DERNetwork, teachers: list[DERNetwork], source_names: list[str],
                 dependency_weight: float = 1.0):
        super().__init__()
        self.student, self.teachers = student, nn.ModuleList(teachers)
        for t in self.teachers:
            t.requires_grad_(False)
            set_noise(t, False)
        self.transforms = nn.ModuleDict({p: nn.ModuleList([_identity_transform(getattr(student, p))
                                                           for _ in teachers]) for p in FLOW_POINTS})
        self.theta = nn.Parameter(torch.zeros(len(FLOW_POINTS), len(teachers) + 1))
        self.source_names, self.dependency_weight = list(source_names), dependency_weight

    @staticmethod
    def _activations(net: DERNetwork, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h1 = torch.relu(net.conv1(x))
        h2 = torch.relu(net.conv2(h1))
        f = h2.flatten(1)
        return {"conv1": h1, "conv2": h2, "value_hidden": torch.relu(net.value_hidden(f)),
                "advantage_hidden": torch.relu(net.advantage_hidden(f))}

    def flow_weights(self) -> torch.Tensor:
        """(points, 1 + m): student weight first."""
        return torch.softmax(self.theta, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.student
        if not self.training:
            return s(x)
        with torch.no_grad():
            teach = [self._activations(t, x) for t in self.teachers]
        w = self.flow_weights()

        def flow(point: str, h: torch.Tensor) -> torch.Tensor:
            j = FLOW_POINTS.index(point)
            out = w[j, 0] * h
            for i, q in enumerate(self.transforms[point]):
                out = out + w[j, i + 1] * q(teach[i][point])
            return out

        h1 = flow("conv1", torch.relu(s.conv1(x)))
        f = flow("conv2", torch.relu(s.conv2(h1))).flatten(1)
        vh = flow("value_hidden", torch.relu(s.value_hidden(f)))
        ah = flow("advantage_hidden", torch.relu(s.advantage_hidden(f)))
        v = s.value_out(vh).view(-1, 1, s.n_atoms)
        a = s.advantage_out(ah).view(-1, s.n_actions, s.n_atoms)
        return torch.log_softmax(v + a - a.mean(1, keepdim=True), dim=-1)

    def export(self) -> nn.Module:
        """The network to act with: the student alone (its evaluation forward is this network's)."""
        return self.student

    def auxiliary_loss(self, ctx) -> dict[str, torch.Tensor]:
        lam = self.dependency_weight * ctx.progress
        return {"dependency_loss": lam * self.flow_weights()[:, 1:].sum()}

    def statistics(self) -> dict[str, float]:
        w = self.flow_weights().detach().cpu()
        return {f"flow/{p}/{name}": float(w[j, i]) for j, p in enumerate(FLOW_POINTS)
                for i, name in enumerate(["student", *self.source_names])}


def build_kflow(observation_space, n_actions: int, n_atoms: int = 51, hidden: int = 256, sigma0: float = 0.1,
                game: str = "", sources: str | list[str] = "Seaquest,Riverraid", zoo_dir: str | None = None,
                dependency_weight: float = 1.0, fresh_output: bool = False) -> KnowledgeFlowNetwork:
    names = _sources(sources)
    _, sds = _zoo_state_dicts(n_actions, n_atoms, hidden, sigma0, game, names, zoo_dir, fresh_output)
    teachers = _source_networks(n_actions, n_atoms, hidden, sigma0, sds)
    return KnowledgeFlowNetwork(DERNetwork(n_actions, n_atoms, hidden, sigma0), teachers, names, dependency_weight)
