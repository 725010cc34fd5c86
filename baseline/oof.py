"""oof.csv, a run's out-of-fold predictions (its best epoch, on its validation fold): written by train,
joined by cv, read by ensemble, ledger, plots and tracking. Columns: path (on this machine), image (the
path inside the data set, the same on every teammate's machine), label, group (the person), pred, and
one probability per class, p0 .. p<K-1>, in class order."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

KEYS = ("path", "image", "label", "group", "fold", "pred")  # the non-probability columns, where present


def prob_column(k: int) -> str:
    return f"p{k}"


def prob_columns(oof: pd.DataFrame) -> list[str]:
    """The probability columns, in class order (p2 before p10)."""
    cols = [c for c in oof.columns if c.startswith("p") and c[1:].isdigit()]
    return sorted(cols, key=lambda c: int(c[1:]))


def probs(oof: pd.DataFrame) -> np.ndarray:
    """(rows, classes) probabilities."""
    return oof[prob_columns(oof)].to_numpy()


def frame(paths: list[str], images: list[str], labels, groups, probabilities: np.ndarray) -> pd.DataFrame:
    df = pd.DataFrame({"path": paths, "image": images, "label": labels, "group": groups,
                       "pred": probabilities.argmax(1)})
    cols = [prob_column(k) for k in range(probabilities.shape[1])]
    return pd.concat([df, pd.DataFrame(probabilities, columns=cols)], axis=1)


def joined(frames: list[pd.DataFrame]) -> pd.DataFrame:
    """Several runs' OOF as one (an experiment's folds): the key columns present, then the probabilities."""
    oof = pd.concat(frames, ignore_index=True)
    return oof[[c for c in KEYS if c in oof.columns] + prob_columns(oof)]


def image_key(oof: pd.DataFrame) -> str:
    """`image` (the same on every teammate's machine), `path` in files from before it existed."""
    return "image" if "image" in oof.columns else "path"


def labels_key(oof: pd.DataFrame) -> str:
    """8 hex of the (image, label) pairs: two OOFs with the same key were scored against the same labels
    (an experiment trained with data.corrections validates on the corrected ones)."""
    pairs = sorted(zip(oof[image_key(oof)].astype(str), oof["label"].astype(int)))
    return hashlib.sha1(repr(pairs).encode()).hexdigest()[:8]


def like_for_like(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    """Two OOFs scored on the same labels: macro-F1 of each over the images both hold with the same label
    (the people a correction left alone), and how many images that is."""
    key = image_key(a) if image_key(a) == image_key(b) else "path"
    both = a.merge(b, on=key, suffixes=("_a", "_b"))
    same = both[both["label_a"] == both["label_b"]]

    def f1(side: str) -> float:
        return float(f1_score(same[f"label_{side}"], same[f"pred_{side}"], average="macro", zero_division=0))

    return {"images": int(len(same)), "of": int(max(len(a), len(b))), "a": f1("a"), "b": f1("b"),
            "difference": f1("b") - f1("a")}
