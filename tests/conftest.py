"""Shared pytest set-up: one torch thread (the suite runs beside training jobs on 2 cores, and one thread makes
CPU results reproducible)."""
from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture(autouse=True, scope="session")
def _sb3_logs_in_the_session_folder(tmp_path_factory):
    """SB3's ``learn`` without tensorboard makes an empty ``$TMPDIR/SB3-<time>`` folder per call (or under
    ``$SB3_LOGDIR``); the tests' ones go to pytest's session folder, removed with it."""
    previous = os.environ.get("SB3_LOGDIR")
    os.environ["SB3_LOGDIR"] = str(tmp_path_factory.mktemp("sb3"))
    yield
    if previous is None:
        os.environ.pop("SB3_LOGDIR", None)
    else:
        os.environ["SB3_LOGDIR"] = previous


ROOT = Path(__file__).resolve().parent.parent
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_module(module: str, *args: str, **kw) -> subprocess.CompletedProcess:
    """``python -m rlzoo_transfer.<module> args`` from the repository root on one thread, output captured."""
    return subprocess.run([sys.executable, "-m", f"rlzoo_transfer.{module}", *args], cwd=ROOT,
                          env={**os.environ, **ONE_THREAD},
                          capture_output=True, text=True, timeout=300, **kw)


@contextmanager
def child(cmd: list[str], cwd: Path | None = None, env: dict | None = None,
          stdout=subprocess.PIPE) -> Iterator[subprocess.Popen]:
    """Start ``cmd`` (environment ``os.environ`` + ``env``, text pipes) and kill it on leaving the block if it is
    still running, so that a failed assertion never leaves a training process behind.

    The child gets SIGINT's default disposition even when this process ignores it (a test run started with ``&``
    from a script: such a shell ignores SIGINT in its background jobs, and an ignored signal stays ignored across
    exec, so the child's Python would never raise KeyboardInterrupt): a handled signal is reset to the default in
    the child at exec, so SIGINT is handled here while the child starts."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=stdout,
                                stderr=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None and not pipe.closed:
                pipe.close()


def wait_until(proc: subprocess.Popen, ready: Callable[[], bool], what: str, timeout: float = 300) -> None:
    """Poll ``ready()`` every 50 ms; fail with the process's stderr if it exits first, or after ``timeout``
    seconds (generous: a loaded 2-core machine is slow) with "no <what> within <timeout> s"."""
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.05)


def step0_evaluated(run_dir: Path) -> bool:
    """Whether ``run_dir``'s evaluations.csv has its step-0 row (training starts right after it)."""
    csv_path = run_dir / "evaluations.csv"
    return csv_path.exists() and "\n0," in csv_path.read_text()


def kill_after_checkpoint(args: list[str], run_dirs: list[Path], timeout: float = 600, cwd: Path | None = None) -> None:
    """Start ``python <args>`` (one torch thread) and SIGKILL it as soon as every run folder in ``run_dirs``
    holds a complete checkpoint (``checkpoint/model.zip`` appears by a rename, so its presence means complete)."""
    with child([sys.executable, *args], cwd=cwd, env=ONE_THREAD, stdout=subprocess.DEVNULL) as proc:
        wait_until(proc, lambda: all((r / "checkpoint" / "model.zip").exists() for r in run_dirs), "checkpoint",
                   timeout)


def signal_once_training(args: list[str], run_dir: Path, signals: tuple[int, ...] = (signal.SIGINT,),
                         delay: float = 2.0, gap: float = 0.02, timeout: float = 300, cwd: Path | None = None
                         ) -> subprocess.CompletedProcess:
    """Start ``python <args>`` (one torch thread), wait for the step-0 evaluation row in ``run_dir`` (training starts
    right after it), ``delay`` seconds more, then send ``signals`` ``gap`` seconds apart (a sweep's SIGTERM follows
    the terminal's Ctrl-C within milliseconds); returns the finished process (stdout / stderr as text)."""
    with child([sys.executable, *args], cwd=cwd, env=ONE_THREAD) as proc:
        wait_until(proc, lambda: step0_evaluated(run_dir), "step-0 evaluation", timeout)
        time.sleep(delay)
        for i, sig in enumerate(signals):
            if i:
                time.sleep(gap)
            proc.send_signal(sig)
        out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _lines_into(pipe, lines: queue.Queue) -> None:
    for line in pipe:
        lines.put(line)
    lines.put(None)   # end of output


def signal_at_line(args: list[str], marker: str, sig: int = signal.SIGTERM, timeout: float = 300,
                   cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Start ``python <args>`` (one torch thread), send ``sig`` as soon as a line of its stderr contains ``marker``
    (e.g. the line a run prints when an evaluation begins), and return the finished process (stderr whole, as
    text).  Fails with the stderr so far if the process ends first or no such line comes within ``timeout`` s."""
    lines: queue.Queue = queue.Queue()
    with child([sys.executable, *args], cwd=cwd, env=ONE_THREAD, stdout=subprocess.DEVNULL) as proc:
        reader = threading.Thread(target=_lines_into, args=(proc.stderr, lines), daemon=True)
        reader.start()
        seen, deadline = [], time.time() + timeout
        while not seen or marker not in seen[-1]:
            try:
                line = lines.get(timeout=max(deadline - time.time(), 0.01))
            except queue.Empty:
                raise AssertionError(f"no line with {marker!r} within {timeout:.0f} s:\n{''.join(seen)}") from None
            assert line is not None, f"the process ended before a line with {marker!r}:\n{''.join(seen)}"
            seen.append(line)
        proc.send_signal(sig)
        proc.wait(timeout=timeout)
        reader.join(timeout)
        while (line := lines.get_nowait()) is not None:
            seen.append(line)
    return subprocess.CompletedProcess(proc.args, proc.returncode, None, "".join(seen))
