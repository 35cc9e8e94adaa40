"""The train CLI end to end on a real game with tiny budgets: every file of the run folder, the bad-input errors
(exit 2, one line, no traceback), kill and --resume, a corrupt checkpoint."""
from __future__ import annotations

import csv
import importlib
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from rlzoo_transfer import train
from rlzoo_transfer.config import (MAX_SEED, ConfigError, check_ranges, load_config, parse_overrides,
                                   progress_bar_wanted, resolve_device, seed_arg)
from rlzoo_transfer.provenance import git_commit
from rlzoo_transfer.rl.der import DER
from rlzoo_transfer.rl.methods import FLOW_POINTS
from tests.conftest import ONE_THREAD, ROOT, kill_after_checkpoint, run_module, signal_at_line, signal_once_training

# Alien: an untrained agent's evaluation game ends in ~0.5 s (Seaquest's idle agent may sit for 27k steps)
GAME = "Alien"
TINY = ["--eval-episodes", "1", "--final-eval-episodes", "1", "-p", "learning_starts=100", "buffer_size=2000",
        "--no-progress"]


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return run_module("train", *args, **kw)


def steps_in(csv_path: Path) -> list[int]:
    with open(csv_path) as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    log = tmp_path_factory.mktemp("runs")
    args = ["--game", GAME, "--steps", "400", "--eval-freq", "200", "--log-dir", str(log), *TINY]
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    return log / GAME / "scratch" / "seed0", args, proc


