"""One run's summary files (curve.png, gate plot, report.md) from real run-folder files."""
import json
import sys

import pytest

from rlzoo_transfer import aggregate, run_summary, rundata
from rlzoo_transfer.run import summarize_after_run

EVALS = "step,mean,std,n_episodes,returns\n0,200,10,2,190 210\n1000,400,20,2,380 420\n2000,300,0,2,300 300\n"


def make_run(root, final=True, gates=True):
    d = root / "Alien" / "zoo" / "seed3"
    d.mkdir(parents=True)
    (d / "evaluations.csv").write_text(EVALS)
    (d / "config.yml").write_text("steps: 2000\ncommand: python -m rlzoo_transfer.train --game Alien --method zoo\n"
                                  "commit: abc123\n")
    if final:
        (d / "final.json").write_text(json.dumps({"steps": 2000, "mean": 527.8, "std": 50.0, "n_episodes": 100}))
    if gates:
        (d / "gates.csv").write_text("step,layer,source,gate\n0,conv1,Seaquest,0.5\n0,conv1,Riverraid,0.5\n"
                                     "1000,conv1,Seaquest,0.8\n1000,conv1,Riverraid,0.2\n")
    return d


def test_area_over_training_hand_value(tmp_path):
    run = rundata.load_run(make_run(tmp_path))
    # trapezoids: (200 + 400) / 2 * 1000 + (400 + 300) / 2 * 1000 = 650,000 over 2000 steps
    assert aggregate.mean_return_over_training(run) == pytest.approx(325.0)


def test_finished_run_summary(tmp_path):
    d = make_run(tmp_path)
    assert run_summary.main([str(d)]) == 0
    report = (d / "report.md").read_text()
    for name in ("curve.png", "gates_Alien_zoo.png"):
        assert (d / name).read_bytes()[:4] == b"\x89PNG", name
        assert f"]({name})" in report
    assert "# Alien / zoo / seed 3" in report and "Finished: 2,000 agent steps" in report
    # final 527.8 +- 50 / sqrt(100); HNS (527.8 - 227.8) / (7127.7 - 227.8) = 0.043
    assert "| this run (100 episodes) | **527.8** ± 5.0 s.e. | 0.043 |" in report
    assert "| DER @100k (published) | 739.9 |" in report
    assert "Jump-start (evaluation at step 0): **200.0**" in report and "**325.0**" in report
    assert "| 1,000 | 400.0 | 20.0 | 2 |" in report and "Commit: `abc123`" in report


def test_unfinished_run_says_so(tmp_path):
    d = make_run(tmp_path, final=False, gates=False)
    path = run_summary.write_run_summary(d)
    report = path.read_text()
    assert "**Unfinished**: last evaluation at step 2000, of 2000 planned" in report
    assert "this run" not in report and not (d / "gates_Alien_zoo.png").exists()
    assert (d / "curve.png").exists()


def test_not_a_run_folder_exit_2(tmp_path, capsys):
    assert run_summary.main([str(tmp_path / "missing")]) == 2
    (tmp_path / "notarun").mkdir()
    assert run_summary.main([str(tmp_path / "notarun")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 2 and "Traceback" not in err


def test_failure_after_a_run_is_a_warning(tmp_path, capsys):
    assert summarize_after_run(tmp_path / "notarun") is None
    err = capsys.readouterr().err
    assert err.startswith("warning: the run is complete") and "run_summary" in err


def test_summary_code_that_cannot_be_imported_is_a_warning_too(tmp_path, capsys, monkeypatch):
    """A run that outlived an update of the package imported a run_summary / curves that needed names its
    already-loaded modules lacked: an ImportError traceback (exit 1) after its final.json was written."""
    monkeypatch.setitem(sys.modules, "rlzoo_transfer.run_summary", None)   # makes the import raise ImportError
    assert summarize_after_run(make_run(tmp_path)) is None
    err = capsys.readouterr().err
    assert err.startswith("warning: the run is complete") and "ModuleNotFoundError" in err   # an ImportError
