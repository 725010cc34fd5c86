"""Pseudo-labels: `baseline pseudo` predicts the test images with an ensemble (submit.ensemble) or runs
(submit.checkpoints), keeps those predicted with probability >= pseudo.threshold, and writes them as a
table (`pseudo/<name>.csv`: image, label, confidence, fold, teachers, split_hash). `data.pseudo=FILE` adds
rows to the training part of a run, never to validation (they join the table with fold -2 after the split
is read, so the split file and its hash do not change); the ledger records which submissions' members used
them.

Per fold, honestly: the rows for fold k are labelled by the teachers' fold-k runs alone, which never saw
fold k's validation people, so a cv with pseudo-labels scores what it would on unseen people (teachers
that trained on every fold would carry fold k's labels into fold k's training). A refit (split.fold=-1)
has no validation and takes the rows every teacher labelled (fold `all`). A fold without a teacher gets
no rows, said in the log; a table made on another split file is refused."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from . import checkpoint as ckpt
from . import dist, ensemble, files, predict
from .config import Config, ConfigError
from .data.layouts import DataError, Table, class_names, read_test_table
from .data.split import Hashes, check_duplicates

log = logging.getLogger("baseline")

PSEUDO_FOLD = -2  # in the fold array: a training row of every fold, never a validation row


def write(cfg: Config) -> tuple[Path, pd.DataFrame]:
    """Predict the test images and write the confident ones; (file, its rows)."""
    env = dist.setup(cfg.train.device)
    try:
        spec = ensemble.read(cfg.submit.ensemble) if cfg.submit.ensemble else None
        predict.check_offsets_match_tta(cfg, spec)
        paths, weights = ensemble.checkpoints_and_weights(spec) if spec else (predict.resolve_checkpoints(cfg), None)
        weights = weights or [1.0] * len(paths)
        cfg = predict.with_test_data(cfg, paths[0], env)
        test = read_test_table(cfg)
        predict.check_classes(paths, class_names(cfg), f"the data under '{cfg.data.root}'")
        split_hash, folds = teacher_folds(paths)
        teams = {str(k): [i for i, f in enumerate(folds) if f == k] for k in sorted(set(folds)) if k >= 0}
        parts = []
        for name, chosen in {**teams, "all": list(range(len(paths)))}.items():
            teachers = [paths[i] for i in chosen]
            if name == "all" and spec:  # every fold's models: offsets go on each fold's mix first
                probs, classes = predict.ensemble_probs(cfg, test, spec, env)
            else:  # one model per member (or plain runs): the kind of probabilities offsets were tuned on
                probs, classes = predict.predict_probs(cfg, test, teachers, env, [weights[i] for i in chosen])
                probs = with_offsets(probs, spec)
            names = ";".join(Path(*t.parts[-4:-2]).as_posix() for t in teachers)  # runs/<run> or <exp>/fold<k>
            parts.append(confident(cfg, test, probs, classes).assign(
                fold=name, teachers=names, split_hash=split_hash))
        rows = pd.concat(parts, ignore_index=True)
        runs = {p.parent.parent for p in paths}  # one run, or an experiment's folds: named after it
        name = Path(cfg.submit.ensemble).stem if spec else next(iter(runs)).name if len(runs) == 1 else \
            paths[0].parent.parent.parent.name
        out = Path(cfg.pseudo.out or f"pseudo/{name}.csv")
        if env.is_main:
            files.write_csv(out, rows)
            counts = rows.groupby("fold", sort=False).size().to_dict()
            log.info("pseudo: test images at confidence >= %.2f per fold (each labelled by the teachers that never "
                     "saw its validation people; `all` for a refit): %s -> %s; train with data.pseudo=%s",
                     cfg.pseudo.threshold, counts, out, out)
        return out, rows
    finally:
        dist.teardown()


def teacher_folds(paths: list[Path]) -> tuple[str, list[int]]:
    """The split file the teachers share (its hash) and each one's validation fold (-1: a refit)."""
    saved = [ckpt.load(p, mmap=True) for p in paths]
    hashes = {s.get("split_hash") for s in saved}
    if len(hashes) > 1:
        raise ConfigError(f"pseudo: the teachers were trained on different split files ({sorted(map(str, hashes))}); "
                          "pseudo-labels per fold need one split")
    return str(hashes.pop()), [int(s["config"]["split"]["fold"]) for s in saved]


def with_offsets(probs: np.ndarray, spec: dict | None) -> np.ndarray:
    return predict.with_offsets([probs], spec["offsets"]) if spec and any(spec.get("offsets") or []) else probs


