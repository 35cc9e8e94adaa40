"""The offline digits experiment of ``python -m rlzoo_transfer.vision.experiment`` (its design is described
there): the data split, the zoo's pretraining, each seed's fine-tunings and selection scores, the resumable
results and their summary tables.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from rlzoo_transfer.atomic import write_atomic
from rlzoo_transfer.selection import rank_models, spearman, trials_to_best
from rlzoo_transfer.vision.classification import run_classification
from rlzoo_transfer.vision.classify import ClassifyConfig
from rlzoo_transfer.vision.data import digits_images, write_image_folder
from rlzoo_transfer.vision.model_selection import run_selection
from rlzoo_transfer.vision.options import ALL_SCORES, UsageError, check_ranges
from rlzoo_transfer.vision.resnet import sha256_of as sha256
from rlzoo_transfer.vision.runtime import environment, write_json

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


#: Settings a resumed experiment may change: the rest must equal the recorded ones.
RESUMABLE = ("seeds", "threads", "out", "work", "resume", "summarise")
N_CLASSES = 10


def common(args) -> dict:
    return dict(arch="small", width=args.width, image_size=8, crop_scale=tuple(args.crop_scale), crop_pct=1.0,
                batch_size=48, momentum=0.9, tensorboard=False, progress=False, save_every=10**9, log_every=25)


def split_data(data_seed: int) -> dict:
    """digits split once into the source and target pools (half each, no image in both)."""
    x, y = digits_images()
    perm = np.random.default_rng(data_seed).permutation(len(y))
    return {"x": x, "y": y, "source_pool": perm[: len(y) // 2], "target_pool": perm[len(y) // 2:]}


def write_sources(args, data: dict, work: Path, keep: bool = False) -> dict:
    """Write each source's image folders (85 % train / 15 % test) under ``work/sources/`` - unless ``keep``: a
    resumed run keeps its trained sources and their data - and return the sizes for config.json."""
    x, y, source_pool = data["x"], data["y"], data["source_pool"]
    info = {"n_images": int(len(y)), "source_pool": int(len(source_pool)),
            "target_pool": int(len(data["target_pool"]))}
    for name, classes in SOURCES.items():
        d = work / "sources" / name / "data"
        if classes == "random":
            idx = source_pool.copy()
            labels = np.random.default_rng(args.data_seed + 1).permutation(y[idx])
        else:
            idx = source_pool[np.isin(y[source_pool], classes)]
            labels = y[idx]
        order = np.random.default_rng(args.data_seed + 2).permutation(len(idx))
        n_train = int(round(0.85 * len(idx)))
        tr, te = order[:n_train], order[n_train:]
        if not keep:
            shutil.rmtree(d, ignore_errors=True)
            write_image_folder(d, "train", x[idx[tr]], labels[tr])
            write_image_folder(d, "test", x[idx[te]], labels[te])
        info[name] = {"classes": classes, "n_train": int(len(tr)), "n_test": int(len(te))}
    return info


def make_target(args, data: dict, seed: int, work: Path) -> Path:
    x, y, pool = data["x"], data["y"], data["target_pool"]
    rng = np.random.default_rng(1000 + seed)
    train = np.concatenate([rng.choice(pool[y[pool] == c], args.shots, replace=False) for c in range(N_CLASSES)])
    test = np.setdiff1d(pool, train)
    d = work / f"target_seed{seed}"
    shutil.rmtree(d, ignore_errors=True)
    write_image_folder(d, "train", x[train], y[train])
    write_image_folder(d, "test", x[test], y[test])
    return d


def summarise(results: dict, args) -> str:
    """summary.md: the tables of ``results`` over ``args.seeds``."""
    seeds = args.seeds
    parts = [_methods_table(results, seeds, args), _paired_table(results, seeds), _sources_table(results),
             _selection_tables(results, seeds), _gates_table(results, seeds)]
    return "\n".join(line for part in parts for line in part) + "\n"


def _top1(results: dict, seed: int, label: str) -> float:
    return results["runs"][str(seed)][label]["top1"]


def _methods_table(results: dict, seeds: list[int], args) -> list[str]:
    lines = [f"Top-1 (%) on the held-out target test set, {args.shots} shots per class, {args.iters} iterations, "
             f"seeds {seeds} (mean +- std over seeds; per-seed values in results.json).", "",
             "| method | sources | top-1 mean | std | min | max | train s (mean) | params (inference) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in ["scratch"] + [f"single:{s}" for s in SOURCES] + ZOO_METHODS:
        vals = [_top1(results, s, r) for s in seeds]
        secs = [results["runs"][str(s)][r]["train_seconds"] for s in seeds]
        src = r.split(":")[1] if r.startswith("single:") else ("-" if r == "scratch" else "A, B, C")
        name = "single" if r.startswith("single:") else r
        params = results["runs"][str(seeds[0])][r]["params_inference"]
        lines.append(f"| {name} | {src} | {np.mean(vals):.2f} | {np.std(vals):.2f} | {min(vals):.2f} | "
                     f"{max(vals):.2f} | {np.mean(secs):.1f} | {params:,} |")
    return lines


def _paired_table(results: dict, seeds: list[int]) -> list[str]:
    """Each method minus the single fine-tunings of the zoo's sources, paired by seed."""
    lines = ["", "Paired by seed, against the single fine-tunings of the same zoo {A, B, C} (top-1 points):", "",
             "| method | minus mean of singles A, B, C | minus best single of the seed | seeds above the best single |",
             "| --- | --- | --- | --- |"]
    for m in ["scratch"] + ZOO_METHODS:
        d_mean, d_best = [], []
        for sd in seeds:
            singles = [_top1(results, sd, f"single:{z}") for z in ZOO]
            v = _top1(results, sd, m)
            d_mean.append(v - np.mean(singles))
            d_best.append(v - max(singles))
        lines.append(f"| {m} | {np.mean(d_mean):+.2f} +- {np.std(d_mean):.2f} | {np.mean(d_best):+.2f} +- "
                     f"{np.std(d_best):.2f} | {sum(d > 0 for d in d_best)}/{len(seeds)} |")
    return lines


