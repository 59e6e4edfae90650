"""Faults survived on tiny configs: a killed worker, a killed driver, a vanished tracking server, two nodes.

Each test bounds its own time and cleans up the processes it started.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from mlflow_server import server
from tests.helpers import (
    REPO,
    assert_one_line_error,
    ray_current,
    ray_start,
    run_cli,
    search,
    search_args,
    search_env,
    started_by_the_suite,
    stop_cluster,
    with_env,
    write_config,
)
from vae import data

pytestmark = pytest.mark.slow


def start_search(
    config: Path, name: str, url: str, storage: Path, env: dict | None = None, address: str | None = None
) -> subprocess.Popen:
    """`vaesearch search` in the background, in a process group of its own (so a test can SIGKILL it all)."""
    cmd = [sys.executable, "-m", "search", *search_args(config, name, url, storage, address=address)]
    return subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env=with_env(search_env(address, env)),
    )  # fmt: skip


def wait_until(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the search ended (status {proc.returncode}) before {what}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def runs_of(client: MlflowClient, experiment: str) -> list:
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def steps(client: MlflowClient, run_id: str, key: str = "val_loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def trial_workers() -> list[int]:
    """This suite's trial processes; a search someone else runs on the machine is left alone."""
    out = subprocess.run(["pgrep", "-f", "ray::ImplicitFunc"], capture_output=True, text=True)
    return started_by_the_suite([int(p) for p in out.stdout.split()])


def test_a_killed_worker_resumes_from_its_checkpoint_without_gaps(
    mlflow_url: str, ray_head: str, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "c.yaml",
        space={"hidden": [16], "decoder": [1], "latent": [2]},
        budget={"num_samples": 1, "max_epochs": 5, "max_concurrent": 1},
        data={"subset": 6000, "val_subset": 256},
    )
    proc = start_search(config, "worker-kill", mlflow_url, tmp_path / "ray", address=ray_head)
    client = MlflowClient(mlflow_url)
    try:
        child = wait_until(
            lambda: next((r for r in runs_of(client, "worker-kill") if "ray_trial_id" in r.data.tags
                          and len(steps(client, r.info.run_id)) >= 2), None),
            240, "two epochs", proc,
        )  # fmt: skip
        victims = trial_workers()
        assert victims, "no trial worker process found"
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    assert proc.returncode == 0, err[-3000:]
    kids = [r for r in runs_of(client, "worker-kill") if "ray_trial_id" in r.data.tags]
    assert len(kids) == 1 and kids[0].info.run_id == child.info.run_id  # the retry continued its own run
    assert kids[0].data.tags["end_state"] == "completed"
    for key in ("val_loss", "train_loss", "best_val_loss", "epoch_seconds"):
        assert steps(client, child.info.run_id, key) == [1, 2, 3, 4, 5], key  # no gap, no duplicate


OPTUNA_STATE = {"completed": "COMPLETE", "early_stopped": "COMPLETE", "pruned": "PRUNED", "failed": "FAIL"}


