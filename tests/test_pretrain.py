"""The pretrain CLI with a tiny budget: the exported source checkpoint and its zoo.yml entry."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile

import pytest
import torch
import yaml

from rlzoo_transfer import pretrain
from rlzoo_transfer.pretrain import export_source
from rlzoo_transfer.rl.der import DER
from rlzoo_transfer.rl.policies import DERNetwork
from tests.conftest import ROOT, child, signal_at_line, wait_until


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pretrain")
    zoo, log = tmp / "zoo", tmp / "runs"
    cmd = [sys.executable, "-m", "rlzoo_transfer.pretrain", "--game", "Riverraid", "--steps", "600", "--n-envs", "4",
           "--eval-freq", "100000", "--final-eval-episodes", "2", "-p", "learning_starts=200", "batch_size=32",
           "buffer_size=4000", "--zoo-dir", str(zoo), "--log-dir", str(log), "--device", "cpu", "--no-progress",
           "--threads", "1"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return zoo, log, proc


def test_checkpoint_loads_into_a_der_network(pretrained):
    zoo, log, proc = pretrained
    path = zoo / "Riverraid.pt"
    assert f"-> {path}" in proc.stdout
    state = torch.load(path, weights_only=True, map_location="cpu")
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    net = DERNetwork(18)
    net.load_state_dict(state)  # strict: exactly DER's network, 18 actions
    assert state["advantage_out.weight_mu"].shape == (18 * 51, 256)
    x = torch.rand(2, 4, 84, 84)
    net.eval()
    out = net(x)
    assert out.shape == (2, 18, 51) and torch.isfinite(out).all()
    # it is the run's trained online network, exported tensor for tensor
    model = DER.load(log / "Riverraid" / "scratch" / "seed0" / "model.zip", device="cpu")
    assert model._n_updates > 0
    online = model.policy.q_net.state_dict()
    assert set(online) == set(state)
    for k, v in online.items():
        assert torch.equal(v, state[k]), k


def test_zoo_manifest_records_the_source(pretrained):
    zoo, log, _ = pretrained
    manifest = yaml.safe_load((zoo / "zoo.yml").read_text())
    entry = manifest["sources"]["Riverraid"]
    assert entry["file"] == "Riverraid.pt"
    assert entry["sha256"] == hashlib.sha256((zoo / "Riverraid.pt").read_bytes()).hexdigest()
    assert entry["agent_steps"] == 600
    assert entry["final_eval"]["n_episodes"] == 2
    assert len(entry["actions"]) == 18 and entry["actions"][0] == "NOOP"
    assert entry["network"] == "DERNetwork" and entry["n_atoms"] == 51 and entry["hidden"] == 256
    # pretrain.yml settings with the command-line overrides on top
    hp = entry["hyperparams"]
    assert hp["learning_starts"] == 200 and hp["batch_size"] == 32 and hp["buffer_size"] == 4000
    assert hp["n_steps"] == 3 and hp["learning_rate"] == 1e-4
    assert hp["gradient_steps"] == 1   # Rainbow's 1 update per 4 agent steps: n_envs // 4 per vector step
    assert entry["n_envs"] == 4 and entry["device"] == "cpu"
    assert entry["command"].startswith("python -m rlzoo_transfer.pretrain --game") and "--steps 600" in entry["command"]
    assert entry["commit"]
    # the run's small files travel with the checkpoint
    for name in ("final.json", "config.yml"):
        assert (zoo / "Riverraid" / name).exists()
    assert (log / "Riverraid" / "scratch" / "seed0" / "model.zip").exists()
    # and the run folder has its summary to look at
    for name in ("curve.png", "report.md"):
        assert (log / "Riverraid" / "scratch" / "seed0" / name).exists(), name


def test_a_resumed_source_records_both_commands(pretrained, tmp_path):
    """A source finished by ``--resume`` keeps the command that started it and adds the one that finished it."""
    _, log, _ = pretrained
    run = log / "Riverraid" / "scratch" / "seed0"
    started = yaml.safe_load((run / "config.yml").read_text())["command"]
    entry = export_source(run, tmp_path, "python -m rlzoo_transfer.pretrain --game Riverraid --resume")
    assert entry["command"] == started and "--resume" not in started
    assert entry["resumed_with"]["command"].endswith("--resume") and entry["resumed_with"]["commit"]
    again = export_source(run, tmp_path, started)   # not resumed: no resumed_with
    assert "resumed_with" not in again


@pytest.mark.parametrize("manifest,message", [
    (": : :\n", "not valid YAML (line 1: expected <block end>, but found ':')"),
    ("- Seaquest\n", "is not a zoo manifest"),
    ("sources: [Seaquest]\n", "is not a zoo manifest"),
])
def test_a_damaged_zoo_manifest_is_refused_before_training(tmp_path, capsys, manifest, message):
    """The export at the end of pretraining adds to zoo.yml: a damaged one ended hours of training in a YAML
    error; now it is one line before anything starts, and the manifest is left as it is."""
    zoo, log = tmp_path / "zoo", tmp_path / "runs"
    zoo.mkdir()
    (zoo / "zoo.yml").write_text(manifest)
    assert pretrain.main(["--game", "Pong", "--steps", "100", "--zoo-dir", str(zoo), "--log-dir", str(log)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {zoo / 'zoo.yml'}") and message in err[0], err
    assert (zoo / "zoo.yml").read_text() == manifest and not log.exists()
    # a zoo outside the checkout: git cannot restore it (was `git checkout /tmp/.../zoo.yml`)
    assert "git checkout" not in err[0] and "copy it again from where it came from, or move it away" in err[0]


def test_resume_without_steps_keeps_the_planned_total(pretrained, tmp_path):
    """``--resume`` without ``--steps`` continues to the total the run was planned for (600 here), not to the
    default 1M - which would train a finished source on for hours and rewrite its planned total."""
    _, log, _ = pretrained
    shutil.copytree(log, tmp_path / "runs")
    config = next((tmp_path / "runs").glob("Riverraid/*/seed0/config.yml"))
    cmd = [sys.executable, "-m", "rlzoo_transfer.pretrain", "--game", "Riverraid", "--n-envs", "4", "--eval-freq",
           "100000", "--final-eval-episodes", "2", "-p", "learning_starts=200", "batch_size=32", "buffer_size=4000",
           "--zoo-dir", str(tmp_path / "zoo"), "--log-dir", str(tmp_path / "runs"), "--device", "cpu",
           "--no-progress", "--threads", "1", "--resume"]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert yaml.safe_load(config.read_text())["steps"] == 600
    assert "previous_steps" not in config.read_text()


def test_bad_game_is_a_one_line_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlzoo_transfer.pretrain", "--game", "Rivereid", "--zoo-dir",
                           str(tmp_path), "--log-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: unknown game") and "Did you mean Riverraid" in proc.stderr
    assert pretrain.main(["--game", "Riverraid", "-p", "batch_sise=64", "--zoo-dir", str(tmp_path),
                          "--log-dir", str(tmp_path)]) == 2
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("extra,message", [
    (["--n-envs", "0"], "out of range: --n-envs 0 (must be > 0)"),          # was a segfault of the vector env
    (["--max-minutes", "-1"], "out of range: --max-minutes -1.0 (must be > 0)"),   # was a run started anyway
    (["--steps", "0", "--eval-freq", "-5"], "out of range: --steps 0 (must be > 0), --eval-freq -5 (must be > 0)"),
    (["--checkpoint-freq", "-1"], "out of range: --checkpoint-freq -1 (must be >= 0)"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--threads", "-2"], "--threads must be >= 0, got -2"),
    (["--n-envs", "40", "-p", "buffer_size=100"], "--n-envs 40 splits buffer_size=100 into 2 transitions per env"),
])
def test_bad_numbers_are_one_line_errors_before_any_work(extra, message, tmp_path, capsys):
    assert pretrain.main(["--game", "Seaquest", "--zoo-dir", str(tmp_path), "--log-dir", str(tmp_path),
                          "--no-progress", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_threads_sets_torch_threads_before_any_work(tmp_path, capsys, monkeypatch):
    """pretrain had no --threads, while the README asks for one thread per run when runs share the cores (train's
    --threads): now the same option, applied first (here before --n-envs 0 stops the command)."""
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    argv = ["--game", "Seaquest", "--zoo-dir", str(tmp_path), "--log-dir", str(tmp_path), "--n-envs", "0"]
    assert pretrain.main([*argv, "--threads", "1"]) == 2 and calls == [1]
    assert pretrain.main(argv) == 2 and calls == [1]   # default 0: torch's own number, left as it is
    assert "--n-envs 0" in capsys.readouterr().err and not list(tmp_path.iterdir())


def test_a_second_ctrl_c_is_one_line_and_exit_130(tmp_path):
    """Ctrl-C twice during pretraining (the second stops at once, stop.py) ended in a KeyboardInterrupt traceback;
    now one line that says how to continue and where the last checkpoint is, and exit status 130.

    The second SIGINT goes after the first one's message: two signals that arrive before Python runs its handler
    are one to Python (the test was flaky under load).  The replay buffer (50k transitions, ~350 MB of arrays) makes
    the stop's checkpoint take long enough for the second to land before it is complete."""
    log, zoo = tmp_path / "runs", tmp_path / "zoo"
    run = log / "Riverraid" / "scratch" / "seed0"
    cmd = [sys.executable, "-m", "rlzoo_transfer.pretrain", "--game", "Riverraid", "--steps", "100000", "--n-envs",
           "2", "--eval-freq", "200", "--eval-episodes", "1", "--checkpoint-freq", "200", "-p", "learning_starts=50",
           "batch_size=8", "buffer_size=50000", "--zoo-dir", str(zoo), "--log-dir", str(log), "--device", "cpu",
           "--no-progress"]
    with child(cmd, cwd=ROOT, env={"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}) as proc:
        wait_until(proc, (run / "checkpoint" / "model.zip").exists, "checkpoint")   # training is under way
        proc.send_signal(signal.SIGINT)
        seen = []
        while not seen or "SIGINT: stopping at the next agent step" not in seen[-1]:
            seen.append(proc.stderr.readline())
            assert seen[-1], "".join(seen)   # the process ended without the stop message
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
        err = "".join(seen) + err
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    where = f"(last checkpoint in {run / 'checkpoint'}"   # or checkpoint.old, if stopped mid-swap
    assert f"interrupted: continue with the same command and --resume {where}" in err
    assert not (zoo / "Riverraid.pt").exists()


def test_a_stop_in_a_time_limited_final_evaluation_resumes_at_the_step_reached(tmp_path):
    """Past ``--max-minutes`` a source finishes at the step reached: a checkpoint there, then the final evaluation.
    A SIGTERM during that evaluation resumes from that step (it resumed from the last scheduled checkpoint - none
    here, so from step 0 - and trained those steps again); the resumed run, with a time limit again, trains on
    from there and finishes, exporting the source with the steps it reached; resumed again, it trains on from
    those steps (the first shipped sources, resumed to 1M after such a finish, went back to checkpoints 235k and
    183k steps earlier)."""
    zoo, log = tmp_path / "zoo", tmp_path / "runs"
    args = ["-m", "rlzoo_transfer.pretrain", "--game", "Riverraid", "--steps", "100000", "--n-envs", "4",
            "--eval-freq", "100000", "--final-eval-episodes", "2", "-p", "learning_starts=200", "batch_size=32",
            "buffer_size=4000", "--zoo-dir", str(zoo), "--log-dir", str(log), "--device", "cpu", "--no-progress",
            "--threads", "1", "--max-minutes", "0.1"]
    run = log / "Riverraid" / "scratch" / "seed0"
    stopped = signal_at_line(args, "final evaluation: 2 games", cwd=ROOT)
    assert stopped.returncode == 143, stopped.stderr
    assert "stopped by SIGTERM during the final evaluation" in stopped.stderr and "Traceback" not in stopped.stderr
    assert not (run / "final.json").exists() and not (zoo / "Riverraid.pt").exists()
    with zipfile.ZipFile(run / "checkpoint" / "model.zip") as z:
        step = json.loads(z.read("data").decode())["num_timesteps"]
    assert 200 < step < 100_000

    done = subprocess.run([sys.executable, *args, "--resume"], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"resuming {run} from step {step}" in done.stderr
    entry = yaml.safe_load((zoo / "zoo.yml").read_text())["sources"]["Riverraid"]
    assert step < entry["agent_steps"] < 100_000
    assert json.loads((run / "final.json").read_text())["steps"] == entry["agent_steps"]

    again = subprocess.run([sys.executable, *args, "--resume"], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"resuming {run} from step {entry['agent_steps']}" in again.stderr
