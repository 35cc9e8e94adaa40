"""What ``python -m rlzoo_transfer.select`` computes (the protocol and the choices are described there): a seeded
per-class sample of the target's training images, each zoo model's features, source probabilities and LGC's
projected per-sample gradients, its scores, their rankings and, given measured accuracies, their judgement.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from rlzoo_transfer.selection import (UndefinedScoreError, best_of_top_k, correlate_rdms, domain_similarity,
                                      h_score, leep, lfc, lgc, logme, nce, rank_models, rdm_entries, spearman,
                                      trials_to_best)
from rlzoo_transfer.vision.data import DataError, EvalTransform, ImageDataset, Split, open_split
from rlzoo_transfer.vision.options import ALL_SCORES, ARCHS, SCORES
from rlzoo_transfer.vision.resnet import (CheckpointError, ResNet, build_resnet, check_backbone_keys,
                                          load_state_dict_file)
from rlzoo_transfer.vision.runtime import pick_device

HEAD_SCORES = ("lgc", "leep", "nce")


# ------------------------------------------------------------------------------------------------ sampling
def sample_per_class(split: Split, per_class: int, seed: int = 0) -> Split:
    """At most ``per_class`` items of each class, drawn without replacement (seeded), in class order."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(split.labels)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep.extend(sorted(rng.choice(idx, size=min(per_class, len(idx)), replace=False).tolist()))
    return Split([split.paths[i] for i in keep], [split.labels[i] for i in keep], split.classes)


def class_counts(split: Split) -> dict[int, int]:
    """{label: number of items} of a split."""
    labels, counts = np.unique(np.asarray(split.labels), return_counts=True)
    return {int(c): int(n) for c, n in zip(labels, counts)}


# ------------------------------------------------------------------------------------------------ model
def load_source(path: str, arch: str, width: int = 16, sha256: str | None = None) -> tuple[ResNet, bool]:
    """The pretrained network of a checkpoint, with its own classifier when the file has one; (net, has_head)."""
    sd = load_state_dict_file(path, sha256)
    has_head = "fc.weight" in sd and sd["fc.weight"].dim() == 2
    net = build_resnet(arch, int(sd["fc.weight"].shape[0]) if has_head else 1, width)
    check_backbone_keys(net, sd, name=str(path))
    own = net.state_dict()
    own.update({k: v for k, v in sd.items() if k in own and (has_head or not k.startswith("fc."))})
    missing = [k for k in net.state_dict() if k.startswith("fc.") and has_head and k not in sd]
    if missing:
        raise CheckpointError(f"{path}: classifier entry {missing[0]!r} is missing")
    net.load_state_dict(own)
    return net.eval(), has_head


def last_conv_name(net: nn.Module) -> str:
    """The last conv of the main path (shortcut convs excluded), in module order."""
    names = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d) and "downsample" not in n
             and not n.startswith(("fc", "head"))]
    if not names:
        raise ValueError("the network has no conv layer")
    return names[-1]


class ImageBatches:
    """The preprocessed images of a data set, handed out in batches on ``device`` (never all in memory at once)."""

    def __init__(self, dataset, device: torch.device | str = "cpu"):
        self.dataset, self.device = dataset, torch.device(device)

    def __len__(self) -> int:
        return len(self.dataset)

    def chunks(self, size: int):
        for s in range(0, len(self.dataset), size):
            yield torch.stack([self.dataset[i][0] for i in range(s, min(s + size, len(self.dataset)))]).to(self.device)


def _chunks(x, size: int):
    if isinstance(x, torch.Tensor):
        for s in range(0, x.shape[0], size):
            yield x[s:s + size]
    else:
        yield from x.chunks(size)


