"""Make MLflow and Optuna agree with the search's record: before a resume, and at a search's end.

The record (`search.state`) is written first at every trial's end; a driver lost
mid-search can leave Optuna and MLflow behind it, and Ray's saved state behind
all three (Ray saves its trials every few seconds). These functions mend each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from search.recorder import Recorder
from search.searcher import OPTUNA_STATE, tell_promoted_end
from search.tracking import Tracker, run_status
from vae import checkpoint
from vae.records import END_REASON, END_STATE, TRIAL_ID, EndState


def mend_from_record(recorder: Recorder, tracker: Tracker, study: Any, known: set[str]) -> None:
    """Before a resume: trials Ray's saved state lacks are forgotten everywhere; ends the record has
    reach Optuna and MLflow (a resumed trial then reports its end at once instead of training on)."""
    points = recorder.state.config.get("points") or []
    for trial_id in set(recorder.state.trials) - known:
        config = recorder.state.trials[trial_id].get("config")
        if config in points:  # a fixed point Ray never saw starting: it waits in the study again
            study.enqueue_trial(config)
        recorder.forget(trial_id)
    recorder.save()
    trials = recorder.state.trials
    for run in tracker.children(recorder.state.experiment_id, recorder.state.parent_run_id):
        trial = trials.get(run.data.tags.get(TRIAL_ID, ""))
        if trial is None:
            tracker.delete_run(run.info.run_id, "trial unknown to the resumed search (started after its last save)")
        elif trial.get("end_state") and run.data.tags.get(END_STATE) != trial["end_state"]:
            tracker.set_tags(run.info.run_id, {END_STATE: trial["end_state"], END_REASON: trial["end_reason"]})
            tracker.finish(run.info.run_id, run_status(trial["end_state"]))
    tell_ends(recorder, study)


def tell_ends(recorder: Recorder, study: Any) -> None:
    """Tell Optuna each end (and pause) the record has and Optuna lacks; a trial the record lacks failed."""
    by_number = {t["optuna"]: (tid, t) for tid, t in recorder.state.trials.items() if "optuna" in t}
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        trial_id, trial = by_number.get(frozen.number, ("", {"end_state": EndState.FAILED}))
        if trial.get("paused"):  # paused at a rung: pruned there for Optuna, with the rung's value
            rung = trial["paused"]
            value = recorder.state.scheduler.get("rungs", {}).get(str(rung), {}).get(trial_id)
            if value is not None and rung not in frozen.intermediate_values:
                optuna.Trial(study, frozen._trial_id).report(value, rung)  # Optuna's handle from its storage id
            if not trial.get("end_state"):
                study.tell(frozen.number, state=TrialState.PRUNED, skip_if_finished=True)
        if not trial.get("end_state"):
            continue
        state, value = OPTUNA_STATE[trial["end_state"]], trial.get("loss")
        if state == TrialState.COMPLETE and value is not None:
            study.tell(frozen.number, value, skip_if_finished=True)
        else:  # pruned: with its last intermediate value; complete without a value: nothing to rank
            state = TrialState.FAIL if state == TrialState.COMPLETE else state
            study.tell(frozen.number, state=state, skip_if_finished=True)
    for trial_id, trial in recorder.state.trials.items():
        if trial.get("promoted") and trial.get("end_state"):
            tell_promoted_end(study, trial_id, trial, trial["end_state"])


def end_unfinished(recorder: Recorder, tracker: Tracker, study: Any, experiment_id: str, parent: str) -> None:
    """At a search's end: every trial without an end ends as the record says (stopped, else killed),
    in the record, in MLflow (tags and status) and in Optuna."""
    for trial_id, trial in recorder.state.trials.items():
        if not trial.get("end_state"):
            recorder.ended(trial_id, None)
    trials = recorder.state.trials
    for run in tracker.children(experiment_id, parent):
        if END_STATE in run.data.tags:
            continue
        trial = trials.get(run.data.tags.get(TRIAL_ID, ""), {})
        state = trial.get("end_state", EndState.KILLED)
        tracker.set_tags(run.info.run_id, {END_STATE: state, END_REASON: trial.get("end_reason", "")})
        tracker.finish(run.info.run_id, run_status(state))
    tell_ends(recorder, study)


def reconcile(tracker: Tracker, trials: list) -> None:
    """Send every epoch a trial's checkpoint holds that MLflow lacks (lost with a driver or a server)."""
    for trial in trials:
        run_id = (trial.last_result or {}).get("mlflow_run_id")
        if not run_id or trial.checkpoint is None:
            continue
        with trial.checkpoint.as_directory() as d:
            last = Path(d) / "last.pt"
            if not last.exists():
                continue
            history = checkpoint.load(last)["history"]
        sent = tracker.log_epochs(run_id, history)
        if sent:
            tracker.set_tags(run_id, {"reconciled_epochs": ",".join(map(str, sent))})
