"""Driver-side pieces Ray Tune calls: MLflow logging of every result, and honest pruning in Optuna.

Every result a trial reports reaches the driver, a pruned trial's last one too,
so metrics are logged here, once per epoch, in the background.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from search.tracking import Sender, Tracker
from vae.records import DUPLICATE_OF, END_REASON, END_STATE, ERROR_TYPE, METRICS, TRIAL_ID, EndState

BUDGET_SPENT = "stopped: the search's epoch budget was spent"


class PruningAwareOptunaSearch(OptunaSearch):
    """OptunaSearch that tells Optuna PRUNED for a trial ASHA stopped, and FAIL for a failed or killed one.

    Ray's OptunaSearch tells COMPLETE with the partial loss whenever a stopped
    trial has a last result, which is what ASHA's stop gives it. Intermediate
    values are reported at the trial's epoch (Ray's iteration counts replays
    and resumes differently), and only results that measured something.
    """

    def suggest(self, trial_id: str) -> dict | None:
        config = super().suggest(trial_id)
        if trial_id in self._ot_trials:  # lets a resumed search match Optuna's trials to Ray's and MLflow's
            self._ot_trials[trial_id].set_user_attr(TRIAL_ID, trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id not in self._completed_trials and trial_id in self._ot_trials and _measured(result):
            self._report(trial_id, result)

    def _report(self, trial_id: str, result: dict) -> None:
        """The trial's value at its epoch, as an intermediate value; once per epoch.

        A trial that ends by itself (early stopping, max_epochs) hands its last
        result to both on_trial_result and on_trial_complete; Optuna warns on the second.
        """
        epoch = int(result["epoch"])
        reported = self.__dict__.setdefault("_reported_epoch", {})  # setdefault: searchers pickled without it
        if reported.get(trial_id) == epoch:
            return
        try:
            self._ot_trials[trial_id].report(result[self.metric], epoch)
        except UpdateFinishedTrialError:  # told before the driver was lost; Ray's older state resumed it
            self._completed_trials.add(trial_id)
        reported[trial_id] = epoch

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return super().on_trial_complete(trial_id, result, error)
        if result and _measured(result):  # the last value, which Ray withholds from on_trial_result when it stops
            self._report(trial_id, result)
        end_state = (result or {}).get(END_STATE)
        if error or not result or end_state in (EndState.COMPLETED, EndState.EARLY_STOPPED):
            return super().on_trial_complete(trial_id, result, error)
        state = TrialState.FAIL if end_state in (EndState.FAILED, EndState.KILLED) else TrialState.PRUNED
        assert self._ot_study is not None  # set once the searcher has its space
        self._ot_study.tell(self._ot_trials[trial_id], state=state, skip_if_finished=True)
        self._completed_trials.add(trial_id)


HonestOptunaSearch = PruningAwareOptunaSearch  # its name before; searches saved then pickled it under that name


def _measured(result: dict) -> bool:
    """A result that holds an epoch's validation (not a failure's closing report)."""
    value = result.get("best_val_loss")
    return "val_loss" in result and isinstance(value, float) and math.isfinite(value) and "epoch" in result


class SearchStopper(tune.Stopper):
    """Ends the whole search early, for one of two reasons.

    Fail fast (`reason`): its first `first` trials to finish all raised the same
    error. Such a search cannot work (a broken install, a config no node can run);
    the rest would fail the same way. The tracking callback tells it each end.

    Budget (`spent`): its trials have trained `max_total_epochs` epochs between
    them (replays of duplicates are free). Trials still running stop after the
    result that spends it; one that reports in the same step adds its epoch too.
    """

    def __init__(self, first: int, max_total_epochs: int | None = None) -> None:
        self.first = first
        self.ends: list[str | None] = []  # the error of each finished trial, None for a success
        self.reason: str | None = None
        self.max_total_epochs = max_total_epochs
        self.trained: set[tuple[str, int]] = set()  # (trial, epoch) measured so far: a resumed epoch counts once

    def __setstate__(self, state: dict[str, Any]) -> None:  # pickled before the budget existed
        self.__dict__.update({"max_total_epochs": None, "trained": set(), **state})

    @property
    def spent(self) -> bool:
        return self.max_total_epochs is not None and len(self.trained) >= self.max_total_epochs

    def trial_ended(self, error: str | None) -> None:
        if len(self.ends) >= self.first:
            return
        self.ends.append(error)
        if len(self.ends) == self.first and error is not None and all(e == error for e in self.ends):
            self.reason = f"the first {self.first} trials failed with {error}"

    def __call__(self, trial_id: str, result: dict) -> bool:
        if self.max_total_epochs is None:
            return False
        if _measured(result) and not result.get(DUPLICATE_OF):
            self.trained.add((trial_id, int(result["epoch"])))
        return self.spent

    def stop_all(self) -> bool:
        return self.reason is not None or self.spent


FailFast = SearchStopper  # its name before the budget; searches saved then pickled it under that name


METRIC_WRITE = "metrics "  # how a metric write is named in the driver's queue


class TrackingCallback(tune.Callback):
    """Logs each result's metrics to its trial's child run and tags how each trial ended."""

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, fail_fast: SearchStopper) -> None:
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.fail_fast = fail_fast
        self._init()

    def _init(self) -> None:
        self._tracker: Tracker | None = None
        self._sender: Sender | None = None
        self._steps: dict[str, set[int]] = {}  # run id -> steps MLflow has; touched by the sender thread only

    def __getstate__(self) -> dict[str, Any]:  # Tune pickles callbacks with the experiment state
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("fail_fast", SearchStopper(4))  # pickled before fail-fast existed
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
        if run_id and epoch is not None and "val_loss" in result:  # a failure's closing report measured nothing
            row = {"epoch": epoch, **{k: result[k] for k in METRICS if k in result}}
            self.sender.submit(f"{METRIC_WRITE}{run_id} epoch {epoch}", lambda: self._log_row(run_id, row))

    def _run_id(self, trial: Any) -> str | None:
        run_id = (trial.last_result or {}).get("mlflow_run_id")
        if run_id:
            return run_id
        run = self.tracker.trial_run(self.experiment_id, self.parent_run_id, trial.trial_id)
        return run.info.run_id if run else None

    def _end(self, trial: Any, state: str, reason: str, status: str) -> None:
        def write() -> None:
            run_id = self._run_id(trial)
            if run_id:
                self.tracker.set_tags(run_id, {END_STATE: state, END_REASON: reason})
                self.tracker.finish(run_id, status)

        self.sender.submit(f"end of {trial.trial_id}", write)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        state, reason = end_of(trial, self.fail_fast)
        self.fail_fast.trial_ended(reason if ERROR_TYPE in (trial.last_result or {}) else None)
        self._end(trial, state, reason, "FAILED" if state in (EndState.FAILED, EndState.KILLED) else "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, EndState.FAILED, _error_line(trial), "FAILED")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if not self.sender.flush(timeout=600):
            self.sender.abandon()

    @property
    def lost(self) -> int:
        """The driver's writes that never landed, but metrics: the search's end sends every epoch MLflow lacks."""
        lost = self._sender.lost if self._sender is not None else []
        return sum(not what.startswith(METRIC_WRITE) for what in lost)


def end_of(trial: Any, stopper: SearchStopper) -> tuple[str, str]:
    """(end_state, end_reason) of a trial Ray completed: its own word, else a stop from outside."""
    last = trial.last_result or {}
    if last.get(END_STATE):
        return last[END_STATE], last.get(END_REASON, "")
    if stopper.reason:
        return EndState.KILLED, f"search stopped: {stopper.reason}"
    if stopper.spent:
        return budget_cut(stopper.max_total_epochs, last.get("epoch"))
    return EndState.PRUNED, f"stopped by ASHA after epoch {last.get('epoch')}"


def budget_cut(max_total_epochs: int | None, epoch: Any = None) -> tuple[str, str]:
    """(end_state, end_reason) of a trial the epoch budget stopped: pruned, as ASHA's cuts, in MLflow as in Optuna."""
    after = f" after epoch {epoch}" if epoch is not None else ""
    return EndState.PRUNED, f"{BUDGET_SPENT} ({max_total_epochs} epochs){after}"


def _error_line(trial: Any) -> str:
    try:
        lines = Path(trial.error_file).read_text().strip().splitlines()
        return lines[-1][:500] if lines else "error"
    except (OSError, TypeError):
        return "the trial raised an error (see Ray's trial folder)"
