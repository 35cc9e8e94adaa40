"""Pre-registered confirmatory tests (rlzoo_transfer.confirm) on run folders in train's format."""
from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import yaml
from scipy import stats

from rlzoo_transfer import confirm, curves, scores
from rlzoo_transfer.provenance import PROJECT_ROOT, file_in_commit
from rlzoo_transfer.rundata import load_runs

HYPER = {"learning_rate": 0.0001, "n_steps": 20, "compile": False}


def make_run(root, game, method, seed, final_mean=None, started="2026-01-01 00:00:00", hyper=None, steps=100000,
             last_step=10000):
    """A run folder as train writes it: config.yml (hyperparams, started), evaluations.csv, final.json."""
    d = root / game / method / f"seed{seed}"
    d.mkdir(parents=True)
    config = dict(game=game, method=method, source=None, seed=seed, steps=steps, eval_freq=10000, eval_episodes=10,
                  final_eval_episodes=100, n_envs=1, hyperparams=dict(hyper or HYPER), commit="abc", command="test",
                  started=started)
    (d / "config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    (d / "evaluations.csv").write_text(f"step,mean,std,n_episodes,returns\n{last_step},1.0,0.0,1,1.0\n")
    if final_mean is not None:
        (d / "final.json").write_text(json.dumps(dict(game=game, method=method, seed=seed, steps=steps,
                                                      mean=final_mean, std=1.0, n_episodes=1, returns=[final_mean])))
    return d


HUB, SCRATCH = [450.0, 500.0, 400.0], [300.0, 250.0, 320.0]


@pytest.fixture
def explore(tmp_path):
    """Exploratory Jamesbond runs: hub 3 seeds, scratch 3 seeds, zoo 2 seeds (all complete)."""
    root = tmp_path / "eval_runs"
    for s, v in enumerate(HUB):
        make_run(root, "Jamesbond", "hub", s, v)
    for s, v in enumerate(SCRATCH):
        make_run(root, "Jamesbond", "scratch", s, v)
    for s, v in enumerate([200.0, 260.0]):
        make_run(root, "Jamesbond", "zoo", s, v)
    return root


def test_one_sided_power_and_welch_hand_values():
    d = scores.detectable_difference(1.0, 8, alternative="greater")
    assert scores.t_test_power(d, 8, alternative="greater") == pytest.approx(0.8, abs=1e-6)
    assert d < scores.detectable_difference(1.0, 8)            # one tail is easier to reach than two
    # one-sided power at large n: normal approximation z_{0.95} + z_{0.8} = 2.486
    assert scores.detectable_difference(1.0, 1000, alternative="greater") == pytest.approx(
        2.486 * np.sqrt(2 / 1000), rel=0.01)
    x, y = [3.0, 4.0, 6.0], [1.0, 2.0, 2.5]
    two = scores.welch_difference(x, y)
    assert scores.welch_difference(x, y, alternative="greater")["p"] == pytest.approx(two["p"] / 2)
    assert scores.welch_difference(y, x, alternative="greater")["p"] == pytest.approx(1 - two["p"] / 2)
    assert scores.welch_difference([1.0, 1.0], [0.0, 0.0], alternative="greater")["p"] == 0.0
    assert scores.welch_difference([0.0, 0.0], [1.0, 1.0], alternative="greater")["p"] == 1.0
    with pytest.raises(ValueError, match="alternative"):
        scores.welch_difference(x, y, alternative="less")


def test_welch_one_sided_bound_is_scipys_and_agrees_with_the_test():
    """The confirmatory report's bound: scipy's one-sided Welch interval, > 0 exactly when p < alpha."""
    from scipy import stats
    rng = np.random.default_rng(3)
    for shift in (0.0, 0.8, 1.5, 3.0):
        x, y = rng.normal(shift, 1.0, 8), rng.normal(0.0, 2.0, 8)
        for conf in (0.95, 0.9):
            r = scores.welch_difference(x, y, confidence=conf, alternative="greater")
            ref = stats.ttest_ind(x, y, equal_var=False, alternative="greater")
            assert r["bound"] == pytest.approx(ref.confidence_interval(conf).low, rel=1e-9)
            assert (r["bound"] > 0) == (r["p"] < 1 - conf)


def test_register_records_protocol_and_planning(explore, tmp_path):
    reg = confirm.register("jamesbond", "hub", "scratch", [100, 101, 102, 103], "greater", 0.05, [explore],
                           [tmp_path / "runs"])
    assert (reg.game, reg.method, reg.baseline, reg.seeds) == ("Jamesbond", "hub", "scratch", [100, 101, 102, 103])
    assert reg.protocol["hub"]["hyperparams"] == {"learning_rate": 0.0001, "n_steps": 20}   # compile is not protocol
    assert reg.protocol["scratch"]["steps"] == 100000
    plan = reg.planning
    assert plan["exploratory"]["diff"] == pytest.approx(np.mean(HUB) - np.mean(SCRATCH), abs=0.01)
    sq = sum(((np.array(v) - np.mean(v)) ** 2).sum() for v in (HUB, SCRATCH, [200.0, 260.0]))
    sd = np.sqrt(sq / (2 + 2 + 1))                   # pooled over every method of the game
    assert plan["pooled_std"] == pytest.approx(sd, abs=0.01) and plan["pooled_std_dof"] == 5
    assert plan["detectable_at_80_percent_power"] == pytest.approx(
        scores.detectable_difference(sd, 4, alternative="greater"), abs=0.1)
    assert "--seeds 100 101 102 103" in reg.command and "--methods hub scratch" in reg.command

    out = tmp_path / "confirm" / "reg.yml"
    confirm.write_registration(reg, out)
    assert confirm.load_registration(out) == reg
    with pytest.raises(confirm.ConfirmError, match="fixed once written"):
        confirm.write_registration(reg, out)


def test_register_refuses_used_seeds_disagreeing_runs_and_unknown_methods(explore, tmp_path):
    log_dir = tmp_path / "runs"
    make_run(log_dir, "Jamesbond", "scratch", 101)                     # started, not finished: not fresh
    with pytest.raises(confirm.ConfirmError, match="seed 101 of scratch on Jamesbond has already been run"):
        confirm.register("Jamesbond", "hub", "scratch", [100, 101], "greater", 0.05, [explore], [log_dir])
    with pytest.raises(confirm.ConfirmError, match="seed 2 of hub"):
        confirm.register("Jamesbond", "hub", "scratch", [2, 50], "greater", 0.05, [explore])
    with pytest.raises(confirm.ConfirmError, match="did you mean 'hub'"):
        confirm.register("Jamesbond", "hubb", "scratch", [100, 102], "greater", 0.05, [explore])
    with pytest.raises(confirm.ConfirmError, match="no runs of game"):
        confirm.register("Alien", "hub", "scratch", [100, 102], "greater", 0.05, [explore])
    make_run(explore, "Jamesbond", "hub", 9, 420.0, hyper={**HYPER, "n_steps": 3})
    with pytest.raises(confirm.ConfirmError, match="runs of 'hub' disagree.*n_steps: 20 -> 3"):
        confirm.register("Jamesbond", "hub", "scratch", [100, 102], "greater", 0.05, [explore])


def test_evaluate_pending_then_complete_with_deviations(explore, tmp_path):
    reg = confirm.register("Jamesbond", "hub", "scratch", [100, 101], "greater", 0.05, [explore])
    reg.registered = "2026-06-01 12:00:00"
    live = tmp_path / "runs"
    make_run(live, "Jamesbond", "hub", 100, 500.0, started="2026-06-01 12:05:00")
    make_run(live, "Jamesbond", "scratch", 100, started="2026-06-01 12:05:00", last_step=40000)   # incomplete
    ev = confirm.evaluate(reg, load_runs([live]))
    assert not ev["complete"] and ev["result"] is None
    states = {(c.arm, c.seed): c.state for c in ev["cells"]}
    assert states == {("hub", 100): "500.0", ("hub", 101): "not started",
                      ("scratch", 100): "incomplete (evaluated to step 40000)", ("scratch", 101): "not started"}
    text = "\n".join(confirm.section_lines(reg, tmp_path / "reg.yml", load_runs([live])))
    assert "1 of 4 registered runs complete" in text and "pending" in text and "p =" not in text

    (live / "Jamesbond" / "scratch" / "seed100" / "final.json").write_text(json.dumps(dict(mean=300.0, returns=[])))
    make_run(live, "Jamesbond", "hub", 101, 420.0, started="2026-06-01 12:06:00")
    make_run(live, "Jamesbond", "scratch", 101, 340.0, started="2026-06-01 12:06:00")
    ev = confirm.evaluate(reg, load_runs([live]))
    t = stats.ttest_ind([500.0, 420.0], [300.0, 340.0], equal_var=False, alternative="greater")
    assert ev["complete"] and ev["result"]["p"] == pytest.approx(t.pvalue)
    assert ev["result"]["rejected"] == (t.pvalue < 0.05)
    assert not any(c.deviations for c in ev["cells"])

    # a run made with other settings, or before the registration, is a deviation named in the report
    cfg = live / "Jamesbond" / "hub" / "seed101" / "config.yml"
    data = yaml.safe_load(cfg.read_text())
    data["hyperparams"]["learning_rate"] = 0.001
    data["started"] = "2026-06-01 11:00:00"
    cfg.write_text(yaml.safe_dump(data))
    text = "\n".join(confirm.section_lines(reg, tmp_path / "reg.yml", load_runs([live])))
    assert "before the registration" in text and "learning_rate: 0.0001 -> 0.001" in text
    assert "(with deviations)" in text and "p = " in text


def test_load_registration_errors(explore, tmp_path):
    reg = confirm.register("Jamesbond", "hub", "scratch", [100, 101], "greater", 0.05, [explore])
    out = tmp_path / "reg.yml"
    confirm.write_registration(reg, out)
    data = yaml.safe_load(out.read_text())
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump({**{k: v for k, v in data.items() if k != "alpha"}, "alpah": 0.05}))
    with pytest.raises(confirm.ConfirmError, match="unknown key 'alpah' \\(did you mean 'alpha'\\?\\)"):
        confirm.load_registration(bad)
    bad.write_text(yaml.safe_dump({**data, "alpha": 5}))
    with pytest.raises(confirm.ConfirmError, match="alpha must be"):
        confirm.load_registration(bad)
    bad.write_text(yaml.safe_dump({**data, "seeds": [100]}))
    with pytest.raises(confirm.ConfirmError, match="seeds"):
        confirm.load_registration(bad)
    unquoted = out.read_text().replace(f"registered: '{reg.registered}'", f"registered: {reg.registered}")
    bad.write_text(unquoted)
    assert unquoted != out.read_text() and confirm.load_registration(bad).registered == reg.registered
    bad.write_text("game: [unclosed")
    with pytest.raises(confirm.ConfirmError, match=r"not valid YAML \(line 1: expected ',' or ']'") as e:
        confirm.load_registration(bad)
    assert "\n" not in str(e.value)   # one line, not PyYAML's quote of the text


