"""A user's own zoo, the way the README tells it: copy the shipped ``pretrain/`` folder, pretrain a game the zoo
lacks into the copy, then transfer from any of its sources with ``-p zoo_dir=... sources=...``.  Pong's 6 actions
lack some of Gopher's 8, so its output rows cannot be mapped by action meaning: a one-line error that names
``fresh_output``, and with ``-p fresh_output=true`` the run trains."""
from __future__ import annotations

import csv
import hashlib
import shutil
from collections import defaultdict

import pytest
import yaml

from tests.conftest import ROOT, run_module

TINY = ["--steps", "200", "--eval-episodes", "1", "--final-eval-episodes", "1", "--no-progress"]
TINY_HP = ["learning_starts=100", "buffer_size=2000"]


@pytest.fixture(scope="module")
def own_zoo(tmp_path_factory):
    """pretrain/ copied, plus a (tiny) Pong source pretrained into the copy."""
    tmp = tmp_path_factory.mktemp("own_zoo")
    zoo = tmp / "myzoo"
    shutil.copytree(ROOT / "pretrain", zoo)
    proc = run_module("pretrain", "--game", "Pong", "--steps", "600", "--n-envs", "4", "--eval-freq", "100000",
               "--final-eval-episodes", "1", "-p", "learning_starts=200", "batch_size=32", "buffer_size=4000",
               "--zoo-dir", str(zoo), "--log-dir", str(tmp / "runs"), "--device", "cpu", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    return zoo, tmp


def test_pretrain_adds_a_source_and_keeps_the_copied_ones(own_zoo):
    zoo, _ = own_zoo
    shipped = yaml.safe_load((ROOT / "pretrain" / "zoo.yml").read_text())["sources"]
    sources = yaml.safe_load((zoo / "zoo.yml").read_text())["sources"]
    assert list(sources) == [*shipped, "Pong"]
    for game in shipped:
        assert sources[game] == shipped[game]
    assert sources["Pong"]["sha256"] == hashlib.sha256((zoo / "Pong.pt").read_bytes()).hexdigest()
    assert sources["Pong"]["actions"] == ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE", "LEFTFIRE"]


def test_a_source_without_the_targets_actions_names_fresh_output(own_zoo):
    zoo, tmp = own_zoo
    log = tmp / "refused"
    proc = run_module("train", "--game", "Gopher", "--method", "zoo", "--log-dir", str(log), *TINY,
               "-p", f"zoo_dir={zoo}", "sources=Seaquest,Riverraid,Pong", *TINY_HP)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("error: source Pong has no action 'UP' (it has NOOP, FIRE, RIGHT, LEFT, "
                                   "RIGHTFIRE, LEFTFIRE); use fresh output layers (-p fresh_output=true)")
    assert not log.exists() or not list(log.rglob("config.yml"))


def test_zoo_over_three_sources_with_fresh_output_layers(own_zoo):
    zoo, tmp = own_zoo
    log = tmp / "runs3"
    proc = run_module("train", "--game", "Gopher", "--method", "zoo", "--log-dir", str(log), *TINY,
               "-p", f"zoo_dir={zoo}", "sources=Seaquest,Riverraid,Pong", "fresh_output=true", *TINY_HP)
    assert proc.returncode == 0, proc.stderr
    folder = log / "Gopher" / "zoo" / "seed0"
    config = yaml.safe_load((folder / "config.yml").read_text())
    assert config["hyperparams"]["zoo_dir"] == str(zoo) and config["hyperparams"]["fresh_output"] is True
    # the run names the checkpoints it started from, though they live outside the repository
    manifest = yaml.safe_load((zoo / "zoo.yml").read_text())["sources"]
    assert config["zoo"]["dir"] == str(zoo) and list(config["zoo"]["sources"]) == ["Seaquest", "Riverraid", "Pong"]
    for game, entry in config["zoo"]["sources"].items():
        on_disk = hashlib.sha256((zoo / entry["file"]).read_bytes()).hexdigest()
        assert entry["sha256"] == manifest[game]["sha256"] == on_disk
        assert entry["agent_steps"] == manifest[game]["agent_steps"]
    assert config["zoo"]["sources"]["Pong"]["agent_steps"] == 600
    gates = defaultdict(dict)
    with open(folder / "gates.csv", newline="") as f:
        for row in csv.DictReader(f):
            gates[(row["step"], row["layer"])][row["source"]] = float(row["gate"])
    assert gates and all(set(g) == {"Seaquest", "Riverraid", "Pong"} for g in gates.values())
    assert all(abs(sum(g.values()) - 1) < 1e-4 for g in gates.values())   # gate_norm: sum
    assert (folder / "final.json").exists()


def test_finetune_from_the_new_source(own_zoo):
    zoo, tmp = own_zoo
    log = tmp / "runs_ft"
    proc = run_module("train", "--game", "Gopher", "--method", "finetune", "--source", "Pong", "--log-dir", str(log),
               *TINY, "-p", f"zoo_dir={zoo}", "fresh_output=true", *TINY_HP)
    assert proc.returncode == 0, proc.stderr
    folder = log / "Gopher" / "finetune-Pong" / "seed0"
    assert (folder / "final.json").exists()
    assert list(yaml.safe_load((folder / "config.yml").read_text())["zoo"]["sources"]) == ["Pong"]


@pytest.mark.parametrize("method", ["zoo", "hub", "kflow"])
def test_no_sources_named_is_a_one_line_error(method, tmp_path):
    """``-p sources=`` reads as no value: it was "'NoneType' object is not iterable"."""
    proc = run_module("train", "--game", "Gopher", "--method", method, "--log-dir", str(tmp_path), *TINY,
                      "-p", "sources=")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("error: no sources named: set -p sources=A,B to sources listed in the zoo's "
                                   "zoo.yml")
    assert not list(tmp_path.iterdir())
