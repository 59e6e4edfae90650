"""Start, check and stop an MLflow tracking server that serves its own artifacts.

The server runs in a process group of its own, recorded in a pid file in its
data folder, so `stop` ends it and all its workers, and a search reuses only a
server this module started.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from vae.errors import UserError

PID_FILE = "server.json"
LOG_FILE = "server.log"


class ServerError(UserError):
    """The server cannot be started or reached as asked; the message says what to change."""


@dataclass
class ServerInfo:
    pid: int
    url: str
    host: str
    port: int
    backend_store_uri: str
    artifacts_destination: str
    auth: bool = False
    # the process's start time (psutil): no longer an identity (`_holder` says why); kept so that pid files of
    # either version load, since one that failed to load would read as no server while it runs on
    started: float | None = None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def health(url: str, timeout: float = 2.0) -> bool:
    """True when the server answers /health with 200."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _reachable(host: str) -> str:
    """The address a client on this machine reaches a server bound to `host` at (a wildcard: loopback)."""
    return {"0.0.0.0": "127.0.0.1", "localhost": "127.0.0.1", "::": "::1"}.get(host, host)


def url_of(host: str, port: int) -> str:
    """http://HOST:PORT, an IPv6 address in brackets (RFC 3986)."""
    address = _reachable(host)
    return f"http://[{address}]:{port}" if ":" in address else f"http://{address}:{port}"


