"""The names every part of vaesearch shares, defined once in vae/records.py, and ASHA's rungs as Ray has them."""

from __future__ import annotations

import ast
import math
import subprocess

import pytest
from ray.tune.schedulers.async_hyperband import _Bracket

from analysis.review import asha_rungs
from tests.helpers import REPO
from vae.records import SEARCHED, EndState, rung_epochs


@pytest.mark.parametrize(
    ("max_epochs", "grace", "factor"), [(4, 1, 2), (10, 1, 4), (16, 1, 4), (20, 3, 3), (9, 2, 2.5)]
)
def test_rungs_are_rays_milestones_below_the_last_epoch(max_epochs: int, grace: int, factor: float) -> None:
    bracket = _Bracket(min_t=grace, max_t=max_epochs, reduction_factor=factor, s=0)
    milestones = sorted({math.ceil(m) for m, _ in bracket._rungs if math.ceil(m) < max_epochs})
    assert list(rung_epochs(max_epochs, grace, factor)) == milestones


def test_the_report_counts_trials_at_the_rungs_the_trials_drew_grids_at() -> None:
    class Search:  # the two attributes asha_rungs reads
        config = {"asha": {"grace_period": 1, "reduction_factor": 4}, "budget": {"max_epochs": 16}}
        trials: list = []

    assert [r for r, _, _ in asha_rungs(Search())] == list(rung_epochs(16, 1, 4)) == [1, 4]


def test_each_end_state_and_searched_parameter_is_spelled_only_in_records() -> None:
    names = {*SEARCHED, *(s.value for s in EndState)}
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True).stdout.split()
    found = []
    for path in files:
        if path.startswith("tests/") or path == "vae/records.py":
            continue
        tree = ast.parse((REPO / path).read_text())
        found += [
            f"{path}:{node.lineno} {node.value!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in names
        ]
    assert not found, found
