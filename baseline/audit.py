"""`baseline data audit EXPERIMENT`: the training labels that the out-of-fold predictions contradict with
confidence (cleanlab's confident learning, `cleanlab.filter.find_label_issues`), for a person to review.

On the competition layout the unit is the person and the field: a person's seven photos share gender and
age, so their out-of-fold probabilities are summed into each field's marginal (gender 2-way, age bucket
3-way) and averaged over the photos before cleanlab sees them; the mask state is per photo. Elsewhere the
unit is the image. Several experiments on the same data are voted: their out-of-fold probabilities are
averaged per image before anything is flagged (a stronger, steadier OOF). Every flag is listed for review;
the `sure` ones are confident (audit.min_score), within what the field's OOF supports (bound_sure: its
accuracy and cleanlab's estimate of its wrong labels), for a mask state one half of a swap, and for an age
not at a bucket edge (audit.age_margin) unless very confident (audit.edge_score): where the age cue grows
year by year, a 60 and a 58 look alike and a model's bucket probabilities rarely say which side of 60 a
person is on (measured on the contest-like sets: most age flags at the edge were true 60s suggested 30-59;
people given an age next to the edge gave the other bucket 0.51-0.84, a true 60 written 56 gave 58+
0.87-0.91). Nothing is changed: `--corrections FILE` writes the sure gender and age suggestions in the
`data.corrections` format, which training uses only when the user passes it."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from cleanlab.count import num_label_issues
from cleanlab.filter import find_label_issues

from . import files
from . import oof as oofs
from .config import AuditCfg, Config, ConfigError
from .data.competition import (
    GENDERS,
    MASK_NAMES,
    OFFICIAL_EDGES,
    age_bucket,
    age_names,
    age_ranges,
    field_of,
    field_probs,
)
from .data.layouts import read_table
from .runfolder import Experiment, RunFolder

log = logging.getLogger("baseline")


def read_oof(source: Path) -> pd.DataFrame:
    """An experiment's joined oof.csv (every training image once), or one run's (its fold only)."""
    path = Experiment(source).oof  # a run's oof.csv has the same name
    if not path.is_file():
        raise ConfigError(f"data audit: no oof.csv in '{source}' (run `baseline cv` first; its experiment folder "
                          "holds the out-of-fold predictions of every training image)")
    oof = pd.read_csv(path)
    if "fold" in oof.columns and oof["fold"].nunique() < 2:
        log.warning("data audit: '%s' covers one fold only (%d images); an experiment from `baseline cv` audits "
                    "every image", source, len(oof))
    return oof


def voted_oof(sources: list[Path]) -> pd.DataFrame:
    """Several experiments' OOF on the same images as one, each image's probabilities averaged (the vote
    across runs one of the contest's teams found its wrong labels by): the first's rows and labels."""
    first = read_oof(sources[0])
    cols = oofs.prob_columns(first)
    summed = first[cols].to_numpy(dtype=float)
    for source in sources[1:]:
        other = read_oof(source)
        if oofs.prob_columns(other) != cols or set(other["path"]) != set(first["path"]):
            raise ConfigError(f"data audit: '{source}' has other images or classes than '{sources[0]}' "
                              f"({len(other)} rows, {len(oofs.prob_columns(other))} classes; expected {len(first)} "
                              f"and {len(cols)}): a vote needs experiments on the same training data")
        other = other.set_index("path").loc[first["path"]]
        if (other["label"].to_numpy() != first["label"].to_numpy()).any():
            raise ConfigError(f"data audit: '{source}' was trained on other labels than '{sources[0]}' "
                              "(data.corrections?): a vote needs experiments on the same labels")
        summed += other[cols].to_numpy(dtype=float)
    voted = first.copy()
    voted[cols] = summed / len(sources)
    voted["pred"] = voted[cols].to_numpy().argmax(1)
    return voted


def trained_edges(sources: list[Path]) -> tuple[int, int]:
    """The age edges the experiments trained with (data.age_edges of their resolved config.yaml): the
    OOF's age probabilities are over those buckets (with [30, 58] its third column means 58 and older),
    so the audit buckets the given ages the same way."""
    found = {}
    for source in sources:
        path = next((p for p in (Experiment(source).fold(0).config, RunFolder(source).config) if p.is_file()), None)
        edges = ((yaml.safe_load(path.read_text()) or {}).get("data", {}).get("age_edges") if path else None)
        found[source] = tuple(int(e) for e in edges) if isinstance(edges, list) else OFFICIAL_EDGES
    if len(set(found.values())) > 1:
        raise ConfigError(f"data audit: the experiments trained with other data.age_edges ({found}): their age "
                          "probabilities are over other buckets and cannot be voted")
    return next(iter(found.values()))


def issues(labels: np.ndarray, probs: np.ndarray, min_score: float | None = None) -> np.ndarray:
    """Boolean mask of the rows cleanlab calls label issues (confident learning, pruned by noise rate),
    and, with a min_score, of those whose prediction is another label with at least that probability.
    Why both, for people: a row only counts as another class's when its probability beats that class's
    mean self-confidence; with a strong model that mean is 0.95 and a person at 0.85 for the other gender
    is not counted (measured: a 96-px 10-epoch cv left both flipped genders of contest_b unlisted). Photos
    are many, and a weak model's confident mistakes on them would swamp the list (a 48-px test_resnet cv:
    19 people with sure flags for 6 wrong), so they get cleanlab alone."""
    confident = (probs.argmax(1) != labels) & (probs.max(1) >= (np.inf if min_score is None else min_score))
    shown = _cleanlab_view(labels, probs)
    return confident if shown is None else find_label_issues(*shown, filter_by="prune_by_noise_rate") | confident


def support(labels: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """What the OOF can support for one field: its accuracy against the given labels, and cleanlab's
    estimate of how many of those labels are wrong (the calibrated confident joint's off-diagonal)."""
    accuracy = float((probs.argmax(1) == labels).mean()) if len(labels) else 0.0
    shown = _cleanlab_view(labels, probs)
    if shown is None:
        return accuracy, 0
    return accuracy, int(num_label_issues(*shown, estimation_method="off_diagonal_calibrated"))


def _cleanlab_view(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The labels and probabilities over the classes present (cleanlab needs an example of every class it
    is shown), or None where it has too little to count."""
    if len(labels) < probs.shape[1] or len(np.unique(labels)) < 2:
        return None
    present = np.unique(labels)
    keep = probs[:, present]
    keep = keep / np.clip(keep.sum(1, keepdims=True), 1e-12, None)
    return np.searchsorted(present, labels), keep


def bound_sure(rows: pd.DataFrame, of_field: pd.Series, field: str, accuracy: float, wrong: int,
               min_accuracy: float) -> pd.DataFrame:
    """A field's sure flags (the rows `of_field`) bounded by what its OOF supports: none where its accuracy
    is under min_accuracy (a weak OOF's confident mistakes outnumber the wrong labels), and at most the
    estimated number of wrong labels, the most confident first. The rest stay listed for review."""
    keep = wrong if accuracy >= min_accuracy else 0
    mine = rows.index[of_field & rows["sure"]]
    dropped = rows.loc[mine, "score"].sort_values(ascending=False, kind="stable").index[keep:]
    rows.loc[dropped, "sure"] = False
    log.info("data audit: %s: out-of-fold accuracy %.3f (sure flags need %.2f), cleanlab estimates %d wrong "
             "label(s): %d sure flag(s) of %d listed", field, accuracy, min_accuracy, wrong,
             len(mine) - len(dropped), int(of_field.sum()))
    return rows


def person_ages(table) -> pd.Series:
    """Each person's age, by person id (the mask layout's `group`)."""
    return table.df.drop_duplicates("group").set_index("group")["age"]


def near_edge(age: int, suggested: int, margin: int, edges=OFFICIAL_EDGES) -> bool:
    """Whether `age` is within `margin` years of the suggested age bucket under `edges` or the official
    ones (with margin 2, 58-59 are at the edge of >=60 and 60-61 at that of 30-59; a 58 suggested <30 is
    not; with [30, 58] a 60 suggested 30-57 is, since the score asks whether they are 60)."""
    ranges = (age_ranges(e)[suggested] for e in (edges, OFFICIAL_EDGES))
    return any(lo - margin <= age <= hi + margin for lo, hi in ranges)


def given_values(oof: pd.DataFrame, person: np.ndarray, ages: pd.Series, edges) -> dict[str, pd.Series]:
    """Each person's given gender (the OOF's labels) and age bucket (their age in train.csv bucketed at the
    experiment's edges), checked against the OOF: a person whose official bucket differs was trained on
    other labels (another data.corrections) than this audit reads."""
    labels = oof["label"].to_numpy()
    gender = pd.Series(field_of(labels, "gender")).groupby(person).agg(lambda s: s.mode().iloc[0])
    trained = pd.Series(field_of(labels, "age")).groupby(person).agg(lambda s: s.mode().iloc[0])
    official = ages.loc[trained.index].map(age_bucket)
    if (official != trained).any():
        pid = trained.index[(official != trained).to_numpy()][0]
        raise ConfigError(f"data audit: person {pid} is aged {ages[pid]} in the data but the experiment's "
                          f"labels say {age_names()[trained[pid]]}: audit with the data.corrections it trained on")
    return {"gender": gender, "age": ages.loc[trained.index].map(lambda a: age_bucket(a, edges))}


def audit_people(oof: pd.DataFrame, table, a: AuditCfg | None = None, edges=OFFICIAL_EDGES) -> pd.DataFrame:
    """Mask layout: one row per suspected (person, field): id, field, given, suggested, score (the mean
    out-of-fold probability of the suggested value), sure (confident, for an age at the edge at least
    edge_score, and within what the field's OOF supports: bound_sure), a photo. Ages are in the buckets of
    `edges`, the ones the experiment trained with."""
    a = a or AuditCfg()
    by_path = table.df.set_index("path")
    missing = ~oof["path"].isin(by_path.index)
    if missing.any():
        raise ConfigError(f"data audit: {int(missing.sum())} image(s) of the OOF are not in the data under "
                          f"data.root, e.g. '{oof['path'][missing].iloc[0]}' (another data root or data set?)")
    probs = oofs.probs(oof)
    person = by_path.loc[oof["path"], "group"].astype(str).to_numpy()
    first = pd.Series(oof["path"].to_numpy()).groupby(person).first()  # the picture shows one photo
    rows, supports = person_flags(probs, oof, person, person_ages(table), a, edges)
    labels = oof["label"].to_numpy()
    mask_p, mask_y = field_probs(probs, "mask"), field_of(labels, "mask")
    for i in np.flatnonzero(issues(mask_y, mask_p)):
        s = int(mask_p[i].argmax())
        rows.append({"id": person[i], "field": "mask", "given": MASK_NAMES[mask_y[i]], "suggested": MASK_NAMES[s],
                     "score": round(float(mask_p[i, s]), 4), "sure": bool(mask_p[i, s] >= a.min_score),
                     "path": oof["path"].iloc[i]})
    supports["mask"] = support(mask_y, mask_p)
    out = pd.DataFrame(rows, columns=["id", "field", "given", "suggested", "score", "sure", "path"])
    out["sure"] &= (out["field"] != "mask") | swapped(out)
    out["path"] = out["path"].fillna(out["id"].map(first))
    for field, (accuracy, wrong) in supports.items():
        out = bound_sure(out, out["field"] == field, field, accuracy, wrong, a.min_accuracy)
    return out.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def swapped(rows: pd.DataFrame) -> pd.Series:
    """Whether a mask flag has its other half: a photo of the same person flagged the other way round. A
    person's photos hold each mask state a fixed number of times (the file names say which), so a wrong
    mask label is two files swapped; one photo alone that looks worn when named incorrect is the model
    confusing the two states (measured: 3 such sure flags at 0.75-0.98 on a 64-px cv, no mask label wrong)."""
    mask = rows[rows["field"] == "mask"]
    pairs = set(zip(mask["id"], mask["given"], mask["suggested"]))
    other_half = [(i, s, g) in pairs for i, g, s in zip(mask["id"], mask["given"], mask["suggested"])]
    return pd.Series(other_half, index=mask.index, dtype=bool).reindex(rows.index, fill_value=False)


def person_flags(probs: np.ndarray, oof: pd.DataFrame, person: np.ndarray, ages: pd.Series, a: AuditCfg,
                 edges) -> tuple[list[dict], dict[str, tuple[float, int]]]:
    """The gender and age flags, one per person and field, on the mean of the person's photos' marginals;
    and each field's support (accuracy, estimated wrong labels) over the people."""
    names = {"gender": GENDERS, "age": age_names(edges)}
    givens = given_values(oof, person, ages, edges)
    rows, supports = [], {}
    for field in ("gender", "age"):
        m = pd.DataFrame(field_probs(probs, field)).groupby(person).mean()
        given, p = givens[field].loc[m.index].to_numpy(), m.to_numpy()
        supports[field] = support(given, p)
        flagged = issues(given, p, a.min_score)
        for pid, g, q in zip(m.index[flagged], given[flagged], p[flagged]):
            s = int(q.argmax())
            edge = field == "age" and near_edge(int(ages[pid]), s, a.age_margin, edges) and q[s] < a.edge_score
            rows.append({"id": pid, "field": field, "given": names[field][g], "suggested": names[field][s],
                         "score": round(float(q[s]), 4), "sure": bool(q[s] >= a.min_score and not edge), "path": None})
    return rows, supports


def audit_images(oof: pd.DataFrame, classes: list[str], a: AuditCfg | None = None) -> pd.DataFrame:
    """CSV / folder layouts: one row per suspected image."""
    a = a or AuditCfg()
    probs, labels = oofs.probs(oof), oof["label"].to_numpy()
    flagged = issues(labels, probs)
    rows = [{"image": oof["image"].iloc[i] if "image" in oof.columns else oof["path"].iloc[i],
             "given": classes[labels[i]], "suggested": classes[int(probs[i].argmax())],
             "score": round(float(probs[i].max()), 4), "sure": bool(probs[i].max() >= a.min_score),
             "path": oof["path"].iloc[i]} for i in np.flatnonzero(flagged)]
    out = pd.DataFrame(rows, columns=["image", "given", "suggested", "score", "sure", "path"])
    out = bound_sure(out, pd.Series(True, index=out.index), "label", *support(labels, probs), a.min_accuracy)
    return out.sort_values("score", ascending=False, kind="stable").reset_index(drop=True)


def corrections(found: pd.DataFrame, table, edges=OFFICIAL_EDGES) -> pd.DataFrame:
    """The sure gender and age suggestions in the data.corrections format (id, field, value). An age moves
    to the nearest age that is in the suggested bucket under both `edges` and the official ones (45 suggested
    <30 becomes 29; with [30, 58], 45 suggested >=58 becomes 60, not 58, which the competition counts as
    30-59): the smallest change that makes the label what the predictions say for training and for the
    score. Mask states come from file names, so they are not here."""
    ages = person_ages(table)
    out = []
    for r in found[found["field"].isin(["gender", "age"]) & found["sure"]].itertuples():
        if r.field == "gender":
            value = r.suggested
        else:
            lo, hi = bucket_range(age_names(edges).index(r.suggested), edges)
            value = int(np.clip(int(ages[str(r.id)]), lo, hi))
        out.append({"id": r.id, "field": r.field, "value": value})
    return pd.DataFrame(out, columns=["id", "field", "value"])


def bucket_range(bucket: int, edges) -> tuple[int, int]:
    """The ages that are in `bucket` under `edges` and under the official edges alike."""
    (lo, hi), (olo, ohi) = age_ranges(edges)[bucket], age_ranges(OFFICIAL_EDGES)[bucket]
    return max(lo, olo), min(hi, ohi)


def run(cfg: Config, sources: list[str], corrections_out: str | None = None) -> tuple[pd.DataFrame, Path]:
    """Audit `sources` (experiment or run folders; several are voted): writes label_issues.csv (and .png)
    in the first, and the corrections file if asked; returns the issues and the csv path."""
    folder, paths = Path(sources[0]), [Path(s) for s in sources]
    oof = voted_oof(paths)
    table = read_table(cfg)
    a = cfg.audit
    edges = trained_edges(paths) if cfg.data.format == "mask" else OFFICIAL_EDGES
    if edges != OFFICIAL_EDGES:
        log.info("data audit: ages in the buckets the experiment trained with, data.age_edges=%s", list(edges))
    found = audit_people(oof, table, a, edges) if cfg.data.format == "mask" else audit_images(oof, table.classes, a)
    out = folder / "label_issues.csv"
    files.write_csv(out, found)
    picture(found, folder / "label_issues.png")
    if corrections_out:
        if cfg.data.format != "mask":
            raise ConfigError("data audit --corrections: data.corrections is for the mask layout (people with a "
                              "gender and an age); for csv/folder data fix the labels the audit lists in the CSV")
        files.write_csv(Path(corrections_out), corrections(found, table, edges))
    return found, out


def picture(found: pd.DataFrame, out: Path, n: int = 24) -> Path | None:
    """The suspects' images with the given and the suggested label, most confident first."""
    if not len(found):
        return None
    from .plots import image_grid

    def title(r) -> str:
        who = f"{r.id} {r.field}: " if "id" in found.columns else ""
        return f"{who}{r.given}\n-> {r.suggested} ({r.score:.2f})"

    image_grid([(r.path, title(r)) for r in found.head(n).itertuples()], out,
               "suspected label issues (out-of-fold predictions)", side=120)
    return out
