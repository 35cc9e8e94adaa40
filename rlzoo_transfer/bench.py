"""Throughput and cost ratios, measured side by side in one run: ``python -m rlzoo_transfer.bench``.

What it measures (all on one ``--device``, batch 32, 18 actions: Alien's full action set):

1. ``env_steps_per_s``: agent steps per second of ``AtariVecEnv`` with 1 and 8 games, random actions.
2. ``act_ms``: one action as DER acts after warm-up (``DER._sample_action``: training mode, fresh noise, greedy
   on one observation), per method.
3. ``update_ms``: one learner update.
   ``reference`` is a straightforward eager PyTorch DER update (:mod:`rlzoo_transfer.bench_reference`, Kaixhin/Rainbow
   style: its own network, factorised noise resampled every update, online forward on obs, online forward on
   next_obs, target forward on next_obs, the classic floor/ceil C51 projection with ``index_add_``, PER-weighted
   cross-entropy, backward, grad-norm clip 10, Adam(lr 1e-4, eps 1.5e-4)); it gets ready-made batches, so it
   does NOT pay for replay sampling or priority updates.  ``scratch`` is our real update: one
   ``DER.train(gradient_steps=1, batch_size=32)`` on a DER whose ``PrioritizedNStepReplay`` holds a few thousand
   real Alien transitions (sampling, n-step returns, priorities and logging included).  Every other method of
   ``rl.registry.METHODS`` is built with ``run.build_model`` and timed the same way (a method that fails to build is
   reported, not fatal).  Two variants split the targets' costs: ``zoo(mix,no gate,no T)`` (zoo without its gate nets
   and alignment T - aggregating the m sources' outputs per sample alone) and ``hub(k=1,random)`` (hub(k = 1) without
   its pathway generator).  ``scratch-*`` variants measure candidate speed-ups of our update without changing
   ``der.py``: the other Adam implementations (``scratch-adam-single|foreach|fused``, whichever DER does not use),
   one online forward over ``cat(obs, next_obs)`` (``scratch-catfwd``), the update on one intra-op thread
   (``scratch-1thread``), and with ``--compile`` ``DER(compile=True)``.  ``scratch_breakdown_ms`` splits one update
   into its phases.
4. ``eval_act_ms``: greedy action on one observation in evaluation mode (noise off, no grad), for scratch,
   zoo-lite and zoo-lite after ``DERPolicy.export()`` (``layers.export_module``: a plain DER network again).
5. ``lockstep``: K scratch agents trained in lock-step (``rl/lockstep.py``, one stacked vmapped update, K = 1, 8,
   32): update and action ms per agent, and the update's ratio to a single agent's ``DER.train`` (paired).
6. ``run``: real training throughput - a scratch DER learning Alien (``DER.learn``: acting, env, replay, one update
   per step, logging) past its warm-up, in chunks interleaved across torch thread counts (1 and all cores); agent
   steps/s, and the 100k-step run it projects to (warm-up at its measured rate + the rest at the learning rate;
   evaluation excluded).
7. ``adaagg``: forward+backward cost of AdaAgg layers (adaptive, align=True) relative to the plain layer, for
   m = 2 and 5 sources, on DER-sized and ResNet-50-sized conv / linear layers.

Timing: the variants of one comparison are run interleaved - repetition r runs each variant once, in an order
rotated every repetition and reversed every other cycle of rotations - so slow drifts of a noisy machine (other
jobs, frequency changes) hit all of them alike.
Reported times are medians over repetitions; ratios are medians of the per-repetition ratios (paired samples).
Updates are timed in two groups, each with ``reference`` and ``scratch`` (``update_groups``): reference, scratch and
the scratch variants; reference, scratch and the transfer methods - short repetitions pair better.  On a loaded
machine (``machine.load_avg_1m`` above the core count) expect wide IQRs; ``--threads 1`` is steadier there.

Targets (from the issues; printed PASS / MISS, never a failure of the command):
ours (scratch) <= 0.8x reference; zoo <= 1.5x scratch; zoo-lite exported == scratch at evaluation (within 10%);
hub (k=1) <= 1.6x scratch (``hub(k=1)``: the hub method built with ``k=1``, its default being 2; also reported
for ``hub(k=1,pooled)`` and ``hub(k=1,linear)``, with the cheaper generators); a single 100k
scratch run <= 20 minutes (``run``, projected, on all cores).

This module is the CLI, its settings and the report (torch-free until the arguments parse: ``--help`` answers at
once); the measurements are bench_timing.py's.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from rlzoo_transfer.atomic import write_atomic
from rlzoo_transfer.outputs import check_outputs
from rlzoo_transfer.stop import one_line_interrupt

GAME = "Alien"
BATCH = 32
N_ACTIONS = 18
TARGETS_DOC = (
    ("scratch <= 0.8x reference", "our real DER update vs the straightforward eager update"),
    ("zoo <= 1.5x scratch", "Zoo-Tuning (adaptive AdaAgg over 2 sources) update"),
    ("zoo-lite exported == scratch (eval)", "evaluation action after export_module, within 10%"),
    ("hub(k=1) <= 1.6x scratch", "Hub-Pathway with one active source per sample"),
    ("100k run <= 20 min", "projected from the run section's measured agent steps/s (evaluation excluded)"),
)


SECTIONS = ("env", "act", "update", "eval", "lockstep", "run", "adaagg")


# ====================================================================================== output
def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])


def render(result: dict[str, Any]) -> str:
    """The result as markdown tables (readable in a terminal too)."""
    mach = result["machine"]
    parts = [f"# rlzoo_transfer bench ({result['device']})", "",
             *([f"`{result['command']}`", ""] if result.get("command") else []),
             *([f"commit {result['commit']}; " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()), ""]
               if result.get("commit") else []),
             f"{mach['cpu']}, {mach['cpu_count']} CPUs, torch {mach['torch']}, {mach['threads']} threads"
             + (f", GPU {mach['gpu']}" if "gpu" in mach else "")
             + (f", load avg {mach['load_avg_1m']}" if "load_avg_1m" in mach else "")
             + (f" -> {mach['load_avg_end_1m']}" if "load_avg_end_1m" in mach else "")
             + "".join(f", {label} {mach[k]}" for k, label in (("kernel", "kernel"), ("cpu_mhz", "MHz"),
                                                               ("cache", "cache")) if k in mach)
             + f"; {result['settings']['repeats']} interleaved repetitions, medians"
             + (" (quick)" if result["settings"]["quick"] else "") + "."]
    if "env_steps_per_s" in result:
        parts += ["", "## Env throughput (AtariVecEnv, random actions)", "",
                  _table(["n_envs", "agent steps/s"], [[k, v] for k, v in result["env_steps_per_s"].items()])]
    if "update_ms" in result:
        r = result["ratios"]
        rows = [[k, v, f"{result['update_iqr_ms'][k][0]}-{result['update_iqr_ms'][k][1]}",
                 r["vs_reference"].get(k, "-"), r["vs_scratch"].get(k, "-"), result.get("act_ms", {}).get(k, "")]
                for k, v in result["update_ms"].items()]
        parts += ["", f"## Update (batch {BATCH}, {N_ACTIONS} actions) and action selection", "",
                  _table(["variant", "update ms", "IQR ms", "x reference", "x scratch", "act ms"], rows), "",
                  "reference: plain eager DER update on ready-made batches (no replay sampling / priorities); "
                  "scratch: our real `DER.train(1, 32)` incl. PER sampling, priorities, logging. "
                  "scratch-* are candidate speed-ups measured without changing der.py."]
        if "scratch_breakdown_ms" in result:
            b = result["scratch_breakdown_ms"]
            parts += ["", "### Scratch update by phase (ms, medians)", "",
                      _table(list(b) + ["sum"], [[*b.values(), round(sum(b.values()), 3)]])]
    if "eval_act_ms" in result:
        rows = [[k, v, result["eval_forward8_ms"][k], result["eval_ratios_vs_scratch"][k]]
                for k, v in result["eval_act_ms"].items()]
        parts += ["", "## Evaluation (noise off, no grad)", "",
                  _table(["network", "act ms (1 obs)", "forward ms (8 obs)", "x scratch (1 obs)"], rows)]
    if "lockstep" in result:
        ls = result["lockstep"]
        rows = [[k, ls["update_ms_per_agent"][str(k)], ls["update_x_single"][str(k)], ls["act_ms_per_agent"][str(k)]]
                for k in ls["k"]]
        title = f"## Lock-step: K scratch agents, one stacked update (single update: {ls['single_update_ms']} ms)"
        parts += ["", title, "", _table(["K", "update ms per agent", "x single update", "act ms per agent"], rows)]
        for k, v in ls.get("serial_sampling_update_ms_per_agent", {}).items():
            parts += ["", f"K = {k} with its replays sampled one after another instead of on "
                      f"{ls['sample_threads']} threads: {v} ms per agent"]
    if "run" in result:
        rn = result["run"]
        rows = [[t, v, rn["projected_100k_min"][t]] for t, v in rn["steps_per_s"].items()]
        parts += ["", f"## Training throughput: scratch DER.learn on {GAME} after {rn['learning_starts']} warm-up "
                  f"steps ({rn['chunk_steps']}-step chunks)", "",
                  _table(["threads", "agent steps/s", "projected 100k run, min (no evaluation)"], rows)]
    if "adaagg" in result:
        rows = [[k, result["adaagg_ms"][k]["plain"], v["2"], v["5"], result["adaagg_ms"][k]["paths"].get("m2"),
                 result["adaagg_ms"][k]["paths"].get("m5")] for k, v in result["adaagg"].items()]
        parts += ["", "## AdaAgg (adaptive, align) forward+backward cost vs the plain layer", "",
                  _table(["layer", "plain ms", "x plain m=2", "x plain m=5", "path m=2", "path m=5"], rows)]
    parts += ["", "## Targets (benchmarks, not tests)", "",
              _table(["target", "measured", "value", "status"],
                     [[t["target"], t["measured"] or "-", "-" if t["value"] is None else t["value"],
                       t["status"] + (f" ({t['note']})" if t["note"] else "")] for t in result["targets"]])]
    for k, v in result.get("notes", {}).items():
        parts.append(f"\nnote {k}: {v}")
    if result.get("failed"):
        parts += ["", "## Not measured", "", _table(["variant", "error"], list(result["failed"].items()))]
    return "\n".join(parts) + "\n"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rlzoo_transfer.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Targets: " + "; ".join(t for t, _ in TARGETS_DOC) + " (PASS / MISS only).")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the tables")
    p.add_argument("--repeats", type=int, default=None, help="interleaved repetitions (default 30, quick 3)")
    p.add_argument("--quick", action="store_true", help="few repetitions, small replay (for tests)")
    p.add_argument("--methods", nargs="*", default=None,
                   help="transfer methods to time besides reference and scratch (default: all registered)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's default)")
    p.add_argument("--compile", action="store_true", help="also time scratch-compiled: DER(compile=True)")
    p.add_argument("--source", default="Seaquest", help="source game for methods that need one (finetune)")
    p.add_argument("--sections", nargs="*", default=list(SECTIONS), choices=list(SECTIONS),
                   help="what to measure (default all)")
    p.add_argument("--lockstep-k", nargs="+", type=int, default=None, metavar="K",
                   help="group sizes of the lockstep section (default 1 8 32; quick 1 2)")
    p.add_argument("--out", default=None, help="also write the JSON here (atomically)")
    p.add_argument("--md", default=None, help="also write the tables (markdown) here (atomically)")
    return p


@one_line_interrupt
def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    check_outputs(p, args, files=("out", "md"))
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 30)
    if repeats < 1:
        print("error: --repeats must be >= 1", file=sys.stderr)
        return 2
    if args.methods:
        from rlzoo_transfer.rl.registry import METHODS

        valid = [*METHODS, "hub(k=1)"]
        unknown = [m for m in args.methods if m not in valid]
        if unknown:   # before minutes of timing, not as a "failed" entry at the end
            print(f"error: unknown method(s) {', '.join(map(repr, unknown))}. Valid: {', '.join(valid)}",
                  file=sys.stderr)
            return 2
    from rlzoo_transfer.config import ConfigError, check_threads, resolve_device

    try:
        check_threads(args.threads, minimum=1)
        args.device = resolve_device(args.device)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import torch

    from rlzoo_transfer.bench_timing import run_bench

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = run_bench(repeats=repeats, quick=args.quick, methods=args.methods, device=args.device,
                       compile=args.compile, source=args.source, sections=tuple(args.sections),
                       lockstep_k=tuple(args.lockstep_k) if args.lockstep_k else None)
    from rlzoo_transfer.provenance import git_commit, versions

    result["command"] = " ".join(["python -m rlzoo_transfer.bench", *(sys.argv[1:] if argv is None else argv)])
    result["commit"], result["versions"] = git_commit(), versions()
    text = json.dumps(result, indent=1)
    if args.out:
        write_atomic(args.out, text + "\n")
    table = render(result)
    if args.md:
        write_atomic(args.md, table)
    print(text if args.json else table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
