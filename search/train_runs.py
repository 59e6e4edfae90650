"""`vaesearch train`'s one run: a finished training folder, logged to MLflow as a search's trial would be."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.entities import Param

from search.tracking import Tracker, run_status
from vae.records import END_REASON, END_STATE


def log_training(
    tracker: Tracker, experiment: str, folder: Path, params: dict[str, Any], state: str, reason: str
) -> str:
    """One finished `vaesearch train` folder as a run: params, a metric per epoch, checkpoint and grids."""
    import csv

    client = tracker.client
    run_id = client.create_run(tracker.experiment_id(experiment), run_name=folder.name).info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    with open(folder / "metrics.csv") as f:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    best = float("inf")
    for row in rows:  # metrics.csv has no running minimum; MLflow gets it as in a search
        best = min(best, row["val_loss"])
        row["best_val_loss"] = best
    tracker.log_epochs(run_id, rows, skip=set())
    for name in ("checkpoint.pt", "config.json", "metrics.csv", "samples.png", "manifold.png"):
        if (folder / name).exists():
            tracker.log_artifact(run_id, folder / name)
    tracker.set_tags(run_id, {END_STATE: state, END_REASON: reason})
    tracker.finish(run_id, run_status(state))
    return run_id
