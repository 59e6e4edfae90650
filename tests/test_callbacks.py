"""The searcher Ray Tune drives: what it tells Optuna about each trial."""

from __future__ import annotations

import warnings

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from search.callbacks import PruningAwareOptunaSearch
from vae.records import END_STATE


def _searcher() -> PruningAwareOptunaSearch:
    return PruningAwareOptunaSearch(
        space={"hidden": CategoricalDistribution([64, 128])},
        metric="val_loss",
        mode="min",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )


def _epoch(epoch: int, loss: float, **extra: object) -> dict:
    return {"epoch": epoch, "val_loss": loss, "best_val_loss": loss, "training_iteration": epoch, **extra}


def test_a_trial_that_ends_by_itself_reports_its_last_epoch_once_and_completes() -> None:
    searcher = _searcher()
    assert searcher.suggest("t1") is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna warns when a step is reported twice
        searcher.on_trial_result("t1", _epoch(1, 120.0))
        searcher.on_trial_result("t1", _epoch(2, 110.0))
        searcher.on_trial_complete("t1", _epoch(2, 110.0, **{END_STATE: "early_stopped"}))
    (trial,) = searcher._ot_study.trials
    assert trial.state == TrialState.COMPLETE
    assert trial.value == 110.0
    assert trial.intermediate_values == {1: 120.0, 2: 110.0}


def test_a_trial_asha_stops_is_pruned_with_the_epoch_ray_withheld() -> None:
    searcher = _searcher()
    searcher.suggest("t1")
    searcher.on_trial_result("t1", _epoch(1, 150.0))
    searcher.on_trial_complete("t1", _epoch(2, 140.0))  # ASHA's stop: no end state, a result not seen before
    (trial,) = searcher._ot_study.trials
    assert trial.state == TrialState.PRUNED
    assert trial.intermediate_values == {1: 150.0, 2: 140.0}
