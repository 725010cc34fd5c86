"""`baseline compare A B`: is experiment B really better than A? Both on the same split and labels, their
out-of-fold macro-F1 difference with a confidence interval from a paired bootstrap over people (the unit
the split draws), then the per-fold, per-field (mask, gender, age) and per-class differences, a verdict
line and a picture of the per-class differences."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import plots
from ..errors import ConfigError
from ..oof import image_key
from .ensemble import Member, load_member

DRAWS = 2000  # bootstrap resamples of the people
FIELDS = {"mask": lambda y: y // 6, "gender": lambda y: (y // 3) % 2, "age": lambda y: y % 3}  # the 18 classes


@dataclass
class Comparison:
    a: str
    b: str
    f1_a: float
    f1_b: float
    low: float  # the 95% interval of f1_b - f1_a over people resampled
    high: float
    people: int
    folds: pd.DataFrame  # fold, f1_a, f1_b, difference
    fields: pd.DataFrame  # field, f1_a, f1_b, difference (18-class mask layout only)
    classes: pd.DataFrame  # class, f1_a, f1_b, difference

    @property
    def difference(self) -> float:
        return self.f1_b - self.f1_a

    def verdict(self) -> str:
        span = f"{self.difference:+.4f}, 95% CI {self.low:+.4f} to {self.high:+.4f} over {self.people} people"
        if self.low > 0:
            return f"{self.b} is better than {self.a}: {span}"
        if self.high < 0:
            return f"{self.b} is worse than {self.a}: {span}"
        return f"not distinguishable at this size: {span}"


def aligned(a: Member, b: Member) -> pd.DataFrame:
    """One row per image both predicted: label, group, fold, and each side's prediction; refused (naming both)
    when they were made on different split files or validated on different labels."""
    if a.split_hash != b.split_hash:
        raise ConfigError(f"compare: '{a.folder}' and '{b.folder}' were trained on different split files (hash "
                          f"{a.split_hash or 'unknown'} vs {b.split_hash or 'unknown'}); their OOF scores do not "
                          "compare")
    key = image_key(a.oof) if image_key(a.oof) == image_key(b.oof) else "path"
    both = a.oof.merge(b.oof, on=key, suffixes=("_a", "_b"))
    if len(both) != len(a.oof) or len(both) != len(b.oof):
        raise ConfigError(f"compare: '{a.folder}' ({len(a.oof)} OOF rows) and '{b.folder}' ({len(b.oof)}) predicted "
                          "other images; compare whole experiments (every fold) of one split")
    differ = int((both["label_a"] != both["label_b"]).sum())
    if differ:
        raise ConfigError(f"compare: '{a.folder}' and '{b.folder}' were validated on different labels ({differ} of "
                          f"{len(both)} images; one trained with data.corrections?); compare experiments of one "
                          "labelling, or see `baseline runs` for the like-for-like score")
    group = both["group_a"] if "group_a" in both.columns else both[key]  # no person ids: each image its own
    return pd.DataFrame({"label": both["label_a"].astype(int), "group": group.astype(str),
                         "fold": both["fold_a"], "pred_a": both["pred_a"].astype(int),
                         "pred_b": both["pred_b"].astype(int)})


def confusions(labels: np.ndarray, preds: np.ndarray, groups: np.ndarray, n_cls: int) -> np.ndarray:
    """(groups, n_cls, n_cls) counts: each person's confusion matrix, so a resample of people sums them."""
    _, g = np.unique(groups, return_inverse=True)
    out = np.zeros((g.max() + 1, n_cls * n_cls))
    np.add.at(out, (g, labels * n_cls + preds), 1)
    return out.reshape(-1, n_cls, n_cls)


def macro_f1(conf: np.ndarray) -> np.ndarray:
    """Macro-F1 of (..., C, C) confusion matrices (rows: label), over the classes that occur (as
    scikit-learn's f1_score over the labels present)."""
    tp = np.diagonal(conf, axis1=-2, axis2=-1)
    support, predicted = conf.sum(-1), conf.sum(-2)
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros_like(tp, dtype=float), where=support + predicted > 0)
    present = (support + predicted) > 0
    return (f1 * present).sum(-1) / np.maximum(present.sum(-1), 1)


