"""`baseline data check`: a report on the data and its split; non-zero exit when it finds an error."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
from PIL import Image

from ..config import Config
from .layouts import DataError, read_table
from .split import check_groups, content_hashes, read_folds, split_path


def unreadable(paths: list[str]) -> list[tuple[str, str]]:
    bad = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im.load()
        except Exception as e:  # PIL raises many types for broken files
            bad.append((p, f"{type(e).__name__}: {e}"))
    return bad


def image_sizes(paths: list[str]) -> Counter:
    sizes = Counter()
    for p in paths:
        try:
            with Image.open(p) as im:
                sizes[im.size] += 1
        except Exception:
            pass
    return sizes


def _identical_across_groups(df: pd.DataFrame, dup: pd.Series) -> int:
    """Identical images whose copies carry different groups (e.g. one person under two ids)."""
    if not len(dup):
        return 0
    return int(df["group"].loc[dup.index].groupby(dup).nunique().gt(1).sum())


def check(cfg: Config, out=print) -> int:
    """Print the report; return the number of errors found."""
    table = read_table(cfg)
    df = table.df
    errors = 0
    out(f"{len(df)} images, {df['group'].nunique()} groups, {len(table.classes)} classes ({cfg.data.format} layout)")
    counts = df["label"].value_counts().reindex(range(len(table.classes)), fill_value=0)
    out("images per class:")
    for i, c in enumerate(table.classes):
        out(f"  {i:3d} {c:<24} {counts[i]}")
    sizes = image_sizes(df["path"].tolist())
    out("image sizes (w x h): " + ", ".join(f"{w}x{h}: {n}" for (w, h), n in sizes.most_common(5)))
    bad = unreadable(df["path"].tolist())
    for p, why in bad:
        out(f"ERROR unreadable image {p}: {why}")
    errors += len(bad)
    hashes = pd.Series(content_hashes(df["path"].tolist()))
    hashes = hashes[~df["path"].isin({p for p, _ in bad})]  # broken files are reported once, above
    dup = hashes[hashes.duplicated(keep=False)]
    for _, same in df["path"].groupby(dup).groups.items() if len(dup) else []:
        out(f"WARNING identical content: {[df['path'][i] for i in same]}")
    across = _identical_across_groups(df, dup)
    path = split_path(cfg)
    if not Path(path).is_file():
        out(f"no split file at {path} yet (`baseline data split` writes it and keeps identical images in one fold)")
        if across:
            out(f"ERROR {across} identical image(s) belong to different groups; the split will join those groups")
        return errors + across
    try:
        fold = read_folds(cfg, table, path)
        check_groups(table, fold, path)
    except DataError as e:
        out(f"ERROR {e}")
        return errors + 1
    out(f"split file {path}:")
    dist = pd.crosstab(fold, df["label"], normalize="index").reindex(columns=range(len(table.classes)), fill_value=0)
    whole = counts / counts.sum()
    for k in range(cfg.split.folds):
        in_k = fold == k
        drift = (dist.loc[k] - whole).abs().max() * 100
        out(f"  fold {k}: {in_k.sum()} images, {df['group'][in_k].nunique()} groups, "
            f"max class-share drift {drift:.1f} points")
    groups_in_two = dup.groupby(dup).apply(lambda s: len(set(fold[s.index])) > 1) if len(dup) else pd.Series([])
    if groups_in_two.any():
        out(f"ERROR {int(groups_in_two.sum())} identical image(s) fall in different folds (leakage)")
        errors += int(groups_in_two.sum())
    return errors
