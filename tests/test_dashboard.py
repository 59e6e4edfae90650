"""`vaesearch dashboard` on a real Optuna study: Ctrl-C stops it even while a request is being served."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from mlflow_server import server
from search.state import STATE_FILE
from tests.helpers import REPO, ctrl_c_able


def _get(url: str, timeout: float) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read()
    except OSError:  # refused, timed out, or the 500 of a locked database
        return None


@pytest.mark.slow  # a server (the dashboard)
def test_ctrl_c_during_a_request_stops_the_dashboard(tmp_path: Path) -> None:
    folder = tmp_path / "ray" / "s"
    folder.mkdir(parents=True)
    (folder / STATE_FILE).write_text("{}")  # what marks a search's folder; the dashboard reads only the study
    optuna.create_study(storage=f"sqlite:///{folder / 'optuna.db'}", study_name="s").optimize(lambda t: 1.0, 2)
    port = server.free_port()
    cmd = [sys.executable, "-m", "search", "dashboard", "s", "--storage-path", str(tmp_path / "ray"),
           "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=ctrl_c_able
    )
    lock = sqlite3.connect(folder / "optuna.db", isolation_level=None)
    try:
        url = f"http://127.0.0.1:{port}/api/studies"
        deadline = time.monotonic() + 60
        while (answer := _get(url, 2)) is None and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
        assert answer is not None and len(json.loads(answer)["study_summaries"]) == 1, "the dashboard never answered"
        lock.execute("BEGIN EXCLUSIVE")  # the next request waits on SQLite's busy timeout: a slow page
        slow = threading.Thread(target=_get, args=(url, 30), daemon=True)
        slow.start()
        slow.join(1.5)
        assert slow.is_alive(), "the request did not wait on the locked study"
        proc.send_signal(signal.SIGINT)  # Ctrl-C while that request is in hand
        out, err = proc.communicate(timeout=30)
    finally:
        lock.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err[-2000:]
    assert out.rstrip().endswith("dashboard stopped")
