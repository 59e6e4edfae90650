"""`vaesearch searches`: every search under a storage path, with its trials' states read from MLflow."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from search.config import SearchError, vaesearch_home
from search.tracking import END_STATE, Tracker

STATE_FILE = "vaesearch.json"  # beside Ray's state: the config and the MLflow parent run of a search


def searches_root(storage_path: str | None) -> Path:
    """Where searches keep Ray's state: the given path, else ~/vaesearch/ray."""
    return Path(storage_path).expanduser().resolve() if storage_path else vaesearch_home() / "ray"


def list_searches(storage_path: str | None, tracking_uri: str | None) -> list[dict[str, Any]]:
    root = searches_root(storage_path)
    if storage_path and not root.is_dir():
        raise SearchError(f"--storage-path: {root} is not a folder")
    rows = []
    for state_file in sorted(root.glob(f"*/{STATE_FILE}")):
        state = json.loads(state_file.read_text())
        row: dict[str, Any] = {"name": state["name"], "created": state.get("created")}
        tracker = Tracker(tracking_uri or state["tracking_uri"])
        try:
            runs = tracker.children(state["experiment_id"], state["parent_run_id"])
            parent = tracker.client.get_run(state["parent_run_id"])
        except Exception as e:  # one unreachable server should not hide the other searches
            row["status"] = f"tracking server unreachable ({type(e).__name__})"
            rows.append(row)
            continue
        states = Counter(r.data.tags.get(END_STATE, "running") for r in runs)
        losses = [
            r.data.metrics["best_val_loss"]
            for r in runs
            if r.data.tags.get(END_STATE) != "failed" and r.data.metrics.get("best_val_loss") is not None
        ]
        row.update(
            status=parent.data.tags.get("status", "running"),
            trials=len(runs),
            target=state["config"]["budget"]["num_samples"],
            done=sum(states[s] for s in ("completed", "early_stopped", "pruned", "failed")),
            running=states["running"],
            pruned=states["pruned"],
            failed=states["failed"],
            best_val_loss=min(losses) if losses else None,
        )
        rows.append(row)
    return rows


def study_storage(storage_path: str | None, name: str) -> str:
    """The Optuna storage URL of the search `name` (its optuna.db beside Ray's state)."""
    root = searches_root(storage_path)
    from search.tuner import study_url

    if not (root / name / STATE_FILE).is_file():
        raise SearchError(f"name: no search named {name!r} under {root} (see vaesearch searches)")
    return study_url(root / name)
