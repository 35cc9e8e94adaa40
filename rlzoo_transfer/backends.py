"""Where a sweep's runs execute, and with how many threads: local child processes or Ray tasks.

A backend runs a :class:`rlzoo_transfer.sweep_plan.Job`'s command (``job.command()`` / ``job.args``) with its output
appended to ``job.log_path``: ``submit(job) -> handle``, ``wait(handles, timeout) -> [(handle, exit status)]`` of
those that ended, ``cancel(grace)`` stops what still runs, each run writing a checkpoint first (SIGTERM,
:mod:`rlzoo_transfer.stop`).  Locally each run's torch / OpenMP threads are ``cores // (parallel runs + training
processes already running)`` (:func:`rlzoo_transfer.threads.threads_per_run`).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from rlzoo_transfer.sweep_plan import Job


class BackendError(Exception):
    """A backend that cannot start (Ray not installed)."""


# --------------------------------------------------------------------------------------------- backends


STOP_GRACE_S = 300.0  # seconds a stopped run gets to write its checkpoint (~1 GB with a 100k replay) before SIGKILL


def _say_stopping(n: int, grace: float) -> None:
    print(f"stopping {n} run(s): each writes a checkpoint first (up to {grace:.0f} s; Ctrl-C again to stop at "
          f"once)", file=sys.stderr, flush=True)


class LocalBackend:
    """Runs jobs as child processes of this one, with their output appended to ``train.log``."""

    def __init__(self, threads: int = 1):
        self._procs: dict[int, tuple[subprocess.Popen, object]] = {}
        self.threads = threads  # torch / OpenMP threads per run: runs x threads <= cores (oversubscription stalls)

    def submit(self, job: Job) -> int:
        """Start the job's process; returns its handle (the pid)."""
        job.run_dir.mkdir(parents=True, exist_ok=True)
        log = open(job.log_path, "a")
        log.write(f"# rlzoo_transfer.sweep: {shlex.join(job.command())}\n")
        log.flush()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault("OMP_NUM_THREADS", str(self.threads))
        proc = subprocess.Popen(job.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env)
        self._procs[proc.pid] = (proc, log)
        return proc.pid

    def wait(self, handles: Sequence[int], timeout: float) -> list[tuple[int, int]]:
        """``(handle, exit status)`` of the processes among ``handles`` that ended, waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            ended = [(h, self._procs[h][0].poll()) for h in handles]
            ended = [(h, rc) for h, rc in ended if rc is not None]
            if ended or time.monotonic() >= deadline:
                break
            time.sleep(min(0.05, timeout))
        for h, _ in ended:
            self._procs.pop(h)[1].close()
        return ended

    def cancel(self, grace: float = STOP_GRACE_S) -> None:
        """Stop every process this backend started and still runs: SIGTERM, which a run answers by writing a
        checkpoint at its next agent step (:mod:`rlzoo_transfer.stop`); after ``grace`` seconds, or at a second
        Ctrl-C, SIGKILL (their last periodic checkpoint stays)."""
        procs = [proc for proc, _ in self._procs.values() if proc.poll() is None]
        for proc in procs:
            proc.terminate()
        if procs:
            _say_stopping(len(procs), grace)
        try:
            deadline = time.monotonic() + grace
            for proc in procs:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        except KeyboardInterrupt:
            pass
        finally:
            for proc, log in self._procs.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                log.close()
            self._procs.clear()


def _ray_run(args: list[str], log_path: str, cwd: str, grace: float = STOP_GRACE_S) -> int:
    """Body of the Ray task: run ``python args`` on the worker, output appended to ``log_path``.  Cancelled (Ray
    raises KeyboardInterrupt in the task), it stops the run as ``LocalBackend.cancel`` does: SIGTERM, then SIGKILL
    after ``grace`` seconds."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    with open(log_path, "a") as log:
        log.write(f"# rlzoo_transfer.sweep (ray): {shlex.join([sys.executable, *args])}\n")
        log.flush()
        proc = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=cwd if os.path.isdir(cwd) else None,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
        try:
            while proc.poll() is None:  # not proc.wait(): Ray's cancel raises in the task only between bytecodes
                time.sleep(0.2)
            return proc.returncode
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=grace)
            except BaseException:
                proc.kill()
                proc.wait()
            raise


class RayBackend:
    """Runs jobs as Ray tasks on an existing cluster (``address``), or a local one when ``address`` is None."""

    def __init__(self, address: str | None, cpus: float = 1, gpus: float = 0):
        try:
            import ray
        except ImportError as err:
            raise BackendError("the ray backend needs Ray: pip install 'rlzoo_transfer[ray]' (or pip install ray)") \
                from err
        self.ray = ray
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
        self._task = ray.remote(num_cpus=cpus, num_gpus=gpus)(_ray_run)
        self._refs: dict[int, object] = {}
        self.cpus = cpus

    def slots(self) -> int:
        """How many runs the cluster can hold at once with ``cpus`` per run."""
        total = self.ray.cluster_resources().get("CPU", 1)
        return max(1, int(total // max(self.cpus, 1e-9)))

    def submit(self, job: Job) -> int:
        """Submit the job as a task; returns its handle."""
        ref = self._task.remote(job.args, str(job.log_path.resolve()), os.getcwd())
        self._refs[id(ref)] = ref
        return id(ref)

    def wait(self, handles: Sequence[int], timeout: float) -> list[tuple[int, int]]:
        """``(handle, exit status)`` of the tasks that ended; a task that raised counts as exit status -1."""
        refs = [self._refs[h] for h in handles]
        ready, _ = self.ray.wait(refs, num_returns=len(refs), timeout=timeout)
        ended = []
        for ref in ready:
            try:
                rc = int(self.ray.get(ref))
            except Exception:  # noqa: BLE001 - a worker crash is a failed run, not a sweep crash
                rc = -1
            ended.append((id(ref), rc))
            self._refs.pop(id(ref))
        return ended

    def cancel(self, grace: float = STOP_GRACE_S) -> None:
        """Cancel the tasks still running: each stops its run with a checkpoint (``_ray_run``); tasks still there
        after ``grace`` seconds (and a bit), or at a second Ctrl-C, are killed."""
        refs = list(self._refs.values())
        for ref in refs:
            self.ray.cancel(ref, force=False)
        if refs:
            _say_stopping(len(refs), grace)
        try:
            if refs:
                self.ray.wait(refs, num_returns=len(refs), timeout=grace + 30)
        except KeyboardInterrupt:
            pass
        finally:
            for ref in refs:
                try:
                    self.ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001 - a task that already ended cannot be cancelled
                    pass
            self._refs.clear()
