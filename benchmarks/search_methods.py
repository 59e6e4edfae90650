"""Run the search-method comparison: each method over the same seeds on configs/search-methods.yaml.

For seed s, every method's search samples with the same seed, so they share their
random start (TPE's start-up proposals are its random sampler's, seeded alike) and
differ only after it: a paired design, which compares methods within a seed and
needs fewer seeds than independent draws to tell them apart. Searches run one at
a time, seed by seed, so a stopped run leaves whole pairs; each search's
`trials.csv` (from `vaesearch report`) is copied to OUT/METHOD-sSEED.csv as it
ends, and a line on the machine, precision and wall time goes to OUT/runs.csv (OUT/NAME-runs.csv for
`--as-configured NAME`, below), one per session for a search that was interrupted and resumed.
A search whose CSV exists is skipped; one with a record is resumed (`--resume`).

    python benchmarks/search_methods.py --home ~/vaesearch-methods [--out docs/search-methods] [--seeds 0 1 2 3 4]

`--config FILE --as-configured NAME` runs FILE's own sampler and scheduler instead of the methods, as
NAME-sSEED for each seed (only the name and `sampler.seed` set): the 300-epoch challenge's searches,

    python benchmarks/search_methods.py --home /work/challenge-home --config configs/challenge-300.yaml \
        --as-configured challenge-300 --out docs/reproduction --seeds 1 2
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "configs" / "search-methods.yaml"
METHODS = {  # name: (sampler.kind, scheduler)
    "random-asha": ("random", "asha"),
    "tpe-asha": ("tpe", "asha"),
    "tpe-promotion": ("tpe", "promotion"),
}
CONCURRENCY = 2  # asha's budget.max_concurrent: as many as the promotion scheduler's resources allow here


def cpu() -> tuple[str, str]:
    """The CPU's model name and its widest vector ISA, as the comparison's machines are recorded."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = re.search(r"model name\s*:\s*(.*)", text)
    isa = "avx512" if "avx512f" in text and os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() != "AVX2" else "avx2"
    return (model.group(1).strip() if model else platform.processor()), isa


def config_for(base: Path, method: str, seed: int, folder: Path) -> Path:
    """The search's config in `folder`: `base` with the name and seed set and, for one of METHODS, its method."""
    config = yaml.safe_load(base.read_text())
    config["name"] = f"{method}-s{seed}"
    config["sampler"]["seed"] = seed
    if method in METHODS:
        kind, scheduler = METHODS[method]
        config["sampler"]["kind"] = kind
        config["scheduler"] = scheduler
        if scheduler != "promotion":
            config["budget"]["max_concurrent"] = CONCURRENCY
    path = folder / f"{config['name']}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def vaesearch(home: Path, *args: str) -> int:
    """The installed command, beside this Python, with the runs' own home (server, Ray state).

    It runs in a process group of its own and a Ctrl-C here is passed on to it, each time, so it
    stops as it does alone (`subprocess.call` would kill it at once): an interrupted search is
    logged and resumable. Its exit status says whether it was interrupted (130).
    """
    env = {**os.environ, "VAESEARCH_HOME": str(home)}
    command = [str(Path(sys.executable).parent / "vaesearch"), *args]
    with subprocess.Popen(command, env=env, cwd=ROOT, process_group=0) as proc:
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:
                proc.send_signal(signal.SIGINT)


def precisions(trials_csv: Path) -> str:
    """The precisions the search's trials trained in, as its CSV says (`auto` takes what the CPU runs)."""
    with trials_csv.open(newline="") as f:
        return "+".join(sorted({row["precision"] for row in csv.DictReader(f)}))


def run(base: Path, method: str, seed: int, home: Path, out: Path, port: int, log: Path) -> bool:
    name = f"{method}-s{seed}"
    target = out / f"{name}.csv"
    if target.exists():
        return True
    (home / "configs").mkdir(parents=True, exist_ok=True)
    config = config_for(base, method, seed, home / "configs")
    resume = ["--resume"] if (home / "ray" / name / "vaesearch.json").exists() else []
    started = time.time()
    status = vaesearch(home, "search", "--config", str(config), "--server-port", str(port), *resume)
    wall = time.time() - started
    report = home / "reports" / name
    reported = vaesearch(home, "report", "--experiment", name, "--out", str(report)) == 0
    model, isa = cpu()
    new = not log.exists()
    with log.open("a", newline="") as f:  # a line per session a search ran in: it may span machines
        writer = csv.writer(f)
        if new:
            writer.writerow(["search", "cpu", "isa", "cores", "precision", "wall_s_this_session", "date", "status"])
        precision = precisions(report / "trials.csv") if reported else ""
        ending = {0: "ended", 130: "interrupted"}.get(status, f"failed (exit {status})")
        writer.writerow([name, model, isa, os.cpu_count(), precision, round(wall), time.strftime("%Y-%m-%d"), ending])
    if status == 130:
        print(f"{name}: interrupted; run this again to resume it", file=sys.stderr)
    if status != 0 or not reported:
        return False
    shutil.copy(report / "trials.csv", target)
    print(f"{name}: wrote {target}", flush=True)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, required=True, help="VAESEARCH_HOME of the runs: server, Ray state")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "search-methods")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--config", type=Path, default=BASE, help="the base config (configs/search-methods.yaml)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--methods", nargs="+", choices=sorted(METHODS), default=list(METHODS))
    which.add_argument("--as-configured", metavar="NAME", help="run the config's own method as NAME-sSEED")
    parser.add_argument("--server-port", type=int, default=5057, help="the runs' embedded MLflow server")
    args = parser.parse_args()
    if args.as_configured in METHODS:
        parser.error(f"--as-configured: {args.as_configured} is one of the methods; give the search another name")
    args.out.mkdir(parents=True, exist_ok=True)
    methods = [args.as_configured] if args.as_configured else args.methods
    for seed in args.seeds:
        for method in methods:
            home, out = args.home.expanduser().resolve(), args.out.resolve()
            log = out / (f"{args.as_configured}-runs.csv" if args.as_configured else "runs.csv")
            if not run(args.config.resolve(), method, seed, home, out, args.server_port, log):
                sys.exit(1)


if __name__ == "__main__":
    main()
