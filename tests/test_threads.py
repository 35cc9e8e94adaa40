"""A training run whose threads nobody chose keeps to its share of the cores while other training processes run
(threads.py), and takes torch's default again once it is alone."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import pytest
import torch

from rlzoo_transfer import threads
from rlzoo_transfer.threads import CoreShare, threads_chosen
from tests.conftest import ROOT, child


@pytest.fixture
def all_cores(monkeypatch):
    """torch on at least two threads, as a run without --threads or OMP_NUM_THREADS starts on these machines; one
    thread again afterwards (the suite's setting)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(max(2, os.cpu_count() or 1))
    yield torch.get_num_threads()
    torch.set_num_threads(1)


def test_a_run_takes_its_share_while_others_run_and_all_again_alone(all_cores):
    others, out = [], io.StringIO()
    share = CoreShare(every=0, stream=out, others=lambda: list(others))
    assert share.check() == all_cores and out.getvalue() == ""   # alone: torch's default, nothing said

    others[:] = [4242, 4343]
    expected = min(all_cores, max(1, (os.cpu_count() or 1) // 3))
    assert share.check() == expected == torch.get_num_threads()
    if expected < all_cores:
        assert out.getvalue() == (f"note: 2 other training process(es) running (pids 4242 4343): this run takes "
                                  f"{expected} torch thread(s), its share of the {os.cpu_count()} cores (--threads N "
                                  f"fixes the number)\n")

    others.clear()
    out.truncate(0), out.seek(0)
    assert share.check() == all_cores == torch.get_num_threads()
    if expected < all_cores:
        assert out.getvalue().startswith("note: no other training process running: this run takes ")


def test_it_looks_at_most_every_few_seconds(all_cores):
    looks = []
    share = CoreShare(every=3600, stream=io.StringIO(), others=lambda: looks.append(1) or [4242, 4343, 4444])
    first = share.check()
    assert share.check() == first and len(looks) == 1


def test_threads_are_chosen_by_the_option_or_omp_num_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads_chosen(2) and not threads_chosen(0)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads_chosen(0)


@pytest.fixture
def other_training():
    """A process whose command line names rlzoo_transfer.train, as another training process has it."""
    with child([sys.executable, "-c", "import time; time.sleep(300)", "rlzoo_transfer.train"],
               stdout=subprocess.DEVNULL) as other:
        for _ in range(200):  # until the child has exec'd: right after fork its cmdline is still this process's
            if other.pid in threads.other_training_processes():
                break
            time.sleep(0.05)
        yield other


UNCHOSEN = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
TINY = ["--steps", "150", "--eval-freq", "150", "--eval-episodes", "1", "--final-eval-episodes", "1", "--no-progress",
        "-p", "learning_starts=100", "buffer_size=1000"]


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: every run's share is torch's default already")
@pytest.mark.parametrize("module, what", [("train", ["--game", "Pong"]),
                                          ("lockstep", ["--games", "Pong", "--seeds", "0", "1"])])
def test_a_run_beside_another_training_says_it_takes_its_share(tmp_path, other_training, module, what):
    """The wiring: ``train`` (and a lock-step group, one note for its one process) without --threads, beside
    another training process, takes its share and says so; with --threads it keeps them and says nothing."""
    args = [sys.executable, "-m", f"rlzoo_transfer.{module}", *what, *TINY, "--log-dir", str(tmp_path / "a")]
    share = threads.threads_per_run(os.cpu_count() or 1, 1, len(threads.other_training_processes()))
    proc = subprocess.run(args, cwd=ROOT, env=UNCHOSEN, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    [note] = [line for line in proc.stderr.splitlines() if line.startswith("note: ")]
    assert str(other_training.pid) in note and f"this run takes {share} torch thread(s)" in note
    told = subprocess.run([*args[:-1], str(tmp_path / "b"), "--threads", "1"], cwd=ROOT, env=UNCHOSEN,
                          capture_output=True, text=True, timeout=300)
    assert told.returncode == 0 and "note: " not in told.stderr, told.stderr
