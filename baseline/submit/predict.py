"""`baseline submit`: checkpoints -> (TTA, ensemble) -> a validated submission CSV."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import checkpoint as ckpt
from .. import cpus, defaults, dist, engine, files, models, progress
from ..config import Config, ConfigError, DataCfg, from_dict, img_hw
from ..data import crops, store
from ..data import dataset as ds
from ..data.competition import CLASSES, field_of_classes
from ..data.layouts import DataError, TestTable
from ..runfolder import CHECKPOINTS, Experiment, RunFolder
from . import ensemble, fields

log = logging.getLogger("baseline")


def newest_run(runs_dir: Path) -> Path:
    bests = sorted(Path(runs_dir).glob("**/checkpoints/best.pt"), key=lambda p: p.stat().st_mtime)
    if not bests:
        raise ConfigError(f"no run with checkpoints/best.pt under '{runs_dir}'; train one first (make train) "
                          "or name checkpoints with submit.checkpoints=...")
    return bests[-1]


def resolve_checkpoints(cfg: Config) -> list[Path]:
    items = cfg.submit.checkpoints
    items = [items] if isinstance(items, str) else list(items)
    if not items:
        return [newest_run(Path(cfg.run.dir))]
    out = []
    for item in items:
        p = Path(item)
        folds = Experiment(p).fold_checkpoints() if p.is_dir() else []
        if folds and not RunFolder(p).is_run():  # an experiment folder (baseline cv): every fold
            out += folds
            continue
        if p.is_dir():
            p = RunFolder(p).best
        if not p.is_file():
            raise ConfigError(f"submit.checkpoints: '{item}' is neither a checkpoint file nor a run folder with "
                              "checkpoints/best.pt")
        out.append(p)
    return out


def load_model(path: Path, device: torch.device) -> tuple[torch.nn.Module, Config, list[str]]:
    saved = ckpt.read(path)
    cfg = from_dict(saved.config)
    model = models.create(replace(cfg.model, pretrained=False), len(saved.classes))  # its head too
    model.load_state_dict(ckpt.inference_weights(saved))
    if models.channels_last(cfg.train.channels_last, model, device):  # the layout it trained in
        model = model.to(memory_format=torch.channels_last)
    return model.to(device).eval(), cfg, saved.classes


def norm_of(mcfg: Config, model: torch.nn.Module) -> tuple[list, list, str]:
    """mean, std and resize filter the member was trained with (its saved config; for checkpoints from
    before they were saved, the model's pretrained config and bilinear, as those runs used)."""
    mean, std = models.data_stats(model)
    d = mcfg.data
    return (d.mean if d.mean != "auto" else list(mean), d.std if d.std != "auto" else list(std),
            d.interpolation if d.interpolation != "auto" else "bilinear")


def probs_file(path: Path, test: TestTable, hw: tuple[int, int], tta: bool, scales: list[float]) -> Path:
    """Where a member's test probabilities are kept, in its run folder (test_probs/): keyed by the
    test table, the image size, the TTA views and the checkpoint itself, so re-weighting an
    ensemble never predicts again."""
    st = path.stat()
    key = json.dumps([test.df["path"].tolist(), list(hw), bool(tta), sorted(scales), st.st_size, st.st_mtime_ns])
    digest = hashlib.sha1(key.encode()).hexdigest()[:12]
    return RunFolder.of_checkpoint(path).test_probs / f"{path.stem}-{digest}.npy"


def scaled(hw: tuple[int, int], scale: float) -> tuple[int, int]:
    return tuple(max(8, int(round(v * scale / 8)) * 8) for v in hw)


def member_probs(cfg: Config, test: TestTable, path: Path, env: dist.Env, caches: dict) -> tuple[np.ndarray, list[str]]:
    """One checkpoint's test probabilities (member_outputs)."""
    probs, classes, _ = member_outputs(cfg, test, path, env, caches)
    return probs, classes


WHOLE = ("none", 0.0)  # data.crop, data.crop_margin of a whole photo


def member_outputs(cfg: Config, test: TestTable, path: Path, env: dist.Env,
                   caches: dict) -> tuple[np.ndarray, list[str], np.ndarray]:
    """One checkpoint's test probabilities and embeddings: read from its cache files, else predicted (at
    the training size, plus each of submit.tta_scales; each with its flip when submit.tta; cropped as it
    trained) and cached. The embeddings, what person grouping reads, are of whole photos at the training
    size: the scene is what a person's photos share most, and a face crop cuts it away."""
    model, mcfg, classes = load_model(path, env.device)
    hw, scales = img_hw(mcfg), list(cfg.submit.tta_scales)
    cached = probs_file(path, test, hw, cfg.submit.tta, scales)
    kept = cached.with_suffix(".people.npy")
    if cached.is_file() and kept.is_file():
        log.info("test probabilities of %s from test_probs/%s", path, cached.name)
        return np.load(cached), classes, np.load(kept)
    mean, std, interp = norm_of(mcfg, model)
    ctx = engine.StepCtx(env, torch.tensor(mean, device=env.device), torch.tensor(std, device=env.device),
                         channels_last=models.channels_last(mcfg.train.channels_last, model, env.device))
    crop = (mcfg.data.crop, mcfg.data.crop_margin if mcfg.data.crop == "face" else 0.0)  # as it trained
    views, emb = [], None
    for size in [hw] + [scaled(hw, s) for s in scales]:
        out = view(cfg, test, env, model, ctx, (size, interp, crop), caches, member_name(path), cfg.submit.tta,
                   embed=emb is None and crop == WHOLE)
        if isinstance(out, tuple):
            out, emb = out
        views.append(out.softmax(1).numpy())
    if emb is None:  # a cropping member: one more look, at whole photos
        emb = view(cfg, test, env, model, ctx, (hw, interp, WHOLE), caches, member_name(path), False, embed=True)[1]
    probs, emb = np.mean(views, axis=0), emb.numpy()
    if env.is_main:
        for file, array in ((cached, probs), (kept, emb)):
            with files.atomic(file, "wb") as f:
                np.save(f, array)
    log.info("predicted %d images with %s (%d view(s)%s)", len(probs), path, len(views),
             ", flip" if cfg.submit.tta else "")
    return probs, classes, emb


def view(cfg: Config, test: TestTable, env: dist.Env, model, ctx: engine.StepCtx, how: tuple, caches: dict,
         name: str, tta: bool, embed: bool = False):
    """The model's logits (with `embed`, and embeddings) of the test images decoded `how`: (size, filter,
    (data.crop, data.crop_margin)); each decoding is kept in `caches` for the next member."""
    size, interp, crop = how
    paths = test.df["path"].tolist()
    if crop not in caches:
        caches[crop] = crops.boxes_for(*crop, paths, store.beside_data(cfg, ".cache", written=True),
                                       cfg.data.max_pixels, say=env.is_main)
    if how not in caches:
        caches[how] = ds.build_cache(paths, size, "ram", Path(), 0, cfg.data.max_pixels, interp, caches[crop])
    loader = ds.eval_loader(ds.ImageDataset(paths, None, size, None, caches[how]), cfg.submit.batch_size,
                            predict_workers(cfg, env), env.rank, env.world_size)
    track = functools.partial(progress.track, desc=f"predict {name} at {size[1]}x{size[0]}",
                              total=len(loader.sampler), show=env.is_main, per_item=cfg.submit.batch_size)
    return engine.predict_logits(model, loader, ctx, tta=tta, track=track, embed=embed)


def member_name(path: Path) -> str:
    """A checkpoint as the log names it: its run folder (runs/<run>/checkpoints/best.pt)."""
    return RunFolder.of_checkpoint(path).name if path.parent.name == CHECKPOINTS else path.name


def predict_workers(cfg: Config, env: dist.Env) -> int:
    share = cpus.Share(cpus.usable_cores(), 0.0, env.local_world)
    return defaults.workers_for(env.device, share.per_process()) if cfg.data.num_workers == "auto" else \
        cfg.data.num_workers


def predict_probs(cfg: Config, test: TestTable, paths: list[Path], env: dist.Env,
                  weights: list[float] | None = None) -> tuple[np.ndarray, list[str]]:
    """Softmax averaged over checkpoints, equally or by `weights`; one-field members (model.task) mixed
    with the others field by field (fields.mix)."""
    weights = weights or [1.0] * len(paths)
    caches: dict = {}
    members = [(*member_probs(cfg, test, path, env, caches), w) for path, w in zip(paths, weights)]
    if fields.mixes_fields([c for _, c, _ in members]):
        return fields.mix(members, [member_name(p) for p in paths])
    for path, (_, mclasses, _) in zip(paths, members):
        if mclasses != members[0][1]:
            raise ckpt.CheckpointError(f"cannot ensemble '{path}': its classes differ from '{paths[0]}'")
    return sum(w * p for p, _, w in members) / sum(weights), members[0][1]


def fold_groups(spec: dict) -> list[tuple[list[Path], list[float]]]:
    """An ensemble's checkpoints as one group per fold, each holding one model per member (its run for
    that fold; a refit or single-run member's one run in every group), with the members' weights: the
    mix an out-of-fold image got when the ensemble's offsets were tuned."""
    members = [m for m in spec["members"] if m["weight"] > 0]
    folds = max(len(m["runs"]) for m in members)
    uneven = [m["path"] for m in members if len(m["runs"]) not in (1, folds)]
    if uneven:
        raise ConfigError(f"ensemble members {uneven} have another number of fold runs than {folds}: per-class "
                          "offsets need one model per member for every fold; refit the ensemble without --offsets")
    return [([RunFolder(m["runs"][k if len(m["runs"]) > 1 else 0]).best for m in members],
             [m["weight"] for m in members]) for k in range(folds)]


def with_offsets(per_fold: list[np.ndarray], offsets) -> np.ndarray:
    """Per-class log offsets applied to each fold's mix (one model per member and image: the kind of
    probabilities they were tuned on), then the folds averaged. The mean of k folds' probabilities is
    flatter than any one of them, and the same offsets would move more of its decisions than they were
    tuned to."""
    out = []
    for probs in per_fold:
        scores = np.log(np.clip(probs, 1e-12, None)) + np.asarray(offsets)
        scores = np.exp(scores - scores.max(1, keepdims=True))
        out.append(scores / scores.sum(1, keepdims=True))
    return np.mean(out, axis=0)


def ensemble_probs(cfg: Config, test: TestTable, spec: dict, env: dist.Env) -> tuple[np.ndarray, list[str]]:
    """An ensemble's test probabilities, its offsets (if any) applied fold by fold."""
    if not any(spec.get("offsets") or []):
        paths, weights = ensemble.checkpoints_and_weights(spec)
        return predict_probs(cfg, test, paths, env, weights)
    per_fold = [predict_probs(cfg, test, paths, env, weights) for paths, weights in fold_groups(spec)]
    return with_offsets([p for p, _ in per_fold], spec["offsets"]), per_fold[0][1]


def submission_frame(test: TestTable, pred: np.ndarray, classes: list[str], fmt: str) -> pd.DataFrame:
    out = test.template.copy()
    if fmt == "mask":
        out[test.label_col] = pred.astype(int)
    else:
        out[test.label_col] = [classes[i] for i in pred]
    return out


def check_submission(sub: pd.DataFrame, test: TestTable, num_classes: int, fmt: str) -> None:
    """The submission has the template's columns, rows and order, and a label for every row in range."""
    if list(sub.columns) != list(test.template.columns):
        raise DataError(f"submission columns {list(sub.columns)} differ from the template's "
                        f"{list(test.template.columns)}")
    if len(sub) != len(test.template) or not sub[test.id_col].equals(test.template[test.id_col]):
        raise DataError("submission rows differ from the template's rows or order")
    labels = sub[test.label_col]
    if labels.isna().any():
        raise DataError("submission has empty labels")
    if fmt == "mask" and not labels.between(0, num_classes - 1).all():
        raise DataError(f"submission labels outside 0..{num_classes - 1}")


def check_classes(paths: list[Path], classes: list[str], what: str) -> list[str]:
    """Every checkpoint must predict exactly the data's classes, by name and order (or, on the mask layout,
    one field of them: model.task); returns them."""
    for path in paths:
        got = ckpt.read(path, mmap=True).classes  # mmap: weights not read here
        if got != classes and not (classes == CLASSES and field_of_classes(got)):
            extra = f", e.g. it has '{next(iter(set(got) - set(classes)))}'" if set(got) - set(classes) else ""
            raise ckpt.CheckpointError(f"checkpoint '{path}' predicts {len(got)} classes, {what} has "
                                       f"{len(classes)}{extra}; it was trained on other data")
    return classes


def check_offsets_match_tta(cfg: Config, spec: dict | None) -> None:
    """Offsets are tuned on out-of-fold predictions, made without TTA; averaged views give flatter
    probabilities, on which the same offsets move decisions by more than they were tuned to."""
    if spec and any(spec.get("offsets") or []) and (cfg.submit.tta or cfg.submit.tta_scales):
        raise ConfigError(f"submit.ensemble '{cfg.submit.ensemble}' has per-class offsets tuned on out-of-fold "
                          "predictions made without TTA; with submit.tta or submit.tta_scales they would be applied "
                          "to other probabilities than they were tuned on. Submit with submit.tta=false "
                          "submit.tta_scales=[], or refit the ensemble without --offsets")


def writable_target(out: Path) -> None:
    """Fail before predicting if the submission cannot be written there: its folder is made and a probe
    file written and removed (permission bits alone say yes for root on /proc or a read-only mount)."""
    if out.is_dir() or (out.exists() and not os.access(out, os.W_OK)):
        raise ConfigError(f"submit.out '{out}' cannot be written (not a writable file path); choose another")
    probe = out.with_name(f".{out.name}.{os.getpid()}.probe")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"submit.out '{out}' cannot be written ({e.strerror or e}); choose another") from None


TEST_KEYS = ("format", "root", "test_csv", "image_col", "label_col", "group_col", "allow_outside_root")


def with_test_data(cfg: Config, checkpoint: Path, env: dist.Env) -> Config:
    """The data whose test images a submission predicts: data.root as given; left at its default, the data
    the checkpoints trained on (the first one's saved data.* keys), said in the log. A given root that is
    not the one they trained on is said loudly (a teammate's copy of the data is fine; another data set with
    the same class names would pass every check and score nothing)."""
    trained = from_dict(ckpt.read(checkpoint, mmap=True).config).data
    same = Path(trained.root).resolve() == Path(cfg.data.root).resolve()
    if cfg.data.root != DataCfg().root:
        if not same and env.is_main:
            log.warning("submit: data.root '%s' is not the folder the checkpoints trained on ('%s'): predicting the "
                        "test images under '%s'; make sure it is the same competition's data", cfg.data.root,
                        trained.root, cfg.data.root)
        return cfg
    if same:
        return cfg
    if env.is_main:
        log.info("submit: predicting the test images of '%s', the data the checkpoints trained on (data.root=... to "
                 "predict another)", trained.root)
    return replace(cfg, data=replace(cfg.data, **{k: getattr(trained, k) for k in TEST_KEYS}))