def port_in_use(host: str, port: int) -> bool:
    """Whether something listens on `port` at `host` (IPv4 or IPv6, as the host resolves)."""
    try:
        found = socket.getaddrinfo(_reachable(host), port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ServerError("host", f"cannot resolve {host!r}: {e.strerror}") from None
    for family, kind, proto, _, address in found:
        with socket.socket(family, kind, proto) as s:
            s.settimeout(1)
            if s.connect_ex(address) == 0:
                return True
    return False


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def _holder(info: ServerInfo) -> str | None:
    """Who holds the recorded PID now: None when no process does, "" when it is the server recorded.

    Else a description of the other process: after a reboot or a crash the PID may belong to anything.
    """
    try:
        proc = psutil.Process(info.pid)
        started, command = proc.create_time(), proc.cmdline()
    except psutil.ZombieProcess:  # the server, exited and not yet reaped: its workers may still run
        return ""
    except psutil.NoSuchProcess:
        return None
    except psutil.Error as e:  # another user's process: not ours to signal
        return f"a process vaesearch cannot inspect ({type(e).__name__})"
    # Identity by the command `_launch` gave, not by start time: psutil adds the boot time to a process's start,
    # and Linux's boot time (/proc/stat btime, whole seconds, read again each time) moves when the clock is
    # stepped (NTP on a freshly booted VM), so a start time read again may be a second or more off: probably
    # why a CI run's teardown once refused its own server. Another server on this port and store is ours too.
    ours = all(part in command for part in ("mlflow", "server", str(info.port), info.backend_store_uri))
    return "" if ours else f"{shlex.join(command)[:200] or proc.name()} (started {time.ctime(started)})"


def _recorded(data_dir: Path) -> ServerInfo | None:
    try:
        return ServerInfo(**json.loads((Path(data_dir) / PID_FILE).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def read_info(data_dir: Path) -> ServerInfo | None:
    """The server this folder's pid file names, if that very process still runs."""
    info = _recorded(data_dir)
    return info if info is not None and _holder(info) == "" else None


def _differences(running: ServerInfo, asked: Mapping[str, object]) -> list[str]:
    """What a running server does not match among the things explicitly asked for (None: not asked)."""
    have = {"host": running.host, "port": running.port, "backend_store_uri": running.backend_store_uri,
            "artifacts_destination": running.artifacts_destination, "auth": running.auth}  # fmt: skip
    return [name for name, value in asked.items() if value is not None and value != have[name]]


def start(
    data_dir: Path,
    backend_store_uri: str | None = None,
    artifacts_destination: str | None = None,
    host: str | None = None,
    port: int | None = None,
    insecure: bool = False,
    auth: bool = False,
    workers: int = 2,
    timeout: float = 120.0,
    log: Callable[[str], None] | None = None,
) -> ServerInfo:
    """Start a server once /health answers, or return the one running from this folder if it is what was asked.

    None for host, port, store or artifacts means "not asked": any running value
    will do, and a new server takes the default (127.0.0.1:5000, SQLite and a
    folder inside `data_dir`). A running server that differs is never passed off
    as the one asked for. Errors name these parameters (`host`, `port`, ...); the caller knows its flags.
    `log` hears one line when a new server starts and one when it answers (it takes seconds).
    """
    data_dir = Path(data_dir).resolve()
    if host is not None and not is_loopback(host) and not (insecure or auth):
        raise ServerError(
            "host",
            f"{host} is not a loopback address; binding it needs `auth` (MLflow's basic-auth, with "
            "MLFLOW_AUTH_ADMIN_PASSWORD set) or `insecure` (anyone who reaches the port can change every run)",
        )
    running = read_info(data_dir)
    if running and health(running.url):
        asked = {"host": host, "port": port, "backend_store_uri": backend_store_uri,
                 "artifacts_destination": artifacts_destination, "auth": auth or None}  # fmt: skip
        return _reused(running, asked, data_dir)
    host = "127.0.0.1" if host is None else host
    port = 5000 if port is None else port
    if auth and not os.environ.get("MLFLOW_AUTH_ADMIN_PASSWORD"):
        raise ServerError("auth", "set MLFLOW_AUTH_ADMIN_PASSWORD to the admin password the server should create")
    if auth and importlib.util.find_spec("flask_wtf") is None:
        raise ServerError("auth", "MLflow's basic-auth needs the mlflow[auth] extra (pip install 'mlflow[auth]')")
    if port_in_use(host, port):
        raise ServerError("port", f"port {port} on {host} is taken by another process; choose another port")
    data_dir.mkdir(parents=True, exist_ok=True)
    backend = backend_store_uri or f"sqlite:///{data_dir / 'mlflow.db'}"
    artifacts = artifacts_destination or str(data_dir / "artifacts")
    say = log or (lambda line: None)
    began = time.monotonic()
    say(f"starting an MLflow server on {url_of(host, port)} (store {backend}; log {data_dir / LOG_FILE})")
    proc = _launch(data_dir, backend, artifacts, host, port, auth, workers)
    info = ServerInfo(proc.pid, url_of(host, port), host, port, backend, artifacts, auth, _start_time(proc.pid))
    info = _healthy(proc, info, data_dir, timeout)
    say(f"MLflow server ready at {info.url} after {time.monotonic() - began:.0f} s (pid {info.pid})")
    return info


def _reused(running: ServerInfo, asked: Mapping[str, object], data_dir: Path) -> ServerInfo:
    """The running server, if it is what was asked for; else an error that says how it differs."""
    differs = _differences(running, asked)
    if differs:
        have = "; ".join(f"`{name}` {getattr(running, name)} (asked {asked[name]})" for name in differs)
        raise ServerError(
            differs[0],
            f"the server already running from {data_dir} (pid {running.pid}) has {have}; "
            "stop it (vaesearch server stop) or give `data_folder` for a second server",
        )
    return running


def _launch(
    data_dir: Path, backend: str, artifacts: str, host: str, port: int, auth: bool, workers: int
) -> subprocess.Popen:
    """`mlflow server` in a process group of its own, its output appended to the folder's log."""
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend,
        "--artifacts-destination", artifacts,
        "--serve-artifacts",
        "--host", host,
        "--port", str(port),
        "--workers", str(workers),
    ]  # fmt: skip
    env = server_environment(data_dir, auth)
    if auth:
        cmd += ["--app-name", "basic-auth"]
    elif not is_loopback(host):
        print(f"warning: MLflow on {host}:{port} without authentication (insecure, as asked)", file=sys.stderr)
    with open(data_dir / LOG_FILE, "ab") as log:
        return subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env
        )


def server_environment(data_dir: Path, auth: bool) -> dict[str, str]:
    """The server's environment: this process's (usage data off, as `main` set it), and what the server needs."""
    # MLflow 3's job runner (GenAI evaluation jobs: a runner and five huey consumers) serves nothing vaesearch
    # logs; off unless the caller's environment turns it on, it saves a 2-core machine those processes.
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    if auth:
        env["MLFLOW_AUTH_CONFIG_PATH"] = str(_auth_config(data_dir))
        env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", _secret_key(data_dir))
    return env


def _healthy(proc: subprocess.Popen, info: ServerInfo, data_dir: Path, timeout: float) -> ServerInfo:
    """Wait for /health, then record the server in the pid file; a server that never answers is stopped."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServerError("server", f"exited with status {proc.returncode}: {_last_line(data_dir)}")
        if health(info.url):
            tmp = data_dir / f".{PID_FILE}.tmp"
            tmp.write_text(json.dumps(asdict(info)))
            os.replace(tmp, data_dir / PID_FILE)
            return info
        time.sleep(0.5)
    _kill_group(proc.pid)
    raise ServerError("server", f"no answer on /health within {timeout:.0f} s: {_last_line(data_dir)}")


def _auth_config(data_dir: Path) -> Path:
    """basic-auth's config: its user database at an absolute path in the data folder; no password on disk."""
    path = data_dir / "basic_auth.ini"
    user = os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME", "admin")
    path.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = sqlite:///{data_dir / 'basic_auth.db'}\n"
        f"admin_username = {user}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    return path


def _secret_key(data_dir: Path) -> str:
    """The CSRF key basic-auth needs, made once and kept (mode 600) so its workers and restarts agree."""
    path = data_dir / "secret.key"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip()


def _last_line(data_dir: Path) -> str:
    try:
        lines = (data_dir / LOG_FILE).read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return "no log"
    return lines[-1] if lines else "empty log"


def _gone(pid: int, seconds: float) -> bool:
    """Wait up to `seconds` for the process group `pid` to be gone; True if it is."""
    deadline = time.monotonic() + seconds
    while True:
        try:  # reap it if it is our child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def _kill_group(pid: int, grace: float = 10.0) -> None:
    """SIGTERM the group, SIGKILL what is left after `grace`; return once it is gone (or `grace` more passed)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        if _gone(pid, grace):
            return


def stop(data_dir: Path) -> ServerInfo | None:
    """End the server started from this folder and all its workers; None when there was none.

    A PID now held by another process is never signalled: that is refused, the pid file kept.
    """
    path = Path(data_dir) / PID_FILE
    info = _recorded(data_dir)
    holder = None if info is None else _holder(info)
    if info is not None and holder:
        raise ServerError(
            "data_folder",
            f"{path} names pid {info.pid}, which is now {holder}, not the MLflow server started from this folder; "
            f"nothing was signalled. If that server is gone, delete {path}",
        )
    path.unlink(missing_ok=True)
    if info is None or holder is None:
        return None
    _kill_group(info.pid)
    return info
