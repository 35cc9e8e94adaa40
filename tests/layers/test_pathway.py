"""Hub-Pathway: sparse top-k routing, aggregation, ties, losses, ablation switches."""
import copy
import math

import pytest
import torch
from torch import nn

from rlzoo_transfer.layers import HubPathway, flat_stats, pathway_means
from rlzoo_transfer.layers.pathway import take_rows

DT = torch.float64
D, S = 5, 3


class Recorder(nn.Module):
    """Wraps a model and records the batch size of every call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.sizes = model, []

    def forward(self, x):
        self.sizes.append(x.shape[0])
        return self.model(x)


class Fixed(nn.Module):
    """Generator returning given (2m,) logits for every sample."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.as_tensor(logits, dtype=DT))

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1)


def models(m):
    torch.manual_seed(0)
    archs = [lambda: nn.Linear(D, S), lambda: nn.Sequential(nn.Linear(D, 7), nn.Tanh(), nn.Linear(7, S))]
    return [Recorder(archs[i % 2]().to(DT)) for i in range(m)]   # two different architectures


def hub(m=4, k=2, **kw):
    torch.manual_seed(1)
    h = HubPathway(models(m), nn.Flatten(), D, k=k, **kw).to(DT)
    return h


def naive(h, x, gbar):
    return sum(gbar[:, i:i + 1] * h.models[i].model(x) for i in range(h.m))


@pytest.mark.parametrize("k", [1, 2, 4])
@pytest.mark.parametrize("training", [True, False])
def test_sparse_routing_and_aggregation(k, training):
    h = hub(m=4, k=k).train(training)
    x = torch.randn(10, D, dtype=DT)
    y = h(x)
    st = h.last
    active = st.gate_topk > 0
    assert torch.equal(active.sum(1), torch.full((10,), k))                  # exactly k per sample
    for i, mod in enumerate(h.models):
        n = int(active[:, i].sum())
        assert mod.sizes == ([n] if n else [])                              # only its routed rows, once
        assert torch.equal(st.rows[i], active[:, i].nonzero().squeeze(1))
        if n:
            torch.testing.assert_close(st.outputs[i], mod.model(x[st.rows[i]]))
    torch.testing.assert_close(st.gate_topk[active], st.gate.expand(10, 4)[active])   # eq. 1, not renormalised
    torch.testing.assert_close(y, naive(h, x, st.gate_topk))
    torch.testing.assert_close(h.last_load.sum(), torch.tensor(float(k), dtype=DT))


class LogSoftmax(nn.Module):
    """A model whose outputs are log-probabilities over S classes, as peaked as ``scale`` makes them."""

    def __init__(self, model, scale):
        super().__init__()
        self.model, self.scale = model, scale

    def forward(self, x):
        return torch.log_softmax(self.scale * self.model(x), -1)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_log_space_mixture_is_the_log_of_the_mixture(k):
    """log_space: y = log sum_i G_bar_i exp(Theta_i(x)), routed sparsely like the linear sum."""
    torch.manual_seed(1)
    h = HubPathway([LogSoftmax(m, 1.0) for m in models(3)], nn.Flatten(), D, k=k, renormalize=True,
                   log_space=True).to(DT).train()
    x = torch.randn(9, D, dtype=DT)
    y = h(x)
    gbar = h.last.gate_topk
    reference = sum(gbar[:, i:i + 1] * h.models[i](x).exp() for i in range(h.m)).log()
    torch.testing.assert_close(y, reference)
    torch.testing.assert_close(y.exp().sum(-1), torch.ones(9, dtype=DT))


