"""The driver's MLflow writer: every result's metrics, and each trial's end as the record has it.

Every result a trial reports reaches the driver, a pruned trial's last one too,
so metrics are logged here, once per epoch, in the background. A replay of a
duplicate logs none: its twin's run holds them, and a metric sort must never
rank the replay beside (or above) the run that trained.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray import tune

from search.recorder import Recorder, error_line
from search.tracking import Sender, Tracker, run_status
from vae.records import DUPLICATE_OF, END_REASON, END_STATE, METRICS, PAUSED_AT

METRIC_WRITE = "metrics "  # how a metric write is named in the driver's queue


class TrackingCallback(tune.Callback):
    """Logs each result's metrics to its trial's child run and tags how each trial ended."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, recorder: Recorder) -> None:
        self.tracker = Tracker(tracking_uri)
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.recorder = recorder
        self.sender = Sender("driver")
        self._steps: dict[str, set[int]] = {}  # run id -> steps MLflow has; touched by the sender thread only

    def _log_row(self, run_id: str, row: dict[str, float]) -> None:
        steps = self._steps.get(run_id)
        if steps is None:
            steps = self._steps[run_id] = self.tracker.logged_steps(run_id)
        steps.update(self.tracker.log_epochs(run_id, [row], skip=steps))

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        run_id, epoch = result.get("mlflow_run_id"), result.get("epoch")
        if result.get(DUPLICATE_OF):  # a replay's epochs are its twin's metrics, which its twin's run holds
            return
        if run_id and epoch is not None and "val_loss" in result:  # a failure's closing report measured nothing
            row = {"epoch": epoch, **{k: result[k] for k in METRICS if k in result}}
            self.sender.submit(f"{METRIC_WRITE}{run_id} epoch {epoch}", lambda: self._log_row(run_id, row))

    def _run_id(self, trial: Any) -> str | None:
        run_id = (trial.last_result or {}).get("mlflow_run_id")
        return run_id or self._run_of(trial.trial_id)

    def _run_of(self, trial_id: str) -> str | None:
        run = self.tracker.trial_run(self.experiment_id, self.parent_run_id, trial_id)
        return run.info.run_id if run else None

    def paused(self, trial_id: str, epoch: int, loss: float) -> None:
        """The run says where it waits (its end_state, which is final, is not set)."""
        self._on_run(f"pause of {trial_id}", trial_id, lambda run_id: self.tracker.set_tags(run_id, {PAUSED_AT: epoch}))

    def promoted(self, trial_id: str, epoch: int) -> None:
        self._on_run(f"promotion of {trial_id}", trial_id, lambda run_id: self.tracker.delete_tag(run_id, PAUSED_AT))

    def _on_run(self, what: str, trial_id: str, write: Callable[[str], None]) -> None:
        """A write to the trial's run, found by its trial id, in the background."""

        def send() -> None:
            run_id = self._run_of(trial_id)
            if run_id:
                write(run_id)

        self.sender.submit(what, send)

    def _end(self, trial: Any, state: str, reason: str, status: str) -> None:
        def write() -> None:
            run_id = self._run_id(trial)
            if run_id:
                self.tracker.set_tags(run_id, {END_STATE: state, END_REASON: reason})
                self.tracker.finish(run_id, status)

        self.sender.submit(f"end of {trial.trial_id}", write)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        state, reason = self.recorder.ended(trial.trial_id, trial.last_result)
        self._end(trial, state, reason, run_status(state))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        state, reason = self.recorder.ended(trial.trial_id, trial.last_result, error=error_line(trial))
        self._end(trial, state, reason, "FAILED")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if not self.sender.flush(timeout=600):
            self.sender.abandon()
        self.sender.close()

    @property
    def lost(self) -> int:
        """The driver's writes that never landed, but metrics: the search's end sends every epoch MLflow lacks."""
        return sum(not what.startswith(METRIC_WRITE) for what in self.sender.lost)
