"""Periodic evaluation -> ``evaluations.csv`` + tensorboard, gate / pathway statistics -> CSV, checkpoints.

Evaluation and checkpoint happen together at the end of the step that crosses a multiple of ``eval_freq``
(after the step's transition is stored), so a checkpoint always holds every evaluation row up to its step.
"""
from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Callable

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from rlzoo_transfer.atomic import write_atomic  # also imported from here by run.py, pretrain.py
from rlzoo_transfer.rl.evaluation import evaluate
from rlzoo_transfer.threads import CoreShare

EVAL_HEADER = ["step", "mean", "std", "n_episodes", "returns"]


def read_evaluations(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def write_evaluations(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=EVAL_HEADER)
    w.writeheader()
    w.writerows(rows)
    write_atomic(path, buf.getvalue())


def eval_row(step: int, returns: list[float]) -> dict:
    return {"step": step, "mean": f"{np.mean(returns):.4f}", "std": f"{np.std(returns):.4f}",
            "n_episodes": len(returns), "returns": " ".join(f"{r:g}" for r in returns)}


def append_stats(path: Path, header: list[str], rows: list[list]) -> None:
    """Add one step's rows to a statistics CSV (gates.csv, pathway.csv, flow.csv), atomically.

    Rows already there from this step on are dropped first: a run resumed from an earlier checkpoint (or restarted
    from step 0) logs those steps again, and must not leave two rows per step behind.  ``rows[i][0]`` is the step.
    """
    step = int(rows[0][0])
    kept = []
    if path.exists():
        with open(path, newline="") as f:
            kept = [r for r in list(csv.reader(f))[1:] if r and int(r[0]) < step]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(kept + [list(r) for r in rows])
    write_atomic(path, buf.getvalue())


def crossed(last: int, step: int, every: int) -> bool:
    """Whether a multiple of ``every`` lies in (max(last, 0), step]."""
    return step // every > max(last, 0) // every


class EvalCheckpointCallback(BaseCallback):
    """Every ``eval_freq`` agent steps: evaluate, append the CSV row, log statistics, then checkpoint (every
    ``checkpoint_freq`` steps, and at the last step of training).

    :param game: game to evaluate on
    :param run_dir: the run folder
    :param eval_freq: agent steps between evaluations
    :param n_episodes: episodes per evaluation
    :param seed: run seed (evaluations are seeded from seed and step)
    :param epsilon: evaluation epsilon
    :param checkpoint: ``f(model)`` that writes the checkpoint
    :param checkpoint_freq: agent steps between checkpoints (a multiple of ``eval_freq``; 0 = never, not even at
        the last step)
    :param deadline: ``time.time()`` after which training stops (the caller checkpoints or finishes)
    :param stop: a ``stop.StopRequest``: once it is set (by SIGINT / SIGTERM), training stops at the next agent
        step (the caller checkpoints).  That step's transition is not stored (SB3 stops before storing it); its
        update is the one a resumed run does first, so the update count matches an uninterrupted run's, and when it
        was an evaluation step the resumed run evaluates first.  A stop during an evaluation abandons it
        (``EvaluationStopped`` leaves ``learn`` before the step's update and checkpoint; the caller checkpoints):
        the resumed run evaluates that step first, then does the owed update.
    :param eval_envs: games evaluated in parallel
    :param stream: where to print one line per evaluation (for logs without a progress bar; None: silent)
    """

    def __init__(self, game: str, run_dir: Path, eval_freq: int, n_episodes: int, seed: int, epsilon: float,
                 checkpoint: Callable, checkpoint_freq: int | None = None, deadline: float | None = None,
                 eval_envs: int = 8, eval_at_start: bool = True, verbose: int = 0, stream=None, stop=None):
        super().__init__(verbose)
        self.game, self.run_dir, self.eval_freq = game, Path(run_dir), eval_freq
        self.n_episodes, self.seed, self.epsilon, self.checkpoint = n_episodes, seed, epsilon, checkpoint
        self.checkpoint_freq = eval_freq if checkpoint_freq is None else checkpoint_freq
        self.deadline, self.eval_envs, self.eval_at_start = deadline, eval_envs, eval_at_start
        self.stream, self.stop = stream, stop
        self.name = "/".join(self.run_dir.parts[-3:])   # <Game>/<method>/seed<k>: lock-step logs hold K runs
        self.csv = self.run_dir / "evaluations.csv"
        # a checkpoint is written at the end of its step's rollout, before that step's update: a run resumed from
        # it owes that one update, done first thing (``run.prepare_run`` sets this)
        self.pending_update = False
        self._last_eval: int | None = None   # step of the last evaluation check; None before the first

    def evaluate_now(self) -> None:
        step = self.model.num_timesteps
        rows = [r for r in read_evaluations(self.csv) if int(r["step"]) < step]
        if self.stream is not None:
            print(f"[{self.name}] evaluating at step {step}: {self.n_episodes} games ...", file=self.stream,
                  flush=True)
        t0 = time.time()
        returns = evaluate(self.model.policy, self.game, self.n_episodes, seed=self.seed * 1_000_003 + step,
                           epsilon=self.epsilon, max_envs=self.eval_envs, stop=self.stop)
        if self.stream is not None:
            print(f"[{self.name}] eval step {step}: return {np.mean(returns):.1f} +- {np.std(returns):.1f} over "
                  f"{len(returns)} games ({time.time() - t0:.0f} s)", file=self.stream, flush=True)
        rows.append(eval_row(step, returns))
        write_evaluations(self.csv, rows)
        self.logger.record("eval/mean_return", float(np.mean(returns)))
        self.logger.record("eval/std_return", float(np.std(returns)))
        self.log_statistics(step)

    def log_statistics(self, step: int) -> None:
        stats = self.model.policy.statistics()
        gates = [[step, *k.split("/")[1:3], v] for k, v in stats.items() if k.startswith("gate/")]
        paths = [[step, k.split("/")[1], v] for k, v in stats.items() if k.startswith("pathway/")]
        flows = [[step, *k.split("/")[1:3], v] for k, v in stats.items() if k.startswith("flow/")]
        if gates:
            append_stats(self.run_dir / "gates.csv", ["step", "layer", "source", "gate"], gates)
        if paths:
            append_stats(self.run_dir / "pathway.csv", ["step", "model", "weight"], paths)
        if flows:   # Knowledge Flow: softmax weight of the student and of each teacher at each flow point
            append_stats(self.run_dir / "flow.csv", ["step", "point", "model", "weight"], flows)

    def _previous_step(self) -> int:
        """The step of the last evaluation check (before the first: the step before this one)."""
        if self._last_eval is None:
            return self.model.num_timesteps - self.model.n_envs
        return self._last_eval

    def eval_due(self) -> bool:
        """Whether the current step crosses a multiple of ``eval_freq`` since the last evaluation."""
        return crossed(self._previous_step(), self.model.num_timesteps, self.eval_freq)

    def _on_training_start(self) -> None:
        step = self.model.num_timesteps
        if step > 0:   # resumed
            evaluated = max((int(r["step"]) for r in read_evaluations(self.csv)), default=0)
            if crossed(evaluated, step, self.eval_freq):
                # stopped at its evaluation step, before the evaluation (a stop ends the step early): evaluate
                # now, before the owed update, where the uninterrupted run evaluates
                self.evaluate_now()
                self.logger.dump(step)
            self._last_eval = step
        if self.pending_update:
            self.pending_update = False
            self.model.train(gradient_steps=self.model.gradient_steps, batch_size=self.model.batch_size)
        if self.eval_at_start and self.model.num_timesteps == 0 and not read_evaluations(self.csv):
            self.evaluate_now()  # step 0: the jump-start a transferred network gives before any learning
            self.logger.dump(0)

    def _on_step(self) -> bool:
        if self.stop:
            return False
        return self.deadline is None or time.time() < self.deadline

    def last_checkpoint_due(self) -> bool:
        """Whether this is the last step of training (``learn``'s total) and checkpoints are on.  Its checkpoint is
        written even off the checkpoint schedule (``--steps`` not a multiple of it): a stop during the final
        evaluation then resumes at this step (owing only its update), not at an earlier checkpoint with the steps
        after it to train again."""
        return bool(self.checkpoint_freq) and self.model.num_timesteps >= self.model._total_timesteps

    def saves_now(self) -> bool:
        """Whether this step's rollout end evaluates or checkpoints, i.e. reads the agent's own networks."""
        return self.eval_due() or self.last_checkpoint_due()

    def _on_rollout_end(self) -> None:
        step, last = self.model.num_timesteps, self._previous_step()
        checkpoint = self.last_checkpoint_due()
        if self.eval_due():
            self.evaluate_now()
            self.logger.dump(step)
            checkpoint = checkpoint or bool(self.checkpoint_freq) and crossed(last, step, self.checkpoint_freq)
        if checkpoint:
            self.checkpoint(self.model)
        self._last_eval = step


class ProgressLogCallback(BaseCallback):
    """A progress line (step, steps/s, ETA, last losses) every ``every`` seconds, for logs without a progress bar."""

    def __init__(self, total: int, every: float = 60.0, stream=None):
        super().__init__()
        self.total, self.every, self.stream = total, every, stream

    def _on_training_start(self) -> None:
        self._t0 = self._last = time.time()
        self._s0 = self.model.num_timesteps

    def _on_step(self) -> bool:
        now = time.time()
        if now - self._last >= self.every:
            self._last = now
            step = self.model.num_timesteps
            rate = (step - self._s0) / max(now - self._t0, 1e-9)
            eta = (self.total - step) / max(rate, 1e-9)
            losses = getattr(self.model, "last_losses", {})
            print(f"step {step}/{self.total}  {rate:.1f} steps/s  ETA {eta / 60:.1f} min  "
                  + " ".join(f"{k}={v:.4f}" for k, v in losses.items()), file=self.stream, flush=True)
        return True


class CoreShareCallback(BaseCallback):
    """Keeps the run at its share of the cores (:class:`rlzoo_transfer.threads.CoreShare`): a look at the start of
    training and at most every ``share.every`` seconds after it."""

    def __init__(self, share: CoreShare):
        super().__init__()
        self.share = share

    def _on_training_start(self) -> None:
        self.share.check()

    def _on_step(self) -> bool:
        self.share.check()
        return True
