"""The search end to end: a real Ray (the session's head, or a search's own), a real MLflow server, real MNIST."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import (
    BUCKET,
    REPO,
    ctrl_c_able,
    objects,
    ray_current,
    ray_start,
    read_object,
    run_cli,
    search,
    search_args,
    search_env,
    stop_cluster,
    with_env,
    write_config,
)

pytestmark = pytest.mark.slow


def children(client: MlflowClient, experiment: str) -> tuple[object, list]:
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("kind") == "search"]
    assert len(parents) == 1, [r.info.run_name for r in parents]
    others = [r for r in runs if "mlflow.parentRunId" not in r.data.tags and r.data.tags.get("kind") != "promotion"]
    assert others == parents  # nothing else sits at the top but promotions
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    return parents[0], kids


def test_every_trial_ends_with_a_nested_child_run(finished: dict, mlflow_url: str) -> None:
    client = MlflowClient(mlflow_url)
    parent, kids = children(client, "e2e")
    assert len(kids) == 6
    assert parent.data.params["optuna_study"] == "e2e" and "md5_train-images-idx3-ubyte" in parent.data.params
    assert parent.data.tags["status"] == "finished"
    assert parent.data.tags["cluster_nodes"] == "1" and float(parent.data.tags["cluster_cpus"]) >= 1
    for run in kids:
        assert run.data.tags["end_state"] in {"completed", "early_stopped", "pruned"}, run.data.tags
        assert run.data.tags["ray_trial_id"]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
        if "duplicate_of" in run.data.tags:
            assert steps == [], steps  # a replay's metrics are its twin's
            continue
        assert steps == sorted(set(steps)) and steps[0] == 1, steps  # one point per epoch, none twice
        for key in ("train_loss", "best_val_loss", "val_recon", "val_kl", "train_kl", "epoch_seconds"):
            assert len(client.get_metric_history(run.info.run_id, key)) == len(steps), key
    trained = [r for r in kids if "duplicate_of" not in r.data.tags]
    for run in trained:  # pruned ones too: the grid of the last epoch, and the best weights
        last = max(m.step for m in client.get_metric_history(run.info.run_id, "val_loss"))
        images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]  # MLflow's stepped images
        for key in ("samples", "manifold"):  # Z=2: prior draws and the manifold, at step 0 and the last epoch's
            assert any(p.startswith(f"images/{key}%step%00{last}%") and p.endswith(".png") for p in images), images
            assert any(p.startswith(f"images/{key}%step%000%") for p in images), images
            assert any(p.startswith(f"images/{key}%step%00{last}%") and p.endswith("%compressed.webp") for p in images)
        assert {a.path for a in client.list_artifacts(run.info.run_id, "checkpoint")} == {"checkpoint/best.pt"}
        assert run.data.params["precision"] in {"fp32", "bf16"}
        system = {k for k in run.data.metrics if k.startswith("system/")}  # MLflow's system metrics, sampled
        assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= system, system


def test_asha_pruned_a_trial_and_optuna_knows_it(finished: dict, mlflow_url: str) -> None:
    client = MlflowClient(mlflow_url)
    _, kids = children(client, "e2e")
    trained = [r for r in kids if "duplicate_of" not in r.data.tags]
    pruned = [r for r in trained if r.data.tags["end_state"] == "pruned"]
    full = [r for r in trained if r.data.tags["end_state"] == "completed"]
    assert pruned and full
    epochs = {r.info.run_id: len(client.get_metric_history(r.info.run_id, "val_loss")) for r in kids}
    assert max(epochs[r.info.run_id] for r in pruned) < min(epochs[r.info.run_id] for r in full)
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{finished['storage'] / 'e2e' / 'optuna.db'}")
    states = [t.state for t in study.trials]
    assert len(states) == 6
    # a replay is told as its twin ended: pruned with the twin's last value, or complete
    assert states.count(optuna.trial.TrialState.PRUNED) == sum(r.data.tags["end_state"] == "pruned" for r in kids)
    by_trial = {r.data.tags["ray_trial_id"]: r for r in kids}
    for trial in study.trials:  # TPE sees the value each pruned trial was judged on, at its epoch
        run = by_trial[trial.user_attrs["ray_trial_id"]]
        source = run.data.tags.get("duplicate_of", run.info.run_id)  # a replay's values are its twin's
        history = client.get_metric_history(source, "best_val_loss")
        last = max(history, key=lambda m: m.step)
        assert trial.intermediate_values.get(last.step) == pytest.approx(last.value), (trial.number, history)


def test_a_duplicate_config_replays_instead_of_training(finished: dict, mlflow_url: str) -> None:
    client = MlflowClient(mlflow_url)
    _, kids = children(client, "e2e")
    by_id = {r.info.run_id: r for r in kids}
    dups = [r for r in kids if "duplicate_of" in r.data.tags]
    assert dups, "6 trials over 2 configs must repeat one"
    for dup in dups:
        original = by_id[dup.data.tags["duplicate_of"]]
        assert original.data.tags["config_key"] == dup.data.tags["config_key"]
        assert original.data.tags["end_state"] in {"completed", "early_stopped", "pruned"}  # a twin with a history
        assert not client.list_artifacts(dup.info.run_id, "checkpoint")  # nothing trained, nothing saved
        # the replay says so, ends as its twin did, and holds no metric a sort could rank beside its twin's
        assert dup.data.tags["end_state"] == original.data.tags["end_state"]
        assert dup.data.tags["mlflow.note.content"].startswith(f"Replay of run `{original.info.run_id}`")
        assert not dup.data.metrics, dup.data.metrics
    best = client.search_runs([kids[0].info.experiment_id], order_by=["metrics.best_val_loss ASC"])[0]
    assert best.info.run_id == finished["summary"]["best_run_id"] and "duplicate_of" not in best.data.tags


def test_searches_lists_the_search(finished: dict) -> None:
    proc = run_cli("searches", "--storage-path", str(finished["storage"]))
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.strip().splitlines()]
    row = next(r for r in rows if r["name"] == "e2e")
    assert row["trials"] == 6 and row["done"] == 6 and row["running"] == 0 and row["status"] == "finished"
    assert row["best_val_loss"] == pytest.approx(finished["summary"]["best_val_loss"])


def decisions(study: str, name: str) -> list[tuple]:
    """What the search made of each trial, in the order it asked for them: values, end, last epoch."""
    trials = optuna.load_study(study_name=name, storage=study).trials
    return [(t.params, t.state.name, max(t.intermediate_values, default=0)) for t in trials]


def test_interrupt_on_an_object_store_then_resume_from_another_machine_as_a_search_that_ran_through(
    mlflow_url: str, ray_head: str, s3: dict, pg_database: str, tmp_path: Path
) -> None:
    """Ctrl-C as a user gives it, to a search with a Ray of its own (the default) whose record, Ray state and
    checkpoints are in an object store (SeaweedFS over S3) and whose study is in PostgreSQL; then the same
    command on a second machine: another home folder and a Ray cluster of two nodes, one of them with an
    empty data folder, sharing nothing with the first but the store, the database and the tracking server.

    One trial at a time, random proposals seeded, ASHA at epochs 1 and 2; the Ctrl-C comes once two
    trials have ended and a third is under way. ASHA's rungs before the interrupt judge the trials after it.
    `--resume-if-exists`, as a retried job's one command runs, starts the search the first time.
    """
    config = write_config(
        tmp_path / "resume.yaml",
        space={"hidden": [8, 16, 24, 32], "decoder": [1, 6], "latent": [2, 3]},
        budget={"num_samples": 6, "max_epochs": 3, "max_concurrent": 1},
        asha={"grace_period": 1, "reduction_factor": 2},
        sampler={"kind": "random", "seed": 1},  # six distinct configs: no replay (ASHA judges none)
        data={"subset": 512, "val_subset": 128},
    )
    storage, study = f"s3://{BUCKET}/searches", pg_database.replace("postgresql://", "postgresql+psycopg://")
    first = {**s3, "HOME": str(tmp_path / "a"), "VAESEARCH_HOME": str(tmp_path / "a" / "vaesearch")}
    args = search_args(config, "resume", mlflow_url, storage, "--study-storage", study, "--resume-if-exists")
    proc = subprocess.Popen(
        [sys.executable, "-m", "search", *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=with_env(search_env(None, first)), preexec_fn=ctrl_c_able,
    )  # fmt: skip
    client = MlflowClient(mlflow_url)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:  # wait for two ended trials and a third one under way
        exp = client.get_experiment_by_name("resume")
        runs = client.search_runs([exp.experiment_id]) if exp else []
        ended = [r for r in runs if r.data.tags.get("end_state")]
        if len(ended) >= 2 and len(runs) >= 4:
            break
        time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail(f"the search never got going: {proc.communicate()[1][-3000:]}")
    before = {r.info.run_id: len(client.get_metric_history(r.info.run_id, "val_loss")) for r in ended}
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-3000:]
    assert "--resume" in out
    record = json.loads(read_object(s3, "searches/resume/vaesearch.json"))
    assert record["ending"] == "interrupted" and record["scheduler"]["rungs"]["1"], record
    stored = objects(s3, "searches/resume")
    assert any(p.rpartition("/")[2].startswith("experiment_state-") for p in stored)  # Ray's state, there too
    assert not list(tmp_path.glob("a/**/optuna.db"))  # the study is in PostgreSQL: nothing of it on machine A

    # machine B, without --tracking-uri: it goes on on the server the search ran on, starting none
    second = {**s3, "HOME": str(tmp_path / "b"), "VAESEARCH_HOME": str(tmp_path / "b" / "vaesearch")}
    cluster = uuid.uuid4().hex
    nodes = {**with_env(second), "RAY_AUTH_MODE": "disabled", "VAESEARCH_TEST_CLUSTER": cluster}
    address, previous = "", ray_current()
    try:
        address = ray_start(nodes)
        ray_start({**nodes, "HOME": str(tmp_path / "c"), "VAESEARCH_DATA_DIR": str(tmp_path / "c" / "data")},
                  head_address=address)  # fmt: skip
        again = run_cli("search", "--config", str(config), "--name", "resume", "--storage-path", storage,
                        "--resume-if-exists", "--address", address, env=nodes)  # fmt: skip
    finally:
        stop_cluster(cluster, address, previous)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "ray: 2 node(s)" in again.stdout and "MLflow server" not in again.stdout
    assert not (tmp_path / "b" / "vaesearch").exists()
    assert f"MLflow UI: {mlflow_url}/#/experiments/{exp.experiment_id}/runs?" in again.stdout  # the first server
    parent, kids = children(client, "resume")
    assert len(kids) == 6
    assert len({r.data.tags["ray_trial_id"] for r in kids}) == 6
    for run in kids:
        assert run.data.tags["end_state"] in {"completed", "early_stopped", "pruned"}
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
        assert len(steps) == len(set(steps)), steps
    for run_id, epochs in before.items():  # finished before the interrupt: not trained again
        assert len(client.get_metric_history(run_id, "val_loss")) == epochs
    assert json.loads(read_object(s3, "searches/resume/vaesearch.json"))["ending"] == "finished"
    listed = run_cli("searches", "--storage-path", storage, env=second)  # read back from the store
    assert listed.returncode == 0, listed.stderr[-2000:]
    (row,) = [json.loads(line) for line in listed.stdout.splitlines() if line.startswith("{")]
    assert row["name"] == "resume" and row["status"] == "finished" and row["trials"] == 6

    through = search(config, "through", mlflow_url, tmp_path / "ray", address=ray_head)
    assert through.returncode == 0, through.stderr[-3000:]
    expected = decisions(f"sqlite:///{tmp_path / 'ray' / 'through' / 'optuna.db'}", "through")
    assert any(state == "PRUNED" for _, state, _ in expected[2:]), expected  # ASHA judged trials after the kill
    assert decisions(study, "resume") == expected


def test_train_logs_one_run_to_mlflow(mlflow_url: str, tmp_path: Path, mnist_dir: Path) -> None:
    proc = run_cli(
        "train", "--decoder", "3", "--hidden", "8", "--latent", "2", "--epochs", "2", "--subset", "256",
        "--val-subset", "128", "--out", str(tmp_path / "run"), "--tracking-uri", mlflow_url, "--experiment", "single",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(mlflow_url)
    (run,) = client.search_runs([client.get_experiment_by_name("single").experiment_id])
    assert [m.step for m in client.get_metric_history(run.info.run_id, "best_val_loss")] == [1, 2]
    assert run.data.params["decoder"] == "3" and run.data.tags["end_state"] == "completed"
    assert "checkpoint.pt" in {a.path for a in client.list_artifacts(run.info.run_id)}


HUGE = 10**13  # a latent size whose first layer no machine can allocate: every trial with it raises at once


def started(stdout: str) -> list[str]:
    """The trial ids of the console's `trial ID started: ...` lines, one per start."""
    return [line.split()[1] for line in stdout.splitlines() if line.startswith("trial ") and " started: " in line]


