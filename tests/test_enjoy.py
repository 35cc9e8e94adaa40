"""python -m rlzoo_transfer.enjoy on a real (tiny) zoo run and on the shipped sources: the rebuilt policy is the
saved one, the returns are the evaluation protocol's, the GIF is written, and bad input is one line and exit 2."""
from __future__ import annotations

import io
import json
import re
import shutil
import signal
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from rlzoo_transfer import enjoy
from rlzoo_transfer.rl.der import DER
from rlzoo_transfer.rl.evaluation import evaluate
from rlzoo_transfer.statedict import mismatch
from rlzoo_transfer.zoo import DEFAULT_ZOO
from tests.conftest import child
from tests.test_train import TINY, cli

GAME = "Alien"   # an untrained agent's game ends in ~0.5 s


@pytest.fixture(scope="module")
def zoo_run(tmp_path_factory):
    log = tmp_path_factory.mktemp("runs")
    proc = cli("--game", GAME, "--method", "zoo", "--steps", "200", "--eval-freq", "200", "--log-dir", str(log),
               *TINY)
    assert proc.returncode == 0, proc.stderr
    return log / GAME / "zoo" / "seed0"


def _obs(n: int = 4) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (n, 4, 84, 84), dtype=np.uint8))


def test_rebuilt_policy_is_the_saved_one(zoo_run):
    policy, game, _ = enjoy.policy_for_run(zoo_run)
    saved = DER.load(zoo_run / "model.zip", device="cpu").policy
    policy.set_training_mode(False)
    saved.set_training_mode(False)
    assert game == GAME
    with torch.no_grad():
        torch.testing.assert_close(policy.q_values(_obs()), saved.q_values(_obs()), rtol=0, atol=0)
    state = enjoy.read_policy_weights(zoo_run / "model.zip")
    assert any(".align" in k for k in state)   # the zoo network's own parameters came back, not a plain DER's


