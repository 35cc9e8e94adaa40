"""Why domain similarity ranks the random-label source first in the digits experiment (eval/vision.md).

Domain similarity is exp(-0.01 EMD) between a model's class-mean features on its source data and on the target
(Cui et al. 2018).  When a network's features hardly separate the classes, all its class means sit near one point
on both domains, the EMD between the two sets is small and the score high, however badly the network transfers.
This measures, for each source of the experiment, how far its class means spread (mean distance of the class means
from their centroid) against the spread of images around their own class mean, on its own training images and on
seed 0's target, with the same sample as ``select`` (25 images per class, seed 0) and the source's penultimate
features.

    .venv/bin/python eval/diagnostics/class_mean_spread.py [WORK]   # WORK: the experiment's --work
                                                                   # (default runs/vision_experiment)

It writes eval/diagnostics/class_mean_spread.md; the experiment must have run with that --work first.
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch

from rlzoo_transfer.atomic import write_atomic
from rlzoo_transfer.provenance import git_commit, versions
from rlzoo_transfer.vision.data import EvalTransform, ImageDataset, open_split
from rlzoo_transfer.vision.digits_experiment import SOURCES
from rlzoo_transfer.vision.model_selection import extract, load_source, sample_per_class


def spreads(net, data: Path) -> tuple[float, float]:
    """(mean distance of the class means from their centroid, mean distance of images from their class mean)."""
    split = sample_per_class(open_split(data, "train"), 25, seed=0)
    x = torch.stack([ImageDataset(split, EvalTransform(8, 1.0))[i][0] for i in range(len(split))])
    f, y = extract(net, x, has_head=False)[0], np.asarray(split.labels)
    means = np.stack([f[y == c].mean(0) for c in np.unique(y)])
    within = np.mean([np.linalg.norm(f[y == c] - f[y == c].mean(0), axis=1).mean() for c in np.unique(y)])
    return float(np.linalg.norm(means - means.mean(0), axis=1).mean()), float(within)


def main(work: Path) -> None:
    torch.set_num_threads(1)
    rows = []
    for name in SOURCES:
        net, _ = load_source(str(work / "sources" / name / "run" / "model.pt"), "small", 16)
        (s_b, s_w), (t_b, t_w) = spreads(net, work / "sources" / name / "data"), spreads(net, work / "target_seed0")
        rows.append(f"| {name} | {s_b:.2f} | {s_w:.2f} | {t_b:.2f} | {t_w:.2f} |")
    text = "\n".join([
        "# Class-mean spread of the digits experiment's sources", "",
        f"`.venv/bin/python eval/diagnostics/class_mean_spread.py {work}`, commit {git_commit()}, "
        f"{time.strftime('%Y-%m-%d')}, versions {versions()}.", "",
        "Penultimate features of each source on 25 images per class (seed 0) of its own training data and of seed 0's "
        "target: the mean distance of the class means from their centroid (between) and of the images from their "
        "own class mean (within).", "",
        "| source | own data: between | own data: within | target: between | target: within |",
        "|---|---|---|---|---|", *rows, ""])
    write_atomic(Path(__file__).with_suffix(".md"), text)
    print(text)


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/vision_experiment"))
