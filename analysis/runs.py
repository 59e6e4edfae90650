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

from vae import records
from vae.errors import UserError
from vae.records import DUPLICATE_OF, END_STATE, KIND, METRICS, PARENT_TAG, RANKED_BY


class AnalysisError(UserError):
    """An experiment, run or model that is not there."""


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
        return self.tags.get(DUPLICATE_OF)

    @property
    def epochs(self) -> int:
        return len(self.history)

    @property
    def best_epoch(self) -> int | None:
        finite = [r for r in self.history if _finite(r.get("val_loss"))]
        return int(min(finite, key=lambda r: r["val_loss"])["epoch"]) if finite else None

    @property
    def key(self) -> tuple[int, int, int]:
        return int(self.params["hidden"]), int(self.params["decoder"]), int(self.params["latent"])

    @property
    def rankable(self) -> bool:
        """In the ranking, as `vae.records.rankable` decides."""
        return records.rankable(self.tags, self.best_val_loss)


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
        """The search's best trial, as `vae.records.best` decides."""
        return records.best(self.trials, lambda t: t.tags, lambda t: t.best_val_loss)


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def history(client: MlflowClient, run_id: str) -> list[dict[str, float]]:
    return records.epoch_rows(METRICS, lambda key: client.get_metric_history(run_id, key))


def load_search(client: MlflowClient, experiment: str, with_history: bool = True) -> Search:
    """The latest search in an experiment (its parent run) and every trial nested under it."""
    exp = client.get_experiment_by_name(experiment)
    if exp is None or exp.lifecycle_stage != "active":
        raise AnalysisError("experiment", f"no experiment named {experiment!r} on {client.tracking_uri}")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=5000)
    parents = [r for r in runs if PARENT_TAG not in r.data.tags and r.data.tags.get(KIND) == "search"]
    if not parents:
        raise AnalysisError("experiment", f"{experiment!r} holds no search (no parent run)")
    parent = parents[0]
    trials = []
    for run in runs:
        if run.data.tags.get(PARENT_TAG) != parent.info.run_id:
            continue
        best = run.data.metrics.get(RANKED_BY, math.nan)
        trial = Trial(run.info.run_id, run.info.run_name, dict(run.data.params), dict(run.data.tags), best)
        if with_history:
            trial.history = history(client, run.info.run_id)
            finite = [r["val_loss"] for r in trial.history if _finite(r.get("val_loss"))]
            trial.best_val_loss = min(finite) if finite else math.nan
        trials.append(trial)
    return Search(exp.experiment_id, experiment, parent, trials)
