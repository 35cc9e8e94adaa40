"""Checkpoints that survive a kill at any moment: model + optimiser (SB3 zip), replay, RNG states.

Layout: ``<run>/checkpoint/{model.zip, replay.npz, rng.pt}``.  A new checkpoint is written to
``checkpoint.tmp/`` and swapped in by renames, so there is always one complete checkpoint on disk
(``checkpoint/``, or ``checkpoint.old/`` during the swap).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from rlzoo_transfer import rngstate
from rlzoo_transfer.atomic import naming_the_file, save_torch
from rlzoo_transfer.stop import interrupts_surface


def save_checkpoint(model, run_dir: Path) -> Path:
    run_dir = Path(run_dir)
    tmp, final, old = run_dir / "checkpoint.tmp", run_dir / "checkpoint", run_dir / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with interrupts_surface():
        with naming_the_file(tmp / "model.zip"):
            model.save(tmp / "model.zip")
        with naming_the_file(tmp / "replay.npz"):
            model.replay_buffer.save(str(tmp / "replay.npz"))
        save_torch(rngstate.capture(), tmp / "rng.pt")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(run_dir: Path) -> Path | None:
    for name in ("checkpoint", "checkpoint.old"):
        path = Path(run_dir) / name
        if (path / "model.zip").exists() and (path / "replay.npz").exists():
            return path
    return None


def load_checkpoint(algo_class, path: Path, env, device) -> object:
    """Model (with optimiser state), replay buffer and RNG states from ``path``; the env restarts its games."""
    model = algo_class.load(path / "model.zip", env=env, device=device)
    model.replay_buffer.load(str(path / "replay.npz"))
    model.replay_buffer.end_episodes()
    rngstate.restore(torch.load(path / "rng.pt", weights_only=True))
    return model
