"""Tests of rlzoo_transfer.sweep: planning, dry run, the local pool with skip / resume / failure, Ray, and
(slow) a real two-run sweep of rlzoo_transfer.train."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from rlzoo_transfer import curves, sweep, threads
from rlzoo_transfer.confirm import load_registration
from rlzoo_transfer.provenance import PROJECT_ROOT
from tests.conftest import child, step0_evaluated, wait_until

# A stand-in for rlzoo_transfer.train (selected with the hidden --train-module): writes the run folder in the
# documented format, records its arguments, and fails on request (extra argument --fail / --no-final).
FAKE_TRAIN = textwrap.dedent('''
    import argparse, json, os, sys
    p = argparse.ArgumentParser()
    for a in ("--game", "--method", "--source", "--log-dir"):
        p.add_argument(a)
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--fail", action="store_true")
    p.add_argument("--no-final", action="store_true")
    a = p.parse_args()
    folder = a.method + ("-" + a.source if a.source else "")
    d = os.path.join(a.log_dir, a.game, folder, "seed%d" % a.seed)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "argv.txt"), "a") as fh:
        fh.write(" ".join(sys.argv[1:]) + "\\n")
    print("fake train", a.game, folder, a.seed)
    print("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS"))
    if a.fail:
        sys.exit(3)
    with open(os.path.join(d, "evaluations.csv"), "w") as fh:
        fh.write("step,mean,std,n_episodes,returns\\n%d,1.0,0.0,1,1.0\\n" % a.steps)
    if not a.no_final:
        with open(os.path.join(d, "final.json"), "w") as fh:
            json.dump(dict(game=a.game, method=folder, seed=a.seed, steps=a.steps, mean=1.0, std=0.0,
                           n_episodes=1, returns=[1.0]), fh)
''')


@pytest.fixture
def fake_train(tmp_path, monkeypatch):
    """Module name of the fake train, importable by the sweep's child processes."""
    mod_dir = tmp_path / "mods"
    mod_dir.mkdir()
    (mod_dir / "fake_train_mod.py").write_text(FAKE_TRAIN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(mod_dir), os.environ.get("PYTHONPATH", "")]))
    return "fake_train_mod"


def argv_of(run_dir: Path) -> list[str]:
    """Argument lines the fake train recorded in a run folder."""
    path = run_dir / "argv.txt"
    return path.read_text().splitlines() if path.exists() else []


# --------------------------------------------------------------------------------------------------- plan


def test_parse_method():
    assert sweep.parse_method("zoo") == ("zoo", None)
    assert sweep.parse_method("finetune:Seaquest") == ("finetune", "Seaquest")
    assert sweep.parse_method("finetune:seaquest") == ("finetune", "Seaquest")
    assert sweep.parse_method("finetune-Riverraid") == ("finetune", "Riverraid")  # the run-folder spelling
    assert sweep.parse_method("zoo-lite") == ("zoo-lite", None)
    assert sweep.parse_method("hub-noexplore") == ("hub-noexplore", None)
    for bad in ("", ":Seaquest", "finetune:", "a:b:c"):
        with pytest.raises(sweep.SweepError):
            sweep.parse_method(bad)


def test_plan_folders_skip_and_resume(tmp_path):
    log = tmp_path / "runs"
    done = log / "Alien" / "scratch" / "seed0"
    done.mkdir(parents=True)
    (done / "final.json").write_text("{}")
    (log / "Alien" / "scratch" / "seed1").mkdir()
    jobs = sweep.plan(["Alien", "JamesBond"], ["scratch", "finetune:Seaquest"], [0, 1, 1], log, steps=500,
                      extra=["-p", "lr=1e-4"])
    assert len(jobs) == 8
    # seed-major: all of seed 0 first, so a sweep stopped part-way has as many seeds of every (game, method)
    assert [j.spec.seed for j in jobs] == [0] * 4 + [1] * 4
    assert [j.spec.name for j in jobs[:4]] == ["Alien/scratch/seed0", "Alien/finetune-Seaquest/seed0",
                                               "Jamesbond/scratch/seed0", "Jamesbond/finetune-Seaquest/seed0"]
    by_name = {j.spec.name: j for j in jobs}
    assert by_name["Alien/scratch/seed0"].status == sweep.SKIPPED
    assert by_name["Alien/scratch/seed1"].resume and "--resume" in by_name["Alien/scratch/seed1"].args
    fine = by_name["Jamesbond/finetune-Seaquest/seed0"]
    assert fine.status == sweep.PENDING and not fine.resume
    assert fine.run_dir == log / "Jamesbond" / "finetune-Seaquest" / "seed0"
    assert fine.args == ["-m", "rlzoo_transfer.train", "--game", "Jamesbond", "--method", "finetune", "--seed", "0",
                         "--source", "Seaquest", "--steps", "500", "--log-dir", str(log), "-p", "lr=1e-4"]


