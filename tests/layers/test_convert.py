"""zoo_convert: layer replacement by module path, averaging of the rest, architecture checks."""
import copy

import pytest
import torch
from torch import nn

from rlzoo_transfer.layers import (AdaAggConv2d, AdaAggLinear, AdaAggNoisyLinear, NoisyLinear, adaagg_layers,
                                   average_state_dict, export_module, flat_stats, zoo_convert)

DT = torch.float64
M = 3


def tiny_net():
    """A DER-like network with a BatchNorm: (B, 2, 9, 9) -> (B, 3)."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2), nn.ReLU(),            # -> (4, 4, 4)
        nn.Conv2d(4, 6, 1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Flatten(), NoisyLinear(96, 8), nn.ReLU(), nn.Linear(8, 3)).to(DT)


def zoo():
    torch.manual_seed(0)
    nets = [tiny_net() for _ in range(M)]
    for net in nets:                                         # give each BatchNorm distinct statistics
        net.train()(torch.randn(16, 2, 9, 9, dtype=DT) * (1 + torch.rand(())))
        with torch.no_grad():
            net[3].weight.uniform_(0.5, 1.5)
            net[3].bias.normal_()
    return tiny_net(), [n.state_dict() for n in nets], nets


def test_layers_replaced_by_path_and_rest_averaged():
    template, sds, _ = zoo()
    before = copy.deepcopy(template.state_dict())
    net = zoo_convert(template, sds)
    assert [type(net[i]) for i in (0, 2, 6, 8)] == [AdaAggConv2d, AdaAggConv2d, AdaAggNoisyLinear, AdaAggLinear]
    assert [n for n, _ in adaagg_layers(net)] == ["0", "2", "6", "8"]
    assert net[0].align is not None and net[2].align is None                # 1x1 conv: no alignment
    torch.testing.assert_close(net[0].weight, torch.stack([sd["0.weight"] for sd in sds]))
    torch.testing.assert_close(net[6].weight_sigma, torch.stack([sd["6.weight_sigma"] for sd in sds]))
    for key in ("weight", "bias", "running_mean", "running_var"):
        torch.testing.assert_close(getattr(net[3], key), torch.stack([sd[f"3.{key}"] for sd in sds]).mean(0))
    assert int(net[3].num_batches_tracked) == int(sds[0]["3.num_batches_tracked"])
    for k, v in template.state_dict().items():                              # template untouched
        assert torch.equal(v, before[k])


def test_average_mode_equals_averaged_plain_network():
    template, sds, _ = zoo()
    net = zoo_convert(template, sds, mode="average").eval()
    plain = copy.deepcopy(template)
    plain.load_state_dict(average_state_dict(template, sds))
    x = torch.randn(4, 2, 9, 9, dtype=DT)
    torch.testing.assert_close(net(x), plain.eval()(x))
    lite = export_module(zoo_convert(template, sds, mode="lite").eval())
    assert adaagg_layers(lite) == []
    torch.testing.assert_close(lite(x), plain(x))                           # untrained lite = uniform prior


def test_equal_sources_reproduce_the_source():
    template, sds, nets = zoo()
    net = zoo_convert(template, [sds[1]] * M).eval()
    x = torch.randn(4, 2, 9, 9, dtype=DT)
    torch.testing.assert_close(net(x), nets[1].eval()(x))
    stats = flat_stats(net)
    assert set(stats) == {f"gate/{n}/{i}" for n in ("0", "2", "6", "8") for i in range(M)}


def test_keep_plain_no_align_and_modes():
    template, sds, _ = zoo()
    net = zoo_convert(template, sds, mode="lite", align=True, gate_norm="none", keep_plain=["8"], no_align=["6"])
    assert type(net[8]) is nn.Linear
    torch.testing.assert_close(net[8].weight, torch.stack([sd["8.weight"] for sd in sds]).mean(0))
    assert net[6].align is None and net[0].align is not None
    assert all(layer.mode == "lite" and layer.gate_norm == "none" for _, layer in adaagg_layers(net))
    with pytest.raises(ValueError, match="'7' is not a conv"):
        zoo_convert(template, sds, keep_plain=["7"])
    single = zoo_convert(nn.Linear(3, 2).to(DT), [nn.Linear(3, 2).to(DT).state_dict() for _ in range(2)])
    assert isinstance(single, AdaAggLinear) and single.m == 2


def test_mismatched_state_dicts_raise():
    template, sds, _ = zoo()
    bad = dict(sds[1])
    bad["6.weight_mu"] = torch.zeros(8, 97, dtype=DT)
    with pytest.raises(ValueError, match=r"source 1 parameter '6.weight_mu' has shape \(8, 97\).*\(8, 96\)"):
        zoo_convert(template, [sds[0], bad])
    bad = {k: v for k, v in sds[2].items() if k != "3.running_var"}
    with pytest.raises(ValueError, match="source 1 has no parameter '3.running_var'"):
        zoo_convert(template, [sds[0], bad])
    bad = dict(sds[0], extra=torch.zeros(2))
    with pytest.raises(ValueError, match="'extra'"):
        zoo_convert(template, [bad])
    with pytest.raises(ValueError, match="at least one"):
        zoo_convert(template, [])


def test_converted_network_trains_end_to_end():
    template, sds, _ = zoo()
    net = zoo_convert(template, sds).train()
    x = torch.randn(4, 2, 9, 9, dtype=DT)
    net(x).pow(2).sum().backward()
    for name, layer in adaagg_layers(net):
        assert layer.gate[0].weight.grad is not None, name
        assert next(iter(p for n, p in layer.named_parameters() if n.startswith(("weight", "bias")))).grad is not None
