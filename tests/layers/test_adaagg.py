"""AdaAgg layers: exactness of both forward paths, gates, alignment, lite / average modes, export."""
import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rlzoo_transfer.layers import (AdaAggConv2d, AdaAggLinear, AdaAggNoisyLinear, NoisyLinear, export_module,
                                   gate_means, reset_noise, set_noise)

DT = torch.float64
M = 3

# name -> (make one source, input shape); the small/narrow cases make the "mix" path align on the outputs,
# the big/wide ones on the weights
CASES = {
    "conv_big": (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), (3, 3, 7, 7)),
    "conv_small": (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), (2, 3, 3, 3)),
    "conv_k1": (lambda: nn.Conv2d(3, 4, 1, bias=False), (2, 3, 4, 4)),
    "linear_wide": (lambda: nn.Linear(6, 4), (3, 6)),
    "linear_narrow": (lambda: nn.Linear(2, 4), (5, 2)),
    "noisy": (lambda: NoisyLinear(6, 4), (3, 6)),
}
CLS = {nn.Conv2d: AdaAggConv2d, nn.Linear: AdaAggLinear, NoisyLinear: AdaAggNoisyLinear}


def make(case, m=M, perturb=True, **kw):
    torch.manual_seed(0)
    mk, shape = CASES[case]
    sources = [mk().to(DT) for _ in range(m)]
    layer = CLS[type(sources[0])](sources, **kw)
    if perturb and layer.align is not None:
        with torch.no_grad():
            layer.align.add_(0.2 * torch.randn_like(layer.align))
    return layer, sources, torch.randn(*shape, dtype=DT)


def source_weights(layer):
    if isinstance(layer, AdaAggNoisyLinear):
        if layer.noisy:
            return (layer.weight_mu + layer.weight_sigma * layer.weight_epsilon,
                    layer.bias_mu + layer.bias_sigma * layer.bias_epsilon)
        return layer.weight_mu, layer.bias_mu
    return layer.weight, layer.bias


def naive(layer, x, a):
    """Per-sample loop: W_b = sum_i a_bi T_i W_i, y_b = op(x_b, W_b) + sum_i a_bi T_i b_i.  a: (B, m)."""
    w, b = source_weights(layer)
    ys = []
    for s in range(x.shape[0]):
        ws, bs = 0, 0
        for i in range(layer.m):
            t = layer.align[i] if layer.align is not None else torch.eye(w.shape[1], dtype=DT)
            ws = ws + a[s, i] * torch.einsum("po,o...->p...", t, w[i])
            bs = bs + (a[s, i] * t @ b[i] if b is not None else 0)
        bias = bs if b is not None else None
        if isinstance(layer, AdaAggConv2d):
            ys.append(F.conv2d(x[s:s + 1], ws, bias, layer.stride, layer.padding, layer.dilation))
        else:
            ys.append(F.linear(x[s:s + 1], ws, bias))
    return torch.cat(ys)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("path", ["mix", "weights"])
