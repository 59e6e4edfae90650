"""Carry an unfinished search home from one machine to the next as one compressed tar.

A search resumes from its home (`VAESEARCH_HOME`): the record, Optuna's study, the MLflow
store and Ray's files. Where a machine is not kept between working sessions and a search
outlasts one (the 300-epoch challenge takes 3.5-5 hours on a 2-core AVX2 CPU in fp32), the
home has to travel some other way, here through the repository. The whole home is hundreds
of MB, almost all of it weights that a resume never reads, so `pack` keeps:

- everything but weights: the record, the study, MLflow's database and sample grids, Ray's
  trial table and each trial's results;
- for each trial Ray resumes (all but those its saved state has TERMINATED), the checkpoint
  that state names (every one of the trial's checkpoints where it names none): what the trial
  goes on from, or reports its end from. The other checkpoints stay as empty folders, which
  Ray needs: its `num_to_keep` deletes them later and fails on a missing one;
- MLflow's best weights (`checkpoint/best.pt`) of those trials and, per latent size, of the
  best rankable trial among the rest (not failed, not a replay): `vaesearch promote` evaluates
  the overall best, `vaesearch report` draws each latent size's best.

What is lost for the other trials: their runs keep metrics and sample grids, not weights; and
a search's end can no longer refill, from their checkpoints, epochs that never reached MLflow
(`pack` says so when a record counts such lost writes).

Ray's state and MLflow's database name the home by its absolute path, so `unpack` lays it
out where it was packed. Stop the search (Ctrl-C) before packing; `pack` stops the home's
embedded MLflow server, so the database is not written while it is read.

    python benchmarks/carry.py pack --home /work/challenge-home --out docs/reproduction/challenge-300-carry.tar.xz
    python benchmarks/carry.py unpack docs/reproduction/challenge-300-carry.tar.xz
"""

from __future__ import annotations

import argparse
import contextlib
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
from vae.records import DUPLICATE_OF, END_STATE, LATENT, TRIAL_ID, rankable  # noqa: E402

MANIFEST = "carry.json"  # in the tar: the home's absolute path and what was left out
TRIAL_DIR = re.compile(r"train_trial_([0-9a-f]+)_")


def resumed(search: Path) -> dict[str, str | None]:
    """The trials Ray resumes (it skips only those its newest saved state has TERMINATED), each with
    the checkpoint folder that state names: the one it restores, not always the newest on disk
    (a trial may have written one more that the driver had not yet heard of)."""
    states = sorted(search.glob("experiment_state-*.json"))  # Ray reads the last by name too
    if not states:
        return {}
    resuming: dict[str, str | None] = {}
    for trial_json, runtime_json in json.loads(states[-1].read_text())["trial_data"]:
        trial, runtime = json.loads(trial_json), json.loads(runtime_json)
        if trial["status"] != "TERMINATED":
            resuming[trial["trial_id"]] = (runtime.get("last_result") or {}).get("checkpoint_dir_name")
    return resuming


def best_per_latent(search: Path, skip: set[str]) -> set[str]:
    """Per latent size, the rankable trial (as `vaesearch promote` ranks) with the lowest best loss."""
    trials = json.loads((search / "vaesearch.json").read_text())["trials"]
    best: dict[object, tuple[float, str]] = {}
    for tid, t in trials.items():
        loss = t.get("loss")
        tags = {END_STATE: t.get(END_STATE, ""), DUPLICATE_OF: "replay" if t.get("replay") else ""}  # as its run's
        if tid in skip or not rankable(tags, loss):
            continue
        latent = t.get("config", {}).get(LATENT)
        if latent not in best or loss < best[latent][0]:
            best[latent] = (loss, tid)
    return {tid for _, tid in best.values()}


def trial_of_run(home: Path) -> dict[str, str]:
    """MLflow run id -> Ray trial id, from the tag every trial's run carries."""
    uri = f"file:{home / 'mlflow' / 'mlflow.db'}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        return dict(db.execute("SELECT run_uuid, value FROM tags WHERE key = ?", (TRIAL_ID,)).fetchall())


