"""A driver SIGKILLed leaves the stores disagreeing; the resume mends them from the record.

Each trial below is in one of the states a trial can be in when the driver dies,
written to a real MLflow server and a real Optuna study as the search writes them.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from search.reconcile import end_unfinished, mend_from_record
from search.recorder import Recorder
from search.state import VERSION, SearchState
from search.trial_runs import TrialTracker
from vae.records import END_REASON, END_STATE, TRIAL_ID

pytestmark = pytest.mark.slow


def test_a_resume_makes_mlflow_and_optuna_agree_with_the_record_for_every_state_a_trial_dies_in(
    mlflow_url: str, tmp_path: Path
) -> None:
    tracker = TrialTracker(mlflow_url)
    experiment = tracker.experiment_id(f"mend-{tmp_path.name}")
    parent = tracker.start_parent(experiment, "mend", {}, {})
    study = optuna.create_study(study_name="mend", storage=f"sqlite:///{tmp_path / 'optuna.db'}")
    state = SearchState("mend", {"budget": {"num_samples": 6}}, mlflow_url, experiment, parent, version=VERSION)
    recorder = Recorder(state, tmp_path)
    runs = {}
    for trial_id in ("ended", "told", "running", "unknown", "asked"):
        trial = study.ask()
        trial.suggest_categorical("hidden", [8, 16])
        trial.report(120.0, 1)
        trial.set_user_attr(TRIAL_ID, trial_id)
        if trial_id != "asked":  # asked by Optuna, then the driver died before the record was saved
            recorder.added(trial_id, trial.params, trial.number)
            recorder.reported(trial_id, {"epoch": 1, "val_loss": 120.0, "best_val_loss": 120.0})
            runs[trial_id] = tracker.child_run(experiment, parent, trial_id, trial_id, trial.params, {})
    # ended: in the record only (the driver died before telling Optuna and MLflow)
    recorder.stopped("ended", "pruned", "stopped by ASHA after epoch 1")
    recorder.ended("ended", None)
    # told: ended in the record, Optuna and MLflow alike
    recorder.ended("told", {END_STATE: "completed", END_REASON: "trained its epochs"})
    study.tell(recorder.state.trials["told"]["optuna"], 120.0)
    tracker.set_tags(runs["told"], {END_STATE: "completed", END_REASON: "trained its epochs"})
    recorder.state.scheduler["rungs"] = {"1": {"ended": 120.0, "unknown": 120.0}}

    # Ray's saved state lags: it knows every trial but "unknown", which started after Ray last saved
    mend_from_record(recorder, tracker, study, known={"ended", "told", "running"})

    client = MlflowClient(mlflow_url)
    tags = {t: client.get_run(r).data.tags for t, r in runs.items() if t != "unknown"}
    assert (tags["ended"][END_STATE], tags["ended"][END_REASON]) == ("pruned", "stopped by ASHA after epoch 1")
    assert client.get_run(runs["ended"]).info.status == "FINISHED"
    assert tags["told"][END_STATE] == "completed"
    assert END_STATE not in tags["running"]  # Ray resumes it from its checkpoint
    assert client.get_run(runs["unknown"]).info.lifecycle_stage == "deleted"
    states = {t.user_attrs[TRIAL_ID]: t.state for t in study.trials}
    assert states == {
        "ended": TrialState.PRUNED,
        "told": TrialState.COMPLETE,
        "running": TrialState.RUNNING,
        "unknown": TrialState.FAIL,
        "asked": TrialState.FAIL,
    }
    saved = SearchState.load(tmp_path)
    assert set(saved.trials) == {"ended", "told", "running"} and saved.scheduler["rungs"] == {"1": {"ended": 120.0}}

    # the resumed search is then cut short by a budget: the trial still running ends killed everywhere
    end_unfinished(recorder, tracker, study, experiment, parent)
    assert client.get_run(runs["running"]).data.tags[END_STATE] == "killed"
    assert study.trials[recorder.state.trials["running"]["optuna"]].state == TrialState.FAIL
    assert SearchState.load(tmp_path).trials["running"]["end_state"] == "killed"
