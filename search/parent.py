"""The search's parent run in MLflow: what it records at the start, and the best of its trials at the end."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from search.config import SearchConfig
from search.tracking import Tracker
from vae import records
from vae.records import RANKED_BY


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def start_parent(
    tracker: Tracker, cfg: SearchConfig, space: dict[str, Any], study: str, md5s: dict[str, str], tags: dict[str, Any]
) -> tuple[str, str]:
    """(experiment id, parent run id) of a new search: everything needed to rerun it, as params."""
    experiment_id = tracker.experiment_id(cfg.name)
    parent = tracker.start_parent(
        experiment_id,
        cfg.name,
        params={
            "config": json.dumps(cfg.model_dump()),
            "search_space": json.dumps({k: repr(v) for k, v in space.items()}),
            "optuna_study": cfg.name,
            "optuna_storage": study,
            "git_commit": git_commit(),
            **{f"md5_{k}": v for k, v in md5s.items()},
        },
        tags=tags,
    )
    return experiment_id, parent


def best_child_run(tracker: Tracker, experiment_id: str, parent: str) -> dict[str, Any] | None:
    """The search's best trial (`vae.records.best`) as the command prints it: run id, loss, params."""
    run = records.best(
        tracker.children(experiment_id, parent), lambda r: r.data.tags, lambda r: r.data.metrics.get(RANKED_BY)
    )
    if run is None:
        return None
    return {"run_id": run.info.run_id, "best_val_loss": run.data.metrics[RANKED_BY], "params": dict(run.data.params)}
