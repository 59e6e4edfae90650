"""The `vaesearch` command: parse, dispatch, and turn errors into one line and an exit status.

Exit 2: something the user typed or wrote is wrong (a flag, a config, a path);
exit 1: a failure at run time; exit 130: interrupted. Never a traceback.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from search import environment
from search.parser import EXIT_USAGE, POSITIONAL, build_parser, flag
from vae.errors import UserError

EXIT_RUNTIME, EXIT_INTERRUPTED = 1, 130


def _device(name: str):
    import torch

    from vae.train import resolve_device

    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device", "cuda was asked for but no CUDA device is available; allowed: auto, cpu")
    return resolve_device(name)


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from vae import data

    data.prepare(args.data_dir or data.default_data_dir())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import dataclasses
    import time

    from vae import data
    from vae.config import TrainConfig
    from vae.files import file_in_the_way
    from vae.precision import resolve_precision
    from vae.records import EndState
    from vae.train_folder import train_to_folder

    config = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    out = args.out or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
    blocking = file_in_the_way(out.resolve())
    if blocking:
        raise UserError("out", f"{blocking} is a file; give a folder")
    if (out / "checkpoint.pt").exists() or (out / "last.pt").exists():
        raise UserError("out", f"{out} already holds a run; give a new folder")
    device = _device(args.device)
    precision, why = resolve_precision(args.precision, device, field="precision")
    print(f"precision: {precision} ({why})")
    config = dataclasses.replace(config, precision=precision)
    uri = _given_server_or_start_embedded(args.tracking_uri, None) if args.tracking_uri else None
    data_dir = args.data_dir or data.default_data_dir()
    data.prepare(data_dir, log=lambda m: print(m, file=sys.stderr))
    result = train_to_folder(config, out.resolve(), data_dir, device)
    if uri:
        from search.tracking import Tracker
        from search.train_runs import log_training

        run_id = log_training(
            Tracker(uri), args.experiment, out.resolve(), config.to_dict(), str(result.stop), result.reason
        )
        print(f"logged to MLflow: experiment {args.experiment}, run {run_id}")
    return 1 if result.stop == EndState.FAILED else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from vae.checkpoint import CheckpointError
    from vae.evaluation import evaluate_checkpoint

    device = _device(args.device)
    try:
        result = evaluate_checkpoint(args.checkpoint, args.split, args.iw_samples, args.data_dir, device)
    except CheckpointError as e:
        raise UserError("checkpoint", str(e)) from None
    print(json.dumps(result))
    return 0


def _server_folder(folder: Path | None) -> Path:
    from search.config import vaesearch_home

    return (folder or vaesearch_home() / "mlflow").expanduser().resolve()


def _given_server_or_start_embedded(uri: str | None, port: int | None) -> str:
    """The given server, checked; else the embedded one, started or reused."""
    from mlflow_server import server

    if uri:
        if not uri.startswith(("http://", "https://")):
            raise UserError("tracking_uri", f"must be an http(s):// tracking server, got {uri!r}")
        if not server.health(uri, timeout=5):
            raise UserError("tracking_uri", f"no MLflow server answers at {uri}")
        return uri
    try:
        info = server.start(_server_folder(None), port=port, log=lambda line: print(line, flush=True))
    except server.ServerError as e:  # the embedded server's port is the search's --server-port
        raise UserError("server_port" if e.field == "port" else e.field, e.message) from None
    print(
        f"MLflow server: {info.url}  (embedded, pid {info.pid}; it keeps running for the UI: `vaesearch server stop`)"
    )
    return info.url


def cmd_search(args: argparse.Namespace) -> int:
    from search import config
    from search.tuner import preflight, run_search

    cfg = config.load(args.config).override(
        **{
            "name": args.name,
            "tracking.tracking_uri": args.tracking_uri,
            "storage_path": args.storage_path,
            "study_storage": args.study_storage,
        }
    )
    # every refusal before a server starts or a file is written
    checked = preflight(cfg, args.resume, args.address, if_exists=args.resume_if_exists)
    uri = _given_server_or_start_embedded(checked.tracking_uri, args.server_port)
    outcome = run_search(checked, uri, address=args.address, verbose=args.verbose)
    print(f"MLflow UI: {outcome.ui}")
    if outcome.interrupted:
        again = f"vaesearch search --config {args.config} --name {cfg.name} --resume"
        print(f"interrupted; state saved. Continue with: {again}")
        return EXIT_INTERRUPTED
    best = outcome.best
    summary = {"experiment": outcome.experiment, "parent_run_id": outcome.parent_run_id, "trials": outcome.trials}
    if best:
        summary.update(best_run_id=best["run_id"], best_val_loss=best["best_val_loss"], best_params=best["params"])
    print(json.dumps({**summary, "lost_writes": outcome.lost_writes}), flush=True)
    if outcome.lost_writes:
        print(
            f"vaesearch search: {outcome.lost_writes} write(s) to MLflow never landed (sample grids, checkpoints, "
            f"metrics or tags): see the tag lost_writes on the parent run and on the trials' runs",
            file=sys.stderr,
        )
        return EXIT_RUNTIME
    return 0


def cmd_searches(args: argparse.Namespace) -> int:
    from search.status import list_searches

    rows = list_searches(args.storage_path, args.tracking_uri)
    if not rows:
        print("no searches")
    for row in rows:
        print(json.dumps(row))
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from mlflow_server.server import is_loopback, port_in_use, url_of
    from search.state import study_of

    if not is_loopback(args.host) and not args.insecure:
        raise UserError(
            "host",
            f"{args.host} is not a loopback address and optuna-dashboard has no authentication; "
            "add --insecure to serve it to anyone who reaches the port",
        )
    storage = study_of(args.storage_path, args.search)
    if port_in_use(args.host, args.port):
        raise UserError("port", f"port {args.port} on {args.host} is taken by another process; choose another port")
    from search.dashboard import serve

    print(f"Optuna dashboard for {args.search}: {url_of(args.host, args.port)}  (Ctrl-C stops it)", flush=True)
    try:
        serve(storage, args.host, args.port)
    except KeyboardInterrupt:  # the way to stop it: not an error
        print("dashboard stopped")
    return 0


def _client(uri: str | None):
    """A client for the given server, or the embedded one, which must be running."""
    from mlflow.tracking import MlflowClient

    from mlflow_server import server

    if uri is None:
        info = server.read_info(_server_folder(None))
        if info is None:
            raise UserError("tracking_uri", "none given and no embedded server runs (vaesearch server start)")
        uri = info.url
    if not server.health(uri, timeout=5):
        raise UserError("tracking_uri", f"no MLflow server answers at {uri}")
    return MlflowClient(uri)


def _csv_only(names: list[str], tracking_uri: str | None) -> bool:
    """Committed trials.csv files alone are read with no server; a search's name needs one."""
    from analysis.runs import is_trials_csv

    return tracking_uri is None and all(is_trials_csv(name) for name in names)


def cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import logs_to_parent, write_report

    names: list[str] = args.experiment
    client = None if _csv_only(names, args.tracking_uri) else _client(args.tracking_uri)
    out = args.out or Path("reports") / Path(names[0]).stem
    path = write_report(client, names, out.resolve())
    logged = " (also logged to the search's parent run under report/)" if logs_to_parent(client, names) else ""
    print(f"wrote {path}{logged}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from analysis.compare import bands, compare

    if args.out.suffix.lower() != ".png":
        raise UserError("out", f"must name a .png file, got {args.out}")
    if not args.experiment and not args.seed_sequence:
        raise UserError("experiment", "give at least one search (or --seed-sequence)")
    seed = args.seed_sequence
    if seed is not None and len(seed) < 2:
        raise UserError("seed_sequence", "give TABLES12 and TABLES3 (and any reruns of Table 3's configs after it)")
    client = None if _csv_only([*args.experiment, *(seed or ())], args.tracking_uri) else _client(args.tracking_uri)
    if args.bands:
        if seed:
            raise UserError("seed_sequence", "not with --bands, which groups searches by method")
        print(json.dumps(bands(client, args.experiment, args.target, args.out.resolve())))
        return 0
    if args.target is not None:
        raise UserError("target", "only with --bands")
    print(json.dumps(compare(client, args.experiment, seed, args.out.resolve())))
    return 0


def cmd_promote(args: argparse.Namespace) -> int:
    from analysis.promote import promote, rollback

    client = _client(args.tracking_uri)
    if args.rollback:
        result = rollback(client, args.model_name, args.alias)
    else:
        result = promote(
            client,
            args.experiment,
            args.run_id,
            args.model_name,
            args.alias,
            args.force,
            args.iw_samples,
            args.data_dir,
        )
    print(json.dumps(result))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from analysis.sample import sample

    if args.out.suffix.lower() != ".png":
        raise UserError("out", f"must name a .png file, got {args.out}")
    path = sample(_client(args.tracking_uri), args.model_uri, args.out, args.mode)
    print(f"wrote {path}")
    return 0


def cmd_server(args: argparse.Namespace) -> int:
    from mlflow_server import server

    folder = _server_folder(args.data_folder)
    if args.action == "start":
        info = server.start(
            folder, args.backend_store_uri, args.artifacts_destination, args.host, args.port, args.insecure, args.auth
        )
        print(f"MLflow server at {info.url} (pid {info.pid}, store {info.backend_store_uri})")
    elif args.action == "status":
        running = server.read_info(folder)
        if running is None:
            print(f"no server running from {folder}")
            return 1
        state = "healthy" if server.health(running.url) else "not answering"
        print(f"{running.url} {state}; pid {running.pid}; store {running.backend_store_uri}")
        print(f"artifacts {running.artifacts_destination}")
    else:
        stopped = server.stop(folder)
        print(
            f"stopped the server at {stopped.url} (pid {stopped.pid})"
            if stopped
            else f"no server running from {folder}"
        )
    return 0


def explain(error: UserError, args: argparse.Namespace) -> str:
    """A user error as this command says it: its field, and the `names` in its message, as the command's flags."""

    def said(name: str) -> str:
        return flag(name) if name in vars(args) and name not in POSITIONAL else name

    return f"{said(error.field)}: {re.sub(r'`([a-z_]+)`', lambda m: said(m.group(1)), error.message)}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    environment.configure(args.command, getattr(args, "address", None) is None, getattr(args, "verbose", False))
    from search.config import SearchStopped

    try:
        return HANDLERS[args.handler](args)
    except UserError as e:
        print(f"vaesearch {args.command}: error: {explain(e, args)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"vaesearch {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except SearchStopped as e:  # said in full where it was raised
        print(f"vaesearch {args.command}: {e}", file=sys.stderr)
        return EXIT_RUNTIME
    except Exception as e:  # a run-time failure: one line, not a traceback
        print(f"vaesearch {args.command}: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_RUNTIME


HANDLERS = {
    "data_prepare": cmd_data_prepare,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "search": cmd_search,
    "searches": cmd_searches,
    "dashboard": cmd_dashboard,
    "report": cmd_report,
    "compare": cmd_compare,
    "promote": cmd_promote,
    "sample": cmd_sample,
    "server": cmd_server,
}


def entry() -> None:
    sys.exit(main())