def _sources_table(results: dict) -> list[str]:
    lines = ["", "Source networks (accuracy on their own held-out 15%):", "",
             "| source | classes | own test top-1 |", "| --- | --- | --- |"]
    for s in SOURCES:
        lines.append(f"| {s} | {SOURCES[s]} | {results['sources'][s]['top1']:.2f} |")
    return lines


def _selection_tables(results: dict, seeds: list[int]) -> list[str]:
    """The selection scores judged per seed, per source, and seed-averaged against the single accuracies."""
    # the scores every seed has (a results.json from before rsa was scored, resumed, lacks it on its old seeds)
    scores = [sc for sc in results["selection"][str(seeds[0])]["judgement"]
              if all(sc in results["selection"][str(s)]["judgement"] for s in seeds)]
    lines = ["", "Model selection over the six sources, judged against the single-source fine-tuning accuracies "
             "of the same seed:", "",
             "| score | Spearman mean | Spearman per seed | trials to best (per seed) | top-1 pick = best single |",
             "| --- | --- | --- | --- | --- |"]
    for sc in scores:
        rho = [results["selection"][str(s)]["judgement"][sc]["spearman"] for s in seeds]
        ttb = [results["selection"][str(s)]["judgement"][sc]["trials_to_best"] for s in seeds]
        hits = sum(t == 1 for t in ttb)
        rho_s = ", ".join("n/a" if v is None else f"{v:+.2f}" for v in rho)
        valid = [v for v in rho if v is not None]
        rho_mean = f"{np.mean(valid):+.3f}" if valid else "n/a"
        lines.append(f"| {sc} | {rho_mean} | {rho_s} | {ttb} | {hits}/{len(seeds)} |")
    undefined = [f"seed {sd}, {src}: {sc} ({why})" for sd in seeds
                 for src, by in results["selection"][str(sd)].get("undefined", {}).items() for sc, why in by.items()]
    if undefined:
        lines += ["", "Scores undefined for a source (null, not judged): " + "; ".join(undefined) + "."]
    per_seed = {sc: {s: [results["selection"][str(sd)]["scores"][s][sc] for sd in seeds] for s in SOURCES}
                for sc in scores}                  # None where the score was undefined for that seed's model
    mean_score = {sc: {s: None if None in v else float(np.mean(v)) for s, v in by.items()}
                  for sc, by in per_seed.items()}
    mean_acc = {s: float(np.mean([_top1(results, sd, f"single:{s}") for sd in seeds])) for s in SOURCES}
    lines += ["", "Mean score per source (over seeds) beside its mean single fine-tuning top-1:", "",
              "| source | " + " | ".join(scores) + " | single top-1 |", "| --- |" + " --- |" * (len(scores) + 1)]
    for s in SOURCES:
        lines.append(f"| {s} | " + " | ".join("-" if mean_score[sc][s] is None else f"{mean_score[sc][s]:.4f}"
                                              for sc in scores) + f" | {mean_acc[s]:.2f} |")
    lines += ["", "Seed-mean scores against seed-mean single accuracies (less noisy than one seed):", "",
              "| score | Spearman | trials to best | ranking |", "| --- | --- | --- | --- |"]
    for sc in scores:
        ms = {s: v for s, v in mean_score[sc].items() if v is not None}
        if len(ms) < len(SOURCES):                  # judged over all six or not at all, as select's judgement
            lines.append(f"| {sc} | n/a | n/a | undefined for {', '.join(sorted(set(SOURCES) - set(ms)))} |")
            continue
        lines.append(f"| {sc} | {spearman(ms, mean_acc):+.3f} | {trials_to_best(ms, mean_acc)} | "
                     f"{' > '.join(rank_models(ms))} |")
    lines.append(f"| (accuracy) | | | {' > '.join(rank_models(mean_acc))} |")
    sd_single = np.mean([np.std([_top1(results, sd, f"single:{s}") for sd in seeds]) for s in SOURCES])
    lines += ["", f"Spread of the six mean single accuracies: {max(mean_acc.values()) - min(mean_acc.values()):.2f} "
              f"points; mean seed-to-seed std of one source: {sd_single:.2f} points.", ""]
    return lines