def test_dry_run_lists_commands_and_touches_nothing(tmp_path, capsys, monkeypatch):
    """Each line is what the sweep would run, the torch threads it would give each run (OMP_NUM_THREADS) included,
    so that a line run by hand trains as the sweep's run would."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(sweep, "other_training_processes", lambda: [])
    log = tmp_path / "runs"
    code = sweep.main(["--games", "Alien", "--methods", "scratch", "zoo", "--seeds", "0", "1", "--log-dir", str(log),
                       "--steps", "300", "--jobs", "1", "--dry-run", "--", "--device", "cpu"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(out) == 4 and not log.exists()
    prefix = f"OMP_NUM_THREADS={os.cpu_count()} {sys.executable} "
    assert all(line.startswith(prefix) and "--device cpu" in line and "train.log" in line for line in out)
    assert "--method zoo --seed 1 --steps 300" in out[3]
    monkeypatch.setattr(sweep, "other_training_processes", lambda: [4242])   # a run already going: half the cores
    assert sweep.main(["--games", "Alien", "--methods", "scratch", "--seeds", "0", "--log-dir", str(log),
                       "--jobs", "1", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"OMP_NUM_THREADS={max(1, os.cpu_count() // 2)} {sys.executable} ")
    assert "note: 1 other training process(es) already running (pids 4242)" in captured.err
    monkeypatch.setenv("OMP_NUM_THREADS", "3")   # the runs inherit it (LocalBackend only sets it where unset)
    assert sweep.main(["--games", "Alien", "--methods", "scratch", "--seeds", "0", "--log-dir", str(log),
                       "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"OMP_NUM_THREADS=3 {sys.executable} ") and "note:" not in captured.err
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert sweep.main(["--games", "Alien", "--methods", "scratch", "--seeds", "0", "--log-dir", str(log),
                       "--backend", "ray", "--dry-run"]) == 0   # Ray's workers decide their threads
    assert capsys.readouterr().out.startswith(sys.executable)


def test_unknown_game_exit_2(tmp_path, capsys):
    code = sweep.main(["--games", "NotAGame", "--methods", "zoo", "--seeds", "0", "--log-dir", str(tmp_path),
                       "--dry-run"])
    assert code == 2 and "NotAGame" in capsys.readouterr().err


@pytest.mark.parametrize("extra,message", [
    (["-p", "learnig_rate=1e-4"], "after --: unknown hyperparameter 'learnig_rate'. Did you mean 'learning_rate'"),
    (["-p", "n_atoms=0"], "after --: hyperparameter n_atoms=0: must be >= 2 (method scratch)"),
    (["-p", "k=1"], "after --: unknown hyperparameter 'k'"),   # a hub setting: the scratch runs would reject it
    (["--eval-frq", "5000"], "unrecognized arguments: --eval-frq 5000"),
])
def test_bad_train_arguments_stop_the_sweep_before_any_run(extra, message, tmp_path, capsys):
    """Train's arguments after ``--`` went unchecked: every run started, failed with exit 2 into its own train.log,
    and the sweep reported N failures; now the sweep refuses them up front, as train would."""
    with pytest.raises(SystemExit) as exc:
        sweep.main(["--games", "Alien", "--methods", "scratch", "hub", "--seeds", "0", "1", "--log-dir",
                    str(tmp_path), "--no-live", "--", *extra])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_bad_arguments_exit_2(capsys):
    for argv in (["--games", "Alien", "--methods", "finetune:", "--seeds", "0"],
                 ["--games", "Alien", "--methods", "zoo", "--seeds", "0", "--jobs", "0"],
                 ["--games", "Alien", "--methods", "zoo", "--seeds", "x"],
                 ["--games", "Alien", "--methods", "zoo", "--seeds", "0", "--address", "auto"]):
        with pytest.raises(SystemExit) as exc:
            sweep.main(argv)
        assert exc.value.code == 2
    capsys.readouterr()


@pytest.mark.parametrize("method,message", [
    ("zooo", "unknown method 'zooo'"),
    ("finetune", "method finetune needs a source: write it as finetune:SOURCE"),
    ("scratch:Seaquest", "method scratch takes no source"),
])
def test_a_bad_method_stops_the_sweep_before_any_run(method, message, tmp_path, capsys):
    """Before, the sweep planned (and would have started) one failing train per seed for each of these."""
    with pytest.raises(SystemExit) as exc:
        sweep.main(["--games", "Alien", "--methods", "scratch", method, "--seeds", "0", "1",
                    "--log-dir", str(tmp_path), "--no-live"])
    assert exc.value.code == 2 and message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ local backend


def test_local_sweep_skip_resume_and_pass_through(tmp_path, fake_train, capsys):
    log = tmp_path / "runs"
    finished = log / "Alien" / "scratch" / "seed0"
    finished.mkdir(parents=True)
    (finished / "final.json").write_text("{}")
    interrupted = log / "Alien" / "scratch" / "seed1"
    interrupted.mkdir()
    (interrupted / "config.yml").write_text("game: Alien\n")
    code = sweep.main(["--games", "Alien", "--methods", "scratch", "finetune:Seaquest", "--seeds", "0", "1",
                       "--log-dir", str(log), "--steps", "40", "--jobs", "2", "--train-module", fake_train])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "3 done, 1 skipped" in out
    assert argv_of(finished) == []  # skipped: train never called
    assert "--resume" in argv_of(interrupted)[0]
    for seed in (0, 1):
        run = log / "Alien" / "finetune-Seaquest" / f"seed{seed}"
        assert (run / "final.json").is_file()
        (line,) = argv_of(run)
        assert "--method finetune" in line and "--source Seaquest" in line and "--steps 40" in line
        assert "--resume" not in line
        assert "fake train Alien finetune-Seaquest" in (run / "train.log").read_text()

    # second sweep: everything is finished, nothing runs
    code = sweep.main(["--games", "Alien", "--methods", "scratch", "finetune:Seaquest", "--seeds", "0", "1",
                       "--log-dir", str(log), "--train-module", fake_train, "--no-live"])
    assert code == 0 and "4 skipped" in capsys.readouterr().out
    assert len(argv_of(interrupted)) == 1


def test_local_sweep_failures_exit_1(tmp_path, fake_train, capsys):
    log = tmp_path / "runs"
    code = sweep.main(["--games", "Gopher", "--methods", "zoo", "--seeds", "0", "--log-dir", str(log),
                       "--train-module", fake_train, "--no-live", "--", "--fail"])
    out = capsys.readouterr().out
    assert code == 1 and "FAILED Gopher/zoo/seed0: exit 3" in out and "train.log" in out
    code = sweep.main(["--games", "Gopher", "--methods", "zoo", "--seeds", "1", "--log-dir", str(log),
                       "--train-module", fake_train, "--no-live", "--", "--no-final"])
    assert code == 1 and "exit 0 but no final.json" in capsys.readouterr().out
    # rerun without the failure: seed 0 (folder exists, no final.json) is resumed and succeeds
    code = sweep.main(["--games", "Gopher", "--methods", "zoo", "--seeds", "0", "--log-dir", str(log),
                       "--train-module", fake_train, "--no-live"])
    assert code == 0 and "--resume" in argv_of(log / "Gopher" / "zoo" / "seed0")[-1]
    capsys.readouterr()


def test_threads_per_run():
    assert threads.threads_per_run(cores=2, parallel=1, others=0) == 2
    assert threads.threads_per_run(cores=2, parallel=1, others=1) == 1
    assert threads.threads_per_run(cores=16, parallel=2, others=2) == 4
    assert threads.threads_per_run(cores=2, parallel=2, others=3) == 1  # never below one thread


def test_a_sweep_beside_a_running_training_shares_the_cores(tmp_path, fake_train, capsys, monkeypatch):
    """A real process whose command line names rlzoo_transfer.train counts as another training: the sweep's runs
    get fewer torch threads and the sweep says so; OMP_NUM_THREADS in the environment still wins."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    with child([sys.executable, "-c", "import time; time.sleep(120)", "rlzoo_transfer.train"],
               stdout=subprocess.DEVNULL) as other:
        for _ in range(200):  # until the child has exec'd: right after fork its cmdline is still this process's
            others = threads.other_training_processes()
            if other.pid in others:
                break
            time.sleep(0.05)
        assert other.pid in others and os.getpid() not in others
        log = tmp_path / "runs"
        code = sweep.main(["--games", "Alien", "--methods", "scratch", "--seeds", "0", "--log-dir", str(log),
                           "--jobs", "1", "--train-module", fake_train, "--no-live"])
        captured = capsys.readouterr()
        assert code == 0, captured.out
        expected = threads.threads_per_run(os.cpu_count() or 1, 1, len(threads.other_training_processes()))
        assert f"OMP_NUM_THREADS {expected}\n" in (log / "Alien" / "scratch" / "seed0" / "train.log").read_text()
        assert "other training process(es) already running" in captured.err and str(other.pid) in captured.err

        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        code = sweep.main(["--games", "Alien", "--methods", "scratch", "--seeds", "1", "--log-dir", str(log),
                           "--jobs", "1", "--train-module", fake_train, "--no-live"])
        captured = capsys.readouterr()
        assert code == 0 and "other training process" not in captured.err
        assert "OMP_NUM_THREADS 3\n" in (log / "Alien" / "scratch" / "seed1" / "train.log").read_text()
    assert other.pid not in threads.other_training_processes()


