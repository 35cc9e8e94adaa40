"""The global RNG states (python, numpy, torch, CUDA) as plain data, for checkpoints read with
``torch.load(weights_only=True)``.

numpy's own state is a tuple holding an ndarray, which the safe loader refuses, and python's holds a tuple of
625 ints: numpy's key becomes an int64 tensor beside its position and cached Gaussian, python's state its
``repr`` (read back with ``ast.literal_eval``, which evaluates literals only).
"""
from __future__ import annotations

import ast
import random

import numpy as np
import torch


def capture() -> dict:
    """Every global RNG's state: ``{"torch", "numpy_key", "numpy_pos", "numpy_has_gauss", "numpy_gauss",
    "python"[, "cuda"]}``."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    out = {"torch": torch.get_rng_state(), "numpy_key": torch.from_numpy(key.astype(np.int64)),
           "numpy_pos": int(pos), "numpy_has_gauss": int(has_gauss), "numpy_gauss": float(gauss),
           "python": repr(random.getstate())}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def restore(state: dict) -> None:
    """Inverse of :func:`capture`.  Also reads the layout RL checkpoints had before this module
    (``numpy``/``numpy_pos``, no cached Gaussian), so runs checkpointed then still resume; states without
    ``python`` (vision checkpoints of that time) leave python's RNG alone."""
    torch.set_rng_state(state["torch"])
    if "numpy_key" in state:
        np.random.set_state(("MT19937", state["numpy_key"].numpy().astype(np.uint32), state["numpy_pos"],
                             state["numpy_has_gauss"], state["numpy_gauss"]))
    else:
        np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "python" in state:
        random.setstate(ast.literal_eval(state["python"]))
    if "cuda" in state and torch.cuda.is_available():     # a machine with fewer GPUs restores the ones it has
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
