"""The README's and docs' marked examples, run as written, so that the text cannot drift from the code.

A fenced block right after `<!-- example -->` is run (Python with this
interpreter, bash with the virtual environment's commands on the PATH), in a
fresh folder, in the order the file gives; `<!-- example: serve -->` starts a
server that the blocks after it talk to, stopped at the end. The only edits:
the embedded server's address becomes the suite's server (where a champion was
promoted), and the served model's port 5001 a free one.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mlflow_server import server
from tests.helpers import REPO, with_env

BLOCK = re.compile(r"<!-- example(?:: (?P<kind>\w+))? -->\n```(?P<lang>\w+)\n(?P<code>.*?)\n```", re.S)
MARKDOWN = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
PROJECT = ("vae", "search", "analysis", "mlflow_server")


def examples(path: Path) -> list[tuple[str, str, str]]:
    """(kind, language, code) of each marked block of a Markdown file, in order."""
    return [(m["kind"] or "run", m["lang"], m["code"]) for m in BLOCK.finditer(path.read_text())]


SOURCES = [path for path in MARKDOWN if examples(path)]


def test_the_readme_marks_its_quick_examples() -> None:
    found = examples(REPO / "README.md")
    assert [lang for _, lang, _ in found] == ["python", "python", "bash", "python", "bash"], found
    assert all(lang in {"python", "bash"} for path in MARKDOWN for _, lang, _ in examples(path))


def _serve(code: str, env: dict[str, str], cwd: Path, port: int) -> subprocess.Popen:
    """A marked server, started as written, once it answers; with this project's packages made unimportable."""
    proc = subprocess.Popen(["bash", "-c", code], cwd=cwd, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
            return proc
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"the served model exited: {proc.stderr.read()[-3000:] if proc.stderr else ''}")
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("the served model never answered /ping")


@pytest.mark.slow
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_marked_examples_run_as_written(
    source: Path, promoted: dict, mlflow_url: str, mnist_dir: Path, tmp_path: Path
) -> None:
    blocks = examples(source)
    port = server.free_port()
    # a folder that shadows this project's packages: a served model that needed its source would fail to load
    shadow = tmp_path / "shadow"
    for package in PROJECT:
        (shadow / package).mkdir(parents=True)
        (shadow / package / "__init__.py").write_text(f"raise ImportError('{package} is not for a served model')\n")
    work = tmp_path / "work"
    work.mkdir()
    env = with_env({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
                    "VAESEARCH_DATA_DIR": str(mnist_dir), "VAESEARCH_HOME": str(tmp_path / "home"),
                    "MLFLOW_TRACKING_URI": None})  # fmt: skip
    served = []
    try:
        for kind, lang, code in blocks:
            code = code.replace("http://127.0.0.1:5000", mlflow_url).replace("5001", str(port))
            if kind == "serve":
                unimportable = {**env, "PYTHONPATH": str(shadow)}
                check = subprocess.run([sys.executable, "-c", "import vae"], env=unimportable, cwd=work,
                                       capture_output=True, text=True)  # fmt: skip
                assert check.returncode != 0 and "not for a served model" in check.stderr
                served.append(_serve(code, unimportable, work, port))
                continue
            command = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
            proc = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, f"{source.name}:\n{code}\n{proc.stderr[-3000:]}"
    finally:
        for proc in served:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