def test_a_search_whose_every_trial_raises_stops_after_the_first_four(
    mlflow_url: str, ray_head: str, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "c.yaml",
        space={"hidden": [8], "decoder": [1], "latent": [HUGE]},
        budget={"num_samples": 12, "max_epochs": 2, "max_concurrent": 2},
    )
    started = time.monotonic()
    proc = search(config, "all-fail", mlflow_url, tmp_path / "ray", address=ray_head)
    assert time.monotonic() - started < 240  # the time of the first trials, not of twelve
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()], proc.stderr  # one line, no traceback
    assert proc.stderr.startswith("vaesearch search: search stopped: the first 4 trials failed with RuntimeError: ")
    client = MlflowClient(mlflow_url)
    parent, kids = children(client, "all-fail")
    assert parent.data.tags["status"].startswith("stopped: the first 4 trials failed with RuntimeError")
    failed = [r for r in kids if r.data.tags["end_state"] == "failed"]
    assert len(failed) >= 4 and len(kids) < 12
    assert all(r.data.tags["end_state"] in {"failed", "killed"} and r.info.status in {"FAILED", "KILLED"} for r in kids)
    for run in failed:  # duplicates of a twin that raised are trained again, not replayed
        assert "duplicate_of" not in run.data.tags and run.data.tags["error_type"] == "RuntimeError"
        assert "can't allocate memory" in run.data.tags["end_reason"]
    started_lines = [
        line.split()[1] for line in proc.stdout.splitlines() if line.startswith("trial ") and " started" in line
    ]
    assert len(started_lines) == len(set(started_lines)) and "lost its worker" not in proc.stdout  # never retried


