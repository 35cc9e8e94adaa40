"""Transfer methods for vision: name -> the target network built from the zoo's checkpoints.

Every method is a small builder over a ``template()`` factory (a fresh target network: backbone + a new task
head, e.g. ``resnet50(num_target_classes)``) and the sources' backbone state_dicts:

==========  =====================================================================================================
scratch     the template as it is (no source)
single      the template with one source's backbone (Yosinski et al.: new randomly initialised head)
zoo         Zoo-Tuning: every backbone conv an adaptive AdaAgg layer over the m sources (resnet.zoo_resnet)
zoo-lite    lite Zoo-Tuning: TE-AdaAgg (batch-mean gates in training, their EMA in evaluation; export to one net)
zoo-avg     the "average aggregation" ablation: fixed gates 1/m
ensemble    m single-source networks fine-tuned side by side (each on its own loss, same batches); prediction:
            the mean of the members' softmax probabilities (classification) or heatmaps (landmarks)
hub         Hub-Pathway: the m single-source networks under a noisy top-k pathway generator (layers/pathway.py)
==========  =====================================================================================================

Hub-Pathway defaults: k = 2 ("we activate top-2 models for each datum in all our experiments", Hub-Pathway
Sec. 4.1); the generator is a small ResNet of BasicBlocks, one per stage, with the backbone's stem and number
of stages (for the 4-stage ImageNet ResNets: conv1 + 8 convs, the paper's "9-layer ResNet"), widths 16, 32, ...,
ending in a linear layer to the 2m logits [G_p | G_n]; the aggregator is the identity on the weighted sum of the
activated models' outputs (layers/pathway.py); the explore loss weight lambda is not given by the paper:
``hub_lambda`` (default 0.1) is our choice.  The loss is ``L_task + lambda L_explore + L_exploit``: L_explore
depends on the generator only and L_exploit on the models only, so this one sum gives both of the paper's
objectives (eq. 6).

Ensemble members are trained with the sum of their losses; with plain SGD (and momentum / weight decay, all
per parameter) that is exactly m independent fine-tunings on the same batches.  Hub-Pathway's baseline is "the
ensemble by voting of the predictions of different pre-trained models after fine-tuning" (Sec. 4.1); we read
voting as soft voting (mean probabilities): a hard majority vote of 2-3 members ties often, and the official
code of neither paper is available for this baseline.
"""
from __future__ import annotations

import copy
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from rlzoo_transfer.layers import HubPathway, export_module
from rlzoo_transfer.vision.options import check_method
from rlzoo_transfer.vision.resnet import BasicBlock, ResNet, load_backbone, zoo_resnet

ZOO_MODES = {"zoo": "adaptive", "zoo-lite": "lite", "zoo-avg": "average"}


class Ensemble(nn.Module):
    """m networks side by side.  Training mode: ``forward`` returns the stacked outputs (m, B, ...); evaluation
    mode: ``combine`` of the list of outputs (e.g. :func:`mean_softmax_log`)."""

    def __init__(self, models: Sequence[nn.Module], combine: Callable[[list[torch.Tensor]], torch.Tensor]):
        super().__init__()
        self.models = nn.ModuleList(models)
        self.combine = combine

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [m(x) for m in self.models]
        return torch.stack(outs) if self.training else self.combine(outs)


def mean_softmax_log(outs: list[torch.Tensor]) -> torch.Tensor:
    """log of the members' mean class probabilities (argmax = the ensemble's prediction)."""
    probs = torch.stack([o.softmax(-1) for o in outs]).mean(0)
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


def mean_outputs(outs: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(outs).mean(0)


def pathway_generator(backbone: ResNet, m: int, width: int = 16) -> ResNet:
    """The Hub-Pathway generator: a ResNet with one BasicBlock per stage (module docstring) -> (B, 2m)."""
    stages = len(backbone.blocks)
    return ResNet(BasicBlock, (1,) * stages, tuple(width * 2 ** i for i in range(stages)), 2 * m, backbone.stem,
                  backbone.in_channels)


def build_method(method: str, template: Callable[[], nn.Module], sources: Sequence[Mapping[str, torch.Tensor]],
                 combine: Callable[[list[torch.Tensor]], torch.Tensor] = mean_softmax_log, *,
                 align: bool = True, align_stages: str = "all", bn_stats: str = "average", hub_k: int = 2,
                 hub_width: int = 16) -> nn.Module:
    """The network of ``method`` (module docstring).

    :param method: one of METHODS
    :param template: factory of a fresh target network (a ResNet whose task head is ``fc`` or ``head``); called
        once for the zoo methods (all sources share its head initialisation) and once per member otherwise
    :param sources: the m source state_dicts (torchvision format; heads ignored); single takes exactly one
    :param combine: how an ensemble combines its members' outputs in evaluation
    :param align: channel alignment in the zoo methods (False: "w/o T")
    :param align_stages, bn_stats: the zoo methods' T placement and BatchNorm statistics (resnet.zoo_resnet)
    :param hub_k: models activated per sample (capped at m)
    :param hub_width: base width of the pathway generator
    :raises UnknownMethodError, ValueError: unknown method, wrong number of sources
    """
    check_method(method)
    m = len(sources)
    if method == "scratch":
        if m:
            raise ValueError("scratch uses no checkpoint; drop --zoo")
        return template()
    if m == 0:
        raise ValueError(f"{method} needs at least one checkpoint (--zoo)")
    if method == "single":
        if m != 1:
            raise ValueError(f"single fine-tunes one checkpoint, got {m}; run once per source")
        return load_backbone(template(), sources[0])
    if method in ZOO_MODES:
        return zoo_resnet(template(), sources, mode=ZOO_MODES[method], align=align, align_stages=align_stages,
                          bn_stats=bn_stats)
    members = [load_backbone(template(), sd) for sd in sources]
    if method == "ensemble":
        return Ensemble(members, combine)
    gen = pathway_generator(members[0], m, hub_width)
    return HubPathway(members, generator=gen, k=min(hub_k, m))


def objective(model: nn.Module, out: torch.Tensor, target: torch.Tensor,
              per_sample_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
              hub_lambda: float = 0.1) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss of any method's network and its parts (for logging).

    :param out: ``model(x)`` in training mode
    :param per_sample_loss: ``(outputs (n, ...), targets (n, ...)) -> (n,)``
    """
    if isinstance(model, Ensemble):
        losses = [per_sample_loss(o, target).mean() for o in out]
        total = torch.stack(losses).sum()
        return total, {"loss": float(total.detach()) / len(losses)}
    task = per_sample_loss(out, target).mean()
    if isinstance(model, HubPathway):
        explore = model.explore_loss()
        exploit = model.exploit_loss(lambda o, rows: per_sample_loss(o, target.index_select(0, rows)))
        total = task + hub_lambda * explore + exploit
        return total, {"loss": float(task.detach()), "explore": float(explore.detach()),
                       "exploit": float(exploit.detach())}
    return task, {"loss": float(task.detach())}


def inference_model(model: nn.Module) -> nn.Module:
    """What inference runs: lite / average zoo layers collapsed into plain layers (a copy); others as they are."""
    return export_module(copy.deepcopy(model))
