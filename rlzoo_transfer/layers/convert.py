"""Turn a network into its Zoo-Tuning form over m source state_dicts (Zoo-Tuning Fig. 2b), by module path.

:func:`zoo_convert` returns a deep copy of ``template`` in which every ``nn.Conv2d``, ``nn.Linear`` and
``NoisyLinear`` (exact types, so e.g. attention's internal projections are left alone) is replaced by the AdaAgg
layer over the m sources' parameters for that module path.  Everything else is the average over the sources:

* BatchNorm affine parameters (as the official code) and running statistics (mean of the running means and
  of the running variances), and any other floating-point parameter or buffer: the elementwise mean;
* integer buffers (e.g. ``num_batches_tracked``): taken from the first source;
* layers named in ``keep_plain`` stay plain layers holding the average of the sources' parameters (a
  neutral start that favours no source; name a layer there to skip the AdaAgg cost where it buys nothing).

The sources' noise buffers of NoisyLinear layers are not used: an AdaAggNoisyLinear draws its own sample.
"""
from __future__ import annotations

import copy
from typing import Iterable, Mapping, Sequence

import torch
from torch import nn

from rlzoo_transfer.layers.adaagg import AdaAggBase, AdaAggConv2d, AdaAggLinear, AdaAggNoisyLinear
from rlzoo_transfer.layers.noisy import NoisyLinear

ADAAGG_FOR = {nn.Conv2d: AdaAggConv2d, nn.Linear: AdaAggLinear, NoisyLinear: AdaAggNoisyLinear}


def check_state_dicts(template: nn.Module, state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> None:
    """ValueError naming the first key that is missing, unexpected, or of another shape than the template's."""
    if len(state_dicts) < 1:
        raise ValueError("zoo_convert needs at least one source state_dict")
    ref = template.state_dict()
    for j, sd in enumerate(state_dicts):
        for key, t in ref.items():
            if key not in sd:
                raise ValueError(f"source {j} has no parameter {key!r} (template shape {tuple(t.shape)}): "
                                 "the sources must share the template's architecture")
            if tuple(sd[key].shape) != tuple(t.shape):
                raise ValueError(f"source {j} parameter {key!r} has shape {tuple(sd[key].shape)} but the template "
                                 f"has {tuple(t.shape)}: the sources must share the template's architecture")
        extra = [key for key in sd if key not in ref]
        if extra:
            raise ValueError(f"source {j} has parameter {extra[0]!r} (shape {tuple(sd[extra[0]].shape)}) that the "
                             "template lacks: the sources must share the template's architecture")


def average_state_dict(template: nn.Module, state_dicts: Sequence[Mapping[str, torch.Tensor]]) -> dict:
    """Elementwise mean of the floating-point entries, the first source's value for the others."""
    out = {}
    for key, t in template.state_dict().items():
        vals = [sd[key].detach().to(t.device) for sd in state_dicts]
        out[key] = torch.stack([v.to(t.dtype) for v in vals]).mean(0) if t.is_floating_point() else vals[0].clone()
    return out


def zoo_convert(template: nn.Module, state_dicts: Sequence[Mapping[str, torch.Tensor]], mode: str = "adaptive",
                align: bool = True, gate_norm: str = "sum", keep_plain: Iterable[str] = (),
                no_align: Iterable[str] = ()) -> nn.Module:
    """The Zoo-Tuning network over ``len(state_dicts)`` sources of ``template``'s architecture.

    :param template: the architecture (its own parameters are not used; it is not modified)
    :param state_dicts: m source state_dicts with exactly the template's keys and shapes
    :param mode, align, gate_norm: passed to every AdaAgg layer (see ``adaagg``)
    :param keep_plain: module paths of conv / linear layers to keep plain (holding the sources' average)
    :param no_align: module paths of layers built with ``align=False`` (e.g. a wide output layer, where the
        (m, O, O) alignment costs more than the layer)
    :return: a new module; AdaAgg layers sit at the paths of the replaced layers
    """
    check_state_dicts(template, state_dicts)
    keep_plain, no_align = set(keep_plain), set(no_align)
    layers = {name: mod for name, mod in template.named_modules() if type(mod) in ADAAGG_FOR}
    unknown = sorted((keep_plain | no_align) - set(layers))
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a conv / linear / noisy-linear layer of the template; "
                         f"those are {sorted(layers)}")
    net = copy.deepcopy(template)
    net.load_state_dict(average_state_dict(template, state_dicts))
    for name, mod in layers.items():
        if name in keep_plain:
            continue
        prefix = f"{name}." if name else ""
        sources = []
        for sd in state_dicts:
            src = copy.deepcopy(mod)
            src.load_state_dict({k: sd[prefix + k] for k in mod.state_dict()})
            sources.append(src)
        layer = ADAAGG_FOR[type(mod)](sources, mode=mode, align=align and name not in no_align, gate_norm=gate_norm)
        layer.train(mod.training)
        if not name:
            return layer
        parent, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, child, layer)
    return net


def adaagg_layers(net: nn.Module) -> list[tuple[str, AdaAggBase]]:
    """(module path, layer) for every AdaAgg layer of ``net``, in module order (for logging and statistics)."""
    return [(name, mod) for name, mod in net.named_modules() if isinstance(mod, AdaAggBase)]
