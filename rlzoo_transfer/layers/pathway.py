"""Hub-Pathway (Shu et al., NeurIPS 2022, Sec. 3): routed, aggregated ensemble of m models of any architecture.

    eq. 3   G(x) = Softmax(G_p(x) + eps * Softplus(G_n(x))),  eps ~ N(0, 1) in training only     (B, m)
    eq. 1   G_bar(x) = f_topk(G(x), k): the top-k entries of G(x) kept, the others set to 0          (B, m)
            input-level route: model i sees only the rows b with G_bar(x_b)_i > 0
    eq. 2   y = A([G_bar(x)_i * Theta_i(x)]_i)
    eq. 4   L_explore = -H(E_x G(x))
    eq. 5   L_exploit = sum_i E_x I(G_bar(x)_i > 0) l(Theta_i(x), y)

Design choices:

* **Generator.** ``generator`` is any module mapping x to (B, 2m) logits, read as ``[G_p(x) | G_n(x)]``.
  Without one, ``HubPathway`` builds ``nn.Sequential(gate_input, nn.Linear(in_features, 2m))`` - the
  caller passes a small feature module ``gate_input`` (default ``nn.Flatten()``) whose output has
  ``in_features`` features.  ``noisy_gate=False`` drops the noise term (G_n is then unused).
* **Top-k.** As eq. 1: the kept weights are NOT renormalised (``renormalize=True`` divides them by their sum).
  Ties are broken deterministically towards the lowest model index (stable descending sort).
* **Routing is real sparse compute**: the (sample, model) pairs are grouped by model with one stable sort and
  one host sync (the per-model counts); each model is called once on ``x[rows_i]`` (or on x
  itself when all rows go to it) and never on the rows not routed to it.
* **Aggregator.** For model outputs of shape (n, *S) the output is ``y = aggregator(sum_i G_bar_i * Theta_i(x))``
  of shape (B, *S): the weighted outputs are summed (a concatenation followed by a linear map initialised to
  a block-identity would equal this sum), then an optional learnable ``aggregator`` module (default identity)
  maps (B, *S) -> (B, *S').  With ``renormalize=True`` and probability outputs the sum is a mixture.
  ``log_space=True``: the models output log-probabilities and the mixture is formed in log space,
  ``y = log sum_i G_bar_i exp(Theta_i(x))`` (a logsumexp over each sample's k activated models), so a loss on
  ``y`` or on a model's own output keeps its gradient where a probability underflows - a peaked C51 source puts
  probabilities far below float32's smallest (log p ~ -125), which ``log(clamp(p))`` silences.
* **State.** ``forward`` returns the aggregated tensor and keeps a :class:`PathwayState` in ``last`` (G(x)
  with its graph, G_bar, per-model rows and outputs) for the losses; ``last_pathway`` (m,) is the detached
  batch-mean G(x) and ``last_load`` (m,) the fraction of the batch routed to each model, for logging.  The
  state is dropped on deepcopy / pickling (target networks copy cleanly).
* **Ablations.** ``random_pathway=True``: k models drawn uniformly at random per sample (in training and
  evaluation), with uniform weights G = 1/m (the generator is not used).  ``explore=False`` /
  ``exploit=False`` make the corresponding loss method return 0.  ``k`` in [1, m].
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from rlzoo_transfer.layers.adaagg import is_channels_last


def take_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``x[rows]`` (rows along dim 0), in x's memory format.

    A channels-last 4-D x is gathered as its (B, H, W, C) view with ``index_select`` - whole rows of contiguous
    memory - and viewed back: alone, ~5x faster on the CPU than advanced indexing ``x[rows]`` of DER's (32, 4, 84,
    84) channels-last frames (~0.1 vs ~0.5 ms for 16 rows); inside a hub update, where the copy competes for memory
    bandwidth, it saved 0.3-0.8 of ~45 ms on a loaded 2-core machine.  A plain ``index_select`` would return NCHW
    memory, the slow input for the models' channels-last convolutions.
    """
    if is_channels_last(x):
        return x.permute(0, 2, 3, 1).index_select(0, rows).permute(0, 3, 1, 2)
    return x.index_select(0, rows) if x.is_contiguous() else x[rows]


