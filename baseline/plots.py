"""PNG figures, readable with no account: a run's learning curves, confusion matrix, per-class F1
and worst predictions; image grids for the data report (data/report.py). Drawn without a display."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402

from . import oof as oofs  # noqa: E402


def learning_curves(metrics_csv: Path, out: Path) -> None:
    m = pd.read_csv(metrics_csv)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot(m.epoch, m.train_loss, label="train")
    a.plot(m.epoch, m.val_loss, label="val")
    a.set(xlabel="epoch", ylabel="loss", title="loss")
    a.legend()
    b.plot(m.epoch, m.val_f1, label="macro-F1")
    b.plot(m.epoch, m.val_acc, label="accuracy")
    b.set(xlabel="epoch", ylim=(0, 1), title="validation")
    b.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def confusion(labels: np.ndarray, preds: np.ndarray, classes: list[str], out: Path) -> np.ndarray:
    cm = confusion_matrix(labels, preds, labels=list(range(len(classes))))
    size = max(5, 0.45 * len(classes))
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix (best epoch, validation)")
    for i, j in zip(*np.nonzero(cm)):
        ax.text(j, i, cm[i, j], ha="center", va="center", fontsize=6,
                color="white" if cm[i, j] > cm.max() / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return cm


def _thumb(path: str, side: int) -> np.ndarray:
    """The image as the model's source saw it (EXIF rotation applied), fitted into side x side."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        im.thumbnail((side, side))
        return np.asarray(im)