def test_a_driver_killed_while_trials_are_pruned_resumes_to_exactly_num_samples(
    mlflow_url: str, tmp_path: Path
) -> None:
    """SIGKILL to the driver and the local Ray it started; `--resume` ends with MLflow and Optuna agreeing.

    The kill comes at a seeded moment after the first pruned trial; the seed is printed, and
    VAESEARCH_TEST_KILL_SEED repeats it.
    """
    config = write_config(
        tmp_path / "c.yaml",
        space={"hidden": [8, 16, 24], "decoder": [1, 6], "latent": [2, 3]},
        budget={"num_samples": 6, "max_epochs": 3, "max_concurrent": 2},
        asha={"grace_period": 1, "reduction_factor": 2},
        data={"subset": 512, "val_subset": 128},
    )
    seed = int(os.environ.get("VAESEARCH_TEST_KILL_SEED") or random.SystemRandom().randrange(10**6))
    delay = random.Random(seed).uniform(0, 2)
    print(f"killing the driver {delay:.2f} s after the first pruned trial (VAESEARCH_TEST_KILL_SEED={seed})")
    proc = start_search(config, "prune-kill", mlflow_url, tmp_path / "ray")
    client = MlflowClient(mlflow_url)
    try:

        def pruned_and_another_under_way() -> bool:
            runs = runs_of(client, "prune-kill")  # the parent, the pruned trial and at least one more
            return any(r.data.tags.get("end_state") == "pruned" for r in runs) and len(runs) >= 4

        wait_until(pruned_and_another_under_way, 300, "a pruned trial and another under way", proc)
        time.sleep(delay)  # while others are being pruned
        ended = {r.info.run_id: steps(client, r.info.run_id) for r in runs_of(client, "prune-kill")
                 if "end_state" in r.data.tags}  # fmt: skip
    finally:
        kill_group(proc)
    again = search(config, "prune-kill", mlflow_url, tmp_path / "ray", "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    runs = runs_of(client, "prune-kill")
    assert len([r for r in runs if r.data.tags.get("kind") == "search"]) == 1
    kids = [r for r in runs if "ray_trial_id" in r.data.tags]
    assert len(kids) == 6 and len({r.data.tags["ray_trial_id"] for r in kids}) == 6
    study = optuna.load_study(study_name="prune-kill", storage=f"sqlite:///{tmp_path / 'ray/prune-kill/optuna.db'}")
    optuna_state = {t.user_attrs.get("ray_trial_id"): t.state.name for t in study.trials}
    for run in kids:
        state = run.data.tags.get("end_state")
        assert state in {"completed", "early_stopped", "pruned"}, run.data.tags  # none failed by the kill
        for key in ("val_loss", "best_val_loss", "train_loss"):
            epochs = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert len(epochs) == len(set(epochs)), (key, epochs)  # no epoch logged twice
        assert optuna_state[run.data.tags["ray_trial_id"]] == OPTUNA_STATE[state], (state, run.data.tags)
    for run_id, before in ended.items():  # ended before the kill: not trained again
        assert steps(client, run_id) == before, run_id


def test_the_tracking_server_gone_for_a_while_loses_nothing(own_server, ray_head: str, tmp_path: Path) -> None:
    folder, port, info = own_server
    config = write_config(
        tmp_path / "c.yaml",
        space={"hidden": [8, 16], "decoder": [1], "latent": [2]},
        budget={"num_samples": 2, "max_epochs": 4, "max_concurrent": 1},
        asha={"grace_period": 4, "reduction_factor": 2},
        data={"subset": 1024, "val_subset": 128},
        tracking={"samples_every": 2},
        points=[{"hidden": 8, "decoder": 1, "latent": 2}, {"hidden": 16, "decoder": 1, "latent": 2}],  # both train
    )
    proc = start_search(config, "outage", info.url, tmp_path / "ray", address=ray_head)
    client = MlflowClient(info.url)
    try:
        wait_until(lambda: any(steps(client, r.info.run_id) for r in runs_of(client, "outage")
                               if "ray_trial_id" in r.data.tags), 240, "a first epoch", proc)  # fmt: skip
        server.stop(folder)
        # with the stop and the start, an outage of 20 s or more: longer than a request's own retry
        # (MLFLOW_HTTP_REQUEST_MAX_RETRIES=1), and the search's back-off between tries reaches its 15 s cap
        time.sleep(12)
        assert proc.poll() is None, "the search died while the server was away"
        server.start(folder, port=port)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    assert proc.returncode == 0, err[-3000:]
    kids = [r for r in runs_of(client, "outage") if "ray_trial_id" in r.data.tags]
    assert len(kids) == 2
    for run in kids:
        assert run.data.tags["end_state"] == "completed"
        for key in ("val_loss", "train_loss", "best_val_loss", "val_kl"):
            assert steps(client, run.info.run_id, key) == [1, 2, 3, 4], key


@pytest.fixture
def two_nodes(tmp_path: Path):
    """`ray start --head` and a second `ray start --address`, one CPU each, on this machine; the second's
    data folder (VAESEARCH_DATA_DIR) is empty, as a fresh node's without internet would be.

    Torn down by stopping the processes carrying this cluster's own mark: `ray stop` would stop
    every Ray on the machine, a user's running search among them.
    """
    cluster = uuid.uuid4().hex
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "VAESEARCH_TEST_CLUSTER": cluster}
    empty = tmp_path / "fresh-node-data"
    address, before = "", ray_current()
    try:
        address = ray_start(env)
        ray_start({**env, "VAESEARCH_DATA_DIR": str(empty)}, head_address=address)
        yield address, env, empty
    finally:
        stop_cluster(cluster, address, before)


