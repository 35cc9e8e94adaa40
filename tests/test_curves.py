"""Tests of rlzoo_transfer.scores and rlzoo_transfer.curves on small hand-made run folders."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from scipy import stats

from rlzoo_transfer import aggregate, curves, plots, report, rundata, scores

# ----------------------------------------------------------------------------------------------- helpers


def make_run(root, game, method, seed, evals, final_mean=None, steps=20000, gates=None, pathway=None, flow=None):
    """Write a run folder in train's format: config.yml, evaluations.csv, final.json when ``final_mean``."""
    d = root / game / method / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "config.yml").write_text(
        f"game: {game}\nmethod: {method}\nseed: {seed}\nsteps: {steps}\nhyperparams: {{}}\n"
        f"versions: {{}}\ncommit: abc123\ncommand: test\n")
    lines = ["step,mean,std,n_episodes,returns"]
    lines += [f"{step},{mean},0.0,2,{mean} {mean}" for step, mean in evals]
    (d / "evaluations.csv").write_text("\n".join(lines) + "\n")
    if final_mean is not None:
        (d / "final.json").write_text(json.dumps(dict(game=game, method=method, seed=seed, steps=steps,
                                                      mean=final_mean, std=1.0, n_episodes=2,
                                                      returns=[final_mean, final_mean])))
    if gates:
        rows = ["step,layer,source,gate"] + [",".join(map(str, r)) for r in gates]
        (d / "gates.csv").write_text("\n".join(rows) + "\n")
    if pathway:
        rows = ["step,model,weight"] + [",".join(map(str, r)) for r in pathway]
        (d / "pathway.csv").write_text("\n".join(rows) + "\n")
    if flow:
        rows = ["step,point,model,weight"] + [",".join(map(str, r)) for r in flow]
        (d / "flow.csv").write_text("\n".join(rows) + "\n")
    return d


@pytest.fixture
def runs_root(tmp_path):
    """Alien: scratch 2 complete + 1 incomplete, zoo 2 complete (gates), hub 1 complete (pathway);
    Jamesbond: scratch 1 and zoo 1 complete."""
    root = tmp_path / "runs"
    make_run(root, "Alien", "scratch", 0, [(10000, 100.0), (20000, 300.0)], final_mean=100.0)
    make_run(root, "Alien", "scratch", 1, [(10000, 200.0), (20000, 500.0)], final_mean=300.0)
    make_run(root, "Alien", "scratch", 2, [(10000, 9999.0)])  # interrupted: never averaged
    gates = [(10000, "torso.0", "Seaquest", 0.4), (10000, "torso.0", "Riverraid", 0.6),
             (20000, "torso.0", "Seaquest", 0.3), (20000, "torso.0", "Riverraid", 0.7)]
    make_run(root, "Alien", "zoo", 0, [(10000, 300.0), (20000, 600.0)], final_mean=400.0, gates=gates)
    make_run(root, "Alien", "zoo", 1, [(10000, 500.0), (20000, 800.0)], final_mean=600.0, gates=gates)
    make_run(root, "Alien", "hub", 0, [(10000, 50.0), (20000, 60.0)], final_mean=70.0,
             pathway=[(10000, "Seaquest", 0.5), (10000, "Riverraid", 0.5), (20000, "Seaquest", 0.8),
                      (20000, "Riverraid", 0.2)])
    make_run(root, "Jamesbond", "scratch", 0, [(10000, 29.0), (20000, 30.0)], final_mean=29.0)
    make_run(root, "Jamesbond", "zoo", 0, [(10000, 100.0), (20000, 302.8)], final_mean=302.8)
    return root


# ------------------------------------------------------------------------------------------------ scores


def test_canonical_game_spellings():
    assert scores.canonical_game("JamesBond") == "Jamesbond"
    assert scores.canonical_game("jamesbond") == "Jamesbond"
    assert scores.canonical_game("ALE/Jamesbond-v5") == "Jamesbond"
    assert scores.canonical_game("RiverraidNoFrameskip-v4") == "Riverraid"
    with pytest.raises(KeyError):
        scores.canonical_game("Pong")
    assert scores.maybe_canonical_game("Pong") == "Pong"


def test_reference_scores_from_reference_md():
    assert scores.GAMES["Alien"].random == 227.8 and scores.GAMES["Alien"].human == 7127.7
    assert scores.GAMES["Gopher"].published["DER"] == 349.5
    assert scores.GAMES["Jamesbond"].published["SPR"] == 366.5
    assert scores.GAMES["Seaquest"].human == 42054.7
    assert "DER" not in scores.GAMES["Riverraid"].published


def test_human_normalized():
    assert scores.human_normalized(227.8, "Alien") == pytest.approx(0.0)
    assert scores.human_normalized(7127.7, "Alien") == pytest.approx(1.0)
    assert scores.human_normalized(165.9, "JamesBond") == pytest.approx(0.5)  # (165.9-29)/(302.8-29)
    np.testing.assert_allclose(scores.human_normalized([29.0, 302.8], "Jamesbond"), [0.0, 1.0])


