"""Shared pytest set-up: one torch thread (the suite runs beside training jobs on 2 cores, and one thread makes
CPU results reproducible)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    torch.set_num_threads(1)
    yield