def test_fixed_points_run_first_in_order_and_a_diverging_or_raising_trial_fails_once_while_the_search_goes_on(
    mlflow_url: str, ray_head: str, tmp_path: Path
) -> None:
    """One FIFO search over four fixed points: two that train to max_epochs, one that diverges, one that raises."""
    good = [{"hidden": 16, "decoder": 3, "latent": 2, "lr": 1e-3}, {"hidden": 8, "decoder": 1, "latent": 3, "lr": 1e-3}]
    diverges, raises = {"hidden": 8, "decoder": 1, "latent": 2, "lr": 1000.0}, {**good[1], "latent": HUGE}
    points = [good[0], diverges, raises, good[1]]
    config = write_config(
        tmp_path / "c.yaml",
        space={"hidden": [8, 16], "decoder": [1, 3], "latent": [2, 3, HUGE], "lr": {"low": 1e-4, "high": 1000.0}},
        train={"precision": "fp32"},
        budget={"num_samples": 4, "max_epochs": 2, "max_concurrent": 1},
        scheduler="fifo",
        points=points,
    )
    proc = search(config, "points", mlflow_url, tmp_path / "ray", address=ray_head)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    client = MlflowClient(mlflow_url)
    _, kids = children(client, "points")
    ran = sorted(kids, key=lambda r: r.info.start_time)
    key = ("hidden", "decoder", "latent", "lr")
    assert [{k: float(r.data.params[k]) for k in key} for r in ran] == [{k: float(p[k]) for k in key} for p in points]
    study = optuna.load_study(study_name="points", storage=f"sqlite:///{tmp_path / 'ray' / 'points' / 'optuna.db'}")
    optuna_state = {t.user_attrs["ray_trial_id"]: t.state for t in study.trials}
    trained, nan, failed = [ran[0], ran[3]], ran[1], ran[2]
    for run in trained:  # FIFO: each trial to max_epochs, nothing pruned
        assert run.data.tags["end_state"] == "completed"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2]
    # diverged: failed at its first epoch, not retried, FAIL in Optuna
    assert nan.data.tags["end_state"] == "failed" and "diverged" in nan.data.tags["end_reason"]
    assert nan.info.status == "FAILED"
    assert len(client.get_metric_history(nan.info.run_id, "val_loss")) == 1
    # raised: failed once with its traceback as error.txt, no epoch, FAIL in Optuna
    assert failed.info.status == "FAILED" and failed.data.tags["end_reason"].startswith("RuntimeError: ")
    assert failed.data.params["latent"] == str(HUGE) and not client.get_metric_history(failed.info.run_id, "val_loss")
    text = Path(client.download_artifacts(failed.info.run_id, "error.txt", str(tmp_path))).read_text()
    assert text.startswith("Traceback") and "can't allocate memory" in text
    line = next(x for x in proc.stdout.splitlines() if x.startswith(f"trial {failed.data.tags['ray_trial_id']} failed"))
    assert line.endswith(failed.data.tags["end_reason"])
    for run in (nan, failed):
        assert optuna_state[run.data.tags["ray_trial_id"]] == optuna.trial.TrialState.FAIL
    assert len(started(proc.stdout)) == 4 == len(set(started(proc.stdout)))  # no failure was retried