def test_mean_std():
    assert scores.mean_std([100.0, 300.0]) == pytest.approx((200.0, 141.42135623730951, 2))
    assert scores.mean_std([5.0]) == (5.0, 0.0, 1)


def test_iqm_hand_values():
    assert scores.iqm(np.arange(1, 9)) == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert scores.iqm([[1, 2, 3, 4], [5, 6, 7, 100]]) == pytest.approx(4.5)  # flattened: 3..6
    np.testing.assert_allclose(scores.iqm([[1, 2, 3, 4], [10, 20, 30, 40]], axis=1), [2.5, 25.0])


def test_bootstrap_ci_contains_point_and_is_seeded():
    rng = np.random.default_rng(1)
    groups = [rng.normal(g, 1.0, size=5) for g in range(3)]
    point, low, high = scores.stratified_bootstrap_ci(groups, reps=500, seed=3)
    assert point == pytest.approx(scores.iqm(np.concatenate(groups)))
    assert low <= point <= high and low < high
    assert scores.stratified_bootstrap_ci(groups, reps=500, seed=3) == (point, low, high)


def test_weighted_iqm_hand_values():
    # equal weights, n divisible by 4: scipy's trim_mean
    assert scores.weighted_iqm(np.arange(1, 9), np.ones(8)) == pytest.approx(4.5)
    # n = 3, equal weights: each value holds 1/3; the middle half takes 1/12 of 1, all of 2, 1/12 of 3 -> 2
    assert scores.weighted_iqm([3.0, 1.0, 2.0], [1, 1, 1]) == pytest.approx(2.0)
    # n = 5, masses of .2: the middle half takes .15 of 2, all of 3, .15 of 4 (and nothing of 1 or 100)
    assert scores.weighted_iqm([1, 2, 100, 4, 3], np.ones(5)) == pytest.approx((0.15 * 2 + 0.2 * 3 + 0.15 * 4) / 0.5)
    assert scores.weighted_iqm([1, 2, 3, 4, 8], np.ones(5)) == pytest.approx((0.15 * 2 + 0.2 * 3 + 0.15 * 4) / 0.5)
    # weights move the quartiles: [0, 10] with weights 3:1 -> the middle half [.25, .75] lies inside 0's mass
    assert scores.weighted_iqm([10.0, 0.0], [1, 3]) == pytest.approx(0.0)
    # along an axis, one weight vector for every row
    np.testing.assert_allclose(scores.weighted_iqm([[1, 2, 3, 4], [40, 30, 20, 10]], [1, 1, 1, 1], axis=1), [2.5, 25])


def test_aggregate_statistics_balance_games():
    np.testing.assert_allclose(scores.game_weights([2, 1]), [0.25, 0.25, 0.5])
    # equal seeds per game: the pooled mean, and rliable's pooled trim_mean when 4 divides the number of runs
    x = np.array([[1, 2, 3, 4, 5, 6, 7, 90.0]])
    iqm_stat, mean_stat = scores.aggregate_statistics([4, 4])
    assert iqm_stat(x)[0] == pytest.approx(scores.iqm(x)) and mean_stat(x)[0] == pytest.approx(x.mean())
    # 9 runs: 3 and 7 count 3/4 each, 4, 5, 6 whole -> (.75 * 3 + 4 + 5 + 6 + .75 * 7) / 9 / .5 = 5
    iqm_stat, _ = scores.aggregate_statistics([3, 3, 3])
    assert iqm_stat(np.array([[1, 2, 3, 4, 5, 6, 7, 8, 90.0]]))[0] == pytest.approx(5.0)
    # 3 seeds of game A at 0, one of game B at 1: pooled, A's seeds outvote B (IQM 0, mean 0.25); balanced, the
    # games count the same: mean 0.5, and the middle half [.25, .75] is half A's mass, half B's -> IQM 0.5
    iqm_stat, mean_stat = scores.aggregate_statistics([3, 1])
    x = np.array([[0.0, 0.0, 0.0, 1.0]])
    assert scores.iqm(x, axis=1)[0] == pytest.approx(0.0)
    assert iqm_stat(x)[0] == pytest.approx(0.5) and mean_stat(x)[0] == pytest.approx(0.5)


def test_bootstrap_ci_degenerate_and_stratified():
    assert scores.stratified_bootstrap_ci([[0.7] * 5, [0.7] * 3], reps=200) == pytest.approx((0.7, 0.7, 0.7))
    # one run per game: resampling *within* games cannot change anything (a pooled bootstrap would)
    point, low, high = scores.stratified_bootstrap_ci([[1.0], [2.0], [3.0], [4.0]], reps=200)
    assert point == low == high == pytest.approx(2.5)


def test_bootstrap_mean_statistic():
    point, low, high = scores.stratified_bootstrap_ci([[0.0, 1.0]], statistic=lambda x: x.mean(axis=1), reps=2000)
    assert point == 0.5 and low == 0.0 and high == 1.0


