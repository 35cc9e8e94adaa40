"""Stop a training process cleanly on Ctrl-C (SIGINT) or SIGTERM, without losing the steps since the last checkpoint.

While ``stop_on_signals()`` is active, the first SIGINT or SIGTERM only records a stop request; the training loop
(``rl.callbacks.EvalCheckpointCallback``) ends at its next agent step - an evaluation in progress at its next game
step (``rl.evaluation.EvaluationStopped``), to be played again on resume - and the run writes a checkpoint and
exits, resumable with ``--resume``.  A second Ctrl-C stops at once, also in the middle of writing that checkpoint (the
last complete one stays on disk: checkpoints are swapped in by renames, rl/checkpoint.py).  A SIGTERM
that follows a request is ignored: ``sweep`` terminates its runs after the terminal's Ctrl-C has already reached
them, and that must not cut their checkpoint short.

Without this, a signal killed the process where it stood, and a run lost up to one evaluation interval (10k agent
steps, ~8 minutes of a 100k run on these CPUs).
"""
from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence


class RunIncomplete(RuntimeError):
    """A run that stopped before its last step (a time limit, or SIGINT / SIGTERM) after writing a checkpoint; it
    continues with --resume.  ``exit_status``: 3 at a time limit, 128 + the signal's number after a signal (SIGINT
    130); ``reason``: the message without the run folder (lock-step names a group's folders once).  Shared by the
    RL runs (:mod:`rlzoo_transfer.run`) and the vision runs (:mod:`rlzoo_transfer.vision.runtime`)."""

    def __init__(self, message: str, exit_status: int = 3, reason: str | None = None):
        super().__init__(message)
        self.exit_status = exit_status
        self.reason = reason or message


class StopRequest:
    """Set by the first signal: ``signal`` is its name (``"SIGINT"``, ``"SIGTERM"``), None until then."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def __bool__(self) -> bool:
        return self.signal is not None

    @property
    def exit_status(self) -> int:
        """The shell's status of a process ended by this signal: 128 + its number (SIGINT 130, SIGTERM 143)."""
        return 128 + int(getattr(signal, self.signal or "SIGINT"))


@contextmanager
def stop_on_signals(stream=None, at: str = "agent step") -> Iterator[StopRequest]:
    """Turn SIGINT / SIGTERM into a ``StopRequest`` for the duration of the block (main thread only: elsewhere
    Python cannot install handlers, and the request simply never comes); ``at``: where the loop looks at the
    request, for the message (a vision run's "iteration")."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    owner = os.getpid()

    def handler(signum: int, frame) -> None:
        if os.getpid() != owner:   # a forked child (a data-loading worker): the terminal's Ctrl-C reaches it too
            return
        if request.signal is None:
            request.signal = signal.Signals(signum).name
            print(f"\n{request.signal}: stopping at the next {at} to write a checkpoint "
                  f"(Ctrl-C again to stop at once)", file=stream or sys.stderr, flush=True)
        elif signum == signal.SIGINT:
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def interrupts_surface() -> Iterator[None]:
    """Let a Ctrl-C inside the block surface as KeyboardInterrupt, also where a writer turns it into an error of
    its own on the way out (``torch.save``'s zip writer raises a RuntimeError, "unexpected pos ...")."""
    try:
        yield
    except Exception as err:
        if isinstance(err.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from err
        raise


def interrupted(checkpoints: Sequence[Path | str] = (), stream=None) -> int:
    """After a KeyboardInterrupt (a second Ctrl-C, or one before the handler was installed): one line saying how to
    continue and where the last complete checkpoints are; returns the exit status 130."""
    where = f" (last checkpoint in {', '.join(map(str, checkpoints))})" if checkpoints else ""
    print(f"\ninterrupted: continue with the same command and --resume{where}", file=stream or sys.stderr)
    return 130


def one_line_interrupt(main: Callable[..., int]) -> Callable[..., int]:
    """Decorate the ``main`` of a CLI with nothing to resume (enjoy, bench, select, curves, publish, confirm): a
    Ctrl-C ends it with one line and exit status 130 instead of Python's traceback.  Their files are written
    atomically, so a file is either the old one or the new one, never half-written."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except KeyboardInterrupt:
            print("\ninterrupted (the files written so far are complete; run the command again to redo the rest)",
                  file=sys.stderr)
            return 130

    return wrapped