def _gates_table(results: dict, seeds: list[int]) -> list[str]:
    gated = [m for m in ("zoo", "zoo-lite") if "mean_gate" in results["runs"][str(seeds[0])][m]]
    if not gated:
        return []
    lines = ["Mean gate per source after fine-tuning, averaged over the 9 AdaAgg layers (zoo: batch-mean gate "
             "on the last test batch; zoo-lite: the temporal-ensemble gate used at inference; raw sigmoids, "
             "about 0.5 at initialisation):", "", "| method | seed | " + " | ".join(ZOO) + " |",
             "| --- | --- |" + " --- |" * len(ZOO)]
    for m in gated:
        for sd in seeds:
            g = results["runs"][str(sd)][m]["mean_gate"]
            lines.append(f"| {m} | {sd} | " + " | ".join(f"{v:.3f}" for v in g) + " |")
    return lines


def check_args(args, data: dict) -> None:
    """UsageError for settings the experiment cannot run with (before any image is written)."""
    check_ranges(args, positive=("shots", "iters", "source_iters", "width", "threads", "lr", "source_lr"))
    lo, hi = args.crop_scale
    if not 0 < lo <= hi <= 1:
        raise UsageError(f"--crop-scale {lo} {hi}: need 0 < low <= high <= 1")
    rarest = int(np.bincount(data["y"][data["target_pool"]], minlength=N_CLASSES).min())
    if args.shots >= rarest:
        raise UsageError(f"--shots {args.shots}: the target pool has {rarest} images of its rarest class, and some "
                         "must stay for the test set")


def empty_results() -> dict:
    """results.json before anything ran: sources by name, then per seed its runs and selection scores."""
    return {"sources": {}, "runs": {}, "selection": {}}


def resumed_results(args, out: Path, work: Path) -> tuple[dict, dict]:
    """(results, source checkpoints) of an earlier run of this experiment to continue, or UsageError saying why
    it cannot be continued."""
    try:
        old = json.loads((out / "results.json").read_text())
        old_args = json.loads((out / "config.json").read_text())["config"]["args"]
    except FileNotFoundError:
        return empty_results(), {}
    except (ValueError, KeyError, TypeError) as e:
        raise UsageError(f"{out}: results.json / config.json are not this experiment's ({e}); use another --out "
                         "or run without --resume") from None
    changed = [k for k in vars(args) if k not in RESUMABLE and old_args.get(k) != vars(args)[k]]
    if changed:
        raise UsageError(f"{out} was made with other settings ({', '.join('--' + k.replace('_', '-') for k in changed)}"
                         "); use another --out or run without --resume")
    ckpts = {}
    for name, rec in old.get("sources", {}).items():
        path = work / "sources" / name / "run" / "model.pt"
        if not path.exists() or sha256(path) != rec.get("sha256"):
            raise UsageError(f"source {name}: {path} is missing or not the checkpoint results.json records; the "
                             "finished seeds used that one - run without --resume to start over")
        ckpts[name] = path
    if len(ckpts) < len(SOURCES):                     # sources not all trained: the seeds cannot have run yet
        old["runs"], old["selection"], ckpts = {}, {}, {}
    return old, ckpts


