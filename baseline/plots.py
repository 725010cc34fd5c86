"""PNG figures for the run folder, readable with no account: learning curves and confusion matrix."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402


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
