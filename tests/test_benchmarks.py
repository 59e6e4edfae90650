"""Every benchmark runs at its --smoke size, so that none can rot."""

import json
import subprocess
import sys

from tests.conftest import REPO


def test_throughput_benchmark_smoke(mnist_dir) -> None:
    proc = subprocess.run(
        [sys.executable, "benchmarks/throughput.py", "--smoke", "--data-dir", str(mnist_dir)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["images"] == 512 and result["ours_images_per_s"] > 0 and result["reference_images_per_s"] > 0
