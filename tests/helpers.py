"""What tests share besides fixtures: the CLI in a subprocess, its error shape, tiny configs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Every process the suite starts inherits this mark (conftest sets it), so the suite can find what it
# started, and only that: a user's own search or Ray cluster on the same machine is not the suite's to stop.
MARK = "VAESEARCH_TEST_SESSION"


def processes_with(name: str, value: str) -> list[int]:
    """Processes other than this one whose environment holds name=value."""
    needle = f"{name}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:  # gone already, or not ours to read
            continue
    return found


def started_by_the_suite(pids: list[int]) -> list[int]:
    """Those of `pids` that this test session started (directly or through Ray)."""
    ours = set(processes_with(MARK, os.environ[MARK]))
    return [pid for pid in pids if pid in ours]


def stop_processes(pids: list[int], grace: float = 15.0) -> None:
    """SIGTERM, then SIGKILL whatever is still there after `grace` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                continue
        deadline = time.monotonic() + grace
        while sig == signal.SIGTERM and time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.5)


def stop_until_none(find: Callable[[], list[int]], grace: float, within: float = 30.0) -> None:
    """Stop what `find` finds, again until it finds nothing (or `within` seconds passed): a Ray node being
    stopped may still start a process (a worker, an agent it restarts), which carries the same mark."""
    deadline = time.monotonic() + within
    while (pids := find()) and time.monotonic() < deadline:
        stop_processes(with_descendants(pids), grace)
        grace = 1


def with_descendants(pids: list[int]) -> list[int]:
    """`pids` and every process below them: Ray's agents (children of the raylet) retitle themselves over
    the start of their environment, where the Raylet's reordering may have put a mark; this finds them anyway."""
    import psutil

    found = set(pids)
    for pid in pids:
        try:
            found.update(child.pid for child in psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            continue
    return sorted(found)


# `ray start` writes its address there; `--address auto` reads it
RAY_CURRENT = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"


def ray_start(env: dict, num_cpus: int = 1, head_address: str | None = None) -> str:
    """`ray start`: a head (returning its address) or, with `head_address`, a node that joins it.

    A head overwrites RAY_CURRENT; `stop_cluster` puts back what was there (a user's own cluster).
    """
    from mlflow_server.server import free_port

    ray = str(Path(sys.executable).with_name("ray"))
    common = ["--num-cpus", str(num_cpus), "--node-ip-address", "127.0.0.1", "--disable-usage-stats"]
    if head_address:
        cmd, address = [ray, "start", "--address", head_address, *common], head_address
    else:
        port = free_port()
        address = f"127.0.0.1:{port}"
        cmd = [ray, "start", "--head", "--port", str(port), "--include-dashboard", "false", *common]
    subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=120)
    return address


def stop_cluster(cluster: str, address: str, before: str | None) -> None:
    """Stop the processes marked VAESEARCH_TEST_CLUSTER=`cluster` (`ray stop` would stop every Ray on the machine),
    and put back RAY_CURRENT as it was `before` the cluster started (None: there was none)."""
    stop_until_none(lambda: processes_with("VAESEARCH_TEST_CLUSTER", cluster), grace=3)  # `ray stop` SIGKILLs at 5 s
    if RAY_CURRENT.exists() and RAY_CURRENT.read_text().strip().endswith(":" + address.rpartition(":")[2]):
        if before is None:
            RAY_CURRENT.unlink()  # not a dead cluster's address left for `--address auto`
        else:
            RAY_CURRENT.write_text(before)


def ray_current() -> str | None:
    """What RAY_CURRENT holds now, to give `stop_cluster` as `before`."""
    return RAY_CURRENT.read_text() if RAY_CURRENT.exists() else None


