"""Global RNG states through a safe load: every generator continues where it was, numpy's cached Gaussian
included, and RL checkpoints written before ``rngstate`` existed still restore."""
import random

import numpy as np
import torch

from rlzoo_transfer import rngstate


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _draws():
    return random.random(), np.random.normal(size=3), torch.rand(3)


def _same(a, b) -> bool:
    return a[0] == b[0] and np.array_equal(a[1], b[1]) and torch.equal(a[2], b[2])


def test_capture_restore_round_trips_through_a_safe_load(tmp_path):
    _seed_all(3)
    np.random.normal()                                   # leaves a cached Gaussian in numpy's state
    torch.save(rngstate.capture(), tmp_path / "rng.pt")
    expected = _draws()
    _seed_all(99)
    rngstate.restore(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert _same(expected, _draws())


def test_restore_reads_the_older_rl_checkpoint_layout(tmp_path):
    """What ``rl/checkpoint.py`` wrote before (runs checkpointed then resume with this code)."""
    _seed_all(5)
    old = {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
           "numpy_pos": int(np.random.get_state()[2]), "python": repr(random.getstate())}
    torch.save(old, tmp_path / "rng.pt")
    expected = _draws()
    _seed_all(99)
    rngstate.restore(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert _same(expected, _draws())


def test_restore_without_python_state_leaves_python_rng_alone():
    """Vision checkpoints written before ``rngstate`` had no python state."""
    _seed_all(7)
    state = rngstate.capture()
    del state["python"]
    expected_np = np.random.normal(size=3)
    random.seed(11)
    after_seed = random.getstate()
    rngstate.restore(state)
    assert random.getstate() == after_seed and np.array_equal(np.random.normal(size=3), expected_np)