def image_grid(items: list[tuple[str, str]], out: Path, title: str, cols: int = 6, side: int = 112,
               boxes: list[tuple[tuple, tuple]] | None = None) -> None:
    """A grid of images with a short caption each; items are (path, caption), `boxes` (one per item:
    (x0, y0, x1, y1) as fractions of the image, RGB colour) drawn on them. One montage on one axis (a
    subplot per image costs ~20 ms each), unreadable files as a red tile."""
    rows = max(1, -(-len(items) // cols))
    cap = 30  # caption band in pixels
    grid = np.full((rows * (side + cap), cols * side, 3), 255, np.uint8)
    for k, (path, _) in enumerate(items):
        if not path:  # a gap
            continue
        r, c = divmod(k, cols)
        try:
            t = _thumb(path, side - 4)
        except OSError:
            t = np.full((side - 4, side - 4, 3), (220, 60, 60), np.uint8)
        if boxes is not None:
            t = np.array(t)
            outline(t, *boxes[k])
        y, x = r * (side + cap) + cap + (side - t.shape[0]) // 2, c * side + (side - t.shape[1]) // 2
        grid[y:y + t.shape[0], x:x + t.shape[1]] = t
    dpi = 100
    fig = plt.figure(figsize=(grid.shape[1] / dpi, grid.shape[0] / dpi + 0.4), dpi=dpi)
    ax = fig.add_axes([0, 0, 1, grid.shape[0] / (grid.shape[0] + 40)])
    ax.imshow(grid, interpolation="nearest")
    ax.axis("off")
    for k, (_, caption) in enumerate(items):
        r, c = divmod(k, cols)
        ax.text(c * side + side / 2, r * (side + cap) + cap - 2, caption, ha="center", va="bottom", fontsize=6)
    fig.suptitle(title, fontsize=10, y=0.995, va="top")
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    _palette(out)


def outline(img: np.ndarray, box: tuple, colour: tuple, width: int = 2) -> None:
    """Draw `box` (fractions of the image) on `img` in place."""
    h, w = img.shape[:2]
    x0, x1 = (int(np.clip(v * w, 0, w - width)) for v in (box[0], box[2]))
    y0, y1 = (int(np.clip(v * h, 0, h - width)) for v in (box[1], box[3]))
    img[y0:y0 + width, x0:x1 + width] = img[y1:y1 + width, x0:x1 + width] = colour
    img[y0:y1 + width, x0:x0 + width] = img[y0:y1 + width, x1:x1 + width] = colour


def _palette(png: Path) -> None:
    """256 colours: a third of the bytes for photo grids, no visible change at this size."""
    from PIL import Image

    with Image.open(png) as im:
        small = im.convert("RGB").quantize(256)
    small.save(png, optimize=True)


def worst_order(oof: pd.DataFrame) -> np.ndarray:
    """Row order of the validation images by their loss (-log p of the true class), highest first."""
    probs = oofs.probs(oof)
    p_true = probs[np.arange(len(oof)), oof["label"].to_numpy()]
    return np.argsort(p_true, kind="stable")  # the loss falls as p rises


def worst_predictions(oof: pd.DataFrame, classes: list[str], out: Path, n: int = 18) -> list[str]:
    """The validation images the best epoch got most wrong; returns their paths in drawn order."""
    order = worst_order(oof)[:n]
    probs = oofs.probs(oof)
    items = []
    for i in order:
        y, p = int(oof["label"].iloc[i]), int(oof["pred"].iloc[i])
        items.append((oof["path"].iloc[i], f"true {classes[y]}\npred {classes[p]} ({probs[i, p]:.2f})"))
    image_grid(items, out, "highest-loss validation images (best epoch)", side=160)
    return [path for path, _ in items]


def per_class_f1(labels: np.ndarray, preds: np.ndarray, classes: list[str], out: Path) -> np.ndarray:
    """Bars of each class's F1, worst at the top, with its validation support; returns the F1s."""
    from sklearn.metrics import f1_score

    ids = list(range(len(classes)))
    f1 = f1_score(labels, preds, labels=ids, average=None, zero_division=0)
    support = np.bincount(labels, minlength=len(classes))
    order = np.argsort(f1, kind="stable")[::-1]  # barh draws bottom-up: the worst ends on top
    fig, ax = plt.subplots(figsize=(6, max(2.5, 0.28 * len(classes) + 1)))
    ax.barh(range(len(classes)), f1[order], color="tab:blue")
    ax.set_yticks(range(len(classes)), [f"{classes[i]} (n={support[i]})" for i in order], fontsize=7)
    ax.set(xlim=(0, 1.05), xlabel="F1", title=f"per-class F1 (best epoch, validation), macro {f1.mean():.3f}")
    for k, i in enumerate(order):
        ax.text(min(f1[i] + 0.01, 0.95), k, f"{f1[i]:.2f}", va="center", fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return f1


def compare_per_class(f1s: dict[str, np.ndarray], classes: list[str], out: Path) -> None:
    """Per-class F1 of several runs side by side, classes sorted by the first run's F1."""
    names = list(f1s)
    order = np.argsort(f1s[names[0]], kind="stable")[::-1]
    height = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.35 * len(classes) + 1)))
    for k, name in enumerate(names):
        f1 = f1s[name][order]
        ax.barh(np.arange(len(classes)) + k * height, f1, height, label=f"{name} (macro {f1s[name].mean():.3f})")
    ax.set_yticks(np.arange(len(classes)) + 0.4 - height / 2, [classes[i] for i in order], fontsize=7)
    ax.set(xlim=(0, 1.05), xlabel="F1", title="per-class F1 (best epoch, validation)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def per_class_difference(diff: np.ndarray, classes: list[str], title: str, out: Path) -> None:
    """Per-class F1 of B minus A as bars (green: B better), largest gain on top."""
    order = np.argsort(diff, kind="stable")
    fig, ax = plt.subplots(figsize=(7, max(2.5, 0.3 * len(classes) + 1)))
    ax.barh(np.arange(len(classes)), diff[order], color=["#2a9d55" if d >= 0 else "#c0392b" for d in diff[order]])
    ax.set_yticks(np.arange(len(classes)), [classes[i] for i in order], fontsize=7)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set(xlabel="F1 difference (out of fold)", title=title)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