def test_other_training_processes_without_proc(tmp_path):
    assert threads.other_training_processes(tmp_path / "no-proc") == []


def test_last_eval_step(tmp_path):
    assert sweep.last_eval_step(tmp_path) is None
    (tmp_path / "evaluations.csv").write_text("step,mean,std,n_episodes,returns\n10000,1,0,1,1\n20000,2,0,1,2\n2")
    assert sweep.last_eval_step(tmp_path) == 2  # a half-written row still parses its step
    (tmp_path / "evaluations.csv").write_text("step,mean,std,n_episodes,returns\n10000,1,0,1,1\n20000,2,0,1,2\n")
    assert sweep.last_eval_step(tmp_path) == 20000


# --------------------------------------------------------------------------------------------------- Ray


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="ray is installed")
def test_ray_missing_is_a_clear_error(tmp_path, capsys):
    code = sweep.main(["--games", "Alien", "--methods", "zoo", "--seeds", "0", "--log-dir", str(tmp_path),
                       "--backend", "ray"])
    assert code == 2 and "pip install" in capsys.readouterr().err


def test_ray_sweep(tmp_path, fake_train, capsys):
    pytest.importorskip("ray")
    log = tmp_path / "runs"
    code = sweep.main(["--games", "Alien", "--methods", "zoo", "--seeds", "0", "1", "--log-dir", str(log),
                       "--backend", "ray", "--jobs", "2", "--train-module", fake_train, "--no-live"])
    assert code == 0, capsys.readouterr().out
    assert all((log / "Alien" / "zoo" / f"seed{s}" / "final.json").is_file() for s in (0, 1))


