"""Pseudo-labels: `baseline pseudo` predicts the test images with an ensemble (submit.ensemble) or runs
(submit.checkpoints), keeps those predicted with probability >= pseudo.threshold (and, on the mask layout,
each field asked at least its own threshold: pseudo.gender, .age, .mask per state), and writes them as a
table (`pseudo/<name>.csv`: image, label, confidence, fold, teachers, split_hash, round). `data.pseudo=FILE` adds
rows to the training part of a run, never to validation (they join the table with fold -2 after the split
is read, so the split file and its hash do not change); the ledger records which submissions' members used
them.

Per fold, honestly: the rows for fold k are labelled by the teachers' fold-k runs alone, which never saw
fold k's validation people, so a cv with pseudo-labels scores what it would on unseen people (teachers
that trained on every fold would carry fold k's labels into fold k's training). A refit (split.fold=-1)
has no validation and takes the rows every teacher labelled (fold `all`). A fold without a teacher gets
no rows, said in the log; a table made on another split file is refused (data/pseudo.py reads it).

Rounds: teachers that trained with a round-n table make a round n+1 table (its `round` column); the
ledger names each submission's table (its members' data.pseudo)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .. import checkpoint as ckpt
from .. import dist, files
from ..config import Config, ConfigError
from ..data.competition import field_probs
from ..data.layouts import class_names, read_test_table
from ..runfolder import RunFolder
from . import ensemble, predict

log = logging.getLogger("baseline")

def write(cfg: Config) -> tuple[Path, pd.DataFrame]:
    """Predict the test images and write the confident ones; (file, its rows)."""
    env = dist.setup(cfg.train.device)
    try:
        spec = ensemble.read(cfg.submit.ensemble) if cfg.submit.ensemble else None
        predict.check_offsets_match_tta(cfg, spec)
        paths, weights = ensemble.checkpoints_and_weights(spec) if spec else (predict.resolve_checkpoints(cfg), None)
        weights = weights or [1.0] * len(paths)
        cfg = predict.with_test_data(cfg, paths[0], env)
        test = read_test_table(cfg)
        predict.check_classes(paths, class_names(cfg), f"the data under '{cfg.data.root}'")
        split_hash, folds, tables = teacher_folds(paths)
        round_ = 1 + max((table_round(t) for t in tables if t), default=0)
        teams = {str(k): [i for i, f in enumerate(folds) if f == k] for k in sorted(set(folds)) if k >= 0}
        parts = []
        for name, chosen in {**teams, "all": list(range(len(paths)))}.items():
            teachers = [paths[i] for i in chosen]
            if name == "all" and spec:  # every fold's models: offsets go on each fold's mix first
                probs, classes = predict.ensemble_probs(cfg, test, spec, env)
            else:  # one model per member (or plain runs): the kind of probabilities offsets were tuned on
                probs, classes = predict.predict_probs(cfg, test, teachers, env, [weights[i] for i in chosen])
                probs = with_offsets(probs, spec)
            names = ";".join(Path(*t.parts[-4:-2]).as_posix() for t in teachers)  # runs/<run> or <exp>/fold<k>
            parts.append(confident(cfg, test, probs, classes).assign(
                fold=name, teachers=names, split_hash=split_hash, round=round_))
        rows = pd.concat(parts, ignore_index=True)
        runs = {RunFolder.of_checkpoint(p).path for p in paths}  # one run, or an experiment's folds: named after it
        name = Path(cfg.submit.ensemble).stem if spec else next(iter(runs)).name if len(runs) == 1 else \
            RunFolder.of_checkpoint(paths[0]).path.parent.name
        out = Path(cfg.pseudo.out or f"pseudo/{name}.csv")
        if env.is_main:
            files.write_csv(out, rows)
            counts = rows.groupby("fold", sort=False).size().to_dict()
            log.info("pseudo, round %d: test images kept (%s) per fold (each labelled by the teachers that never "
                     "saw its validation people; `all` for a refit): %s -> %s; train with data.pseudo=%s",
                     round_, rule(cfg), counts, out, out)
        return out, rows
    finally:
        dist.teardown()


def teacher_folds(paths: list[Path]) -> tuple[str, list[int], list[str]]:
    """The split file the teachers share (its hash), each one's validation fold (-1: a refit) and the
    pseudo-label table each trained with ("" for none)."""
    saved = [ckpt.read(p, mmap=True) for p in paths]
    hashes = {s.split_hash or None for s in saved}
    if len(hashes) > 1:
        raise ConfigError(f"pseudo: the teachers were trained on different split files ({sorted(map(str, hashes))}); "
                          "pseudo-labels per fold need one split")
    return (str(hashes.pop()), [int(s.config["split"]["fold"]) for s in saved],
            [str(s.config["data"].get("pseudo") or "") for s in saved])


def table_round(table: str) -> int:
    """The round of a pseudo-label table a teacher trained with: its `round` column (1 for a table from before
    rounds were counted, or one no longer on disk)."""
    path = Path(table)
    if not path.is_file():
        log.warning("pseudo: the teachers' table %s is not here; counting it as round 1", table)
        return 1
    rounds = pd.read_csv(path, usecols=lambda c: c == "round")
    return int(rounds["round"].max()) if "round" in rounds.columns and len(rounds) else 1


def rule(cfg: Config) -> str:
    """What keeps a test image, in words (for the log)."""
    p = cfg.pseudo
    parts = [f"top class >= {p.threshold:g}"] if p.threshold else []
    parts += [f"{f} >= {getattr(p, f):g}" for f in ("gender", "age") if getattr(p, f)]
    parts += [f"mask >= {'/'.join(f'{v:g}' for v in p.mask)} (worn/incorrect/not worn)"] if p.mask else []
    return ", ".join(parts) or "every image"


def with_offsets(probs: np.ndarray, spec: dict | None) -> np.ndarray:
    return predict.with_offsets([probs], spec["offsets"]) if spec and any(spec.get("offsets") or []) else probs


def kept(cfg: Config, probs: np.ndarray) -> np.ndarray:
    """Which test images to keep: the top class at least pseudo.threshold, and on the mask layout each field
    asked (pseudo.gender, .age, .mask per predicted state) at least its own threshold on its marginal."""
    p = cfg.pseudo
    keep = probs.max(1) >= p.threshold
    for field, at in (("gender", p.gender), ("age", p.age)):
        if at:
            keep &= field_probs(probs, field).max(1) >= at
    if p.mask:
        mask = field_probs(probs, "mask")
        keep &= mask.max(1) >= np.asarray(p.mask)[mask.argmax(1)]
    return keep


def confident(cfg: Config, test, probs: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """The test images kept (`kept`): image, label, confidence (its probability). The label is the top class;
    with the fields' rules, each field's own top value (mask * 6 + gender * 3 + age), as the fields were judged."""
    p = cfg.pseudo
    pred = probs.argmax(1)
    if p.gender or p.age or p.mask:
        pred = sum(w * field_probs(probs, f).argmax(1) for f, w in (("mask", 6), ("gender", 3), ("age", 1)))
    conf = probs[np.arange(len(probs)), pred]
    keep = kept(cfg, probs)
    return pd.DataFrame({
        "image": [Path(os.path.relpath(p, cfg.data.root)).as_posix() for p in test.df["path"][keep]],
        "label": [classes[i] for i in pred[keep]], "confidence": np.round(conf[keep], 4),
    })
