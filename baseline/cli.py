"""`baseline <command> [--config FILE] [key=value ...]`, also as `python -m baseline`."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .checkpoint import CheckpointError
from .config import Config, ConfigError, load_config
from .data.layouts import DataError
from .memory import OutOfMemory
from .models import ModelError

USER_ERRORS = (ConfigError, DataError, ModelError, CheckpointError)
COMMANDS = {
    "train": "train one model (one fold) and write runs/<name>/",
    "submit": "predict the test images with checkpoints/runs and write submissions/<name>.csv",
    "data": "data tools: synth (built-in dataset) | split (write the shared split file) | check (report)",
}


def _setup_logging() -> None:
    main = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(level=logging.INFO if main else logging.WARNING, format="%(message)s", stream=sys.stdout)
    for noisy in ("timm", "PIL", "urllib3", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="baseline", description="Image-classification competition kit.")
    sub = p.add_subparsers(dest="command", required=True, metavar="command")
    for name, help_ in COMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        if name == "data":
            sp.add_argument("action", choices=["synth", "split", "check"])
        sp.add_argument("--config", "-c", help="YAML file with config keys (defaults < file < overrides)")
        sp.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=3")
    return p


def data_command(action: str, cfg: Config) -> int:
    from .data import check, layouts, split, synth

    if action == "synth":
        root = synth.write_synth(cfg.data.root, people=cfg.data.synth_people, seed=cfg.seed)
        print(f"wrote the built-in dataset to {root}")
        return 0
    if action == "split":
        table = layouts.read_table(cfg)
        path = split.write_split(cfg, table)
        fold = split.read_folds(cfg, table, path)
        split.check_groups(table, fold, path)
        print(f"wrote {path} ({cfg.split.folds} folds, {table.df['group'].nunique()} groups, sha {split.file_hash(path)})")
        return 0
    errors = check.check(cfg)
    print(f"{errors} error(s)")
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    _setup_logging()
    try:
        cfg = load_config(args.config, args.overrides)
        if args.command == "data":
            return data_command(args.action, cfg)
        if args.command == "train":
            from .train import run

            run(cfg)
            return 0
        from .predict import submit

        submit(cfg)
        return 0
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OutOfMemory as e:
        print(f"error: {e}", file=sys.stderr)
        return 3

