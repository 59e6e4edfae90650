"""The one place the search talks to MLflow: experiments, parent and child runs, metrics, tags, artifacts.

Writes go through `Sender`, a background thread that retries with back-off,
so a slow or briefly absent server never stalls training. Metric steps are
sent only where MLflow lacks them, so retries and resumes never log an epoch twice.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from search.environment import PATIENCE
from vae.records import (
    KIND,
    METRICS,
    PARENT_TAG,
    RANKED_BY,
    SEARCH_TAG,
    TRIAL_ID,
    EndState,
    epoch_rows,
)


def patience_s() -> float:
    """How long a write keeps retrying an absent server before it gives up (and is counted lost)."""
    return float(os.environ.get(PATIENCE, "600"))


class Outage:
    """Since when the server has not answered; shared by the writes of one `Sender`, so patience is per outage."""

    def __init__(self) -> None:
        self.since: float | None = None


def patiently(
    call: Callable[[], Any], what: str, give_up_after: float | None = None, outage: Outage | None = None
) -> Any:
    """Call until the server answers, backing off from 0.5 s to 15 s; give up once it has been away too long.

    The one retry loop of the search: a trial that starts while the server is away
    waits here, and `Sender` sends every queued write through it.
    """
    give_up_after = patience_s() if give_up_after is None else give_up_after
    outage = Outage() if outage is None else outage
    delay = 0.5
    while True:
        try:
            result = call()
            outage.since = None
            return result
        except Exception as e:  # the server is slow or gone: back off and retry
            now = time.monotonic()
            outage.since = outage.since or now
            if now - outage.since > give_up_after:
                raise RuntimeError(f"MLflow did not answer for {give_up_after:.0f} s ({what}): {e}") from e
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


_STOP: tuple[str, Callable[[], None]] = ("stop", lambda: None)  # the item that ends a Sender's thread


class Sender:
    """A queue of MLflow writes done in order by one thread, each retried until it lands or time runs out.

    The patience is per outage, not per write: once the server has been away
    for `give_up_after` seconds, every queued write fails at once until one lands.
    """

    def __init__(self, name: str, give_up_after: float | None = None) -> None:
        self._queue: queue.Queue[tuple[str, Callable[[], None]]] = queue.Queue()
        self._pending = 0  # writes submitted and not yet done (landed or given up), under _done
        self._done = threading.Condition()
        self.give_up_after = patience_s() if give_up_after is None else give_up_after
        self.lost: list[str] = []  # what was given up: the writes that never landed
        self._written_off = 0  # writes under way that abandon() counted lost, whichever way they end
        self._outage = Outage()
        self._thread = threading.Thread(target=self._loop, name=f"mlflow-{name}", daemon=True)
        self._thread.start()

    def submit(self, what: str, write: Callable[[], None]) -> None:
        with self._done:
            self._pending += 1
        self._queue.put((what, write))

    def flush(self, timeout: float) -> bool:
        """Wait until every write submitted so far landed (or was given up); False on timeout."""
        with self._done:
            return self._done.wait_for(lambda: self._pending == 0, timeout)

    @property
    def pending(self) -> int:
        """Writes submitted and not yet landed or given up."""
        with self._done:
            return self._pending

    def abandon(self) -> int:
        """Give up on every write not yet landed (their files are about to go), each counted lost; how many."""
        before = len(self.lost)
        with self._done:
            while True:
                try:
                    what, _ = self._queue.get_nowait()
                except queue.Empty:
                    break
                self.lost.append(f"{what}: not sent in time")
                self._pending -= 1
            # the one being written now (or submitted meanwhile): not confirmed, so not counted as landed
            self.lost += ["a write in progress: not confirmed in time"] * self._pending
            self._written_off, self._pending = self._written_off + self._pending, 0
            self._done.notify_all()
        return len(self.lost) - before

    def close(self) -> None:
        """End the thread once the writes submitted so far are done: a reused Ray worker runs many trials."""
        self._queue.put(_STOP)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            what, write = item
            failure = None
            try:
                patiently(write, what, self.give_up_after, self._outage)
            except RuntimeError as e:
                failure = f"{what}: {type(e.__cause__).__name__}"
            with self._done:
                if self._written_off:  # abandon() has counted this one already
                    self._written_off -= 1
                else:
                    self._pending -= 1
                    self.lost += [failure] if failure else []
                self._done.notify_all()


def tag_text(tags: dict[str, Any]) -> dict[str, str]:
    """MLflow tags are strings; dicts and lists go as JSON."""
    return {k: (v if isinstance(v, str) else json.dumps(v))[:5000] for k, v in tags.items()}


def run_status(end_state: str) -> str:
    """The MLflow status of a run that ended so: FAILED, KILLED (stopped from outside), else FINISHED."""
    statuses: dict[str, str] = {EndState.FAILED: "FAILED", EndState.KILLED: "KILLED"}
    return statuses.get(end_state, "FINISHED")


# MLflow 3's UI opens an experiment on its GenAI view unless the URL asks for the model-training one (a new
# browser profile has nothing remembered); sorted by a metric, the runs table is flat: every trial is a row.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def runs_page(tracking_uri: str, experiment_id: str) -> str:
    """The address that opens on a search's runs, best first, the parent run among them."""
    sort = f"orderByKey=metrics.%60{RANKED_BY}%60&orderByAsc=true"
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning&{sort}"


