"""Adaptive Aggregation (AdaAgg) layers of Zoo-Tuning (Shu et al., ICML 2021, Sec. 3.2-3.3).

An AdaAgg layer holds the parameters ``W_i`` of m source layers of one shape, stacked along a new leading
source dimension, and computes for an input ``x`` (the previous layer's feature ``h^{l-1}``)

    eq. 1   W~_i = T_i W_i                      channel alignment over output channels, T_i: (O, O), init I
    eq. 2   W^(x) = sum_i a_i(x) W~_i           a_i = gate_i(x), the gating network on the layer's input
            y = x (*) W^(x) + sum_i a_i(x) b~_i,  b~_i = T_i b_i

Choices made here (the paper leaves them open):

* **Bias.** The bias is aligned and aggregated with the same gates as the weight: ``b~_i = T_i b_i``.  Then
  the layer equals the plain layer ``(W^, b^)`` with ``b^ = sum_i a_i T_i b_i``: ``T_i`` is a map of output
  channels, and it maps every per-output-channel tensor of source i the same way.
* **Gate.** ``gate``: conv input -> global average pool -> 1x1 conv (C_in -> C_in//4+1, no bias) -> ReLU ->
  1x1 conv (-> m) -> sigmoid (the official code's gate).  A 1x1 conv on a pooled (B, C, 1, 1) map is a linear
  map, so the module is stored as ``nn.Sequential(Linear(no bias), ReLU, Linear)`` applied to the pooled
  feature; linear layers use the same net on their (B, I) input.  The sigmoid is applied in :meth:`gates`.
* **gate_norm.** ``"sum"`` (default) divides the sigmoid gates by their sum, so ``a(x)`` is a convex
  combination: a one-hot gate reproduces a source exactly, and ``W^`` stays at the sources' scale (the DER
  network has no BatchNorm to absorb the ~0.5 * m scale of raw sigmoids).  ``"none"``: the paper's raw
  sigmoids (for networks with BatchNorm, e.g. ResNets).
* **Alignment** ``align``: a parameter (m, O, O) initialised to identity, built for conv kernels > 1 (as the
  official code's layer; which layers of a network get it is the network's choice) and for all linear layers;
  ``align=False`` is the paper's "w/o T" ablation.
* **Noisy sources.** ``AdaAggNoisyLinear`` stacks ``weight_mu, weight_sigma, bias_mu, bias_sigma`` and owns ONE
  noise sample (``weight_epsilon (O, I)``, ``bias_epsilon (O,)``) shared by all sources: source i's effective
  weight is ``mu_i + sigma_i * eps`` (the weight its NoisyLinear would use) and alignment is applied to that
  effective weight, ``W~_i = T_i (mu_i + sigma_i * eps)``.  In evaluation (or ``noise_enabled=False``) the
  mean weights are used, so ``W^ = sum_i a_i T_i mu_i``.  (Aligning the effective weight lets the alignment be
  applied on the layer's outputs, see below, which is ~O/B times cheaper for wide linear layers.)

Modes (``mode``):

* ``"adaptive"``: per-sample gates ``a(x)`` of shape (B, m) (eq. 2).
* ``"lite"`` (eq. 4-5): in training the batch-mean gate ``a_bar = mean_b a(x_b)`` (m,) is used for the whole
  batch and the temporal ensemble ``gate_ema <- 0.9 gate_ema + 0.1 a_bar`` (buffer, ``ema_decay`` = lambda =
  0.9) is updated by every training-mode forward run with gradients enabled - the forwards that train, so
  acting or computing targets under ``torch.no_grad()`` leaves it alone (``update_ema = False`` freezes it
  altogether).  In evaluation ``gate_ema`` is used and the gate net is not run.
  ``gate_ema`` is initialised to the prior of an untrained gate (1/m for ``"sum"``, 0.5 for ``"none"``), so
  evaluating before training is sensible; the first update replaces it by that batch's mean
  (``ema_steps`` counts updates), so eq. 4 starts from data.
* ``"average"``: fixed ``a_i = 1/m`` (the paper's average-aggregation ablation); no gate net.

``export()`` collapses a lite / average layer into one plain ``nn.Conv2d`` / ``nn.Linear`` / ``NoisyLinear``
equal to the layer's evaluation forward; :func:`export_module` does that for every such layer in a network.

Forward computation - two exact paths, chosen per call by a FLOP cost model (``path = "auto"``) or forced
(``path = "mix"`` or ``"weights"``).  With B samples, m sources, O outputs, P = I*k*k weights per output
channel and L output positions per sample (H'W' for conv, 1 for linear), in multiply-adds:

* ``"mix"`` - convolution / matmul is linear in the weight, so ``y = sum_i a_i (x (*) W~_i) + a b~``.  ONE
  conv / matmul with the sources' weights concatenated along output channels (m*O outputs), then a weighted
  sum: ``B L m O P + B L m O``.  The alignment is applied either on the weights (``m O O P``) or, as
  ``T_i (x (*) W_i) = x (*) (T_i W_i)``, on the outputs (``B L m O O``): the cheaper of the two.
* ``"weights"`` - aggregate the weights: per sample (adaptive: ``B m O P``, then a grouped conv with
  groups=B or a bmm, ``f B L O P``, where ``f = batched_op_factor(L)`` is 1 for bmm and ``1 + 8/sqrt(L)`` for the
  grouped conv, which runs slower per multiply-add than a dense conv, the more so the smaller its output, and
  3x more so on a channels-last input, where the dense conv is fast) or
  once per batch for shared gates (lite / average: ``m O P + B L O P``, one dense op); plus weight-side
  alignment ``m O O P``.

The cheaper estimate wins (``last_path`` records the choice).  Both paths give the same result up to
floating-point rounding (tests check them against each other and against a per-sample loop).

``last_gate`` (m,), a non-persistent buffer, holds the batch-mean gate of the last forward (NaN before any
forward), for logging; it is written in place, so it stays valid under CUDA graphs (``track_stats = False``
skips it, e.g. under ``torch.func`` transforms).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from rlzoo_transfer.layers.noisy import FactorisedNoise, NoisyLinear

MODES = ("adaptive", "lite", "average")
GATE_NORMS = ("sum", "none")
PATHS = ("auto", "mix", "weights")


def is_channels_last(x: torch.Tensor) -> bool:
    """True for a 4-D channels-last tensor; False otherwise and under ``torch.vmap`` (which cannot query it)."""
    if x.dim() != 4:
        return False
    try:
        return x.is_contiguous(memory_format=torch.channels_last)
    except RuntimeError:
        return False


def _stack(tensors: Sequence[torch.Tensor]) -> nn.Parameter:
    return nn.Parameter(torch.stack([t.detach() for t in tensors]).clone())


def _check_same(sources: Sequence[nn.Module], kind: type, attrs: Sequence[str]) -> None:
    """ValueError unless every source is a ``kind`` with equal ``attrs`` and parameter shapes."""
    if len(sources) < 1:
        raise ValueError("an AdaAgg layer needs at least one source layer")
    first = sources[0]
    for j, s in enumerate(sources):
        if not isinstance(s, kind):
            raise ValueError(f"source {j} is {type(s).__name__}, expected {kind.__name__}")
        for a in attrs:
            if getattr(s, a) != getattr(first, a):
                raise ValueError(f"source {j} has {a}={getattr(s, a)!r} but source 0 has {getattr(first, a)!r}")
        p0, pj = dict(first.named_parameters()), dict(s.named_parameters())
        for name in list(p0) + [n for n in pj if n not in p0]:
            s0 = tuple(p0[name].shape) if name in p0 else None
            sj = tuple(pj[name].shape) if name in pj else None
            if s0 != sj:
                raise ValueError(f"source {j} parameter {name!r} has shape {sj} but source 0 has {s0}")


class AdaAggBase(nn.Module):
    """Shared machinery: gates, alignment, lite temporal ensemble, the two forward paths.

    Subclasses set ``m, out_channels, fan`` (P) and implement ``_source_weights``, ``_op``,
    ``_batched_op``, ``_out_positions`` and ``_make_plain``.
    """

    def _init_common(self, m: int, out: int, gate_in: int, alignable: bool, mode: str, align: bool,
                     gate_norm: str, like: torch.Tensor) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if gate_norm not in GATE_NORMS:
            raise ValueError(f"gate_norm must be one of {GATE_NORMS}, got {gate_norm!r}")
        self.m, self.mode, self.gate_norm = m, mode, gate_norm
        self.path = "auto"
        self.last_path: str | None = None
        self.track_stats = True
        self.update_ema = True
        self.ema_decay = 0.9
        fk = dict(device=like.device, dtype=like.dtype)
        self.register_buffer("last_gate", torch.full((m,), float("nan"), **fk), persistent=False)
        if mode == "average":
            self.gate = None
        else:
            hidden = gate_in // 4 + 1
            self.gate = nn.Sequential(nn.Linear(gate_in, hidden, bias=False, **fk), nn.ReLU(),
                                      nn.Linear(hidden, m, **fk))
        if align and alignable:
            self.align = nn.Parameter(torch.eye(out, **fk).expand(m, out, out).clone())
        else:
            self.register_parameter("align", None)
        if mode == "lite":
            prior = 1.0 / m if gate_norm == "sum" else 0.5
            self.register_buffer("gate_ema", torch.full((m,), prior, **fk))
            self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long, device=like.device))

    # ----------------------------------------------------------------------------------------- gates
    def gate_features(self, x: torch.Tensor) -> torch.Tensor:
        """The gate net's input: (B, C) - pooled for conv, identity for linear."""
        return x

    def gates(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample gates a(x) (B, m): sigmoid(gate(x)), divided by their sum when gate_norm == "sum"."""
        s = torch.sigmoid(self.gate(self.gate_features(x)))
        return s / s.sum(-1, keepdim=True) if self.gate_norm == "sum" else s

    def eval_gate(self) -> torch.Tensor:
        """The shared gate (m,) of a lite (``gate_ema``) or average (1/m) layer in evaluation."""
        if self.mode == "lite":
            return self.gate_ema
        if self.mode == "average":
            w = self._any_param()
            return torch.full((self.m,), 1.0 / self.m, device=w.device, dtype=w.dtype)
        raise RuntimeError("an adaptive AdaAgg layer has no input-independent gate")

    def _gate_for(self, x: torch.Tensor) -> torch.Tensor:
        """(B, m) per-sample gates (adaptive) or (m,) shared gates (lite, average)."""
        if self.mode == "adaptive":
            return self.gates(x)
        if self.mode == "lite" and self.training:
            a = self.gates(x).mean(0)
            if self.update_ema and torch.is_grad_enabled():
                with torch.no_grad():   # eq. 4; the first update takes the batch mean itself
                    d = a.detach().to(self.gate_ema.dtype)
                    ema = torch.where(self.ema_steps > 0, self.ema_decay * self.gate_ema + (1 - self.ema_decay) * d, d)
                    self.gate_ema.copy_(ema)
                    self.ema_steps.add_(1)
            return a
        return self.eval_gate().to(self._any_param().dtype)

    # ------------------------------------------------------------------------------------- alignment
    def _align_weight(self, w: torch.Tensor) -> torch.Tensor:
        """eq. 1 on the weights: (m, O, ...) -> (m, O, ...), W~_i = T_i W_i."""
        if self.align is None:
            return w
        return torch.bmm(self.align, w.reshape(self.m, self.out_channels, -1)).view_as(w)

    def _align_bias(self, b: torch.Tensor | None) -> torch.Tensor | None:
        if b is None or self.align is None:
            return b
        return torch.bmm(self.align, b.unsqueeze(-1)).squeeze(-1)

    # ----------------------------------------------------------------------------------- cost model
    def batched_op_factor(self, positions: int, channels_last: bool = False) -> float:
        """Cost per multiply-add of the per-sample op relative to a dense one (1 for bmm)."""
        return 1.0

    def path_costs(self, batch: int, positions: int, shared: bool, channels_last: bool = False) -> dict[str, int]:
        """Multiply-add estimates of the two paths (see the module docstring)."""
        m, o, p, bl = self.m, self.out_channels, self.fan, batch * positions
        mix = bl * m * o * p + bl * m * o
        slow = 1.0 if shared else self.batched_op_factor(positions, channels_last)
        weights = (m * o * p if shared else batch * m * o * p) + int(slow * bl * o * p)
        if self.align is not None:
            mix += min(m * o * o * p, bl * m * o * o)
            weights += m * o * o * p
        return {"mix": mix, "weights": weights}

    def choose_path(self, batch: int, positions: int, shared: bool, channels_last: bool = False) -> str:
        if self.path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {self.path!r}")
        if self.path != "auto":
            return self.path
        c = self.path_costs(batch, positions, shared, channels_last)
        return "mix" if c["mix"] <= c["weights"] else "weights"

    # -------------------------------------------------------------------------------------- forward
    def _forward2d(self, x: torch.Tensor) -> torch.Tensor:
        a = self._gate_for(x)
        shared = a.dim() == 1
        if self.track_stats:
            with torch.no_grad():
                self.last_gate.copy_(a if shared else a.mean(0))
        w, b = self._source_weights()
        batch, positions = x.shape[0], self._out_positions(x)
        path = self.choose_path(batch, positions, shared, is_channels_last(x))
        self.last_path = path
        b = self._align_bias(b)
        if path == "weights":
            w = self._align_weight(w)
            if shared:
                return self._op(x, torch.tensordot(a, w, 1), None if b is None else a @ b)
            wb = (a @ w.reshape(self.m, -1)).view(batch, *w.shape[1:])
            return self._batched_op(x, wb, None if b is None else a @ b)
        # "mix": one op over the m*O concatenated source outputs, then the gate-weighted (aligned) sum
        m, o = self.m, self.out_channels
        out_side = self.align is not None and batch * positions < self.fan
        if self.align is not None and not out_side:
            w = self._align_weight(w)
        z = self._op(x, w.reshape(m * o, *w.shape[2:]), None)          # (B, m*O, *spatial)
        spatial = z.shape[2:]
        ab = a.expand(batch, m)
        if is_channels_last(z):
            y = self._mix_channels_last(z, ab, out_side)
        else:
            y = self._mix_channels_first(z, ab, out_side, positions)
        if b is not None:
            y = y + (ab @ b).reshape(batch, o, *([1] * len(spatial)))
        return y

    def _mix_channels_first(self, z: torch.Tensor, ab: torch.Tensor, out_side: bool, positions: int) -> torch.Tensor:
        """Gate-weighted (aligned) sum of the sources' outputs z (B, m*O, *spatial), channels-first memory."""
        batch, spatial, m, o = z.shape[0], z.shape[2:], self.m, self.out_channels
        z = z.reshape(batch, m, o * positions)
        if out_side:   # y = sum_i T_i (a_i z_i) = T_cat @ [a_1 z_1; ...; a_m z_m],  T_cat: (O, m*O)
            t_cat = self.align.permute(1, 0, 2).reshape(o, m * o)
            u = (z * ab.unsqueeze(-1)).reshape(batch, m * o, positions).transpose(1, 2).reshape(-1, m * o)
            y = (u @ t_cat.t()).reshape(batch, positions, o).transpose(1, 2)       # one 2-D matmul
        else:
            y = torch.bmm(ab.unsqueeze(1), z)                            # (B, 1, O*L)
        return y.reshape(batch, o, *spatial)

    def _mix_channels_last(self, z: torch.Tensor, ab: torch.Tensor, out_side: bool) -> torch.Tensor:
        """The same sum for a channels-last conv output z (B, m*O, H', W'), without leaving that memory layout:
        z's memory is (B, H', W', m, O), so the per-source slices are free views and the result (B, O, H', W') is
        channels-last for the next conv.  (Viewing it as (B, m, O*L) would copy all of z: a strided transpose
        that cost more than the conv itself on DER's first layer.)"""
        batch, (h, w_), m, o = z.shape[0], z.shape[2:], self.m, self.out_channels
        zl = z.permute(0, 2, 3, 1).reshape(batch, h * w_, m, o)         # a view: (B, L, m, O)
        if out_side:   # y = T_cat @ [a_1 z_1; ...; a_m z_m] per position, T_cat: (O, m*O)
            t_cat = self.align.permute(1, 0, 2).reshape(o, m * o)
            u = (zl * ab[:, None, :, None]).reshape(batch * h * w_, m * o)
            y = u @ t_cat.t()                                           # (B*L, O)
        else:
            y = zl[:, :, 0] * ab[:, None, 0:1]
            for i in range(1, m):
                y = y + zl[:, :, i] * ab[:, None, i:i + 1]              # (B, L, O)
        return y.reshape(batch, h, w_, o).permute(0, 3, 1, 2)

    # --------------------------------------------------------------------------------------- export
    @torch.no_grad()
    def aggregated_weight(self, gate: torch.Tensor | None = None, noise: bool = False):
        """eq. 5: (W^, b^) = sum_i a_i (T_i W_i, T_i b_i) for a shared gate (m,) (default: ``eval_gate()``)."""
        a = self.eval_gate() if gate is None else gate
        w, b = self._source_weights(noise=noise)
        w, b = self._align_weight(w), self._align_bias(b)
        a = a.to(w.dtype)
        return torch.tensordot(a, w, 1), None if b is None else a @ b

    def export(self) -> nn.Module:
        """A plain layer equal to this layer's evaluation forward (lite / average modes only)."""
        if self.mode == "adaptive":
            raise RuntimeError("export() needs a lite or average AdaAgg layer; adaptive gates depend on the input")
        layer = self._make_plain()
        layer.train(self.training)
        return layer

    def _any_param(self) -> torch.Tensor:
        return next(self.parameters())

    def extra_repr(self) -> str:
        return (f"m={self.m}, mode={self.mode!r}, align={self.align is not None}, gate_norm={self.gate_norm!r}, "
                f"path={self.path!r}")


class AdaAggConv2d(AdaAggBase):
    """AdaAgg over m ``nn.Conv2d`` sources of one shape (groups=1, zero padding).

    Input (B, C_in, H, W) -> output (B, O, H', W').  Parameters: ``weight (m, O, C_in, k, k)``,
    ``bias (m, O)`` or None, ``align (m, O, O)`` (kernels > 1 only) or None, ``gate`` (absent in average mode).
    """

    def __init__(self, sources: Sequence[nn.Conv2d], mode: str = "adaptive", align: bool = True,
                 gate_norm: str = "sum"):
        super().__init__()
        sources = list(sources)
        _check_same(sources, nn.Conv2d, ("stride", "padding", "dilation", "groups", "padding_mode"))
        s0 = sources[0]
        if s0.groups != 1 or s0.padding_mode != "zeros":
            raise ValueError("AdaAggConv2d supports groups=1 and padding_mode='zeros' only")
        self.in_channels, self.out_channels = s0.in_channels, s0.out_channels
        self.kernel_size, self.stride, self.padding, self.dilation = s0.kernel_size, s0.stride, s0.padding, s0.dilation
        self.fan = s0.weight[0].numel()
        self.weight = _stack([s.weight for s in sources])
        self.bias = _stack([s.bias for s in sources]) if s0.bias is not None else None
        self._init_common(len(sources), self.out_channels, self.in_channels, math.prod(s0.kernel_size) > 1,
                          mode, align, gate_norm, self.weight)

    def gate_features(self, x):
        """Global average pool (B, C, H, W) -> (B, C); on a channels-last input as a mean over the (H*W) rows of
        its (B, H*W, C) memory, ~2x faster than a strided mean over dims (2, 3)."""
        if is_channels_last(x):
            return x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, x.shape[1]).mean(1)
        return x.mean((2, 3))

    def batched_op_factor(self, positions: int, channels_last: bool = False) -> float:
        """``1 + 8 / sqrt(L)``: measured fwd+bwd on CPU, a grouped conv with groups=B ran 1.1x (L = 784) to 4x
        (L = 9) slower per multiply-add than one dense conv - the fewer output positions, the worse.  On a
        channels-last input a dense conv is ~3x faster (oneDNN's native layout) but the grouped conv is not, so
        the factor is 3x larger (DER's first conv, B = 32, L = 256, 1 thread: mix 3.1 ms vs weights 4.8 ms
        fwd+bwd on channels-last input; 10.4 vs 4.0 ms on NCHW input)."""
        return (3.0 if channels_last else 1.0) * (1.0 + 8.0 / math.sqrt(max(positions, 1)))

    def _source_weights(self, noise: bool = True):
        return self.weight, self.bias

    def _op(self, x, w, b):
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation)

    def _batched_op(self, x, w, b):
        bsz = x.shape[0]
        y = F.conv2d(x.reshape(1, -1, *x.shape[2:]), w.reshape(-1, *w.shape[2:]),
                     None if b is None else b.reshape(-1), self.stride, self.padding, self.dilation, groups=bsz)
        return y.view(bsz, self.out_channels, *y.shape[2:])

    def _out_positions(self, x):
        n = 1
        for i, size in enumerate(x.shape[2:]):
            k, s, d = self.kernel_size[i], self.stride[i], self.dilation[i]
            if self.padding == "same":
                n *= size
                continue
            p = 0 if self.padding == "valid" else self.padding[i]
            n *= max((size + 2 * p - d * (k - 1) - 1) // s + 1, 0)
        return n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward2d(x)

    def _make_plain(self):
        w, b = self.aggregated_weight()
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, bias=b is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            conv.weight.copy_(w)
            if b is not None:
                conv.bias.copy_(b)
        return conv


class AdaAggLinear(AdaAggBase):
    """AdaAgg over m ``nn.Linear`` sources of one shape.

    Input (..., I) -> output (..., O); the gate is computed per row.  Parameters: ``weight (m, O, I)``,
    ``bias (m, O)`` or None, ``align (m, O, O)`` or None, ``gate`` (absent in average mode).
    """

    source_type: type = nn.Linear

    def __init__(self, sources: Sequence[nn.Linear], mode: str = "adaptive", align: bool = True,
                 gate_norm: str = "sum"):
        super().__init__()
        sources = list(sources)
        _check_same(sources, self.source_type, ())
        s0 = sources[0]
        self.in_features, self.out_features = s0.in_features, s0.out_features
        self.out_channels, self.fan = s0.out_features, s0.in_features
        self._stack_params(sources)
        self._init_common(len(sources), self.out_features, self.in_features, True, mode, align, gate_norm,
                          self._any_param())

    def _stack_params(self, sources):
        self.weight = _stack([s.weight for s in sources])
        self.bias = _stack([s.bias for s in sources]) if sources[0].bias is not None else None

    def _source_weights(self, noise: bool = True):
        return self.weight, self.bias

    def _op(self, x, w, b):
        return F.linear(x, w, b)

    def _batched_op(self, x, w, b):
        y = torch.bmm(w, x.unsqueeze(-1)).squeeze(-1)
        return y if b is None else y + b

    def _out_positions(self, x):
        return 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self._forward2d(x.reshape(-1, x.shape[-1]))
        return y.reshape(*lead, self.out_channels)

    def _make_plain(self):
        w, b = self.aggregated_weight()
        lin = nn.Linear(self.in_features, self.out_features, bias=b is not None, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            lin.weight.copy_(w)
            if b is not None:
                lin.bias.copy_(b)
        return lin

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, " + super().extra_repr()


class AdaAggNoisyLinear(FactorisedNoise, AdaAggLinear):
    """AdaAgg over m ``NoisyLinear`` sources sharing ONE factorised noise sample.

    Input (..., I) -> output (..., O).  Parameters ``weight_mu, weight_sigma (m, O, I)``, ``bias_mu,
    bias_sigma (m, O)``; buffers ``weight_epsilon (O, I)``, ``bias_epsilon (O,)``.  Like ``NoisyLinear``:
    ``noise_enabled`` flag, ``noisy`` = training and noise_enabled, ``reset_noise()``; mean weights when not
    noisy.  Source i's weight is ``mu_i + sigma_i * eps`` (module docstring for the alignment of it).
    """

    source_type: type = NoisyLinear

    def __init__(self, sources: Sequence[NoisyLinear], mode: str = "adaptive", align: bool = True,
                 gate_norm: str = "sum"):
        super().__init__(sources, mode, align, gate_norm)
        self.sigma0 = sources[0].sigma0
        self._register_noise(self.out_features, self.in_features, device=self.weight_mu.device,
                             dtype=self.weight_mu.dtype)
        self.reset_noise()  # one sample shared by all sources

    def _stack_params(self, sources):
        for name in ("weight_mu", "weight_sigma", "bias_mu", "bias_sigma"):
            setattr(self, name, _stack([getattr(s, name) for s in sources]))

    def _source_weights(self, noise: bool = True):
        """Effective source weights (m, O, I), biases (m, O): mu + sigma * eps when noisy, else mu."""
        return self.noisy_weight(noise)

    def _make_plain(self):
        """NoisyLinear with mu = sum_i a_i T_i mu_i, sigma = sum_i a_i T_i sigma_i and this layer's noise.

        Equal to the evaluation forward (mean weights).  In training mode it is equal too when the alignment
        is diagonal (e.g. identity, or align=False); otherwise its noise term differs from T_i (sigma_i * eps).
        """
        a = self.eval_gate().to(self.weight_mu.dtype)
        with torch.no_grad():
            mu = torch.tensordot(a, self._align_weight(self.weight_mu), 1)
            sigma = torch.tensordot(a, self._align_weight(self.weight_sigma), 1)
            bmu, bsigma = a @ self._align_bias(self.bias_mu), a @ self._align_bias(self.bias_sigma)
            lin = NoisyLinear(self.in_features, self.out_features, self.sigma0).to(mu.device, mu.dtype)
            for name, v in (("weight_mu", mu), ("weight_sigma", sigma), ("bias_mu", bmu), ("bias_sigma", bsigma),
                            ("weight_epsilon", self.weight_epsilon), ("bias_epsilon", self.bias_epsilon)):
                getattr(lin, name).copy_(v)
        lin.noise_enabled = self.noise_enabled
        return lin


def export_module(net: nn.Module) -> nn.Module:
    """Replace, in place, every lite / average AdaAgg submodule of ``net`` by its ``export()``; returns ``net``.

    Adaptive layers are left as they are.  ``net`` itself may be an AdaAgg layer (its export is returned).
    """
    if isinstance(net, AdaAggBase):
        return net.export() if net.mode != "adaptive" else net
    targets = [(n, mod) for n, mod in net.named_modules() if isinstance(mod, AdaAggBase) and mod.mode != "adaptive"]
    for name, mod in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent_name) if parent_name else net, child, mod.export())
    return net

