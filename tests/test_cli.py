"""`vaesearch train`, `evaluate` and `data prepare` run as a user runs them, in a subprocess."""

import csv
import json
from pathlib import Path

import pytest

from tests.helpers import assert_one_line_error, cli, run_cli

TINY = ["--subset", "256", "--val-subset", "128", "--epochs", "2", "--hidden", "16"]


@pytest.fixture(scope="module")
def trained(mnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("train") / "run"
    proc = run_cli("train", "--decoder", "6", "--latent", "2", *TINY, "--out", str(out), "--data-dir", str(mnist_dir))
    assert proc.returncode == 0, proc.stderr
    assert "img/s" in proc.stdout and "epoch 2/2" in proc.stdout
    return out


def test_train_writes_checkpoint_metrics_and_samples(trained: Path) -> None:
    for name in ("checkpoint.pt", "last.pt", "metrics.csv", "samples.png", "manifold.png", "config.json"):
        assert (trained / name).is_file(), name
    rows = list(csv.DictReader((trained / "metrics.csv").open()))
    assert list(rows[0]) == ["epoch", "train_loss", "train_kl", "val_loss", "val_recon", "val_kl", "epoch_seconds"]
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert json.loads((trained / "config.json").read_text())["decoder"] == 6


def test_evaluate_prints_one_json_line(trained: Path, mnist_dir: Path) -> None:
    proc = run_cli(
        "evaluate", "--checkpoint", str(trained / "checkpoint.pt"), "--split", "test",
        "--iw-samples", "2", "--data-dir", str(mnist_dir),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["split"] == "test" and result["iw_samples"] == 2
    assert result["loss"] == pytest.approx(result["recon"] + result["kl"], abs=1e-4)
    assert result["loss_per64"] == pytest.approx(64 * result["loss"])
    assert result["iwae"] <= result["loss"] + 1.0


def test_train_refuses_a_folder_that_holds_a_run(trained: Path) -> None:
    proc = cli("train", "--decoder", "1", "--latent", "2", *TINY, "--out", str(trained))
    assert_one_line_error(proc, "--out", "already holds a run")


@pytest.mark.parametrize(
    "flags, field",
    [
        (["--decoder", "7", "--hidden", "8", "--latent", "2"], "--decoder"),
        (["--decoder", "1", "--hidden", "8", "--latent", "0"], "--latent"),
        (["--decoder", "1", "--hidden", "-3", "--latent", "2"], "--hidden"),
        (["--decoder", "x", "--hidden", "8", "--latent", "2"], "--decoder"),
        (["--decoder", "1", "--hidden", "8", "--latent", "2", "--lr", "0"], "--lr"),
        (["--decoder", "1", "--hidden", "8", "--latent", "2", "--device", "tpu"], "--device"),
        (["--decoder", "1", "--hidden", "8", "--latent", "2", "--bogus"], "--bogus"),
    ],
)
def test_bad_train_flags_exit_2_with_one_line(flags: list[str], field: str, tmp_path: Path) -> None:
    proc = cli("train", *flags, "--out", str(tmp_path / "out"))
    assert_one_line_error(proc, field)
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_a_missing_or_corrupt_checkpoint(tmp_path: Path) -> None:
    assert_one_line_error(cli("evaluate", "--checkpoint", str(tmp_path / "nope.pt")), "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00" * 100)
    assert_one_line_error(cli("evaluate", "--checkpoint", str(bad)), "bad.pt", "not a readable checkpoint")


def test_train_on_a_corrupt_data_folder_names_the_file(tmp_path: Path, mnist_dir: Path) -> None:
    from vae import data

    raw = data.raw_dir(tmp_path)
    raw.mkdir(parents=True)
    for name in data.FILES:
        (raw / name).write_bytes((data.raw_dir(mnist_dir) / name).read_bytes()[:-1] if "t10k-images" in name else
                                 (data.raw_dir(mnist_dir) / name).read_bytes())  # fmt: skip
    proc = cli("train", "--decoder", "1", "--latent", "2", *TINY, "--data-dir", str(tmp_path),
               "--out", str(tmp_path / "out"))  # fmt: skip
    assert_one_line_error(proc, "t10k-images-idx3-ubyte")
    assert not (tmp_path / "out").exists()
