"""The Ray Tune trial: a plain function of its sampled config that reports once per epoch.

Each report carries the epoch's metrics and a checkpoint (the trainer's last
state and the best weights), so a crashed trial resumes from its last epoch.
Metrics reach MLflow through the driver (`search.callbacks`); the trial itself
only finds its child run and uploads artifacts (sample grids, best weights).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from ray import tune

from search.settings import TrialSettings
from search.tracking import config_key, patiently
from search.trial_runs import TrialTracker
from search.uploads import FINAL_FLUSH_S, Uploads
from vae import data
from vae.config import TrainConfig
from vae.precision import resolve_precision
from vae.records import DUPLICATE_OF, END_REASON, END_STATE, ERROR_TYPE, LOST_WRITES, NOTE, EndState
from vae.train import EpochResult, Trainer

REPORT_FLUSH_S = 2.0  # wait this long at most for artifacts before each report (a pruned trial stops after it)


def _node_tags() -> dict[str, str]:
    import ray

    ctx = ray.get_runtime_context()
    return {"ray_node_id": ctx.get_node_id(), "ray_node_ip": ray.util.get_node_ip_address()}


def replay(tracker: TrialTracker, run_id: str, twin: Any, rows: list[dict[str, float]]) -> None:
    """Report a finished twin's stored epochs instead of training again; end as it ended.

    The replay's run holds no metrics (the driver leaves them to the twin's run) and ASHA keeps it out
    of its rungs, so it can neither tie the twin in a sort nor be stopped where the twin was not.
    """
    twin_id, twin_state = twin.info.run_id, twin.data.tags[END_STATE]
    note = (f"Replay of run `{twin_id}` ({twin.info.run_name}), which trained these same values and ended "
            f"{twin_state}: this run trained nothing and holds no metrics; see the twin's.")  # fmt: skip
    patiently(lambda: tracker.set_tags(run_id, {DUPLICATE_OF: twin_id, NOTE: note}), "tagging the duplicate")
    for i, row in enumerate(rows):
        result = {**row, "mlflow_run_id": run_id, DUPLICATE_OF: twin_id}
        if i == len(rows) - 1:
            result[END_STATE] = twin_state
            result[END_REASON] = f"duplicate of run {twin_id}: {twin.data.tags.get(END_REASON, '')}"
        tune.report(result)


def train_trial(sampled: dict[str, Any], settings: TrialSettings) -> None:
    """One trial: `sampled` is what Optuna chose, `settings` what the whole search shares.

    An exception from training ends the trial as `failed` once, with its traceback
    as the run's `error.txt`: a deterministic error is not worth Ray's retries.
    Only a lost worker (nothing left to catch) is retried from the last checkpoint.
    """
    config = settings.config(sampled)
    tracker = TrialTracker(settings.tracking_uri)
    run_id = _child_run(tracker, settings, sampled, {**_node_tags(), "train_config": config.to_dict()})
    resume_from = tune.get_checkpoint()
    if _ended_before(tracker, run_id) or (resume_from is None and _replayed(tracker, settings, run_id, sampled)):
        return
    with _Trial(settings, tracker, run_id, resumed=resume_from is not None) as trial:
        try:
            trial.run(config, resume_from)
        except Exception as e:  # raised by training code; SystemExit (Ray's stop) passes through
            trial.fail(e)


def _child_run(tracker: TrialTracker, settings: TrialSettings, sampled: dict[str, Any], tags: dict[str, Any]) -> str:
    ctx = tune.get_context()
    exp_id, parent = settings.experiment_id, settings.parent_run_id
    return patiently(
        lambda: tracker.child_run(exp_id, parent, ctx.get_trial_id(), ctx.get_trial_name(), sampled, tags),
        "finding this trial's run",
    )


def _ended_before(tracker: TrialTracker, run_id: str) -> bool:
    """A run that ended before the driver was lost (which Ray's saved state may not know) reports its end at once."""
    tags = patiently(lambda: tracker.tags(run_id), "reading how this trial ended")
    if tags.get(END_STATE, EndState.KILLED) == EndState.KILLED:
        return False
    twin = tags.get(DUPLICATE_OF)
    rows = patiently(lambda: tracker.history(twin or run_id), "this trial's history")  # a replay's: its twin's
    last = rows[-1] if rows else {"epoch": 0, "best_val_loss": math.inf}
    replay = {DUPLICATE_OF: twin} if twin else {}
    ended = {END_STATE: tags[END_STATE], END_REASON: tags.get(END_REASON, "")}
    tune.report({**last, **replay, **ended, "mlflow_run_id": run_id})
    return True


def _replayed(tracker: TrialTracker, settings: TrialSettings, run_id: str, sampled: dict[str, Any]) -> bool:
    """A config a finished twin already trained is replayed from its history instead of trained again."""
    exp_id, parent = settings.experiment_id, settings.parent_run_id
    twin = patiently(lambda: tracker.finished_twin(exp_id, parent, config_key(sampled), exclude=run_id), "twins")
    rows = patiently(lambda: tracker.history(twin.info.run_id), "the twin's history") if twin else []
    if rows:
        replay(tracker, run_id, twin, rows)
    return bool(rows)


class _Trial:
    """The training side of a trial: set up, train an epoch at a time, report each with a checkpoint.

    As a context manager it owns the trial's work folder, its upload queue and its
    system-metrics sampler, and leaves nothing behind however the trial ends.
    """

    def __init__(self, settings: TrialSettings, tracker: TrialTracker, run_id: str, resumed: bool) -> None:
        self.started = time.perf_counter()
        self.settings, self.tracker, self.run_id, self.resumed = settings, tracker, run_id, resumed
        self.rungs = set(settings.rung_epochs)
        self.trainer: Trainer | None = None

    def __enter__(self) -> _Trial:
        self.work = Path(tempfile.mkdtemp(prefix="vaesearch-trial-"))
        self.best = self.work / "best.pt"
        tags = patiently(lambda: self.tracker.tags(self.run_id), "reading this trial's run")
        name, before = f"trial-{tune.get_context().get_trial_id()}", int(tags.get(LOST_WRITES, 0))
        self.uploads = Uploads(self.tracker, self.run_id, self.work, name, before)
        interval = self.settings.system_metrics_s
        self.monitor = self.tracker.system_metrics(self.run_id, interval, self.resumed) if interval else None
        return self

    def __exit__(self, *exc: object) -> None:
        if self.monitor is not None:
            self.monitor.finish()
        self.uploads.close()  # before the folder goes: a snapshot still queued must not lose its file
        shutil.rmtree(self.work, ignore_errors=True)

    def setup(self, config: TrainConfig, resume_from: Any) -> Trainer:
        settings = self.settings
        torch.set_num_threads(max(1, int(settings.cpus)))
        device = torch.device("cuda" if settings.gpus > 0 and torch.cuda.is_available() else "cpu")
        precision, why = resolve_precision(config.precision, device, field="train.precision")
        patiently(lambda: self.tracker.set_tags(self.run_id, {"precision_reason": why}), "tagging the precision")
        patiently(lambda: self.tracker.log_params(self.run_id, {"precision": precision}), "logging the precision")
        data_dir = settings.data_dir or data.default_data_dir()  # this node's
        try:
            splits = data.load(data_dir, device)  # verifies the MD5s
        except data.DataError:  # a node without the data takes the driver's once, MD5-checked
            self.fetch_data(data_dir)
            splits = data.load(data_dir, device)
        trainer = Trainer(dataclasses.replace(config, precision=precision), splits, device)
        if resume_from is not None:
            with resume_from.as_directory() as d:
                trainer.restore(Path(d) / "last.pt")
                if (Path(d) / "best.pt").exists():
                    shutil.copy(Path(d) / "best.pt", self.best)
        return trainer

    def fetch_data(self, data_dir: Path) -> None:
        """MNIST from the driver through Ray's object store (no internet needed), else from its usual sources."""
        import ray

        if self.settings.mnist is None:
            data.prepare(data_dir, log=lambda m: None)
            return
        data.unpack(ray.get(self.settings.mnist), data_dir)
        patiently(lambda: self.tracker.set_tags(self.run_id, {"mnist_from": "driver"}), "tagging the data's source")

    def run(self, config: TrainConfig, resume_from: Any) -> None:
        """Train to the end, reporting every epoch; a trainer restored from its final checkpoint only reports."""
        self.trainer = trainer = self.setup(config, resume_from)
        overhead = {"setup_seconds": time.perf_counter() - self.started}  # trial start to its first batch
        stop, reason = trainer.end_state()
        if stop:
            self.report({**trainer.history[-1], END_STATE: stop, END_REASON: reason})
            return
        if trainer.epoch == 0:  # the untrained model's grids: step 0, where the UI's slider starts
            self.uploads.grids(trainer, 0)
            self.uploads.wait(FINAL_FLUSH_S)
        while not stop:
            result = trainer.step()
            stop = result.stop
            self.report(self.after_epoch(trainer, result, overhead), checkpoint=True)
            overhead = {}

    def after_epoch(self, trainer: Trainer, result: EpochResult, overhead: dict[str, float]) -> dict[str, Any]:
        """Snapshot an improvement, draw the grids due, wait for uploads; the epoch's report."""
        waited = time.perf_counter()
        if result.improved:
            trainer.save_weights(self.best)
            self.uploads.best(self.best, result.epoch)
        grid_seconds = 0.0
        drawn = result.stop or result.epoch % self.settings.samples_every == 0 or result.epoch in self.rungs
        if drawn:
            grid_start = time.perf_counter()
            self.uploads.grids(trainer, result.epoch)
            grid_seconds = time.perf_counter() - grid_start
        # Grids must land before the report: ASHA may stop the trial after it, and at the search's end Ray
        # kills a stopping trial within 10 s. Other epochs wait briefly and let the queue catch up later.
        if result.stop:
            self.uploads.settle()  # the last report counts every write that did not land
        else:
            self.uploads.wait(FINAL_FLUSH_S if drawn else REPORT_FLUSH_S)
        # What logging cost this epoch's training: the wait for uploads, not the drawing of grids.
        report: dict[str, Any] = {**result.metrics, **overhead, "epoch": result.epoch}
        report["log_seconds"] = time.perf_counter() - waited - grid_seconds
        if result.stop:
            report.update({END_STATE: result.stop, END_REASON: result.reason})
        return report

    def report(self, result: dict[str, Any], checkpoint: bool = False) -> None:
        """Every report carries the metric ASHA ranks by and the epoch, so no result can upset the driver."""
        trainer = self.trainer
        result = {
            "epoch": trainer.epoch if trainer else 0,
            "best_val_loss": trainer.best_val_loss if trainer else math.inf,
            **result,
            "mlflow_run_id": self.run_id,
            LOST_WRITES: self.uploads.unlanded(),  # so far; the driver sums each trial's last
        }
        if not checkpoint:
            tune.report(result)
            return
        assert trainer is not None  # a checkpoint is of a trainer that trained
        with tempfile.TemporaryDirectory(prefix="ckpt-", dir=self.work) as d:
            trainer.save(Path(d) / "last.pt")
            if self.best.exists():
                shutil.copy(self.best, Path(d) / "best.pt")
            tune.report(result, checkpoint=tune.Checkpoint.from_directory(d))

    def fail(self, error: Exception) -> None:
        """End as failed: the exception's last line as the reason, its traceback as `error.txt`."""
        text = "".join(traceback.format_exception(error))
        reason = text.strip().splitlines()[-1][:500]
        path = self.work / "error.txt"
        path.write_text(text)
        self.uploads.error(path)
        patiently(lambda: self.tracker.set_tags(self.run_id, {ERROR_TYPE: type(error).__name__}), "tagging the error")
        self.uploads.settle()
        self.report({END_STATE: EndState.FAILED, END_REASON: reason, ERROR_TYPE: type(error).__name__})