def test_log_space_keeps_the_gradient_where_probabilities_underflow():
    """In float32 a peaked model's probabilities underflow (log p ~ -200 < log of the smallest float): the
    log-space mixture and each model's own loss keep the exact gradient, which log(clamp(exp(.))) loses."""
    torch.manual_seed(0)
    peaked = [LogSoftmax(nn.Linear(D, S), 400.0), LogSoftmax(nn.Linear(D, S), 400.0)]
    h = HubPathway(peaked, nn.Flatten(), D, k=2, renormalize=True, log_space=True).eval()
    x = torch.randn(6, D)
    target = torch.full((6, S), 1.0 / S)   # mass on every class, also where the models put ~0
    y = h(x)
    assert (h.last.outputs[0] < -150).any() and torch.isfinite(y).all()
    loss_fn = lambda out, rows: -(target[rows] * out).sum(-1)   # noqa: E731 - each model's own cross-entropy
    grads = torch.autograd.grad(h.exploit_loss(loss_fn), list(h.models[0].parameters()))
    own = -(target * peaked[0](x)).sum(-1).sum() / 6
    for got, want in zip(grads, torch.autograd.grad(own, list(peaked[0].parameters()))):
        torch.testing.assert_close(got, want)
        assert want.abs().max() > 1
    mixture_grads = torch.autograd.grad(-(target * h(x)).sum(), list(h.models[0].parameters()))
    assert all(torch.isfinite(g).all() for g in mixture_grads) and max(g.abs().max() for g in mixture_grads) > 0


def test_noise_only_in_training_and_top_k_of_g():
    h = hub()
    x = torch.randn(6, D, dtype=DT)
    h.eval()
    g = h.pathway(x)
    torch.testing.assert_close(h.pathway(x), g)                              # deterministic in eval
    logits = h.generator(x)[:, :4]
    torch.testing.assert_close(g, torch.softmax(logits, -1))
    h.train()
    assert not torch.allclose(h.pathway(x), g)                               # eq. 3 noise in training
    h.noisy_gate = False
    torch.testing.assert_close(h.pathway(x), g)
    h.eval()
    h(x)
    top = g.topk(2, dim=1).indices.sort(1).values
    assert torch.equal((h.last.gate_topk > 0).nonzero()[:, 1].view(6, 2), top)


def test_ties_broken_towards_lowest_index():
    x = torch.randn(3, D, dtype=DT)
    h = HubPathway(models(4), generator=Fixed(torch.zeros(8)), k=2).eval()
    h(x)
    assert torch.equal(h.last.gate_topk > 0, torch.tensor([[True, True, False, False]] * 3))
    assert [len(r) for r in h.last.rows] == [3, 3, 0, 0] and h.last.outputs[2] is None
    assert [len(mod.sizes) for mod in h.models] == [1, 1, 0, 0]
    h = HubPathway(models(4), generator=Fixed([1.0, 2.0, 2.0, 1.0] + [0.0] * 4), k=3).eval()
    h(x)
    assert torch.equal(h.last.gate_topk[0] > 0, torch.tensor([True, True, True, False]))


def test_explore_loss():
    x = torch.randn(5, D, dtype=DT)
    h = HubPathway(models(4), generator=Fixed(torch.zeros(8)), k=1).eval()
    h(x)
    torch.testing.assert_close(h.explore_loss(), torch.tensor(-math.log(4), dtype=DT))
    h = hub().train()
    h(x)
    loss = h.explore_loss()
    p = h.last.gate.mean(0)
    torch.testing.assert_close(loss, (p * p.log()).sum())
    assert loss > -math.log(4)
    loss.backward()
    assert h.generator[1].weight.grad.abs().sum() > 0
    h.explore = False
    assert h.explore_loss().item() == 0.0


def test_exploit_loss_eq5():
    h = hub(m=3, k=2).train()
    x, target = torch.randn(8, D, dtype=DT), torch.randn(8, S, dtype=DT)

    def loss_fn(out, rows):
        return ((out - target[rows]) ** 2).sum(-1)

    h(x)
    loss = h.exploit_loss(loss_fn)
    active = h.last.gate_topk > 0
    ref = sum(((h.models[i].model(x) - target) ** 2).sum(-1)[active[:, i]].sum() for i in range(3)) / 8
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(h.exploit_loss(loss_fn, reduction="mean"), ref / 2)
    loss.backward()
    assert h.generator[1].weight.grad is None                                 # eq. 6: models only
    assert any(p.grad is not None for p in h.models.parameters())
    h.exploit = False
    assert h.exploit_loss(loss_fn).item() == 0.0