@torch.no_grad()
def extract(net: ResNet, x, has_head: bool, batch_size: int = 128) -> tuple[np.ndarray, np.ndarray | None]:
    """Penultimate features (N, D) and source probabilities (N, Cs) (None without a head).

    :param x: (N, C, H, W) tensor or :class:`ImageBatches`
    """
    feats, probs = [], []
    for xb in _chunks(x, batch_size):
        f = net.embed(xb)
        feats.append(f.double().cpu())
        if has_head:
            probs.append(net.fc(f).softmax(-1).double().cpu())
    return torch.cat(feats).numpy(), torch.cat(probs).numpy() if has_head else None


def sketch_seed(seed: int, r: int) -> int:
    """torch seed of the count-sketch hash of block ``r`` (kept as published: changing it changes the scores)."""
    return seed * 1000003 + r


def probe_seed(seed: int) -> int:
    """torch seed of the LGC probes, drawn apart from every :func:`sketch_seed` of the same ``seed`` (it was
    ``seed`` itself, which at seed 0 is block 0's sketch seed: two draws from one stream)."""
    return int(np.random.SeedSequence([seed, 1]).generate_state(1, np.uint64)[0] >> 1)


class CountSketch:
    """Seeded count-sketch of R blocks of P coordinates into k buckets (select.py's docstring: LGC)."""

    def __init__(self, p: int, k: int, seed: int = 0):
        self.p, self.k, self.seed = p, k, seed
        self._hash: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def block(self, g: torch.Tensor, r: int) -> torch.Tensor:
        """(b, P) gradients of block r -> (b, k)."""
        if r not in self._hash:
            gen = torch.Generator().manual_seed(sketch_seed(self.seed, r))
            h = torch.randint(0, self.k, (self.p,), generator=gen)
            s = torch.randint(0, 2, (self.p,), generator=gen).to(torch.float32) * 2 - 1
            self._hash[r] = (h, s)
        h, s = self._hash[r]
        g = g.float().cpu()
        return torch.zeros(g.shape[0], self.k).index_add_(1, h, g * s)


def lgc_gradients(net: ResNet, x, probes: int = 10, proj_dim: int | None = 10000, seed: int = 0,
                  chunk: int = 16) -> np.ndarray:
    """Per-sample gradient vectors of the source output w.r.t. the last conv's weight (select.py's docstring).

    :param x: (N, C, H, W) preprocessed images (a tensor or :class:`ImageBatches`)
    :return: (N, D) with D = Cs * P or R * P, or ``proj_dim`` when that is smaller
    """
    from torch.func import functional_call, grad, vmap

    name = last_conv_name(net) + ".weight"
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = {k: v.detach() for k, v in net.named_buffers()}
    w0 = params.pop(name)
    cs = net.fc.out_features
    if cs <= probes:
        vecs = torch.eye(cs, dtype=w0.dtype, device=w0.device)
    else:
        gen = torch.Generator().manual_seed(probe_seed(seed))
        vecs = (torch.randn(probes, cs, generator=gen) / math.sqrt(probes)).to(w0.device, w0.dtype)
    p = w0.numel()
    total = p * len(vecs)
    sketch = CountSketch(p, proj_dim, seed) if proj_dim is not None and total > proj_dim else None

    def scalar(w, xi, v):
        out = functional_call(net, {**params, **buffers, name: w}, (xi.unsqueeze(0),))
        return (out[0] * v).sum()

    per_sample = vmap(grad(scalar), in_dims=(None, 0, None))
    rows = []
    for xb in _chunks(x, chunk):
        parts = []
        for r, v in enumerate(vecs):
            g = per_sample(w0, xb, v).reshape(xb.shape[0], -1)
            parts.append(sketch.block(g, r) if sketch is not None else g.float().cpu())
        rows.append(torch.stack(parts).sum(0) if sketch is not None else torch.cat(parts, 1))
    return torch.cat(rows).double().numpy()


