"""`baseline ensemble MEMBER... [--name N]`: weights chosen on out-of-fold predictions, not by hand.

A member is a run folder (its oof.csv: the validation fold's probabilities at the best epoch) or an
experiment folder holding several run folders (e.g. one per fold: their OOF rows together). Every
member must come from the same split file (summary.json's split_hash) and cover the same images.

1. Weights: greedy forward selection with replacement on OOF macro-F1 (Caruana et al., 2004): add,
   one at a time, the member whose addition scores best; weights are how often each was added.
   The mix is checked the same way as the offsets: weights fitted on one half of the rows (folds) are
   scored on the other half against the member that was best on the fitting half, both ways. When
   the mix does not win there, the ensemble is that best member alone (weight 1).
2. Optional per-class logit offsets (`--offsets`) tuned for macro-F1, which rewards rare classes.
   Their gain is measured honestly: offsets tuned on one half of the rows (folds, when the OOF spans
   several) are scored on the other half, both ways; the offsets kept are then tuned on all rows.
   Kept only when that gain is positive.
Writes ensembles/<name>.yaml, which `baseline submit submit.ensemble=ensembles/<name>.yaml` uses.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from sklearn.metrics import f1_score

from .. import files
from .. import oof as oofs
from ..config import ConfigError, from_dict
from ..oof import image_key
from ..runfolder import Experiment, RunFolder

OFFSET_GRID = np.linspace(-2.0, 2.0, 21)


@dataclass
class Member:
    name: str
    folder: Path
    runs: list[Path]  # run folders (one, or an experiment's)
    split_hash: str
    oof: pd.DataFrame  # path, label, fold, p0..pK-1; sorted by path


def _runs_in(folder: Path) -> list[Path]:
    if RunFolder(folder).is_run():  # a run folder (an experiment has its own joined oof.csv too)
        return [folder]
    runs = sorted(p.parent for p in folder.glob(f"*/{RunFolder(folder).oof.name}"))
    if not runs:
        raise ConfigError(f"ensemble member '{folder}': no oof.csv in it or in its sub-folders (a run writes "
                          "oof.csv after its first validation)")
    return runs


def find_member(name: str, roots: list[Path]) -> str:
    """A member as given (a folder), else the run or experiment of that name under one of the run
    roots (yours, a teammate's copy)."""
    if Path(name).is_dir():
        return name
    found = [root / name for root in roots if (root / name).is_dir()]
    if len(found) > 1:
        raise ConfigError(f"ensemble member '{name}' is in several run roots ({', '.join(map(str, found))}); "
                          "give its folder")
    if not found:
        raise ConfigError(f"ensemble member '{name}' is neither a folder nor a run under {', '.join(map(str, roots))}")
    return str(found[0])


def refit_of(folder: Path) -> Path | None:
    """The experiment a refit run (split.fold=-1, no validation, so no OOF of its own) belongs to."""
    info = RunFolder(folder).summary()
    return folder.parent if info.get("fold") == -1 and Experiment(folder.parent).oof.is_file() else None


def load_member(folder: str | Path) -> Member:
    """A run, an experiment (its folds), or a refit: the refit predicts, and its experiment's out-of-fold
    predictions stand in for its own when weights are fitted (its predictions on the training images would be
    in-sample); it is weighted as its folds would be."""
    folder = Path(folder)
    exp = refit_of(folder)
    if exp is not None:
        stand_in = load_member(exp)
        return Member(folder.name, folder, [folder], stand_in.split_hash, stand_in.oof)
    if Experiment(folder).seeds():  # cv.seeds: every seed's folds, and their averaged out-of-fold probabilities
        cv = Experiment(folder).cv()
        oof = pd.read_csv(Experiment(folder).oof, dtype={"group": str})
        oof = oof.sort_values(image_key(oof), kind="stable").reset_index(drop=True)
        runs = [r.path for r in Experiment(folder).fold_runs()]
        return Member(folder.name, folder, runs, (cv.get("split_hashes") or [""])[0], oof)
    runs = _runs_in(folder)
    frames, hashes = [], set()
    for k, run in enumerate(runs):
        info = RunFolder(run).summary()
        hashes.add(info.get("split_hash") or "")
        df = pd.read_csv(RunFolder(run).oof)
        frames.append(df.assign(fold=info.get("fold", k)))
    if len(hashes) > 1:
        raise ConfigError(f"ensemble member '{folder}': its runs were made on different split files {sorted(hashes)}")
    oof = pd.concat(frames, ignore_index=True)
    key = image_key(oof)
    if oof[key].duplicated().any():
        raise ConfigError(f"ensemble member '{folder}': an image appears in the OOF of two of its runs (the same "
                          "fold twice?); an experiment holds one run per fold")
    oof = oof.sort_values(key, kind="stable").reset_index(drop=True)
    return Member(folder.name, folder, runs, hashes.pop(), oof)


def probs_of(oof: pd.DataFrame) -> np.ndarray:
    return oofs.probs(oof)


def check_members(members: list[Member]) -> None:
    """Same split file and same images for all: otherwise OOF scores are not comparable."""
    for m in members:
        saved = RunFolder(m.runs[0]).config
        task = from_dict(yaml.safe_load(saved.read_text()) or {}).model.task if saved.is_file() else "all"
        if task != "all":
            raise ConfigError(f"ensemble member '{m.folder}' is a one-field model (model.task={task}): weights are "
                              "fitted on 18-class OOF predictions; pass field members to submit.checkpoints=[...] "
                              "beside 18-way ones instead (mixed field by field)")
    first = members[0]
    for m in members[1:]:
        if m.split_hash != first.split_hash:
            raise ConfigError(f"ensemble member '{m.folder}' was trained on another split file (hash "
                              f"{m.split_hash or 'unknown'}) than '{first.folder}' ({first.split_hash or 'unknown'}); "
                              "weights fitted on their OOF would reward leakage. Retrain it on the team's split file.")
        key = "image" if "image" in m.oof.columns and "image" in first.oof.columns else "path"
        if not m.oof[key].equals(first.oof[key]):
            raise ConfigError(f"ensemble member '{m.folder}' predicted other validation images than "
                              f"'{first.folder}' ({len(m.oof)} vs {len(first.oof)} rows): same split, other folds?")
        if probs_of(m.oof).shape[1] != probs_of(first.oof).shape[1]:
            raise ConfigError(f"ensemble member '{m.folder}' has another number of classes than '{first.folder}'")
        differ = int((m.oof["label"].to_numpy() != first.oof["label"].to_numpy()).sum())
        if differ:
            raise ConfigError(f"ensemble member '{m.folder}' was validated on other labels than '{first.folder}' "
                              f"({differ} of {len(m.oof)} OOF rows differ: one trained with data.corrections?); "
                              "weights fitted against one member's labels favour it. Ensemble members of one labelling")


def macro_f1(labels: np.ndarray, probs: np.ndarray, offsets: np.ndarray | None = None) -> float:
    scores = np.log(np.clip(probs, 1e-12, None)) + (0 if offsets is None else offsets)
    return float(f1_score(labels, scores.argmax(1), average="macro", zero_division=0))


def forward_selection(probs: list[np.ndarray], labels: np.ndarray, rounds: int = 25) -> np.ndarray:
    """Weights from greedy selection with replacement; the bag is cut where its score peaked."""
    counts, total, best, best_counts = np.zeros(len(probs)), np.zeros_like(probs[0]), -1.0, None
    for _ in range(rounds):
        scores = [macro_f1(labels, (total + p) / (counts.sum() + 1)) for p in probs]
        i = int(np.argmax(scores))  # ties: the earlier member
        counts[i] += 1
        total = total + probs[i]
        if scores[i] > best + 1e-12:
            best, best_counts = scores[i], counts.copy()
    return best_counts / best_counts.sum()


def tune_offsets(labels: np.ndarray, probs: np.ndarray, sweeps: int = 2) -> np.ndarray:
    """Per-class additive offsets on the log-probabilities, coordinate ascent over a grid."""
    offsets = np.zeros(probs.shape[1])
    best = macro_f1(labels, probs, offsets)
    for _ in range(sweeps):
        for c in range(probs.shape[1]):
            for v in OFFSET_GRID:
                trial = offsets.copy()
                trial[c] = v
                score = macro_f1(labels, probs, trial)
                if score > best + 1e-12:
                    best, offsets = score, trial
    return offsets


def halves(oof: pd.DataFrame) -> np.ndarray:
    """Two groups of rows for the held-out checks of weights and offsets: folds when the OOF spans
    several, else a fixed hash of each image's group (its person: one person's seven photos in both
    halves would make "held out" optimistic); of the image path in OOF files written before groups."""
    folds = oof["fold"].to_numpy()
    uniq = np.unique(folds)
    if len(uniq) > 1:
        return np.isin(folds, uniq[::2])
    key = oof["group"] if "group" in oof.columns else oof[image_key(oof)]
    return np.array([zlib.crc32(str(g).encode()) % 2 == 0 for g in key])


def both_ways(part: np.ndarray, gain) -> float:
    """Mean of gain(tune, test) with the rows split into halves one way, then the other."""
    return float(np.mean([gain(tune, ~tune) for tune in (part, ~part)]))


def offsets_gain_held_out(labels: np.ndarray, probs: np.ndarray, part: np.ndarray) -> float:
    """Mean macro-F1 gain of offsets on rows they were not tuned on (tune on one half, score the other)."""
    def gain(tune, test):
        off = tune_offsets(labels[tune], probs[tune])
        return macro_f1(labels[test], probs[test], off) - macro_f1(labels[test], probs[test])
    return both_ways(part, gain)


def mix(weights: np.ndarray, probs: list[np.ndarray]) -> np.ndarray:
    return sum(w * p for w, p in zip(weights, probs))


def mix_gain_held_out(labels: np.ndarray, probs: list[np.ndarray], part: np.ndarray) -> float:
    """Mean macro-F1 gain of the fitted mix over the best single member, both chosen on one half of
    the rows and scored on the other half (both ways): what weighting earns on folds it never saw."""
    def gain(tune, test):
        weights = forward_selection([p[tune] for p in probs], labels[tune])
        best = int(np.argmax([macro_f1(labels[tune], p[tune]) for p in probs]))
        mixed = mix(weights, [p[test] for p in probs])
        return macro_f1(labels[test], mixed) - macro_f1(labels[test], probs[best][test])
    return both_ways(part, gain)


def held_out_weights(labels: np.ndarray, probs: list[np.ndarray], part: np.ndarray) -> tuple[np.ndarray, float | None]:
    """Forward selection's weights if the mix wins on held-out rows, else weight 1 on the best member;
    with the held-out gain (None for a single member, where there is nothing to check)."""
    weights = forward_selection(probs, labels)
    if len(probs) == 1 or np.count_nonzero(weights) == 1:
        return weights, None
    gain = mix_gain_held_out(labels, probs, part)
    if gain > 0:
        return weights, gain
    return np.eye(len(probs))[int(np.argmax([macro_f1(labels, p) for p in probs]))], gain


def fit(folders: list[str], offsets: bool = False) -> dict:
    members = [load_member(f) for f in folders]
    check_members(members)
    labels = members[0].oof["label"].to_numpy()
    probs = [probs_of(m.oof) for m in members]
    part = halves(members[0].oof)
    weights, mix_gain = held_out_weights(labels, probs, part)
    mixed = mix(weights, probs)
    out = {
        "members": [{"path": str(m.folder), "runs": [str(r) for r in m.runs], "weight": round(float(w), 4),
                     "oof_f1": round(macro_f1(labels, p), 4)} for m, w, p in zip(members, weights, probs)],
        "split_hash": members[0].split_hash, "oof_rows": int(len(labels)),
        "oof_f1": round(macro_f1(labels, mixed), 4),
    }
    if mix_gain is not None:
        out["mix_gain_held_out"] = round(mix_gain, 4)
    if offsets:
        gain = offsets_gain_held_out(labels, mixed, part)
        out["offsets_gain_held_out"] = round(gain, 4)
        # kept only when they helped on rows they had not seen; tuned on all rows then
        kept = tune_offsets(labels, mixed) if gain > 0 else np.zeros(mixed.shape[1])
        out["offsets"] = [round(float(v), 3) for v in kept]
    return out


def write(spec: dict, name: str, root: Path = Path("ensembles")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}.yaml"
    files.write_text(path, yaml.safe_dump(spec, sort_keys=False))
    return path


def read(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"submit.ensemble: no file '{p}' (baseline ensemble writes ensembles/<name>.yaml)")
    spec = yaml.safe_load(p.read_text()) or {}
    if not spec.get("members"):
        raise ConfigError(f"submit.ensemble: '{p}' lists no members")
    return spec


def report(spec: dict) -> str:
    lines = [f"{'member':<40} {'OOF macro-F1':>12} {'weight':>7}"]
    lines += [f"{m['path'][-40:]:<40} {m['oof_f1']:>12.4f} {m['weight']:>7.3f}" for m in spec["members"]]
    lines.append(f"{'ensemble (' + str(spec['oof_rows']) + ' OOF rows)':<40} {spec['oof_f1']:>12.4f}")
    if "mix_gain_held_out" in spec:
        kept = "kept" if sum(m["weight"] > 0 for m in spec["members"]) > 1 else "not kept: the best member alone"
        lines.append(f"mix over the best single member: macro-F1 gain on folds the weights were not fitted on "
                     f"{spec['mix_gain_held_out']:+.4f} ({kept})")
    if "offsets" in spec:
        kept = "kept, tuned on all rows" if any(spec["offsets"]) else "not kept"
        lines.append(f"per-class offsets: macro-F1 gain on rows they were not tuned on "
                     f"{spec['offsets_gain_held_out']:+.4f} ({kept})")
    return "\n".join(lines)


def checkpoints_and_weights(spec: dict) -> tuple[list[Path], list[float]]:
    """Every member run's best checkpoint, with the member's weight shared among its runs. Members the
    selection gave no weight are not predicted at all."""
    paths, weights = [], []
    for m in spec["members"]:
        if m["weight"] <= 0:
            continue
        for run in m["runs"]:
            p = RunFolder(run).best
            if not p.is_file():
                raise ConfigError(f"ensemble member run '{run}' has no checkpoints/best.pt")
            paths.append(p)
            weights.append(m["weight"] / len(m["runs"]))
    return paths, weights