def test_run_folder_has_every_file(finished):
    run, args, proc = finished
    assert f"done: {run}" in proc.stdout
    assert "Traceback" not in proc.stderr
    for name in ("config.yml", "evaluations.csv", "final.json", "model.zip", "checkpoint", "tb", "curve.png",
                 "report.md"):
        assert (run / name).exists(), name
    assert f"report: {run / 'report.md'}" in proc.stdout
    evals = [line for line in proc.stderr.splitlines() if line.startswith("[Alien/scratch/seed0] eval step ")]
    assert "[Alien/scratch/seed0] evaluating at step 0: 1 games ..." in proc.stderr     # a log, not a bar
    assert [line.split(":")[0].split()[-1] for line in evals] == ["0", "200", "400"], evals
    assert (run / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    final = json.loads((run / "final.json").read_text())
    assert f"**{final['mean']:.1f}**" in (run / "report.md").read_text()
    assert not list(run.glob("*.tmp*")) and not (run / "checkpoint.tmp").exists()

    config = yaml.safe_load((run / "config.yml").read_text())
    assert config["game"] == GAME and config["method"] == "scratch" and config["seed"] == 0
    assert config["steps"] == 400 and config["eval_freq"] == 200
    assert config["hyperparams"]["learning_starts"] == 100 and config["hyperparams"]["buffer_size"] == 2000
    assert config["hyperparams"]["n_steps"] == 20 and config["hyperparams"]["learning_rate"] == 1e-4  # der.yml
    assert {"python", "torch", "stable-baselines3", "ale-py", "numpy"} <= set(config["versions"])
    assert config["commit"] and config["commit"] != "unknown"
    assert config["command"].startswith("python -m rlzoo_transfer.train --game") and "--steps 400" in config["command"]
    assert len(config["actions"]) == 18 and config["actions"][0] == "NOOP"
    assert config["zoo"] is None   # scratch starts from no source

    with open(run / "evaluations.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [0, 200, 400]
    for r in rows:
        assert int(r["n_episodes"]) == 1 and float(r["mean"]) == float(r["returns"]) and float(r["std"]) == 0

    final = json.loads((run / "final.json").read_text())
    assert final["steps"] == 400 and final["n_episodes"] == len(final["returns"]) == 1
    assert final["mean"] == pytest.approx(np.mean(final["returns"])) and final["game"] == GAME
    assert final["method"] == "scratch" and final["seed"] == 0

    assert {p.name for p in (run / "checkpoint").iterdir()} >= {"model.zip", "replay.npz", "rng.pt"}
    assert list((run / "tb").rglob("events.out.tfevents.*"))


def test_saved_model_loads_and_acts(finished):
    run, _, _ = finished
    model = DER.load(run / "model.zip", device="cpu")
    assert model.num_timesteps == 400 and model._n_updates == 300
    obs = np.random.default_rng(0).integers(0, 256, (3, 4, 84, 84), dtype=np.uint8)
    actions, _ = model.predict(obs, deterministic=True)
    assert actions.shape == (3,) and ((0 <= actions) & (actions < 18)).all()


def test_rerunning_a_finished_run_is_a_one_line_error(finished):
    run, args, _ = finished
    before = (run / "final.json").read_text()
    proc = cli(*args)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "finished run" in lines[0]
    assert (run / "final.json").read_text() == before


def test_resume_of_a_finished_run_redoes_nothing(finished, capsys):
    """``--resume`` on a finished run exits 0 at once: no second final evaluation, final.json and model.zip kept."""
    run, args, _ = finished
    def files():
        return {name: ((run / name).read_bytes(), (run / name).stat().st_mtime_ns)
                for name in ("final.json", "model.zip")}

    before = files()
    assert train.main([*args, "--resume"]) == 0
    assert f"done: {run} (finished at step 400: nothing to resume)" in capsys.readouterr().out
    assert files() == before


def unfinished_copy(finished, tmp_path: Path) -> tuple[Path, list[str]]:
    """The finished run copied to ``tmp_path/runs`` without its final.json (its checkpoint is at step 400), and the
    train arguments that point at the copy."""
    run, args, _ = finished
    log = tmp_path / "runs"
    copy = log / GAME / "scratch" / "seed0"
    shutil.copytree(run, copy)
    (copy / "final.json").unlink()
    return copy, [a if a != str(run.parent.parent.parent) else str(log) for a in args]


def test_resume_with_other_settings_is_refused(finished, tmp_path, capsys):
    """A resumed model keeps its checkpoint's hyperparameters, so ``--resume -p learning_rate=...`` changed nothing
    in training while the run's evaluation took the new values, silently; now every hyperparameter and evaluation
    setting must match config.yml (exit 2, one line naming it, the run folder untouched).  --steps may differ."""
    copy, args = unfinished_copy(finished, tmp_path)
    before = (copy / "config.yml").read_text()
    for other, named in ((["-p", "learning_rate=2e-4"], "-p learning_rate is 0.0002, was 0.0001"),
                         (["-p", "buffer_size=3000"], "-p buffer_size is 3000, was 2000"),
                         (["--eval-freq", "100"], "--eval-freq is 100, was 200"),
                         (["--final-eval-episodes", "2"], "--final-eval-episodes is 2, was 1")):
        rc, err = run_main([*args, *other, "--resume"], capsys)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and "with other settings than it started with" in lines[0], err
        assert named in lines[0], lines[0]
        assert (copy / "config.yml").read_text() == before and not (copy / "final.json").exists()
    rc, err = run_main([*args, "--steps", "400", "--resume"], capsys)   # the run's own settings: resumes
    assert rc == 0 and f"resuming {copy} from step 400" in err, err
    assert (copy / "final.json").exists()


@pytest.mark.parametrize("content", [b"garbage\n1,2\n", b"\xff\xfe\x00", b"step,mean\n200,fast\n"])
def test_resume_with_an_unreadable_curve_is_a_clear_error(finished, tmp_path, capsys, content):
    """A hand-edited or damaged evaluations.csv made --resume end in a KeyError traceback after loading the
    checkpoint; now one line before anything loads, the file left as it is."""
    copy, args = unfinished_copy(finished, tmp_path)
    (copy / "evaluations.csv").write_bytes(content)
    rc, err = run_main([*args, "--resume"], capsys)
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert f"cannot resume {copy}: {copy / 'evaluations.csv'} is unreadable" in lines[0]
    assert (copy / "evaluations.csv").read_bytes() == content and not (copy / "final.json").exists()


@pytest.mark.parametrize("content", ["- a list\n- not a mapping\n", "game: Alien\nhyperparams: [1, 2]\n", "a: [\n"])
def test_resume_with_a_damaged_config_yml_resumes_from_the_checkpoint(finished, tmp_path, capsys, content):
    """config.yml is the run's record, not what --resume needs (the checkpoint is): a hand-edited one that is not
    valid YAML, or valid YAML of another shape, was an AttributeError traceback on a list; now the run resumes and
    finishes (a mapping gets its resume recorded, anything else is left as it was)."""
    copy, args = unfinished_copy(finished, tmp_path)
    (copy / "config.yml").write_text(content)
    rc, err = run_main([*args, "--resume"], capsys)
    assert rc == 0 and f"resuming {copy} from step 400" in err and "Traceback" not in err, err
    assert (copy / "final.json").exists()
    after = (copy / "config.yml").read_text()
    if content.startswith("game:"):   # a mapping: the resume is recorded, the rest kept
        recorded = yaml.safe_load(after)
        assert recorded.pop("resumes")[0]["step"] == 400 and recorded == yaml.safe_load(content)
    else:
        assert after == content


def test_resume_to_another_total_records_it_as_the_planned_steps(finished, tmp_path, capsys, monkeypatch):
    """A run planned for 800 steps, stopped at 400 and finished there with ``--resume --steps 400`` kept ``steps:
    800`` in config.yml, so curves' runs.csv showed planned_steps 800 and confirm's protocol steps 800 for a run of
    400; now config.yml's ``steps`` is the new total, its ``resumes`` entry keeps the step reached and the total
    planned before, and a later ``--resume`` without ``--steps`` goes to the new total, not to the default 100000."""
    from rlzoo_transfer import run as run_module_
    from rlzoo_transfer.confirm import run_protocol
    from rlzoo_transfer.rundata import load_run

    copy, args = unfinished_copy(finished, tmp_path)   # its checkpoint is at step 400
    config = yaml.safe_load((copy / "config.yml").read_text())
    (copy / "config.yml").write_text(yaml.safe_dump({**config, "steps": 800}, sort_keys=False))   # planned 800
    rc, err = run_main([*args, "--resume"], capsys)   # args hold --steps 400
    assert rc == 0 and f"resuming {copy} from step 400" in err, err
    after = yaml.safe_load((copy / "config.yml").read_text())
    [resume] = after["resumes"]
    assert after["steps"] == 400 and resume["step"] == 400 and resume["previous_steps"] == 800
    run = load_run(copy)
    assert run.planned_steps == 400 == run.final["steps"] and run_protocol(run)["steps"] == 400
    assert not list(copy.glob("*.tmp")) and not list(copy.glob(".*.tmp"))   # written atomically

    def no_training(spec):
        raise AssertionError(f"trained on to {spec.steps} steps")

    monkeypatch.setattr(run_module_, "run_training", no_training)
    at = args.index("--steps")
    without_steps = args[:at] + args[at + 2:]
    assert train.main([*without_steps, "--resume"]) == 0
    assert f"done: {copy} (finished at step 400: nothing to resume)" in capsys.readouterr().out
    assert yaml.safe_load((copy / "config.yml").read_text())["resumes"] == after["resumes"]
    spec = run_module_.RunSpec(game=GAME, steps=None, log_dir=str(tmp_path / "runs"), resume=True)
    assert run_module_.planned_steps(spec) == 400 == spec.steps   # the recorded total, not the default
    fresh = run_module_.RunSpec(game=GAME, steps=None, log_dir=str(tmp_path / "runs"))
    assert run_module_.planned_steps(fresh) == run_module_.DEFAULT_STEPS == 100_000


def test_resume_without_a_checkpoint_says_it_starts_from_step_0(tmp_path, capsys):
    log = tmp_path / "runs"
    args = ["--game", GAME, "--steps", "150", "--eval-freq", "150", "--log-dir", str(log), *TINY, "--resume"]
    rc, err = run_main(args, capsys)
    run = log / GAME / "scratch" / "seed0"
    assert rc == 0 and f"nothing to resume in {run} (no checkpoint): starting from step 0" in err
    assert steps_in(run / "evaluations.csv") == [0, 150]


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    rc = train.main(argv)
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize("extra,message", [
    (["--game", "Alein"], "unknown game 'Alein'. Did you mean Alien"),
    (["--game", GAME, "--method", "zooo"], "unknown method 'zooo'"),
    (["--game", GAME, "--method", "finetune-Riverraid"],
     "that is the run folder of --method finetune --source Riverraid"),
    (["--game", GAME, "-p", "learning_rat=2e-4"],
     "unknown hyperparameter 'learning_rat'. Did you mean 'learning_rate'"),
    (["--game", GAME, "-p", "learning_rate=fast"], "learning_rate='fast': expected a float"),
    (["--game", GAME, "-p", "batch_size=3.5"], "batch_size=3.5: expected an int"),
    (["--game", GAME, "-p", "compile=1"], "compile=1: expected a bool"),
    (["--game", GAME, "-p", "learning_rate"], "expected key=value"),
    (["--game", GAME, "--method", "zoo", "--source", "Seaquest"], "--method zoo takes no --source"),
    (["--game", GAME, "--device", "tpu"], "unknown device 'tpu': use cpu, cuda, cuda:N, mps or auto"),
    (["--game", GAME, "--threads", "-3"], "--threads must be >= 0, got -3"),
    (["--game", GAME, "--steps", "0"], "out of range: --steps 0 (must be > 0)"),
    (["--game", GAME, "--steps", "-100"], "out of range: --steps -100 (must be > 0)"),
    (["--game", GAME, "--eval-freq", "0", "--final-eval-episodes", "-1"],
     "out of range: --eval-freq 0 (must be > 0), --final-eval-episodes -1 (must be > 0)"),
    (["--game", GAME, "--method", "hub", "-p", "generator=foo"], "unknown pathway generator 'foo'"),
    (["--game", GAME, "--method", "zoo", "-p", "mode=fast"], "mode must be one of"),
    # an ablation's pinned setting was silently overridden: zoo-lite ran lite whatever -p mode said
    (["--game", GAME, "--method", "zoo-lite", "-p", "mode=adaptive"],
     "--method zoo-lite pins mode='lite' (that is what it is); -p mode='adaptive' contradicts it: use --method zoo"),
    (["--game", GAME, "--method", "hub-noexplore", "-p", "explore=true"],
     "explore=True contradicts it: use --method hub"),
    # several -p flags add up (the second does not replace the first): k=0 must still be seen
    (["--game", GAME, "--method", "hub", "-p", "k=0", "-p", "explore_weight=0.2", "--steps", "50"],
     "k must be in [1, m=2], got 0"),
    (["--game", GAME, "--method", "hub", "-p", "k=3"], "k must be in [1, m=2], got 3"),   # was capped at m, silently
    (["--game", GAME, "--method", "hub", "-p", "sources=Seaquest"], "k must be in [1, m=1], got 2"),
    (["--game", GAME, "--method", "kflow", "-p", "sources=Seaquest,Seaquest"], "Seaquest named twice"),
    # ranges: each failed late, as a traceback (n_atoms from the network, batch_size once training began)
    (["--game", GAME, "-p", "n_atoms=0"], "hyperparameter n_atoms=0: must be >= 2"),
    (["--game", GAME, "-p", "batch_size=-3"], "hyperparameter batch_size=-3: must be >= 1"),
    (["--game", GAME, "-p", "gamma=1.5"], "hyperparameter gamma=1.5: must be in (0, 1]"),
    (["--game", GAME, "-p", "learning_rate=0"], "hyperparameter learning_rate=0.0: must be > 0"),
    (["--game", GAME, "-p", "v_min=10"], "v_min must be below v_max"),
    (["--game", GAME, "-p", "buffer_size=5"], "the replay must hold at least one n-step window"),
])
def test_bad_input_exits_2_with_one_line(extra, message, tmp_path, capsys):
    rc, err = run_main([*extra, "--log-dir", str(tmp_path), "--no-progress"], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert message in lines[0]
    assert not list(tmp_path.rglob("*.csv")) and not list(tmp_path.rglob("config.yml")), "nothing was started"


@pytest.mark.parametrize("module,args", [
    ("train", ["--game", GAME, "--steps", "10", "--log-dir", "{tmp}", "--seed"]),
    ("pretrain", ["--game", "Seaquest", "--steps", "10", "--log-dir", "{tmp}", "--zoo-dir", "{tmp}", "--seed"]),
    ("enjoy", ["--seed"]),
    ("sweep", ["--games", GAME, "--methods", "scratch", "--log-dir", "{tmp}", "--dry-run", "--seeds", "0"]),
    ("lockstep", ["--games", GAME, "--steps", "10", "--log-dir", "{tmp}", "--seeds", "0"]),
])
@pytest.mark.parametrize("seed,message", [("-1", "seeds go from 0 to 2147483647"),
                                          ("2147483648", "seeds go from 0 to 2147483647"),
                                          ("x1", "expected an integer")])
def test_a_bad_seed_is_a_usage_error_on_every_cli(module, args, seed, message, tmp_path, capsys):
    """Before: ``--seed -1`` reached numpy's legacy seeding and ended in a ValueError traceback."""
    main = importlib.import_module(f"rlzoo_transfer.{module}").main
    with pytest.raises(SystemExit) as exit_:
        main([a.replace("{tmp}", str(tmp_path)) for a in args] + [seed])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("module,args", [
    ("train", ["--game", GAME, "--log-dir", "{tmp}", "--steps", "0"]),   # --steps 0: an error at once, not a run,
    ("pretrain", ["--game", "Seaquest", "--log-dir", "{tmp}", "--zoo-dir", "{tmp}", "--steps", "0"]),  # if -p passed
    ("lockstep", ["--games", GAME, "--log-dir", "{tmp}", "--steps", "0"]),
])
@pytest.mark.parametrize("where", ["end", "before another option"])
def test_p_without_a_value_is_a_usage_error(module, args, where, tmp_path, capsys):
    """``-p`` with nothing after it was accepted silently (nargs="*"): the user meant an override and got none."""
    main = importlib.import_module(f"rlzoo_transfer.{module}").main
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    argv = [*argv, "-p"] if where == "end" else ["-p", *argv]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument -p/--hyperparams: expected at least one argument" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_device_auto_resolves_and_a_missing_gpu_is_refused(capsys):
    """SB3 runs ``--device cuda`` on the CPU when there is no GPU; the run's config.yml then said ``cuda``."""
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA device"):
            resolve_device("cuda:0")
        rc, err = run_main(["--game", GAME, "--device", "cuda", "--no-progress"], capsys)
        assert rc == 2 and err.startswith("error: device 'cuda'") and err.count("\n") == 1


def test_check_ranges_names_every_bad_option_and_passes_unset_ones():
    args = SimpleNamespace(steps=0, eval_freq=10, max_minutes=None, lr=float("nan"), checkpoint_freq=-1, gap=0)
    with pytest.raises(ConfigError) as e:
        check_ranges(args, positive=("steps", "eval_freq", "max_minutes", "lr"),
                     non_negative=("checkpoint_freq", "gap"))
    assert str(e.value) == ("out of range: --steps 0 (must be > 0), --lr nan (must be > 0), "
                            "--checkpoint-freq -1 (must be >= 0)")
    check_ranges(SimpleNamespace(steps=1, gap=0), positive=("steps",), non_negative=("gap",))
    with pytest.raises(KeyError):   # the error type is the caller's
        check_ranges(SimpleNamespace(steps=-1), positive=("steps",), error=KeyError)


def test_seed_range_ends():
    assert seed_arg("0") == 0 and seed_arg(str(MAX_SEED)) == MAX_SEED == 2**31 - 1


def test_unknown_game_from_the_command_line(tmp_path):
    proc = cli("--game", "NoSuchGame", "--log-dir", str(tmp_path))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Valid games:" in proc.stderr and "Alien" in proc.stderr


def test_integral_float_is_accepted_for_an_int_hyperparameter():
    config = load_config(None, {"buffer_size": 2.0e3, "learning_rate": 1})
    assert config["buffer_size"] == 2000 and isinstance(config["buffer_size"], int)
    assert config["learning_rate"] == 1.0 and isinstance(config["learning_rate"], float)


def test_kill_then_resume(tmp_path, capsys):
    log = tmp_path / "runs"
    args = ["--game", GAME, "--steps", "400", "--eval-freq", "200", "--log-dir", str(log), *TINY]
    run = log / GAME / "scratch" / "seed0"
    kill_after_checkpoint(["-m", "rlzoo_transfer.train", *args], [run], timeout=180, cwd=ROOT)
    assert not (run / "final.json").exists()
    assert not (run / "model.zip").exists()
    killed_at = steps_in(run / "evaluations.csv")
    assert killed_at[:2] == [0, 200]

    # an unfinished run is not silently overwritten
    rc, err = run_main(args, capsys)
    assert rc == 2 and "--resume" in err and len(err.strip().splitlines()) == 1

    done = cli(*args, "--resume")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    resumed = [line for line in done.stderr.splitlines() if line.startswith("resuming")]
    assert len(resumed) == 1
    step = int(resumed[0].rsplit(" ", 1)[1])
    assert step == 200
    assert steps_in(run / "evaluations.csv") == [0, 200, 400]  # each step exactly once
    final = json.loads((run / "final.json").read_text())
    assert final["steps"] == 400 and final["n_episodes"] == 1
    assert (run / "model.zip").exists()
    # the resume is on record: the steps after 200 were trained by this checkout, whatever the run started at
    config = yaml.safe_load((run / "config.yml").read_text())
    [resume] = config["resumes"]
    assert resume["step"] == 200 and resume["commit"] == git_commit() and "--resume" in resume["command"]
    assert "previous_steps" not in resume   # resumed to the total it was started for
    assert resume["versions"]["torch"] == torch.__version__ and config["steps"] == 400
    model = DER.load(run / "model.zip", device="cpu")
    assert model.num_timesteps == 400
    # updates continued where they stopped: the checkpoint is taken at the end of its step's rollout, before that
    # step's update, which the resumed run does first - exactly the uninterrupted run's 400 - 100 updates
    assert model._n_updates == 300


def test_ctrl_c_checkpoints_at_the_step_reached_then_resume_finishes(tmp_path, capsys):
    """SIGINT mid-training (then a SIGTERM, as a sweep sends after the terminal's Ctrl-C): the run writes a
    checkpoint at the step it reached - not the last periodic one - and exits 130; --resume finishes with exactly
    the uninterrupted run's updates and each evaluation once."""
    log = tmp_path / "runs"
    args = ["--game", GAME, "--steps", "1000", "--eval-freq", "500", "--log-dir", str(log), *TINY]
    run = log / GAME / "scratch" / "seed0"
    stopped = signal_once_training(["-m", "rlzoo_transfer.train", *args], run,
                                   signals=(signal.SIGINT, signal.SIGTERM), cwd=ROOT)
    assert stopped.returncode == 130, stopped.stderr
    assert "Traceback" not in stopped.stderr and "SIGINT: stopping at the next agent step" in stopped.stderr
    line = [ln for ln in stopped.stderr.splitlines() if ln.startswith("stopped by SIGINT at step ")]
    assert len(line) == 1 and "--resume" in line[0], stopped.stderr
    step = int(line[0].split("at step ")[1].split("/")[0])
    assert 0 < step < 1000 and step not in (500,)
    assert not (run / "final.json").exists()
    with zipfile.ZipFile(run / "checkpoint" / "model.zip") as z:
        assert f'"num_timesteps": {step},' in z.read("data").decode()
    assert steps_in(run / "evaluations.csv") == [s for s in (0, 500) if s <= step]

    done = cli(*args, "--resume")
    assert done.returncode == 0, done.stderr
    assert f"resuming {run} from step {step}" in done.stderr
    assert steps_in(run / "evaluations.csv") == [0, 500, 1000]
    model = DER.load(run / "model.zip", device="cpu")
    assert model.num_timesteps == 1000 and model._n_updates == 1000 - 100


def test_sigterm_checkpoints_and_exits_143(tmp_path):
    log = tmp_path / "runs"
    args = ["--game", GAME, "--steps", "5000", "--eval-freq", "5000", "--log-dir", str(log), *TINY]
    run = log / GAME / "scratch" / "seed0"
    stopped = signal_once_training(["-m", "rlzoo_transfer.train", *args], run, signals=(signal.SIGTERM,),
                                   delay=0.5, cwd=ROOT)
    assert stopped.returncode == 143, stopped.stderr
    assert "stopped by SIGTERM at step " in stopped.stderr and "Traceback" not in stopped.stderr
    assert (run / "checkpoint" / "model.zip").is_file() and (run / "checkpoint" / "replay.npz").is_file()


@pytest.mark.parametrize("at, steps", [(0, 400), (400, 400), ("final", 400), ("final", 300)])
def test_sigterm_during_an_evaluation_abandons_it_and_resume_evaluates_it(tmp_path, at, steps):
    """A SIGTERM while the run evaluates - step 0's evaluation, the last step's, or the final one - stops at once
    instead of playing the games out (a 100-game evaluation takes minutes): no row (or final.json) for it, a
    checkpoint before the step's update (none at step 0: nothing was trained), exit 143; --resume plays that
    evaluation first, then does the owed update, so the run ends with the uninterrupted run's evaluations and
    updates.  A last step off the evaluation schedule (300 of 300, every 200) has its own checkpoint, so the resumed
    run trains nothing again."""
    log = tmp_path / "runs"
    args = ["--game", GAME, "--steps", str(steps), "--eval-freq", "200", "--log-dir", str(log), *TINY,
            "--eval-episodes", "8", "--final-eval-episodes", "8"]
    run = log / GAME / "scratch" / "seed0"
    evaluated = list(range(0, steps + 1, 200))
    marker = "final evaluation: 8 games" if at == "final" else f"evaluating at step {at}:"
    stopped = signal_at_line(["-m", "rlzoo_transfer.train", *args], marker, cwd=ROOT)
    assert stopped.returncode == 143, stopped.stderr
    assert "Traceback" not in stopped.stderr
    where = "during the final evaluation" if at == "final" else f"at step {at}/{steps} during an evaluation"
    assert f"stopped by SIGTERM {where}; continue with the same command and --resume" in stopped.stderr
    assert f"eval step {at}:" not in stopped.stderr and not (run / "final.json").exists()
    if at == 0:
        assert "(no checkpoint yet: it starts afresh)" in stopped.stderr
        assert not (run / "checkpoint").exists() and not (run / "evaluations.csv").exists()
    else:
        assert f"(checkpoint in {run})" in stopped.stderr
        assert steps_in(run / "evaluations.csv") == (evaluated if at == "final" else [0, 200])
        with zipfile.ZipFile(run / "checkpoint" / "model.zip") as z:
            assert f'"num_timesteps": {steps},' in z.read("data").decode()
        assert (run / "model.zip").exists() == (at == "final")   # saved before the final evaluation

    done = cli(*args, "--resume")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    if at != 0:
        assert f"resuming {run} from step {steps}" in done.stderr
    assert steps_in(run / "evaluations.csv") == evaluated
    assert json.loads((run / "final.json").read_text())["n_episodes"] == 8
    model = DER.load(run / "model.zip", device="cpu")
    assert model.num_timesteps == steps and model._n_updates == steps - 100


def test_a_write_the_file_system_refuses_is_one_line_and_resume_continues(tmp_path):
    """The file system refuses a write while the first checkpoint is written (a full disk in practice; here a file
    size limit, EFBIG - RLIMIT_FSIZE, which Python turns into an OSError - on the same code path): one line naming
    the file and the cause, exit 1, no traceback; the rows written before stay, and --resume finishes the run."""
    log = tmp_path / "runs"
    args = ["--game", GAME, "--steps", "400", "--eval-freq", "200", "--log-dir", str(log), *TINY]
    run = log / GAME / "scratch" / "seed0"
    limit = 1 << 20   # bytes a file may hold: config.yml and the curve fit, the checkpoint's model.zip does not

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    proc = subprocess.run([sys.executable, "-m", "rlzoo_transfer.train", *args], cwd=ROOT,
                          env={**os.environ, **ONE_THREAD}, capture_output=True, text=True, timeout=300,
                          preexec_fn=small_files)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert line.startswith(f"error: cannot write {run / 'checkpoint.tmp' / 'model.zip'}: File too large; "), line
    assert line.endswith("continue with the same command and --resume (no checkpoint yet: it starts afresh)")
    # the evaluation at 200 came before its checkpoint; the resumed run, from step 0, writes that row again
    assert steps_in(run / "evaluations.csv") == [0, 200] and not (run / "checkpoint").exists()

    done = cli(*args, "--resume")
    assert done.returncode == 0, done.stderr
    assert steps_in(run / "evaluations.csv") == [0, 200, 400]
    assert DER.load(run / "model.zip", device="cpu")._n_updates == 400 - 100


@pytest.mark.parametrize("broken", ["model.zip", "replay.npz", "rng.pt"])
def test_resume_from_a_corrupt_checkpoint_is_a_clear_error(finished, broken, tmp_path, capsys):
    src, args, _ = finished
    log = tmp_path / "runs"
    run = log / GAME / "scratch" / "seed0"
    shutil.copytree(src, run)
    (run / "final.json").unlink()
    data = (run / "checkpoint" / broken).read_bytes()
    (run / "checkpoint" / broken).write_bytes(data[: len(data) // 3])  # a write cut short
    argv = ["--game", GAME, "--steps", "600", "--eval-freq", "200", "--log-dir", str(log), *TINY, "--resume"]
    rc, err = run_main(argv, capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "checkpoint is unreadable" in lines[0] and "delete" in lines[0]
    assert not (run / "final.json").exists()


def test_resume_from_a_checkpoint_that_no_longer_fits_the_network_is_a_clear_error(finished, tmp_path, capsys):
    """A sound checkpoint whose network the code no longer builds (here one parameter gone from the policy's weights,
    as when a layer is added) is not called unreadable: the message names what does not fit and the commit to
    resume with, and the run folder is left as it was."""
    copy, args = unfinished_copy(finished, tmp_path)
    zip_path = copy / "checkpoint" / "model.zip"
    with zipfile.ZipFile(zip_path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    state = torch.load(io.BytesIO(members["policy.pth"]), weights_only=True)
    dropped = sorted(state)[0]
    del state[dropped]
    buffer = io.BytesIO()
    torch.save(state, buffer)
    members["policy.pth"] = buffer.getvalue()
    with zipfile.ZipFile(zip_path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file() and "tb" not in p.parts}
    rc, err = run_main([*args, "--steps", "600", "--resume"], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot resume {copy}: its checkpoint does not fit the "
                                                   "network this code builds for it (1 missing key")
    assert dropped in lines[0] and "config.yml's commit" in lines[0] and "unreadable" not in lines[0]
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file() and "tb" not in p.parts} == before


def test_exponent_without_a_dot_is_a_number():
    """YAML 1.1 reads 1e-4 as a string; -p learning_rate=1e-4 must still mean 0.0001 (and words stay words)."""
    got = parse_overrides(["learning_rate=1e-4", "buffer_size=1e5", "mode=lite", "n_steps=3"])
    assert got == {"learning_rate": 1e-4, "buffer_size": 1e5, "mode": "lite", "n_steps": 3}
    config = load_config(None, {k: got[k] for k in ("learning_rate", "buffer_size")})
    assert config["learning_rate"] == 1e-4 and config["buffer_size"] == 100_000


def test_zoo_run_killed_and_resumed_logs_each_gate_once(tmp_path):
    """A real zoo run (the shipped zoo) killed after its first checkpoint and resumed: gates.csv has every
    (layer, source) gate once per evaluation step, and each layer's gates sum to 1 (gate_norm "sum")."""
    log = tmp_path / "runs"
    args = ["--game", GAME, "--method", "zoo", "--steps", "200", "--eval-freq", "100", "--log-dir", str(log), *TINY]
    run = log / GAME / "zoo" / "seed0"
    kill_after_checkpoint(["-m", "rlzoo_transfer.train", *args], [run], timeout=300, cwd=ROOT)
    done = cli(*args, "--resume")
    assert done.returncode == 0, done.stderr
    with open(run / "gates.csv") as f:
        rows = list(csv.DictReader(f))
    keys = [(int(r["step"]), r["layer"], r["source"]) for r in rows]
    assert len(keys) == len(set(keys)), "a gate logged twice"
    assert sorted({k[0] for k in keys}) == [0, 100, 200]
    per_step = {s: {(k[1], k[2]) for k in keys if k[0] == s} for s in (0, 100, 200)}
    assert per_step[0] == per_step[100] == per_step[200]
    assert {src for _, src in per_step[0]} == {"Seaquest", "Riverraid"}
    for step in (0, 100, 200):
        for layer in {layer for layer, _ in per_step[step]}:
            total = sum(float(r["gate"]) for r in rows if int(r["step"]) == step and r["layer"] == layer)
            assert total == pytest.approx(1.0, abs=1e-5)


def test_kflow_run_logs_its_flow_weights(tmp_path):
    """A real Knowledge Flow run writes flow.csv: the student's and each teacher's softmax weight per flow point at
    every evaluation step (summing to 1 per point), and its flow plot beside the run's report."""
    log = tmp_path / "runs"
    proc = cli("--game", GAME, "--method", "kflow", "--steps", "200", "--eval-freq", "100", "--log-dir", str(log),
               *TINY)
    assert proc.returncode == 0, proc.stderr
    run = log / GAME / "kflow" / "seed0"
    with open(run / "flow.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(int(r["step"]), r["point"], r["model"]) for r in rows} == {
        (s, p, m) for s in (0, 100, 200) for p in FLOW_POINTS for m in ("student", "Seaquest", "Riverraid")}
    assert len(rows) == 3 * len(FLOW_POINTS) * 3
    for step in (0, 100, 200):
        for point in FLOW_POINTS:
            total = sum(float(r["weight"]) for r in rows if int(r["step"]) == step and r["point"] == point)
            assert total == pytest.approx(1.0, abs=1e-5)
    assert all(float(r["weight"]) == pytest.approx(1 / 3) for r in rows if r["step"] == "0")   # theta = 0 at start
    assert (run / f"flow_{GAME}_kflow.png").stat().st_size > 0 and "flow" in (run / "report.md").read_text()


def test_progress_bar_only_on_a_terminal(tmp_path):
    """``nohup`` / ``make run > log``: no bar (it would print nothing useful), the progress lines instead."""
    leader, follower = os.openpty()                       # a real terminal device
    with open(follower, "w") as tty, open(tmp_path / "log", "w") as log:
        assert progress_bar_wanted(False, tty) and not progress_bar_wanted(True, tty)
        assert not progress_bar_wanted(False, log) and not progress_bar_wanted(False, subprocess.PIPE)
    os.close(leader)


def test_config_yml_records_the_settings_a_method_pins(tmp_path):
    """zoo-avg is built with mode=average whatever agents/zoo.yml says; config.yml recorded the file's ``adaptive``
    (every published zoo-lite / zoo-avg / zoo-noalign / hub ablation run says so).  It now records the pinned value;
    ``-p`` repeating it is accepted, and a run recorded the old way still resumes (its record is read pinned)."""
    from rlzoo_transfer.run import RunSpec, check_resume_settings, prepare_run

    spec = RunSpec(game=GAME, method="zoo-avg", steps=100, log_dir=str(tmp_path), progress_bar=False,
                   hyperparams={"mode": "average", "learning_starts": 50, "buffer_size": 500})
    run = prepare_run(spec)
    run.env.close()
    path = run.run_dir / "config.yml"
    recorded = yaml.safe_load(path.read_text())
    assert recorded["hyperparams"]["mode"] == "average" and recorded["hyperparams"]["align"] is True
    path.write_text(path.read_text().replace("mode: average", "mode: adaptive"))   # as runs before 2026-12-07
    check_resume_settings(run.run_dir, spec, run.config)
    path.write_text(path.read_text().replace("align: true", "align: false"))       # a real difference still counts
    with pytest.raises(Exception, match="-p align is True, was False"):
        check_resume_settings(run.run_dir, spec, run.config)


TENSORBOARD_REFUSED = """
import resource, signal, sys, threading
from torch.utils.tensorboard import SummaryWriter
from rlzoo_transfer.run import refusals_in_writer_threads
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
writer = SummaryWriter(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
with refusals_in_writer_threads():
    try:
        for i in range(10_000):
            writer.add_scalar("x", float(i), i)
            writer.flush()
    except OSError as e:
        print("the run's thread got", e.strerror)
    for t in threading.enumerate():   # let the writer's thread finish reporting
        if t is not threading.main_thread():
            t.join(timeout=30)
"""


def test_a_refused_write_in_tensorboards_thread_is_one_line_not_a_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-c", TENSORBOARD_REFUSED, str(tmp_path / "tb")], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "the run's thread got File too large\n"
    assert out.stderr == "warning: tensorboard's event writer cannot write: File too large; it stops writing\n"
