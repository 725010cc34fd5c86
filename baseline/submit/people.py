"""submit.person_vote: one person, one answer. A test set holds every photo of each person under names
that do not say whose, yet gender and age belong to the person, not the photo. The photos are grouped into
people by the model's own embeddings (engine.embedding: its middle feature map on a coarse grid), Ward
clustering of the unit-length embeddings into about n / submit.person_size groups (the contest's seven
photos a person is a prior for how many, not a rule each group must meet), then each group agrees on
gender and age (the mean of its photos' gender x age probabilities) while every photo keeps its own mask.

Its worth is measured where the truth is known: a run's validation images are grouped the same way,
without their person ids, and `oof_check` reports the grouping's purity against the ids and the OOF
macro-F1 with and without the vote (person_vote.json in the run folder). `auto` votes where that says it
helps."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from .. import dist, files
from .. import oof as oofs
from ..config import Config
from ..data.competition import field_of_classes
from ..data.layouts import TestTable
from ..runfolder import RunFolder, read_json
from . import predict

log = logging.getLogger("baseline")


def groups_of(emb: np.ndarray, size: int) -> np.ndarray:
    """A group number per row: about len(emb) / size people, by Ward linkage of the unit-length rows. Measured
    on a contest-like set's validation images (contest_a, 40 people): purity 0.99 with Ward, 0.95 average
    linkage, 0.95 complete."""
    from scipy.cluster.hierarchy import fcluster, linkage

    n = len(emb)
    if n < 2 or size < 2:
        return np.arange(n)
    unit = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    tree = linkage(unit.astype(np.float64), method="ward")
    return fcluster(tree, max(1, round(n / size)), criterion="maxclust") - 1


def purity(groups: np.ndarray, people: np.ndarray) -> float:
    """The share of images whose group's most common person is their own (1: no group mixes people)."""
    counts = pd.crosstab(groups, people)
    return float(counts.max(axis=1).sum() / counts.to_numpy().sum())


def vote(probs: np.ndarray, groups: np.ndarray, fields: list[str] = ("gender", "age")) -> np.ndarray:
    """18-class mask-layout probabilities with `fields` agreed within each group: each photo keeps its mask
    marginal; both fields: the group's mean gender x age probabilities; one: the group's mean marginal of
    that field times the photo's own probabilities of the other given it."""
    cube = probs.reshape(-1, 3, 2, 3)  # mask, gender, age
    mask, person = cube.sum((2, 3)), cube.sum(1)

    def mean(a: np.ndarray) -> np.ndarray:
        return group_mean(a.reshape(len(a), -1), groups).reshape(a.shape)

    if set(fields) == {"gender", "age"}:
        person = mean(person)
    elif "gender" in fields:
        person = person / np.clip(person.sum(2, keepdims=True), 1e-12, None) * mean(person.sum(2))[:, :, None]
    elif "age" in fields:
        person = person / np.clip(person.sum(1, keepdims=True), 1e-12, None) * mean(person.sum(1))[:, None, :]
    return (mask[:, :, None, None] * person[:, None]).reshape(len(probs), 18)


