"""Stratified group k-fold, written once to a split file the whole team shares; leakage checks.

The split file has one row per image: `path` (relative to data.root), `group`, `fold`. Training
reads it and never re-draws it, so every teammate and every fold run sees the same folds.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from .. import files
from ..config import Config
from . import store
from .competition import age_bucket
from .layouts import DataError, Table

log = logging.getLogger("baseline")


def split_path(cfg: Config) -> Path:
    """split.file, else `<data.root>/splits/folds<k>_seed<s>.csv` (under run.dir on a read-only data root:
    store.beside_data; teammates share it by naming it in split.file, and compare it by hash)."""
    if cfg.split.file:
        return Path(cfg.split.file)
    name = f"folds{cfg.split.folds}_seed{cfg.seed}.csv"
    shared = Path(cfg.data.root) / "splits" / name
    return shared if shared.is_file() else store.beside_data(cfg, "splits") / name


def strata(df: pd.DataFrame) -> np.ndarray:
    """Stratification key: the person's gender x age bucket for the competition layout (constant
    within a group, so every fold keeps the mix), else the class label."""
    if {"gender", "age"} <= set(df.columns):
        return (df["gender"] * 3 + df["age"].map(age_bucket)).to_numpy()
    return df["label"].to_numpy()


def merged_groups(groups: pd.Series, hashes: list[str]) -> pd.Series:
    """Groups joined wherever two of them hold an identical image (one person copied under a second
    id, a file in two class folders): union-find over the groups sharing a content hash."""
    parent: dict[str, str] = {g: g for g in groups.unique()}

    def root(g: str) -> str:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    first: dict[str, str] = {}
    for g, h in zip(groups, hashes):
        other = first.setdefault(h, g)
        a, b = root(g), root(other)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return groups.map(root)


def assign_folds(df: pd.DataFrame, folds: int, seed: int, groups: pd.Series | None = None) -> np.ndarray:
    groups = df["group"] if groups is None else groups
    n_groups = groups.nunique()
    if n_groups < folds:
        raise DataError(f"split.folds={folds} but the data has only {n_groups} group(s): a fold would be empty")
    from sklearn.model_selection import StratifiedGroupKFold  # only to write a split (slow to import)

    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    fold = np.full(len(df), -1)
    for k, (_, val_idx) in enumerate(splitter.split(np.zeros(len(df)), strata(df), groups)):
        fold[val_idx] = k
    return fold


def write_split(cfg: Config, table: Table, path: Path | None = None, hashes: Hashes | None = None) -> Path:
    """Draw the folds and write the split file atomically; returns its path."""
    path = path or split_path(cfg)
    root = Path(cfg.data.root)
    groups = merged_groups(table.df["group"].astype(str), (hashes or Hashes()).of(table.df["path"].tolist()))
    joined = table.df["group"].nunique() - groups.nunique()
    if joined:
        log.warning("split: %d group(s) joined others because they share identical images; they stay in one fold",
                    joined)
    fold = assign_folds(table.df, cfg.split.folds, cfg.seed, groups)
    out = pd.DataFrame({
        "path": [os.path.relpath(p, root) for p in table.df["path"]],
        "group": table.df["group"].to_numpy(),
        "fold": fold,
    })
    try:
        files.write_csv(path, out)
    except OSError as e:
        raise DataError(f"cannot write the split file '{path}' ({e.strerror or e}); on a read-only data disk set "
                        "split.file=/a/writable/folds.csv (and share that file with the team)") from None
    return path


def file_hash(path: Path) -> str:
    return _hash(Path(path).read_bytes())


def _hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def read_folds(cfg: Config, table: Table, path: Path) -> np.ndarray:
    """Fold of every row of `table`, from the split file; every image must be in it."""
    return read_folds_hashed(cfg, table, path)[0]


def read_folds_hashed(cfg: Config, table: Table, path: Path) -> tuple[np.ndarray, str]:
    """read_folds, and the file's hash from the same bytes (what checkpoints and OOF files record)."""
    raw = Path(path).read_bytes()
    return _folds(cfg, table, path, pd.read_csv(io.BytesIO(raw), dtype={"path": str, "group": str})), _hash(raw)


def _folds(cfg: Config, table: Table, path: Path, split: pd.DataFrame) -> np.ndarray:
    if not {"path", "group", "fold"} <= set(split.columns):
        raise DataError(f"split file '{path}' must have columns path,group,fold; it has {list(split.columns)}")
    folds = sorted(split["fold"].unique())
    if folds != list(range(cfg.split.folds)):
        raise DataError(
            f"split file '{path}' has folds {folds}, but split.folds={cfg.split.folds}; "
            "pick the matching split.file or write a new one with `baseline data split`"
        )
    root = Path(cfg.data.root)
    rel = pd.Series([os.path.relpath(p, root) for p in table.df["path"]])
    lookup = dict(zip(split["path"], split["fold"]))
    missing = rel[~rel.isin(lookup.keys())]
    if len(missing):
        raise DataError(
            f"split file '{path}' does not list {len(missing)} image(s), e.g. '{missing.iloc[0]}'; "
            "the data changed since the split was written: write a new one with `baseline data split` "
            "(this changes the folds for the whole team)"
        )
    return rel.map(lookup).to_numpy()


