"""Gate and pathway statistics of the last forward pass, for logging and plots (Zoo-Tuning Fig. 5).

Every AdaAgg layer keeps ``last_gate`` (m,), the batch-mean gate of its last forward (NaN before one); every
HubPathway keeps ``last_pathway`` (m,), the detached batch-mean pathway weight G(x), and ``last_load`` (m,),
the fraction of the batch routed to each model.  Reading them costs a device-to-host copy, so log them
periodically, not every step.
"""
from __future__ import annotations

import torch
from torch import nn

from rlzoo_transfer.layers.adaagg import AdaAggBase
from rlzoo_transfer.layers.pathway import HubPathway


def gate_means(net: nn.Module) -> dict[str, torch.Tensor]:
    """{module path: mean gate per source (m,)} for every AdaAgg layer of ``net`` that has run a forward."""
    return {name: mod.last_gate.clone() for name, mod in net.named_modules()
            if isinstance(mod, AdaAggBase) and not bool(mod.last_gate.isnan().any())}


def pathway_means(net: nn.Module) -> dict[str, torch.Tensor]:
    """{module path: mean pathway weight per model (m,)} for every HubPathway of ``net`` that has run."""
    return {name: mod.last_pathway for name, mod in net.named_modules()
            if isinstance(mod, HubPathway) and mod.last_pathway is not None}


def flat_stats(net: nn.Module) -> dict[str, float]:
    """Scalars for a logger: ``gate/<path>/<i>``, ``pathway/<path>/<i>`` and ``load/<path>/<i>``."""
    out: dict[str, float] = {}
    for kind, table in (("gate", gate_means(net)), ("pathway", pathway_means(net))):
        for name, values in table.items():
            for i, v in enumerate(values.float().cpu().tolist()):
                out[f"{kind}/{name or 'root'}/{i}"] = v
    for name, mod in net.named_modules():
        if isinstance(mod, HubPathway) and mod.last_load is not None:
            for i, v in enumerate(mod.last_load.float().cpu().tolist()):
                out[f"load/{name or 'root'}/{i}"] = v
    return out
