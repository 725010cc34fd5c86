"""`baseline cv` (`make cv`): every fold of the shared split file as one experiment.

runs/<experiment>/fold<k>/ is a normal run folder each (train, resume, submit, ensemble as usual).
Finished folds are skipped and a stopped fold resumes from its last.pt, so a killed `make cv` is
continued by running it again. Each fold is its own process (`torchrun` with --nproc), the W&B
group is the experiment. At the end:
  runs/<experiment>/oof.csv  every training image once: path, label, fold, pred, probabilities
  runs/<experiment>/cv.json  per-fold best metric, mean and std, and the OOF macro-F1 over all folds
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from . import files
from . import oof as oofs
from .config import Config, ConfigError, config_flags, machine_resets
from .dist import launch_command
from .rundir import state
from .runfolder import Experiment
from .session import preflight

log = logging.getLogger("baseline")


def experiment_name(cfg: Config) -> str:
    """run.name, else one fixed by model and folds, so that running `make cv` again resumes it."""
    return cfg.run.name or f"{cfg.model.name}-cv{cfg.split.folds}"


def fold_overrides(cfg: Config, overrides: list[str], exp_dir: Path, k: int, group: str = "") -> list[str]:
    keep = [o for o in overrides if not o.startswith(("split.fold=", "run.name=", "run.dir=", "run.resume="))]
    group = [] if cfg.log.wandb.group else [f"log.wandb.group={group or exp_dir.name}"]
    return [*keep, f"split.fold={k}", f"run.dir={exp_dir}", f"run.name=fold{k}", "run.resume=auto", *group]


def run(cfg: Config, config_file: str | list[str] | None, overrides: list[str], nproc: int = 1) -> dict:
    preflight(cfg)  # a weights file that does not fit, an unknown model: refused before the folder exists
    exp_dir = Path(cfg.run.dir) / experiment_name(cfg)
    exp_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.cv.seeds:
        return with_person_vote(cfg, exp_dir, run_folds(cfg, config_file, overrides, nproc, exp_dir))
    for s in cfg.cv.seeds:  # each seed a whole experiment inside this one, the seed given last
        log.info("cv %s: seed %d", exp_dir.name, s)
        seeded = [o for o in overrides if not o.startswith(("seed=", "cv.seeds="))]
        run_folds(cfg, config_file, [*seeded, f"seed={s}"], nproc, Experiment(exp_dir).seed(s).path, exp_dir.name)
    return with_person_vote(cfg, exp_dir, summarize_seeds(exp_dir, cfg.cv.seeds))


def with_person_vote(cfg: Config, exp_dir: Path, out: dict) -> dict:
    """With submit.person_vote on or auto (mask layout): what voting does to each fold's validation images,
    grouped without their ids, in cv.json's `person_vote` (the mean purity and macro-F1 gain)."""
    if cfg.submit.person_vote == "off" or cfg.data.format != "mask":
        return out
    from .dist import Env
    from .submit import people

    seen = people.checks(cfg, Experiment(exp_dir).fold_runs(), Env())
    out["person_vote"] = {"purity": seen["purity"], "gain": seen["gain"], "fields": list(cfg.submit.person_fields)}
    files.write_json(Experiment(exp_dir).cv_file, out)
    log.info("cv %s: person vote on each fold's validation images (grouped without ids): purity %.3f, OOF macro-F1 "
             "%+.4f", exp_dir.name, seen["purity"], seen["gain"])
    return out


