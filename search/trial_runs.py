"""MLflow as a trial uses it: its own run, a twin to replay, sample grids, system metrics.

A trial finds (or creates) its child run by its Ray trial id, so a retry or a
resume continues the same run; the driver's writes are `search.tracking.Tracker`'s.
"""

from __future__ import annotations

import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from mlflow.entities import Param

from search.tracking import Tracker, config_key, tag_text
from vae.records import (
    CONFIG_KEY,
    DUPLICATE_OF,
    END_STATE,
    ERROR_TYPE,
    PARENT_TAG,
    REPLAYABLE_STATES,
    TRIAL_ID,
)


def image_stem(key: str, step: int, timestamp_ms: int, unique: str) -> str:
    """The name MLflow's UI parses an image's key, step and time from: `key%step%S%timestamp%T%ID`.

    The server URL-decodes an artifact path until it stops changing before it checks it, and
    stores it under the decoded name: a `%` followed by two hex digits is read as an escape, so
    step 23 (`%23`, "#") is refused and an id starting `2f` ("/") lands in a folder. Each field
    after a `%` therefore starts with `00`: `%00` decodes to NUL, which the server escapes back
    to the same `%00` (a `0N` prefix would not do: `%09` is a tab, which URL parsing drops),
    and the UI's parseInt reads `0023` as 23.
    """
    return f"{key}%step%00{step}%timestamp%00{timestamp_ms}%00{unique}"


class TrialTracker(Tracker):
    """The calls only a trial makes; each names its run by id."""

    def child_run(
        self, experiment_id: str, parent_id: str, trial_id: str, trial_name: str, params: dict, tags: dict
    ) -> str:
        """This trial's run: found by its Ray trial id (a retry or resume continues it), else created."""
        run = self.trial_run(experiment_id, parent_id, trial_id)
        if run is not None:
            self.set_tags(run.info.run_id, tags)  # a retry may run on another node
        else:
            run = self.client.create_run(
                experiment_id,
                run_name=trial_name,
                tags={PARENT_TAG: parent_id, TRIAL_ID: trial_id, CONFIG_KEY: config_key(params), **tag_text(tags)},
            )
        self.log_params(run.info.run_id, params, held=run.data.params)  # both paths: a retried creation lost them
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any], held: dict[str, str] | None = None) -> None:
        """Log the params a run lacks; one it holds with another value (a retry elsewhere) becomes a tag."""
        held = self.client.get_run(run_id).data.params if held is None else held
        new = [Param(k, str(v)) for k, v in params.items() if k not in held]
        changed = {f"{k}_on_retry": v for k, v in params.items() if k in held and held[k] != str(v)}
        if new:
            self.client.log_batch(run_id, params=new)
        if changed:
            self.set_tags(run_id, changed)

    def finished_twin(self, experiment_id: str, parent_id: str, key: str, exclude: str) -> Any | None:
        """A run of this search with the same sampled values that ended with a history to replay, if any.

        A twin whose training raised (rather than diverged) is no answer: its config is trained again.
        """
        runs = self.client.search_runs(
            [experiment_id], f"tags.`{PARENT_TAG}` = '{parent_id}' and tags.{CONFIG_KEY} = '{key}'"
        )
        for run in runs:
            tags = run.data.tags
            if run.info.run_id == exclude or DUPLICATE_OF in tags or ERROR_TYPE in tags:
                continue
            if tags.get(END_STATE) in REPLAYABLE_STATES and run.data.metrics.get("val_loss") is not None:
                return run
        return None

    def system_metrics(self, run_id: str, interval_s: float, resumed: bool) -> Any:
        """MLflow's system-metrics sampler (CPU, memory, disk, network, GPU where present) on a run, started.

        Call `finish()` on what it returns. A resumed trial continues its steps.
        """
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            run_id, sampling_interval=interval_s, resume_logging=resumed, tracking_uri=self.client.tracking_uri
        )
        monitor.start()
        return monitor

    def log_image(self, run_id: str, pixels: Any, key: str, step: int) -> None:
        """An image under `key` at `step`: the run page shows each key with a step slider.

        Written as `MlflowClient.log_image(key=, step=)` writes it (a PNG, a compressed
        WEBP the UI displays, the `mlflow.loggedImages` tag), but with the `%`-separated
        names the UI also reads: MLflow 3.17's client names them with `+`, which its UI
        requests unescaped, so the server reads a space and answers 404 ("No image
        logged at this step", seen in Chromium).
        """
        from mlflow.tracking.multimedia import compress_image_size
        from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_IMAGES
        from PIL import Image

        image = Image.fromarray(pixels)
        stem = image_stem(key, step, int(time.time() * 1000), uuid.uuid4().hex)
        with tempfile.TemporaryDirectory() as folder:
            image.save(Path(folder) / f"{stem}.png")
            compress_image_size(image).save(Path(folder) / f"{stem}%compressed.webp")
            self.client.log_artifacts(run_id, folder, "images")
        self.client.set_tag(run_id, MLFLOW_LOGGED_IMAGES, "True")
