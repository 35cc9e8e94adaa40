"""ResNet-18 / ResNet-50 (and a small CIFAR-style ResNet) with torchvision's module names, and their zoo form.

The networks are plain ``nn.Conv2d`` / ``nn.BatchNorm2d`` / ``nn.Linear`` modules laid out exactly as in
``torchvision.models.resnet`` (``conv1, bn1, relu, maxpool, layer1.0.conv1, ..., layer2.0.downsample.0/1,
avgpool, fc``), so a torchvision-format ``state_dict`` saved to a local file loads as it is
(:func:`load_state_dict_file`, :func:`check_backbone_keys`).  torchvision itself is not needed.

``small`` is a CIFAR-style ResNet for quick offline work: a 3x3 stride-1 stem without max-pool (``maxpool`` is
an ``nn.Identity``, so the names stay torchvision's) and three stages of BasicBlocks with widths w, 2w, 4w
(default w = 16, one block per stage; ``blocks=(3, 3, 3)`` is ResNet-20).  It works on inputs from 8x8 up.

Zoo form (:func:`zoo_resnet`, Zoo-Tuning Sec. 3 and the official thuml/Zoo-Tuning code): every conv of the backbone
becomes an ``AdaAggConv2d`` over the m sources (layers/convert.py), with channel alignment only for kernels > 1 (the
layer's own rule: 1x1 convs such as ``downsample.0`` and the bottleneck's ``conv1``/``conv3`` get none) - in every
stage, as the paper describes T for each AdaAgg layer; the official ResNet-50 turns it on only for the stem and
``layer3`` / ``layer4`` (``layer1`` / ``layer2``'s 3x3 convs have none there), a choice its paper does not state
(``align_stages="official"``, ``--align-stages official``, follows it).  BatchNorm parameters and running statistics
are averaged over the sources (the official code averages the affine parameters and resets the running statistics to
0 / 1: ``bn_stats="reset"``, ``--bn-stats reset``), and ``gate_norm="none"`` (the paper's raw sigmoid gates): with m
sources the aggregated weight starts at ~0.5 * m times a source's scale, which the BatchNorm after every conv
absorbs - the output of a conv followed by BatchNorm does not change when the conv's weight is scaled (in training
mode; the running statistics adapt during fine-tuning).  The task head (``fc``) stays a plain layer.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
from torch import nn

from rlzoo_transfer.layers import zoo_convert
from rlzoo_transfer.vision.options import ALIGN_STAGES, ARCHS, BN_STATS


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def conv1x1(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: conv1 (3x3, stride) bn1 relu conv2 (3x3) bn2 (+ downsample) relu."""
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(cin, width, stride), nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = conv3x3(width, width), nn.BatchNorm2d(width)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (ResNet V1.5: the stride is on the 3x3 conv2): 1x1, 3x3, 1x1 (x4)."""
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1, self.bn1 = conv1x1(cin, width), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = conv3x3(width, width, stride), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = conv1x1(width, width * 4), nn.BatchNorm2d(width * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A ResNet with torchvision's module names.

    :param block: ``BasicBlock`` or ``Bottleneck``
    :param blocks: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18; stages are ``layer1``, ``layer2``, ...
    :param widths: base width of each stage (64, 128, 256, 512 in torchvision); stage i > 0 has stride 2
    :param num_classes: outputs of ``fc``
    :param stem: ``"imagenet"`` (7x7 stride-2 conv + 3x3 stride-2 max-pool) or ``"cifar"`` (3x3 stride-1 conv,
        ``maxpool`` = Identity)
    :param in_channels: input channels (3 for torchvision weights)

    ``forward``: (B, in_channels, H, W) -> logits (B, num_classes); ``features``: -> the last stage's map
    (B, feature_dim, H/s, W/s) with s = ``stride``; ``embed``: -> pooled penultimate features (B, feature_dim).
    """

    def __init__(self, block: type, blocks: Sequence[int], widths: Sequence[int], num_classes: int = 1000,
                 stem: str = "imagenet", in_channels: int = 3):
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        if len(blocks) != len(widths) or not blocks:
            raise ValueError("blocks and widths must be non-empty and of the same length")
        self.block, self.blocks, self.widths, self.stem = block, tuple(blocks), tuple(widths), stem
        self.in_channels, self.num_classes = in_channels, num_classes
        w0 = widths[0]
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_channels, w0, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        else:
            self.conv1 = nn.Conv2d(in_channels, w0, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(w0)
        self.relu = nn.ReLU(inplace=True)
        cin = w0
        for i, (n, w) in enumerate(zip(blocks, widths)):
            stride = 1 if i == 0 else 2
            layers = []
            for j in range(n):
                down = None
                if j == 0 and (stride != 1 or cin != w * block.expansion):
                    down = nn.Sequential(conv1x1(cin, w * block.expansion, stride), nn.BatchNorm2d(w * block.expansion))
                layers.append(block(cin, w, stride if j == 0 else 1, down))
                cin = w * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layers))
        self.feature_dim = cin
        self.stride = (4 if stem == "imagenet" else 1) * 2 ** (len(blocks) - 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for mod in self.modules():   # torchvision's initialisation
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(mod, nn.BatchNorm2d):
                nn.init.ones_(mod.weight)
                nn.init.zeros_(mod.bias)

    def stages(self) -> list[nn.Module]:
        return [getattr(self, f"layer{i + 1}") for i in range(len(self.blocks))]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in self.stages():
            x = stage(x)
        return x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.avgpool(self.features(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


def resnet18(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """torchvision's ``resnet18`` layout (11.7M parameters with 1000 classes)."""
    net = ResNet(BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), num_classes, "imagenet", in_channels)
    net.arch_name = "resnet18"
    return net


def resnet50(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """torchvision's ``resnet50`` layout (25.6M parameters with 1000 classes)."""
    net = ResNet(Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512), num_classes, "imagenet", in_channels)
    net.arch_name = "resnet50"
    return net


def resnet_small(num_classes: int = 10, width: int = 16, blocks: Sequence[int] = (1, 1, 1),
                 in_channels: int = 3) -> ResNet:
    """CIFAR-style ResNet: 3x3 stem, stages of widths (w, 2w, 4w), stride 4 overall."""
    net = ResNet(BasicBlock, tuple(blocks), tuple(width * 2 ** i for i in range(len(blocks))), num_classes,
                 "cifar", in_channels)
    net.arch_name = f"small (width {width}, blocks {tuple(blocks)})"
    return net


def build_resnet(arch: str, num_classes: int, width: int = 16) -> ResNet:
    """``arch`` in ARCHS; ``width`` is used by ``small`` only."""
    if arch == "resnet18":
        return resnet18(num_classes)
    if arch == "resnet50":
        return resnet50(num_classes)
    if arch == "small":
        return resnet_small(num_classes, width=width)
    raise ValueError(f"unknown architecture {arch!r}; choose from {', '.join(ARCHS)}")


# ------------------------------------------------------------------------------------------------ weight files
class CheckpointError(ValueError):
    """A weight file that cannot be used: unreadable, wrong checksum, or keys / shapes of another architecture."""


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _find_state_dict(obj) -> Mapping[str, torch.Tensor]:
    """The tensor mapping inside a loaded file: the file itself, or its ``state_dict`` / ``model`` entry."""
    if isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                return _find_state_dict(obj[key])
    raise CheckpointError("holds no state_dict (a mapping of names to tensors, at the top or under 'state_dict' "
                          "or 'model')")


def strip_prefix(sd: Mapping[str, torch.Tensor], anchor: str = "conv1.weight") -> dict[str, torch.Tensor]:
    """Keys relative to where the ResNet sits: with a prefix ``p`` such that ``p + anchor`` is a key (e.g.
    ``module.`` from DataParallel, ``module.encoder_q.`` from MoCo, ``backbone.body.`` from torchvision's
    detection models), the entries under ``p`` with ``p`` removed; keys outside ``p`` are dropped."""
    if anchor in sd:
        return dict(sd)
    prefixes = sorted({k[: -len(anchor)] for k in sd if k.endswith("." + anchor)}, key=len)
    if not prefixes:
        return dict(sd)
    p = prefixes[0]
    return {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}


def load_state_dict_file(path: str | Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a torchvision-format state_dict from a local file (``torch.load(weights_only=True)``).

    :param path: a ``.pt`` / ``.pth`` file holding a state_dict, or a dict with one under ``state_dict`` / ``model``
    :param sha256: expected hex digest of the file (or a prefix of it, >= 8 hex digits, as in torchvision's file
        names ``resnet50-0676ba61.pth``); None skips the check
    :return: the state_dict, with a wrapping prefix removed (:func:`strip_prefix`)
    :raises CheckpointError: missing or unreadable file, checksum mismatch, no state_dict inside
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if sha256 is not None:
        digest = sha256_of(path)
        want = sha256.lower()
        if len(want) < 8 or not digest.startswith(want):
            raise CheckpointError(f"{path}: sha256 {digest[:16]}... does not match the expected {want[:16]}...")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # pickle errors, truncated files, non-tensor objects under weights_only
        raise CheckpointError(f"{path}: cannot be read as a weights-only torch file ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    try:
        return strip_prefix(_find_state_dict(obj))
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None


HEADS = ("fc", "head")   # module names of task heads: a classifier ``fc`` or a dense-prediction ``head``


def is_head_key(key: str, head: Sequence[str] | str = HEADS) -> bool:
    """True for the entries of a task head (never part of a backbone; replaced for the target task)."""
    heads = (head,) if isinstance(head, str) else tuple(head)
    return any(key == h or key.startswith(h + ".") for h in heads)


def check_backbone_keys(model: nn.Module, sd: Mapping[str, torch.Tensor], name: str = "checkpoint",
                        head: Sequence[str] | str = HEADS) -> None:
    """CheckpointError unless ``sd`` holds exactly ``model``'s backbone (everything but the heads) with its shapes.

    Heads (``fc.*``, ``head.*``) may be absent or of any size (they are replaced for the target task); BatchNorm's
    ``num_batches_tracked`` may be absent (e.g. FrozenBatchNorm2d of torchvision's detection backbones).
    """
    ref = {k: v for k, v in model.state_dict().items() if not is_head_key(k, head)}
    got = {k: v for k, v in sd.items() if not is_head_key(k, head)}
    missing = [k for k in ref if k not in got and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in got if k not in ref]
    arch = getattr(model, "arch_name", type(model).__name__)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (first {missing[0]!r})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (first {unexpected[0]!r})")
        raise CheckpointError(f"{name}: keys do not match {arch}: {', '.join(parts)} - is it another architecture?")
    for k, t in ref.items():
        if k in got and tuple(got[k].shape) != tuple(t.shape):
            raise CheckpointError(f"{name}: {k!r} has shape {tuple(got[k].shape)} but {arch} has {tuple(t.shape)} "
                                  "- is it another architecture or width?")


def backbone_state(model: nn.Module, sd: Mapping[str, torch.Tensor],
                   head: Sequence[str] | str = HEADS) -> dict[str, torch.Tensor]:
    """``model``'s state_dict with every backbone entry taken from ``sd`` (checked) and the head kept as it is."""
    check_backbone_keys(model, sd, head=head)
    out = {}
    for k, v in model.state_dict().items():
        if is_head_key(k, head) or k not in sd:
            out[k] = v.clone()
        else:
            out[k] = sd[k].detach().to(dtype=v.dtype if v.is_floating_point() else sd[k].dtype).clone()
    return out


def load_backbone(model: nn.Module, sd: Mapping[str, torch.Tensor], head: Sequence[str] | str = HEADS) -> nn.Module:
    """Load ``sd``'s backbone into ``model`` (in place; the head keeps its initialisation); returns ``model``."""
    model.load_state_dict(backbone_state(model, sd, head))
    return model


def conv_and_linear_names(model: nn.Module, under: Sequence[str] | str = HEADS) -> list[str]:
    """Module paths of the conv / linear layers at or below ``under`` (e.g. the heads', to keep them plain)."""
    return [n for n, m in model.named_modules()
            if type(m) in (nn.Conv2d, nn.Linear) and is_head_key(n, under)]


def unaligned_convs(template: ResNet, align_stages: str = "all", head: Sequence[str] | str = HEADS) -> list[str]:
    """Module paths of the backbone convs built without T for ``align_stages``.

    ``"all"``: none (every conv with a kernel > 1 gets T, as Zoo-Tuning Sec. 3.2 describes each AdaAgg layer);
    ``"official"``: every conv outside the stem and the last two stages, the rule of the official thuml/Zoo-Tuning
    ResNet-50 (T in ``conv1``, ``layer3``, ``layer4`` only), applied to any depth (``small``: ``conv1``,
    ``layer2``, ``layer3``).  1x1 convs get no T either way (AdaAgg's own rule).
    """
    if align_stages not in ALIGN_STAGES:
        raise ValueError(f"align_stages must be one of {', '.join(ALIGN_STAGES)}, got {align_stages!r}")
    if align_stages == "all":
        return []
    n = len(template.blocks)
    aligned = {"conv1", *(f"layer{i + 1}" for i in range(max(0, n - 2), n))}
    return [name for name, mod in template.named_modules()
            if type(mod) is nn.Conv2d and name.split(".")[0] not in aligned and not is_head_key(name, head)]


def zoo_resnet(template: nn.Module, sources: Sequence[Mapping[str, torch.Tensor]], mode: str = "adaptive",
               align: bool = True, head: Sequence[str] | str = HEADS, gate_norm: str = "none",
               align_stages: str = "all", bn_stats: str = "average") -> nn.Module:
    """Zoo-Tuning form of ``template`` over the sources' backbones (module docstring for the choices).

    :param template: the target network (e.g. ``resnet50(num_target_classes)``); its head initialises the head
    :param sources: m torchvision-format state_dicts of the template's backbone (their heads are ignored)
    :param mode: ``"adaptive"`` (Zoo-Tuning), ``"lite"`` (TE-AdaAgg) or ``"average"`` (the ablation)
    :param align: channel alignment (kernels > 1 only); False is the "w/o T" ablation
    :param head: module paths of the task heads (kept plain, from the template; ``fc`` and ``head``)
    :param gate_norm: ``"none"`` (paper, with BatchNorm) or ``"sum"``
    :param align_stages: ``"all"`` or ``"official"`` (:func:`unaligned_convs`); only with ``align``
    :param bn_stats: the backbone BatchNorms' running statistics: ``"average"`` of the sources' (ours) or
        ``"reset"`` to mean 0 / variance 1 with no batches counted (the official code); affine parameters are
        averaged either way
    """
    if bn_stats not in BN_STATS:
        raise ValueError(f"bn_stats must be one of {', '.join(BN_STATS)}, got {bn_stats!r}")
    sds = [backbone_state(template, sd, head) for sd in sources]
    net = zoo_convert(template, sds, mode=mode, align=align, gate_norm=gate_norm,
                      keep_plain=conv_and_linear_names(template, head),
                      no_align=unaligned_convs(template, align_stages, head) if align else ())
    if bn_stats == "reset":
        for name, mod in net.named_modules():
            if isinstance(mod, nn.BatchNorm2d) and not is_head_key(name, head):
                mod.reset_running_stats()
    return net


def count_params(model: nn.Module, where: Callable[[str], bool] | None = None) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if where is None or where(n))