def test_a_search_runs_trials_on_both_nodes_of_a_two_node_cluster(two_nodes, mlflow_url: str, tmp_path: Path) -> None:
    """Trials on the node without MNIST train on the driver's files, sent through Ray and checked by MD5."""
    address, env, empty = two_nodes
    config = write_config(
        tmp_path / "c.yaml",
        space={"hidden": [8, 16, 24, 32], "decoder": [1], "latent": [2]},
        budget={"num_samples": 4, "max_epochs": 2, "max_concurrent": 2},
        data={"subset": 2048, "val_subset": 128},
    )
    proc = run_cli("search", "--config", str(config), "--name", "two-nodes", "--address", address,
                   "--tracking-uri", mlflow_url, "--storage-path", str(tmp_path / "ray"), env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 node(s)" in proc.stdout
    kids = [r for r in runs_of(MlflowClient(mlflow_url), "two-nodes") if "ray_trial_id" in r.data.tags]
    assert len(kids) == 4
    assert len({r.data.tags["ray_node_id"] for r in kids}) == 2, [r.data.tags["ray_node_id"] for r in kids]
    fetched = [r for r in kids if r.data.tags.get("mnist_from") == "driver"]
    assert fetched and all(r.data.tags["end_state"] == "completed" for r in fetched)
    assert data.verify(empty) == {name: md5 for name, md5 in data.FILES.items()}


def test_an_unreachable_ray_address_is_refused_before_anything_is_written(mlflow_url: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "c.yaml")
    nowhere = f"127.0.0.1:{server.free_port()}"
    proc = run_cli("search", "--config", str(config), "--name", "no-ray", "--address", nowhere,
                   "--tracking-uri", mlflow_url, "--storage-path", str(tmp_path / "ray"), timeout=180)  # fmt: skip
    assert_one_line_error(proc, "--address")
    assert MlflowClient(mlflow_url).get_experiment_by_name("no-ray") is None
    assert not (tmp_path / "ray" / "no-ray").exists()


def test_a_server_lost_for_good_fails_the_search_with_one_line(own_server, ray_head: str, tmp_path: Path) -> None:
    folder, _, info = own_server
    config = write_config(
        tmp_path / "c.yaml",
        space={"hidden": [8, 16], "decoder": [1], "latent": [2]},
        budget={"num_samples": 2, "max_epochs": 3, "max_concurrent": 1},
        asha={"grace_period": 3, "reduction_factor": 2},
    )
    # give up after 3 s, not 10 minutes: set on the driver, it reaches the trials on the cluster it joins
    env = {**os.environ, "VAESEARCH_MLFLOW_PATIENCE_S": "3"}
    proc = start_search(config, "lost", info.url, tmp_path / "ray", env, address=ray_head)
    client = MlflowClient(info.url)
    try:
        wait_until(lambda: any("ray_trial_id" in r.data.tags for r in runs_of(client, "lost")), 240, "a trial", proc)
        server.stop(folder)
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    assert proc.returncode == 1, err[-3000:]
    ours = [line for line in err.splitlines() if line.startswith("vaesearch search:")]
    assert len(ours) == 1, err[-3000:]
    # the run-time failure's one line (exit 1), naming the server that went away
    assert ours[0].startswith("vaesearch search: failed: ") and info.url in ours[0], ours[0]
    assert "Traceback" not in err.split(ours[0])[-1]
