"""The progress line's time to go: whichever budget ends the search first, at this process's own pace."""

from __future__ import annotations

import pickle

import pytest

from search.callbacks import SearchStopper
from search.console import Console


def _spend(stopper: SearchStopper, epochs: int) -> None:
    for epoch in range(1, epochs + 1):
        stopper("t1", {"epoch": epoch, "val_loss": 1.0, "best_val_loss": 1.0})


def test_an_epoch_budget_ends_the_estimate_before_the_samples_do() -> None:
    stopper = SearchStopper(first=3, max_total_epochs=100)
    console = Console(num_samples=200, stopper=stopper)
    _spend(stopper, 20)
    console.ends["t0"] = "pruned"
    # by trials: 100 s per trial, 199 to go; by epochs: 5 s per epoch, 80 to go
    assert console.time_to_go(100.0, done=1, epochs=20) == pytest.approx(400.0)
    assert "20/100 epochs of the budget" in console.progress([], 100.0)


def test_without_a_budget_only_trials_count_and_nothing_done_means_no_estimate() -> None:
    console = Console(num_samples=10, stopper=SearchStopper(first=3))
    assert console.time_to_go(60.0, done=0, epochs=0) is None
    assert console.time_to_go(60.0, done=2, epochs=0) == pytest.approx(240.0)
    assert "epochs of the budget" not in console.progress([], 60.0)


def test_a_resumed_search_measures_its_pace_from_its_own_start() -> None:
    stopper = SearchStopper(first=3, max_total_epochs=100)
    console = Console(num_samples=200, stopper=stopper)
    _spend(stopper, 50)  # trained before the stop
    resumed = pickle.loads(pickle.dumps(console))
    assert resumed.time_to_go(30.0, done=0, epochs=50) is None  # nothing new yet: no pace to go by
    for epoch in range(1, 11):
        resumed.stopper("t2", {"epoch": epoch, "val_loss": 1.0, "best_val_loss": 1.0})
    assert resumed.time_to_go(30.0, done=0, epochs=60) == pytest.approx(30.0 / 10 * 40)
