"""Shared pytest set-up: one torch thread (the suite runs beside training jobs on 2 cores, and one thread makes
CPU results reproducible)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    torch.set_num_threads(1)
    yield


ROOT = Path(__file__).resolve().parent.parent


def run_module(module: str, *args: str, **kw) -> subprocess.CompletedProcess:
    """``python -m rlzoo_transfer.<module> args`` from the repository root on one thread, output captured."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", f"rlzoo_transfer.{module}", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300, **kw)


def kill_after_checkpoint(args: list[str], run_dirs: list[Path], timeout: float = 600, cwd: Path | None = None) -> None:
    """Start ``python <args>`` (one torch thread) and SIGKILL it as soon as every run folder in ``run_dirs``
    holds a complete checkpoint (``checkpoint/model.zip`` appears by a rename, so its presence means complete).
    Fails with the process's stderr if it exits first, or after ``timeout`` seconds (generous: a loaded 2-core
    machine is slow)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + timeout
        while not all((r / "checkpoint" / "model.zip").exists() for r in run_dirs):
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, f"no checkpoint within {timeout:.0f} s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()


def signal_once_training(args: list[str], run_dir: Path, signals: tuple[int, ...] = (signal.SIGINT,),
                         delay: float = 2.0, gap: float = 0.02, timeout: float = 300, cwd: Path | None = None
                         ) -> subprocess.CompletedProcess:
    """Start ``python <args>`` (one torch thread), wait for the step-0 evaluation row in ``run_dir`` (training starts
    right after it), ``delay`` seconds more, then send ``signals`` ``gap`` seconds apart (a sweep's SIGTERM follows
    the terminal's Ctrl-C within milliseconds); returns the finished process (stdout / stderr as text)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + timeout
        csv_path = run_dir / "evaluations.csv"
        while not (csv_path.exists() and "\n0," in csv_path.read_text()):
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, f"no step-0 evaluation within {timeout:.0f} s"
            time.sleep(0.05)
        time.sleep(delay)
        for i, sig in enumerate(signals):
            if i:
                time.sleep(gap)
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