def config_key(values: dict[str, Any]) -> str:
    """A canonical text of a trial's sampled values: equal texts mean the same training."""
    return json.dumps({k: values[k] for k in sorted(values)}, sort_keys=True)


class Tracker:
    """MLflow as the driver and `searches` use it, and what the trials' tracker builds on; runs by id.

    A trial's own calls (its run, twins, images, system metrics) are `search.trial_runs.TrialTracker`;
    `vaesearch train`'s run is `search.train_runs.log_training`.
    """

    def __init__(self, tracking_uri: str) -> None:
        self.client = MlflowClient(tracking_uri)

    # -- experiments and the parent run (driver) --

    def experiment_id(self, name: str) -> str:
        """The experiment of this name, created (or restored from deletion) when needed."""
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            return self.client.create_experiment(name, tags=EXPERIMENT_KIND)
        if exp.lifecycle_stage == "deleted":
            self.client.restore_experiment(exp.experiment_id)
        for key, value in EXPERIMENT_KIND.items():
            if exp.tags.get(key) != value:
                self.client.set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id

    def start_parent(self, experiment_id: str, name: str, params: dict[str, Any], tags: dict[str, Any]) -> str:
        run = self.client.create_run(
            experiment_id, run_name=name, tags=tag_text({SEARCH_TAG: name, KIND: "search", **tags})
        )
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        return run.info.run_id

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tag_text(tags).items()])

    def delete_tag(self, run_id: str, key: str) -> None:
        """Gone from the run; a tag already gone is no error (a write retried after it landed)."""
        if key in self.client.get_run(run_id).data.tags:
            self.client.delete_tag(run_id, key)

    def children(self, experiment_id: str, parent_id: str) -> list:
        """The active child runs of a parent, every page of them."""
        runs: list[Any] = []
        token = None
        while True:
            page = self.client.search_runs([experiment_id], f"tags.`{PARENT_TAG}` = '{parent_id}'", page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def tags(self, run_id: str) -> dict[str, str]:
        return self.client.get_run(run_id).data.tags

    def trial_run(self, experiment_id: str, parent_id: str, trial_id: str) -> Any | None:
        """The run of Ray trial `trial_id` in this search, if it has one."""
        found = self.client.search_runs(
            [experiment_id], f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.{TRIAL_ID} = '{trial_id}'"
        )
        return found[0] if found else None

    def delete_run(self, run_id: str, reason: str) -> None:
        self.set_tags(run_id, {"deleted_reason": reason})
        self.client.delete_run(run_id)

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status)

    def history(self, run_id: str, keys: Iterable[str] = METRICS) -> list[dict[str, float]]:
        """Per-epoch metrics of a run, as rows {epoch, key: value}, ordered by epoch."""
        return epoch_rows(keys, lambda key: self.client.get_metric_history(run_id, key))

    def logged_steps(self, run_id: str, key: str = "val_loss") -> set[int]:
        return {m.step for m in self.client.get_metric_history(run_id, key)}

    def log_epochs(self, run_id: str, rows: list[dict[str, float]], skip: set[int] | None = None) -> list[int]:
        """Log each row's metrics at step = its epoch, leaving out steps MLflow has already."""
        skip = self.logged_steps(run_id) if skip is None else skip
        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(row[key]), now, int(row["epoch"]))
            for row in rows
            if int(row["epoch"]) not in skip
            for key in METRICS
            if key in row
        ]
        for start in range(0, len(metrics), 900):  # MLflow takes at most 1000 metrics a batch
            self.client.log_batch(run_id, metrics=metrics[start : start + 900])
        return sorted({int(r["epoch"]) for r in rows} - skip)

    def log_artifact(self, run_id: str, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)