def run_folds(cfg: Config, config_file: str | list[str] | None, overrides: list[str], nproc: int, exp_dir: Path,
              group: str = "") -> dict:
    """Every fold of the split into `exp_dir` (finished ones skipped, a stopped one resumed), then its summary."""
    for k in range(cfg.split.folds):
        if state(Experiment(exp_dir).fold(k).path) == "finished":
            log.info("cv %s: fold %d finished, skipped", exp_dir.name, k)
            continue
        log.info("cv %s: fold %d of %d", exp_dir.name, k, cfg.split.folds)
        cmd = launch_command(nproc, ["train", *config_flags(config_file),
                                     *fold_overrides(cfg, overrides, exp_dir, k, group)])
        rc = subprocess.call(cmd)
        if rc != 0:
            raise SystemExit(f"cv {exp_dir.name}: fold {k} ended with exit code {rc}; fix it and run the same "
                             "command again (finished folds are skipped, this one resumes)")
    return summarize(exp_dir, cfg.split.folds)


def summarize(exp_dir: Path, folds: int) -> dict:
    """cv.json and the experiment's oof.csv from the fold folders."""
    rows, frames = [], []
    for k in range(folds):
        run = Experiment(exp_dir).fold(k)
        summary = json.loads(run.summary_file.read_text())
        rows.append({"fold": k, "best_metric": summary["best_metric"], "best_epoch": summary["best_epoch"],
                     "val_f1": summary["val_f1"], "split_hash": summary.get("split_hash")})
        frames.append(pd.read_csv(run.oof, dtype={"group": str}).assign(fold=k))  # ids keep their zeros
    oof = oofs.joined(frames)
    files.write_csv(Experiment(exp_dir).oof, oof)
    metric = np.array([r["best_metric"] for r in rows], dtype=float)
    out = {
        "experiment": exp_dir.name, "folds": rows, "metric_name": summary["metric_name"],
        "mean": float(metric.mean()), "std": float(metric.std()),
        "oof_f1": float(f1_score(oof["label"], oof["pred"], average="macro", zero_division=0)),
        "oof_rows": int(len(oof)), "split_hashes": sorted({str(r["split_hash"]) for r in rows}),
        "labels": oofs.labels_key(oof), **corrected(exp_dir, folds, oof),
    }
    files.write_json(Experiment(exp_dir).cv_file, out)
    log.info("cv %s: %s %.4f ± %.4f over %d folds, OOF macro-F1 %.4f on %d images -> %s", exp_dir.name,
             out["metric_name"], out["mean"], out["std"], folds, out["oof_f1"], len(oof), Experiment(exp_dir).cv_file)
    if out.get("corrected_people"):
        log.warning("cv %s: validated on labels data.corrections changed for %d people (the model's own "
                    "suggestions): OOF macro-F1 %.4f on the %d images of the people it left alone compares with an "
                    "uncorrected experiment (`baseline runs` says it like for like), %.4f overall does not",
                    exp_dir.name, out["corrected_people"], out["oof_f1_unchanged"], out["unchanged_rows"],
                    out["oof_f1"])
    return out


def summarize_seeds(exp_dir: Path, seeds: list[int]) -> dict:
    """cv.seeds: the experiment's oof.csv as the seeds' probabilities averaged per image, and cv.json with each
    seed's OOF macro-F1, their mean and std, and the averaged OOF's."""
    frames = [pd.read_csv(Experiment(exp_dir).seed(s).oof, dtype={"group": str}) for s in seeds]
    key = oofs.image_key(frames[0])
    frames = [f.sort_values(key, kind="stable").reset_index(drop=True) for f in frames]
    if any(not f[key].equals(frames[0][key]) for f in frames[1:]):
        raise ConfigError(f"cv {exp_dir.name}: its seeds predicted other images (the split file changed between "
                          "seeds?); run each seed on one split")
    probs = np.mean([oofs.probs(f) for f in frames], axis=0)
    oof = frames[0][[c for c in oofs.KEYS if c in frames[0].columns]].assign(pred=probs.argmax(1))
    oof = pd.concat([oof, pd.DataFrame(probs, columns=oofs.prob_columns(frames[0]))], axis=1)
    files.write_csv(Experiment(exp_dir).oof, oof)
    each = [Experiment(exp_dir).seed(s).cv() for s in seeds]
    per_seed = np.array([c["oof_f1"] for c in each])
    out = {"experiment": exp_dir.name, "seeds": list(seeds),
           "per_seed": [{"seed": s, "oof_f1": c["oof_f1"], "mean": c["mean"], "std": c["std"]}
                        for s, c in zip(seeds, each)],
           "oof_f1_seed_mean": float(per_seed.mean()), "oof_f1_seed_std": float(per_seed.std()),
           "oof_f1": float(f1_score(oof["label"], oof["pred"], average="macro", zero_division=0)),
           "oof_rows": int(len(oof)), "metric_name": each[0]["metric_name"],
           "split_hashes": sorted({h for c in each for h in c["split_hashes"]}), "labels": oofs.labels_key(oof)}
    files.write_json(Experiment(exp_dir).cv_file, out)
    log.info("cv %s: %d seeds, OOF macro-F1 %.4f ± %.4f per seed, %.4f of their averaged probabilities -> %s",
             exp_dir.name, len(seeds), out["oof_f1_seed_mean"], out["oof_f1_seed_std"], out["oof_f1"],
             Experiment(exp_dir).cv_file)
    return out


