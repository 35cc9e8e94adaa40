"""The vision run plumbing: checkpoints read without unpickling code (RNG states: test_rngstate.py),
clear errors for a checkpoint that is not one."""
import argparse
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from rlzoo_transfer.vision.data import BatchStream
from rlzoo_transfer.vision.options import UsageError, add_run_args, cli_main
from rlzoo_transfer.vision.runtime import FitState, make_checkpointer, resume_from


class _TouchOnLoad:
    """Unpickling this would create ``marker``: what an untrusted checkpoint could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def _run_parts():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [2, 4], 0.1)
    stream = BatchStream(list(range(10)), 4, seed=0)
    return model, optimizer, scheduler, stream


def test_checkpoint_resumes_with_weights_only(tmp_path):
    model, optimizer, scheduler, stream = _run_parts()
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    config = {"method": "zoo", "seed": 1, "crop_scale": (0.5, 1.0), "pairs": [(0, 1)], "milestones": None}
    make_checkpointer(tmp_path / "checkpoint.pt", model, optimizer, scheduler, stream, config)(
        FitState(5, [(5, {"loss": 0.25})], 1.5))
    fresh = _run_parts()
    state = resume_from(tmp_path / "checkpoint.pt", *fresh, config, keys=("method", "seed"))
    assert (state.iteration, state.history, state.seconds) == (5, [(5, {"loss": 0.25})], 1.5)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), fresh[0].state_dict().values()))
    assert fresh[2].last_epoch == 1 and fresh[1].state_dict()["state"]
    with pytest.raises(ValueError, match="made with seed=1, this run has 2"):
        resume_from(tmp_path / "checkpoint.pt", *_run_parts(), config | {"seed": 2}, keys=("method", "seed"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")   # torch.save writes 4; the safe loader notes it
def test_weights_of_another_network_are_one_line_naming_what_does_not_fit(tmp_path):
    model, optimizer, scheduler, stream = _run_parts()
    make_checkpointer(tmp_path / "checkpoint.pt", model, optimizer, scheduler, stream, {})(FitState(1, [], 0.0))
    wider = torch.nn.Linear(3, 5)
    parts = (wider, torch.optim.SGD(wider.parameters(), lr=0.1), *_run_parts()[2:])
    with pytest.raises(ValueError) as err:
        resume_from(tmp_path / "checkpoint.pt", *parts, {}, keys=())
    message = str(err.value)
    assert "\n" not in message and "do not fit" in message
    assert "size mismatch for weight: (2, 3) in the file, (5, 3) in the network (and 1 more)" in message


def test_a_checkpoint_that_is_not_one_is_a_clear_error_and_runs_no_code(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x04not a checkpoint")
    with pytest.raises(ValueError, match="garbage.pt: not a readable checkpoint.*delete it or use another --out"):
        resume_from(garbage, *_run_parts(), {}, keys=())
    marker = tmp_path / "marker"
    hostile = tmp_path / "hostile.pt"
    torch.save({"config": {}, "model": _TouchOnLoad(marker)}, hostile)
    with pytest.raises(ValueError, match="hostile.pt: not a readable checkpoint"):
        resume_from(hostile, *_run_parts(), {}, keys=())
    assert not marker.exists()
    old_format = tmp_path / "old.pt"                     # numpy's state as a tuple, as checkpoints before held it
    model, optimizer, scheduler, stream = _run_parts()
    torch.save({"config": {}, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "stream": stream.state(), "iteration": 1, "history": [],
                "seconds": 0.0, "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}}, old_format)
    with pytest.raises(ValueError, match="old.pt: not a readable checkpoint"):
        resume_from(old_format, *_run_parts(), {}, keys=())


def test_cli_main_prints_results_and_turns_usage_errors_into_status_2(capsys):
    parser = argparse.ArgumentParser()
    add_run_args(parser, argparse.Namespace(seed=0, out="runs/x", save_every=10, log_every=5, eval_every=0,
                                            device="auto", workers=0, threads=0))

    def run(cfg):
        if cfg["seed"] == 7:
            raise UsageError("seven is unlucky")
        return {"seed": cfg["seed"], "out": cfg["out"], "other": random.random()}

    assert cli_main(parser, dict, run, ("seed", "out"), ["--seed", "3", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == '{"seed": 3, "out": "runs/x"}'
    assert cli_main(parser, dict, run, ("seed",), ["--seed", "7"]) == 2
    assert capsys.readouterr().err.strip() == "error: seven is unlucky"


def test_save_atomic_writes_the_same_bytes_for_the_same_weights(tmp_path):
    """The sha256 of a saved checkpoint depends on the weights only (it was the temporary file's random name too)."""
    import hashlib

    from rlzoo_transfer.vision.runtime import save_atomic

    weights = {"w": torch.arange(6.0).view(2, 3)}
    (tmp_path / "a").mkdir()
    save_atomic(weights, tmp_path / "a" / "model.pt")
    save_atomic(weights, tmp_path / "model.pt")
    digests = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "a" / "model.pt", tmp_path / "model.pt")}
    assert len(digests) == 1
    assert torch.equal(torch.load(tmp_path / "model.pt", weights_only=True)["w"], weights["w"])
