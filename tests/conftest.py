"""Shared fixtures: one verified MNIST copy per test session, small real subsets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from vae import data

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The user's MNIST cache (prepared once; later sessions reuse it)."""
    path = data.default_data_dir()
    data.prepare(path, log=lambda m: None)
    return path


@pytest.fixture(scope="session")
def splits(mnist_dir: Path) -> dict[str, data.Split]:
    return data.load(mnist_dir)


def run_cli(
    *args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run `vaesearch` as a user would, in a subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "search", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=cwd or REPO,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, one line on stderr naming the field, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