def test_cli_register_check_and_curves(explore, tmp_path, capsys):
    out = tmp_path / "confirm" / "Jamesbond-hub.yml"
    argv = ["register", "--game", "Jamesbond", "--method", "hub", "--seeds", "100", "101", "--alternative",
            "greater", "--runs", str(explore), "--log-dir", str(tmp_path / "runs"), "--out", str(out)]
    assert confirm.main(argv) == 0 and out.is_file()
    assert confirm.main(argv) == 2 and "fixed once written" in capsys.readouterr().err
    assert confirm.main(["check", str(out), "--runs", str(explore)]) == 0
    assert "0 of 4 registered runs complete" in capsys.readouterr().out
    assert confirm.main(["check", str(tmp_path / "missing.yml")]) == 2
    assert "cannot read" in capsys.readouterr().err

    report_dir = tmp_path / "eval"
    assert curves.main([str(explore), "--out", str(report_dir), "--reps", "50", "--confirm", str(out)]) == 0
    report = (report_dir / "report.md").read_text()
    assert "## Confirmatory tests (pre-registered)" in report and "### Jamesbond: `hub` vs `scratch`" in report

    bad = tmp_path / "bad.yml"
    bad.write_text("game: Jamesbond\n")
    other = tmp_path / "eval2"
    assert curves.main([str(explore), "--out", str(other), "--confirm", str(bad)]) == 2
    assert "missing" in capsys.readouterr().err and not other.exists()     # nothing written


