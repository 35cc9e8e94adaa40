"""How many torch CPU threads a training process (``train``, ``pretrain``, ``lockstep``) takes.

On 2 cores a run with two threads beside any other busy process crawls: OpenMP's threads spin while they wait for
each other.  Measured (README, "Sweeps"): a Gopher run that did 18.6 agent steps/s alone with two threads did 0.4
once a one-thread run started beside it, and two one-thread runs side by side did 15.3 and 15.4.  So a run started
while other training processes run takes its share of the cores instead of torch's default of all of them, the
rule ``sweep`` already applies to its runs (:func:`rlzoo_transfer.backends.threads_per_run`).
"""
from __future__ import annotations

import os
import sys

from rlzoo_transfer.backends import other_training_processes, threads_per_run


def take_share_of_cores(others: list[int] | None = None, stream=None) -> int:
    """Where neither ``--threads`` nor ``OMP_NUM_THREADS`` chose: torch's default (one thread per core) while no
    other training process runs (``others``: their pids, by default :func:`other_training_processes`), else this
    run's share, ``threads_per_run(cores, 1, len(others))``, set with a note on ``stream`` (stderr) naming the
    others: one of them that took every core slows down now too, and runs at its share after a stop (which writes
    a checkpoint) and ``--resume --threads N``.  Returns torch's threads."""
    import torch

    if "OMP_NUM_THREADS" in os.environ:   # torch read it at import
        return torch.get_num_threads()
    others = other_training_processes() if others is None else others
    share = threads_per_run(os.cpu_count() or 1, 1, len(others))
    if others and share < torch.get_num_threads():
        torch.set_num_threads(share)
        print(f"note: {len(others)} other training process(es) running (pids {' '.join(map(str, others))}): this "
              f"run takes {share} torch thread(s), its share of the {os.cpu_count()} cores (--threads N to choose); "
              f"one of them on all cores slows down now too - stop it (Ctrl-C writes a checkpoint) and continue it "
              f"with --resume --threads {share}", file=stream or sys.stderr, flush=True)
    return torch.get_num_threads()