def test_random_pathway_and_renormalize():
    x = torch.randn(20, D, dtype=DT)
    h = hub(m=4, k=2, random_pathway=True).eval()
    h(x)
    active = h.last.gate_topk > 0
    assert torch.equal(active.sum(1), torch.full((20,), 2))
    torch.testing.assert_close(h.last.gate_topk[active], torch.full((40,), 0.25, dtype=DT))
    torch.testing.assert_close(h.explore_loss(), torch.tensor(-math.log(4), dtype=DT))
    h = hub(m=4, k=2, renormalize=True).train()
    y = h(x)
    torch.testing.assert_close(h.last.gate_topk.sum(1), torch.ones(20, dtype=DT))
    torch.testing.assert_close(y, naive(h, x, h.last.gate_topk))


def test_aggregator_multidim_outputs_and_copy():
    torch.manual_seed(0)
    ms = [nn.Sequential(nn.Linear(D, 6), nn.Unflatten(1, (2, 3))).to(DT) for _ in range(3)]
    agg = nn.Linear(3, 3).to(DT)
    h = HubPathway(ms, nn.Flatten(), D, k=2, aggregator=agg).to(DT)
    x = torch.randn(4, D, dtype=DT)
    y = h(x)
    assert y.shape == (4, 2, 3)
    g = h.last.gate_topk
    torch.testing.assert_close(y, agg(sum(g[:, i, None, None] * ms[i](x) for i in range(3))))
    clone = copy.deepcopy(h)                           # the stored graph does not travel
    with pytest.raises(RuntimeError, match="no forward"):
        clone.last
    torch.testing.assert_close(clone.eval()(x), h.eval()(x))
    assert pathway_means(h)[""].shape == (3,)
    assert set(flat_stats(nn.Sequential(h))) == {f"{k}/0/{i}" for k in ("pathway", "load") for i in range(3)}


def test_bad_arguments():
    with pytest.raises(ValueError, match="k must be"):
        HubPathway(models(2), nn.Flatten(), D, k=3)
    with pytest.raises(ValueError, match="in_features"):
        HubPathway(models(2))
    h = HubPathway(models(2), generator=Fixed(torch.zeros(3)))
    with pytest.raises(ValueError, match="2m=4"):
        h(torch.randn(2, D, dtype=DT))


@pytest.mark.parametrize("layout", ["channels_last", "contiguous", "strided"])
def test_take_rows_is_x_rows_in_x_memory_format(layout):
    x = torch.randn(6, 4, 5, 7, dtype=DT)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided":
        x = x[:, :, ::2]
    x.requires_grad_(True)
    rows = torch.tensor([0, 2, 3, 5])
    got = take_rows(x, rows)
    assert torch.equal(got, x[rows])
    assert got.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    got.sum().backward()   # gradients reach exactly the taken rows
    assert torch.equal(x.grad.sum((1, 2, 3)) != 0, torch.tensor([True, False, True, True, False, True]))


def test_routed_conv_models_get_channels_last_rows():
    """Each model sees its rows of a channels-last batch in channels-last memory, with the values of x[rows]."""
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(4, 2, 3).to(DT)

        def forward(self, x):
            seen.append(x)
            return self.conv(x).flatten(1)

    torch.manual_seed(0)
    h = HubPathway([Probe(), Probe()], nn.Flatten(), 4 * 6 * 6, k=1).to(DT)
    x = torch.randn(8, 4, 6, 6, dtype=DT).contiguous(memory_format=torch.channels_last)
    h(x)
    for sub, rows in zip(seen, [r for r in h.last.rows if len(r)]):
        assert sub.is_contiguous(memory_format=torch.channels_last) and torch.equal(sub, x[rows])