# ------------------------------------------------------------------------------------------------ scoring
def score_model(net: ResNet, has_head: bool, x, y: np.ndarray, scores: Sequence[str],
                probes: int = 10, proj_dim: int | None = 10000, seed: int = 0,
                reference_rdm: np.ndarray | None = None, source: tuple | None = None,
                min_class_count: int = 5, target_counts: dict[int, int] | None = None,
                undefined: dict[str, str] | None = None) -> dict[str, float | None]:
    """The requested scores of one pretrained network on the sampled target images ``x`` with labels ``y``;
    ``rsa`` compares its features' RDM with ``reference_rdm`` (the upper triangle of a target-trained network's
    RDM on ``x``, :func:`~rlzoo_transfer.selection.rdm_entries`, computed once for the whole zoo);
    ``domain_similarity`` compares the class means of its features on the target with those on its own source
    images, ``source = (x_source, y_source, source class counts)``, classes weighted by the counts (the target's:
    ``target_counts``; both {label: images in the whole domain}).

    None marks a score this model cannot have: one that needs a classifier head, for a headless model; one that is
    undefined for it (``UndefinedScoreError``: all-zero or constant features, a collapsed network); and every
    score of a model whose features or outputs are not finite (a diverged network).  The last two put their
    reason into ``undefined`` ({score: reason}) when given: one degenerate model does not stop the ranking."""
    feats, probs = extract(net, x, has_head)
    out: dict[str, float | None] = {}
    diverged = not np.all(np.isfinite(feats)) or (probs is not None and not np.all(np.isfinite(probs)))
    for s in scores:
        if diverged and not (s in HEAD_SCORES and not has_head):
            out[s] = None
            if undefined is not None:
                undefined[s] = "its features or outputs contain NaN or inf: a diverged network"
            continue
        try:
            out[s] = _one_score(s, net, has_head, feats, probs, x, y, probes, proj_dim, seed, reference_rdm,
                                source, min_class_count, target_counts)
        except UndefinedScoreError as e:
            out[s] = None
            if undefined is not None:
                undefined[s] = str(e)
    return out


def _one_score(s: str, net: ResNet, has_head: bool, feats: np.ndarray, probs: np.ndarray | None, x, y: np.ndarray,
               probes: int, proj_dim: int | None, seed: int, reference_rdm: np.ndarray | None,
               source: tuple | None, min_class_count: int, target_counts: dict[int, int] | None) -> float | None:
    """Score ``s`` of one model (see ``score_model``)."""
    if s in HEAD_SCORES and not has_head:
        return None
    if s == "lfc":
        return lfc(feats, y)
    if s == "logme":
        return logme(feats, y)
    if s == "h_score":
        return h_score(feats, y)
    if s == "leep":
        return leep(probs, y)
    if s == "nce":
        return nce(probs.argmax(1), y)
    if s == "lgc":
        return lgc(lgc_gradients(net, x, probes, proj_dim, seed), y, proj_dim=None)
    if s == "domain_similarity":
        if source is None:
            raise ValueError("domain_similarity needs the model's source images (--source-data)")
        src_feats = extract(net, source[0], has_head=False)[0]
        return domain_similarity(src_feats, source[1], feats, y, gamma=0.01, min_class_count=min_class_count,
                                 source_counts=source[2], target_counts=target_counts)
    if s == "rsa":
        if reference_rdm is None:
            raise ValueError("rsa needs the features of a network trained on the target (--rsa-reference)")
        return correlate_rdms(rdm_entries(feats, "features"), reference_rdm)
    raise ValueError(f"unknown score {s!r}; choose from {', '.join(ALL_SCORES)}")


