"""Offline zoo-transfer experiment on scikit-learn's digits: pretrain a zoo of small ResNets on disjoint parts of
digits, transfer them to a held-out few-shot 10-way task, compare the transfer methods side by side, and judge
the model-selection scores against the measured fine-tuning accuracies.

    python -m rlzoo_transfer.vision.experiment --out eval/vision            # 6-30 min on one CPU thread
    python -m rlzoo_transfer.vision.experiment --out eval/vision --resume   # after a kill: finished seeds stay

(``scripts/vision_experiment.py``, the command eval/vision.md records, runs this module.)

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
  target training images, RSA with the seed's scratch network as the reference (the paper's "small network
  trained on the target") and domain similarity against each source's own training images (classes with fewer
  than min(5, ``--shots``) images left out), judged against the single-source fine-tuning accuracies of the same
  seed.

Everything runs in this process with the package's own functions (``run_classification``, ``run_selection``),
the same code the CLIs run.  Writes ``OUT/results.json`` (every number), ``OUT/config.json`` (resolved
configuration, seeds, package versions, ``git rev-parse HEAD``) and ``OUT/summary.md`` (the tables); the
images and run folders go to ``--work`` (default runs/vision_experiment, not committed).  ``results.json`` is
rewritten (atomically) after every seed; ``--resume`` keeps the seeds it holds and the sources it names, when the
source checkpoints in ``--work`` still have the recorded sha256 and every setting but ``--seeds``, ``--threads``,
``--out`` and ``--work`` is the same.

This module is the CLI (torch-free until the arguments parse: ``--help`` answers at once); the experiment itself
is vision/digits_experiment.py's.
"""
from __future__ import annotations

import sys

from rlzoo_transfer.config import seed_arg
from rlzoo_transfer.outputs import check_outputs
from rlzoo_transfer.stop import RunIncomplete
from rlzoo_transfer.vision.options import OneLineParser, UsageError


def parse_args(argv=None):
    p = OneLineParser(prog="python -m rlzoo_transfer.vision.experiment", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="eval/vision", help="results.json, config.json, summary.md (default eval/vision)")
    p.add_argument("--work", default="runs/vision_experiment", help="images and run folders (not committed)")
    p.add_argument("--seeds", type=seed_arg, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--data-seed", type=seed_arg, default=0)
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
    p.add_argument("--resume", action="store_true",
                   help="keep the seeds and sources OUT/results.json already holds (see the module docstring)")
    args = p.parse_args(argv)
    check_outputs(p, args, folders=("out",) if args.summarise else ("out", "work"))
    args.seeds = list(dict.fromkeys(args.seeds))                     # a seed given twice runs once
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from rlzoo_transfer.vision.digits_experiment import run
    from rlzoo_transfer.vision.runtime import USER_ERRORS

    try:
        return run(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except USER_ERRORS as e:
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except (RunIncomplete, KeyboardInterrupt) as e:   # Ctrl-C / SIGTERM in a fine-tuning run, or a second Ctrl-C
        print(f"\nstopped: the finished seeds stay in {args.out}; continue with the same command and --resume",
              file=sys.stderr)
        return e.exit_status if isinstance(e, RunIncomplete) else 130


if __name__ == "__main__":
    sys.exit(main())