def run(args) -> int:
    torch.set_num_threads(args.threads)
    out, work = Path(args.out), Path(args.work)
    if args.summarise:
        try:
            results = json.loads((out / "results.json").read_text())
        except FileNotFoundError:
            raise UsageError(f"--summarise: no {out / 'results.json'} (run the experiment first)") from None
        missing = [sd for sd in args.seeds if str(sd) not in results.get("runs", {})]
        if missing:
            raise UsageError(f"--summarise: {out / 'results.json'} has no seed(s) {missing}; give its --seeds")
        write_atomic(out / "summary.md", summarise(results, args))
        print((out / "summary.md").read_text())
        return 0
    t_start = time.perf_counter()
    data = split_data(args.data_seed)
    check_args(args, data)
    results, ckpts = resumed_results(args, out, work) if args.resume else (empty_results(), {})
    work.mkdir(parents=True, exist_ok=True)
    env = environment()
    data["info"] = write_sources(args, data, work, keep=bool(ckpts))
    config = {"args": vars(args), "sources": SOURCES, "zoo": ZOO, "methods": ["scratch", "single"] + ZOO_METHODS,
              "finetune": common(args) | {"lr": args.lr, "iters": args.iters, "milestones": "40% and 80% of iters",
                                          "weight_decay": 0.0},
              "pretrain": common(args) | {"lr": args.source_lr, "iters": args.source_iters, "weight_decay": 5e-4},
              "data": data["info"]}
    write_json(out / "config.json", {"config": config, "environment": env})

    for i, name in enumerate(SOURCES):                                       # 1. pretrain the zoo
        if name in ckpts:
            print(f"source {name}: kept ({results['sources'][name]['top1']:.2f})", flush=True)
            continue
        d = work / "sources" / name
        r = run_classification(ClassifyConfig(data=str(d / "data"), method="scratch", iters=args.source_iters,
                                              lr=args.source_lr, weight_decay=5e-4, seed=100 + i, out=str(d / "run"),
                                              **common(args)))
        ckpts[name] = d / "run" / "model.pt"
        results["sources"][name] = {"top1": r["top1"], "sha256": sha256(ckpts[name]),
                                    "train_seconds": r["train_seconds"]}
        print(f"source {name}: own test top-1 {r['top1']:.2f} ({r['train_seconds']:.1f} s)", flush=True)
    write_json(out / "results.json", results)

    for seed in args.seeds:                                                  # 2. transfer, per seed
        if str(seed) in results["runs"] and str(seed) in results["selection"]:
            print(f"seed {seed}: kept from {out / 'results.json'}", flush=True)
            continue
        results["runs"][str(seed)], results["selection"][str(seed)] = run_seed(args, data, seed, work, ckpts)
        write_json(out / "results.json", results)

    results["total_seconds"] = results.get("total_seconds", 0.0) + time.perf_counter() - t_start
    write_json(out / "results.json", results)
    summary = summarise(results, args)
    write_atomic(out / "summary.md", summary)
    print(summary)
    print(f"total {results['total_seconds']:.0f} s", flush=True)
    return 0


def run_seed(args, data: dict, seed: int, work: Path, ckpts: dict) -> tuple[dict, dict]:
    """Every method's fine-tuning on this seed's target task, then the selection scores judged against the
    single-source accuracies: (runs, selection) for results.json."""
    target = make_target(args, data, seed, work)
    runs = {}
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
    names = list(SOURCES)                                                    # 3. selection vs measured accuracy
    sel = run_selection(str(target), [str(ckpts[s]) for s in names], "small", width=args.width, per_class=25,
                        image_size=8, crop_pct=1.0, seed=seed, scores=ALL_SCORES,
                        accuracies=[f"{ckpts[s]}={runs['single:' + s]['top1']}" for s in names],
                        rsa_reference=str(work / f"seed{seed}" / "scratch" / "model.pt"), rsa_arch="small",
                        rsa_width=args.width, min_class_count=min(5, args.shots),
                        source_data=[f"{ckpts[s]}={work / 'sources' / s / 'data'}" for s in names])
    rename = {str(ckpts[s]): s for s in names}
    selection = {"scores": {rename[k]: v for k, v in sel["scores"].items()},
                 "rankings": {k: [rename[n] for n in v] for k, v in sel["rankings"].items()},
                 "judgement": sel["judgement"], "n_samples": sel["n_samples"]}
    if "undefined" in sel:                            # why a score is null for a source (select's note)
        selection["undefined"] = {rename[k]: v for k, v in sel["undefined"].items()}
    return runs, selection