def parse_named(items: Sequence[str], names: Sequence[str], option: str = "--accuracies",
                convert: Callable[[str], Any] = float, what: str = "a number") -> dict[str, Any]:
    """``NAME=VALUE`` items -> {checkpoint as given: convert(VALUE)}; NAME is the checkpoint as given or any trailing
    part of its path, with or without the file suffix (``src1/model.pt``, ``model``), as long as it names one only.
    Given at all, every checkpoint needs a value."""
    owners: dict[str, set[str]] = {}
    for n in names:
        parts = Path(n).parts
        for d in range(1, len(parts) + 1):
            tail = "/".join(parts[-d:])
            for alias in (tail, str(Path(tail).with_suffix("")) if Path(tail).suffix else tail):
                owners.setdefault(alias, set()).add(n)
        owners.setdefault(n, set()).add(n)
    lookup = {alias: next(iter(o)) for alias, o in owners.items() if len(o) == 1}
    out: dict[str, Any] = {}
    for item in items:
        splits = [(item[:i], item[i + 1:]) for i, ch in enumerate(item) if ch == "="]
        if not splits or not splits[0][0]:
            raise ValueError(f"{option} item {item!r} is not NAME=VALUE")
        # a name or a value may hold "=" (a path like runs/lr=0.1/data): the first split with a known name wins
        key, val = next(((k, v) for k, v in splits if k in lookup), splits[0])
        if key not in lookup:
            why = "names several --zoo checkpoints" if key in owners else "is not one of the --zoo checkpoints"
            raise ValueError(f"{option} names {key!r}, which {why}")
        try:
            out[lookup[key]] = convert(val)
        except ValueError:
            raise ValueError(f"{option} item {item!r}: {val!r} is not {what}") from None
    missing = [n for n in names if n not in out]
    if out and missing:
        raise ValueError(f"{option} has no value for {missing[0]!r}")
    return out


def parse_accuracies(items: Sequence[str], names: Sequence[str]) -> dict[str, float]:
    """``--accuracies`` items ``NAME=ACC`` -> {checkpoint as given: accuracy} (:func:`parse_named`)."""
    return parse_named(items, names, "--accuracies", float, "a number")


def judge(table: dict[str, dict[str, float | None]], accuracies: dict[str, float], scores: Sequence[str],
          top_k: int = 3) -> dict[str, dict[str, Any]]:
    """Per score: Spearman with the accuracies, trials to the best model, best accuracy in the top-k."""
    out = {}
    for s in scores:
        vals = {n: row[s] for n, row in table.items() if row.get(s) is not None}
        if len(vals) < 2 or len(vals) != len(accuracies):
            out[s] = {"spearman": None, "trials_to_best": None, f"best_of_top_{top_k}": None}
            continue
        acc = {n: accuracies[n] for n in vals}
        rho = spearman(vals, acc)
        out[s] = {"spearman": None if math.isnan(rho) else rho, "trials_to_best": trials_to_best(vals, acc),
                  f"best_of_top_{top_k}": best_of_top_k(vals, acc, top_k)}
    return out


