"""`baseline data check`: a report on the data and its split; non-zero exit when it finds an error."""

from __future__ import annotations

import contextlib
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .. import progress
from ..config import Config
from . import crops, report, store
from .dataset import MIN_SIDE, header_size, to_rgb
from .layouts import DataError, read_table
from .split import check_groups, content_hashes, hash_cache, read_folds, split_path


def unreadable(paths: list[str]) -> list[tuple[str, str]]:
    """(path, why) for each image training would refuse: broken, or too small to be a picture."""
    bad = []
    for p in progress.track(paths, "data check: decoding", len(paths)):
        try:
            with Image.open(p) as im:
                im.load()
                if min(im.size) < MIN_SIDE:
                    raise ValueError(f"{im.width}x{im.height} pixels, under {MIN_SIDE} on a side")
        except Exception as e:  # PIL raises many types for broken files
            bad.append((p, f"{type(e).__name__}: {e}"))
    return bad


def transparent(paths: list[str]) -> list[str]:
    """Images with transparent pixels (training composites them on white)."""
    out = []
    for p in paths:
        with contextlib.suppress(Exception), Image.open(p) as im:  # unreadable ones are reported above
            if to_rgb(im)[1]:
                out.append(p)
    return out


def image_sizes(paths: list[str]) -> list[tuple[int, int] | None]:
    """(width, height) as displayed (EXIF rotation counted); None where it cannot be read."""
    sizes = []
    for p in paths:
        try:
            sizes.append(header_size(p))
        except DataError:
            sizes.append(None)
    return sizes


def odd_sizes(paths: list[str], sizes: list[tuple[int, int] | None]) -> list[tuple[str, str]]:
    """Images far from the typical one: aspect ratio off the median's by more than a quarter, or the
    shorter side under half the median's (resized to the training size, they distort or blur)."""
    wh = np.array([s if s is not None else (np.nan, np.nan) for s in sizes], dtype=float).reshape(-1, 2)
    aspect, short = wh[:, 1] / wh[:, 0], wh.min(1)
    med_aspect, med_short = np.nanmedian(aspect), np.nanmedian(short)
    odd = []
    for p, a, s, size in zip(paths, aspect, short, sizes):
        if size is None:
            continue
        if abs(np.log(a / med_aspect)) > np.log(1.25):
            odd.append((p, f"odd aspect {size[0]}x{size[1]}"))
        elif s < med_short / 2:
            odd.append((p, f"small {size[0]}x{size[1]}"))
    return odd


def _identical_across_groups(df: pd.DataFrame, dup: pd.Series) -> int:
    """Identical images whose copies carry different groups (e.g. one person under two ids)."""
    if not len(dup):
        return 0
    return int(df["group"].loc[dup.index].groupby(dup).nunique().gt(1).sum())


def check(cfg: Config, out=print) -> int:
    """Print the report, write its pictures; return the number of errors found."""
    table = read_table(cfg)
    df = table.df
    out(f"{len(df)} images, {df['group'].nunique()} groups, {len(table.classes)} classes ({cfg.data.format} layout)")
    counts = df["label"].value_counts().reindex(range(len(table.classes)), fill_value=0)
    out("images per class:")
    for i, c in enumerate(table.classes):
        out(f"  {i:3d} {c:<24} {counts[i]}")
    sizes = image_sizes(df["path"].tolist())
    common = Counter(s for s in sizes if s is not None).most_common(5)
    out("image sizes (w x h): " + ", ".join(f"{w}x{h}: {n}" for (w, h), n in common))
    errors, flags, dup = check_images(df, out, hash_cache(cfg))
    clear = transparent(df["path"].tolist())
    if clear:
        out(f"WARNING {len(clear)} image(s) have transparent pixels (e.g. {clear[0]}): training composites them "
            "on white")
        flags += [(p, "transparent") for p in clear]
    flags += odd_sizes(df["path"].tolist(), sizes)
    split_errors, fold = check_split(cfg, table, counts, dup, out)
    out_dir = Path(cfg.check.out) if cfg.check.out else store.beside_data(cfg, "report", written=True)
    pictures = report.write(table, fold, sizes, flags, out_dir)
    if cfg.data.crop != "none":  # detects the faces training will crop to (kept beside the decode cache)
        boxes = crops.boxes_for(cfg.data.crop, cfg.data.crop_margin, df["path"].tolist(),
                                store.beside_data(cfg, ".cache", written=True), cfg.data.max_pixels, say=False)
        fell = sum(b == crops.CENTER for b in boxes.values())
        out(f"data.crop={cfg.data.crop}: {len(boxes) - fell} of {len(boxes)} images cropped to their box, {fell} to "
            "the centre")
        pictures.append(out_dir / "crops.png")
        report.crop_boxes(boxes, crops.CENTER, pictures[-1])
    out(f"pictures in {out_dir}/: " + ", ".join(p.name for p in pictures))
    return errors + split_errors


def check_images(df: pd.DataFrame, out,
                 hashes_file: Path | None = None) -> tuple[int, list[tuple[str, str]], pd.Series]:
    """Unreadable files (errors) and identical content (warnings): the error count, every flagged
    (path, why), and the content hash of each duplicated image."""
    bad = unreadable(df["path"].tolist())
    for p, why in bad:
        out(f"ERROR unreadable image {p}: {why}")
    flags = [(p, "unreadable") for p, _ in bad]
    hashes = pd.Series(content_hashes(df["path"].tolist(), hashes_file))
    hashes = hashes[~df["path"].isin({p for p, _ in bad})]  # broken files are reported once, above
    dup = hashes[hashes.duplicated(keep=False)]
    for k, (_, same) in enumerate(df["path"].groupby(dup).groups.items() if len(dup) else []):
        out(f"WARNING identical content: {[df['path'][i] for i in same]}")
        flags += [(df["path"][i], f"identical #{k + 1}") for i in same]
    return len(bad), flags, dup


def check_split(cfg: Config, table, counts: pd.Series, dup: pd.Series, out) -> tuple[int, np.ndarray | None]:
    """The split file's folds: class drift, groups and identical images across folds. Returns the
    error count and the folds (None without a usable split file)."""
    df = table.df
    across = _identical_across_groups(df, dup)
    path = split_path(cfg)
    if not Path(path).is_file():
        out(f"no split file at {path} yet (`baseline data split` writes it and keeps identical images in one fold)")
        if across:
            out(f"ERROR {across} identical image(s) belong to different groups; the split will join those groups")
        return across, None
    try:
        fold = read_folds(cfg, table, path)
        check_groups(table, fold, path)
    except DataError as e:
        out(f"ERROR {e}")
        return 1, None
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
    return int(groups_in_two.sum()), fold
