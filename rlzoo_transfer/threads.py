"""How many torch CPU threads a training process (``train``, ``pretrain``, ``lockstep``) takes while it runs.

On 2 cores a run with two threads beside any other busy process crawls: OpenMP's threads spin while they wait for
each other.  Measured (README, "Sweeps"): a Gopher run that did 18.6 agent steps/s alone with two threads did 0.4
once a one-thread run started beside it, and two one-thread runs side by side did 15.3 and 15.4.  So a run whose
threads nobody chose (no ``--threads``, no ``OMP_NUM_THREADS``) keeps to its share of the cores while other training
processes run - the rule ``sweep`` applies to its runs (:func:`threads_per_run`) - and takes torch's default
again once it is alone.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable

_TRAINING_MODULES = ("rlzoo_transfer.train", "rlzoo_transfer.lockstep", "rlzoo_transfer.pretrain")


def other_training_processes(proc: Path = Path("/proc")) -> list[int]:
    """Pids of running ``python -m rlzoo_transfer.{train,lockstep,pretrain}`` processes (other than this one).

    Read from ``/proc/<pid>/cmdline`` (Linux); an empty list where ``/proc`` does not exist.  Used so that a second
    sweep started beside a first does not also give each run every core: with two sweeps of ``--jobs 1`` on 2 cores
    each run took 2 torch threads, and the two runs trained ~4x slower (Gopher scratch 3.9 instead of ~18 agent
    steps/s) than with 1 thread each.
    """
    pids = []
    for entry in proc.glob("[0-9]*") if proc.is_dir() else ():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # ended meanwhile, or not ours to read
        if int(entry.name) != os.getpid() and any(a.decode(errors="replace") in _TRAINING_MODULES for a in argv):
            pids.append(int(entry.name))
    return sorted(pids)


def threads_per_run(cores: int, parallel: int, others: int) -> int:
    """Torch / OpenMP threads for each of ``parallel`` runs when ``others`` training processes already run:
    ``max(1, cores // (parallel + others))`` (oversubscribed OpenMP threads spin and stall each other)."""
    return max(1, cores // (parallel + others))


def threads_chosen(threads: int) -> bool:
    """Whether the user chose the threads: ``--threads N`` (N > 0), or ``OMP_NUM_THREADS`` (torch read it)."""
    return threads > 0 or "OMP_NUM_THREADS" in os.environ


class CoreShare:
    """Keeps this process at its share of the cores: ``check()`` (called every agent step; it looks at most every
    ``every`` seconds) sets torch's threads to ``min(default, threads_per_run(cores, 1, others))``, where
    ``default`` is torch's number when the share began (one per core) and ``others`` the other training processes
    (``others()``, by default :func:`other_training_processes`), and says so on ``stream`` (stderr) when it
    changes.  torch's threads are per calling thread under OpenMP, so ``check`` runs in the training loop's."""

    def __init__(self, every: float = 30.0, stream=None,
                 others: Callable[[], list[int]] = other_training_processes):
        import torch

        self.every, self.stream, self.others = every, stream, others
        self.default, self.cores = torch.get_num_threads(), os.cpu_count() or 1
        self._last = -float("inf")

    def check(self) -> int:
        """torch's threads after looking (or, within ``every`` s of the last look, as they are)."""
        import torch

        now = time.monotonic()
        if now - self._last < self.every:
            return torch.get_num_threads()
        self._last = now
        others = self.others()
        share = min(self.default, threads_per_run(self.cores, 1, len(others)))
        if share != torch.get_num_threads():
            torch.set_num_threads(share)
            if others:
                why = (f"{len(others)} other training process(es) running (pids {' '.join(map(str, others))}): "
                       f"this run takes {share} torch thread(s), its share of the {self.cores} cores")
            else:
                why = f"no other training process running: this run takes {share} torch thread(s) again"
            print(f"note: {why} (--threads N fixes the number)", file=self.stream or sys.stderr, flush=True)
        return share
