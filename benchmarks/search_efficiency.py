"""What ASHA saves: one fixed list of configs trained with ASHA and with FIFO (every trial to max_epochs).

Prints the epochs each trained, both best validation losses, and the per-trial
overhead of the search machinery: trial start to first batch, and the time a
trial waits on MLflow logging as a share of its epoch time. Both runs use the
real trainable, a real local Ray and a real MLflow server over HTTP.

    python benchmarks/search_efficiency.py [--configs 12] [--max-epochs 9] [--subset 5000] [--smoke]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from search import environment

# As `vaesearch` does, before MLflow is imported (it makes its telemetry client then) and its server starts.
environment.configure(local_ray="--address" not in sys.argv)

from ray import tune  # noqa: E402

from mlflow_server import server  # noqa: E402
from search.callbacks import TrackingCallback  # noqa: E402
from search.cluster import ray_init  # noqa: E402
from search.config import validate  # noqa: E402
from search.recorder import Recorder  # noqa: E402
from search.schedulers import Fifo, scheduler  # noqa: E402
from search.settings import TrialSettings  # noqa: E402
from search.state import VERSION, SearchState  # noqa: E402
from search.tracking import Tracker  # noqa: E402
from search.trainable import train_trial  # noqa: E402
from search.tuner import result_files  # noqa: E402
from vae import data  # noqa: E402
from vae.records import DECODER, HIDDEN, LATENT  # noqa: E402

SPACE = {HIDDEN: [32, 64, 128, 256], DECODER: [1, 2, 3, 5, 6], LATENT: [2, 5, 10, 20]}


def fixed_configs(n: int, seed: int) -> list[dict]:
    """n distinct configs drawn once from SPACE, the same list for both schedulers."""
    rng = random.Random(seed)
    every = [{HIDDEN: h, DECODER: d, LATENT: z} for h in SPACE[HIDDEN] for d in SPACE[DECODER] for z in SPACE[LATENT]]
    return rng.sample(every, n)


def run(label: str, cfg, configs: list[dict], settings: TrialSettings, storage: Path, concurrent: int) -> list[dict]:
    def trial(config: dict, settings: TrialSettings) -> None:
        train_trial(config["point"], settings)

    tracker = Tracker(settings.tracking_uri)
    exp = tracker.experiment_id(f"bench-{label}-{int(time.time())}")
    parent = tracker.start_parent(exp, label, params={"configs": json.dumps(configs)}, tags={})
    settings = dataclasses.replace(settings, experiment_id=exp, parent_run_id=parent)
    state = SearchState(label, cfg.model_dump(), settings.tracking_uri, exp, parent, version=VERSION)
    recorder = Recorder(state, storage / label)
    stopper = scheduler(cfg, recorder) if label == "asha" else Fifo(recorder)
    analysis = tune.run(  # as `vaesearch search` runs it: nothing of the callbacks is pickled
        tune.with_resources(tune.with_parameters(trial, settings=settings), {"cpu": settings.cpus}),
        config={"point": tune.grid_search(configs)},
        scheduler=stopper,
        max_concurrent_trials=concurrent,
        name=label,
        storage_path=str(storage),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        callbacks=[*result_files(), TrackingCallback(settings.tracking_uri, exp, parent, recorder)],
        verbose=0,
        raise_on_failed_trial=False,
    )
    grid = tune.ResultGrid(analysis)
    if grid.errors:
        raise SystemExit(f"{label}: {len(grid.errors)} trial(s) failed: {grid.errors[0]}")
    rows = []
    for result in grid:
        history = result.metrics_dataframe
        rows.append(
            {
                "config": result.config["point"],
                "epochs": int(history["epoch"].max()),
                "best_val_loss": float(history["best_val_loss"].min()),
                "setup_seconds": float(history["setup_seconds"].dropna().iloc[0]),
                "log_seconds": float(history["log_seconds"].sum()),
                "epoch_seconds": float(history["epoch_seconds"].sum()),
            }
        )
    tracker.finish(parent)
    return rows


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=12)
    parser.add_argument("--max-epochs", type=int, default=9)
    parser.add_argument("--subset", type=int, default=5000)
    parser.add_argument("--val-subset", type=int, default=2000)
    parser.add_argument("--reduction-factor", type=float, default=3)
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a tiny size, so that a test runs it")
    parser.add_argument("--tracking-uri", default=None, help="a running MLflow server (default: one of its own)")
    parser.add_argument("--address", default=None, help="a running Ray to join (default: a local Ray of its own)")
    args = parser.parse_args()
    if args.address and not args.tracking_uri:  # as `vaesearch search` refuses it: other nodes cannot reach ours
        parser.error("--address needs --tracking-uri (a server every node can reach)")
    if args.smoke:
        args.configs, args.max_epochs, args.subset, args.val_subset, args.reduction_factor = 3, 2, 256, 128, 2
    return args


def main() -> None:
    """One server, both schedulers on the same configs, one line for a person and one JSON line."""
    args = _args()
    configs = fixed_configs(args.configs, args.seed)
    work = Path(tempfile.mkdtemp(prefix="vaesearch-bench-"))
    data_dir = data.default_data_dir()
    data.prepare(data_dir, log=lambda m: None)
    url = args.tracking_uri or server.start(work / "mlflow", port=server.free_port()).url
    try:
        cfg = validate(
            {
                "name": "bench",
                "space": {k: sorted(v) for k, v in SPACE.items()},
                "budget": {"num_samples": args.configs, "max_epochs": args.max_epochs},
                "asha": {"grace_period": 1, "reduction_factor": args.reduction_factor},
                "train": {"precision": "auto", "patience": args.max_epochs},
                "data": {"subset": args.subset, "val_subset": args.val_subset},
                "tracking": {"samples_every": args.max_epochs},
            }
        )
        settings = TrialSettings.of(cfg, url, "", "")  # each trial reads its node's default data folder
        ray_init(args.address, log=lambda m: None)
        results = {
            label: run(label, cfg, configs, settings, work / "ray", args.concurrent) for label in ("asha", "fifo")
        }
    finally:
        if not args.tracking_uri:
            server.stop(work / "mlflow")
    summary = _summary(args, results)
    print(
        f"ASHA trained {summary['asha']['epochs']} epochs, FIFO {summary['fifo']['epochs']} "
        f"({100 * summary['epoch_share']:.0f}%); best val loss ASHA {summary['asha']['best_val_loss']:.2f}, "
        f"FIFO {summary['fifo']['best_val_loss']:.2f} ({100 * summary['best_gap']:+.2f}%); "
        f"trial start to first batch: median {summary['setup_seconds_median']:.2f} s, "
        f"max {summary['setup_seconds_max']:.2f} s; MLflow logging {100 * summary['log_share']:.2f}% of epoch time"
    )
    print(json.dumps(summary))


def _summary(args: argparse.Namespace, results: dict[str, list[dict]]) -> dict:
    summary: dict = {"configs": args.configs, "max_epochs": args.max_epochs, "subset": args.subset}
    for label, rows in results.items():
        summary[label] = {
            "epochs": sum(r["epochs"] for r in rows),
            "epochs_per_trial": [r["epochs"] for r in rows],
            "best_val_loss": min(r["best_val_loss"] for r in rows),
        }
    every = results["asha"] + results["fifo"]
    summary["epoch_share"] = summary["asha"]["epochs"] / summary["fifo"]["epochs"]
    summary["best_gap"] = summary["asha"]["best_val_loss"] / summary["fifo"]["best_val_loss"] - 1
    summary["setup_seconds_max"] = max(r["setup_seconds"] for r in every)
    summary["setup_seconds_median"] = sorted(r["setup_seconds"] for r in every)[len(every) // 2]
    summary["log_share"] = sum(r["log_seconds"] for r in every) / sum(r["epoch_seconds"] for r in every)
    return summary


if __name__ == "__main__":
    main()
