"""publish: only the small files of runs reach eval/runs, and a stale final score is withdrawn."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from rlzoo_transfer.publish import main, publish


def _run(root, method, finished):
    d = root / "Alien" / method / "seed0"
    (d / "checkpoint").mkdir(parents=True)
    (d / "checkpoint" / "replay.npz").write_bytes(b"x" * 100)
    (d / "model.zip").write_bytes(b"zip")
    (d / "config.yml").write_text("game: Alien\n")
    (d / "evaluations.csv").write_text("step,mean,std,n_episodes,returns\n0,1.0,0.0,1,1\n")
    (d / "gates.csv").write_text("step,layer,source,gate\n0,conv1,Seaquest,0.5\n")
    (d / "flow.csv").write_text("step,point,model,weight\n0,conv1,student,1.0\n")
    if finished:
        (d / "final.json").write_text(json.dumps({"mean": 1.0}))
    return d


def test_copies_small_files_only(tmp_path):
    src, dst = tmp_path / "runs", tmp_path / "eval"
    _run(src, "scratch", True)
    _run(src, "zoo", False)
    out = publish(src, dst)
    assert [p.relative_to(dst).as_posix() for p in out] == ["Alien/scratch/seed0", "Alien/zoo/seed0"]
    assert sorted(f.name for f in (dst / "Alien/scratch/seed0").iterdir()) == \
        ["config.yml", "evaluations.csv", "final.json", "flow.csv", "gates.csv"]
    assert not (dst / "Alien/zoo/seed0/final.json").exists()


def test_stale_final_score_is_withdrawn(tmp_path):
    src, dst = tmp_path / "runs", tmp_path / "eval"
    run = _run(src, "scratch", True)
    publish(src, dst)
    (run / "final.json").unlink()  # the run was restarted
    publish(src, dst)
    assert not (dst / "Alien/scratch/seed0/final.json").exists()


def test_finished_leaves_out_runs_in_progress(tmp_path, capsys):
    src, dst = tmp_path / "runs", tmp_path / "eval"
    _run(src, "scratch", True)
    _run(src, "zoo", False)
    assert main([str(src), "--out", str(dst), "--finished"]) == 0
    assert "Alien/scratch/seed0 (finished)" in capsys.readouterr().out
    assert (dst / "Alien/scratch/seed0/final.json").exists() and not (dst / "Alien/zoo").exists()
    (src / "Alien/scratch/seed0/final.json").unlink()   # a published run restarted: its score is withdrawn
    publish(src, dst, finished_only=True)
    assert (dst / "Alien/scratch/seed0/evaluations.csv").exists()
    assert not (dst / "Alien/scratch/seed0/final.json").exists() and not (dst / "Alien/zoo").exists()
    shutil.rmtree(dst)
    assert main([str(src), "--out", str(dst), "--finished"]) == 1
    assert "no finished run folders" in capsys.readouterr().err


def test_missing_root_is_an_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope")]) == 2
    assert "no run folder" in capsys.readouterr().err


def test_no_runs_or_a_file_as_out_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty"), "--out", str(tmp_path / "eval")]) == 1
    assert "no run folders" in capsys.readouterr().err and not (tmp_path / "eval").exists()
    _run(tmp_path / "runs", "scratch", True)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit) as stop:   # was a NotADirectoryError; a usage error since outputs.py
        main([str(tmp_path / "runs"), "--out", str(tmp_path / "afile")])
    assert stop.value.code == 2 and "is a file, not a folder" in capsys.readouterr().err


def test_published_files_are_not_git_ignored():
    """What publish writes under eval/runs must reach git (a `runs/` ignore pattern once swallowed it), while the
    scratch folder runs/ stays ignored."""
    root = Path(__file__).resolve().parent.parent
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["eval/runs/Alien/scratch/seed0/config.yml", "eval/runs/Gopher/zoo/seed3/gates.csv",
             "runs/Alien/scratch/seed0/model.zip"]
    out = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=root, capture_output=True, text=True)
    assert out.stdout.split() == ["runs/Alien/scratch/seed0/model.zip"]