def test_probability_of_improvement_hand_cases():
    # game 1: pairs (1,1) tie, (1,3) lose, (2,1) win, (2,3) lose -> 1.5 / 4; game 2: 5 > 4 -> 1
    assert scores.probability_of_improvement([[1, 2], [5]], [[1, 3], [4]]) == pytest.approx((0.375 + 1) / 2)
    assert scores.probability_of_improvement([[3, 3]], [[3]]) == 0.5
    assert scores.probability_of_improvement([[0, 0]], [[1, 2]]) == 0.0


def test_probability_of_improvement_ci():
    assert scores.probability_of_improvement_ci([[5, 6, 7]], [[1, 2]], reps=300) == (1.0, 1.0, 1.0)
    rng = np.random.default_rng(0)
    x, y = [rng.normal(1, 1, 10), rng.normal(0, 1, 10)], [rng.normal(0, 1, 10), rng.normal(0, 1, 10)]
    point, low, high = scores.probability_of_improvement_ci(x, y, reps=500, seed=1)
    assert 0.0 <= low <= point <= high <= 1.0 and low < high
    with pytest.raises(ValueError):
        scores.probability_of_improvement([[1.0]], [[1.0], [2.0]])


# -------------------------------------------------------------------------------------------- aggregation


def test_load_runs_and_completeness(runs_root):
    runs = rundata.load_runs([runs_root])
    assert len(runs) == 8
    partial = [r for r in runs if not r.complete]
    assert [(r.game, r.method, r.seed, r.last_step, r.planned_steps) for r in partial] == \
        [("Alien", "scratch", 2, 10000, 20000)]
    zoo = next(r for r in runs if r.method == "zoo" and r.game == "Alien")
    assert zoo.evaluations[0].returns == [300.0, 300.0] and len(zoo.gates) == 4


def test_load_runs_keeps_the_copy_further_along(tmp_path):
    """A published incomplete copy must not hide the finished run, whichever root comes first."""
    published, live = tmp_path / "eval_runs", tmp_path / "runs"
    make_run(published, "Jamesbond", "scratch", 102, [(10000, 100.0)])
    make_run(live, "Jamesbond", "scratch", 102, [(10000, 100.0), (20000, 350.0)], final_mean=350.0)
    make_run(published, "Jamesbond", "scratch", 103, [(10000, 80.0)])
    make_run(live, "Jamesbond", "scratch", 103, [(10000, 80.0), (20000, 90.0)])  # further, still incomplete
    make_run(published, "Jamesbond", "scratch", 104, [(10000, 70.0)], final_mean=70.0)
    make_run(live, "Jamesbond", "scratch", 104, [(10000, 70.0)], final_mean=70.0)  # equal: first listed wins
    for roots in ([published, live], [live, published]):
        with pytest.warns(UserWarning, match="duplicate"):
            runs = {r.seed: r for r in rundata.load_runs(roots)}
        assert len(runs) == 3
        assert runs[102].complete and runs[102].final_mean == 350.0 and runs[102].path.parent.parent.parent == live
        assert runs[103].last_step == 20000 and runs[103].path.parent.parent.parent == live
        assert runs[104].path.parent.parent.parent == roots[0]


def test_aggregate_curves_hand_values(runs_root):
    rows = aggregate.aggregate_curves(rundata.load_runs([runs_root]))
    scratch = [r for r in rows if (r["game"], r["method"]) == ("Alien", "scratch")]
    assert [r["step"] for r in scratch] == [10000, 20000]
    assert scratch[0]["mean"] == pytest.approx(150.0) and scratch[0]["std"] == pytest.approx(70.710678)
    assert scratch[1]["mean"] == pytest.approx(400.0) and scratch[1]["std"] == pytest.approx(141.421356)
    assert all(r["n_seeds"] == 2 for r in scratch)  # the incomplete seed 2 is not averaged in


