"""The pseudo-label table (`data.pseudo`, written by `baseline pseudo`): its rows for this run's fold join
the training part (fold -2, never validation) after the split is read, refused when the table was made on
another split file, names an unknown class or image, or holds a copy of a validation image."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..config import Config, ConfigError
from .layouts import DataError, Table
from .split import Hashes, check_duplicates

log = logging.getLogger("baseline")

PSEUDO_FOLD = -2  # in the fold array: a training row of every fold, never a validation row


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
