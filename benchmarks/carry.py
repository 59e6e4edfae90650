"""Carry an unfinished search home from one machine to the next as one compressed tar.

A search resumes from its home (`VAESEARCH_HOME`): the record, Optuna's study, the MLflow
store and Ray's files. Where a machine is not kept between working sessions and a search
outlasts one (the 300-epoch challenge takes 3.5-5 hours on a 2-core AVX2 CPU in fp32), the
home has to travel some other way, here through the repository. The whole home is hundreds
of MB, almost all of it weights that a resume never reads, so `pack` keeps:

- everything but weights: the record, the study, MLflow's database and sample grids, Ray's
  trial table and each trial's results;
- the files of the newest checkpoint of each trial that Ray resumes (all but those its saved
  state has terminated): older checkpoints and those of terminated trials stay as empty
  folders, so that Ray's `num_to_keep` can still delete them;
- the best weights (MLflow's `checkpoint/best.pt`) of those trials and of each search's
  leading trial: what a resumed trial goes on from, and what the verdict evaluates. Other
  trials' best weights are left out: their runs keep metrics and grids, not weights.

Ray's state and MLflow's database name the home by its absolute path, so `unpack` lays it
out where it was packed. Stop the search (Ctrl-C) before packing; `pack` stops the home's
embedded MLflow server, so the database is not written while it is read.

    python benchmarks/carry.py pack --home /work/challenge-home --out docs/reproduction/challenge-300-carry.tar.xz
    python benchmarks/carry.py unpack docs/reproduction/challenge-300-carry.tar.xz
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sqlite3
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from a checkout

from mlflow_server.server import stop  # noqa: E402
from vae.records import TRIAL_ID  # noqa: E402

MANIFEST = "carry.json"  # in the tar: the home's absolute path and what was left out
TRIAL_DIR = re.compile(r"train_trial_([0-9a-f]+)_")


def resumed(search: Path) -> set[str]:
    """The trials Ray resumes from their newest checkpoint: all but those its saved state has TERMINATED
    (the search resumes errored trials too, which then report their end from that checkpoint)."""
    states = sorted(search.glob("experiment_state-*.json"))
    if not states:
        return set()
    trials = [json.loads(data) for data, _ in json.loads(states[-1].read_text())["trial_data"]]
    return {t["trial_id"] for t in trials if t["status"] != "TERMINATED"}


def leader(search: Path) -> str | None:
    """The trial with the lowest best loss in the search's record (`vaesearch.json`)."""
    trials = json.loads((search / "vaesearch.json").read_text())["trials"]
    scored = {tid: t["loss"] for tid, t in trials.items() if t.get("loss") is not None}
    return min(scored, key=lambda tid: scored[tid]) if scored else None


def run_trials(home: Path) -> dict[str, str]:
    """MLflow run id -> Ray trial id, from the tag every trial's run carries."""
    with sqlite3.connect(home / "mlflow" / "mlflow.db") as db:
        return dict(db.execute("SELECT run_uuid, value FROM tags WHERE key = ?", (TRIAL_ID,)).fetchall())


def left_out(home: Path) -> list[Path]:
    """The weight files a resume does not read (see the module's docstring)."""
    out: list[Path] = []
    kept: set[str] = set()
    for search in (home / "ray").glob("*/vaesearch.json"):
        resuming = resumed(search.parent)
        best = leader(search.parent)
        kept |= resuming | ({best} if best else set())
        for trial_dir in search.parent.glob("train_trial_*"):
            match = TRIAL_DIR.match(trial_dir.name)
            points = sorted(trial_dir.glob("checkpoint_*"))
            keep_newest = match is not None and match.group(1) in resuming
            for point in points[:-1] if keep_newest else points:
                out.extend(p for p in point.rglob("*") if p.is_file())
    for run, trial in run_trials(home).items():
        if trial not in kept:
            out.extend((home / "mlflow" / "artifacts").glob(f"*/{run}/artifacts/checkpoint/best.pt"))
    return out


def pack(home: Path, out: Path) -> None:
    home = home.expanduser().resolve()
    stop(home / "mlflow")
    skipped = set(left_out(home))
    volatile = {home / "mlflow" / "server.json"}  # names a process of this machine
    manifest = {"home": str(home), "left_out": sorted(str(p.relative_to(home)) for p in skipped)}
    partial = out.with_name(out.name + ".partial")
    with tarfile.open(partial, "w:xz") as tar:
        data = json.dumps(manifest, indent=1).encode()
        info = tarfile.TarInfo(MANIFEST)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for path in sorted(home.rglob("*")):
            if path not in skipped and path not in volatile and (path.is_file() or path.is_dir()):
                tar.add(path, arcname=f"home/{path.relative_to(home)}", recursive=False)
    partial.replace(out)
    size = out.stat().st_size / 2**20
    print(f"packed {home} into {out} ({size:.1f} MiB; {len(skipped)} weight files left out)")


def unpack(carry: Path) -> None:
    with tarfile.open(carry, "r:xz") as tar:
        manifest = json.load(tar.extractfile(MANIFEST))  # type: ignore[arg-type]
        home = Path(manifest["home"])
        if home.exists() and any(home.iterdir()):
            sys.exit(f"unpack: {home} exists and is not empty; move it away first")
        members = [m for m in tar.getmembers() if m.name.startswith("home/")]
        for m in members:
            m.name = m.name.removeprefix("home/")
        home.mkdir(parents=True, exist_ok=True)
        tar.extractall(home, members=members, filter="data")
    print(f"unpacked {carry} into {home}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", required=True)
    packing = verbs.add_parser("pack", help="a stopped search home into one tar")
    packing.add_argument("--home", type=Path, required=True)
    packing.add_argument("--out", type=Path, required=True)
    unpacking = verbs.add_parser("unpack", help="a tar back where it was packed")
    unpacking.add_argument("carry", type=Path)
    args = parser.parse_args()
    if args.verb == "pack":
        pack(args.home, args.out)
    else:
        unpack(args.carry)


if __name__ == "__main__":
    main()
