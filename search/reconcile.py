"""After a search (or before a resume): make MLflow and Optuna agree with what Ray knows.

A driver lost mid-search leaves runs without an end, Optuna trials RUNNING, and
epochs that reached a checkpoint but not MLflow; these functions mend each.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from search.tracking import Tracker
from vae import checkpoint
from vae.records import END_REASON, END_STATE, TRIAL_ID, EndState


def trial_id_of(result: Any) -> str | None:
    """A trial's id from its last result, else from its folder's name (a trial that never reported)."""
    if result.metrics and result.metrics.get("trial_id"):
        return result.metrics["trial_id"]
    # Ray names a trial's folder {trainable}_{trial id}_{index}_{params}_{time}
    match = re.search(r"_([0-9a-f]{8}|[0-9a-f]{5}_\d{5})_\d+_", Path(result.path or "").name)
    return match.group(1) if match else None


def reconcile(tracker: Tracker, grid: Any) -> None:
    """Send every epoch a trial's checkpoint holds that MLflow lacks (lost with a driver or a server)."""
    for result in grid:
        run_id = (result.metrics or {}).get("mlflow_run_id")
        if not run_id or result.checkpoint is None:
            continue
        with result.checkpoint.as_directory() as d:
            last = Path(d) / "last.pt"
            if not last.exists():
                continue
            history = checkpoint.load(last)["history"]
        sent = tracker.log_epochs(run_id, history)
        if sent:
            tracker.set_tags(run_id, {"reconciled_epochs": ",".join(map(str, sent))})


def end_unfinished(
    tracker: Tracker, experiment_id: str, parent: str, reason: str, terminate: bool = True, state: str = EndState.KILLED
) -> None:
    """Tag `state` (killed, or pruned for an epoch budget's cut) on every child run that has no end state.

    `terminate` also ends it in MLflow; an interrupted search leaves them RUNNING, for `--resume` to continue.
    """
    for run in tracker.children(experiment_id, parent):
        if END_STATE not in run.data.tags:
            tracker.set_tags(run.info.run_id, {END_STATE: state, END_REASON: reason})
            if terminate:
                tracker.finish(run.info.run_id, "KILLED" if state == EndState.KILLED else "FINISHED")


def adopt_optuna_ends(tracker: Tracker, experiment_id: str, parent: str, study: Any) -> None:
    """Before a resume: a trial Optuna was told had ended, whose MLflow tag was lost with the driver, ends in MLflow.

    Ray's saved state may be older than Optuna's; the resumed trial finds the tag
    and reports its end at once instead of training on.
    """
    from optuna.trial import TrialState

    states = {TrialState.PRUNED: EndState.PRUNED, TrialState.FAIL: EndState.FAILED}
    told = {t.user_attrs.get(TRIAL_ID): states[t.state] for t in study.trials if t.state in states}
    for run in tracker.children(experiment_id, parent):
        state = told.get(run.data.tags.get(TRIAL_ID))
        if state and run.data.tags.get(END_STATE) in (None, EndState.KILLED):
            reason = f"{state} before the driver was lost (Optuna's record)"
            tracker.set_tags(run.info.run_id, {END_STATE: state, END_REASON: reason})


def end_running(study: Any, pruned: bool = False) -> None:
    """Tell Optuna FAIL (or PRUNED) for trials still RUNNING: Ray stopped them without telling the searcher."""
    from optuna.trial import TrialState

    state = TrialState.PRUNED if pruned else TrialState.FAIL
    for trial in study.trials:
        if trial.state == TrialState.RUNNING:
            study.tell(trial.number, state=state, skip_if_finished=True)


def prune_unknown_runs(tracker: Tracker, experiment_id: str, parent: str, known: set) -> int:
    """Delete child runs of trials the (restored) search does not know: started after Ray last saved."""
    removed = 0
    for run in tracker.children(experiment_id, parent):
        if run.data.tags.get(TRIAL_ID) not in known:
            tracker.delete_run(run.info.run_id, "trial unknown to the resumed search (started after its last save)")
            removed += 1
    return removed
