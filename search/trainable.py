"""The Ray Tune trial: a plain function of its sampled config that reports once per epoch.

Each report carries the epoch's metrics and a checkpoint (the trainer's last
state and the best weights), so a crashed trial resumes from its last epoch.
Metrics reach MLflow through the driver (`search.callbacks`); the trial itself
only finds its child run and uploads artifacts (sample grids, best weights).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from ray import tune

from search.tracking import END_REASON, END_STATE, Sender, Tracker, config_key, patiently
from vae import checkpoint, data
from vae.config import TrainConfig
from vae.figures import sample_grids
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


def replay(tracker: Tracker, run_id: str, twin: Any) -> None:
    """Report a finished twin's stored epochs instead of training again, so ASHA's rungs stay honest."""
    rows = patiently(lambda: tracker.history(twin.info.run_id), "the twin's history")
    patiently(lambda: tracker.set_tags(run_id, {"duplicate_of": twin.info.run_id}), "tagging the duplicate")
    for i, row in enumerate(rows):
        result = {**row, "mlflow_run_id": run_id, "duplicate_of": twin.info.run_id}
        if i == len(rows) - 1:
            result[END_STATE] = twin.data.tags[END_STATE]
            result[END_REASON] = f"duplicate of run {twin.info.run_id}: {twin.data.tags.get(END_REASON, '')}"
        tune.report(result)


def train_trial(sampled: dict[str, Any], settings: dict[str, Any]) -> None:
    """One trial. `sampled` is what Optuna chose; `settings` is fixed for the whole search."""
    started = time.perf_counter()
    ctx = tune.get_context()
    tracker = Tracker(settings["tracking_uri"])
    config = train_config(sampled, settings)
    exp_id, parent = settings["experiment_id"], settings["parent_run_id"]
    tags = {**_node_tags(), "train_config": config.to_dict()}
    run_id = patiently(
        lambda: tracker.child_run(exp_id, parent, ctx.get_trial_id(), ctx.get_trial_name(), sampled, tags),
        "finding this trial's run",
    )

    resume_from = tune.get_checkpoint()
    if resume_from is None:
        twin = patiently(lambda: tracker.finished_twin(exp_id, parent, config_key(sampled), exclude=run_id), "twins")
        if twin is not None:
            replay(tracker, run_id, twin)
            return

    torch.set_num_threads(max(1, int(settings["cpus"])))
    use_cuda = settings["gpus"] > 0 and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    data_dir = Path(settings["data_dir"])
    try:
        splits = data.load(data_dir, device)  # verifies the MD5s
    except data.DataError:  # a node without the data fetches it once
        data.prepare(data_dir, log=lambda m: None)
        splits = data.load(data_dir, device)
    trainer = Trainer(config, splits, device)
    work = Path(tempfile.mkdtemp(prefix="vaesearch-trial-"))
    best = work / "best.pt"
    if resume_from is not None:
        with resume_from.as_directory() as d:
            trainer.restore(Path(d) / "last.pt")
            if (Path(d) / "best.pt").exists():
                shutil.copy(Path(d) / "best.pt", best)

    uploads = Sender(f"trial-{ctx.get_trial_id()}")
    overhead = {"setup_seconds": time.perf_counter() - started}  # trial start to its first batch
    try:
        while True:
            result = trainer.step()
            waited = time.perf_counter()
            if result.improved:
                checkpoint.save(_weights(trainer), best)
                snapshot = work / f"best-{result.epoch}" / "best.pt"  # a folder each: MLflow names it by its file
                snapshot.parent.mkdir()
                shutil.copy(best, snapshot)
                uploads.submit("best checkpoint", lambda p=snapshot: _upload_once(tracker, run_id, p, "checkpoint"))
            grid_seconds = 0.0
            if result.epoch % settings["samples_every"] == 0 or result.stop:
                grid_start = time.perf_counter()
                _log_grids(trainer, work, result.epoch, tracker, run_id, uploads)
                grid_seconds = time.perf_counter() - grid_start
            uploads.flush(FINAL_FLUSH_S if result.stop else REPORT_FLUSH_S)
            # What logging cost this epoch's training: the wait for uploads, not the drawing of grids.
            report = {**result.metrics, **overhead, "epoch": result.epoch, "mlflow_run_id": run_id}
            report["log_seconds"] = time.perf_counter() - waited - grid_seconds
            overhead = {}
            if result.stop:
                report.update({END_STATE: result.stop, END_REASON: result.reason})
            with tempfile.TemporaryDirectory(prefix="ckpt-", dir=work) as d:
                trainer.save(Path(d) / "last.pt")
                if best.exists():
                    shutil.copy(best, Path(d) / "best.pt")
                tune.report(report, checkpoint=tune.Checkpoint.from_directory(d))
            if result.stop:
                break
    finally:
        shutil.rmtree(work, ignore_errors=True)


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


def _log_grids(trainer: Trainer, work: Path, epoch: int, tracker: Tracker, run_id: str, uploads: Sender) -> None:
    folder = work / f"grids-{epoch}"
    for path in sample_grids(trainer.model.decoder, trainer.config.latent, folder, seed=trainer.config.seed):
        named = path.with_name(f"epoch_{epoch:03d}_{path.name}")
        path.rename(named)
        uploads.submit(f"grid {named.name}", lambda p=named: tracker.log_artifact(run_id, p, "samples"))
