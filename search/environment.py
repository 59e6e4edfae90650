"""The process environment vaesearch runs in: set once, by `main`, before a library reads it.

MLflow reads its variables per request and its telemetry switch at import, Ray
reads its own at `ray.init`, and a local Ray's workers inherit the driver's
environment; trials on other nodes get what they need through Ray's runtime
environment (`for_trials`). A variable the user has set is left as it is.
"""

from __future__ import annotations

import os

CREDENTIALS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
PATIENCE = "VAESEARCH_MLFLOW_PATIENCE_S"  # how long a write retries an absent server (search.tracking)
OPT_IN = "VAESEARCH_USAGE_DATA"  # "on": leave MLflow's and Ray's usage reporting at their own defaults

# Searches run on private data and clusters: nothing is sent anywhere unless the user opts in.
USAGE_DATA_OFF = {
    "MLFLOW_DISABLE_TELEMETRY": "true",  # MLflow's client, its server and the UI's events
    "DO_NOT_TRACK": "true",  # the cross-tool convention, which MLflow also reads
    "RAY_USAGE_STATS_ENABLED": "0",  # Ray's usage stats from a Ray this process starts
}

# Where search.tracking does the patient retrying (a search, its trials, `searches`, `train`'s log), each
# MLflow request fails fast; other commands keep MLflow's own retries (a promotion's upload on a slow link).
FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
RETRYING = ("search", "searches", "train")

DEFAULTS = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Ray's result files without TensorBoard's: MLflow is the record (and TBX complains of a failure's inf).
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
}

# What a trial reads of the driver's environment, which a worker node's own would not have.
# An object-store storage_path (s3://) is written from every node (trials upload their checkpoints): its
# endpoint and credentials, as pyarrow and the AWS libraries read them, go along too.
OBJECT_STORE = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED")  # fmt: skip
FOR_TRIALS = (*CREDENTIALS, PATIENCE, "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT",
              "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", *OBJECT_STORE)  # fmt: skip


def usage_data_off() -> dict[str, str]:
    """The settings that turn usage reporting off; none when the user opted in."""
    opted_in = os.environ.get(OPT_IN, "").strip().lower() in ("1", "on", "true", "yes")
    return {} if opted_in else dict(USAGE_DATA_OFF)


def configure(command: str = "search", local_ray: bool = True, verbose: bool = False) -> None:
    """The one place vaesearch writes os.environ: its defaults for `command`, under whatever the user set."""
    wanted = {**DEFAULTS, **usage_data_off(), **(FAIL_FAST if command in RETRYING else {})}
    if local_ray:  # Ray 2.60 turns token auth on by itself when a token file exists; a local Ray needs none
        wanted["RAY_AUTH_MODE"] = "disabled"
    if not verbose:  # Ray's new console prints its banner even at verbose=0; the legacy one stays quiet
        wanted["RAY_AIR_NEW_OUTPUT"] = "0"
    for name, value in wanted.items():
        os.environ.setdefault(name, value)


def for_trials() -> dict[str, str]:
    """The driver's settings and credentials that trials on every node need, for Ray's runtime environment."""
    return {name: os.environ[name] for name in FOR_TRIALS if name in os.environ}
