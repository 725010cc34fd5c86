"""`baseline runs`: the local leaderboard of every run folder under one or more roots, the notes on
experiments validated on different labels, and per-class F1 of runs side by side (`--compare`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from .errors import TrackingError
from .runfolder import Experiment, RunFolder


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
