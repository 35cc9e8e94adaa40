"""Does the official Zoo-Tuning code's network set-up change the digits experiment's zoo results (eval/vision.md)?

The paper describes channel alignment T in every AdaAgg layer and says nothing of BatchNorm's running statistics;
the official ResNet-50 uses T only in the stem and the last two stages and resets the running statistics to 0 / 1.
``classify`` follows the paper by default and the official code with ``--align-stages official --bn-stats reset``.
This re-runs the experiment's zoo, zoo-lite and zoo-avg fine-tunings on its five targets with the same sources and
settings under the four combinations; the default combination must reproduce eval/vision/results.json's top-1
exactly (checked), so the other three differ from it by their option only.

    OMP_NUM_THREADS=1 .venv/bin/python eval/diagnostics/zoo_official_recipe.py [WORK]   # WORK: the experiment's
                                                                                     # --work (runs/vision_experiment)

It writes eval/diagnostics/zoo_official_recipe.md and .json; the experiment (eval/vision) must have run with that
--work first, and its sources must be the published ones (their sha256 are checked against results.json).
"""
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from rlzoo_transfer.atomic import write_atomic
from rlzoo_transfer.provenance import git_commit, versions
from rlzoo_transfer.vision.classification import run_classification
from rlzoo_transfer.vision.classify import ClassifyConfig
from rlzoo_transfer.vision.digits_experiment import ZOO, common
from rlzoo_transfer.vision.resnet import sha256_of

EVAL = Path(__file__).resolve().parents[1] / "vision"
METHODS = ("zoo", "zoo-lite", "zoo-avg")
VARIANTS = {"paper (default)": ("all", "average"), "official T": ("official", "average"),
            "BN reset": ("all", "reset"), "official T + BN reset": ("official", "reset")}


def main(work: Path) -> None:
    torch.set_num_threads(1)
    published = json.loads((EVAL / "results.json").read_text())
    args = SimpleNamespace(**json.loads((EVAL / "config.json").read_text())["config"]["args"])
    zoo = [work / "sources" / s / "run" / "model.pt" for s in ZOO]
    for s, path in zip(ZOO, zoo):
        if sha256_of(path) != published["sources"][s]["sha256"]:
            sys.exit(f"{path}: not the source eval/vision/results.json was made with (sha256 differs)")
    top1: dict = {m: {v: [] for v in VARIANTS} for m in METHODS}
    t0 = time.perf_counter()
    for seed in args.seeds:
        for method in METHODS:
            for variant, (stages, bn) in VARIANTS.items():      # the default first: checked before the others
                out = work / "official_recipe" / f"seed{seed}" / f"{method}_{stages}_{bn}"
                r = run_classification(ClassifyConfig(
                    data=str(work / f"target_seed{seed}"), zoo=[str(p) for p in zoo], method=method,
                    iters=args.iters, lr=args.lr, seed=seed, out=str(out), align_stages=stages, bn_stats=bn,
                    **common(args)))
                top1[method][variant].append(r["top1"])
                print(f"seed {seed} {method:8s} {variant:22s} top-1 {r['top1']:6.2f}", flush=True)
                want = published["runs"][str(seed)][method]["top1"]
                if variant == "paper (default)" and r["top1"] != want:
                    sys.exit(f"seed {seed} {method}: the default gave {r['top1']}, eval/vision has {want}: not the "
                             "published set-up; nothing written")
    rows = []
    for method in METHODS:
        base = np.array(top1[method]["paper (default)"])
        for variant, vals in top1[method].items():
            v = np.array(vals)
            d = round(float((v - base).mean()), 2) + 0.0          # + 0.0: no "-0.00"
            diff = "" if variant == "paper (default)" else f"{d:+.2f} ({int((v > base).sum())} / " \
                f"{int((v < base).sum())})"
            spread = f" +- {v.std():.2f}" if len(v) > 1 else ""      # std with 1/n, as eval/vision.md's
            rows.append(f"| {method} | {variant} | {v.mean():.2f}{spread} | "
                        f"{', '.join(f'{x:.2f}' for x in v)} | {diff} |")
    seconds = time.perf_counter() - t0
    text = "\n".join([
        "# Zoo-Tuning's official network set-up on the digits experiment", "",
        f"`OMP_NUM_THREADS=1 .venv/bin/python eval/diagnostics/zoo_official_recipe.py {work}`, commit {git_commit()}, "
        f"{time.strftime('%Y-%m-%d')}, {seconds:.0f} s, versions {versions()}.", "",
        f"The experiment's zoo fine-tunings (same {len(args.seeds)} targets, sources and settings as eval/vision.md: "
        f"{args.shots} images per class, {args.iters} iterations) with T in every stage or only in the stem and "
        "the last two (`--align-stages "
        "official`: for this 3-stage ResNet, every stage but the first), and BatchNorm running statistics "
        "averaged over the sources or reset to 0 / 1 (`--bn-stats reset`). The default row reproduces "
        "eval/vision/results.json's top-1 exactly (checked by the script). Top-1 % on each target's test split, "
        f"mean +- std over the {len(args.seeds)} seeds; the difference to the default is the mean over seeds "
        "(seeds better / worse).",
        "", "| method | set-up | top-1 | per seed | vs default |", "|---|---|---|---|---|", *rows, "",
        "Why `--bn-stats reset` can change nothing here: training normalises with each batch's own statistics, and "
        "the running statistics evaluation uses are an exponential average with momentum 0.1 that the "
        f"{args.iters} iterations refresh {args.iters} times (the start keeps a weight of 0.9^{args.iters} = "
        f"{0.9 ** args.iters:.0e}), so only an evaluation early in fine-tuning could tell the two apart.", ""])
    write_atomic(Path(__file__).with_suffix(".md"), text)
    write_atomic(Path(__file__).with_suffix(".json"), json.dumps(
        {"top1": top1, "seeds": args.seeds, "commit": git_commit(), "versions": versions(), "seconds": seconds,
         "work": str(work)}, indent=1) + "\n")
    print(text)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/vision_experiment"))