def test_final_scores_and_aggregates(runs_root):
    finals = aggregate.final_scores(rundata.load_runs([runs_root]))
    assert finals[("Alien", "scratch")] == [100.0, 300.0]
    agg = aggregate.aggregate_hns(finals, "zoo", reps=300)
    # zoo HNS: Alien a1 = (400-227.8)/6899.9, a2 = (600-227.8)/6899.9 (2 seeds), Jamesbond 1.0 (1 seed): the games
    # count the same, so the Alien runs weigh 1/4 each and the Jamesbond run 1/2: sorted a1 [0, .25], a2 [.25, .5],
    # 1.0 [.5, 1]; the middle half [.25, .75] holds a2 (.25) and 1.0 (.25) -> IQM = (.25 a2 + .25) / .5
    a1, a2 = (400 - 227.8) / 6899.9, (600 - 227.8) / 6899.9
    assert agg["iqm"][0] == pytest.approx((0.25 * a2 + 0.25) / 0.5)
    assert agg["mean"][0] == pytest.approx(((a1 + a2) / 2 + 1.0) / 2)      # mean over games of the game means
    assert agg["n_runs"] == 3 and agg["n_games"] == 2 and agg["seeds"] == [2, 1]
    assert agg["iqm"][1] <= agg["iqm"][0] <= agg["iqm"][2]
    # rliable's pooled IQM: trim_mean(x, 0.25) of the 3 runs as they are trims int(0.75) = 0 runs a side -> the mean
    assert agg["iqm_pooled"][0] == pytest.approx((a1 + a2 + 1.0) / 3)
    assert agg["iqm_pooled"][1] <= agg["iqm_pooled"][0] <= agg["iqm_pooled"][2]
    alien = aggregate.aggregate_hns(finals, "zoo", reps=300, games=["Alien"])   # restricted to one game
    assert alien["n_games"] == 1 and alien["n_runs"] == 2
    assert alien["mean"][0] == pytest.approx(((400 - 227.8) + (600 - 227.8)) / 2 / 6899.9)
    # hub completed Alien only: the report's comparable table is over Alien, and says so
    text = "\n".join(report.report_aggregate_section(finals, ["scratch", "zoo", "hub"], "scratch", 300, 0))
    assert "Over the games every method below completed (Alien)" in text and "not comparable" in text
    poi = aggregate.improvement_over(finals, "zoo", "scratch", reps=300)
    # Alien: zoo {400, 600} vs scratch {100, 300}: all 4 pairs won; Jamesbond 302.8 > 29 -> 1
    assert poi["poi"] == (1.0, 1.0, 1.0) and poi["games"] == ["Alien", "Jamesbond"]
    hub = aggregate.improvement_over(finals, "hub", "scratch", reps=300)
    assert hub["poi"][0] == pytest.approx(0.0) and hub["games"] == ["Alien"]  # 70 < 100 and 70 < 300


# ----------------------------------------------------------------------------------------------------- CLI


def test_transfer_measures_hand_values(runs_root):
    rows = {(r["game"], r["method"]): r for r in aggregate.transfer_measures(rundata.load_runs([runs_root]))}
    scratch, zoo, hub = rows[("Alien", "scratch")], rows[("Alien", "zoo")], rows[("Alien", "hub")]
    # scratch: complete seeds 0, 1 (seed 2 is incomplete); first evaluations 100, 200; curves (100, 300) and
    # (200, 500) over 10k..20k -> average returns 200 and 350
    assert scratch["n"] == 2 and scratch["start_step"] == 10000
    assert scratch["start"] == pytest.approx(150.0) and scratch["area"] == pytest.approx(275.0)
    assert scratch["d_start"] == 0 and scratch["final"] == pytest.approx(200.0)
    # zoo: starts 300, 500; averages 450, 650; finals 400, 600
    assert zoo["start"] == pytest.approx(400.0) and zoo["d_start"] == pytest.approx(250.0)
    assert zoo["area"] == pytest.approx(550.0) and zoo["d_area"] == pytest.approx(275.0)
    assert zoo["d_final"] == pytest.approx(300.0)
    assert hub["d_start"] == pytest.approx(-100.0) and hub["d_area"] == pytest.approx(55.0 - 275.0)
    assert rows[("Jamesbond", "zoo")]["d_area"] == pytest.approx((100 + 302.8) / 2 - 29.5)
    assert zoo["areas"] == pytest.approx([450.0, 650.0]) and zoo["base_areas"] == pytest.approx([200.0, 350.0])


def test_transfer_measures_need_matching_steps(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "Alien", "scratch", 0, [(0, 10.0), (10000, 30.0)], final_mean=30.0)
    make_run(root, "Alien", "zoo", 0, [(5000, 50.0), (10000, 70.0)], final_mean=70.0)
    make_run(root, "Alien", "hub", 0, [(0, 10.0), (10000, 10.0)], final_mean=10.0)
    make_run(root, "Gopher", "zoo", 0, [(0, 1.0), (10000, 2.0)], final_mean=2.0)
    rows = {(r["game"], r["method"]): r for r in aggregate.transfer_measures(rundata.load_runs([root]))}
    assert rows[("Alien", "zoo")]["d_start"] is None and rows[("Alien", "zoo")]["d_area"] is None
    assert rows[("Alien", "zoo")]["d_final"] == pytest.approx(40.0)
    assert rows[("Alien", "hub")]["d_area"] == pytest.approx(10.0 - 20.0)
    assert rows[("Gopher", "zoo")]["d_final"] is None   # no scratch run on Gopher


