"""Not collected by the suite (its name does not start with `test_`): `test_cleanup` runs it in a pytest
of its own, holding a tracking server and a Ray head, and stops that pytest from outside."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest


@pytest.mark.slow
def test_hold_a_server_and_a_ray_head_until_stopped(own_server, ray_head: str) -> None:
    Path(os.environ["VAESEARCH_TEST_READY"]).write_text(ray_head)
    time.sleep(600)
