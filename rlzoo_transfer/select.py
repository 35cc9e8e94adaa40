"""Rank a zoo of pretrained ResNets for a target task before any fine-tuning (Deshpande et al. 2021).

    python -m rlzoo_transfer.select --data DIR --zoo a.pt b.pt c.pt --arch resnet50 \
        [--accuracies a.pt=81.2 b.pt=79.0 c.pt=83.4] [--out ranking.json]

Protocol (model-selection paper, Sec. 3.3 and App. D): at most ``--per-class`` 25 training images per class
(seeded sample; the test split is never read), preprocessed as at test time (resize + centre crop, no
augmentation); every score is computed per model from quantities extracted once:

* ``lfc``, ``logme``, ``h_score``: the penultimate-layer features (after global average pooling, before ``fc``);
* ``leep``, ``nce``: the source classifier's probabilities / arg-max labels (needs the checkpoint's ``fc``);
* ``lgc``: per-sample gradients of the source output with respect to the weights of the last conv layer of the
  main path (``layer4.1.conv2`` for ResNet-18, ``layer4.2.conv3`` for ResNet-50, ``layer3.0.conv2`` for small).
  The source output is a vector f(x) (one logit per source class) and the paper's kernel
  Theta_ij = grad f(x_i) . grad f(x_j) is taken as the sum over output units (the trace of the empirical NTK):
  the gradient vector is the concatenation of grad f_c(x) over the source classes c when there are at most
  ``--lgc-probes`` (10) of them, else of grad (v_r . f(x)) / sqrt(R) over R = ``--lgc-probes`` seeded Gaussian
  probes v_r (an unbiased estimate of the same kernel).  Vectors longer than ``--proj-dim`` (10k, as in the
  paper) are reduced by a seeded count-sketch (sparse Johnson-Lindenstrauss projection: each coordinate added
  with a random sign to one of 10k buckets; inner products preserved in expectation, O(P) per gradient instead
  of the O(P x 10k) of a dense Gaussian matrix, which for ResNet-50's 1M-weight last conv would not fit).
* ``rsa`` (Representation Similarity Analysis, the paper's eq. 9-11; only with ``--rsa-reference``): the
  Spearman correlation between the upper triangles of two representation dissimilarity matrices
  ``1 - correlation(f(x_i), f(x_j))`` over the sampled images, one from the candidate's penultimate features and
  one from a reference network trained on the target task (the paper trains a ResNet-18 on the target: here any
  ``--rsa-arch`` state_dict, e.g. the ``model.pt`` of ``classify --method scratch``).
* ``domain_similarity`` (Cui et al. 2018; only with ``--source-data``): ``exp(-0.01 EMD)`` between the class
  means of the model's features on its own (sampled) source images and on the target's, each class weighted by
  its share of its data set's train split; classes with fewer than ``--min-class-count`` (5, the paper's App. C)
  images there are left out.

Checkpoints without a classifier head (e.g. MoCo or detection backbones) get ``null`` for leep, nce and lgc.
With ``--accuracies`` (measured fine-tuning accuracies, keyed by the checkpoint as given, its file name or its
stem) each score's ranking is judged by its Spearman correlation with the accuracies, the number of models
fine-tuned in score order before reaching the best one (trials to best, Fig. 6a), and the best accuracy among
its top 3 (Fig. 4); a score that some model lacks (leep, nce and lgc when one checkpoint has no head) is not
judged (``null``), since over a subset of the zoo its correlation would not compare with the other scores'.  A
score that is undefined for a degenerate model (all-zero or constant features, e.g. a collapsed network) is
``null`` for that model in the same way, with a note on stderr saying why; the other models are still ranked.
Bad input is one line on stderr and exit status 2.

This module is the CLI (torch-free until its arguments parse: ``--help`` answers at once); the scores' inputs
and the ranking are vision/model_selection.py's, the scores themselves selection/'s.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Sequence

from rlzoo_transfer.config import seed_arg
from rlzoo_transfer.outputs import check_outputs
from rlzoo_transfer.stop import one_line_interrupt
from rlzoo_transfer.vision.options import ALL_SCORES, ARCHS, SCORES, OneLineParser, UsageError, check_ranges


def display_names(paths: Sequence[str]) -> dict[str, str]:
    """The shortest trailing part of each path that tells the paths apart (``a/model.pt``, ``b/model.pt``)."""
    parts = {p: Path(p).parts for p in paths}
    for depth in range(1, max(len(v) for v in parts.values()) + 1):
        names = {p: "/".join(v[-depth:]) for p, v in parts.items()}
        if len(set(names.values())) == len(names):
            return names
    return {p: p for p in paths}


def format_table(result: dict[str, Any]) -> str:
    table, scores = result["scores"], list(next(iter(result["scores"].values())))
    short = display_names(list(table))
    name_w = max(len(v) for v in short.values()) + 2
    lines = ["model".ljust(name_w) + "".join(s.rjust(12) for s in scores)
             + ("accuracy".rjust(12) if "accuracies" in result else "")]
    for n, row in table.items():
        cells = "".join(("-" if row[s] is None else f"{row[s]:.4f}").rjust(12) for s in scores)
        accs = f"{result['accuracies'][n]:.4f}".rjust(12) if "accuracies" in result else ""
        lines.append(short[n].ljust(name_w) + cells + accs)
    for s, order in result["rankings"].items():
        lines.append(f"ranking by {s}: " + " > ".join(short[n] for n in order))
    for s, j in result.get("judgement", {}).items():
        rho = "n/a" if j["spearman"] is None else f"{j['spearman']:+.3f}"
        lines.append(f"{s}: spearman {rho}, trials to best {j['trials_to_best']}, best of top 3 {j['best_of_top_3']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m rlzoo_transfer.select",
                      description="Rank zoo checkpoints for a target task with model-selection scores.")
    p.add_argument("--data", required=True, help="ImageFolder-style DIR or CSV list (its train split is sampled)")
    p.add_argument("--zoo", nargs="+", required=True, help="torchvision-format state_dicts of --arch")
    p.add_argument("--arch", default="resnet50", help=f"one of {', '.join(ARCHS)} (default resnet50)")
    p.add_argument("--width", type=int, default=16, help="base width of --arch small")
    p.add_argument("--sha256", nargs="*", default=[])
    p.add_argument("--per-class", type=int, default=25, help="samples per class (default 25)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--crop-pct", type=float, default=0.875)
    p.add_argument("--scores", nargs="+", default=None,
                   help=f"any of {', '.join(ALL_SCORES)} (default all; rsa when --rsa-reference is given, "
                   "domain_similarity when --source-data is)")
    p.add_argument("--lgc-probes", type=int, default=10, help="output probes for LGC's gradients (default 10)")
    p.add_argument("--proj-dim", type=int, default=10000, help="LGC projection dimension (0: none)")
    p.add_argument("--rsa-reference", default=None, help="for rsa: state_dict of a network trained on the target "
                   "task (e.g. a classify --method scratch run's model.pt)")
    p.add_argument("--rsa-arch", default="resnet18", help="--rsa-reference's architecture (default resnet18, the "
                   "paper's)")
    p.add_argument("--rsa-width", type=int, default=16, help="base width of --rsa-arch small")
    p.add_argument("--rsa-sha256", default=None, help="expected sha256 of --rsa-reference")
    p.add_argument("--source-data", nargs="*", default=[], help="for domain_similarity: NAME=DATA, the data each "
                   "--zoo checkpoint was trained on (DIR or CSV as --data; its train split is sampled)")
    p.add_argument("--min-class-count", type=int, default=5,
                   help="domain_similarity: leave out classes with fewer sampled images (default 5, the paper's)")
    p.add_argument("--accuracies", nargs="*", default=[], help="measured fine-tune accuracies NAME=ACC")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    return p


@one_line_interrupt
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_outputs(parser, args, files=("out",))
    if args.scores is None:
        args.scores = list(SCORES) + (["rsa"] if args.rsa_reference else []) + \
            (["domain_similarity"] if args.source_data else [])
    for option, given, score in (("--rsa-reference", args.rsa_reference, "rsa"),
                                 ("--source-data", args.source_data, "domain_similarity")):
        if given and score not in args.scores:
            print(f"note: {option} is not used: {score} is not among --scores", file=sys.stderr)
    from rlzoo_transfer.config import resolve_device
    from rlzoo_transfer.vision.data import DataError
    from rlzoo_transfer.vision.model_selection import run_selection
    from rlzoo_transfer.vision.resnet import CheckpointError
    from rlzoo_transfer.vision.runtime import environment, write_json

    try:
        args.device = resolve_device(args.device)
        check_ranges(args, positive=("per_class", "image_size", "width", "rsa_width", "crop_pct", "lgc_probes",
                                     "min_class_count"),
                     non_negative=("proj_dim",))
        result = run_selection(args.data, args.zoo, args.arch, width=args.width, per_class=args.per_class,
                               image_size=args.image_size, crop_pct=args.crop_pct, scores=args.scores,
                               probes=args.lgc_probes, proj_dim=args.proj_dim or None, seed=args.seed,
                               accuracies=args.accuracies, sha256=args.sha256, device=args.device,
                               rsa_reference=args.rsa_reference, rsa_arch=args.rsa_arch, rsa_width=args.rsa_width,
                               rsa_sha256=args.rsa_sha256, source_data=args.source_data,
                               min_class_count=args.min_class_count)
    except (DataError, CheckpointError, ValueError, FileNotFoundError, UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    short = display_names(args.zoo)
    for model, why in result.get("undefined", {}).items():
        for score, reason in why.items():
            print(f"note: {score} is undefined for {short[model]} ({reason}); shown as -, left out of its ranking",
                  file=sys.stderr)
    print(format_table(result))
    if args.out:
        write_json(args.out, result | {"config": vars(args), "environment": environment()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