def test_cli_writes_plots_csv_report(runs_root, tmp_path):
    out = tmp_path / "eval"
    assert curves.main([str(runs_root), "--out", str(out), "--reps", "200"]) == 0
    for name in ("curves_Alien.png", "curves_Jamesbond.png", "curves_all.png", "gates_Alien_zoo.png",
                 "pathway_Alien_hub.png"):
        assert (out / name).stat().st_size > 1000, name
    assert not (out / "gates_Alien_scratch.png").exists()

    with open(out / "curves.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["game", "method", "step", "mean", "std", "n_seeds"]
    row = next(r for r in rows if (r["game"], r["method"], r["step"]) == ("Alien", "scratch", "20000"))
    assert float(row["mean"]) == 400.0 and float(row["std"]) == pytest.approx(141.421356) and row["n_seeds"] == "2"

    with open(out / "runs.csv") as fh:
        run_rows = list(csv.DictReader(fh))
    assert len(run_rows) == 8 and sum(r["complete"] == "0" for r in run_rows) == 1
    done = [r for r in run_rows if r["complete"] == "1"]
    assert all(float(r["final_median"]) == float(r["final_mean"]) and r["final_distinct"] == "1" for r in done)
    assert all(r["final_median"] == r["final_distinct"] == "" for r in run_rows if r["complete"] == "0")
    assert {r["commit"] for r in run_rows} == {"abc123"}

    report = (out / "report.md").read_text()
    assert "## Final scores" in report and "## Human-normalised scores" in report
    assert "Commit: abc123. Per-run numbers and commits: `runs.csv`" in report
    assert "200.0 ± 141.4 (n=2)" in report  # Alien scratch: finals 100, 300
    assert "500.0 ± 141.4 (n=2)" in report  # Alien zoo: 400, 600
    assert "| DER (published) | 739.9 | 301.6 |" in report
    assert "| SPR (published) | 841.9 | 366.5 |" in report
    assert "IQM HNS [95% CI]" in report and "P(method > scratch)" in report
    assert "| zoo | 1.000 (a side with 1 seed: no CI) | Alien, Jamesbond |" in report  # Jamesbond: 1 vs 1
    aggregate = report.split("## Aggregate")[1].split("## Evaluation curves")[0]
    hub_rows = [line for line in aggregate.splitlines() if line.startswith("| hub |")]
    assert hub_rows and all("no CI" in line for line in hub_rows[:-1])  # aggregate rows: one Alien seed
    zoo_rows = [line for line in aggregate.splitlines() if line.startswith("| zoo |")]
    # zoo: 2 Alien seeds and 1 Jamesbond seed -> balanced point, no CI, the seeds per game shown
    assert any("(a game with 1 seed: no CI)" in line and line.endswith("| 2 | 3 | 2 / 1 |") for line in zoo_rows)
    assert "0.000 (a side with 1 seed: no CI)" in hub_rows[-1]           # P(hub > scratch): 1 hub seed
    assert "![Alien](curves_Alien.png)" in report and "(gates_Alien_zoo.png)" in report
    assert "(pathway_Alien_hub.png)" in report
    assert "## Seeds needed" in report and "| Alien | 141.4 (2) |" in report   # the CLI's report has the section
    assert "| Alien | zoo | 2 | 400.0 (+250.0) | 550.0 (+275.0) | 1.00 [1.00, 1.00] | 500.0 (+300.0) |" in report
    # Jamesbond: one zoo seed against one scratch seed -> the point only
    assert "| Jamesbond | zoo | 1 | 100.0 (+71.0) | 201.4 (+171.9) | 1.00 | 302.8 (+273.8) |" in report
    incomplete = report.split("## Incomplete runs")[1]
    assert "| Alien | scratch | 2 | 10000 | 20000 |" in incomplete
    assert "9999" not in report.split("## Incomplete runs")[0]


def test_probability_of_improvement_ci_needs_two_seeds_a_side(runs_root, tmp_path):
    seeds = [runs_root / "Alien" / m / f"seed{k}" for m in ("scratch", "zoo") for k in (0, 1)]
    assert curves.main([*map(str, seeds), "--out", str(tmp_path / "o"), "--reps", "200"]) == 0
    text = (tmp_path / "o" / "report.md").read_text()
    assert "| zoo | 1.000 [1.000, 1.000] | Alien |" in text   # 2 vs 2 seeds: the interval is shown
    assert not report._poi_has_ci([[1.0, 2.0]], [[3.0]]) and report._poi_has_ci([[1.0, 2.0]], [[3.0, 4.0]])


def test_seeds_keeps_only_those_run_folders(runs_root, tmp_path, capsys):
    """--seeds 0: Alien's seed-1 and seed-2 folders are left out of every output; the same files as giving the
    seed-0 folders one by one."""
    assert curves.main([str(runs_root), "--out", str(tmp_path / "s0"), "--reps", "50", "--seeds", "0"]) == 0
    seed0 = [d for d in sorted(runs_root.glob("*/*/seed0"))]
    assert curves.main([*map(str, seed0), "--out", str(tmp_path / "by_hand"), "--reps", "50"]) == 0
    for name in ("runs.csv", "curves.csv"):
        assert (tmp_path / "s0" / name).read_text() == (tmp_path / "by_hand" / name).read_text()
    assert f"curves {runs_root} --out {tmp_path / 's0'} --seeds 0`" in (tmp_path / "s0" / "report.md").read_text()
    runs_csv = (tmp_path / "s0" / "runs.csv").read_text()
    assert "seed1" not in runs_csv and "seed2" not in runs_csv and runs_csv.count("seed0") == 5
    capsys.readouterr()
    assert curves.main([str(runs_root), "--out", str(tmp_path / "none"), "--seeds", "7"]) == 1
    assert "no run folder of seed(s) 7" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_runs_made_differently_are_flagged_not_silently_averaged(tmp_path, capsys):
    """Two zoo seeds of 20k steps and one of 300 (or with another gate_norm) are one method to curves: it says so on
    stderr and under report.md's header; scratch's runs, which differ only in a key one of them lacks, are not
    flagged."""
    root = tmp_path / "runs"
    make_run(root, "Alien", "zoo", 0, [(10000, 300.0)], final_mean=400.0)
    make_run(root, "Alien", "zoo", 1, [(10000, 320.0)], final_mean=420.0)
    odd = make_run(root, "Alien", "zoo", 2, [(150, 200.0)], final_mean=250.0, steps=300)
    for seed in (0, 1):
        make_run(root, "Alien", "scratch", seed, [(10000, 310.0)], final_mean=410.0)
    config = odd / "config.yml"
    config.write_text(config.read_text().replace("hyperparams: {}", "hyperparams: {gate_norm: softmax, lr: 1}"))
    scratch = root / "Alien" / "scratch" / "seed1" / "config.yml"
    scratch.write_text(scratch.read_text().replace("hyperparams: {}", "hyperparams: {generator: torso}"))
    differ = rundata.protocol_differences(rundata.load_runs([root]))
    assert differ == ["Alien/zoo: its 3 runs differ in steps: 20000, 300"]
    assert curves.main([str(root), "--out", str(tmp_path / "o"), "--reps", "50"]) == 0
    err = capsys.readouterr().err
    assert "warning: Alien/zoo: its 3 runs differ in steps: 20000, 300" in err and "scratch" not in err
    report = (tmp_path / "o" / "report.md").read_text()
    assert "runs made differently are averaged" in report and "- Alien/zoo: its 3 runs differ in steps" in report
    for seed in (0, 1):                                   # the same hyperparameter in every zoo config, one value
        c = root / "Alien" / "zoo" / f"seed{seed}" / "config.yml"
        c.write_text(c.read_text().replace("steps: 20000", "steps: 300").replace("hyperparams: {}",
                                                                               "hyperparams: {gate_norm: sum}"))
    assert rundata.protocol_differences(rundata.load_runs([root])) == ["Alien/zoo: its 3 runs differ in gate_norm: "
                                                                       "softmax, sum"]
    assert curves.main([str(root), "--out", str(tmp_path / "o2"), "--reps", "50"]) == 0
    assert "differ in gate_norm" in (tmp_path / "o2" / "report.md").read_text()
    assert curves.main([str(root / "Alien" / "scratch"), "--out", str(tmp_path / "o3"), "--reps", "50"]) == 0
    assert "Warning" not in (tmp_path / "o3" / "report.md").read_text()
    scratch.write_text(scratch.read_text().replace("hyperparams: {generator: torso}", "hyperparams: [1, 2]"))
    (root / "Alien" / "scratch" / "seed0" / "config.yml").write_text(
        (root / "Alien" / "scratch" / "seed0" / "config.yml").read_text() + "n_envs: 4\n")
    assert not [line for line in rundata.protocol_differences(rundata.load_runs([root])) if "scratch" in line]


def test_a_pinned_setting_recorded_the_old_way_is_no_difference(tmp_path):
    """zoo-lite runs made before config.yml recorded its pin say ``mode: adaptive`` (the agents/ default), later ones
    ``mode: lite``: both were built lite, so they are one protocol; two zoo runs with those modes are not."""
    root = tmp_path / "runs"
    for method in ("zoo-lite", "zoo"):
        for seed, mode in ((0, "adaptive"), (1, "lite")):
            config = make_run(root, "Alien", method, seed, [(10000, 300.0)], final_mean=400.0) / "config.yml"
            config.write_text(config.read_text().replace("hyperparams: {}", f"hyperparams: {{mode: {mode}}}"))
    assert rundata.protocol_differences(rundata.load_runs([root])) == ["Alien/zoo: its 2 runs differ in mode: "
                                                                       "adaptive, lite"]


def test_cli_no_incomplete(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "Gopher", "scratch", 0, [(10000, 300.0)], final_mean=257.6)
    assert curves.main([str(root / "Gopher" / "scratch" / "seed0"), "--out", str(tmp_path / "o"),
                        "--reps", "50", "--band", "ci"]) == 0
    report = (tmp_path / "o" / "report.md").read_text()
    assert "None: every run folder has its `final.json`." in report
    assert "| scratch | 0.000 |" in report  # HNS of the random score


def test_cli_errors(tmp_path, capsys):
    assert curves.main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert curves.main([str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 1
    assert "no run folders" in capsys.readouterr().err
    bad = make_run(tmp_path / "runs", "Alien", "scratch", 0, [(10000, 1.0)])
    (bad / "final.json").write_text("{not json")
    assert curves.main([str(tmp_path / "runs"), "--out", str(tmp_path / "o")]) == 2
    assert "final.json" in capsys.readouterr().err
    (bad / "final.json").unlink()
    (bad / "config.yml").write_text("game: [unclosed\n")
    assert curves.main([str(tmp_path / "runs"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.yml: not valid YAML (line 2: expected ',' or ']'" in err, err


def test_a_baseline_that_is_not_among_the_runs_is_refused_before_any_file(runs_root, tmp_path, capsys):
    out = tmp_path / "o"
    assert curves.main([str(runs_root), "--out", str(out), "--baseline", "scratchh"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --baseline 'scratchh'") and "Did you mean 'scratch'?" in err
    assert not out.exists()   # before, a report was written with no comparison in it
    only_zoo = [runs_root / "Alien" / "zoo" / f"seed{k}" for k in (0, 1)]
    assert curves.main([*map(str, only_zoo), "--out", str(out), "--reps", "50"]) == 0   # default: no scratch is fine
    assert "No method shares a completed game with `scratch`." in (out / "report.md").read_text()


def test_gate_plots_average_complete_runs_only(tmp_path, monkeypatch):
    """An unfinished run's first steps must not enter the gate mean of the finished ones."""
    root = tmp_path / "runs"
    done = [(10000, "conv1", "Seaquest", 0.2), (20000, "conv1", "Seaquest", 0.2)]
    make_run(root, "Alien", "zoo", 0, [(10000, 1.0), (20000, 2.0)], final_mean=2.0, gates=done)
    make_run(root, "Alien", "zoo", 1, [(10000, 1.0)], gates=[(10000, "conv1", "Seaquest", 0.8)])   # unfinished
    plotted = {}
    monkeypatch.setattr(plots, "plot_stat", lambda series, title, ylabel, path: plotted.update(
        series=series, title=title))
    written = plots.plot_diagnostics(rundata.load_runs([root]), tmp_path)
    assert written == [("gates", "Alien", "zoo", "gates_Alien_zoo.png", 1)]
    assert "mean of 1 complete run)" in plotted["title"]
    (steps, values), = plotted["series"].values()
    assert list(steps) == [10000, 20000] and list(values) == pytest.approx([0.2, 0.2])


def test_flow_weights_are_read_and_plotted(tmp_path):
    root = tmp_path / "runs"
    flow = [(0, "conv1", m, 1 / 3) for m in ("student", "Seaquest", "Riverraid")]
    flow += [(10000, "conv1", "student", 0.9), (10000, "conv1", "Seaquest", 0.05), (10000, "conv1", "Riverraid", 0.05)]
    make_run(root, "Jamesbond", "kflow", 0, [(0, 1.0), (10000, 2.0)], final_mean=2.0, steps=10000, flow=flow)
    run, = rundata.load_runs([root])
    assert run.flow[-3:] == [(10000, "conv1", "student", 0.9), (10000, "conv1", "Seaquest", 0.05),
                             (10000, "conv1", "Riverraid", 0.05)]
    written = plots.plot_diagnostics([run], tmp_path)
    assert written == [("flow", "Jamesbond", "kflow", "flow_Jamesbond_kflow.png", 1)]
    assert (tmp_path / "flow_Jamesbond_kflow.png").stat().st_size > 0


def test_reference_rows_pair_each_algorithm_with_its_cells():
    rows = report.reference_rows(["Alien", "Riverraid", "NoSuchGame"], lambda v, g: f"{g}:{v:.1f}")
    assert [algo for algo, _ in rows] == list(scores.REFERENCE_ALGORITHMS)
    der = dict(rows)["DER"]
    assert der == ["Alien:739.9", "-", "-"]   # Riverraid has no published DER score, an unknown game none at all
    assert plots.published_label("DER") == "DER (published)"


# ------------------------------------------------------------------------------------------------ seeds needed


def test_pooled_std_by_hand():
    # squared deviations: [1, 3] -> 2, [4, 6, 8] -> 8; a single value adds nothing; dof = 1 + 2
    sd, dof = scores.pooled_std([[1.0, 3.0], [10.0], [4.0, 6.0, 8.0]])
    assert dof == 3 and sd == pytest.approx(np.sqrt(10 / 3))
    sd, dof = scores.pooled_std([[5.0], []])
    assert dof == 0 and np.isnan(sd)


@pytest.mark.parametrize("effect, n", [(1.0, 17), (0.8, 26), (0.5, 64)])
def test_detectable_difference_matches_cohens_table(effect, n):
    """Cohen (1988), two-sided 5 %, 80 % power: d = 1.0, 0.8, 0.5 need 17, 26, 64 per group - n detects d, n - 1
    does not."""
    assert scores.detectable_difference(1.0, n) <= effect < scores.detectable_difference(1.0, n - 1)
    assert scores.detectable_difference(100.0, n) == pytest.approx(100 * scores.detectable_difference(1.0, n))
    d = scores.detectable_difference(1.0, n)
    assert scores.t_test_power(d, n) == pytest.approx(0.8, abs=1e-6)


def test_detectable_difference_at_few_seeds():
    normal = 2.8016 * np.sqrt(2 / 3)   # (z_0.975 + z_0.8) sqrt(2/n): too optimistic at 3 seeds
    assert scores.detectable_difference(1.0, 3) > 1.3 * normal
    assert scores.detectable_difference(1.0, 1000) == pytest.approx(2.8016 * np.sqrt(2 / 1000), rel=0.01)
    with pytest.raises(ValueError, match="n >= 2"):
        scores.detectable_difference(1.0, 1)


def test_report_seeds_section(runs_root):
    finals = aggregate.final_scores(rundata.load_runs([runs_root]))
    lines = report.report_seeds_section(finals, ["Alien", "Jamesbond"], "scratch", ns=(3, 5))
    # Alien: scratch [100, 300] and zoo [400, 600] each 20000 of squared deviation, hub one seed: sd = sqrt(20000)
    sd = np.sqrt(20000)
    cells = [f"{scores.detectable_difference(sd, n):.0f} ({100 * scores.detectable_difference(sd, n) / 200:.0f} %)"
             for n in (3, 5)]
    assert f"| Alien | {sd:.1f} (2) | {cells[0]} | {cells[1]} |" in lines
    assert not any(line.startswith("| Jamesbond") for line in lines)   # one seed per method: no spread to pool
    assert report.report_seeds_section({("Alien", "hub"): [70.0]}, ["Alien"], "scratch") == []


def test_welch_difference_by_hand():
    # x = [1, 2, 3]: mean 2, s^2 1; y = [2, 4, 6]: mean 4, s^2 4; se^2 = 1/3 + 4/3 = 5/3
    # nu = (5/3)^2 / ((1/3)^2 / 2 + (4/3)^2 / 2) = 50/17
    w = scores.welch_difference([1, 2, 3], [2, 4, 6])
    assert w["diff"] == -2.0 and w["dof"] == pytest.approx(50 / 17) and (w["n_x"], w["n_y"]) == (3, 3)
    half = stats.t.ppf(0.975, 50 / 17) * np.sqrt(5 / 3)
    assert (w["low"], w["high"]) == pytest.approx((-2 - half, -2 + half))
    assert w["p"] == pytest.approx(stats.ttest_ind([1, 2, 3], [2, 4, 6], equal_var=False).pvalue)
    assert scores.welch_difference([5, 5], [3, 3]) == dict(diff=2.0, low=2.0, high=2.0, bound=2.0, p=0.0,
                                                           dof=pytest.approx(float("nan"), nan_ok=True), n_x=2, n_y=2)
    with pytest.raises(ValueError, match=">= 2 values"):
        scores.welch_difference([1.0], [1.0, 2.0])


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04, 0.2 -> x4, x3, x2, x1 = 0.04, 0.09, 0.08 -> 0.09 (monotone), 0.2
    assert scores.holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert scores.holm([0.5, 0.9]) == [1.0, 1.0] and scores.holm([]) == []


def test_report_difference_section(runs_root):
    finals = aggregate.final_scores(rundata.load_runs([runs_root]))
    lines = report.report_difference_section(finals, ["Alien", "Jamesbond"], ["scratch", "zoo", "hub"], "scratch")
    # Alien: zoo [400, 600] - scratch [100, 300] = +300, se = sqrt(20000/2 + 20000/2) = 141.4, nu = 2
    w = scores.welch_difference([400.0, 600.0], [100.0, 300.0])
    assert w["diff"] == 300.0 and w["dof"] == pytest.approx(2.0)
    row = f"| Alien | zoo | 2 / 2 | +300.0 [{w['low']:+.1f}, {w['high']:+.1f}] | {w['p']:.3f} | {w['p']:.3f} |"
    assert row in lines
    assert not any("| hub |" in line or line.startswith("| Jamesbond") for line in lines)   # one seed: no test
    assert report.report_difference_section({("Alien", "zoo"): [1.0, 2.0]}, ["Alien"], ["zoo"], "scratch") == []


def test_a_resumed_run_counts_every_commit_it_was_trained_at(runs_root, tmp_path):
    """A run stopped and resumed after a ``git pull`` was trained by two commits: runs.csv names the resume
    (``step@commit``) and the report's commit count includes it; a resume at the same commit adds none."""
    run = runs_root / "Alien" / "scratch" / "seed0"
    (run / "config.yml").write_text((run / "config.yml").read_text() + "resumes:\n"
                                    "- {step: 60623, commit: def456-dirty, command: test --resume}\n"
                                    "- {step: 80000, commit: abc123, command: test --resume}\n")
    assert rundata.load_run(run).commits == ["abc123", "def456-dirty"]
    out = tmp_path / "eval"
    assert curves.main([str(runs_root), "--out", str(out), "--reps", "50"]) == 0
    with open(out / "runs.csv") as fh:
        rows = {(r["game"], r["method"], r["seed"]): r for r in csv.DictReader(fh)}
    assert rows[("Alien", "scratch", "0")]["resumes"] == "60623@def456-dirty 80000@abc123"
    assert rows[("Alien", "scratch", "1")]["resumes"] == ""
    assert "2 commits (1 with uncommitted changes, `-dirty`)" in (out / "report.md").read_text()


def test_commits_summary():
    assert report.commits_summary([]) == "Commit: unknown"
    assert report.commits_summary(["a1"]) == "Commit: a1"
    assert report.commits_summary(["a1", "b2-dirty", "c3"]) == "3 commits (1 with uncommitted changes, `-dirty`)"
    assert report.commits_summary(["a1", "c3"]) == "2 commits"
