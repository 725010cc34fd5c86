"""Tracking: a local metrics file always, W&B (online | offline | disabled) and TensorBoard event
files (`log.tensorboard=true`, into <run>/tb/) on top; rank 0 only.
Other ranks get `NullTracker` from the one place that builds trackers (train.train_in_folder), so the
code that logs never branches on the rank."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import pandas as pd
import yaml

from . import files
from . import oof as oofs
from .config import WandbCfg
from .defaults import resolve_mode
from .errors import TrackingError
from .runfolder import Experiment, RunFolder

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


def _run_row(run_dir: Path, runs_dir: Path, team_split: str | None) -> dict:
    from .rundir import state

    run = RunFolder(run_dir)
    cfg = yaml.safe_load(run.config.read_text()) or {}
    data = cfg.get("data", {})
    classes = run.classes
    n_cls = len(json.loads(classes.read_text())) if classes.is_file() else None
    d = run.summary()
    split = d.get("split_hash") or ""
    cv = Experiment(run_dir.parent).cv()  # the run is a fold of a `baseline cv` experiment
    return {"run": str(run_dir.relative_to(runs_dir)), "root": str(runs_dir),
            # the data set's folder name, not its path: a teammate's copy lives elsewhere
            "data": f"{data.get('format')}:{Path(str(data.get('root'))).name} ({n_cls} classes)",
            "owner": d.get("owner", ""), "model": cfg.get("model", {}).get("name"),
            "fold": cfg.get("split", {}).get("fold"),
            "split": split[:8] + ("*" if team_split and split and split != team_split else ""),
            "val_f1": d.get("val_f1"), "cv_oof_f1": cv.get("oof_f1"), "labels": cv.get("labels", ""),
            "val_acc": d.get("val_acc"), "epochs": d.get("epochs_done"), "train_s": d.get("train_seconds"),
            "state": state(run_dir)}


def leaderboard(runs_dirs: Path | list[Path], team_split: str | None = None) -> pd.DataFrame:
    """Every run folder under one or more roots (yours, a teammate's copy, a shared disk; sweep trials
    and CV folds included), finished or not: ranked by macro-F1 within each data set (format, data
    folder name, class count). `split` is the run's split-file hash, with * where it is not
    `team_split` (its scores do not compare, and it must not join an ensemble)."""
    roots = [Path(r) for r in (runs_dirs if isinstance(runs_dirs, list) else [runs_dirs])]
    rows = [_run_row(c.parent, root, team_split) for root in roots for c in sorted(root.glob("**/config.yaml"))
            if RunFolder(c.parent).is_run()]
    cols = ["run", "root", "data", "owner", "model", "fold", "split", "val_f1", "cv_oof_f1", "labels", "val_acc",
            "epochs", "train_s", "state"]
    board = pd.DataFrame(rows, columns=cols).sort_values(["data", "val_f1"], ascending=[True, False],
                                                         na_position="last").reset_index(drop=True)
    return board if len(roots) > 1 else board.drop(columns="root")


def label_notes(board: pd.DataFrame, roots: list[Path]) -> list[str]:
    """Where experiments of one data set were validated on different labels (data.corrections): each one's
    OOF macro-F1 against the best experiment's, like for like (the images both label the same)."""
    from . import oof as oofs

    notes = []
    exps = board[board["labels"].astype(bool)].drop_duplicates("labels")
    for _, group in exps.groupby("data"):
        if len(group) < 2:
            continue
        folder = [_experiment_of(r, roots) for r in group["run"]]
        best = max(range(len(group)), key=lambda i: group["cv_oof_f1"].iloc[i] or 0)
        ref = pd.read_csv(Experiment(folder[best]).oof)
        for i in range(len(group)):
            if i == best:
                continue
            m = oofs.like_for_like(ref, pd.read_csv(Experiment(folder[i]).oof))
            notes.append(f"note: {folder[i].name} (labels {group['labels'].iloc[i]}) and {folder[best].name} (labels "
                         f"{group['labels'].iloc[best]}) were validated on different labels; on the {m['images']} of "
                         f"{m['of']} images they label alike: {m['b']:.4f} vs {m['a']:.4f} ({m['difference']:+.4f})")
    return notes


def _experiment_of(run: str, roots: list[Path]) -> Path:
    for root in roots:
        if (root / run).is_dir():
            return (root / run).parent
    return Path(run).parent


def compare_runs(run_dirs: list[Path]) -> tuple[pd.DataFrame, Path]:
    """Per-class F1 (best epoch, validation) of several runs on the same classes: the table, and a
    picture of it written next to the first run's folder."""
    from sklearn.metrics import f1_score

    from . import plots

    names = [Path(r).name for r in run_dirs]
    classes = [json.loads(RunFolder(r).classes.read_text()) for r in run_dirs]
    for name, c in zip(names[1:], classes[1:]):
        if c != classes[0]:
            raise TrackingError(f"runs --compare: {name} has other classes than {names[0]} ({len(c)} vs "
                             f"{len(classes[0])}); per-class F1 compares runs on the same classes")
    f1s = {}
    for name, r in zip(names, run_dirs):
        oof = pd.read_csv(RunFolder(r).oof)
        f1s[name] = f1_score(oof["label"], oof["pred"], labels=list(range(len(classes[0]))), average=None,
                             zero_division=0)
    out = Path(run_dirs[0]).parent / f"compare_{'_vs_'.join(names)}.png"
    plots.compare_per_class(f1s, classes[0], out)
    return pd.DataFrame(f1s, index=classes[0]), out
