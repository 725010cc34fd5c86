"""The pictures of `baseline data check`: images per class (and per fold), sample images per class,
image sizes and aspect ratios, and every flagged image. Written into one folder, without a display."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .. import plots  # noqa: E402
from .layouts import Table  # noqa: E402

MAX_CLASSES_SHOWN = 40  # sample grid: beyond this the picture is no longer readable
MAX_FLAGGED_SHOWN = 60


def class_counts(table: Table, fold: np.ndarray | None, out: Path) -> None:
    """Images per class; with a split, each fold's share of every class (drift shows as spread)."""
    n = len(table.classes)
    counts = np.bincount(table.df["label"], minlength=n)
    panels = 2 if fold is not None else 1
    fig, axes = plt.subplots(panels, 1, figsize=(max(6, 0.35 * n + 2), 3.2 * panels), squeeze=False)
    a = axes[0, 0]
    a.bar(range(n), counts, color="tab:blue")
    a.set_xticks(range(n), table.classes, rotation=90, fontsize=7)
    a.set(ylabel="images", title=f"images per class ({len(table.df)} images, {n} classes)")
    if fold is not None:
        b = axes[1, 0]
        share = pd.crosstab(fold, table.df["label"], normalize="index").reindex(columns=range(n), fill_value=0)
        width = 0.8 / len(share)
        for k, (f, row) in enumerate(share.iterrows()):
            b.bar(np.arange(n) + k * width - 0.4 + width / 2, row.to_numpy() * 100, width, label=f"fold {f}")
        b.set_xticks(range(n), table.classes, rotation=90, fontsize=7)
        b.set(ylabel="% of the fold", title="class share per fold")
        b.legend(fontsize=7, ncol=len(share))
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def samples(table: Table, out: Path, per_class: int = 3, seed: int = 0) -> None:
    """A few random images of every class, classes in their own order (for the competition layout
    that is mask, then gender, then age)."""
    rng = np.random.default_rng(seed)
    items = []
    for label, name in list(enumerate(table.classes))[:MAX_CLASSES_SHOWN]:
        paths = table.df["path"][table.df["label"] == label].to_numpy()
        for p in rng.choice(paths, size=min(per_class, len(paths)), replace=False):
            items.append((str(p), name))
        items += [("", "")] * (per_class - min(per_class, len(paths)))  # keep one class per half row
    shown = min(len(table.classes), MAX_CLASSES_SHOWN)
    title = f"{per_class} random images per class" + (f" (first {shown} classes)" if shown < len(table.classes) else "")
    plots.image_grid(items, out, title, cols=per_class * 2)


FOUND, FELL_BACK = (40, 200, 60), (240, 140, 0)


def crop_boxes(boxes: dict, centre: tuple, out: Path, n: int = 24, seed: int = 0) -> None:
    """A random sample of images with the box data.crop cuts: green where a face was found, orange where
    the centre crop stands in, and the fall-back count in the title."""
    paths = list(boxes)
    pick = np.random.default_rng(seed).choice(len(paths), size=min(n, len(paths)), replace=False)
    shown = [(paths[i], boxes[paths[i]]) for i in sorted(pick)]
    fell = sum(b == centre for b in boxes.values())
    plots.image_grid([(p, Path(p).parent.name[:6] + "/" + Path(p).name[:10]) for p, _ in shown], out,
                     f"data.crop: {len(paths) - fell} boxes found (green), {fell} centre crops (orange)",
                     boxes=[(b, FELL_BACK if b == centre else FOUND) for _, b in shown])


def sizes(sizes_wh: list[tuple[int, int] | None], out: Path) -> None:
    """Histograms of width and height, and of the aspect ratio (height / width)."""
    wh = np.array([s for s in sizes_wh if s is not None], dtype=float).reshape(-1, 2)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
    a.hist([wh[:, 0], wh[:, 1]], bins=30, label=["width", "height"])
    a.set(xlabel="pixels", ylabel="images", title="image sizes")
    a.legend(fontsize=7)
    b.hist(wh[:, 1] / np.maximum(wh[:, 0], 1), bins=30, color="tab:green")
    b.set(xlabel="height / width", title="aspect ratio")
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    plt.close(fig)


def flagged(items: list[tuple[str, str]], out: Path) -> None:
    """Every flagged image (path, why), up to MAX_FLAGGED_SHOWN."""
    shown = items[:MAX_FLAGGED_SHOWN]
    title = (f"{len(items)} flagged image(s)" + (f", first {len(shown)} shown" if len(shown) < len(items) else "")
             if items else "no flagged images")
    plots.image_grid([(p, f"{why}\n{Path(p).parent.name}/{Path(p).name}"[:60]) for p, why in shown] or [("", "")],
                     out, title)


def write(table: Table, fold: np.ndarray | None, sizes_wh: list, flags: list[tuple[str, str]],
          out_dir: Path) -> list[Path]:
    """All four pictures into `out_dir`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f for f in ("class_counts.png", "samples.png", "image_sizes.png", "flagged.png")]
    class_counts(table, fold, paths[0])
    samples(table, paths[1])
    sizes(sizes_wh, paths[2])
    flagged(flags, paths[3])
    return paths