class PathwayState(NamedTuple):
    """What the last forward left for the losses.

    ``gate`` G(x) (B, m) with its graph; ``gate_topk`` G_bar(x) (B, m); ``rows[i]`` LongTensor (n_i,) of the
    batch rows routed to model i (ascending); ``outputs[i]`` Theta_i(x[rows[i]]) (n_i, *S), or None if n_i = 0.
    """
    gate: torch.Tensor
    gate_topk: torch.Tensor
    rows: list
    outputs: list


class _Scratch:
    """Holds per-forward tensors; forgets them on deepcopy and pickling."""

    def __init__(self):
        self.last: PathwayState | None = None

    def __deepcopy__(self, memo):
        return _Scratch()

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self.last = None


class HubPathway(nn.Module):
    """Hub-Pathway over ``models`` (any architectures; outputs of one shape (n, *S)).

    :param models: the m models Theta_i, each mapping (n, *X) -> (n, *S)
    :param gate_input: feature module for the built-in generator, (B, *X) -> (B, in_features); default Flatten
    :param in_features: feature size of ``gate_input``'s output (needed unless ``generator`` is given)
    :param generator: module (B, *X) -> (B, 2m) logits ``[G_p | G_n]``; replaces gate_input + linear
    :param k: models activated per sample (1 <= k <= m)
    :param aggregator: learnable module applied to the weighted sum (B, *S) -> (B, *S'); default identity
    :param renormalize: divide the top-k weights by their sum (the paper does not)
    :param noisy_gate: add eps * Softplus(G_n(x)) in training (eq. 3)
    :param random_pathway: ablation "w/ random path"
    :param explore: ``explore_loss`` returns 0 when False (ablation "w/o explore")
    :param exploit: ``exploit_loss`` returns 0 when False (ablation "w/o exploit")
    :param log_space: model outputs are log-probabilities; the output is the log of their G_bar-weighted mixture
    """

    def __init__(self, models: Sequence[nn.Module], gate_input: nn.Module | None = None,
                 in_features: int | None = None, *, generator: nn.Module | None = None, k: int = 1,
                 aggregator: nn.Module | None = None, renormalize: bool = False, noisy_gate: bool = True,
                 random_pathway: bool = False, explore: bool = True, exploit: bool = True,
                 log_space: bool = False):
        super().__init__()
        self.models = nn.ModuleList(models)
        m = self.m = len(self.models)
        if m < 1:
            raise ValueError("HubPathway needs at least one model")
        if not 1 <= k <= m:
            raise ValueError(f"k must be in [1, m={m}], got {k}")
        if generator is None:
            if in_features is None:
                raise ValueError("pass in_features (the size of gate_input's output) or a generator")
            generator = nn.Sequential(gate_input if gate_input is not None else nn.Flatten(),
                                      nn.Linear(in_features, 2 * m))
        self.generator = generator
        self.aggregator = aggregator if aggregator is not None else nn.Identity()
        self.k, self.renormalize, self.noisy_gate = k, renormalize, noisy_gate
        self.random_pathway, self.explore, self.exploit = random_pathway, explore, exploit
        self.log_space = log_space
        self._scratch = _Scratch()
        self.last_pathway: torch.Tensor | None = None
        self.last_load: torch.Tensor | None = None

    @property
    def last(self) -> PathwayState:
        if self._scratch.last is None:
            raise RuntimeError("no forward pass since construction (or since a copy)")
        return self._scratch.last

    def pathway(self, x: torch.Tensor) -> torch.Tensor:
        """G(x) (B, m), eq. 3 (noise only in training and with noisy_gate)."""
        logits = self.generator(x)
        if logits.shape[-1] != 2 * self.m:
            raise ValueError(f"generator must output (B, 2m={2 * self.m}) logits, got {tuple(logits.shape)}")
        gp, gn = logits.split(self.m, dim=-1)
        if self.training and self.noisy_gate:
            gp = gp + torch.randn_like(gp) * F.softplus(gn)
        return torch.softmax(gp, dim=-1)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(G (B, m), top-k indices (B, k)); lowest index first among equal weights."""
        batch = x.shape[0]
        if self.random_pathway:
            g = torch.full((batch, self.m), 1.0 / self.m, device=x.device, dtype=x.dtype if x.is_floating_point()
                           else torch.get_default_dtype())
            idx = torch.rand(batch, self.m, device=x.device).argsort(dim=1)[:, :self.k]
            return g, idx
        g = self.pathway(x)
        idx = torch.sort(g.detach(), dim=1, descending=True, stable=True).indices[:, :self.k]
        return g, idx

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, *X) -> aggregator(sum_i G_bar(x)_i Theta_i(x)) (B, *S'); see the module docstring."""
        batch, m, k = x.shape[0], self.m, self.k
        g, idx = self.route(x)
        weights = g.gather(1, idx)                                        # (B, k)
        if self.renormalize:
            weights = weights / weights.sum(1, keepdim=True)
        gbar = torch.zeros_like(g).scatter(1, idx, weights)               # eq. 1, (B, m)
        model_of = idx.reshape(-1)                                        # pairs (b, j) in sample-major order
        order = torch.sort(model_of, stable=True).indices                 # grouped by model, rows ascending
        rows_all = torch.div(order, k, rounding_mode="floor")
        w_all = weights.reshape(-1)[order]
        counts = torch.bincount(model_of, minlength=m).tolist()           # the one host sync
        rows, outputs, parts, start = [], [], [], 0
        for i, n in enumerate(counts):
            r = rows_all[start:start + n]
            if n == 0:
                out = None
            else:
                out = self.models[i](x if n == batch else take_rows(x, r))
                w = w_all[start:start + n].reshape(n, *([1] * (out.dim() - 1))).to(out.dtype)
                parts.append(w.clamp_min(torch.finfo(w.dtype).tiny).log() + out if self.log_space else w * out)
            rows.append(r)
            outputs.append(out)
            start += n
        stacked = torch.cat(parts)
        if self.log_space:   # back to sample-major pairs (B, k, *S), then log sum_j exp over each sample's k
            pairs = stacked.new_empty(stacked.shape).index_copy(0, order, stacked)
            y = torch.logsumexp(pairs.reshape(batch, k, *stacked.shape[1:]), dim=1)
        else:
            y = stacked.new_zeros(batch, *stacked.shape[1:]).index_add(0, rows_all, stacked)
        self._scratch.last = PathwayState(g, gbar, rows, outputs)
        self.last_pathway = g.detach().mean(0)
        self.last_load = torch.tensor(counts, dtype=g.dtype, device=g.device) / max(batch, 1)
        return self.aggregator(y)

    def explore_loss(self) -> torch.Tensor:
        """eq. 4: -H(mean_b G(x_b)) = sum_i p_i log p_i, p = batch-mean pathway weights; -log m when uniform."""
        g = self.last.gate
        if not self.explore:
            return g.new_zeros(())
        p = g.mean(0)
        return (p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))).sum()

    def exploit_loss(self, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                     reduction: str = "sum") -> torch.Tensor:
        """eq. 5 on the last forward: each activated model's loss on its own output for its routed rows.

        :param loss_fn: ``loss_fn(output_i (n_i, *S), rows_i (n_i,)) -> (n_i,)`` per-sample losses; index the
            targets (and any per-sample weights) with ``rows_i``
        :param reduction: ``"sum"`` - eq. 5, ``sum_i (1/B) sum_{b routed to i} l_ib`` (= k x the mean over
            the B*k activated pairs); ``"mean"`` - the mean over the activated pairs (eq. 5 / k)
        """
        state = self.last
        batch = state.gate.shape[0]
        total = state.gate.new_zeros(())
        if not self.exploit:
            return total
        for out, r in zip(state.outputs, state.rows):
            if out is not None:
                total = total + loss_fn(out, r).sum()
        if reduction == "sum":
            return total / batch
        if reduction == "mean":
            return total / (batch * self.k)
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")

    def extra_repr(self) -> str:
        return (f"m={self.m}, k={self.k}, renormalize={self.renormalize}, noisy_gate={self.noisy_gate}, "
                f"random_pathway={self.random_pathway}, explore={self.explore}, exploit={self.exploit}, "
                f"log_space={self.log_space}")

