"""A suite stopped from outside (SIGTERM from `make` or a CI time-out, Ctrl-C) leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.helpers import REPO, ctrl_c_able, processes_with, stop_processes

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_pytest_leaves_no_server_and_no_ray(signum: int, tmp_path: Path) -> None:
    probe, ready = uuid.uuid4().hex, tmp_path / "ready"
    # every process the inner pytest starts inherits the probe, whatever mark its own conftest gives them;
    # last in the environment, where Ray's agents, whose process titles overwrite its start, still show it
    env = {**os.environ, "VAESEARCH_TEST_READY": str(ready), "VAESEARCH_TEST_PROBE": probe}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/held_session.py"]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=ctrl_c_able
    )
    try:
        deadline = time.monotonic() + 240
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert ready.exists(), f"the inner suite never got going: {proc.poll()}"
        held = processes_with("VAESEARCH_TEST_PROBE", probe)
        assert len(held) >= 4, held  # pytest's server (with its workers) and Ray's head processes
        proc.send_signal(signum)
        out, _ = proc.communicate(timeout=90)
        deadline = time.monotonic() + 15  # what was SIGKILLed may take a moment to be reaped
        while (left := processes_with("VAESEARCH_TEST_PROBE", probe)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert left == [], ([Path(f"/proc/{p}/cmdline").read_bytes()[:200] for p in left], out[-2000:])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        stop_processes(processes_with("VAESEARCH_TEST_PROBE", probe), grace=2)
