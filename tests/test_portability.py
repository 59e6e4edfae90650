"""Precision that fits the machine, checked where bf16 breaks: oneDNN limited to AVX2 (no native bf16).

`ONEDNN_MAX_CPU_ISA=AVX2` makes a wider CPU's oneDNN behave as an AVX2-only
CPU's does, so these tests see the narrow path on every machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mlflow_server import server
from tests.helpers import REPO, assert_one_line_error, run_cli, search, write_config

AVX2 = {"ONEDNN_MAX_CPU_ISA": "AVX2"}
TINY_TRAIN = ["--decoder", "1", "--hidden", "8", "--latent", "2", "--epochs", "1", "--subset", "256",
              "--val-subset", "128"]  # fmt: skip


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env={**os.environ, **AVX2}, timeout=120
    )


def test_the_lstm_under_bf16_autocast_fails_there_and_the_probe_says_so() -> None:
    proc = _python(
        "import torch\n"
        "lstm = torch.nn.LSTM(28, 8, batch_first=True)\n"
        "try:\n"
        "    with torch.autocast('cpu', dtype=torch.bfloat16):\n"
        "        lstm(torch.rand(4, 28, 28))\n"
        "    print('plain: ran')\n"
        "except RuntimeError as e:\n"
        "    print('plain: failed', str(e).splitlines()[0])\n"
        "from vae.precision import bf16_support, resolve_precision\n"
        "print('probe:', bf16_support('cpu'))\n"
        "print('auto:', resolve_precision('auto', 'cpu')[0])\n"
    )
    assert proc.returncode == 0, proc.stderr
    assert "plain: failed could not create a primitive descriptor" in proc.stdout  # today's failure, reproduced
    assert "probe: (False," in proc.stdout and "auto: fp32" in proc.stdout


def test_train_auto_says_what_it_chose_and_trains(tmp_path: Path, mnist_dir: Path) -> None:
    proc = run_cli("train", *TINY_TRAIN, "--out", str(tmp_path / "run"), env=AVX2)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith("precision:"))
    assert line.startswith("precision: fp32 (bf16 autocast fails"), line
    assert '"precision": "fp32"' in (tmp_path / "run" / "config.json").read_text()


def test_an_explicit_bf16_that_cannot_run_is_refused_before_training(tmp_path: Path) -> None:
    proc = run_cli("train", *TINY_TRAIN, "--precision", "bf16", "--out", str(tmp_path / "run"), env=AVX2)
    assert_one_line_error(proc, "--precision", "bf16", "auto, fp32")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # a real MLflow server
def test_an_explicit_bf16_that_cannot_run_is_refused_before_a_search_starts(tmp_path: Path, mlflow_url: str) -> None:
    config = write_config(tmp_path / "c.yaml", train={"precision": "bf16"})
    proc = run_cli("search", "--config", str(config), "--name", "bf16-refused", "--tracking-uri", mlflow_url,
                   "--storage-path", str(tmp_path / "ray"), env=AVX2)  # fmt: skip
    assert_one_line_error(proc, "train.precision", "bf16", "auto, fp32")
    assert MlflowClient(mlflow_url).get_experiment_by_name("bf16-refused") is None
    assert not (tmp_path / "ray").exists()


@pytest.mark.slow
def test_a_search_under_auto_completes_there_in_fp32_on_its_own_ray_beside_a_dead_ray_start(
    tmp_path: Path, mlflow_url: str
) -> None:
    """Without an address a search starts its own Ray, as here. A `ray start` cluster that died without
    `ray stop` leaves its address behind, which `ray.init()` would wait on: this search starts beside one."""
    config = write_config(tmp_path / "c.yaml", budget={"num_samples": 2, "max_epochs": 1, "max_concurrent": 2},
                          space={"hidden": [8, 16], "decoder": [1], "latent": [2]})  # fmt: skip
    env_before = dict(os.environ)
    with tempfile.TemporaryDirectory(prefix="r", dir="/tmp") as ray_tmp:  # short: Ray's socket paths have a limit
        (Path(ray_tmp) / "ray").mkdir()
        (Path(ray_tmp) / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{server.free_port()}")
        os.environ.update(AVX2, RAY_TMPDIR=ray_tmp)  # the search's subprocess, its Ray workers and their probes
        try:
            proc = search(config, "avx2-auto", mlflow_url, tmp_path / "ray")
        finally:
            os.environ.clear()
            os.environ.update(env_before)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "precision: auto takes fp32 here: bf16 autocast fails" in proc.stdout
    assert "ray: 1 node(s)" in proc.stdout
    client = MlflowClient(mlflow_url)
    exp = client.get_experiment_by_name("avx2-auto")
    kids = [r for r in client.search_runs([exp.experiment_id]) if "ray_trial_id" in r.data.tags]
    assert len(kids) == 2
    for run in kids:
        assert run.data.tags["end_state"] == "completed", run.data.tags
        if "duplicate_of" not in run.data.tags:
            assert run.data.params["precision"] == "fp32"
            assert run.data.tags["precision_reason"].startswith("bf16 autocast fails")