def test_cli_returns_gif_and_json(zoo_run, tmp_path, capsys):
    gif, out = tmp_path / "alien.gif", tmp_path / "alien.json"
    assert enjoy.main([str(zoo_run), "--episodes", "2", "--seed", "3", "--gif", str(gif), "--gif-steps", "40",
                       "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    policy, _, _ = enjoy.policy_for_run(zoo_run)
    assert result["returns"] == evaluate(policy, GAME, 2, seed=3)   # the protocol's evaluation, reproducible
    assert f"mean {np.mean(result['returns']):.1f}" in printed and "the run's final.json" in printed
    with Image.open(gif) as im:
        assert im.size == (168, 168) and im.n_frames == result["gif"]["frames"] <= 40
    assert not list(tmp_path.glob(".*.tmp"))   # written atomically


def test_gif_episode_is_the_evaluation_episode(zoo_run, tmp_path):
    policy, _, _ = enjoy.policy_for_run(zoo_run)
    # epsilon 0.5: greedy and random actions both occur, and the random ones must be drawn as evaluate draws them
    info = enjoy.record_gif(policy, GAME, tmp_path / "ep.gif", seed=6, epsilon=0.5, max_steps=27_000)
    assert info["ended"]
    assert [info["episode_return"]] == evaluate(policy, GAME, 1, seed=6, epsilon=0.5)


def test_source_plays_its_own_game(tmp_path):
    policy, game, label = enjoy.policy_for_source("Seaquest")
    assert game == "Seaquest" and "Seaquest.pt" in label
    shipped = torch.load(DEFAULT_ZOO / "Seaquest.pt", weights_only=True)
    for k, v in policy.q_net.state_dict().items():
        assert torch.equal(v, shipped[k]), k
    gif = tmp_path / "seaquest.gif"
    assert enjoy.main(["--source", "Seaquest", "--episodes", "0", "--gif", str(gif), "--gif-steps", "10"]) == 0
    with Image.open(gif) as im:
        assert im.n_frames == 10


def _fake_model_zip(path: Path, payload) -> None:
    buf = io.BytesIO()
    torch.save(payload, buf)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("policy.pth", buf.getvalue())


class NotATensor:
    """A pickled object in a checkpoint: must never be unpickled."""


def test_bad_input_is_one_line_and_exit_2(zoo_run, tmp_path, capsys):
    def fails(argv, message):
        assert enjoy.main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and err.count("\n") == 1, err

    fails([str(tmp_path / "nowhere")], "no run folder")
    fails([], "give a run folder or --source")
    fails([str(zoo_run), "--source", "Seaquest"], "give a run folder or --source")
    fails(["--source", "Pong"], "not in")
    fails([str(tmp_path)], "has no config.yml")
    fails([str(zoo_run), "--episodes", "0"], "nothing to do")
    fails([str(zoo_run), "--episodes", "-1", "--scale", "0"],
          "out of range: --scale 0 (must be > 0), --episodes -1 (must be >= 0)")
    fails([str(zoo_run), "--epsilon", "1.5"], "out of range: --epsilon 1.5 (must be in [0, 1])")

    run = tmp_path / "copy"
    shutil.copytree(zoo_run, run, ignore=shutil.ignore_patterns("checkpoint", "tb"))
    fails([str(run), "--checkpoint"], "has no checkpoint")
    (run / "model.zip").rename(run / "kept.zip")
    fails([str(run)], "its weights are not in this folder")   # finished, like a published copy in eval/runs
    (run / "final.json").rename(run / "final.kept")
    fails([str(run)], "add --checkpoint")
    (run / "final.kept").rename(run / "final.json")
    (run / "model.zip").write_bytes(b"not a zip at all")
    fails([str(run)], "is not an SB3 model archive")
    _fake_model_zip(run / "model.zip", {"x": NotATensor()})
    fails([str(run)], "as tensors only")
    state = enjoy.read_policy_weights(run / "kept.zip")
    aligns = [k for k in state if ".align" in k]   # in the network's order, as torch names them
    _fake_model_zip(run / "model.zip", {k: v for k, v in state.items() if ".align" not in k})
    fails([str(run)], f"does not fit the network of {run / 'config.yml'} (method zoo): {len(aligns)} missing keys "
                      f"({aligns[0]}, {aligns[1]}, ...)")   # was cut at torch's header line, ending in a colon
    (run / "model.zip").unlink()
    (run / "kept.zip").rename(run / "model.zip")
    config = yaml.safe_load((run / "config.yml").read_text())
    (run / "config.yml").write_text(yaml.safe_dump({**config, "method": "scratch"}))
    fails([str(run)], "config.yml")   # zoo hyperparameters under method scratch
    (run / "config.yml").write_text(yaml.safe_dump({**config, "method": "zooo"}))
    fails([str(run)], "unknown method")
    (run / "config.yml").write_text(": : damaged\n")   # was a multi-line YAML traceback
    fails([str(run)], "config.yml: not valid YAML (line 1: expected <block end>, but found ':')")
    (run / "config.yml").write_text("- a list\n")
    fails([str(run)], "config.yml is not a run's config")


def test_a_model_of_another_method_says_what_does_not_fit(zoo_run, tmp_path, capsys):
    """A run folder whose config.yml says scratch while its model.zip is a zoo run's: the error ended at torch's
    header line (``... (method scratch): Error(s) in loading state_dict for DERPolicy:``); now one line saying
    which keys do not fit."""
    from rlzoo_transfer.config import load_config

    run = tmp_path / "wrongnet_run"
    run.mkdir()
    shutil.copy(zoo_run / "model.zip", run / "model.zip")
    config = yaml.safe_load((zoo_run / "config.yml").read_text())
    scratch = {k: v for k, v in config["hyperparams"].items() if k in load_config(None, {})}
    (run / "config.yml").write_text(yaml.safe_dump({**config, "method": "scratch", "hyperparams": scratch}))
    assert enjoy.main([str(run), "--episodes", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    head = f"error: {run / 'model.zip'} does not fit the network of {run / 'config.yml'} (method scratch): "
    assert err.startswith(head) and not err.rstrip().endswith(":"), err
    assert re.search(r": \d+ missing keys \(q_net\.\S+, q_net\.\S+, \.\.\.\), \d+ unexpected keys \(q_net\.", err), err


def test_load_state_dict_errors_are_one_line():
    """statedict.mismatch: torch's multi-line load_state_dict message as one line - the key counts with the first
    names, the first size mismatch with both shapes - and any other error's first line."""
    small, big = torch.nn.Sequential(torch.nn.Linear(2, 3)), torch.nn.Sequential(torch.nn.Linear(2, 5),
                                                                               torch.nn.Linear(5, 4))
    with pytest.raises(RuntimeError) as e:
        small.load_state_dict(big.state_dict())
    assert mismatch(e.value) == ("2 unexpected keys (1.weight, 1.bias); size mismatch for 0.weight: (5, 2) in the "
                                 "file, (3, 2) in the network (and 1 more)")
    with pytest.raises(RuntimeError) as e:
        big.load_state_dict({"0.weight": torch.zeros(5, 2)})
    assert mismatch(e.value) == "3 missing keys (0.bias, 1.weight, ...)"
    with pytest.raises(RuntimeError) as e:
        small.load_state_dict({"0.weight": torch.zeros(3, 2), "0.bias": torch.zeros(4)})
    assert mismatch(e.value) == "size mismatch for 0.bias: (4,) in the file, (3,) in the network"
    assert mismatch(ValueError("first\nsecond")) == "first" and mismatch(ValueError()) == "ValueError"


def test_a_missing_zoo_names_enjoys_own_flag(tmp_path, capsys):
    """``enjoy --zoo-dir nozoo`` advised ``-p zoo_dir=DIR``, train's way of naming a zoo, not enjoy's."""
    assert enjoy.main(["--source", "Seaquest", "--zoo-dir", str(tmp_path / "nozoo")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no zoo manifest at {tmp_path / 'nozoo' / 'zoo.yml'}") and err.count("\n") == 1
    assert "point to a zoo folder with --zoo-dir DIR" in err and "-p zoo_dir" not in err, err
    assert f"pretrain --game Seaquest --zoo-dir {tmp_path / 'nozoo'}`" in err, err


def test_ctrl_c_is_one_line_and_exit_130(tmp_path):
    """Ctrl-C while a source plays (enjoy, like bench / select / curves / publish / confirm: nothing to resume)
    ended in a KeyboardInterrupt traceback; now one line and exit status 130, and --out is not half-written."""
    out = tmp_path / "result.json"
    cmd = [sys.executable, "-m", "rlzoo_transfer.enjoy", "--source", "Seaquest", "--episodes", "200", "--out",
           str(out), "--threads", "1"]
    with child(cmd, env={"PYTHONUNBUFFERED": "1"}) as proc:
        assert "Seaquest.pt" in proc.stdout.readline()   # the policy is loaded and the episodes are under way
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().startswith("interrupted"), err
    assert not out.exists()
