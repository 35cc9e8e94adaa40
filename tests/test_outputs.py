"""Output paths that cannot be written are a usage error before any work (rlzoo_transfer/outputs.py)."""
from __future__ import annotations

import subprocess
import sys

import pytest

from rlzoo_transfer.outputs import unwritable
from tests.conftest import ROOT


def test_unwritable_reasons(tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("not a folder\n")
    assert unwritable(tmp_path, folder=True) is None
    assert unwritable(tmp_path / "new" / "deeper", folder=True) is None
    assert unwritable(tmp_path / "new" / "result.json", folder=False) is None
    assert unwritable(afile, folder=False) is None                         # replaced atomically
    assert unwritable(afile, folder=True) == f"{afile} is a file, not a folder"
    assert unwritable(afile / "x" / "y", folder=True) == f"{afile} is a file, not a folder"
    assert unwritable(afile / "result.json", folder=False) == f"{afile} is a file, not a folder"
    assert unwritable(tmp_path, folder=False) == f"{tmp_path} is a folder, not a file"
    monkeypatch.chdir(tmp_path)
    assert unwritable("runs", folder=True) is None and unwritable("report.md", folder=False) is None


@pytest.mark.skipif(sys.platform == "win32" or __import__("os").geteuid() == 0,
                    reason="permissions do not stop root")
def test_a_read_only_folder_is_unwritable(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o555)
    assert unwritable(ro / "runs", folder=True) == f"{ro} is not writable"


LOADED = "print(sorted(m for m in ('torch', 'stable_baselines3', 'scipy') if m in sys.modules))"


@pytest.mark.parametrize("module,argv,option", [
    ("train", ["--game", "Alien", "--method", "zoo", "--log-dir", "{file}"], "--log-dir"),
    ("lockstep", ["--games", "Alien", "--seeds", "0", "1", "--log-dir", "{file}/runs"], "--log-dir"),
    ("pretrain", ["--game", "Seaquest", "--log-dir", "{file}"], "--log-dir"),
    ("pretrain", ["--game", "Seaquest", "--log-dir", "{tmp}/runs", "--zoo-dir", "{file}"], "--zoo-dir"),
    ("sweep", ["--games", "Alien", "--methods", "scratch", "--seeds", "0", "--log-dir", "{file}", "--no-live"],
     "--log-dir"),
    ("curves", ["eval/runs", "--out", "{file}/eval"], "--out"),
    ("curves", ["eval/runs", "--out", "{tmp}/eval", "--readme", "{tmp}"], "--readme"),
    ("publish", ["runs", "--out", "{file}"], "--out"),
    ("enjoy", ["--source", "Seaquest", "--out", "{file}/returns.json"], "--out"),
    ("enjoy", ["--source", "Seaquest", "--gif", "{file}/play.gif"], "--gif"),
    ("bench", ["--sections", "update", "--md", "{file}/bench.md"], "--md"),
    ("confirm", ["register", "--game", "Jamesbond", "--method", "hub", "--seeds", "200", "201", "--out",
                 "{file}/x.yml"], "--out"),
    ("select", ["--data", "{tmp}", "--zoo", "{tmp}/a.pt", "--out", "{file}/scores.json"], "--out"),
    ("vision.classify", ["--data", "{tmp}", "--out", "{file}"], "--out"),
    ("vision.landmarks", ["--data", "{tmp}", "--out", "{file}/run"], "--out"),
    ("vision.experiment", ["--work", "{file}/work", "--out", "{tmp}/out"], "--work"),
])
def test_an_unwritable_output_is_a_usage_error_before_the_work(module, argv, option, tmp_path):
    """``train --log-dir FILE`` built the model and then ended in a NotADirectoryError traceback; ``bench`` /
    ``enjoy`` did their work and lost it at the final write.  Now every CLI refuses the path right after parsing:
    exit 2, one line naming the option, and neither torch nor SB3 loaded."""
    afile = tmp_path / "afile"
    afile.write_text("not a folder\n")
    argv = [a.replace("{file}", str(afile)).replace("{tmp}", str(tmp_path)) for a in argv]
    code = (f"import sys\nfrom rlzoo_transfer.{module} import main\ntry:\n    status = main({argv!r})\n"
            f"except SystemExit as e:\n    status = e.code\n{LOADED}\nprint(status)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    loaded, status = proc.stdout.strip().splitlines()
    assert status == "2", proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    why = "is a folder, not a file" if option == "--readme" else "is a file, not a folder"
    assert f"error: argument {option}: cannot write" in last and last.endswith(why), proc.stderr
    assert "Traceback" not in proc.stderr
    assert loaded == "[]", proc.stderr
    assert afile.read_text() == "not a folder\n" and not (tmp_path / "runs").exists()
