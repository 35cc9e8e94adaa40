"""Tests of rlzoo_transfer.results_table: the README's results table, from hand-made run folders."""
from __future__ import annotations

import pytest

from rlzoo_transfer import curves, report, results_table, rundata
from rlzoo_transfer.results_table import END, START, MarkerError, splice
from tests.test_curves import runs_root  # noqa: F401  (fixture)
from tests.test_curves import make_run


def _row(lines: list[str], name: str) -> list[str]:
    """Cells of the first table row whose first cell is ``name``."""
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0] == name:
            return cells[1:]
    raise AssertionError(f"no row {name!r}")


def test_table_hand_values(runs_root):  # noqa: F811
    lines = results_table.table_lines(rundata.load_runs([runs_root]), reps=200)
    area_start = next(i for i, line in enumerate(lines) if line.startswith("Mean return over training"))
    final, area = lines[:area_start], lines[area_start:]
    assert next(line for line in final if line.startswith("| method")) == "| method | Alien | Jamesbond | IQM HNS |"
    # HNS -0.0185 (w 1/4), 0.0105 (1/4), Jamesbond 0.0 (1/2): the middle half is all the 0.0
    assert _row(final, "`scratch`") == ["200.0 ± 141.4 (2)", "29.0 (1)", "0.000"]
    zoo = _row(final, "`zoo`")
    assert zoo[:2] == ["500.0 ± 141.4 (2)", "302.8 (1)"]
    # game-balanced IQM: Alien's two runs weigh 1/4 each, Jamesbond's one 1/2; HNS 0.0250, 0.0539, 1.0 ->
    # middle half = 0.0539 over [0.25, 0.5] and 1.0 over [0.5, 0.75] -> 0.527; a game with 1 seed: no CI
    assert zoo[2] == "0.527"
    assert _row(final, "`hub`") == ["70.0 (1)", "-", "-"]   # Alien only: no IQM beside the two-game ones
    # published rows: the score per game and their game-balanced IQM (two games, one score each: their mean)
    der_hns = ((739.9 - 227.8) / (7127.7 - 227.8) + (301.6 - 29.0) / (302.8 - 29.0)) / 2
    assert _row(final, "DER (published)") == ["739.9", "301.6", f"{der_hns:.3f}"]
    assert _row(final, "random") == ["227.8", "29.0", "0"]
    assert _row(area, "`scratch`") == ["275", "30"]        # (100+300)/2, (200+500)/2 -> 275; (29+30)/2
    assert _row(area, "`zoo`") == ["550 (+275)", "201 (+172)"]
    assert _row(area, "`hub`") == ["55 (-220)", "-"]
    assert lines[-1] == "7 complete runs; 1 incomplete (left out)."
    assert "9999" not in "\n".join(lines)   # the incomplete run's evaluation is never averaged


def test_splice_keeps_everything_outside_the_markers():
    text = f"# Title\n\nbefore\n{START}\nold table\n{END}\nafter\n"
    out = splice(text, ["| a |", "new"])
    assert out == f"# Title\n\nbefore\n{START}\n| a |\nnew\n{END}\nafter\n"
    assert splice(out, ["| a |", "new"]) == out   # idempotent
    quoted = f"prose quoting `{START}` and `{END}` inline\n" + out   # only whole marker lines count
    assert splice(quoted, ["| a |", "new"]) == quoted


@pytest.mark.parametrize("text", ["no markers here\n", f"{START}\nonly start\n", f"{END}\n{START}\n",
                                  f"{START}\n{END}\n{START}\n{END}\n"])
def test_splice_rejects_broken_markers(text):
    with pytest.raises(MarkerError, match="results-table:start"):
        splice(text, ["x"], "README.md")


def test_cli_updates_readme_in_place(runs_root, tmp_path, capsys):  # noqa: F811
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n\n{START}\nstale numbers\n{END}\n\noutro\n")
    assert curves.main([str(runs_root), "--out", str(tmp_path / "eval"), "--reps", "50", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(f"intro\n\n{START}\nFinal score") and text.endswith(f"{END}\n\noutro\n")
    assert "stale numbers" not in text and "| `zoo` | 500.0 ± 141.4 (2) | 302.8 (1) | 0.527 |" in text
    assert (tmp_path / "eval" / "report.md").is_file()


def test_cli_readme_without_markers_is_a_clear_error(runs_root, tmp_path, capsys):  # noqa: F811
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    rc = curves.main([str(runs_root), "--out", str(tmp_path / "eval"), "--reps", "50", "--readme", str(readme)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "results-table:start" in err and "Traceback" not in err
    assert readme.read_text() == "no markers\n"
    rc = curves.main([str(runs_root), "--out", str(tmp_path / "eval"), "--reps", "50",
                      "--readme", str(tmp_path / "missing.md")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    readme.write_bytes(f"{START}\n\xff\xfe\n{END}\n".encode("latin-1"))       # not UTF-8
    rc = curves.main([str(runs_root), "--out", str(tmp_path / "eval"), "--reps", "50", "--readme", str(readme)])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot be read as text" in err and "Traceback" not in err
    assert not (tmp_path / "eval").exists()            # checked right after parsing: no report was made first


def test_an_interval_over_a_game_with_two_seeds_is_marked_narrow(tmp_path):
    for seed, final in enumerate((300.0, 500.0)):
        make_run(tmp_path, "Alien", "zoo", seed, [(10000, final)], final_mean=final)
    cell = _row(results_table.table_lines(rundata.load_runs([tmp_path]), reps=200), "`zoo`")[-1]
    assert cell.endswith(f"] {report.NARROW_MARK}")                      # 2 seeds: CI shown, marked
    lines = results_table.table_lines(rundata.load_runs([tmp_path]), reps=200)
    assert report.NARROW_NOTE in lines and report.FEW_SEEDS_NOTE not in lines
    agg = "\n".join(report.report_aggregate_section(
        {("Alien", "zoo"): [300.0, 500.0]}, ["zoo"], "scratch", 200, 0))
    assert f"] {report.NARROW_MARK} |" in agg and report.NARROW_NOTE in agg
    make_run(tmp_path, "Alien", "zoo", 2, [(10000, 400.0)], final_mean=400.0)
    lines = results_table.table_lines(rundata.load_runs([tmp_path]), reps=200)
    assert _row(lines, "`zoo`")[-1].endswith("]") and report.NARROW_NOTE not in lines   # 3 seeds: no mark
    assert report.FEW_SEEDS_NOTE in lines
    def aggregate(n: int) -> str:
        return "\n".join(report.report_aggregate_section(
            {("Alien", "zoo"): [300.0 + 50 * k for k in range(n)]}, ["zoo"], "scratch", 200, 0))

    assert report.FEW_SEEDS_NOTE not in aggregate(2)                    # the 2-seed note says more
    assert report.FEW_SEEDS_NOTE in aggregate(3) and report.FEW_SEEDS_NOTE in aggregate(5)
    assert report.FEW_SEEDS_NOTE not in aggregate(6)
