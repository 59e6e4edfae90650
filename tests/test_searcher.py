"""The searcher Ray Tune asks: what it tells Optuna of each trial, and what a resumed one rebuilds."""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from search.recorder import Recorder
from search.searcher import StudySearcher
from search.state import VERSION, SearchState
from vae.records import END_STATE

SPACE = {"hidden": CategoricalDistribution([64, 128])}


def _recorder(folder: Path) -> Recorder:
    config = {"budget": {"num_samples": 10}}
    return Recorder(SearchState("s", config, "http://x", "1", "p", version=VERSION), folder)


def _searcher(folder: Path, study: optuna.Study | None = None) -> StudySearcher:
    study = study or optuna.create_study(storage=f"sqlite:///{folder / 'optuna.db'}", study_name="s")
    return StudySearcher(study, SPACE, _recorder(folder), lambda n: optuna.samplers.RandomSampler(seed=n))


def _epoch(epoch: int, loss: float, **extra: object) -> dict:
    return {"epoch": epoch, "val_loss": loss, "best_val_loss": loss, "training_iteration": epoch, **extra}


def test_a_trial_that_ends_by_itself_reports_its_last_epoch_once_and_completes(tmp_path: Path) -> None:
    searcher = _searcher(tmp_path)
    assert searcher.suggest("t1") is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Optuna warns when a step is reported twice
        searcher.on_trial_result("t1", _epoch(1, 120.0))
        searcher.on_trial_result("t1", _epoch(2, 110.0))
        searcher.on_trial_complete("t1", _epoch(2, 110.0, **{END_STATE: "early_stopped"}))
    (trial,) = searcher.study.trials
    assert trial.state == TrialState.COMPLETE and trial.value == 110.0
    assert trial.intermediate_values == {1: 120.0, 2: 110.0}
    assert searcher.recorder.state.trials["t1"]["end_state"] == "early_stopped"  # the record first


def test_a_trial_the_scheduler_stopped_is_pruned_with_the_epoch_ray_withheld(tmp_path: Path) -> None:
    searcher = _searcher(tmp_path)
    searcher.suggest("t1")
    searcher.on_trial_result("t1", _epoch(1, 150.0))
    searcher.recorder.stopped("t1", "pruned", "stopped by ASHA after epoch 2")
    searcher.on_trial_complete("t1", _epoch(2, 140.0))  # the stop's result, not seen before
    (trial,) = searcher.study.trials
    assert trial.state == TrialState.PRUNED and trial.value == 140.0  # its last value
    assert trial.intermediate_values == {1: 150.0, 2: 140.0}


def test_a_failed_or_killed_trial_fails_and_one_without_a_word_is_killed(tmp_path: Path) -> None:
    searcher = _searcher(tmp_path)
    for trial_id in ("t1", "t2"):
        searcher.suggest(trial_id)
    searcher.on_trial_complete("t1", error=True)
    searcher.on_trial_complete("t2", _epoch(1, 150.0))  # stopped by nobody the record knows of
    assert [t.state for t in searcher.study.trials] == [TrialState.FAIL, TrialState.FAIL]
    assert searcher.recorder.state.trials["t2"]["end_state"] == "killed"


def test_a_resumed_searcher_reports_on_to_the_trials_it_asked_and_proposes_as_one_that_ran_through(
    tmp_path: Path,
) -> None:
    first = _searcher(tmp_path)
    first.suggest("t1")
    first.on_trial_result("t1", _epoch(1, 150.0))
    first.recorder.save()
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    recorder = Recorder(SearchState.load(tmp_path), tmp_path)
    again = StudySearcher(study, SPACE, recorder, lambda n: optuna.samplers.RandomSampler(seed=n))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again.on_trial_result("t1", _epoch(1, 150.0))  # the epoch again, from the checkpoint before: once
        again.on_trial_result("t1", _epoch(2, 140.0))
    again.on_trial_complete("t1", _epoch(2, 140.0, **{END_STATE: "completed"}))
    assert study.trials[0].intermediate_values == {1: 150.0, 2: 140.0} and study.trials[0].value == 140.0
    (tmp_path / "through").mkdir()
    through = _searcher(tmp_path / "through")
    proposals = [through.suggest(f"u{i}") for i in range(3)]
    assert [again.suggest(f"v{i}") for i in range(1, 3)] == proposals[1:]


def test_a_replay_ends_as_its_twin_did_and_stays_out_of_ashas_rungs(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from search.schedulers import Asha

    searcher = _searcher(tmp_path)
    asha = Asha(searcher.recorder, max_epochs=4, grace_period=1, reduction_factor=2)
    asha.rungs["1"].update(a=100.0, b=101.0)  # a trial at 150 after epoch 1 would be stopped here
    searcher.suggest("normal")
    searcher.suggest("replay")
    normal, replay = SimpleNamespace(trial_id="normal"), SimpleNamespace(trial_id="replay")
    assert asha.on_trial_result(None, normal, _epoch(1, 150.0)) == TrialScheduler.STOP
    twin = {"duplicate_of": "run-of-the-twin"}
    for epoch in (1, 2):  # its twin trained two epochs, then was pruned
        result = _epoch(epoch, 150.0 - epoch, **twin)
        assert asha.on_trial_result(None, replay, result) == TrialScheduler.CONTINUE
        searcher.on_trial_result("replay", result)
    last = _epoch(2, 148.0, **twin, end_state="pruned", end_reason="duplicate of run-of-the-twin: stopped by ASHA")
    asha.on_trial_complete(None, replay, last)
    searcher.on_trial_complete("replay", last)
    assert all("replay" not in rung for rung in asha.rungs.values()) and "normal" in asha.rungs["1"]
    told = {t.user_attrs["ray_trial_id"]: t for t in searcher.study.trials}["replay"]
    assert told.state == TrialState.PRUNED and told.value == 148.0  # as its twin: pruned, with its last value
    assert searcher.recorder.state.trials["replay"]["replay"] is True  # free: not counted in the epoch budget