def test_summary_line_and_readme(explore, tmp_path):
    reg = confirm.register("Jamesbond", "hub", "scratch", [100, 101], "greater", 0.05, [explore])
    reg.registered = "2026-06-01 12:00:00"
    path = tmp_path / "reg.yml"
    confirm.write_registration(reg, path)
    live = tmp_path / "runs"
    make_run(live, "Jamesbond", "hub", 100, 500.0, started="2026-06-01 13:00:00")
    line = confirm.summary_line(reg, path, load_runs([live]))
    assert "`hub` > `scratch` on Jamesbond, fresh seeds 100-101: 1 of 4 runs complete, test pending." in line
    for arm, seed, v in (("hub", 101, 520.0), ("scratch", 100, 300.0), ("scratch", 101, 310.0)):
        make_run(live, "Jamesbond", arm, seed, v, started="2026-06-01 13:00:00")
    p = stats.ttest_ind([500.0, 520.0], [300.0, 310.0], equal_var=False, alternative="greater").pvalue
    line = confirm.summary_line(reg, path, load_runs([live]))
    assert f"4 of 4 runs complete; +205.0, Welch greater p = {p:.4f}: **confirmed**." in line

    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results-table:start -->\nold\n<!-- results-table:end -->\nrest\n")
    assert curves.main([str(explore), str(live), "--out", str(tmp_path / "eval"), "--reps", "50",
                        "--readme", str(readme), "--confirm", str(path)]) == 0
    text = readme.read_text()
    assert "**confirmed**" in text and text.startswith("intro\n") and text.endswith("rest\n")


def _git(*args):
    done = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else ""


