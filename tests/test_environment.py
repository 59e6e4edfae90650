"""Nothing is sent anywhere by default: MLflow's telemetry and Ray's usage stats are off unless the user opts in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlflow_server import server
from search import environment
from tests.helpers import REPO

USAGE = ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "RAY_USAGE_STATS_ENABLED")
# Variables by which MLflow guesses it runs in CI or under pytest, and then sends nothing by itself.
CI_HINTS = ("CI", "PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "GITLAB_CI", "JENKINS_URL", "BUILDKITE", "TF_BUILD")


def as_a_user(**extra: str) -> dict[str, str]:
    """This environment as a user's shell would have it: no CI hints, none of the usage settings."""
    env = {k: v for k, v in os.environ.items() if k not in (*USAGE, *CI_HINTS, environment.OPT_IN)}
    return {**env, **extra}


def test_a_command_turns_usage_data_off_before_mlflow_reads_it(tmp_path: Path) -> None:
    code = (
        "import json, os, sys; from search.cli import main; "
        f"assert main(['searches', '--storage-path', {str(tmp_path)!r}]) == 0; "
        "from mlflow.telemetry.client import get_telemetry_client; "  # made (or not) when mlflow was imported
        f"env = {{k: os.environ.get(k) for k in {USAGE!r}}}; "
        "print(json.dumps({'env': env, 'off': get_telemetry_client() is None}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=as_a_user(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.splitlines()[-1])
    assert seen == {"env": {**environment.USAGE_DATA_OFF}, "off": True}


@pytest.mark.parametrize("opt_in", ["on", "1"])
def test_one_setting_opts_in_and_a_users_own_values_are_kept(monkeypatch: pytest.MonkeyPatch, opt_in: str) -> None:
    for name in (*USAGE, environment.OPT_IN):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DO_NOT_TRACK", "false")  # the user's own word stands
    environment.configure()
    assert [os.environ.get(n) for n in USAGE] == ["true", "false", "0"]
    for name in USAGE:
        monkeypatch.delenv(name)
    monkeypatch.setenv(environment.OPT_IN, opt_in)
    environment.configure()
    assert [os.environ.get(n) for n in USAGE] == [None, None, None]


@pytest.mark.slow
def test_the_server_runs_with_usage_data_off(mlflow_folder: Path) -> None:
    """The suite's server, started as `main` starts one: after `environment.configure` (conftest.py)."""
    info = server.read_info(mlflow_folder)
    assert info is not None
    held = dict(line.split("=", 1) for line in Path(f"/proc/{info.pid}/environ").read_text().split("\0") if "=" in line)
    assert {k: held.get(k) for k in USAGE} == environment.USAGE_DATA_OFF


def test_every_trial_gets_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*USAGE, environment.OPT_IN):
        monkeypatch.delenv(name, raising=False)
    environment.configure(local_ray=False)
    trials = environment.for_trials()  # what Ray's runtime environment carries to trials on other nodes
    assert trials["MLFLOW_DISABLE_TELEMETRY"] == "true" and trials["DO_NOT_TRACK"] == "true"
    assert trials["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "1"