def group_mean(rows: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Each row replaced by its group's mean row."""
    return pd.DataFrame(rows).groupby(groups).transform("mean").to_numpy()


def macro_f1(labels, probs: np.ndarray) -> float:
    return float(f1_score(labels, probs.argmax(1), average="macro", zero_division=0))


def embed_validation(cfg: Config, run: RunFolder, oof: pd.DataFrame, env: dist.Env) -> np.ndarray:
    """The run's best model's embedding of each of its validation images (no TTA: as oof.csv was made)."""
    paths = [p if Path(p).is_file() else str(Path(cfg.data.root) / i) for p, i in zip(oof["path"], oof["image"])]
    images = TestTable(pd.DataFrame({"path": paths}), pd.DataFrame(), "", "")
    plain = replace(cfg, submit=replace(cfg.submit, tta=False, tta_scales=[]))
    return predict.member_outputs(plain, images, run.best, env, {})[2]


def oof_check(cfg: Config, run: RunFolder, env: dist.Env) -> dict:
    """Person voting on the run's validation images, grouped without their ids: purity, OOF macro-F1 with
    and without the vote (a one-field member's, of its field: the group's mean; {} for a field not voted
    on). Kept in the run folder (person_vote.json), computed once per checkpoint, fields and size."""
    st = run.best.stat()  # a run trained on (resumed, retrained) is measured again
    asked = {"fields": list(cfg.submit.person_fields), "size": cfg.submit.person_size,
             "checkpoint": f"{st.st_size}:{st.st_mtime_ns}"}
    kept = read_json(run.person_vote)
    if kept and all(kept.get(k) == v for k, v in asked.items()):
        return kept
    field = field_of_classes(read_json(run.classes) or [])
    if field is not None and field not in cfg.submit.person_fields:
        return {}  # a mask model (or a field not voted on): nothing of it is agreed per person
    oof = pd.read_csv(run.oof, dtype={"group": str})
    probs = oofs.probs(oof)
    groups = groups_of(embed_validation(cfg, run, oof, env), cfg.submit.person_size)
    voted = vote(probs, groups, cfg.submit.person_fields) if field is None else group_mean(probs, groups)
    out = {**asked, "images": len(oof), "people": int(oof["group"].nunique()), "groups": int(groups.max() + 1),
           "purity": purity(groups, oof["group"].to_numpy()), "f1": macro_f1(oof["label"], probs),
           "f1_voted": macro_f1(oof["label"], voted)}
    if env.is_main:
        files.write_json(run.person_vote, out)
    return out


def checks(cfg: Config, runs: list[RunFolder], env: dist.Env) -> dict:
    """oof_check of every run that has validation predictions (a one-field member: of its own field, a mask
    member: none), and their mean gain."""
    found = {r.name: c for r in runs if r.oof.is_file() and (c := oof_check(cfg, r, env))}
    gains = [c["f1_voted"] - c["f1"] for c in found.values()]
    return {"runs": found, "gain": float(np.mean(gains)) if gains else None,
            "purity": float(np.mean([c["purity"] for c in found.values()])) if found else None}


def wanted(cfg: Config, checkpoints: list[Path], env: dist.Env) -> bool:
    """Whether a submission from `checkpoints` votes: submit.person_vote on/off, or for auto, where the
    members' out-of-fold check gains (mask layout only: voting needs its gender and age fields)."""
    mode = cfg.submit.person_vote
    if mode == "off" or cfg.data.format != "mask":
        if mode == "on":
            log.warning("submit.person_vote=on needs the mask layout's fields: not voting on %s data",
                        cfg.data.format)
        return False
    if mode == "on":
        return True
    seen = checks(cfg, [RunFolder.of_checkpoint(c) for c in checkpoints], env)
    if seen["gain"] is None:
        log.info("submit.person_vote=auto: no member has out-of-fold predictions to measure voting on: not voting")
        return False
    log.info("submit.person_vote=auto: on the members' validation images voting %s macro-F1 by %+.4f (grouping "
             "purity %.3f): %s", "raises" if seen["gain"] > 0 else "does not raise", seen["gain"], seen["purity"],
             "voting" if seen["gain"] > 0 else "not voting")
    return seen["gain"] > 0


def groups_file(submission: Path) -> Path:
    """Beside a voted submission: each test image's group (<submission>.people.csv)."""
    return submission.with_suffix(".people.csv")


def test_groups(cfg: Config, test: TestTable, checkpoints: list[Path], env: dist.Env) -> np.ndarray:
    """The test images grouped into people by the members' embeddings, each unit-length, side by side."""
    caches: dict = {}
    parts = []
    for c in checkpoints:
        emb = predict.member_outputs(cfg, test, c, env, caches)[2]
        parts.append(emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12))
    return groups_of(np.concatenate(parts, axis=1), cfg.submit.person_size)
