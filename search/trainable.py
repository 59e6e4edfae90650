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

from search.tracking import END_REASON, END_STATE, ERROR_TYPE, Sender, Tracker, config_key, patiently
from vae import checkpoint, data
from vae.config import TrainConfig
from vae.figures import grid_pixels, grids
from vae.precision import resolve_precision
from vae.train import Trainer

REPORT_FLUSH_S = 2.0  # wait this long at most for artifacts before each report (a pruned trial stops after it)
FINAL_FLUSH_S = 300.0


def train_config(sampled: dict[str, Any], settings: dict[str, Any]) -> TrainConfig:
    """The trial's TrainConfig: sampled values over the search's training defaults."""
    return TrainConfig(
        decoder=int(sampled["decoder"]),
        hidden=int(sampled["hidden"]),
        latent=int(sampled["latent"]),
        lr=float(sampled.get("lr", settings["lr"])),
        batch_size=int(sampled.get("batch_size", settings["batch_size"])),
        epochs=settings["max_epochs"],
        patience=settings["patience"],
        seed=settings["seed"],
        precision=settings["precision"],
        subset=settings["subset"],
        val_subset=settings["val_subset"],
    )


def _node_tags() -> dict[str, str]:
    import ray

    ctx = ray.get_runtime_context()
    return {"ray_node_id": ctx.get_node_id(), "ray_node_ip": ray.util.get_node_ip_address()}


def replay(tracker: Tracker, run_id: str, twin: Any, rows: list[dict[str, float]]) -> None:
    """Report a finished twin's stored epochs instead of training again, so ASHA's rungs stay honest."""
    patiently(lambda: tracker.set_tags(run_id, {"duplicate_of": twin.info.run_id}), "tagging the duplicate")
    for i, row in enumerate(rows):
        result = {**row, "mlflow_run_id": run_id, "duplicate_of": twin.info.run_id}
        if i == len(rows) - 1:
            result[END_STATE] = twin.data.tags[END_STATE]
            result[END_REASON] = f"duplicate of run {twin.info.run_id}: {twin.data.tags.get(END_REASON, '')}"
        tune.report(result)


def train_trial(sampled: dict[str, Any], settings: dict[str, Any]) -> None:
    """One trial. `sampled` is what Optuna chose; `settings` is fixed for the whole search.

    An exception from training ends the trial as `failed` once, with its traceback
    as the run's `error.txt`: a deterministic error is not worth Ray's retries.
    Only a lost worker (nothing left to catch) is retried from the last checkpoint.
    """
    ctx = tune.get_context()
    tracker = Tracker(settings["tracking_uri"])
    config = train_config(sampled, settings)
    exp_id, parent = settings["experiment_id"], settings["parent_run_id"]
    tags = {**_node_tags(), "train_config": config.to_dict()}
    run_id = patiently(
        lambda: tracker.child_run(exp_id, parent, ctx.get_trial_id(), ctx.get_trial_name(), sampled, tags),
        "finding this trial's run",
    )
    ended = patiently(lambda: tracker.end_of(run_id), "reading how this trial ended")
    if ended and ended[0] != "killed":  # it ended before the driver was lost, which Ray's saved state may not know
        rows = patiently(lambda: tracker.history(run_id), "this trial's history")
        last = rows[-1] if rows else {"epoch": 0, "best_val_loss": math.inf}
        tune.report({**last, END_STATE: ended[0], END_REASON: ended[1], "mlflow_run_id": run_id})
        return
    resume_from = tune.get_checkpoint()
    if resume_from is None:
        twin = patiently(lambda: tracker.finished_twin(exp_id, parent, config_key(sampled), exclude=run_id), "twins")
        rows = patiently(lambda: tracker.history(twin.info.run_id), "the twin's history") if twin else []
        if rows:
            replay(tracker, run_id, twin, rows)
            return

    work = Path(tempfile.mkdtemp(prefix="vaesearch-trial-"))
    uploads = Sender(f"trial-{ctx.get_trial_id()}")
    trial = _Trial(settings, tracker, run_id, work, uploads)
    interval = settings["system_metrics_s"]
    monitor = tracker.system_metrics(run_id, interval, resumed=resume_from is not None) if interval else None
    try:
        trial.run(config, resume_from)
    except Exception as e:  # raised by training code; SystemExit (Ray's stop) passes through
        trial.fail(e)
    finally:  # uploads first: a snapshot still queued must not lose its file
        if monitor is not None:
            monitor.finish()
        uploads.flush(FINAL_FLUSH_S)
        shutil.rmtree(work, ignore_errors=True)


