"""Shared fixtures: one verified MNIST copy, one MLflow server and one Ray head per test session.

Every process the suite starts carries its mark in its environment; whatever ends the
session (its end, Ctrl-C, SIGTERM from `make` or a CI time-out) stops them all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from mlflow_server.server import free_port
from search import environment
from tests.helpers import (
    BUCKET,
    KEY,
    MARK,
    SECRET,
    processes_with,
    promote,
    ray_current,
    ray_start,
    search,
    stop_cluster,
    stop_until_none,
    write_config,
)
from vae import data

PG = "postgresql://postgres@127.0.0.1:5432"  # the machine's PostgreSQL, trust auth (pg_database)

os.environ["RAY_AUTH_MODE"] = "disabled"  # the suite's Ray head and the searches that join it agree
environment.configure(local_ray=False)  # as `main` does: in-process tests run as the command would
os.environ[MARK] = uuid.uuid4().hex  # last: see tests/test_cleanup.py


def _marked_processes() -> list[int]:
    return processes_with(MARK, os.environ[MARK])


def _stop_everything_marked() -> None:
    if Path("/proc").is_dir():
        stop_until_none(_marked_processes, grace=5)


def _stopped_from_outside(signum: int, frame: object) -> None:
    """SIGTERM or SIGHUP (GNU make passes its SIGTERM on to pytest): stop what the suite started, then die of it."""
    _stop_everything_marked()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def pytest_configure(config: pytest.Config) -> None:
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _stopped_from_outside)


SERVERS = {"mlflow_url", "mlflow_folder", "own_server", "ray_head", "finished", "promoted", "two_nodes", "pg_database",
           "s3"}  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`make fast` (-m "not slow") starts no server and no Ray: a test that asks for one must be marked slow."""
    unmarked = [
        i.nodeid for i in items if SERVERS & set(getattr(i, "fixturenames", ())) and not i.get_closest_marker("slow")
    ]
    if unmarked:
        raise pytest.UsageError("these start a server or Ray but are not marked slow: " + ", ".join(unmarked))


def pytest_unconfigure(config: pytest.Config) -> None:
    """The last word however the session ended (Ctrl-C skips fixtures' teardown): nothing of ours runs on."""
    _stop_everything_marked()


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


@pytest.fixture
def pg_database():
    """A database of its own on the machine's PostgreSQL, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    try:
        admin = psycopg.connect(f"{PG}/test", connect_timeout=5, autocommit=True)
    except psycopg.OperationalError as e:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL does not answer on 127.0.0.1:5432 under CI: {e}")
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432 ({str(e).strip()})")
    name = f"vaesearch_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(f"CREATE DATABASE {name}")
    yield f"{PG}/{name}"
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory):
    """SeaweedFS's server with its S3 gateway and one bucket; the AWS_* settings that reach it. It ignores
    SIGTERM, so it is killed after."""
    from pyarrow import fs

    folder = tmp_path_factory.mktemp("seaweedfs")
    identities = [{"name": "vaesearch", "credentials": [{"accessKey": KEY, "secretKey": SECRET}],
                   "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]  # fmt: skip
    (folder / "s3.json").write_text(json.dumps({"identities": identities}))
    ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
    grpc = {name: free_port() for name in ports}
    weed = str(Path(sys.executable).with_name("weed"))
    cmd = [weed, "server", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3", "-volume.max=32",
           f"-s3.config={folder / 's3.json'}", "-master.telemetry=false", "-s3.port.iceberg=0",
           "-master.volumeSizeLimitMB=64",  # small volumes, plenty of them: each collection grows several
           *(f"-{n}.port={p}" for n, p in ports.items()),
           *(f"-{n}.port.grpc={p}" for n, p in grpc.items())]  # fmt: skip
    log = (folder / "weed.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{ports['s3']}", "AWS_ACCESS_KEY_ID": KEY,
           "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
    try:
        store = fs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key=KEY, secret_key=SECRET,
                                allow_bucket_creation=True)  # fmt: skip
        deadline = time.monotonic() + 90
        while True:
            try:
                store.create_dir(BUCKET)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(1)
        yield env
    finally:
        proc.kill()
        proc.wait()
        log.close()


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
def mlflow_folder(tmp_path_factory: pytest.TempPathFactory):
    """One real MLflow server over HTTP for the whole test session, stopped at its end: its data folder."""
    from mlflow_server import server

    folder = tmp_path_factory.mktemp("mlflow")
    info = server.start(folder, port=server.free_port())
    yield folder
    try:
        server.stop(folder)
    except server.ServerError as e:  # say what `stop` saw, and stop the suite's own server all the same
        import psutil

        if info.pid in _marked_processes():
            os.killpg(info.pid, signal.SIGKILL)
        pytest.fail(f"{e} (recorded start {info.started}, boot time now {psutil.boot_time()})")


@pytest.fixture(scope="session")
def mlflow_url(mlflow_folder: Path) -> str:
    from mlflow_server import server

    info = server.read_info(mlflow_folder)
    assert info is not None
    return info.url


@pytest.fixture(scope="session")
def ray_head() -> str:
    """One Ray head (2 CPUs) that the suite's searches join with --address, instead of each starting its own.

    Tests about Ray's own processes (a search's own local Ray, two nodes, a killed driver) start their own.
    """
    cluster = uuid.uuid4().hex
    env = {**os.environ, "VAESEARCH_TEST_CLUSTER": cluster}  # last: see tests/test_cleanup.py
    before = ray_current()
    address = ray_start(env, num_cpus=2)
    yield address
    stop_cluster(cluster, address, before)


@pytest.fixture(scope="session")
def finished(mlflow_url: str, ray_head: str, tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> dict:
    """One tiny search, run once for the tests below: 6 trials over 2 configs, so duplicates happen."""
    tmp = tmp_path_factory.mktemp("search")
    config = write_config(tmp / "tiny.yaml")
    proc = search(config, "e2e", mlflow_url, tmp / "ray", address=ray_head)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    ui = [line.removeprefix("MLflow UI: ") for line in lines if line.startswith("MLflow UI: ")]
    return {"storage": tmp / "ray", "summary": json.loads(lines[-1]), "ui": ui}


@pytest.fixture(scope="session")
def promoted(finished: dict, mlflow_url: str) -> dict:
    return promote(mlflow_url)