# ------------------------------------------------------------------------------------------ real training


@pytest.mark.slow
def test_real_two_run_sweep(tmp_path, capsys):
    """Two tiny runs of the real rlzoo_transfer.train on the local backend, then curves over them."""
    log = tmp_path / "runs"
    code = sweep.main(["--games", "Alien", "--methods", "scratch", "--seeds", "0", "1", "--log-dir", str(log),
                       "--steps", "300", "--jobs", "2", "--no-live", "--", "--device", "cpu", "--eval-freq", "150",
                       "--eval-episodes", "1", "--final-eval-episodes", "1", "-p", "learning_starts=100"])
    out = capsys.readouterr().out
    assert code == 0, out + "".join((log / "Alien" / "scratch" / f"seed{s}" / "train.log").read_text()
                                    for s in (0, 1) if (log / "Alien" / "scratch" / f"seed{s}" / "train.log").exists())
    for seed in (0, 1):
        final = json.loads((log / "Alien" / "scratch" / f"seed{seed}" / "final.json").read_text())
        assert final["steps"] == 300 and final["n_episodes"] == 1
    assert curves.main([str(log), "--out", str(tmp_path / "eval"), "--reps", "100"]) == 0
    assert (tmp_path / "eval" / "curves_Alien.png").stat().st_size > 0


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_sigterm_to_a_sweep_checkpoints_its_runs_then_a_rerun_resumes(tmp_path, backend):
    """SIGTERM to a real sweep (local backend, or a local Ray instance where Ray is installed) of two real runs: each
    run writes a checkpoint at the step it reached (not the last periodic one: there is none before step 1000), the
    sweep exits 130, and the same sweep again resumes both from those steps and finishes them (local backend only:
    the resumed command is the backend's same ``--resume`` line, and Ray runs its workers at nice 15, so beside other
    work the rerun would take many minutes)."""
    if backend == "ray":
        pytest.importorskip("ray")
    log = tmp_path / "runs"
    argv = [sys.executable, "-m", "rlzoo_transfer.sweep", "--games", "Alien", "--methods", "scratch", "--seeds",
            "0", "1", "--log-dir", str(log), "--steps", "1000", "--jobs", "2", "--no-live", "--backend", backend, "--",
            "--eval-freq", "1000", "--eval-episodes", "1", "--final-eval-episodes", "1", "-p", "learning_starts=100",
            "buffer_size=2000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = [log / "Alien" / "scratch" / f"seed{s}" for s in (0, 1)]
    with child(argv, env={"OMP_NUM_THREADS": "1"}) as proc:
        wait_until(proc, lambda: all(step0_evaluated(r) for r in runs), "step-0 evaluations")
        time.sleep(1.0)
        proc.terminate()
        out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, out + err
    assert "each writes a checkpoint first" in err and "Traceback" not in err
    stopped_at = []
    for r in runs:
        log_lines = (r / "train.log").read_text().splitlines()
        lines = [ln for ln in log_lines if ln.startswith("stopped by SIGTERM at step ")]
        assert len(lines) == 1, (r / "train.log").read_text()
        stopped_at.append(int(lines[0].split("at step ")[1].split("/")[0]))
        assert (r / "checkpoint" / "model.zip").is_file() and not (r / "final.json").exists()
    assert all(0 < s < 1000 for s in stopped_at)
    if backend == "ray":
        return

    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout + again.stderr
    for r, step in zip(runs, stopped_at):
        assert f"resuming {r} from step {step}" in (r / "train.log").read_text()
        assert json.loads((r / "final.json").read_text())["steps"] == 1000


# ------------------------------------------------------------------------------------------------ lock-step


def test_lockstep_groups_compatible_runs(tmp_path, capsys):
    """Same method and action count share a group (Alien and Jamesbond: 18 actions); hub and Gopher (8) do not."""
    log = tmp_path / "runs"
    code = sweep.main(["--games", "Alien", "Gopher", "Jamesbond", "--methods", "scratch", "hub", "--seeds", "0", "1",
                       "--log-dir", str(log), "--lockstep", "3", "--dry-run"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    commands = [ln for ln in lines if not ln.startswith("#")]
    groups = [ln.split("--runs ")[1].split(" --log-dir")[0].split()
              for ln in commands if "rlzoo_transfer.lockstep" in ln]
    # in the sweep's seed-major order
    assert groups == [["Alien:scratch:0", "Jamesbond:scratch:0", "Alien:scratch:1"],
                      ["Gopher:scratch:0", "Gopher:scratch:1"]]
    assert sum("rlzoo_transfer.train" in ln and "--method hub" in ln for ln in commands) == 6
    # the leftover Jamesbond seed is a single run, not a group of one
    assert sum("--game Jamesbond --method scratch --seed 1" in ln for ln in commands) == 1
    assert not log.exists()


def test_sample_threads_reach_lockstep_groups_only(tmp_path, capsys):
    """--sample-threads goes to the lock-step leads' commands, never to single runs (train has no such option)."""
    log = tmp_path / "runs"
    code = sweep.main(["--games", "Alien", "--methods", "scratch", "hub", "--seeds", "0", "1", "--log-dir", str(log),
                       "--lockstep", "2", "--sample-threads", "3", "--dry-run"])
    commands = [ln for ln in capsys.readouterr().out.splitlines() if not ln.startswith("#")]
    assert code == 0
    leads = [ln for ln in commands if "rlzoo_transfer.lockstep" in ln]
    singles = [ln for ln in commands if "rlzoo_transfer.train" in ln]
    assert len(leads) == 1 and "--sample-threads 3" in leads[0]
    assert len(singles) == 2 and not any("--sample-threads" in ln for ln in singles)


def test_sample_threads_without_lockstep_or_not_positive_exit_2(capsys):
    for extra in (["--sample-threads", "2"], ["--lockstep", "2", "--sample-threads", "0"]):
        with pytest.raises(SystemExit) as exc:
            sweep.main(["--games", "Alien", "--methods", "scratch", "--seeds", "0", "--dry-run", *extra])
        assert exc.value.code == 2
    assert "--sample-threads" in capsys.readouterr().err


def test_real_lockstep_sweep(tmp_path, capsys):
    """Two real tiny runs trained as one lock-step group by the sweep; both finish with their own folders."""
    log = tmp_path / "runs"
    code = sweep.main(["--games", "Gopher", "--methods", "scratch", "--seeds", "0", "1", "--log-dir", str(log),
                       "--steps", "150", "--lockstep", "2", "--no-live", "--", "--eval-freq", "150",
                       "--eval-episodes", "1", "--final-eval-episodes", "1", "--threads", "1",
                       "-p", "learning_starts=100", "batch_size=8"])
    out = capsys.readouterr().out
    lead_log = log / "Gopher" / "scratch" / "seed0" / "train.log"
    assert code == 0, out + (lead_log.read_text() if lead_log.exists() else "")
    assert "2 done" in out
    assert "rlzoo_transfer.lockstep --runs Gopher:scratch:0 Gopher:scratch:1" in lead_log.read_text()
    for seed in (0, 1):
        final = json.loads((log / "Gopher" / "scratch" / f"seed{seed}" / "final.json").read_text())
        assert final["steps"] == 150 and final["seed"] == seed


def test_confirm_runs_the_registered_runs_once_committed(tmp_path, capsys):
    """--confirm plans exactly the registration's game x (method, baseline) x seeds; refuses other selections,
    protocol-changing options and a registration the checked-out commit does not contain."""
    committed = PROJECT_ROOT / "eval" / "confirm" / "Jamesbond-hub.yml"
    reg = load_registration(committed)
    assert sweep.main(["--confirm", str(committed), "--log-dir", str(tmp_path), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    planned = {(ln.split("--method ")[1].split()[0], int(ln.split("--seed ")[1].split()[0])) for ln in lines}
    assert planned == {(m, s) for m in ("hub", "scratch") for s in reg.seeds} and len(lines) == 2 * len(reg.seeds)
    assert all("--game Jamesbond" in ln for ln in lines)

    for extra in (["--seeds", "0"], ["--steps", "500"], ["--", "-p", "k=1"], ["--", "--steps=10"]):
        with pytest.raises(SystemExit) as exc:
            sweep.main(["--confirm", str(committed), "--log-dir", str(tmp_path), "--dry-run", *extra])
        assert exc.value.code == 2
    assert "would change it" in capsys.readouterr().err

    # a registration written in the working tree but not committed: refused before any run folder exists
    scratch_dir = PROJECT_ROOT / "runs" / f"test-confirm-{os.getpid()}"
    scratch_dir.mkdir(parents=True, exist_ok=True)
    uncommitted = scratch_dir / "reg.yml"
    try:
        uncommitted.write_text(committed.read_text())
        try:
            code = sweep.main(["--confirm", str(uncommitted), "--log-dir", str(tmp_path / "l"), "--dry-run"])
        except SystemExit as exc:
            code = exc.code
        err = capsys.readouterr().err
        if "git cannot tell" in err:            # a copy without git history: a note, and the plan
            assert code == 0
        else:
            assert code == 2 and "is not in the commit checked out" in err
        assert not (tmp_path / "l").exists()
    finally:
        uncommitted.unlink(missing_ok=True)
        scratch_dir.rmdir()


LOADED = "print(sorted(m for m in ('scipy', 'torch', 'stable_baselines3') if m in sys.modules))"


@pytest.mark.parametrize("module,argv", [
    ("sweep", ["--help"]),
    ("sweep", ["--games", "Alien", "JamesBond", "Gopher", "--methods", "scratch", "zoo", "hub", "finetune:Seaquest",
               "--seeds", "0", "1", "--lockstep", "2", "--dry-run", "--log-dir", "{tmp}"]),
    ("train", ["--help"]),
])
def test_planning_does_not_load_the_rl_stack(module, argv, tmp_path):
    """``sweep --help`` took ~3 s when scores.py imported scipy at the top for the game tables sweep reads, and a
    ``sweep --dry-run`` / ``train --help`` ~3 s more for the method registry and the game names, which came with
    torch and SB3; the statistics now load scipy where they use it, and the names of the methods (rl/registry.py)
    and of the games (games.py) need neither torch nor SB3.  The dry run still plans lock-step groups and
    canonical game names."""
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code = (f"import sys, contextlib, io\nfrom rlzoo_transfer import {module}\nout = io.StringIO()\n"
            f"with contextlib.suppress(SystemExit), contextlib.redirect_stdout(out):\n"
            f"    {module}.main({argv!r})\n"
            f"{LOADED}\nprint(out.getvalue(), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stderr
    if "--dry-run" in argv:
        assert "rlzoo_transfer.lockstep --runs Alien:scratch:0 Jamesbond:scratch:0" in proc.stderr   # 18 actions
        assert "Gopher/finetune-Seaquest/seed1: lock-step with Gopher/finetune-Seaquest/seed0" in proc.stderr
        assert "--game Jamesbond --method hub --seed 1" in proc.stderr


# ------------------------------------------------------------------ checks before any run (walkthrough findings)


def explore_run(root: Path, method: str, seed: int, final: float, overrides: dict, source: str | None = None,
                **protocol) -> None:
    """A complete exploratory run folder as train writes it: the method's resolved hyperparameters (``overrides``
    applied), steps / evaluation settings (``protocol``), evaluations.csv and final.json."""
    from rlzoo_transfer.config import load_config
    from rlzoo_transfer.rl.registry import get_method

    folder = f"{method}-{source}" if source else method
    d = root / "Alien" / folder / f"seed{seed}"
    d.mkdir(parents=True)
    config = dict(game="Alien", method=method, source=source, seed=seed, **protocol,
                  hyperparams=load_config(get_method(method).config_file, overrides), commit="abc", command="test",
                  started="2026-01-01 00:00:00")
    (d / "config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    (d / "evaluations.csv").write_text(f"step,mean,std,n_episodes,returns\n{protocol['steps']},{final},0.0,1,{final}\n")
    (d / "final.json").write_text(json.dumps(dict(game="Alien", method=folder, seed=seed, steps=protocol["steps"],
                                                  mean=final, std=0.0, n_episodes=1, returns=[final])))


TINY = dict(steps=150, eval_freq=150, eval_episodes=1, final_eval_episodes=1, n_envs=1)
TINY_HYPER = {"learning_starts": 100, "batch_size": 8, "learning_rate": 2.5e-05}


def register_tiny(tmp_path: Path, capsys, **protocol) -> Path:
    """``confirm register`` of finetune-Seaquest vs scratch on Alien from exploratory runs made with a tiny
    protocol and non-default hyperparameters; returns the registration (outside the repository: git cannot tell
    whether it is committed, so ``sweep --confirm`` notes that and goes on)."""
    from rlzoo_transfer import confirm

    root = tmp_path / "explore"
    for seed, (fine, scratch) in enumerate([(300.0, 200.0), (320.0, 210.0)]):
        explore_run(root, "finetune", seed, fine, TINY_HYPER, source="Seaquest", **{**TINY, **protocol})
        explore_run(root, "scratch", seed, scratch, TINY_HYPER, **{**TINY, **protocol})
    out = tmp_path / "reg.yml"
    assert confirm.main(["register", "--game", "Alien", "--method", "finetune-Seaquest", "--seeds", "100", "101",
                         "--runs", str(root), "--log-dir", str(tmp_path / "live"), "--out", str(out)]) == 0
    capsys.readouterr()
    return out


def test_confirm_passes_each_arm_its_registered_protocol(tmp_path, capsys):
    """``sweep --confirm`` ran train's default protocol (100k steps, evaluations every 10k, 10 / 100 episodes, the
    default hyperparameters), so every confirmatory run deviated from the registration it was meant to test; now
    each run gets the registered steps, evaluation settings and ``-p`` for the hyperparameters off the defaults,
    and what train makes of that command is the registered protocol (``confirm.protocol_differences``: none)."""
    from rlzoo_transfer import train
    from rlzoo_transfer.config import load_config, parse_overrides
    from rlzoo_transfer.confirm import IGNORED_HYPERPARAMS, protocol_differences
    from rlzoo_transfer.rl.registry import get_method

    reg_path = register_tiny(tmp_path, capsys)
    reg = load_registration(reg_path)
    assert sweep.main(["--confirm", str(reg_path), "--log-dir", str(tmp_path / "live"), "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 4
    for line in lines:
        assert "--steps 150 --eval-freq 150 --eval-episodes 1 --final-eval-episodes 1 -p " in line
        argv = line.split(" >> ")[0].split(" -m rlzoo_transfer.train ")[1].split()
        args = train.parser().parse_args(argv)
        arm = f"{args.method}-{args.source}" if args.source else args.method
        hyper = load_config(get_method(args.method).config_file, parse_overrides(args.hyperparams))
        recorded = dict(steps=args.steps, eval_freq=args.eval_freq, eval_episodes=args.eval_episodes,
                        final_eval_episodes=args.final_eval_episodes, n_envs=1,
                        hyperparams={k: v for k, v in hyper.items() if k not in IGNORED_HYPERPARAMS})
        assert protocol_differences(reg.protocol[arm], recorded) == [], line
        assert set(parse_overrides(args.hyperparams)) == set(TINY_HYPER), line   # only what differs is passed


def test_confirm_refuses_a_protocol_it_cannot_run(tmp_path, capsys):
    """A registered setting train has no option for (n_envs 4), or protocol options after ``--`` however spelt."""
    reg_path = register_tiny(tmp_path, capsys, n_envs=4)
    with pytest.raises(SystemExit) as exc:
        sweep.main(["--confirm", str(reg_path), "--log-dir", str(tmp_path / "live"), "--dry-run"])
    assert exc.value.code == 2 and "registered n_envs 4 is not one train can run" in capsys.readouterr().err
    committed = PROJECT_ROOT / "eval" / "confirm" / "Jamesbond-hub.yml"
    for extra in (["--eval-f", "5"], ["-pk=1"], ["--final-eval-episodes=3"]):
        with pytest.raises(SystemExit) as exc:
            sweep.main(["--confirm", str(committed), "--log-dir", str(tmp_path), "--dry-run", "--", *extra])
        assert exc.value.code == 2 and "would change it" in capsys.readouterr().err


@pytest.mark.slow
def test_real_confirm_sweep_follows_the_registration(tmp_path, capsys):
    """The walkthrough's case end to end: tiny confirmatory runs of real train started by ``sweep --confirm``, then
    ``confirm check`` finds them complete and lists no deviation from the registered protocol."""
    from rlzoo_transfer import confirm

    reg_path = register_tiny(tmp_path, capsys)
    live = tmp_path / "live"
    code = sweep.main(["--confirm", str(reg_path), "--log-dir", str(live), "--jobs", "2", "--no-live", "--",
                       "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0, out + "".join(p.read_text() for p in live.rglob("train.log"))
    assert confirm.main(["check", str(reg_path), "--runs", str(live)]) == 0
    report = capsys.readouterr().out
    assert "4 of 4 registered runs complete" in report and "Deviations" not in report, report


@pytest.mark.parametrize("methods,extra,message", [
    (["hub"], ["-p", "k=3"], "--method hub cannot be built with these settings: k must be in [1, m=2], got 3"),
    (["zoo"], ["-p", "gate_norm=foo"], "gate_norm must be one of ('sum', 'none'), got 'foo'"),
    (["hub"], ["-p", "generator=foo"], "unknown pathway generator 'foo'"),
    (["finetune:Seaquest"], ["-p", "hidden=128"], "set the same hidden / n_atoms as the zoo"),
    (["finetune:Pong"], [], "method finetune:Pong: source 'Pong' is not in "),
    (["zoo"], ["-p", "sources=Seaquest,Pong"], "method zoo: source 'Pong' is not in "),
    (["hub"], ["-p", "sources="], "method hub: no sources named"),
    (["zoo", "zoo-avg"], ["-p", "mode=lite"], "--method zoo-avg pins mode='average'"),   # each run would refuse it
])
def test_a_value_the_method_rejects_stops_the_sweep_before_any_run(methods, extra, message, tmp_path, capsys):
    """These passed the sweep's checks (load_config knows no more than keys and ranges) and failed once per run
    (``failed Alien/hub/seed5 (exit 2)``); the sources are now checked against the zoo without torch, and a network
    setting set with -p by building that network once, as train does."""
    with pytest.raises(SystemExit) as exc:   # a usage error (parser.error), or main's exit status 2
        code = sweep.main(["--games", "Alien", "--methods", *methods, "--seeds", "5", "6", "--log-dir",
                           str(tmp_path), "--dry-run", "--", *extra])
        raise SystemExit(code)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message in err, err
    if "Pong" in message:
        assert "(it has Seaquest, Riverraid)" in err
    assert not list(tmp_path.iterdir())


def test_a_finished_method_is_not_checked_against_its_zoo(tmp_path, capsys):
    """Re-running a completed sweep after its zoo moved (``-p zoo_dir=`` names a folder that is gone) skips every run:
    the sources were refused even for methods with no pending run (exit 2).  A pending run of it still is."""
    gone = tmp_path / "gone-zoo"
    for seed in (0, 1):
        d = tmp_path / "runs" / "Alien" / "zoo" / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "final.json").write_text("{}")
    argv = ["--games", "Alien", "--methods", "zoo", "--log-dir", str(tmp_path / "runs"), "--dry-run", "--", "-p",
            f"zoo_dir={gone}"]
    assert sweep.main(argv[:4] + ["--seeds", "0", "1"] + argv[4:]) == 0
    assert all("final.json exists" in ln for ln in capsys.readouterr().out.strip().splitlines())
    assert sweep.main(argv[:4] + ["--seeds", "0", "2"] + argv[4:]) == 2
    assert f"method zoo: no zoo manifest at {gone / 'zoo.yml'}" in capsys.readouterr().err


def test_network_settings_the_method_accepts_still_plan(tmp_path, capsys):
    """The network check builds what train builds, so values the method takes pass (hub over 8 and 18 actions)."""
    code = sweep.main(["--games", "Alien", "Gopher", "--methods", "hub", "--seeds", "0", "--log-dir", str(tmp_path),
                       "--dry-run", "--", "-p", "k=1", "generator=pooled"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(lines) == 2 and all("-p k=1 generator=pooled" in ln for ln in lines)


@pytest.mark.parametrize("extra,message", [
    (["--log-dir", "/tmp/elsewhere"], "after --: --log-dir is set by the sweep itself: use the sweep's --log-dir"),
    (["--log", "/tmp/elsewhere"], "after --: --log-dir is set by the sweep itself"),   # train's abbreviation
    (["--steps", "50"], "after --: --steps is set by the sweep itself: use the sweep's --steps"),
    (["--resume"], "after --: --resume is set by the sweep itself: the sweep resumes each interrupted run"),
    (["--seed", "3"], "after --: --seed is set by the sweep itself: use the sweep's --seeds"),
    (["--source", "Riverraid"], "use the sweep's --methods NAME:SOURCE"),
    (["--game", "Gopher"], "use the sweep's --games"),
])
def test_options_the_sweep_sets_are_refused_after_the_separator(extra, message, tmp_path, capsys):
    """``-- --log-dir X`` sent the runs where the sweep never looks (its dry run showed ``--log-dir A --log-dir
    X``: train takes the last); now each option the sweep sets itself is refused, naming the sweep's own."""
    with pytest.raises(SystemExit) as exc:
        sweep.main(["--games", "Alien", "--methods", "scratch", "--seeds", "0", "--log-dir", str(tmp_path),
                    "--dry-run", "--", *extra])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_dry_run_checks_the_log_dir(tmp_path, capsys):
    """A real run refused a --log-dir that is a file; the dry run printed the commands as if it would work."""
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(SystemExit) as exc:
        sweep.main(["--games", "Alien", "--methods", "scratch", "--seeds", "0", "--log-dir", str(afile), "--dry-run"])
    assert exc.value.code == 2 and "is a file, not a folder" in capsys.readouterr().err


def test_checking_sources_and_hyperparameters_does_not_load_torch(tmp_path):
    """The zoo sources (zoo.yml) and -p values other than network settings are judged without torch: only a -p
    network setting (k, gate_norm, hidden ...) builds a network at plan time."""
    argv = ["--games", "Alien", "--methods", "zoo", "hub", "finetune:Seaquest", "--seeds", "0", "--dry-run",
            "--log-dir", str(tmp_path), "--", "-p", "learning_rate=2e-4"]
    code = (f"import sys\nfrom rlzoo_transfer import sweep\ncode = sweep.main({argv!r})\n"
            f"assert code == 0, code\n{LOADED}")
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout + proc.stderr
