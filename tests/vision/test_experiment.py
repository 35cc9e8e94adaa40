"""The offline vision experiment (``python -m rlzoo_transfer.vision.experiment``) at a tiny size: every method and
selection score runs on real digits, a resumed experiment gives what an uninterrupted one gives, and bad input is
one line and exit status 2 before any training."""
import json
import subprocess
import sys

import pytest

from rlzoo_transfer.vision.digits_experiment import SOURCES, ZOO_METHODS
from rlzoo_transfer.vision.experiment import main

TINY = ["--iters", "4", "--source-iters", "4", "--width", "4", "--shots", "3"]


def _run(tmp_path, name, *args):
    return main(["--out", str(tmp_path / name / "out"), "--work", str(tmp_path / name / "work"), *TINY, *args])


def _top1s(results, seed):
    return {label: run["top1"] for label, run in results["runs"][str(seed)].items()}


@pytest.fixture(scope="module")
def experiments(tmp_path_factory):
    """seed 0, then --resume with seeds 0 1 ("resumed"); seeds 0 1 in one go ("straight")."""
    tmp = tmp_path_factory.mktemp("experiment")
    assert _run(tmp, "resumed", "--seeds", "0") == 0
    first = json.loads((tmp / "resumed" / "out" / "results.json").read_text())
    assert _run(tmp, "resumed", "--seeds", "0", "1", "--resume") == 0
    assert _run(tmp, "straight", "--seeds", "0", "1") == 0
    return tmp, first


def test_every_method_and_score_is_reported(experiments):
    tmp, _ = experiments
    out = tmp / "straight" / "out"
    results = json.loads((out / "results.json").read_text())
    labels = ["scratch", *(f"single:{s}" for s in SOURCES), *ZOO_METHODS]
    assert sorted(_top1s(results, 1)) == sorted(labels)
    assert all(0 <= v <= 100 for v in _top1s(results, 1).values())
    assert set(results["selection"]["0"]["scores"]) == set(SOURCES)
    assert {"lfc", "leep", "logme", "rsa", "domain_similarity"} <= set(results["selection"]["0"]["judgement"])
    summary = (out / "summary.md").read_text()
    assert "| hub | A, B, C |" in summary and "| logme |" in summary and "| rsa |" in summary
    assert "seeds [0, 1]" in summary
    env = json.loads((out / "config.json").read_text())["environment"]
    assert env["versions"]["torch"] and "commit" in env


def test_resume_keeps_finished_seeds_and_matches_an_uninterrupted_run(experiments, capsys):
    tmp, first = experiments
    resumed = json.loads((tmp / "resumed" / "out" / "results.json").read_text())
    straight = json.loads((tmp / "straight" / "out" / "results.json").read_text())
    assert resumed["runs"]["0"] == first["runs"]["0"]                    # kept, not re-run
    assert resumed["sources"] == first["sources"]
    assert _top1s(resumed, 0) == _top1s(straight, 0)
    assert _top1s(resumed, 1) == _top1s(straight, 1)
    for source, scores in straight["selection"]["1"]["scores"].items():
        assert resumed["selection"]["1"]["scores"][source] == pytest.approx(scores)


def test_summary_of_a_score_undefined_for_one_source(experiments, tmp_path):
    """A score that select left null for a collapsed source (UndefinedScoreError) is shown as "-" in the summary,
    and its seed-mean ranking is not judged; the other scores' rows are as before."""
    tmp, _ = experiments
    results = json.loads((tmp / "straight" / "out" / "results.json").read_text())
    before = summarise_text(tmp / "straight" / "out")
    first = next(iter(SOURCES))
    results["selection"]["1"]["scores"][first]["rsa"] = None
    results["selection"]["1"]["judgement"]["rsa"] = {"spearman": None, "trials_to_best": None, "best_of_top_3": None}
    results["selection"]["1"]["undefined"] = {first: {"rsa": "features: the RDM is constant"}}
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.json").write_text(json.dumps(results))
    assert main(["--out", str(tmp_path / "out"), "--summarise", "--seeds", "0", "1", *TINY]) == 0
    after = (tmp_path / "out" / "summary.md").read_text()
    rsa_rows = [line for line in after.splitlines() if line.startswith("| rsa |")]
    assert len(rsa_rows) == 2 and "n/a" in rsa_rows[0] and rsa_rows[1] == f"| rsa | n/a | n/a | undefined for {first} |"
    a_row = next(line for line in after.splitlines() if line.startswith(f"| {first} | ") and line.count("|") > 5)
    assert a_row.split(" | ")[list(results["selection"]["0"]["judgement"]).index("rsa") + 1] == "-"
    assert f"undefined for a source (null, not judged): seed 1, {first}: rsa (features: the RDM is constant)." in after
    for score in ("lfc", "logme", "leep"):
        assert [x for x in before.splitlines() if x.startswith(f"| {score} |")] == \
            [x for x in after.splitlines() if x.startswith(f"| {score} |")]


def summarise_text(out):
    assert main(["--out", str(out), "--summarise", "--seeds", "0", "1", *TINY]) == 0
    return (out / "summary.md").read_text()


def test_resume_refuses_other_settings_and_replaced_sources(experiments, tmp_path, capsys):
    tmp, _ = experiments
    base = ["--out", str(tmp / "resumed" / "out"), "--work", str(tmp / "resumed" / "work"), "--seeds", "0", "1"]
    assert main([*base, *TINY[:-2], "--shots", "4", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--shots" in err[0] and "without --resume" in err[0]
    ckpt = tmp / "resumed" / "work" / "sources" / "A_0-3" / "run" / "model.pt"
    saved = ckpt.read_bytes()
    try:
        ckpt.write_bytes(saved[: len(saved) // 2])
        assert main([*base, *TINY, "--resume"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "A_0-3" in err[0] and "not the checkpoint results.json records" in err[0]
    finally:
        ckpt.write_bytes(saved)


@pytest.mark.parametrize("args, message", [
    (["--shots", "500"], "--shots 500: the target pool has"),
    (["--iters", "0"], "--iters 0"),
    (["--crop-scale", "0.9", "0.5"], "--crop-scale"),
    (["--summarise"], "no "),
])
def test_bad_input_is_one_line_before_any_work(tmp_path, capsys, args, message):
    argv = ["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work"), *TINY, *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "work").exists() and not (tmp_path / "out" / "results.json").exists()


def test_module_and_script_commands_parse(tmp_path):
    """``python -m`` and the script eval/vision.md records both reach the CLI (a bad seed is argparse's error)."""
    for cmd in (["-m", "rlzoo_transfer.vision.experiment"], ["scripts/vision_experiment.py"]):
        done = subprocess.run([sys.executable, *cmd, "--seeds", "-1", "--out", str(tmp_path)], capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 2 and "invalid seed -1" in done.stderr and "Traceback" not in done.stderr


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
    """SIGINT in one of the experiment's fine-tuning runs stops that run (classify's RunIncomplete) and the
    experiment with one line, not a traceback."""
    import signal

    from rlzoo_transfer.vision import classification

    real = classification.objective

    def ctrl_c(*args, **kwargs):
        signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(classification, "objective", ctrl_c)
    assert _run(tmp_path, "stopped", "--seeds", "0") == 130
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "SIGINT: stopping at the next iteration to write a checkpoint (Ctrl-C again to stop at once)", "",
        f"stopped: the finished seeds stay in {tmp_path / 'stopped' / 'out'}; continue with the same command and "
        "--resume"], err