def test_trials_cut_by_the_time_budget_end_killed_everywhere(mlflow_url: str, ray_head: str, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "c.yaml",
        space={"hidden": [8, 16, 24], "decoder": [1], "latent": [2]},
        # three at a time on the head's two CPUs: one trial waits for a CPU when the budget runs out
        budget={"num_samples": 20, "max_epochs": 30, "max_concurrent": 3, "time_limit_s": 10},
        asha={"grace_period": 30, "reduction_factor": 2},
        data={"subset": 2048, "val_subset": 128},
    )
    proc = search(config, "budget", mlflow_url, tmp_path / "ray", address=ray_head)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(mlflow_url)
    _, kids = children(client, "budget")
    killed = [r for r in kids if r.data.tags.get("end_state") == "killed"]
    assert killed and all(r.data.tags["end_reason"] == "the search's time budget ran out" for r in killed)
    assert all(r.data.tags.get("end_state") for r in kids) and all(r.info.status != "RUNNING" for r in kids)
    study = optuna.load_study(study_name="budget", storage=f"sqlite:///{tmp_path / 'ray/budget/optuna.db'}")
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]
    record = json.loads((tmp_path / "ray" / "budget" / "vaesearch.json").read_text())
    assert record["ending"] == "time" and all(t["end_state"] for t in record["trials"].values())
    assert len(record["trials"]) == len(study.trials) > len(kids)  # the one that never started: ended too
    listed = run_cli("searches", "--storage-path", str(tmp_path / "ray")).stdout.splitlines()
    assert json.loads(listed[0])["running"] == 0  # not running forever