def left_out(home: Path) -> list[Path]:
    """The weight files a resume does not read (see the module's docstring)."""
    out: list[Path] = []
    kept: set[str] = set()
    for search in (home / "ray").glob("*/vaesearch.json"):
        resuming = resumed(search.parent)
        kept |= set(resuming) | best_per_latent(search.parent, skip=set(resuming))
        for trial_dir in search.parent.glob("train_trial_*"):
            match = TRIAL_DIR.match(trial_dir.name)
            tid = match.group(1) if match else None
            for point in trial_dir.glob("checkpoint_*"):
                if tid not in resuming or resuming[tid] not in (None, point.name):
                    out.extend(p for p in point.rglob("*") if p.is_file())
    for run, trial in trial_of_run(home).items():
        if trial not in kept:
            out.extend((home / "mlflow" / "artifacts").glob(f"*/{run}/artifacts/checkpoint/best.pt"))
    return out


def running(home: Path) -> list[str]:
    """Searches whose record says no ending: still running, or their driver was killed."""
    names = []
    for path in (home / "ray").glob("*/vaesearch.json"):
        if json.loads(path.read_text()).get("ending") is None:
            names.append(path.parent.name)
    return names


def pack(home: Path, out: Path, force: bool = False) -> None:
    """Write what a resume of `home`'s searches reads into the tar `out` (atomically)."""
    home = home.expanduser().resolve()
    if not (home / "mlflow" / "mlflow.db").exists():
        sys.exit(f"pack: {home} has no MLflow store (mlflow/mlflow.db): not a search home")
    unended = running(home)
    if unended and not force:
        sys.exit(f"pack: no ending in the record of {', '.join(unended)}: stop it first (Ctrl-C), or --force "
                 "if its driver was killed")  # fmt: skip
    stop(home / "mlflow")
    skipped = set(left_out(home))
    for path in (home / "ray").glob("*/vaesearch.json"):
        if lost := json.loads(path.read_text()).get("lost_writes"):
            print(f"pack: {path.parent.name} lost {lost} MLflow writes; its end cannot refill them for trials "
                  "whose checkpoints are left out", file=sys.stderr)  # fmt: skip
    volatile = {home / "mlflow" / "server.json"}  # names a process of this machine
    manifest = {"home": str(home), "left_out": sorted(str(p.relative_to(home)) for p in skipped)}
    partial = out.with_name(out.name + ".partial")
    try:
        with tarfile.open(partial, "w:xz") as tar:
            data = json.dumps(manifest, indent=1).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
            for path in sorted(home.rglob("*")):
                if path not in skipped and path not in volatile and (path.is_file() or path.is_dir()):
                    tar.add(path, arcname=f"home/{path.relative_to(home)}", recursive=False)
        partial.replace(out)
    finally:
        partial.unlink(missing_ok=True)
    size = out.stat().st_size / 2**20
    print(f"packed {home} into {out} ({size:.1f} MiB; {len(skipped)} weight files left out)")


def unpack(carry: Path) -> None:
    """Lay a carry out at the path it was packed from, which must be empty or absent."""
    with tarfile.open(carry, "r:xz") as tar:
        try:
            manifest = json.load(tar.extractfile(MANIFEST))  # type: ignore[arg-type]
        except KeyError:
            sys.exit(f"unpack: {carry} has no {MANIFEST}: not a carry that pack wrote")
        home = Path(manifest["home"])
        if home.exists() and (not home.is_dir() or any(home.iterdir())):
            sys.exit(f"unpack: {home} exists and is not an empty folder; move it away first")
        members = [m for m in tar.getmembers() if m.name.startswith("home/") and (m.isfile() or m.isdir())]
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
    packing.add_argument("--force", action="store_true", help="pack a search whose driver was killed")
    unpacking = verbs.add_parser("unpack", help="a tar back where it was packed")
    unpacking.add_argument("carry", type=Path)
    args = parser.parse_args()
    if args.verb == "pack":
        pack(args.home, args.out, args.force)
    else:
        unpack(args.carry)


if __name__ == "__main__":
    main()