def run_cli(
    *args: str, env: dict | None = None, timeout: float = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Run `vaesearch` as a user would, in a subprocess (2-4 s of imports each: `cli` checks errors cheaper).

    `env` adds to this process's environment; a value of None removes the variable.
    """
    return subprocess.run(
        [sys.executable, "-m", "search", *args],
        capture_output=True,
        text=True,
        env=with_env(env),
        timeout=timeout,
        cwd=cwd or REPO,
    )


def with_env(env: dict | None) -> dict[str, str]:
    """This process's environment with `env` added; a value of None removes that variable."""
    merged = {**os.environ, **(env or {})}
    return {k: v for k, v in merged.items() if v is not None}


def cli(*args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `vaesearch` in this process: `main(argv)` with its output captured, as `run_cli` returns it.

    The environment (`env` as `run_cli` takes it), working folder and MLflow's process-wide
    tracking URI are put back afterwards, so what one call sets cannot leak into the next test.
    For errors and analysis commands; a search runs in a subprocess (`run_cli`), as its Ray driver must.
    """
    import contextlib
    import io

    from mlflow.tracking._tracking_service import utils as tracking_utils

    import search.tuner
    from search.cli import main

    def no_ray(*_: object, **__: object) -> None:
        raise AssertionError("a search got as far as starting Ray inside pytest: run it with run_cli")

    saved_env, saved_cwd, saved_uri = dict(os.environ), os.getcwd(), tracking_utils._tracking_uri
    saved_ray_init, search.tuner.ray_init = search.tuner.ray_init, no_ray  # type: ignore[assignment]
    out, err = io.StringIO(), io.StringIO()
    try:
        wanted = with_env(env)
        os.environ.clear()
        os.environ.update(wanted)
        os.chdir(cwd or REPO)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:  # argparse's own exits (a bad flag: 2; --help: 0)
                code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
    finally:
        search.tuner.ray_init = saved_ray_init
        os.chdir(saved_cwd)
        # promote and sample set MLflow's URI, which MLflow also writes to os.environ: undo both, in that order
        if tracking_utils._tracking_uri != saved_uri:
            tracking_utils.set_tracking_uri(saved_uri)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["vaesearch", *args], code, out.getvalue(), err.getvalue())


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit 2, one line on stderr naming the field, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def write_config(path: Path, **sections: dict) -> Path:
    """A tiny search config: two epochs on a few hundred images, overridable per section."""
    import yaml

    config = {
        "name": "tiny",
        "space": {"hidden": [8, 16], "decoder": [1], "latent": [2]},
        "train": {"precision": "auto"},
        "budget": {"num_samples": 6, "max_epochs": 2, "max_concurrent": 2},
        "asha": {"grace_period": 1, "reduction_factor": 2},
        "sampler": {"seed": 0, "n_startup_trials": 2},
        "data": {"subset": 1024, "val_subset": 128},
        # samples_every beyond max_epochs: grids come only where a trial may stop; system metrics often enough to see
        "tracking": {"samples_every": 5, "system_metrics_s": 0.5},
    }
    for key, value in sections.items():
        config[key] = {**config[key], **value} if isinstance(config.get(key), dict) else value
    path.write_text(yaml.safe_dump(config))
    return path


def search_args(
    config: Path, name: str, url: str, storage: Path | str, *extra: str, address: str | None = None
) -> list[str]:
    """`vaesearch search`'s arguments: a given server and storage path, on the Ray at `address` (None: its own)."""
    joined = ["--address", address] if address else []
    return ["search", "--config", str(config), "--name", name, "--tracking-uri", url, "--storage-path", str(storage),
            *joined, *extra]  # fmt: skip


def search_env(address: str | None, env: dict | None = None) -> dict:
    """`env` for a search (as `run_cli` takes it): the suite turns Ray's token auth off for its head,
    a search with a Ray of its own must do that by itself, as for a user."""
    return {**(env or {}), **({} if address else {"RAY_AUTH_MODE": None})}


def search(
    config: Path, name: str, url: str, storage: Path, *extra: str, address: str | None = None
) -> subprocess.CompletedProcess:
    """`vaesearch search` in a subprocess, to its end (`search_args`)."""
    return run_cli(*search_args(config, name, url, storage, *extra, address=address), env=search_env(address))


def promote(url: str, *extra: str) -> dict:
    """`vaesearch promote` on the e2e search, with a small K; its one JSON line."""
    proc = cli("promote", "--experiment", "e2e", "--tracking-uri", url, "--iw-samples", "2", *extra)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout
    return json.loads(lines[0])


def ctrl_c_able() -> None:
    """Popen's preexec_fn for a child a test stops with SIGINT, as Ctrl-C would.

    A suite started in the background by a non-interactive shell inherits SIGINT
    ignored, and Python then never raises KeyboardInterrupt; restore the default.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)


BUCKET, KEY, SECRET = "vaesearch", "vaesearch-test", "vaesearch-test-secret"  # the `s3` fixture's bucket, keys


def objects(env: dict, prefix: str) -> list[str]:
    from pyarrow import fs

    store = fs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key=KEY, secret_key=SECRET)
    selector = fs.FileSelector(f"{BUCKET}/{prefix}", recursive=True, allow_not_found=True)
    return [i.path for i in store.get_file_info(selector)]


def read_object(env: dict, key: str) -> bytes:
    from pyarrow import fs

    store = fs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key=KEY, secret_key=SECRET)
    with store.open_input_stream(f"{BUCKET}/{key}") as f:
        return f.read()
