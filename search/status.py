"""`vaesearch searches`: every search under a storage path, with its trials' states read from MLflow."""

from __future__ import annotations

from collections import Counter
from typing import Any

from search.config import SearchError
from search.state import saved_searches, searches_root
from search.tracking import Tracker
from vae import records
from vae.records import END_STATE, ENDED, RANKED_BY, EndState


def list_searches(storage_path: str | None, tracking_uri: str | None) -> list[dict[str, Any]]:
    root = searches_root(storage_path)
    if storage_path and not root.is_remote and not root.path.is_dir():
        raise SearchError("storage_path", f"{root} is not a folder")
    why = root.reachable()
    if why:
        raise SearchError("storage_path", f"cannot read {root}: {why}")
    rows = []
    for state in saved_searches(root):
        row: dict[str, Any] = {"name": state.name, "created": state.created}
        tracker = Tracker(tracking_uri or state.tracking_uri)
        try:
            runs = tracker.children(state.experiment_id, state.parent_run_id)
            parent_tags = tracker.tags(state.parent_run_id)
        except Exception as e:  # one unreachable server should not hide the other searches
            row["status"] = f"tracking server unreachable ({type(e).__name__})"
            rows.append(row)
            continue
        states = Counter(r.data.tags.get(END_STATE, "running") for r in runs)
        best = records.best(runs, lambda r: r.data.tags, lambda r: r.data.metrics.get(RANKED_BY))
        row.update(
            status=parent_tags.get("status", "running"),
            trials=len(runs),
            target=state.config["budget"]["num_samples"],
            done=sum(states[s] for s in ENDED),
            running=states["running"],
            pruned=states[EndState.PRUNED],
            failed=states[EndState.FAILED],
            best_val_loss=best.data.metrics[RANKED_BY] if best else None,
        )
        rows.append(row)
    return rows