def corrected(exp_dir: Path, folds: int, oof: pd.DataFrame) -> dict:
    """The people whose labels data.corrections changed (every fold applies the same file), and the OOF
    macro-F1 over the others' images: the part of the score that does not grade the corrections."""
    changed = set()
    for k in range(folds):
        applied = Experiment(exp_dir).fold(k).corrections
        if applied.is_file():
            changed |= set(pd.read_csv(applied, dtype=str)["id"])
    if not changed or "group" not in oof.columns:
        return {}
    rest = oof[~oof["group"].astype(str).isin(changed)]
    return {"corrected_people": len(changed), "unchanged_rows": int(len(rest)),
            "oof_f1_unchanged": float(f1_score(rest["label"], rest["pred"], average="macro", zero_division=0))}


def refit_epochs(exp_dir: Path) -> int:
    """The epoch count the folds chose: the mean of their best epochs, rounded (at least 1)."""
    cv = Experiment(exp_dir).cv()
    if cv.get("seeds"):
        raise ConfigError(f"baseline refit: '{exp_dir}' holds {len(cv['seeds'])} seeds (cv.seeds); refit one of them, "
                          f"e.g. baseline refit {Experiment(exp_dir).seed(cv['seeds'][0]).path}")
    if not cv.get("folds"):
        raise ConfigError(f"baseline refit: '{exp_dir}' has no cv.json; finish `baseline cv` first (the folds choose "
                          "the epoch count)")
    return max(1, round(float(np.mean([f["best_epoch"] for f in cv["folds"]]))))


def refit(exp_dir: Path, overrides: list[str], nproc: int = 1) -> Path:
    """Train on every fold together (split.fold=-1: no validation) with fold 0's resolved config (its machine
    keys resolved again, here) for the epochs the folds chose: `<experiment>/refit/`, an ensemble member that
    stands in with its experiment's out-of-fold predictions (ensemble.load_member). Run again to resume it."""
    exp_dir = Path(exp_dir)
    epochs = refit_epochs(exp_dir)
    config = Experiment(exp_dir).fold(0).config
    keep = [o for o in overrides if not o.startswith(("split.fold=", "run.name=", "run.dir=", "run.resume="))]
    log.info("refit %s: every fold together for %d epochs (the folds' mean best epoch)", exp_dir.name, epochs)
    cmd = launch_command(nproc, ["train", "--config", str(config), *machine_resets(), f"train.epochs={epochs}",
                                 "train.early_stop=0", "train.avg_top_k=0", *keep, "split.fold=-1",
                                 f"run.dir={exp_dir}", f"run.name={Experiment.REFIT}", "run.resume=auto"])
    rc = subprocess.call(cmd)
    if rc != 0:
        raise SystemExit(rc)
    return Experiment(exp_dir).refit.path