def test_an_epoch_budget_caps_the_training_of_the_whole_search(mlflow_url: str, ray_head: str, tmp_path: Path) -> None:
    """`budget.max_total_epochs`: trials stop once they have trained that many epochs between them."""
    config = write_config(
        tmp_path / "c.yaml",
        space={"hidden": [8, 16, 24], "decoder": [1, 3], "latent": [2]},
        budget={"num_samples": 6, "max_epochs": 4, "max_concurrent": 2, "max_total_epochs": 5},
        sampler={"kind": "random", "seed": 1},
        scheduler="fifo",
    )
    proc = search(config, "epochs", mlflow_url, tmp_path / "ray", address=ray_head)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(mlflow_url)
    _, kids = children(client, "epochs")
    trained = [
        m.step
        for r in kids
        if "duplicate_of" not in r.data.tags
        for m in client.get_metric_history(r.info.run_id, "val_loss")
    ]
    assert 5 <= len(trained) <= 5 + 1  # the other trial running stops at its next report, with that epoch
    assert len(kids) < 6  # the budget ended the search before every sample ran
    assert all(r.data.tags.get("end_state") for r in kids) and all(r.info.status != "RUNNING" for r in kids)
    stopped = [r for r in kids if "epoch budget" in r.data.tags["end_reason"]]
    # cut by the budget, as ASHA cuts: pruned with what it measured, never a fault (killed, FAILED in Optuna)
    assert stopped and all(r.data.tags["end_state"] == "pruned" and r.info.status == "FINISHED" for r in stopped)
    study = optuna.load_study(study_name="epochs", storage=f"sqlite:///{tmp_path / 'ray/epochs/optuna.db'}")
    states = {t.state for t in study.trials}
    assert states <= {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED}, states
    parent = client.get_run(json.loads(proc.stdout.strip().splitlines()[-1])["parent_run_id"])
    assert parent.data.tags["status"] == "finished"