def run_selection(data: str, zoo: Sequence[str], arch: str, *, width: int = 16, per_class: int = 25,
                  image_size: int = 224, crop_pct: float = 0.875, scores: Sequence[str] = SCORES,
                  probes: int = 10, proj_dim: int | None = 10000, seed: int = 0,
                  accuracies: Sequence[str] = (), sha256: Sequence[str] = (), device: str = "cpu",
                  rsa_reference: str | None = None, rsa_arch: str = "resnet18", rsa_width: int = 16,
                  rsa_sha256: str | None = None, source_data: Sequence[str] = (),
                  min_class_count: int = 5) -> dict[str, Any]:
    """Scores, rankings and (with accuracies) their judgement; raises DataError / CheckpointError / ValueError.

    ``rsa`` needs ``rsa_reference``: the state_dict of a network of ``rsa_arch`` trained on the target task (the
    paper's "small network", a ResNet-18 fine-tuned on the target; e.g. a ``classify --method scratch`` run's
    ``model.pt``); its penultimate features on the same sampled images are the reference RDM's.
    ``domain_similarity`` (Cui et al. 2018) needs ``source_data``: ``NAME=DATA`` items naming each checkpoint's own
    training data (a data set as ``--data``; its train split is sampled like the target's, ``per_class`` images
    per class with ``seed``, for the class means); each class weighs its share of its whole train split, and
    classes with fewer than ``min_class_count`` images there are left out (5 in the model-selection paper,
    App. C); gamma = 0.01 as Cui et al.
    A score undefined for one model (constant features: see ``score_model``) is None in ``scores`` and its reason
    is in ``undefined`` ({model: {score: reason}}, only when there is one); that model is left out of the score's
    ranking, and the score is not judged (as leep for a headless model).
    """
    for name, a in (("--arch", arch), ("--rsa-arch", rsa_arch)):
        if a not in ARCHS:
            raise ValueError(f"unknown {name} {a!r}; choose from {', '.join(ARCHS)}")
    unknown = [s for s in scores if s not in ALL_SCORES]
    if unknown:
        raise ValueError(f"unknown score {unknown[0]!r}; choose from {', '.join(ALL_SCORES)}")
    sources = parse_named(source_data, zoo, "--source-data", str, "a path")
    if "domain_similarity" in scores and not sources:
        raise ValueError("score domain_similarity needs --source-data NAME=DATA for every --zoo checkpoint (the data "
                         "each model was trained on)")
    if "rsa" in scores and rsa_reference is None:
        raise ValueError("score rsa needs --rsa-reference: a network trained on the target task (e.g. the "
                         "model.pt of a classify --method scratch run)")
    if not zoo:
        raise ValueError("--zoo needs at least one checkpoint")
    if sha256 and len(sha256) != len(zoo):
        raise ValueError(f"--sha256 needs one digest per --zoo checkpoint ({len(zoo)}), got {len(sha256)}")
    acc = parse_accuracies(accuracies, zoo)
    full = open_split(data, "train")
    split = sample_per_class(full, per_class, seed)
    if len(set(split.labels)) < 2:
        raise DataError(f"{data}: the train split has fewer than 2 classes")
    ds = ImageDataset(split, EvalTransform(image_size, crop_pct))
    dev = pick_device(device)
    x, y = ImageBatches(ds, dev), np.asarray(split.labels)
    nets = [load_source(p, arch, width, sha256[i] if sha256 else None) for i, p in enumerate(zoo)]
    ref = ref_rdm = None
    if "rsa" in scores:
        ref_net, _ = load_source(rsa_reference, rsa_arch, rsa_width, rsa_sha256)
        ref = extract(ref_net.to(dev), x, has_head=False)[0]
        try:                                    # a degenerate reference would leave rsa undefined for every model
            ref_rdm = rdm_entries(ref, "its features")
        except ValueError as e:                 # UndefinedScoreError, or features with NaN / inf
            raise ValueError(f"--rsa-reference {rsa_reference} cannot serve as RSA's reference: {e}") from None
    source_images = {}
    if "domain_similarity" in scores:
        for p, d in sources.items():
            src_full = open_split(d, "train")
            src = sample_per_class(src_full, per_class, seed)
            source_images[p] = (ImageBatches(ImageDataset(src, EvalTransform(image_size, crop_pct)), dev),
                                np.asarray(src.labels), class_counts(src_full))
    target_counts = class_counts(full)
    table, undefined = {}, {}
    for p, (net, has_head) in zip(zoo, nets):
        undefined[p] = {}
        table[p] = score_model(net.to(dev), has_head, x, y, scores, probes, proj_dim, seed, ref_rdm,
                               source_images.get(p), min_class_count, target_counts, undefined[p])
    rankings = {s: rank_models({n: row[s] for n, row in table.items() if row[s] is not None}) for s in scores
                if any(row[s] is not None for row in table.values())}
    result = {"scores": table, "rankings": rankings, "n_samples": len(y), "n_classes": len(set(y.tolist())),
              "per_class": per_class, "last_conv": last_conv_name(nets[0][0])}
    if any(undefined.values()):
        result["undefined"] = {p: why for p, why in undefined.items() if why}
    if ref is not None:
        result["rsa_reference"] = {"path": rsa_reference, "arch": rsa_arch, "feature_dim": int(ref.shape[1])}
    if acc:
        result["accuracies"] = acc
        result["judgement"] = judge(table, acc, scores)
    return result
