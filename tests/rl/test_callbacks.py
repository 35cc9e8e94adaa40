"""Statistics CSVs (gates.csv / pathway.csv) stay one row per (step, key) across resumes."""
import csv

from rlzoo_transfer.rl.callbacks import append_stats

HEADER = ["step", "layer", "source", "gate"]


def rows_of(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_append_stats_writes_header_once_and_appends(tmp_path):
    path = tmp_path / "gates.csv"
    append_stats(path, HEADER, [[0, "conv1", "Seaquest", 0.5], [0, "conv1", "Riverraid", 0.5]])
    append_stats(path, HEADER, [[200, "conv1", "Seaquest", 0.7], [200, "conv1", "Riverraid", 0.3]])
    rows = rows_of(path)
    assert rows[0] == HEADER and rows.count(HEADER) == 1
    assert [r[0] for r in rows[1:]] == ["0", "0", "200", "200"]


def test_a_step_logged_again_replaces_its_rows_and_later_ones(tmp_path):
    """A run resumed from its step-200 checkpoint after logging step 400 logs 400 again: no duplicate rows."""
    path = tmp_path / "gates.csv"
    for step, g in ((0, 0.5), (200, 0.6), (400, 0.9)):
        append_stats(path, HEADER, [[step, "conv1", "Seaquest", g]])
    append_stats(path, HEADER, [[400, "conv1", "Seaquest", 0.8]])
    assert rows_of(path)[1:] == [["0", "conv1", "Seaquest", "0.5"], ["200", "conv1", "Seaquest", "0.6"],
                                 ["400", "conv1", "Seaquest", "0.8"]]
    # restarted from step 0 (no checkpoint was written): the old run's rows go
    append_stats(path, HEADER, [[0, "conv1", "Seaquest", 0.4]])
    assert rows_of(path)[1:] == [["0", "conv1", "Seaquest", "0.4"]]
