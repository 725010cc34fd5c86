"""Tracking: a local metrics file always, W&B (online | offline | disabled) and TensorBoard event
files (`log.tensorboard=true`, into <run>/tb/) on top; rank 0 only.
Other ranks get `NullTracker` from the one place that builds trackers (train.train_in_folder), so the
code that logs never branches on the rank."""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from . import files
from . import oof as oofs
from .config import WandbCfg
from .defaults import resolve_mode
from .runfolder import RunFolder

log = logging.getLogger(__name__)


PICTURES = ("confusion_matrix.png", "worst_predictions.png", "per_class_f1.png", "learning_curves.png")


class NullTracker:
    wandb_id = ""

    def log(self, row: dict, step: int | None = None) -> None:
        pass

    def log_epoch(self, row: dict) -> None:
        pass

    def summary(self, values: dict) -> None:
        pass

    def log_final(self, run_dir: Path, oof, classes: list[str], log_model: bool) -> None:
        pass

    def finish(self) -> None:
        pass


def _numbers(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Tracker(NullTracker):
    def __init__(self, run_dir: Path, cfg: WandbCfg, config: dict, name: str, wandb_id: str = "",
                 tensorboard: bool = False, resume_step: int = 0):
        self.metrics_path = RunFolder(run_dir).metrics
        self.run = None
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step: TensorBoard hides events logged after the checkpoint resumed from, as metrics.csv drops them
            self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step)
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
        if self.tb is not None:
            for tag, value in _numbers(row).items():
                self.tb.add_scalar(tag, value, global_step=step)

    def log_epoch(self, row: dict) -> None:
        """One row of metrics.csv; resumed runs append. A column that appears later (e.g. the
        backbone's LR once it unfreezes) rewrites the file with the wider header."""
        rows = []
        if self.metrics_path.exists():
            with open(self.metrics_path, newline="") as f:
                rows = list(csv.DictReader(f))
        fields = list(rows[0]) if rows else []
        fields += [k for k in row if k not in fields]
        if rows and fields == list(rows[0]):
            with open(self.metrics_path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=fields).writerow(row)
        else:
            with files.atomic(self.metrics_path, newline="") as f:
                w = csv.DictWriter(f, fieldnames=fields)
                w.writeheader()
                w.writerows(rows + [row])
        self.log(row, step=row.get("step"))

    def summary(self, values: dict) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def log_final(self, run_dir: Path, oof, classes: list[str], log_model: bool, worst: int = 16) -> None:
        """Confusion matrix, the worst-predicted validation images, and the best checkpoint."""
        if self.tb is not None:
            self._tb_pictures(run_dir)
        if self.run is None:
            return
        import wandb

        y, pred = oof["label"].to_numpy(), oof["pred"].to_numpy()
        self.run.log({"confusion_matrix": wandb.plot.confusion_matrix(y_true=y.tolist(), preds=pred.tolist(),
                                                                       class_names=classes)})
        p_true = oofs.probs(oof)[range(len(oof)), y]
        table = wandb.Table(columns=["image", "path", "true", "pred", "p_true"])
        for i in p_true.argsort()[:worst]:
            table.add_data(wandb.Image(oof["path"].iloc[i]), oof["path"].iloc[i], classes[y[i]], classes[pred[i]],
                           float(p_true[i]))
        self.run.log({"worst_predictions": table})
        for png in PICTURES:
            if (run_dir / png).is_file():
                self.run.log({png[:-4] + "_png": wandb.Image(str(run_dir / png))})
        if log_model:
            art = wandb.Artifact(f"model-{self.run.id}", type="model", metadata={"classes": classes})
            art.add_file(str(RunFolder(run_dir).best))
            self.run.log_artifact(art)

    def _tb_pictures(self, run_dir: Path) -> None:
        import numpy as np
        from PIL import Image

        for png in PICTURES:
            if (run_dir / png).is_file():
                with Image.open(run_dir / png) as im:
                    self.tb.add_image(png[:-4], np.asarray(im.convert("RGB")), dataformats="HWC")

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def truncate_metrics(path: Path, epochs_done: int) -> None:
    """Drop rows of epochs after the checkpoint being resumed: a kill between writing an epoch's row
    and its checkpoint would otherwise leave that epoch twice in metrics.csv."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    keep = [r for r in rows if int(r["epoch"]) <= epochs_done]
    if len(keep) < len(rows):
        with files.atomic(path, newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(keep)
