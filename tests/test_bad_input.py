"""Bad input to every subcommand: exit 2, one line naming the field, no traceback, nothing written."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import assert_one_line_error, cli, run_cli
from vae import checkpoint

DEAD = "http://127.0.0.1:9"  # nothing listens on the discard port here


@pytest.mark.parametrize(
    "args, field",
    [
        (["data", "prepare", "--data-dir", "/etc/hostname"], "/etc/hostname"),
        (["data", "fetch"], "invalid choice"),
        (["evaluate", "--checkpoint", "x.pt", "--split", "train"], "--split"),
        (["evaluate", "--checkpoint", "x.pt", "--iw-samples", "0"], "--iw-samples"),
        (["search", "--config"], "--config"),
        (["search", "--config", "c.yaml", "--server-port", "-1"], "--server-port"),
        (["searches", "--storage-path", "/nonexistent/vaesearch"], "--storage-path"),
        (["report"], "--experiment"),
        (["report", "--experiment", "x", "--tracking-uri", DEAD], "--tracking-uri"),
        (["promote", "--experiment", "x", "--tracking-uri", DEAD], "--tracking-uri"),
        (["promote", "--experiment", "x", "--iw-samples", "-2"], "--iw-samples"),
        (["sample", "--out", "x.png", "--tracking-uri", DEAD], "--tracking-uri"),
        (["sample", "--out", "x.jpg", "--tracking-uri", DEAD], "--out"),
        (["sample", "--out", "x.png", "--mode", "spiral"], "--mode"),
        (["server", "restart"], "invalid choice"),
        (["server", "start", "--port", "0"], "--port"),
        (["search", "--config", "c.yaml", "--tracking-uri", "file:///tmp/mlruns"], "--tracking-uri"),
        (["train", "--decoder", "1", "--hidden", "8", "--latent", "2", "--batch-size", "0"], "--batch-size"),
        (["train", "--decoder", "1", "--hidden", "8", "--latent", "2", "--lr", "inf"], "--lr"),
        (["train", "--decoder", "1", "--hidden", "8", "--latent", "2", "--out", "c.yaml"], "--out"),
        (["train", "--decoder", "1", "--hidden", "8", "--latent", "2", "--out", "c.yaml/run"], "--out"),
        (["search", "--config", "c.yaml", "--storage-path", "c.yaml"], "--storage-path"),
        (["dashboard", "nosuch", "--storage-path", "."], "nosuch"),
        (["dashboard", "nosuch", "--host", "0.0.0.0"], "--host"),
        (["search", "--config", "c.yaml", "--storage-path", "c.yaml/ray"], "--storage-path"),
        # refused before the embedded server starts (it would live under VAESEARCH_HOME, in tmp_path)
        (["search", "--config", "c.yaml", "--resume", "--storage-path", "ray"], "--resume"),
    ],
)
def test_every_subcommand_refuses_bad_input_in_one_line(args: list[str], field: str, tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "name: t\nspace: {hidden: [8], decoder: [1], latent: [2]}\nbudget: {num_samples: 1, max_epochs: 1}\n"
    )
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = cli(*args, cwd=tmp_path, env={"VAESEARCH_HOME": str(tmp_path / "home")})
    assert_one_line_error(proc, field)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing half-written


@pytest.mark.parametrize(
    "args, field",
    [
        (["search", "--config", "nope.yaml"], "--config"),  # a config's field, and one of the flags of `train`,
        (["train", "--decoder", "9", "--hidden", "8", "--latent", "2"], "--decoder"),  # derived from TrainConfig
    ],
)
def test_the_console_script_itself_says_one_line(args: list[str], field: str, tmp_path: Path) -> None:
    """The installed `vaesearch` (the tests above call main() in-process): same one line, exit 2."""
    script = Path(sys.executable).with_name("vaesearch")
    proc = subprocess.run([str(script), *args], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert_one_line_error(proc, field)
    assert run_cli(*args, cwd=tmp_path).stderr == proc.stderr  # `python -m search` is the same program
    assert sorted(tmp_path.iterdir()) == []


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/vaesearch-pwned",))


def test_a_checkpoint_with_code_in_it_is_refused(tmp_path: Path) -> None:
    """Checkpoints load with weights_only=True: a pickled callable never runs."""
    path = tmp_path / "evil.pt"
    torch.save({"config": {}, "model": _Payload()}, path)
    with pytest.raises(checkpoint.CheckpointError, match="evil.pt"):
        checkpoint.load(path)
    assert not Path("/tmp/vaesearch-pwned").exists()
    proc = cli("evaluate", "--checkpoint", str(path))
    assert_one_line_error(proc, "--checkpoint", "evil.pt")


def test_the_data_unpickler_refuses_code(tmp_path: Path) -> None:
    import gzip

    from vae import data

    blob = gzip.compress(pickle.dumps(_Payload(), protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system"):
        data.hub_to_idx(blob, tmp_path)
    assert not Path("/tmp/vaesearch-pwned").exists()