class _Trial:
    """The training side of a trial: set up, train an epoch at a time, report each."""

    def __init__(self, settings: dict[str, Any], tracker: Tracker, run_id: str, work: Path, uploads: Sender) -> None:
        self.started = time.perf_counter()
        self.settings, self.tracker, self.run_id = settings, tracker, run_id
        self.work, self.uploads = work, uploads
        self.best = work / "best.pt"
        self.rungs = set(settings["rung_epochs"])
        self.trainer: Trainer | None = None

    def setup(self, config: TrainConfig, resume_from: Any) -> Trainer:
        settings = self.settings
        torch.set_num_threads(max(1, int(settings["cpus"])))
        use_cuda = settings["gpus"] > 0 and torch.cuda.is_available()
        device = torch.device("cuda" if use_cuda else "cpu")
        precision, why = resolve_precision(config.precision, device, field="train.precision")
        patiently(lambda: self.tracker.set_tags(self.run_id, {"precision_reason": why}), "tagging the precision")
        patiently(lambda: self.tracker.log_params(self.run_id, {"precision": precision}), "logging the precision")
        data_dir = Path(settings["data_dir"])
        try:
            splits = data.load(data_dir, device)  # verifies the MD5s
        except data.DataError:  # a node without the data fetches it once
            data.prepare(data_dir, log=lambda m: None)
            splits = data.load(data_dir, device)
        trainer = Trainer(dataclasses.replace(config, precision=precision), splits, device)
        if resume_from is not None:
            with resume_from.as_directory() as d:
                trainer.restore(Path(d) / "last.pt")
                if (Path(d) / "best.pt").exists():
                    shutil.copy(Path(d) / "best.pt", self.best)
        return trainer

    def run(self, config: TrainConfig, resume_from: Any) -> None:
        self.trainer = trainer = self.setup(config, resume_from)
        overhead = {"setup_seconds": time.perf_counter() - self.started}  # trial start to its first batch
        stop, reason = trainer.end_state()
        if stop:  # restored from its final checkpoint: done already, train nothing more
            last = trainer.history[-1]
            self.report({**last, END_STATE: stop, END_REASON: reason})
            return
        if trainer.epoch == 0:  # the untrained model's grids: step 0, where the UI's slider starts
            self.log_grids(0)
        while True:
            result = trainer.step()
            waited = time.perf_counter()
            if result.improved:
                self.snapshot_best(result.epoch)
            grid_seconds = 0.0
            if result.stop or result.epoch % self.settings["samples_every"] == 0 or result.epoch in self.rungs:
                grid_start = time.perf_counter()
                self.log_grids(result.epoch)
                grid_seconds = time.perf_counter() - grid_start
            self.uploads.flush(FINAL_FLUSH_S if result.stop else REPORT_FLUSH_S)
            # What logging cost this epoch's training: the wait for uploads, not the drawing of grids.
            report = {**result.metrics, **overhead, "epoch": result.epoch}
            report["log_seconds"] = time.perf_counter() - waited - grid_seconds
            overhead = {}
            if result.stop:
                report.update({END_STATE: result.stop, END_REASON: result.reason})
            self.report(report, checkpoint=True)
            if result.stop:
                return

    def log_grids(self, epoch: int) -> None:
        """The epoch's sample grids as MLflow images with the epoch as step (the UI's step slider)."""
        trainer = self.trainer
        for key, images in grids(trainer.model.decoder, trainer.config.latent, seed=trainer.config.seed).items():
            pixels = grid_pixels(images)
            self.uploads.submit(
                f"{key} grid, epoch {epoch}", lambda k=key, p=pixels: self.tracker.log_image(self.run_id, p, k, epoch)
            )

    def snapshot_best(self, epoch: int) -> None:
        checkpoint.save(_weights(self.trainer), self.best)
        snapshot = self.work / f"best-{epoch}" / "best.pt"  # a folder each: MLflow names it by its file
        snapshot.parent.mkdir()
        shutil.copy(self.best, snapshot)
        self.uploads.submit("best checkpoint", lambda: _upload_once(self.tracker, self.run_id, snapshot, "checkpoint"))

    def report(self, result: dict[str, Any], checkpoint: bool = False) -> None:
        """Every report carries the metric ASHA ranks by and the epoch, so no result can upset the driver."""
        trainer = self.trainer
        result = {
            "epoch": trainer.epoch if trainer else 0,
            "best_val_loss": trainer.best_val_loss if trainer else math.inf,
            **result,
            "mlflow_run_id": self.run_id,
        }
        if not checkpoint:
            tune.report(result)
            return
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
        self.uploads.submit("error.txt", lambda: self.tracker.log_artifact(self.run_id, path))
        patiently(lambda: self.tracker.set_tags(self.run_id, {ERROR_TYPE: type(error).__name__}), "tagging the error")
        self.uploads.flush(FINAL_FLUSH_S)
        self.report({END_STATE: "failed", END_REASON: reason, ERROR_TYPE: type(error).__name__})


def _weights(trainer: Trainer) -> dict[str, Any]:
    """What promotion and `vaesearch evaluate` need: config and weights, not the optimizer."""
    return {
        "config": trainer.config.to_dict(),
        "model": trainer.model.state_dict(),
        "epoch": trainer.epoch,
        "best_val_loss": trainer.best_val_loss,
    }


def _upload_once(tracker: Tracker, run_id: str, path: Path, artifact_dir: str) -> None:
    """Upload a snapshot, then drop its folder: a later best must not wait behind old copies on disk."""
    tracker.log_artifact(run_id, path, artifact_dir)
    shutil.rmtree(path.parent, ignore_errors=True)