def bootstrap(rows: pd.DataFrame, n_cls: int, draws: int = DRAWS, seed: int = 0) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of F1(B) - F1(A) over people drawn with replacement (each draw the
    same people for both: a paired bootstrap)."""
    y, groups = rows["label"].to_numpy(), rows["group"].to_numpy()
    ca = confusions(y, rows["pred_a"].to_numpy(), groups, n_cls).reshape(-1, n_cls * n_cls)
    cb = confusions(y, rows["pred_b"].to_numpy(), groups, n_cls).reshape(-1, n_cls * n_cls)
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(ca), np.full(len(ca), 1 / len(ca)), size=draws)  # (draws, people)
    shape = (draws, n_cls, n_cls)
    diff = macro_f1((weights @ cb).reshape(shape)) - macro_f1((weights @ ca).reshape(shape))
    return float(np.percentile(diff, 2.5)), float(np.percentile(diff, 97.5))


def per(rows: pd.DataFrame, by: str, n_cls: int) -> pd.DataFrame:
    """Each side's macro-F1 within each value of column `by`, and the difference."""
    out = []
    for value, part in rows.groupby(by, sort=True):
        y = part["label"].to_numpy()
        fa = float(macro_f1(confusions(y, part["pred_a"].to_numpy(), np.zeros(len(y)), n_cls)[0]))
        fb = float(macro_f1(confusions(y, part["pred_b"].to_numpy(), np.zeros(len(y)), n_cls)[0]))
        out.append({by: value, "f1_a": fa, "f1_b": fb, "difference": fb - fa})
    return pd.DataFrame(out)


def per_field(rows: pd.DataFrame, n_cls: int) -> pd.DataFrame:
    """Macro-F1 of mask (3 ways), gender (2) and age (3) read off the 18 classes; empty for other layouts."""
    if n_cls != 18:
        return pd.DataFrame(columns=["field", "f1_a", "f1_b", "difference"])
    out = []
    for field, of in FIELDS.items():
        y, pa, pb = (of(rows[c].to_numpy()) for c in ("label", "pred_a", "pred_b"))
        k = int(max(y.max(), pa.max(), pb.max())) + 1
        fa = float(macro_f1(confusions(y, pa, np.zeros(len(y)), k)[0]))
        fb = float(macro_f1(confusions(y, pb, np.zeros(len(y)), k)[0]))
        out.append({"field": field, "f1_a": fa, "f1_b": fb, "difference": fb - fa})
    return pd.DataFrame(out)


def per_class(rows: pd.DataFrame, n_cls: int, names: list[str]) -> pd.DataFrame:
    y = rows["label"].to_numpy()
    f1 = {}
    for side in ("a", "b"):
        conf = confusions(y, rows[f"pred_{side}"].to_numpy(), np.zeros(len(y)), n_cls)[0]
        tp, support, predicted = np.diag(conf), conf.sum(1), conf.sum(0)
        f1[side] = np.divide(2 * tp, support + predicted, out=np.zeros(n_cls), where=support + predicted > 0)
    return pd.DataFrame({"class": names, "f1_a": f1["a"], "f1_b": f1["b"], "difference": f1["b"] - f1["a"]})


def compare(a_folder: str | Path, b_folder: str | Path, classes: list[str] | None = None) -> Comparison:
    a, b = load_member(a_folder), load_member(b_folder)
    rows = aligned(a, b)
    n_cls = len(a.oof.filter(regex=r"^p\d+$").columns)
    names = classes or [str(k) for k in range(n_cls)]
    y = rows["label"].to_numpy()
    whole = [float(macro_f1(confusions(y, rows[f"pred_{s}"].to_numpy(), np.zeros(len(y)), n_cls)[0])) for s in "ab"]
    low, high = bootstrap(rows, n_cls)
    return Comparison(a.name, b.name, whole[0], whole[1], low, high, int(rows["group"].nunique()),
                      per(rows, "fold", n_cls), per_field(rows, n_cls), per_class(rows, n_cls, names))


def report(c: Comparison) -> str:
    def table(df: pd.DataFrame) -> str:
        return df.to_string(index=False, formatters={"f1_a": "{:.4f}".format, "f1_b": "{:.4f}".format,
                                                     "difference": "{:+.4f}".format})

    lines = [f"OOF macro-F1: {c.a} (A) {c.f1_a:.4f}, {c.b} (B) {c.f1_b:.4f}", "", "per fold:", table(c.folds)]
    if len(c.fields):
        lines += ["", "per field:", table(c.fields)]
    lines += ["", "per class (largest differences):",
              table(c.classes.reindex(c.classes["difference"].abs().sort_values(ascending=False).index).head(8)),
              "", c.verdict()]
    return "\n".join(lines)


def picture(c: Comparison, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    plots.per_class_difference(c.classes["difference"].to_numpy(), c.classes["class"].tolist(),
                               f"per-class F1: {c.b} minus {c.a}", out)
    return out
