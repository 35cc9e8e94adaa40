"""A training run started while other training processes run takes its share of the cores (threads.py)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import time

import pytest
import torch

from rlzoo_transfer import backends
from rlzoo_transfer.threads import take_share_of_cores
from tests.conftest import ROOT, child


@pytest.fixture
def all_cores(monkeypatch):
    """torch on every core, as a run without --threads or OMP_NUM_THREADS starts; one thread again afterwards."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    torch.set_num_threads(max(2, os.cpu_count() or 1))
    yield torch.get_num_threads()
    torch.set_num_threads(1)


def test_beside_other_training_processes_a_run_takes_its_share(all_cores):
    out = io.StringIO()
    assert take_share_of_cores(others=[4242, 4343], stream=out) == max(1, (os.cpu_count() or 1) // 3)
    assert torch.get_num_threads() == max(1, (os.cpu_count() or 1) // 3)
    note = out.getvalue()
    assert note.startswith("note: 2 other training process(es) running (pids 4242 4343): this run takes ")
    assert "--resume --threads" in note and note.count("\n") == 1


def test_alone_or_told_a_run_keeps_its_threads(all_cores, monkeypatch):
    out = io.StringIO()
    assert take_share_of_cores(others=[], stream=out) == all_cores and out.getvalue() == ""
    monkeypatch.setenv("OMP_NUM_THREADS", str(all_cores))   # the user's choice, whatever else runs
    assert take_share_of_cores(others=[4242], stream=out) == all_cores and out.getvalue() == ""


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: every run's share is torch's default already")
def test_train_beside_a_training_process_says_it_takes_one_thread(tmp_path):
    """The wiring: ``train`` without --threads, beside a process whose command line names rlzoo_transfer.train,
    prints the note and trains; with --threads it prints none."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    args = [sys.executable, "-m", "rlzoo_transfer.train", "--game", "Pong", "--steps", "150", "--eval-freq", "150",
            "--eval-episodes", "1", "--final-eval-episodes", "1", "-p", "learning_starts=100", "buffer_size=1000",
            "--no-progress", "--log-dir", str(tmp_path / "runs")]
    with child([sys.executable, "-c", "import time; time.sleep(300)", "rlzoo_transfer.train"],
               stdout=subprocess.DEVNULL) as other:
        for _ in range(200):  # until the child has exec'd: right after fork its cmdline is still this process's
            if other.pid in backends.other_training_processes():
                break
            time.sleep(0.05)
        share = backends.threads_per_run(os.cpu_count() or 1, 1, len(backends.other_training_processes()))
        proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        [note] = [line for line in proc.stderr.splitlines() if line.startswith("note: ")]
        assert str(other.pid) in note and f"this run takes {share} torch thread(s)" in note
        told = subprocess.run([*args, "--threads", "1", "--seed", "1"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=300)
        assert told.returncode == 0 and "note: " not in told.stderr, told.stderr
