"""Statistics CSVs (gates.csv / pathway.csv) stay one row per (step, key) across resumes."""
import csv

import pytest
import torch

from rlzoo_transfer.rl.callbacks import append_stats, read_evaluations
from rlzoo_transfer.rl.der import DER
from rlzoo_transfer.run import RunIncomplete, RunSpec, finish_run, prepare_run, stop_incomplete

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


class StopAtStep:
    """A ``stop.StopRequest`` stand-in that a SIGTERM sets exactly when the run reaches ``step``."""

    signal, exit_status = "SIGTERM", 143

    def __init__(self, model, step):
        self.model, self.step = model, step

    def __bool__(self):
        return self.model.num_timesteps >= self.step


def test_a_stop_at_an_evaluation_step_evaluates_it_on_resume(tmp_path):
    """A stop ends its step before the step's evaluation: the resumed run evaluates that step first, so the curve
    keeps every point, and the update count is the uninterrupted run's."""
    torch.set_num_threads(1)
    tiny = {"learning_starts": 100, "buffer_size": 2000, "batch_size": 16, "n_steps": 5,
            "target_update_interval": 50}

    def spec(**kw):
        return RunSpec(game="Gopher", method="scratch", seed=0, steps=300, eval_freq=100, eval_episodes=1,
                       final_eval_episodes=1, log_dir=str(tmp_path), hyperparams=dict(tiny), progress_bar=False,
                       eval_at_start=False, **kw)

    def learn(run):
        run.model.learn(run.remaining, callback=run.callbacks, reset_num_timesteps=run.reset_num_timesteps)

    run = prepare_run(spec())
    run.callback.stop = StopAtStep(run.model, 200)
    learn(run)
    with pytest.raises(RunIncomplete, match="stopped by SIGTERM at step 200/300"):
        stop_incomplete(run)
    assert [r["step"] for r in read_evaluations(run.run_dir / "evaluations.csv")] == ["100"]
    run = prepare_run(spec(resume=True))
    learn(run)
    finish_run(run)
    assert [r["step"] for r in read_evaluations(run.run_dir / "evaluations.csv")] == ["100", "200", "300"]
    model = DER.load(run.run_dir / "model.zip", device="cpu")
    assert model.num_timesteps == 300 and model._n_updates == 300 - tiny["learning_starts"]
