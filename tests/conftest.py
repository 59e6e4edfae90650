"""Shared fixtures: one verified MNIST copy per test session, small real subsets."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import MARK, processes_with, promote, search, write_config
from vae import data

os.environ[MARK] = uuid.uuid4().hex


def _marked_processes() -> list[int]:
    return processes_with(MARK, os.environ[MARK])


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind():
    """After the suite (and its servers' own teardown), no process it started may still run."""
    yield
    if not Path("/proc").is_dir():
        return
    deadline = time.monotonic() + 30  # Ray's and MLflow's processes take a moment to wind down
    while (left := _marked_processes()) and time.monotonic() < deadline:
        time.sleep(1)
    if left:
        names = []
        for pid in left:
            try:
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120]
                names.append(f"{pid} {command.decode(errors='replace')}")
                os.kill(pid, signal.SIGKILL)
            except OSError:
                continue
        if names:
            pytest.fail("processes the suite started were still running (now killed):\n" + "\n".join(names))


@pytest.fixture
def own_server(tmp_path: Path):
    """A tracking server of the test's own (for tests that stop and restart it), stopped however the test ends."""
    from mlflow_server import server

    folder, port = tmp_path / "srv", server.free_port()
    info = server.start(folder, port=port)
    yield folder, port, info
    server.stop(folder)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The user's MNIST cache (prepared once; later sessions reuse it)."""
    path = data.default_data_dir()
    data.prepare(path, log=lambda m: None)
    return path


@pytest.fixture(scope="session")
def splits(mnist_dir: Path) -> dict[str, data.Split]:
    return data.load(mnist_dir)


@pytest.fixture(scope="session")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory):
    """One real MLflow server over HTTP for the whole test session, stopped at its end."""
    from mlflow_server import server

    folder = tmp_path_factory.mktemp("mlflow")
    info = server.start(folder, port=server.free_port())
    yield info.url
    server.stop(folder)


@pytest.fixture(scope="session")
def finished(mlflow_url: str, tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> dict:
    """One tiny search, run once for the tests below: 6 trials over 2 configs, so duplicates happen."""
    tmp = tmp_path_factory.mktemp("search")
    config = write_config(tmp / "tiny.yaml")
    proc = search(config, "e2e", mlflow_url, tmp / "ray")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"storage": tmp / "ray", "summary": json.loads(proc.stdout.strip().splitlines()[-1])}


@pytest.fixture(scope="session")
def promoted(finished: dict, mlflow_url: str) -> dict:
    return promote(mlflow_url)
