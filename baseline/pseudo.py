"""Pseudo-labels: `baseline pseudo` predicts the test images with an ensemble (submit.ensemble) or runs
(submit.checkpoints), keeps those predicted with probability >= pseudo.threshold, and writes them as a
table (`pseudo/<name>.csv`: image, label, confidence). `data.pseudo=FILE` adds its rows to the training
part of every fold, never to validation (they join the table with fold -2 after the split is read, so
the split file and its hash do not change); the ledger records which submissions' members used them."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from . import dist, ensemble, files, predict
from .config import Config, ConfigError
from .data.layouts import DataError, Table, class_names, read_test_table

log = logging.getLogger("baseline")

PSEUDO_FOLD = -2  # in the fold array: a training row of every fold, never a validation row


def write(cfg: Config) -> tuple[Path, pd.DataFrame]:
    """Predict the test images and write the confident ones; (file, its rows)."""
    env = dist.setup(cfg.train.device)
    try:
        spec = ensemble.read(cfg.submit.ensemble) if cfg.submit.ensemble else None
        predict.check_offsets_match_tta(cfg, spec)
        paths, weights = ensemble.checkpoints_and_weights(spec) if spec else (predict.resolve_checkpoints(cfg), None)
        test = read_test_table(cfg)
        predict.check_classes(paths, class_names(cfg), f"the data under '{cfg.data.root}'")
        probs, classes = predict.predict_probs(cfg, test, paths, env, weights)
        if spec and spec.get("offsets"):
            scores = np.log(np.clip(probs, 1e-12, None)) + np.asarray(spec["offsets"])
            probs = np.exp(scores - scores.max(1, keepdims=True))
            probs /= probs.sum(1, keepdims=True)
        conf, pred = probs.max(1), probs.argmax(1)
        keep = conf >= cfg.pseudo.threshold
        rows = pd.DataFrame({
            "image": [Path(os.path.relpath(p, cfg.data.root)).as_posix() for p in test.df["path"][keep]],
            "label": [classes[i] for i in pred[keep]], "confidence": np.round(conf[keep], 4),
        })
        name = Path(cfg.submit.ensemble).stem if spec else paths[0].parent.parent.name
        out = Path(cfg.pseudo.out or f"pseudo/{name}.csv")
        if env.is_main:
            files.write_csv(out, rows)
            shares = rows["label"].value_counts(normalize=True).head(3).round(3).to_dict()
            log.info("pseudo: %d of %d test images at confidence >= %.2f -> %s (most common: %s); train with "
                     "data.pseudo=%s", len(rows), len(test.df), cfg.pseudo.threshold, out, shares, out)
        return out, rows
    finally:
        dist.teardown()


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
    full = [Path(cfg.data.root) / p for p in df["image"]]
    absent = [i for i, p in enumerate(full) if not p.is_file()]
    if absent:
        raise DataError(f"data.pseudo '{path}' row {absent[0] + 2}: image '{full[absent[0]]}' does not exist under "
                        "data.root")
    return pd.DataFrame({"path": [str(p) for p in full], "label": df["label"].map(index).to_numpy()})


def with_pseudo(cfg: Config, table: Table, fold: np.ndarray) -> tuple[Table, np.ndarray]:
    """The table and folds with data.pseudo's rows added as training rows of every fold (fold -2)."""
    if not cfg.data.pseudo:
        return table, fold
    extra = read(cfg, table.classes)
    overlap = set(extra["path"]) & set(table.df["path"])
    if overlap:
        raise ConfigError(f"data.pseudo '{cfg.data.pseudo}' labels {len(overlap)} training image(s), e.g. "
                          f"'{next(iter(overlap))}': pseudo-labels are for images without a label")
    extra = extra.assign(group=[f"pseudo:{i}" for i in range(len(extra))])
    df = pd.concat([table.df, extra], ignore_index=True)
    df.attrs = table.df.attrs
    log.info("data.pseudo: %d pseudo-labelled image(s) join every fold's training part (never validation)", len(extra))
    return Table(df, table.classes), np.concatenate([fold, np.full(len(extra), PSEUDO_FOLD)])
