"""A search read back from MLflow, the one source of truth: its parent run, its trials and their curves.

Nothing here reads Ray's folders; a search on a cluster is analysed from the
tracking server alone.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from mlflow.tracking import MlflowClient

from analysis.errors import AnalysisError

# Names the search writes (search/tracking.py); analysis reads them, it does not import search.
PARENT_TAG = "mlflow.parentRunId"
END_STATE = "end_state"
CURVES = ("train_loss", "val_loss", "best_val_loss", "val_recon", "val_kl", "train_kl", "epoch_seconds")


@dataclass
class Trial:
    run_id: str
    name: str
    params: dict[str, Any]
    tags: dict[str, str]
    best_val_loss: float
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def end_state(self) -> str:
        return self.tags.get(END_STATE, "running")

    @property
    def duplicate_of(self) -> str | None:
        return self.tags.get("duplicate_of")

    @property
    def epochs(self) -> int:
        return len(self.history)

    @property
    def best_epoch(self) -> int | None:
        finite = [r for r in self.history if _finite(r.get("val_loss"))]
        return min(finite, key=lambda r: r["val_loss"])["epoch"] if finite else None

    @property
    def key(self) -> tuple[int, int, int]:
        return int(self.params["hidden"]), int(self.params["decoder"]), int(self.params["latent"])

    @property
    def rankable(self) -> bool:
        """In the ranking: not failed, not a replay of another trial, a finite best loss."""
        return self.end_state != "failed" and not self.duplicate_of and _finite(self.best_val_loss)


@dataclass
class Search:
    experiment_id: str
    name: str
    parent: Any
    trials: list[Trial]

    @property
    def config(self) -> dict[str, Any]:
        return json.loads(self.parent.data.params.get("config", "{}"))

    def best(self) -> Trial | None:
        """The lowest validation loss of any trial at any epoch (the seed's criterion), failed trials out."""
        ranked = [t for t in self.trials if t.rankable]
        return min(ranked, key=lambda t: t.best_val_loss) if ranked else None


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def history(client: MlflowClient, run_id: str) -> list[dict[str, float]]:
    rows: dict[int, dict[str, float]] = {}
    for key in CURVES:
        for m in client.get_metric_history(run_id, key):
            rows.setdefault(m.step, {"epoch": m.step})[key] = m.value
    return [rows[e] for e in sorted(rows)]


def load_search(client: MlflowClient, experiment: str, with_history: bool = True) -> Search:
    """The latest search in an experiment (its parent run) and every trial nested under it."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage != "active":
        raise AnalysisError(f"--experiment: no experiment named {experiment!r} on {client.tracking_uri}")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=5000)
    parents = [r for r in runs if PARENT_TAG not in r.data.tags and r.data.tags.get("kind") == "search"]
    if not parents:
        raise AnalysisError(f"--experiment: {experiment!r} holds no search (no parent run)")
    parent = parents[0]
    trials = []
    for run in runs:
        if run.data.tags.get(PARENT_TAG) != parent.info.run_id:
            continue
        best = run.data.metrics.get("best_val_loss", math.nan)
        trial = Trial(run.info.run_id, run.info.run_name, dict(run.data.params), dict(run.data.tags), best)
        if with_history:
            trial.history = history(client, run.info.run_id)
            finite = [r["val_loss"] for r in trial.history if _finite(r.get("val_loss"))]
            trial.best_val_loss = min(finite) if finite else math.nan
        trials.append(trial)
    return Search(exp.experiment_id, experiment, parent, trials)
