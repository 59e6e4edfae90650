"""`vaesearch server`: start, status, stop, the loopback rule, and PostgreSQL as the store."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from mlflow_server import server
from tests.helpers import assert_one_line_error, cli, run_cli, search, write_config


@pytest.mark.slow
def test_start_status_stop_on_ipv6_loopback(tmp_path: Path) -> None:
    port = str(server.free_port())
    folder = ["--data-folder", str(tmp_path / "srv")]
    started = cli("server", "start", "--host", "::1", "--port", port, *folder)
    assert started.returncode == 0, started.stderr
    try:
        status = cli("server", "status", *folder)
        assert status.returncode == 0 and f"http://[::1]:{port} healthy" in status.stdout, status.stdout
        assert "sqlite:///" in status.stdout and str(tmp_path / "srv") in status.stdout
        info = server.read_info(tmp_path / "srv")
        assert MlflowClient(info.url).search_experiments()  # MLflow's client reaches it at the bracketed URL
        again = cli("server", "start", "--port", port, *folder)  # reuses, does not start a second
        assert again.returncode == 0 and f"pid {info.pid}" in again.stdout
        taken = cli("server", "start", "--host", "::1", "--port", port, "--data-folder", str(tmp_path / "other"))
        assert_one_line_error(taken, "--port", port, "taken")
        # a running server that differs from what was asked is never passed off as it
        other_port = str(server.free_port())
        elsewhere = f"sqlite:///{tmp_path / 'elsewhere.db'}"
        for flags, field in (
            (["--port", other_port], "--port"),
            (["--host", "0.0.0.0", "--insecure"], "--host"),
            (["--backend-store-uri", elsewhere], "--backend-store-uri"),
        ):
            differs = cli("server", "start", *flags, *folder)
            assert_one_line_error(differs, field, "already running", "vaesearch server stop", "--data-folder")
        unsafe = cli("server", "start", "--host", "0.0.0.0", "--port", other_port, "--backend-store-uri", elsewhere,
                     *folder)  # fmt: skip
        assert_one_line_error(unsafe, "--host", "--insecure", "--auth")  # refused as a new server would be
        assert not (tmp_path / "elsewhere.db").exists() and not server.health(f"http://127.0.0.1:{other_port}")
    finally:
        stopped = cli("server", "stop", *folder)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not server.health(info.url)
    with pytest.raises(ProcessLookupError):
        os.killpg(info.pid, 0)  # the whole group, workers included, is gone
    none = cli("server", "stop", *folder)
    assert none.returncode == 0 and "no server running" in none.stdout


def test_stop_never_signals_a_process_that_now_holds_the_recorded_pid(tmp_path: Path) -> None:
    """After a reboot or a crash the pid file's PID may be anyone's: stop checks it is the server it started."""
    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        folder = tmp_path / "srv"
        folder.mkdir()
        record = server.ServerInfo(other.pid, "http://127.0.0.1:5999", "127.0.0.1", 5999, "sqlite:///x", "x")
        (folder / server.PID_FILE).write_text(json.dumps(dataclasses.asdict(record)))
        proc = cli("server", "stop", "--data-folder", str(folder))
        assert_one_line_error(proc, "--data-folder", f"pid {other.pid}", "sleep 60", "nothing was signalled")
        assert other.poll() is None and (folder / server.PID_FILE).exists()
        assert cli("server", "status", "--data-folder", str(folder)).returncode == 1  # not reported as running
    finally:
        other.kill()
        other.wait()


def test_stop_knows_its_server_by_command_not_by_a_start_time_the_clock_moved(tmp_path: Path) -> None:
    """Linux's boot time moves in whole seconds when the clock is stepped, and a start time read again with it:
    a server whose start reads a second off is still stopped; an MLflow server of another store or port never is."""
    folder = tmp_path / "srv"
    folder.mkdir()
    store, port = f"sqlite:///{folder / 'mlflow.db'}", "5998"
    # a sleeping Python whose command line is the one `_launch` gives (argv after -c is the script's own)
    fake = [sys.executable, "-c", "import time; time.sleep(60)", "mlflow", "server", "--backend-store-uri"]
    ours = subprocess.Popen([*fake, store, "--port", port], start_new_session=True)
    other = subprocess.Popen([*fake, "sqlite:///elsewhere.db", "--port", port], start_new_session=True)
    third = subprocess.Popen([*fake, store, "--port", "5997"], start_new_session=True)
    try:
        for proc, started_off_by in ((other, 0.0), (third, 0.0), (ours, 1.0)):
            started = psutil.Process(proc.pid).create_time() + started_off_by
            record = server.ServerInfo(proc.pid, f"http://127.0.0.1:{port}", "127.0.0.1", int(port), store, "x",
                                       started=started)  # fmt: skip
            (folder / server.PID_FILE).write_text(json.dumps(dataclasses.asdict(record)))
            if proc is not ours:
                with pytest.raises(server.ServerError, match="nothing was signalled"):
                    server.stop(folder)
                assert proc.poll() is None
            else:
                assert server.stop(folder) == record
                assert not psutil.pid_exists(ours.pid) and not (folder / server.PID_FILE).exists()  # stop reaped it
    finally:
        for proc in (ours, other, third):
            proc.kill()
            proc.wait()


def test_port_checks_and_urls_speak_ipv6() -> None:
    with socket.socket(socket.AF_INET6) as listening:
        listening.bind(("::1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert server.port_in_use("::1", port) and server.url_of("::1", port) == f"http://[::1]:{port}"
    assert not server.port_in_use("::1", port)
    assert server.url_of("0.0.0.0", 5000) == "http://127.0.0.1:5000" and server.url_of("::", 80) == "http://[::1]:80"


def test_a_non_loopback_bind_is_refused_without_auth_or_insecure(tmp_path: Path) -> None:
    proc = cli("server", "start", "--host", "0.0.0.0", "--port", str(server.free_port()),
               "--data-folder", str(tmp_path / "srv"))  # fmt: skip
    assert_one_line_error(proc, "--host", "--insecure", "--auth")
    assert not (tmp_path / "srv").exists()
    proc = cli("server", "start", "--host", "0.0.0.0", "--auth", "--port", str(server.free_port()),
               "--data-folder", str(tmp_path / "srv"), env={"MLFLOW_AUTH_ADMIN_PASSWORD": None})  # fmt: skip
    assert_one_line_error(proc, "MLFLOW_AUTH_ADMIN_PASSWORD")


@pytest.mark.slow
def test_basic_auth_server_needs_credentials(tmp_path: Path) -> None:
    port = server.free_port()
    folder = tmp_path / "srv"
    password = uuid.uuid4().hex
    os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"] = password
    try:
        info = server.start(folder, host="127.0.0.1", port=port, auth=True)
    finally:
        del os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"]
    try:
        assert (folder / "basic_auth.db").exists()  # at an absolute path in the data folder
        assert password not in (folder / "basic_auth.ini").read_text()
        with pytest.raises(Exception, match="401|Unauthorized|credentials"):
            MlflowClient(info.url).search_experiments()
        os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=password)
        try:
            assert MlflowClient(info.url).search_experiments() is not None
        finally:
            del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]
    finally:
        server.stop(folder)


@pytest.mark.slow
def test_eight_concurrent_trials_land_every_metric_point_on_postgresql(
    pg_database: str, ray_head: str, tmp_path: Path
) -> None:
    folder = tmp_path / "srv"
    info = server.start(folder, backend_store_uri=pg_database, port=server.free_port())
    try:
        config = write_config(
            tmp_path / "eight.yaml",
            space={"hidden": [8, 16, 24, 32], "decoder": [1], "latent": [2, 3]},
            budget={"num_samples": 8, "max_epochs": 2, "max_concurrent": 8},
            asha={"grace_period": 2, "reduction_factor": 2},  # no stops: every trial reports both epochs
            resources={"cpus": 0.25},
            data={"subset": 256, "val_subset": 128},
            points=[{"hidden": h, "decoder": 1, "latent": z} for h in (8, 16, 24, 32) for z in (2, 3)],  # no replay
        )
        proc = search(config, "eight", info.url, tmp_path / "ray", address=ray_head)
        assert proc.returncode == 0, proc.stderr[-3000:]
        client = MlflowClient(info.url)
        runs = client.search_runs([client.get_experiment_by_name("eight").experiment_id])
        assert len(runs) == 9  # the parent and eight trials, as the server reads them back
        kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        assert all(len(client.get_metric_history(r.info.run_id, "val_loss")) == 2 for r in kids)
    finally:
        server.stop(folder)
    import psycopg

    from vae.records import METRICS

    with psycopg.connect(pg_database) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs")
        assert cur.fetchone()[0] == 9  # the rows are in PostgreSQL, not in a SQLite file
        cur.execute("SELECT run_uuid FROM tags WHERE key = 'ray_trial_id'")
        kids = [row[0] for row in cur.fetchall()]
        assert len(kids) == 8
        cur.execute(
            "SELECT run_uuid, key, step, count(*) FROM metrics WHERE run_uuid = ANY(%s) GROUP BY 1, 2, 3", (kids,)
        )
        points = cur.fetchall()
    assert all(n == 1 for *_, n in points)  # none twice (system metrics included)
    assert {(run, key, step) for run, key, step, _ in points if not key.startswith("system/")} == {
        (r, k, s) for r in kids for k in METRICS for s in (1, 2)
    }


@pytest.mark.slow
def test_a_search_on_an_auth_server_hands_trials_credentials_by_environment(ray_head: str, tmp_path: Path) -> None:
    folder, password = tmp_path / "srv", uuid.uuid4().hex
    os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"] = password
    try:
        info = server.start(folder, port=server.free_port(), auth=True)
    finally:
        del os.environ["MLFLOW_AUTH_ADMIN_PASSWORD"]
    creds = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": password}
    try:
        config = write_config(tmp_path / "auth.yaml", budget={"num_samples": 2, "max_epochs": 1, "max_concurrent": 2})
        proc = run_cli("search", "--config", str(config), "--name", "auth", "--tracking-uri", info.url,
                       "--storage-path", str(tmp_path / "ray"), "--address", ray_head, env=creds)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        os.environ.update(creds)
        try:
            client = MlflowClient(info.url)
            runs = client.search_runs([client.get_experiment_by_name("auth").experiment_id])
        finally:
            for key in creds:
                del os.environ[key]
        kids = [r for r in runs if "ray_trial_id" in r.data.tags]
        assert len(kids) == 2 and all(r.data.tags["end_state"] == "completed" for r in kids)
        for run in runs:  # the password is in no param and no tag
            assert password not in repr(run.data.params) and password not in repr(run.data.tags)
    finally:
        server.stop(folder)
