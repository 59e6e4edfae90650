"""The progress line's time to go: whichever budget ends the search first, at this process's own pace."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.console import Console
from search.recorder import Recorder
from search.state import VERSION, SearchState


def _recorder(tmp_path: Path, max_total_epochs: int | None, trained: int = 0) -> Recorder:
    budget = {"num_samples": 200, "max_total_epochs": max_total_epochs}
    state = SearchState("s", {"budget": budget}, "http://x", "1", "p", version=VERSION)
    state.trials["t0"] = {"epoch": trained}
    return Recorder(state, tmp_path)


def _spend(recorder: Recorder, trial_id: str, epochs: int) -> None:
    for epoch in range(1, epochs + 1):
        recorder.reported(trial_id, {"epoch": epoch, "val_loss": 1.0, "best_val_loss": 1.0})


def test_an_epoch_budget_ends_the_estimate_before_the_samples_do(tmp_path: Path) -> None:
    recorder = _recorder(tmp_path, 100)
    console = Console(num_samples=200, recorder=recorder)
    _spend(recorder, "t1", 20)
    recorder.state.trials["t0"]["end_state"] = "pruned"
    # by trials: 100 s per trial, 199 to go; by epochs: 5 s per epoch, 80 to go
    assert console.time_to_go(100.0, done=1, epochs=20) == pytest.approx(400.0)
    assert "20/100 epochs of the budget" in console.progress([], 100.0)


def test_without_a_budget_only_trials_count_and_nothing_done_means_no_estimate(tmp_path: Path) -> None:
    console = Console(num_samples=10, recorder=_recorder(tmp_path, None))
    assert console.time_to_go(60.0, done=0, epochs=0) is None
    assert console.time_to_go(60.0, done=2, epochs=0) == pytest.approx(240.0)
    assert "epochs of the budget" not in console.progress([], 60.0)


def test_a_resumed_search_measures_its_pace_from_its_own_start(tmp_path: Path) -> None:
    recorder = _recorder(tmp_path, 100, trained=50)  # trained before the stop, as the record has it
    resumed = Console(num_samples=200, recorder=recorder)
    assert resumed.time_to_go(30.0, done=0, epochs=50) is None  # nothing new yet: no pace to go by
    _spend(recorder, "t2", 10)
    assert resumed.time_to_go(30.0, done=0, epochs=60) == pytest.approx(30.0 / 10 * 40)
