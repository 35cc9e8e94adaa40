"""publish: only the small files of runs reach eval/runs; a published final score is withdrawn only on request."""
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
    out = publish(src, dst).copied
    assert [p.relative_to(dst).as_posix() for p in out] == ["Alien/scratch/seed0", "Alien/zoo/seed0"]
    assert sorted(f.name for f in (dst / "Alien/scratch/seed0").iterdir()) == \
        ["config.yml", "evaluations.csv", "final.json", "flow.csv", "gates.csv"]
    assert not (dst / "Alien/zoo/seed0/final.json").exists()


def test_stale_final_score_is_kept_unless_withdrawn(tmp_path, capsys):
    """A published finished run whose runs/ copy lost its final.json (restarted - or a run that failed at its start
    in the same folder, which looks the same) stays published with a warning; --withdraw replaces it."""
    src, dst = tmp_path / "runs", tmp_path / "eval"
    run = _run(src, "scratch", True)
    assert publish(src, dst).copied == [dst / "Alien/scratch/seed0"]
    (run / "final.json").unlink()
    (run / "evaluations.csv").write_text("step,mean,std,n_episodes,returns\n0,2.0,0.0,1,2\n")
    for finished in ([], ["--finished"]):
        assert main([str(src), "--out", str(dst), *finished]) == 0
        err = capsys.readouterr().err
        assert f"warning: kept {dst / 'Alien/scratch/seed0'} as published (finished)" in err and "--withdraw" in err
        assert (dst / "Alien/scratch/seed0/final.json").exists()
        assert (dst / "Alien/scratch/seed0/evaluations.csv").read_text().endswith("0,1.0,0.0,1,1\n")
    assert main([str(src), "--out", str(dst), "--withdraw"]) == 0
    assert "Alien/scratch/seed0 (incomplete)" in capsys.readouterr().out
    assert not (dst / "Alien/scratch/seed0/final.json").exists()
    assert (dst / "Alien/scratch/seed0/evaluations.csv").read_text().endswith("0,2.0,0.0,1,2\n")


def test_finished_leaves_out_runs_in_progress(tmp_path, capsys):
    src, dst = tmp_path / "runs", tmp_path / "eval"
    _run(src, "scratch", True)
    _run(src, "zoo", False)
    assert main([str(src), "--out", str(dst), "--finished"]) == 0
    assert "Alien/scratch/seed0 (finished)" in capsys.readouterr().out
    assert (dst / "Alien/scratch/seed0/final.json").exists() and not (dst / "Alien/zoo").exists()
    (dst / "Alien/zoo/seed0").mkdir(parents=True)   # published while in progress: --finished keeps it in step
    (dst / "Alien/zoo/seed0/evaluations.csv").write_text("step,mean,std,n_episodes,returns\n")
    assert main([str(src), "--out", str(dst), "--finished"]) == 0
    assert (dst / "Alien/zoo/seed0/gates.csv").exists() and not (dst / "Alien/zoo/seed0/final.json").exists()
    shutil.rmtree(dst)
    (src / "Alien/scratch/seed0/final.json").unlink()
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
