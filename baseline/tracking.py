"""Tracking: a local metrics file always, W&B (online | offline | disabled) on top; rank 0 only.
Other ranks get `NullTracker`, so callers never branch on the rank."""

from __future__ import annotations

import csv
import logging
import netrc
import os
from pathlib import Path

from .config import WandbCfg

log = logging.getLogger(__name__)


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc(os.path.expanduser("~/.netrc"))
    except (OSError, netrc.NetrcParseError):
        return False
    return any("wandb" in host for host in rc.hosts)


def resolve_mode(cfg: WandbCfg) -> str:
    if cfg.mode != "auto":
        return cfg.mode
    return "online" if has_api_key() else "offline"


class NullTracker:
    wandb_id = ""

    def log(self, row: dict, step: int | None = None) -> None:
        pass

    def log_epoch(self, row: dict) -> None:
        pass

    def summary(self, values: dict) -> None:
        pass

    def finish(self) -> None:
        pass


class Tracker(NullTracker):
    def __init__(self, run_dir: Path, cfg: WandbCfg, config: dict, name: str, wandb_id: str = ""):
        self.metrics_path = run_dir / "metrics.csv"
        self.run = None
        self.mode = resolve_mode(cfg)
        if self.mode != "disabled":
            import wandb

            self.run = wandb.init(
                project=cfg.project or os.environ.get("WANDB_PROJECT") or "baseline",
                entity=cfg.entity or os.environ.get("WANDB_ENTITY") or None,
                group=cfg.group or None, tags=cfg.tags or None, name=name, dir=str(run_dir),
                config=config, mode=self.mode, id=wandb_id or None, resume="allow" if wandb_id else None,
                settings=wandb.Settings(silent=True, console="off"),
            )
            self.run.define_metric("val_f1", summary="max")
        self.wandb_id = self.run.id if self.run is not None else ""

    def log(self, row: dict, step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(row, step=step)

    def log_epoch(self, row: dict) -> None:
        """One row of metrics.csv (header from the first row; resumed runs append)."""
        new = not self.metrics_path.exists()
        with open(self.metrics_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)
        self.log(row, step=row.get("step"))

    def summary(self, values: dict) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
