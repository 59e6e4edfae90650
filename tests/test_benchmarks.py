"""Every benchmark runs at its --smoke size, so that none can rot."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import yaml

from search.config import load
from tests.helpers import REPO


def test_throughput_benchmark_smoke(mnist_dir) -> None:
    """On the slowest decoder and a Z other than the default, which its model flags set (the default is 1, 2)."""
    proc = subprocess.run(
        [sys.executable, "benchmarks/throughput.py", "--smoke", "--data-dir", str(mnist_dir), "--decoder", "6",
         "--latent", "5"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["images"] == 512 and result["ours_images_per_s"] > 0 and result["reference_images_per_s"] > 0
    assert (result["decoder"], result["latent"], result["hidden"]) == (6, 5, 128)


@pytest.mark.slow  # a real MLflow server (and Ray)
def test_search_efficiency_benchmark_smoke(mnist_dir, mlflow_url: str, ray_head: str) -> None:
    joined = ["--tracking-uri", mlflow_url, "--address", ray_head]  # the session's server and Ray: none of its own
    proc = subprocess.run(
        [sys.executable, "benchmarks/search_efficiency.py", "--smoke", *joined],
        capture_output=True, text=True, cwd=REPO, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["fifo"]["epochs"] == 3 * 2  # FIFO trains every trial to max_epochs
    assert 0 < result["asha"]["epochs"] <= result["fifo"]["epochs"]
    assert result["setup_seconds_max"] > 0 and result["log_share"] >= 0


def test_efficiency_benchmark_smoke() -> None:
    proc = subprocess.run(
        [sys.executable, "benchmarks/efficiency.py", "--smoke"], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["matmul_gflop_s"] > 0 and [r["decoder"] for r in result["rows"]] == [1, 2, 3, 4, 5, 6]
    for row in result["rows"]:  # counted FLOPs include the LSTM's, which the counter misses
        assert row["images_per_s"] > 0 and row["mflop_per_image"] > 28 * 2 * 4 * 16 * (28 + 16) * 3 / 1e6


@pytest.mark.slow  # a real MLflow server (and Ray)
def test_system_metrics_cost_benchmark_smoke(mlflow_url: str) -> None:
    proc = subprocess.run(
        [sys.executable, "benchmarks/system_metrics_cost.py", "--tracking-uri", mlflow_url, "--samples", "3"],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert 0 < result["seconds_per_sample"] <= result["max"] and result["share"] > 0


def test_layouts_benchmark_smoke() -> None:
    proc = subprocess.run(
        [sys.executable, "benchmarks/layouts.py", "--smoke"], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["threads"] == 1 and [r["decoder"] for r in result["rows"]] == [1, 2, 3, 4, 5, 6]
    assert all(r["nchw_images_per_s"] > 0 and r["channels_last_images_per_s"] > 0 for r in result["rows"])


def test_gpu_check_runs_its_every_measurement_on_a_cpu_with_synthetic_images(tmp_path) -> None:
    """The GPU check's own paths on a CPU (--quick), without MNIST, as the borrowed GPU machine runs it."""
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick", "--data-dir", str(tmp_path / "none")],
        cwd=REPO, capture_output=True, text=True, timeout=240, env={**os.environ, "OUT": str(out)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads((out / "gpu_check.json").read_text()) == result
    assert result["environment"]["data"] == "synthetic" and "error" not in json.dumps(result)
    assert {f"d{d}-fp32" for d in range(1, 7)} <= set(result["epochs"])
    assert all(result["epochs"][f"d{d}-fp32"]["epoch_s"] > 0 for d in range(1, 7))
    assert set(result["processes"]) == {"1", "2"} and result["processes"]["2"]["vs_one"] > 0
    assert result["graphs"]["compiled_ms"] > 0 and result["graphs"]["eager_ms"] > 0


def test_search_methods_sets_a_method_or_only_name_and_seed(tmp_path) -> None:
    """The comparison's configs differ from the base only in name, seed and method; --as-configured keeps the method."""
    spec = importlib.util.spec_from_file_location("search_methods", REPO / "benchmarks" / "search_methods.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    base, challenge = runner.BASE, REPO / "configs" / "challenge-300.yaml"
    for source, method, changed in [
        (
            base,
            "random-asha",
            {"sampler": {"kind": "random"}, "scheduler": "asha", "budget": {"max_concurrent": runner.CONCURRENCY}},
        ),
        (base, "tpe-promotion", {"sampler": {"kind": "tpe"}, "scheduler": "promotion"}),
        (challenge, "challenge-300", {}),
    ]:
        written = yaml.safe_load(runner.config_for(source, method, 3, tmp_path).read_text())
        expected = yaml.safe_load(source.read_text())
        expected.update(name=f"{method}-s3")
        expected["sampler"]["seed"] = 3
        for key, value in changed.items():
            expected[key] = {**expected[key], **value} if isinstance(value, dict) else value
        assert written == expected, method
        load(tmp_path / f"{method}-s3.yaml")  # a valid search config


def test_carry_keeps_what_a_resume_reads_and_lays_it_out_where_it_was(tmp_path) -> None:
    """Ray's named checkpoint of each trial it resumes; best weights of those and of each latent size's best."""
    import sqlite3

    spec = importlib.util.spec_from_file_location("carry", REPO / "benchmarks" / "carry.py")
    carry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(carry)
    home = tmp_path / "home"
    trials = {  # Ray's status, the checkpoint its saved state names; the record's trial
        "aaaa0001": ("TERMINATED", None, {"loss": 100.0, "end_state": "failed", "config": {"latent": 5}}),
        "aaaa0002": ("TERMINATED", None, {"loss": 105.0, "end_state": "pruned", "config": {"latent": 5}}),
        "aaaa0003": ("TERMINATED", None, {"loss": 110.0, "end_state": "pruned", "config": {"latent": 5}}),
        "aaaa0004": ("TERMINATED", None, {"loss": 120.0, "end_state": "pruned", "config": {"latent": 2}}),
        "aaaa0005": ("RUNNING", "checkpoint_000001", {"loss": 90.0, "config": {"latent": 2}}),  # wrote one more
        "aaaa0006": ("ERROR", None, {"loss": 130.0, "config": {"latent": 2}}),  # names none: all kept
    }
    search = home / "ray" / "s"
    search.mkdir(parents=True)
    record = {"ending": "interrupted", "trials": {t: r for t, (_, _, r) in trials.items()}}
    (search / "vaesearch.json").write_text(json.dumps(record))
    ray = [
        [json.dumps({"trial_id": t, "status": s}), json.dumps({"last_result": {"checkpoint_dir_name": c}})]
        for t, (s, c, _) in trials.items()
    ]
    (search / "experiment_state-2026-12-03_11-42-12.json").write_text(json.dumps({"trial_data": ray}))
    (home / "mlflow").mkdir()
    with sqlite3.connect(home / "mlflow" / "mlflow.db") as db:  # the one table of MLflow's that the carry reads
        db.execute("CREATE TABLE tags (key TEXT, value TEXT, run_uuid TEXT)")
        for n, tid in enumerate(trials):
            db.execute("INSERT INTO tags VALUES (?, ?, ?)", ("ray_trial_id", tid, f"run{n}"))
            best = home / "mlflow" / "artifacts" / "1" / f"run{n}" / "artifacts" / "checkpoint" / "best.pt"
            best.parent.mkdir(parents=True)
            best.write_bytes(b"w")
            for point in ("checkpoint_000001", "checkpoint_000002"):
                (search / f"train_trial_{tid}_{n}_x" / point).mkdir(parents=True)
                (search / f"train_trial_{tid}_{n}_x" / point / "last.pt").write_bytes(b"s")
            (search / f"train_trial_{tid}_{n}_x" / "result.json").write_text("{}")
    db.close()
    (home / "mlflow" / "server.json").write_text("{}")
    tar = tmp_path / "carry.tar.xz"
    carry.pack(home, tar)
    before = {p.relative_to(home) for p in home.rglob("*")}
    home.rename(tmp_path / "moved")
    carry.unpack(tar)
    after = {p.relative_to(home) for p in home.rglob("*")}
    files = {str(p) for p in after if (home / p).is_file()}
    assert {p for p in before - after if (tmp_path / "moved" / p).is_dir()} == set()  # every folder travels
    assert {f for f in files if f.endswith("last.pt")} == {
        "ray/s/train_trial_aaaa0005_4_x/checkpoint_000001/last.pt",
        "ray/s/train_trial_aaaa0006_5_x/checkpoint_000001/last.pt",
        "ray/s/train_trial_aaaa0006_5_x/checkpoint_000002/last.pt",
    }
    runs = {f.split("/")[3] for f in files if f.endswith("best.pt")}
    assert runs == {"run1", "run3", "run4", "run5"}  # Z=5's best rankable; Z=2's among the ended; the resumed
    assert "mlflow/server.json" not in files and "ray/s/train_trial_aaaa0002_1_x/result.json" in files
    assert "ray/s/vaesearch.json" in files and "mlflow/mlflow.db" in files
    with pytest.raises(SystemExit, match="not an empty folder"):  # never over a home that is there
        carry.unpack(tar)
    (search / "vaesearch.json").write_text(json.dumps({**record, "ending": None}))
    with pytest.raises(SystemExit, match="stop it first"):  # nor a search still running
        carry.pack(home, tmp_path / "again.tar.xz")
