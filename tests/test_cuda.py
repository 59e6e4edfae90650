"""A few training steps on a GPU; skipped, with the reason, where none is present."""

from pathlib import Path

import pytest
import torch

from tests.helpers import run_cli

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_train_runs_on_cuda(mnist_dir: Path, tmp_path: Path) -> None:
    proc = run_cli(
        "train", "--decoder", "1", "--hidden", "128", "--latent", "2", "--epochs", "1",
        "--subset", "2048", "--val-subset", "512", "--device", "cuda",
        "--data-dir", str(mnist_dir), "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "device cuda" in proc.stdout
    assert (tmp_path / "run" / "checkpoint.pt").is_file()


def test_cuda_is_refused_clearly_without_a_gpu(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = run_cli("train", "--decoder", "1", "--hidden", "8", "--latent", "2", "--device", "cuda",
                   "--out", str(tmp_path / "x"))  # fmt: skip
    assert proc.returncode == 2 and "--device" in proc.stderr and "Traceback" not in proc.stderr
