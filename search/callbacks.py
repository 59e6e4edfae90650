"""Driver-side pieces Ray Tune calls: MLflow logging of every result, and honest pruning in Optuna.

Every result a trial reports reaches the driver, a pruned trial's last one too,
so metrics are logged here, once per epoch, in the background.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optuna.trial import TrialState
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from search.tracking import END_REASON, END_STATE, TRIAL_ID, Sender, Tracker
from vae.train import METRICS


class HonestOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna PRUNED for a trial ASHA stopped, and FAIL for a diverged one.

    Ray's OptunaSearch tells COMPLETE with the partial loss whenever a stopped
    trial has a last result, which is what ASHA's stop gives it.
    """

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        end_state = (result or {}).get(END_STATE)
        if error or not result or end_state in ("completed", "early_stopped"):
            return super().on_trial_complete(trial_id, result, error)
        state = TrialState.FAIL if end_state == "failed" else TrialState.PRUNED
        self._ot_study.tell(self._ot_trials[trial_id], state=state)
        self._completed_trials.add(trial_id)


class TrackingCallback(tune.Callback):
    """Logs each result's metrics to its trial's child run and tags how each trial ended."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self._init()

    def _init(self) -> None:
        self._tracker: Tracker | None = None
        self._sender: Sender | None = None
        self._steps: dict[str, set[int]] = {}  # run id -> steps MLflow has; touched by the sender thread only

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks with the experiment state
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init()

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = Tracker(self.tracking_uri)
        return self._tracker

    @property
    def sender(self) -> Sender:
        if self._sender is None:
            self._sender = Sender("driver")
        return self._sender

    def _log_row(self, run_id: str, row: dict[str, float]) -> None:
        steps = self._steps.get(run_id)
        if steps is None:
            steps = self._steps[run_id] = self.tracker.logged_steps(run_id)
        steps.update(self.tracker.log_epochs(run_id, [row], skip=steps))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        run_id, epoch = result.get("mlflow_run_id"), result.get("epoch")
        if run_id and epoch is not None:
            row = {"epoch": epoch, **{k: result[k] for k in METRICS if k in result}}
            self.sender.submit(f"metrics {run_id} epoch {epoch}", lambda: self._log_row(run_id, row))

    def _run_id(self, trial: Any) -> str | None:
        run_id = (trial.last_result or {}).get("mlflow_run_id")
        if run_id:
            return run_id
        runs = self.tracker.client.search_runs(
            [self.experiment_id],
            f"tags.`mlflow.parentRunId` = '{self.parent_run_id}' and tags.{TRIAL_ID} = '{trial.trial_id}'",
        )
        return runs[0].info.run_id if runs else None

    def _end(self, trial: Any, state: str, reason: str, status: str) -> None:
        def write() -> None:
            run_id = self._run_id(trial)
            if run_id:
                self.tracker.set_tags(run_id, {END_STATE: state, END_REASON: reason})
                self.tracker.finish(run_id, status)

        self.sender.submit(f"end of {trial.trial_id}", write)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        last = trial.last_result or {}
        state = last.get(END_STATE) or "pruned"
        reason = last.get(END_REASON) or f"stopped by ASHA after epoch {last.get('epoch')}"
        self._end(trial, state, reason, "FAILED" if state == "failed" else "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "failed", _error_line(trial), "FAILED")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.sender.flush(timeout=600)


def _error_line(trial: Any) -> str:
    try:
        lines = Path(trial.error_file).read_text().strip().splitlines()
        return lines[-1][:500] if lines else "error"
    except (OSError, TypeError):
        return "the trial raised an error (see Ray's trial folder)"