@pytest.mark.parametrize("align,gate_norm", [(True, "sum"), (False, "none")])
def test_adaptive_matches_naive_loop(case, path, align, gate_norm):
    layer, _, x = make(case, align=align, gate_norm=gate_norm)
    layer.path = path
    y = layer(x)
    assert layer.last_path == path
    torch.testing.assert_close(y, naive(layer, x, layer.gates(x)), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", ["conv_big", "conv_small", "conv_k1"])
@pytest.mark.parametrize("mode", ["adaptive", "lite"])
@pytest.mark.parametrize("align", [True, False])
def test_channels_last_input_matches_naive_loop_and_stays_channels_last(case, mode, align):
    """DERNetwork feeds channels-last frames: the mix path's sum then works on the (B, H', W', m, O) memory (both
    alignment sides: conv_big aligns the weights, conv_small the outputs), the gate pools that memory, and the
    output stays channels-last; values and gradients equal the NCHW computation."""
    layer, _, x = make(case, mode=mode, align=align)
    layer.update_ema = False
    layer.path = "mix"
    xl = x.contiguous(memory_format=torch.channels_last).requires_grad_(True)
    x = x.clone().requires_grad_(True)
    a = layer.gates(x) if mode == "adaptive" else layer.gates(x).mean(0).expand(x.shape[0], M)
    torch.testing.assert_close(layer.gate_features(xl), x.mean((2, 3)), rtol=1e-12, atol=1e-12)
    y, y_ref = layer(xl), layer(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, naive(layer, x, a), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(y_ref)
    grads = torch.autograd.grad((y * g).sum(), [xl, *layer.parameters()])
    grads_ref = torch.autograd.grad((y_ref * g).sum(), [x, *layer.parameters()])
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("case", ["conv_big", "conv_small", "linear_wide", "noisy"])
@pytest.mark.parametrize("mode", ["lite", "average"])
@pytest.mark.parametrize("training", [True, False])
def test_shared_gate_paths_match_naive_loop(case, mode, training):
    layer, _, x = make(case, mode=mode)
    layer.train(training)
    layer.update_ema = False
    if mode == "lite" and training:
        a = layer.gates(x).mean(0)
    else:
        a = layer.eval_gate()
    ref = naive(layer, x, a.expand(x.shape[0], M))
    for path in ("mix", "weights", "auto"):
        layer.path = path
        torch.testing.assert_close(layer(x), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case", ["conv_big", "conv_k1", "linear_wide", "noisy"])
@pytest.mark.parametrize("training", [True, False])
def test_one_hot_gate_reproduces_source(case, training):
    layer, sources, x = make(case, perturb=False)
    layer.train(training)
    with torch.no_grad():   # gate logits (+40, -40, -40): sigmoid gates 1 and ~4e-18, normalised to one-hot
        layer.gate[-1].weight.zero_()
        layer.gate[-1].bias.copy_(torch.tensor([-40.0, 40.0, -40.0]))
    src = sources[1].train(training)
    if isinstance(src, NoisyLinear):
        src.weight_epsilon.copy_(layer.weight_epsilon)
        src.bias_epsilon.copy_(layer.bias_epsilon)
    for path in ("mix", "weights"):
        layer.path = path
        torch.testing.assert_close(layer(x), src(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", ["conv_big", "linear_wide", "noisy"])
def test_average_mode_is_mean_of_sources(case):
    layer, sources, x = make(case, mode="average", perturb=False)
    assert layer.gate is None
    plain = copy.deepcopy(sources[0]).eval()
    layer.eval()
    with torch.no_grad():
        for name, p in plain.named_parameters():
            p.copy_(torch.stack([dict(s.named_parameters())[name] for s in sources]).mean(0))
    torch.testing.assert_close(layer(x), plain(x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", ["conv_big", "conv_k1", "linear_wide", "noisy"])
@pytest.mark.parametrize("mode", ["lite", "average"])
def test_export_equals_eval_forward(case, mode):
    layer, _, x = make(case, mode=mode)
    for _ in range(3):
        layer(torch.randn_like(x))        # training forwards move the lite ensemble
    layer.eval()
    plain = layer.export()
    assert type(plain) in (nn.Conv2d, nn.Linear, NoisyLinear) and not plain.training
    torch.testing.assert_close(plain(x), layer(x), rtol=1e-12, atol=1e-12)
    net = export_module(nn.Sequential(layer, nn.Identity()))
    assert net[0].__class__ is plain.__class__


def test_export_noisy_matches_in_training_with_identity_alignment():
    layer, _, x = make("noisy", mode="lite", perturb=False)
    layer.gate_ema.copy_(torch.tensor([0.2, 0.5, 0.3], dtype=DT))
    exported = layer.export()                 # training mode, this layer's noise sample
    assert exported.training and exported.noisy
    ref = naive(layer, x, layer.gate_ema.expand(x.shape[0], M))   # noisy source weights, ema gate
    torch.testing.assert_close(exported(x), ref, rtol=1e-10, atol=1e-10)


def test_export_adaptive_raises():
    layer, _, _ = make("linear_wide")
    with pytest.raises(RuntimeError, match="lite or average"):
        layer.export()


def test_lite_temporal_ensemble_follows_eq4():
    layer, _, x = make("conv_big", mode="lite")
    torch.testing.assert_close(layer.gate_ema, torch.full((M,), 1 / M, dtype=DT))   # prior before training
    ema = None
    for step in range(4):
        xb = torch.randn_like(x)
        mean = layer.gates(xb).mean(0).detach()
        layer(xb)
        ema = mean if ema is None else 0.9 * ema + 0.1 * mean
        torch.testing.assert_close(layer.gate_ema, ema, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.last_gate, mean)
    assert int(layer.ema_steps) == 4
    layer.eval()
    layer(x)
    torch.testing.assert_close(layer.gate_ema, ema)          # evaluation does not update it...
    torch.testing.assert_close(layer.last_gate, ema)         # ...and uses it
    layer.train()
    with torch.no_grad():                                    # not a training batch (acting, targets)
        layer(x)
    torch.testing.assert_close(layer.gate_ema, ema)
    layer.update_ema = False
    layer(x)
    torch.testing.assert_close(layer.gate_ema, ema)


@pytest.mark.parametrize("case", ["conv_big", "noisy"])
@pytest.mark.parametrize("path", ["mix", "weights"])
@pytest.mark.parametrize("mode", ["adaptive", "lite"])
def test_gradients_reach_sources_gates_alignment(case, path, mode):
    layer, _, x = make(case, mode=mode)
    layer.path = path
    (layer(x) ** 2).sum().backward()
    names = ["align", "gate.0.weight", "gate.2.weight", "gate.2.bias"]
    names += ["weight_mu", "weight_sigma", "bias_mu", "bias_sigma"] if case == "noisy" else ["weight", "bias"]
    grads = dict(layer.named_parameters())
    for n in names:
        assert grads[n].grad is not None and grads[n].grad.abs().sum() > 0, n


@pytest.mark.parametrize("case", ["conv_big", "linear_wide", "noisy"])
def test_sum_norm_keeps_scale_of_equal_sources(case):
    torch.manual_seed(1)
    mk, shape = CASES[case]
    src = mk().to(DT)
    x = torch.randn(*shape, dtype=DT)
    layer = CLS[type(src)]([copy.deepcopy(src) for _ in range(M)], gate_norm="sum")
    if isinstance(src, NoisyLinear):
        layer.eval(), src.eval()
    for path in ("mix", "weights"):
        layer.path = path
        torch.testing.assert_close(layer(x), src(x), rtol=1e-12, atol=1e-12)
        assert torch.allclose(layer.last_gate.sum(), torch.tensor(1.0, dtype=DT))
    raw = CLS[type(src)]([copy.deepcopy(src) for _ in range(M)], gate_norm="none").train(layer.training)
    s = raw.gates(x)                                                      # raw sigmoids: scale sum_i s_i
    assert not torch.allclose(raw(x), src(x))
    if isinstance(src, nn.Linear):
        torch.testing.assert_close(raw(x), s.sum(1, keepdim=True) * F.linear(x, src.weight) + s.sum(1, keepdim=True)
                                   * src.bias)


def test_noisy_layer_api():
    layer, _, x = make("noisy")
    eps = layer.weight_epsilon.clone()
    reset_noise(nn.Sequential(layer))
    assert not torch.equal(eps, layer.weight_epsilon)
    torch.testing.assert_close(layer.weight_epsilon, torch.outer(layer.bias_epsilon, layer.weight_epsilon[0]
                                                                 / layer.bias_epsilon[0]))
    assert layer.noisy
    set_noise(layer, False)
    assert not layer.noisy
    y1 = layer(x)
    layer.reset_noise()
    torch.testing.assert_close(layer(x), y1)                  # mean weights: noise has no effect
    set_noise(layer, True)
    layer.eval()
    torch.testing.assert_close(layer(x), y1)


def test_linear_accepts_leading_dims_and_m1():
    layer, _, _ = make("linear_wide", m=1)
    x = torch.randn(2, 3, 6, dtype=DT)
    y = layer(x)
    assert y.shape == (2, 3, 4)
    torch.testing.assert_close(y.reshape(6, 4), layer(x.reshape(6, 6)))
    torch.testing.assert_close(layer.last_gate, torch.ones(1, dtype=DT))


def test_mismatched_sources_raise():
    with pytest.raises(ValueError, match=r"weight.*\(5, 3, 3, 3\).*\(4, 3, 3, 3\)"):
        AdaAggConv2d([nn.Conv2d(3, 4, 3), nn.Conv2d(3, 5, 3)])
    with pytest.raises(ValueError, match="stride"):
        AdaAggConv2d([nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 3, stride=2)])
    with pytest.raises(ValueError, match="bias"):
        AdaAggLinear([nn.Linear(3, 4), nn.Linear(3, 4, bias=False)])
    with pytest.raises(ValueError, match="NoisyLinear"):
        AdaAggNoisyLinear([NoisyLinear(3, 4), nn.Linear(3, 4)])
    with pytest.raises(ValueError, match="at least one"):
        AdaAggLinear([])
    with pytest.raises(ValueError, match="mode"):
        AdaAggLinear([nn.Linear(3, 4)], mode="dense")
    with pytest.raises(ValueError, match="gate_norm"):
        AdaAggLinear([nn.Linear(3, 4)], gate_norm="softmax")


def test_cost_model_on_der_shapes():
    """Documented choices for the DER network at batch 32 (2 sources)."""
    conv2 = AdaAggConv2d([nn.Conv2d(32, 64, 5, 5) for _ in range(2)])
    noisy = AdaAggNoisyLinear([NoisyLinear(576, 256) for _ in range(2)])
    assert conv2.choose_path(32, 9, shared=False) == "mix"      # grouped conv over 3x3 outputs: not worth it
    assert conv2.choose_path(32, 9, shared=True) == "weights"   # lite: aggregate once, one dense conv
    assert noisy.choose_path(32, 1, shared=False) == "mix"
    conv1 = AdaAggConv2d([nn.Conv2d(4, 32, 5, 5) for _ in range(2)])
    assert conv1.choose_path(32, 256, shared=False) == "weights"                     # NCHW input
    assert conv1.choose_path(32, 256, shared=False, channels_last=True) == "mix"     # DERNetwork's input
    x = torch.rand(32, 4, 84, 84).contiguous(memory_format=torch.channels_last)
    conv1(x)
    assert conv1.last_path == "mix"
    conv2.path = "weights"
    assert conv2.choose_path(32, 9, shared=False) == "weights"


def test_stats_and_deepcopy():
    layer, _, x = make("conv_big")
    net = nn.Sequential(layer)
    assert gate_means(net) == {}
    net(x)
    g = gate_means(net)["0"]
    assert g.shape == (M,) and not g.requires_grad
    torch.testing.assert_close(g, layer.gates(x).mean(0).detach())
    clone = copy.deepcopy(net)
    torch.testing.assert_close(clone(x), net(x))
