"""What MLflow's system-metrics sampling costs a trial: seconds per sample, and its share at an interval.

Each sample reads CPU, memory, disk and network (and GPU where present) with
psutil and sends them in one request; this times both against a real tracking
server, on a run of a scratch experiment, and divides by the interval.

    python benchmarks/system_metrics_cost.py --tracking-uri http://127.0.0.1:5000 [--samples 20] [--interval 10]
"""

from __future__ import annotations

import argparse
import json
import time

from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--interval", type=float, default=10.0, help="the sampling interval to judge, seconds")
    args = parser.parse_args()
    client = MlflowClient(args.tracking_uri)
    name = "benchmark-system-metrics"
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(name)
    run_id = client.create_run(exp_id).info.run_id
    monitor = SystemMetricsMonitor(run_id, sampling_interval=args.interval, tracking_uri=args.tracking_uri)
    costs = []
    for _ in range(args.samples):
        start = time.perf_counter()
        monitor.collect_metrics()
        monitor.publish_metrics(monitor.aggregate_metrics())
        costs.append(time.perf_counter() - start)
    client.set_terminated(run_id)
    mean = sum(costs) / len(costs)
    print(json.dumps({"seconds_per_sample": round(mean, 4), "max": round(max(costs), 4),
                      "interval_s": args.interval, "share": round(mean / args.interval, 5)}))  # fmt: skip


if __name__ == "__main__":
    main()