def test_a_run_made_before_the_registration_was_committed_is_a_deviation(explore, tmp_path):
    """Against this repository's own history: the commit that added eval/confirm/Jamesbond-hub.yml has it, its
    parent does not."""
    path = PROJECT_ROOT / "eval" / "confirm" / "Jamesbond-hub.yml"
    added = _git("log", "--diff-filter=A", "--format=%H", "--", "eval/confirm/Jamesbond-hub.yml").split("\n")[-1]
    parent = _git("rev-parse", f"{added}^") if added else ""
    if not parent:
        pytest.skip("no git history here (shallow clone or a copy without .git)")
    assert file_in_commit(added, path) is True and file_in_commit(parent + "-dirty", path) is False
    assert file_in_commit("0" * 40, path) is None and file_in_commit(added, tmp_path / "x.yml") is None

    reg = confirm.load_registration(path)
    live = tmp_path / "runs"
    d = make_run(live, "Jamesbond", "hub", reg.seeds[0], 400.0, started="2099-01-01 00:00:00",
                 hyper=reg.protocol["hub"]["hyperparams"])
    cfg = yaml.safe_load((d / "config.yml").read_text())
    for commit, expect in ((parent, True), (added, False)):
        cfg["commit"] = commit
        (d / "config.yml").write_text(yaml.safe_dump(cfg))
        cell = next(c for c in confirm.evaluate(reg, load_runs([live]), path)["cells"] if c.run is not None)
        assert any("does not contain" in dev for dev in cell.deviations) == expect
    # started at a commit with the registration, resumed at one without it: a deviation all the same
    cfg["resumes"] = [{"step": 60000, "commit": parent, "command": "resumed"}]
    (d / "config.yml").write_text(yaml.safe_dump(cfg))
    cell = next(c for c in confirm.evaluate(reg, load_runs([live]), path)["cells"] if c.run is not None)
    assert [dev for dev in cell.deviations if "does not contain" in dev] == [
        f"made at commit {parent[:12]}, which does not contain {path}"]


def test_register_warns_when_the_exploratory_runs_point_the_other_way(explore, tmp_path, capsys):
    out = tmp_path / "zoo.yml"
    assert confirm.main(["register", "--game", "Jamesbond", "--method", "zoo", "--seeds", "100", "101",
                         "--alternative", "greater", "--runs", str(explore), "--log-dir", "--out", str(out)]) == 0
    assert "point the other way (zoo - scratch = -60.0)" in capsys.readouterr().err and out.is_file()


def test_section_gives_power_against_smaller_differences(explore, tmp_path):
    reg = confirm.register("Jamesbond", "hub", "scratch", [100, 101, 102], "greater", 0.05, [explore])
    text = "\n".join(confirm.section_lines(reg, tmp_path / "reg.yml", []))
    diff, sd = reg.planning["exploratory"]["diff"], reg.planning["pooled_std"]
    for f in confirm.SHRUNK:
        power = scores.t_test_power(f * diff / sd, 3, 0.05, "greater")
        assert f"{f * diff:+.0f} ({f:.0%} of it): {power:.2f}" in text
    assert scores.t_test_power(0.5 * diff / sd, 3, 0.05, "greater") < reg.planning["power_at_exploratory_diff"]


def test_curves_keeps_registered_runs_out_of_the_exploratory_tables(explore, tmp_path):
    reg = confirm.register("Jamesbond", "hub", "scratch", [100, 101], "greater", 0.05, [explore])
    path = tmp_path / "reg.yml"
    confirm.write_registration(reg, path)
    live = tmp_path / "live"
    make_run(live, "Jamesbond", "hub", 100, 9999.0, started="2099-01-01 00:00:00")
    make_run(live, "Jamesbond", "zoo", 100, 7777.0)              # not an arm of the registration: exploratory
    out = tmp_path / "eval"
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results-table:start -->\n<!-- results-table:end -->\n")
    assert curves.main([str(explore), str(live), "--out", str(out), "--reps", "50", "--confirm", str(path),
                        "--readme", str(readme)]) == 0
    report = (out / "report.md").read_text()
    tables, section = report.split("## Confirmatory tests")
    assert "9999" not in tables and "9999" not in (out / "curves.csv").read_text()
    assert "| 100 | 9999.0 | not started |" in section and "and 1 of pre-registered tests" in tables
    assert "9999" in (out / "runs.csv").read_text()                  # every run folder is listed there
    text = readme.read_text()
    assert "9999" not in text and "1 of 4 runs complete, test pending" in text
    rows = {}                                                        # first table: final scores
    for line in text.split("\n"):
        if line.startswith("| `"):
            rows.setdefault(line.split(" | ")[0], line)
    assert "(3)" in rows["| `hub`"]                                  # the exploratory seeds only
    assert "(3)" in rows["| `zoo`"]                                  # zoo seed 100 is an ordinary run: 2 + 1
