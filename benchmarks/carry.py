"""Carry an unfinished search home from one machine to the next as one compressed tar.

A search resumes from its home (`VAESEARCH_HOME`): the record, Optuna's study, the MLflow
store and Ray's files. Where a machine is not kept between working sessions and a search
outlasts one (the 300-epoch challenge takes 3.5-5 hours on a 2-core AVX2 CPU in fp32), the
home has to travel some other way, here through the repository. The whole home is hundreds
of MB, almost all of it weights that a resume never reads, so `pack` keeps:

- everything but weights: the record, the study, MLflow's database and sample grids, Ray's
  trial table and each trial's results;
- each trial's files of its newest checkpoint, if the record has not ended it: what Ray
  resumes it from (older checkpoints and those of ended trials stay as empty folders, so
  Ray's `num_to_keep` can still delete them);
- the best weights (MLflow's `checkpoint/best.pt`) of every trial not ended and of the
  leading trial: what a resumed trial overwrites, and what the verdict evaluates. Other
  ended trials' best weights are left out: their runs keep metrics and grids, not weights.

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


def records(home: Path) -> dict[str, dict]:
    """Every search's trials in `home` by Ray's trial id, from each record (`vaesearch.json`)."""
    trials: dict[str, dict] = {}
    for path in sorted((home / "ray").glob("*/vaesearch.json")):
        trials.update(json.loads(path.read_text())["trials"])
    return trials


def weights_kept(home: Path, trials: dict[str, dict]) -> set[str]:
    """The trials whose best weights travel: those not ended, and the one with the lowest loss."""
    kept = {tid for tid, t in trials.items() if "end_state" not in t}
    scored = {tid: t["loss"] for tid, t in trials.items() if t.get("loss") is not None}
    if scored:
        kept.add(min(scored, key=lambda tid: scored[tid]))
    return kept


def run_trials(home: Path) -> dict[str, str]:
    """MLflow run id -> Ray trial id, from the tag every trial's run carries."""
    with sqlite3.connect(home / "mlflow" / "mlflow.db") as db:
        return dict(db.execute("SELECT run_uuid, value FROM tags WHERE key = ?", (TRIAL_ID,)).fetchall())


def left_out(home: Path) -> list[Path]:
    """The weight files a resume does not read (see the module's docstring)."""
    trials = records(home)
    out: list[Path] = []
    for trial_dir in (home / "ray").glob("*/train_trial_*"):
        match = TRIAL_DIR.match(trial_dir.name)
        points = sorted(trial_dir.glob("checkpoint_*"))
        ended = match is None or "end_state" in trials.get(match.group(1), {"end_state": "unknown"})
        for point in points if ended else points[:-1]:
            out.extend(p for p in point.rglob("*") if p.is_file())
    kept = weights_kept(home, trials)
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
