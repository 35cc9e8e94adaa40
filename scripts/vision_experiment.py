"""Offline zoo-transfer experiment on scikit-learn's digits: pretrain a zoo of small ResNets on disjoint parts of
digits, transfer them to a held-out few-shot 10-way task, compare the transfer methods side by side, and judge
the model-selection scores against the measured fine-tuning accuracies.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/vision_experiment.py --out eval/vision

Design (all sizes are options; the defaults are what eval/vision.md reports):

* digits (1797 real 8x8 images) is split once (``--data-seed``) into a SOURCE pool and a TARGET pool (half each);
  no image is in both.
* Sources: ``small`` ResNets (CIFAR-style, width 16, one BasicBlock per stage) trained from scratch on parts
  of the source pool: A = classes 0-3, B = 4-6, C = 7-9 (disjoint label sets), D = 0-1, E = even digits, and
  R = all source images with randomly permuted labels (a deliberately poor source).  85% of each source's
  images train it, 15% measure its own accuracy.
* Target task (per seed): all 10 classes, ``--shots`` (10) labelled images per class drawn from the target pool
  with that seed; the test set is the rest of the target pool (~800 images).
* Methods (vision/zoo.py), each fine-tuned with the papers' recipe scaled down: SGD lr 0.01, momentum 0.9,
  batch 48, ``--iters`` (300) iterations with lr x0.1 at 40% and 80%, random-resized crops (area 0.7-1) of the
  8x8 images, no flips: scratch, single (each of the six sources), and over the zoo {A, B, C}: zoo, zoo-lite,
  zoo-avg, ensemble, hub.
* Selection (rlzoo_transfer.select, per seed): LFC, LGC, LEEP, NCE, LogME, H-score of the six sources on the
  target training images, judged against the single-source fine-tuning accuracies of the same seed.

Everything runs in this process with the package's own functions (``run_classification``, ``run_selection``),
the same code the CLIs run.  Writes ``OUT/results.json`` (every number), ``OUT/config.json`` (resolved
configuration, seeds, package versions, ``git rev-parse HEAD``) and ``OUT/summary.md`` (the tables); the
images and run folders go to ``--work`` (default runs/vision_experiment, not committed).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rlzoo_transfer.select import run_selection  # noqa: E402
from rlzoo_transfer.selection import rank_models, spearman, trials_to_best  # noqa: E402
from rlzoo_transfer.vision.classify import ClassifyConfig, run_classification  # noqa: E402
from rlzoo_transfer.vision.runtime import environment, write_json  # noqa: E402
from rlzoo_transfer.vision.data import digits_images, write_image_folder  # noqa: E402

SOURCES = {                      # name -> classes of the source pool it is trained on ("random": permuted labels)
    "A_0-3": [0, 1, 2, 3],
    "B_4-6": [4, 5, 6],
    "C_7-9": [7, 8, 9],
    "D_0-1": [0, 1],
    "E_even": [0, 2, 4, 6, 8],
    "R_random": "random",
}
ZOO = ["A_0-3", "B_4-6", "C_7-9"]
ZOO_METHODS = ["zoo", "zoo-lite", "zoo-avg", "ensemble", "hub"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="eval/vision")
    p.add_argument("--work", default="runs/vision_experiment")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--shots", type=int, default=10, help="labelled target images per class")
    p.add_argument("--iters", type=int, default=300, help="fine-tuning iterations")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--source-iters", type=int, default=600)
    p.add_argument("--source-lr", type=float, default=0.05)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--crop-scale", type=float, nargs=2, default=[0.7, 1.0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--summarise", action="store_true",
                   help="only rewrite OUT/summary.md from OUT/results.json (no training)")
    return p.parse_args(argv)


def common(args) -> dict:
    return dict(arch="small", width=args.width, image_size=8, crop_scale=tuple(args.crop_scale), crop_pct=1.0,
                batch_size=48, momentum=0.9, tensorboard=False, progress=False, save_every=10**9, log_every=25)


def make_data(args, work: Path) -> dict:
    """Write the source folders and return the pools."""
    x, y = digits_images()
    rng = np.random.default_rng(args.data_seed)
    perm = rng.permutation(len(y))
    source_pool, target_pool = perm[: len(y) // 2], perm[len(y) // 2:]
    info = {"n_images": int(len(y)), "source_pool": int(len(source_pool)), "target_pool": int(len(target_pool))}
    for name, classes in SOURCES.items():
        d = work / "sources" / name / "data"
        shutil.rmtree(d, ignore_errors=True)
        if classes == "random":
            idx = source_pool.copy()
            labels = np.random.default_rng(args.data_seed + 1).permutation(y[idx])
        else:
            idx = source_pool[np.isin(y[source_pool], classes)]
            labels = y[idx]
        order = np.random.default_rng(args.data_seed + 2).permutation(len(idx))
        n_train = int(round(0.85 * len(idx)))
        tr, te = order[:n_train], order[n_train:]
        write_image_folder(d, "train", x[idx[tr]], labels[tr])
        write_image_folder(d, "test", x[idx[te]], labels[te])
        info[name] = {"classes": classes, "n_train": int(len(tr)), "n_test": int(len(te))}
    return {"x": x, "y": y, "target_pool": target_pool, "info": info}


def make_target(args, data: dict, seed: int, work: Path) -> Path:
    x, y, pool = data["x"], data["y"], data["target_pool"]
    rng = np.random.default_rng(1000 + seed)
    train = np.concatenate([rng.choice(pool[y[pool] == c], args.shots, replace=False) for c in range(10)])
    test = np.setdiff1d(pool, train)
    d = work / f"target_seed{seed}"
    shutil.rmtree(d, ignore_errors=True)
    write_image_folder(d, "train", x[train], y[train])
    write_image_folder(d, "test", x[test], y[test])
    return d


def summarise(results: dict, args) -> str:
    seeds = args.seeds
    rows = ["scratch"] + [f"single:{s}" for s in SOURCES] + ZOO_METHODS
    lines = [f"Top-1 (%) on the held-out target test set, {args.shots} shots per class, {args.iters} iterations, "
             f"seeds {seeds} (mean +- std over seeds; per-seed values in results.json).", "",
             "| method | sources | top-1 mean | std | min | max | train s (mean) | params (inference) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        vals = [results["runs"][str(s)][r]["top1"] for s in seeds]
        secs = [results["runs"][str(s)][r]["train_seconds"] for s in seeds]
        src = r.split(":")[1] if r.startswith("single:") else ("-" if r == "scratch" else "A, B, C")
        name = "single" if r.startswith("single:") else r
        params = results["runs"][str(seeds[0])][r]["params_inference"]
        lines.append(f"| {name} | {src} | {np.mean(vals):.2f} | {np.std(vals):.2f} | {min(vals):.2f} | "
                     f"{max(vals):.2f} | {np.mean(secs):.1f} | {params:,} |")
    lines += ["", "Paired by seed, against the single fine-tunings of the same zoo {A, B, C} (top-1 points):", "",
              "| method | minus mean of singles A, B, C | minus best single of the seed | seeds above the best single |",
              "| --- | --- | --- | --- |"]
    for m in ["scratch"] + ZOO_METHODS:
        d_mean, d_best = [], []
        for sd in seeds:
            singles = [results["runs"][str(sd)][f"single:{z}"]["top1"] for z in ZOO]
            v = results["runs"][str(sd)][m]["top1"]
            d_mean.append(v - np.mean(singles))
            d_best.append(v - max(singles))
        lines.append(f"| {m} | {np.mean(d_mean):+.2f} +- {np.std(d_mean):.2f} | {np.mean(d_best):+.2f} +- "
                     f"{np.std(d_best):.2f} | {sum(d > 0 for d in d_best)}/{len(seeds)} |")
    lines += ["", "Source networks (accuracy on their own held-out 15%):", "",
              "| source | classes | own test top-1 |", "| --- | --- | --- |"]
    for s in SOURCES:
        lines.append(f"| {s} | {SOURCES[s]} | {results['sources'][s]['top1']:.2f} |")
    scores = list(next(iter(results["selection"].values()))["judgement"])
    lines += ["", "Model selection over the six sources, judged against the single-source fine-tuning accuracies "
              "of the same seed:", "",
              "| score | Spearman mean | Spearman per seed | trials to best (per seed) | top-1 pick = best single |",
              "| --- | --- | --- | --- | --- |"]
    for sc in scores:
        rho = [results["selection"][str(s)]["judgement"][sc]["spearman"] for s in seeds]
        ttb = [results["selection"][str(s)]["judgement"][sc]["trials_to_best"] for s in seeds]
        hits = sum(t == 1 for t in ttb)
        rho_s = ", ".join("n/a" if v is None else f"{v:+.2f}" for v in rho)
        valid = [v for v in rho if v is not None]
        lines.append(f"| {sc} | {np.mean(valid):+.3f} | {rho_s} | {ttb} | {hits}/{len(seeds)} |")
    lines += ["", "Mean score per source (over seeds) beside its mean single fine-tuning top-1:", "",
              "| source | " + " | ".join(scores) + " | single top-1 |", "| --- |" + " --- |" * (len(scores) + 1)]
    for s in SOURCES:
        cells = []
        for sc in scores:
            vals = [results["selection"][str(sd)]["scores"][s][sc] for sd in seeds]
            cells.append(f"{np.mean(vals):.4f}")
        acc = np.mean([results["runs"][str(sd)][f"single:{s}"]["top1"] for sd in seeds])
        lines.append(f"| {s} | " + " | ".join(cells) + f" | {acc:.2f} |")
    mean_acc = {s: float(np.mean([results["runs"][str(sd)][f"single:{s}"]["top1"] for sd in seeds])) for s in SOURCES}
    lines += ["", "Seed-mean scores against seed-mean single accuracies (less noisy than one seed):", "",
              "| score | Spearman | trials to best | ranking |", "| --- | --- | --- | --- |"]
    for sc in scores:
        ms = {s: float(np.mean([results["selection"][str(sd)]["scores"][s][sc] for sd in seeds])) for s in SOURCES}
        lines.append(f"| {sc} | {spearman(ms, mean_acc):+.3f} | {trials_to_best(ms, mean_acc)} | "
                     f"{' > '.join(rank_models(ms))} |")
    lines.append(f"| (accuracy) | | | {' > '.join(rank_models(mean_acc))} |")
    sd_single = np.mean([np.std([results["runs"][str(sd)][f"single:{s}"]["top1"] for sd in seeds]) for s in SOURCES])
    lines += ["", f"Spread of the six mean single accuracies: {max(mean_acc.values()) - min(mean_acc.values()):.2f} "
              f"points; mean seed-to-seed std of one source: {sd_single:.2f} points.", ""]
    gated = [m for m in ("zoo", "zoo-lite") if "mean_gate" in results["runs"][str(seeds[0])][m]]
    if gated:
        lines += ["Mean gate per source after fine-tuning, averaged over the 9 AdaAgg layers (zoo: batch-mean gate "
                  "on the last test batch; zoo-lite: the temporal-ensemble gate used at inference; raw sigmoids, "
                  "about 0.5 at initialisation):", "", "| method | seed | " + " | ".join(ZOO) + " |",
                  "| --- | --- |" + " --- |" * len(ZOO)]
        for m in gated:
            for sd in seeds:
                g = results["runs"][str(sd)][m]["mean_gate"]
                lines.append(f"| {m} | {sd} | " + " | ".join(f"{v:.3f}" for v in g) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out, work = Path(args.out), Path(args.work)
    if args.summarise:
        results = json.loads((out / "results.json").read_text())
        (out / "summary.md").write_text(summarise(results, args))
        print((out / "summary.md").read_text())
        return 0
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    env = environment()
    data = make_data(args, work)
    config = {"args": vars(args), "sources": SOURCES, "zoo": ZOO, "methods": ["scratch", "single"] + ZOO_METHODS,
              "finetune": common(args) | {"lr": args.lr, "iters": args.iters, "milestones": "40% and 80% of iters",
                                          "weight_decay": 0.0},
              "pretrain": common(args) | {"lr": args.source_lr, "iters": args.source_iters, "weight_decay": 5e-4},
              "data": data["info"]}
    write_json(out / "config.json", {"config": config, "environment": env})
    results: dict = {"sources": {}, "runs": {}, "selection": {}}

    ckpts = {}
    for i, name in enumerate(SOURCES):                                       # 1. pretrain the zoo
        d = work / "sources" / name
        r = run_classification(ClassifyConfig(data=str(d / "data"), method="scratch", iters=args.source_iters,
                                              lr=args.source_lr, weight_decay=5e-4, seed=100 + i, out=str(d / "run"),
                                              **common(args)))
        ckpts[name] = d / "run" / "model.pt"
        results["sources"][name] = {"top1": r["top1"], "sha256": sha256(ckpts[name]),
                                    "train_seconds": r["train_seconds"]}
        print(f"source {name}: own test top-1 {r['top1']:.2f} ({r['train_seconds']:.1f} s)", flush=True)

    for seed in args.seeds:                                                  # 2. transfer, per seed
        target = make_target(args, data, seed, work)
        runs = results["runs"][str(seed)] = {}
        plan = [("scratch", [])] + [(f"single:{s}", [s]) for s in SOURCES] + [(m, ZOO) for m in ZOO_METHODS]
        for label, srcs in plan:
            method = label.split(":")[0]
            r = run_classification(ClassifyConfig(
                data=str(target), zoo=[str(ckpts[s]) for s in srcs], method=method, iters=args.iters, lr=args.lr,
                seed=seed, out=str(work / f"seed{seed}" / label.replace(":", "_")), **common(args)))
            keep = ("top1", "test_nll", "train_seconds", "it_per_s", "first_loss", "final_loss", "params_train",
                    "params_inference", "members_top1")
            runs[label] = {k: r[k] for k in keep if k in r}
            gates = {k: v for k, v in r["gates"].items() if k.startswith("gate/")}
            if gates:
                m = len(srcs)
                runs[label]["mean_gate"] = [float(np.mean([v for k, v in gates.items() if k.endswith(f"/{j}")]))
                                            for j in range(m)]
            print(f"seed {seed} {label:16s} top-1 {r['top1']:6.2f}  ({r['train_seconds']:.1f} s)", flush=True)
        names = list(SOURCES)                                                # 3. selection vs measured accuracy
        sel = run_selection(str(target), [str(ckpts[s]) for s in names], "small", width=args.width, per_class=25,
                            image_size=8, crop_pct=1.0, seed=seed,
                            accuracies=[f"{ckpts[s]}={runs['single:' + s]['top1']}" for s in names])
        rename = {str(ckpts[s]): s for s in names}
        results["selection"][str(seed)] = {
            "scores": {rename[k]: v for k, v in sel["scores"].items()},
            "rankings": {k: [rename[n] for n in v] for k, v in sel["rankings"].items()},
            "judgement": sel["judgement"], "n_samples": sel["n_samples"]}
        write_json(out / "results.json", results)

    results["total_seconds"] = time.perf_counter() - t_start
    write_json(out / "results.json", results)
    summary = summarise(results, args)
    (out / "summary.md").write_text(summary)
    print(summary)
    print(f"total {results['total_seconds']:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