def check_groups(table: Table, fold: np.ndarray, path: Path | str = "split") -> None:
    """No group in two folds."""
    per_group = pd.Series(fold).groupby(table.df["group"].to_numpy()).nunique()
    bad = per_group[per_group > 1]
    if len(bad):
        raise DataError(f"leakage in '{path}': group '{bad.index[0]}' is in {bad.iloc[0]} folds "
                        f"({len(bad)} such groups)")


def hash_cache(cfg: Config) -> Path:
    """Where the images' content hashes are kept between runs (beside the decode cache)."""
    return store.beside_data(cfg, ".cache", written=True) / "sha1.csv"


class Hashes:
    """SHA1 of images' bytes, kept in `file` between runs while a file's size and mtime stay what they
    were: every run checks for leakage, and reading 20,000 photos each time costs a minute the other
    ranks wait for. New ones are written by save(), once the checks that needed them have passed."""

    def __init__(self, file: Path | None = None):
        self.file, self.known, self.added = file, _read_hashes(file) if file else {}, 0

    def of(self, paths: list[str]) -> list[str]:
        keys = [_stat_key(p) for p in paths]
        todo = [i for i, k in enumerate(keys) if k not in self.known]
        if len(todo) >= 500:
            log.info("hashing %d images for the leakage checks", len(todo))
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as ex:  # hashlib releases the GIL on large inputs
            for i, h in zip(todo, ex.map(lambda i: hashlib.sha1(Path(paths[i]).read_bytes()).hexdigest(), todo)):
                self.known[keys[i]] = h
        self.added += len(todo)
        return [self.known[k] for k in keys]

    def save(self) -> None:
        if not self.file or not self.added:
            return
        rows = pd.DataFrame([(*k, h) for k, h in self.known.items()], columns=["path", "size", "mtime_ns", "sha1"])
        try:
            files.write_csv(self.file, rows)
        except OSError as e:
            log.warning("could not keep the image hashes in '%s' (%s): they are computed again next run",
                        self.file, e.strerror or e)


def content_hashes(paths: list[str], cache: Path | None = None) -> list[str]:
    """SHA1 of each file's bytes (through `cache`, a Hashes file, updated)."""
    hashes = Hashes(cache)
    out = hashes.of(paths)
    hashes.save()
    return out


def _stat_key(path: str) -> tuple[str, int, int]:
    st = os.stat(path)
    return os.path.abspath(path), st.st_size, st.st_mtime_ns


def _read_hashes(cache: Path) -> dict:
    try:
        df = pd.read_csv(cache, dtype={"path": str, "sha1": str})
        return {(p, int(s), int(m)): h for p, s, m, h in zip(df["path"], df["size"], df["mtime_ns"], df["sha1"])}
    except (OSError, ValueError, KeyError, pd.errors.ParserError):
        return {}  # none yet, or damaged: hash again


def check_duplicates(table: Table, fold: np.ndarray, val_fold: int, hashes: Hashes | None = None) -> None:
    """No identical file content in train and validation."""
    h = pd.Series((hashes or Hashes()).of(table.df["path"].tolist()))
    is_val = fold == val_fold
    both = set(h[is_val]) & set(h[~is_val])
    if both:
        first = h[h.isin(both)].index
        names = table.df["path"].iloc[first[:2]].tolist()
        raise DataError(
            f"leakage: {len(both)} identical image(s) in train and validation fold {val_fold}, e.g. {names}; "
            "remove the duplicates or give them one group"
        )


def load_or_write_folds(cfg: Config, table: Table, hashes: Hashes | None = None) -> tuple[np.ndarray, str]:
    """The folds for training and the split file's hash: read the shared split file, writing it first
    if there is none (and removing it again if its checks refuse it)."""
    path, own = split_path(cfg), hashes is None  # given: the caller saves it once its run is accepted
    hashes = Hashes(hash_cache(cfg)) if own else hashes
    wrote = None
    if not path.is_file():
        wrote = write_split(cfg, table, path, hashes)
    try:
        fold, split_hash = read_folds_hashed(cfg, table, path)
        check_groups(table, fold, path)
        if cfg.split.fold >= 0:  # a refit (-1) has no validation fold to leak into
            check_duplicates(table, fold, cfg.split.fold, hashes)
    except DataError:
        if wrote:
            wrote.unlink(missing_ok=True)
        raise
    if own:
        hashes.save()
    return fold, split_hash