def confident(cfg: Config, test, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """The test images predicted with probability >= pseudo.threshold: image, label, confidence."""
    conf, pred = probs.max(1), probs.argmax(1)
    keep = conf >= cfg.pseudo.threshold
    return pd.DataFrame({
        "image": [Path(os.path.relpath(p, cfg.data.root)).as_posix() for p in test.df["path"][keep]],
        "label": [classes[i] for i in pred[keep]], "confidence": np.round(conf[keep], 4),
    })


def read(cfg: Config, classes: list[str]) -> pd.DataFrame:
    """data.pseudo's rows as (path, label index); refused by row if an image or a class is not known."""
    path = Path(cfg.data.pseudo)
    if not path.is_file():
        raise DataError(f"data.pseudo '{path}' is not a file (`baseline pseudo` writes one)")
    df = pd.read_csv(path, dtype=str)
    missing = {"image", "label"} - set(df.columns)
    if missing:
        raise DataError(f"data.pseudo '{path}' lacks column(s) {sorted(missing)} (expected image, label, confidence)")
    index = {c: i for i, c in enumerate(classes)}
    unknown = df.index[~df["label"].isin(index)]
    if len(unknown):
        raise DataError(f"data.pseudo '{path}' row {unknown[0] + 2}: label '{df['label'][unknown[0]]}' is not one of "
                        f"the data's {len(classes)} classes")
    df = rows_for_fold(cfg, df, path)
    full = [Path(cfg.data.root) / p for p in df["image"]]
    absent = [(row, p) for row, p in zip(df.index, full) if not p.is_file()]  # the index: the file's own rows
    if absent:
        raise DataError(f"data.pseudo '{path}' row {absent[0][0] + 2}: image '{absent[0][1]}' does not exist under "
                        "data.root")
    return pd.DataFrame({"path": [str(p) for p in full], "label": df["label"].map(index).to_numpy()})


def rows_for_fold(cfg: Config, df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """The rows made for this run's validation fold (`all` for a refit). A table without a fold column was
    labelled by teachers that saw every fold: only a refit may use it."""
    want = "all" if cfg.split.fold < 0 else str(cfg.split.fold)
    if "fold" not in df.columns:
        if want != "all":
            raise DataError(f"data.pseudo '{path}' has no fold column: its teachers saw every fold's people, so fold "
                            f"{cfg.split.fold}'s CV would be optimistic; make it again with `baseline pseudo`")
        return df
    rows = df[df["fold"] == want]
    if not len(rows):
        log.warning("data.pseudo '%s' has no rows for fold %s (no teacher validated on it): this run trains "
                    "without pseudo-labels", path, want)
    return rows


def with_pseudo(cfg: Config, table: Table, fold: np.ndarray, split_hash: str = "",
                hashes: Hashes | None = None) -> tuple[Table, np.ndarray, str]:
    """The table and folds with data.pseudo's rows for this run's fold added as training rows (fold -2),
    and the line that says so (for the run's train.log); refused when the table was made on another split
    file, or when a pseudo image is a copy of a validation image."""
    if not cfg.data.pseudo:
        return table, fold, ""
    made_on = check_split(cfg, split_hash)
    extra = read(cfg, table.classes)
    overlap = set(extra["path"]) & set(table.df["path"])
    if overlap:
        raise ConfigError(f"data.pseudo '{cfg.data.pseudo}' labels {len(overlap)} training image(s), e.g. "
                          f"'{next(iter(overlap))}': pseudo-labels are for images without a label")
    extra = extra.assign(group=[f"pseudo:{i}" for i in range(len(extra))])
    df = pd.concat([table.df, extra], ignore_index=True)
    df.attrs = table.df.attrs
    out = Table(df, table.classes), np.concatenate([fold, np.full(len(extra), PSEUDO_FOLD)])
    if cfg.split.fold >= 0:
        check_duplicates(*out, cfg.split.fold, hashes)  # a test image that copies a validation one gives its label
    return (*out, f"data.pseudo: {len(extra)} pseudo-labelled image(s) join this run's training part (never "
                  f"validation)" + (f", labelled by {made_on}" if made_on else ""))


def check_split(cfg: Config, split_hash: str) -> str:
    """The teachers of the rows this run takes, after checking the table was made on this split file."""
    df = pd.read_csv(cfg.data.pseudo, dtype=str, usecols=lambda c: c in ("fold", "teachers", "split_hash"))
    made = set(df["split_hash"].dropna()) if "split_hash" in df.columns else set()
    if split_hash and made and made != {split_hash}:
        raise DataError(f"data.pseudo '{cfg.data.pseudo}' was made by teachers on another split file (sha "
                        f"{sorted(made)[0]}; this run's is {split_hash}): its folds are not this run's folds")
    want = "all" if cfg.split.fold < 0 else str(cfg.split.fold)
    if "teachers" not in df.columns or "fold" not in df.columns:
        return ""
    return ", ".join(sorted(set(df.loc[df["fold"] == want, "teachers"].dropna())))