def test_artifacts_that_never_land_fail_the_search_with_their_count(
    mlflow_url: str, mlflow_folder: Path, ray_head: str, tmp_path: Path
) -> None:
    """Metrics land and artifact uploads fail (the experiment's artifact folder is a file): exit 1, counted."""
    client, blocked = MlflowClient(mlflow_url), f"blocked-{tmp_path.name}"
    (mlflow_folder / "artifacts").mkdir(exist_ok=True)
    (mlflow_folder / "artifacts" / blocked).write_text("a file where the experiment's artifact folder would be")
    client.create_experiment("lost-uploads", artifact_location=f"mlflow-artifacts:/{blocked}")
    config = write_config(
        tmp_path / "c.yaml",
        space={"hidden": [8], "decoder": [1], "latent": [2]},
        budget={"num_samples": 1, "max_epochs": 1, "max_concurrent": 1},
        tracking={"system_metrics_s": 0},
    )
    args = search_args(config, "lost-uploads", mlflow_url, tmp_path / "ray", address=ray_head)
    proc = run_cli(*args, env=search_env(ray_head, {"VAESEARCH_MLFLOW_PATIENCE_S": "2"}))
    assert proc.returncode == 1, proc.stderr[-3000:]
    lost = json.loads(proc.stdout.strip().splitlines()[-1])["lost_writes"]
    last = proc.stderr.strip().splitlines()[-1]
    assert lost >= 3 and last.startswith(f"vaesearch search: {lost} write(s) to MLflow never landed"), proc.stderr
    parent, (kid,) = children(client, "lost-uploads")
    assert parent.data.tags["lost_writes"] == str(lost) and int(kid.data.tags["lost_writes"]) == lost
    what = kid.data.tags["lost_writes_what"]
    assert "grid, epoch 0" in what and "best checkpoint" in what, what
    assert [m.step for m in client.get_metric_history(kid.info.run_id, "val_loss")] == [1]  # metrics landed
    state = json.loads((tmp_path / "ray" / "lost-uploads" / "vaesearch.json").read_text())
    assert state["lost_writes"] == lost  # the search's record has it too
