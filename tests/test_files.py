"""atomic_write: a whole file or the old one, with the mode open() would have given it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from vae.files import atomic_write


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_new_file_is_readable_as_the_umask_allows_not_owner_only(tmp_path: Path, umask_022: None) -> None:
    path = atomic_write(tmp_path / "a" / "grid.png", b"png")
    assert path.read_bytes() == b"png"
    assert mode(path) == 0o644


def test_a_tighter_umask_is_kept(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        path = atomic_write(tmp_path / "secret.json", b"{}")
    finally:
        os.umask(old)
    assert mode(path) == 0o600


def test_a_replaced_file_keeps_its_mode(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "metrics.csv"
    path.write_bytes(b"old")
    path.chmod(0o640)
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert mode(path) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.csv"]
