"""`baseline train`: config -> data -> model -> epochs -> checkpoints. Returns the run summary."""

from __future__ import annotations

import contextlib
import copy
import getpass
import logging
import math
import os
import random
import signal
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import timm
import timm.data
import timm.loss
import timm.scheduler
import timm.utils
import torch

from . import checkpoint as ckpt
from . import cpus, defaults, dist, engine, files, freeze, losses, memory, models, plots, progress, rundir
from . import oof as oofs
from .config import Config, ConfigError, age_edges, img_hw, save_yaml, to_dict
from .data import dataset as ds
from .data import pseudo, store
from .data.batch_aug import BatchAug
from .data.competition import OFFICIAL_EDGES
from .data.competition import label as age_label
from .data.layouts import Table, read_table
from .data.split import Hashes, hash_cache, load_or_write_folds, read_folds_hashed, split_path
from .data.transforms import train_transform
from .tracking import NullTracker, Tracker, resolve_mode, truncate_metrics

log = logging.getLogger("baseline")


class Judge(Protocol):
    """Asked after every epoch whether the run stops there (a sweep trial's pruner: sweeps/trial.py)."""

    def should_stop(self, epoch: int, row: dict, last: bool) -> bool: ...


class KeepGoing:
    """Outside a sweep: no one stops the run."""

    def should_stop(self, epoch: int, row: dict, last: bool) -> bool:
        return False


def run(cfg: Config, judge: Callable[[Config, dist.Env, float | None], Judge] | None = None) -> dict:
    """Train one run; `judge(cfg, env, best so far)` makes the per-epoch stop question (default: none)."""
    with dist.session(cfg.train.device) as env:
        return _train(cfg, env, judge)


def _train(cfg: Config, env: dist.Env, judge=None) -> dict:
    seed_everything(cfg.seed)
    preflight(cfg)
    share = watch_machine(env)
    new_split = None if split_path(cfg).is_file() else split_path(cfg)
    hashes = Hashes(hash_cache(cfg))
    table, fold, split_hash = prepare_data(cfg, env, hashes)
    table, fold, line = pseudo.with_pseudo(cfg, table, fold, split_hash, hashes)  # after the split: it stays
    notes: list[str] = []
    if line:
        say(env, line, notes)
    with contextlib.ExitStack() as held:
        try:
            batch_from_data = cfg.train.batch_size == "data"
            cfg = resolve_defaults(cfg, env, table, fold, notes, share)
            say(env, cpus.set_threads(cfg.train.threads, share, cfg.data.num_workers), notes)
            state = TrainState(split_hash=split_hash, classes=table.classes)
            resume_from = rundir.resume_point(cfg)
            saved = ckpt.load(resume_from) if resume_from else None
            if batch_from_data:
                cfg = fit_data_batch(cfg, env, len(table.classes), saved, notes)
            if saved is not None:
                rundir.check_resume(cfg, saved, table.classes, state.split_hash, resume_from, amp_mode(cfg, env.device),
                                    env.world_size)
            cache = decode_images(cfg, table, env)  # every image decoded before the run folder is touched
            run_dir = resume_from.parent.parent if resume_from else Path(cfg.run.dir) / dist.broadcast_object(
                env, rundir.run_name(cfg))
            held.enter_context(rundir.locked(run_dir, env))
        except Exception:
            if new_split is not None and env.is_main:  # a refused run leaves no split file it drew
                new_split.unlink(missing_ok=True)
            raise
        if env.is_main:
            hashes.save()  # an accepted run keeps the image hashes for the next one (a refused one, nothing)
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            save_yaml(cfg, run_dir / "config.yaml")
        with file_log(run_dir / "train.log", env, notes), Preemption(env, cfg.train.log_interval) as stop:
            return train_in_folder(cfg, env, table, fold, state, run_dir, saved, cache, stop, judge)


def train_in_folder(cfg: Config, env: dist.Env, table: Table, fold: np.ndarray, state: TrainState, run_dir: Path,
                    saved: dict | None, cache: np.ndarray | None, stop: Preemption, judge=None) -> dict:
    """Everything that happens inside the locked run folder: build, (restore), fit, summary."""
    if env.is_main:
        write_data_record(run_dir, table)
    learner = build_learner(cfg, env, table, stop, initial_weights=saved is None,
                            train_labels=training_part(cfg, table, fold)[1])
    if env.rank:  # after the model is built (identical on every rank): each rank its own mixup, dropout, ...
        seed_everything(rank_seed(cfg.seed, env.rank))
    train_ds, val_ds = build_datasets(cfg, table, fold, cache)
    if env.is_main and (age_edges(cfg) != OFFICIAL_EDGES or cfg.data.drop_ages):
        n_out = int((fold != cfg.split.fold).sum()) - len(train_ds)
        log.info("training labels: age buckets start at %s (official %s); %d training image(s) of ages %s left out; "
                 "validation keeps the official labels", cfg.data.age_edges, list(OFFICIAL_EDGES), n_out,
                 cfg.data.drop_ages)
    batch = settle_batch_size(cfg, env, learner, len(table.classes), len(train_ds), saved)
    loaders = build_loaders(cfg, env, train_ds, val_ds, batch)
    loaders.val_groups = table.df["group"].astype(str).to_numpy()[fold == cfg.split.fold].tolist()
    enter_phase(cfg, learner, 0, loaders.steps)
    saver = ckpt.Saver(run_dir / "checkpoints", "min" if cfg.train.monitor == "val_loss" else "max",
                       cfg.train.keep_top_k, background=on_cuda_or(cfg.train.async_save, env.device))
    if saved is not None:
        restore(cfg, learner, state, saver, saved, loaders.steps)
    if env.is_main:  # rows past the checkpoint (or all, for a fresh start in an old folder) are stale
        truncate_metrics(run_dir / "metrics.csv", state.epoch)
    state.batch_sizes = {"world_size": env.world_size, "batch_size_per_process": batch,
                         "global_batch_size": batch * env.world_size * cfg.train.accum_steps}
    tracker = (Tracker(run_dir, cfg.log.wandb, {**to_dict(cfg), **state.batch_sizes}, run_dir.name, state.wandb_id,
                       cfg.log.tensorboard, state.step) if env.is_main else NullTracker())
    state.wandb_id = tracker.wandb_id
    judged = judge(cfg, env, state.best) if judge else KeepGoing()
    run = Run(cfg, env, learner, loaders, state, tracker, saver, run_dir, judged)
    try:
        fit(run)
        return write_summary(run)
    except RuntimeError as e:
        if not dist.is_lost_peer(env, e):
            raise
        raise dist.LostPeer(lost_peer_message(run, e)) from None
    finally:
        tracker.finish()  # also on errors and preemption, so W&B's files are complete


def lost_peer_message(run: Run, e: BaseException) -> str:
    """Where the run stood when a peer went, and how to go on."""
    where = f"in epoch {run.state.epoch + 1} (step {run.state.step})"
    done = run.state.epoch if (run.dir / "checkpoints" / "last.pt").is_file() else 0
    then = (f"last.pt holds epoch {done}: resume with run.resume=auto run.name={run.dir.name} (the same --nproc)"
            if done else "no epoch was finished, so there is nothing to resume: start it again")
    return f"lost another process of this run {where} ({dist.peer_error(e)}); {then}"


# ---------------------------------------------------------------- steps
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank `rank`'s random stream (rank 0 keeps `seed`, so one process is unchanged)."""
    return (seed + 7919 * rank) % 2**32


def preflight(cfg: Config) -> None:
    """Checks that need no data, so a typo fails before anything is read or written."""
    models.check_name(cfg.model.name)
    if rundir.resume_point(cfg) is None:  # a resume's checkpoint holds the weights
        models.check_weights(cfg.model)  # a file that does not fit, hub weights out of reach
    freeze.resolve_schedule(cfg)
    freeze.check_head(cfg)
    resolve_mode(cfg.log.wandb)


def prepare_data(cfg: Config, env: dist.Env, hashes: Hashes | None = None) -> tuple[Table, np.ndarray, str]:
    """Read the table; rank 0 writes the split file if there is none and runs the leakage checks
    (reading every image once), the others wait and read the folds. Also the split file's hash."""
    if env.is_main:
        log.info("reading the %s layout under %s", cfg.data.format, cfg.data.root)
    table = read_table(cfg)
    folds = dist.main_first(env, lambda: load_or_write_folds(cfg, table, hashes))
    fold, split_hash = folds if env.is_main else read_folds_hashed(cfg, table, split_path(cfg))
    return table, fold, split_hash


def watch_machine(env: dist.Env) -> cpus.Share:
    """This process's share of the machine's cores, every process watching at the same moment."""
    dist.barrier(env)
    return cpus.watch(env.local_world)


def say(env: dist.Env, line: str, notes: list[str] | None = None) -> None:
    """An info line on rank 0, also kept for the run's train.log (`notes`)."""
    if env.is_main:
        log.info("%s", line)
        if notes is not None:
            notes.append(line)


def resolve_defaults(cfg: Config, env: dist.Env, table: Table, fold: np.ndarray,
                     notes: list[str] | None = None, share: cpus.Share | None = None) -> Config:
    """img_size, batch size and workers from the data and the device (logged on rank 0)."""
    n_train = int((fold != cfg.split.fold).sum())
    logger = log if env.is_main else None
    cores = (share or cpus.Share(cpus.usable_cores(), 0.0, env.local_world)).per_process()
    # the training part's people decide age_edges=auto and sampler=auto: validation stays unseen
    part = table.df[fold != cfg.split.fold]
    ages = part.drop_duplicates("group")["age"].dropna().to_numpy() if "age" in part.columns else None
    return defaults.resolve(cfg, table.df["path"].tolist(), n_train, env.device, env.world_size, cores, logger, notes,
                            ages=ages)


def write_data_record(run_dir: Path, table: Table) -> None:
    """The class list (index -> name) and any label corrections applied, next to the run."""
    files.write_json(run_dir / "classes.json", table.classes, indent=1)
    fixes = table.df.attrs.get("corrections")
    if fixes:
        pd.DataFrame(fixes).to_csv(run_dir / "corrections_applied.csv", index=False)


@contextlib.contextmanager
def file_log(path: Path, env: dist.Env, notes: list[str] = ()):
    """Everything logged during the run also goes to the run's train.log (rank 0), after `notes` (what
    was logged before the folder existed: the resolved defaults)."""
    if not env.is_main:
        yield
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for line in notes:
        handler.handle(logging.LogRecord("baseline", logging.INFO, "", 0, line, None, None))
    logging.getLogger().addHandler(handler)
    try:
        yield
    except Exception:
        handler.handle(logging.LogRecord("baseline", logging.ERROR, "", 0, traceback.format_exc(), None, None))
        raise
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def filter_of(cfg: Config) -> str:
    """The resize filter: as resolved by defaults.resolve, bilinear where that was skipped."""
    return "bilinear" if cfg.data.interpolation == "auto" else cfg.data.interpolation


def decode_images(cfg: Config, table: Table, env: dist.Env | None = None) -> np.ndarray | None:
    """The decode-once cache (None with data.cache=off); a broken image is a DataError here. Several
    processes on one machine decode once: its local rank 0 writes the cache (RAM: a file in shared memory,
    removed once every process has mapped it; disk: the cache file), the others map it read-only."""
    env = env or dist.Env()
    paths, hw, interp = table.df["path"].tolist(), img_hw(cfg), filter_of(cfg)
    mode = ds.cache_mode(cfg.data.cache, len(paths), hw, cfg.data.cache_ram_gb)
    disk = store.beside_data(cfg, ".cache", written=True)
    if not env.distributed or mode == "off":
        return ds.build_cache(paths, hw, mode, disk, cfg.data.cache_ram_gb, cfg.data.max_pixels, interp)
    token = dist.broadcast_object(env, uuid.uuid4().hex[:8])

    def write() -> tuple[str, bool]:
        shared = ds.shared_cache_file(paths, hw, token, interp) if mode == "ram" else None
        if mode == "ram" and shared is None:
            log.warning("shared memory (%s) is too small for the decode cache: using a disk cache in %s "
                        "(in Docker: --shm-size or --ipc=host)", ds.SHARED_DIR, disk)
        file = shared or disk / f"{ds.cache_key(paths, hw, interp)}.npy"
        return str(ds.write_cache_file(paths, hw, file, cfg.data.max_pixels, interp)), shared is not None

    file, temporary = dist.local_first(env, write)
    try:
        cache = np.load(file, mmap_mode="r")
        dist.barrier(env)  # every process has mapped it: the memory is freed when the last one lets go
    finally:
        if temporary and env.is_local_main:
            Path(file).unlink(missing_ok=True)
    return cache


def training_part(cfg: Config, table: Table, fold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The training rows (table indices) and the labels they train with: the table's own, or on the
    competition layout those of data.age_edges, without the ages in data.drop_ages. The validation fold
    keeps the official labels (build_datasets), so metrics, OOF and the submission stay comparable."""
    tr = np.flatnonzero(fold != cfg.split.fold)
    labels = table.df["label"].to_numpy()
    edges, drop = age_edges(cfg), cfg.data.drop_ages
    if edges == OFFICIAL_EDGES and not drop:
        return tr, labels[tr]
    part = table.df.iloc[tr]
    keep = ~part["age"].isin(drop).to_numpy()
    tr, part = tr[keep], part[keep]
    y = np.array([label if np.isnan(a) else age_label(int(m), int(g), a, edges)  # pseudo rows: no age, as labelled
                  for label, m, g, a in zip(part["label"], part["mask"], part["gender"], part["age"].astype(float))])
    return tr, y


def build_datasets(cfg: Config, table: Table, fold: np.ndarray, cache: np.ndarray | None):
    """(train, val) datasets of the configured fold, served from the decode-once cache."""
    hw = img_hw(cfg)
    df, labels = table.df, table.df["label"].to_numpy()
    tr, train_labels = training_part(cfg, table, fold)
    va = np.flatnonzero(fold == cfg.split.fold)
    per_item = None if cfg.aug.on_device else train_transform(cfg.aug, hw)  # else BatchAug in the step
    train_ds = ds.ImageDataset(df["path"].iloc[tr], train_labels.tolist(), hw, per_item, cache, cfg.data.max_pixels,
                               filter_of(cfg), rows=tr)
    val_ds = ds.ImageDataset(df["path"].iloc[va], labels[va].tolist(), hw, None, cache, cfg.data.max_pixels,
                             filter_of(cfg), rows=va)
    return train_ds, val_ds


@dataclass
class Loaders:
    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader
    val_labels: np.ndarray
    val_paths: list[str]
    batch_size: int  # per process
    val_groups: list[str] | None = None  # each validation image's group (person), for oof.csv
    steps: int = 0  # batches in a whole epoch (len(train) shrinks while a resumed epoch skips its first batches)


def fit_data_batch(cfg: Config, env: dist.Env, n_cls: int, saved: dict | None, notes: list[str]) -> Config:
    """train.batch_size=data on a GPU: halved until a probe step of this model fits in the GPU's memory
    (the data's choice goes up to 256). A resume keeps the batch its checkpoint trained with."""
    if saved is not None:
        return replace(cfg, train=replace(cfg.train, batch_size=saved["config"]["train"]["batch_size"]))
    if env.device.type != "cuda":
        return cfg
    probe = models.create(replace(cfg.model, pretrained=False), n_cls).to(env.device)
    cl = models.channels_last(cfg.train.channels_last, probe, env.device)
    if cl:
        probe = probe.to(memory_format=torch.channels_last)
    ctx = engine.StepCtx(env, torch.zeros(3, device=env.device), torch.ones(3, device=env.device),
                         amp_dtype(cfg, env.device), cl)
    wanted = cfg.train.batch_size
    fits = dist.all_min(env, memory.largest_fitting(probe, ctx, n_cls, img_hw(cfg), wanted))
    del probe
    torch.cuda.empty_cache()
    if fits == 0:
        raise memory.OutOfMemory(memory.oom_message(env.device, 2, "probing the batch size"))
    if fits < wanted:
        say(env, f"default: train.batch_size={fits}: the data's {wanted} does not fit in the GPU's memory", notes)
    return replace(cfg, train=replace(cfg.train, batch_size=fits))


def settle_batch_size(cfg: Config, env: dist.Env, learner: engine.Learner, n_cls: int, n_train: int,
                      saved: dict | None = None) -> int:
    """train.batch_size as a number: as given, or (auto) the largest that fits, found before any
    loader exists; a resumed auto run keeps the batch its checkpoint trained with (a new probe may find
    another, and the schedule's steps and the mid-epoch skip would no longer match)."""
    trained = ((saved or {}).get("batch_sizes") or {}).get("batch_size_per_process")
    if cfg.train.batch_size == "auto" and trained:
        return int(trained)
    if isinstance(cfg.train.batch_size, int):
        if cfg.train.batch_size > n_train // env.world_size:
            raise ConfigError(f"train.batch_size={cfg.train.batch_size} is larger than the "
                              f"{n_train // env.world_size} training images per process")
        return cfg.train.batch_size
    return memory.find_batch_size(cfg, env, learner.model, learner.ctx, n_cls, n_train)


def build_loaders(cfg: Config, env: dist.Env, train_ds, val_ds, batch: int) -> Loaders:
    if cfg.train.sampler == "auto":
        raise ConfigError("train.sampler=auto is resolved from the data (baseline.defaults.resolve) before use")
    power = cfg.train.sampler_power if cfg.train.sampler == "balanced" else None
    train = ds.train_loader(train_ds, batch, cfg.data.num_workers, cfg.seed, env.rank, env.world_size, power)
    return Loaders(
        train=train, steps=len(train),
        val=ds.eval_loader(val_ds, max(batch, 64) * 2, cfg.data.num_workers, env.rank, env.world_size),
        val_labels=np.asarray(val_ds.labels), val_paths=list(val_ds.paths), batch_size=batch,
    )


def on_cuda_or(value: bool | str, device: torch.device) -> bool:
    """A bool key whose `auto` means: on a GPU (train.async_save)."""
    return device.type == "cuda" if value == "auto" else bool(value)


def amp_mode(cfg: Config, device: torch.device) -> str:
    """train.amp as used on `device`: auto is bf16 on a GPU, off on the CPU."""
    if cfg.train.amp == "auto":
        return "bf16" if device.type == "cuda" else "off"
    return cfg.train.amp


def amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp_mode(cfg, device)]


def build_learner(cfg: Config, env: dist.Env, table: Table, stop, initial_weights: bool = True,
                  train_labels: np.ndarray | None = None) -> engine.Learner:
    """Model, freezer (in its first phase), step context, loss, mixup, EMA and scaler; enter_phase
    adds the optimizer, scheduler and training view. A resume loads no initial weights (a run folder
    copied from a teammate need not find their model.pretrained file)."""
    n_cls = len(table.classes)
    model_cfg = cfg.model if initial_weights else replace(cfg.model, pretrained=False)
    model = models.create(model_cfg, n_cls).to(env.device)
    if env.device.type == "cuda":  # the fastest kernels for this run's fixed shapes; TF32 where fp32 remains
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    nhwc = models.channels_last(cfg.train.channels_last, model, env.device)
    if nhwc:
        model = model.to(memory_format=torch.channels_last)
    if cfg.train.grad_checkpointing:
        models.set_grad_checkpointing(model, cfg.model.name)
    freezer = freeze.Freezer(cfg, model)
    freezer.freeze_for(0)
    mean, std = models.data_stats(model)  # unless resolved (defaults.resolve) or given
    mean, std = (mean if cfg.data.mean == "auto" else cfg.data.mean), (std if cfg.data.std == "auto" else cfg.data.std)
    dtype = amp_dtype(cfg, env.device)
    ctx = engine.StepCtx(env, torch.tensor(mean, device=env.device), torch.tensor(std, device=env.device), dtype,
                         nhwc, cfg.train.accum_steps, cfg.train.clip_grad, cfg.train.log_interval,
                         stop=stop, on_train=freezer.frozen_bn_eval)
    return engine.Learner(
        model, ctx, build_loss(cfg, table.df["label"].to_numpy() if train_labels is None else train_labels, n_cls,
                                  env.device), freezer, mixup=build_mixup(cfg, n_cls),
        ema=timm.utils.ModelEmaV3(model, decay=cfg.train.ema, use_warmup=True) if cfg.train.ema > 0 else None,
        batch_aug=BatchAug(cfg.aug, rank_seed(cfg.seed, env.rank)) if cfg.aug.on_device else None,
        scaler=torch.amp.GradScaler(env.device.type) if dtype == torch.float16 else None)


def build_mixup(cfg: Config, n_cls: int):
    """timm's Mixup/CutMix (soft targets), or CutMix within one class (hard targets), or None."""
    if cfg.train.cutmix_same_class > 0:
        return engine.SameClassCutMix(cfg.train.cutmix_same_class)
    if cfg.train.mixup <= 0 and cfg.train.cutmix <= 0:
        return None
    return timm.data.Mixup(mixup_alpha=cfg.train.mixup, cutmix_alpha=cfg.train.cutmix,
                           label_smoothing=cfg.train.label_smoothing, num_classes=n_cls)


def build_loss(cfg: Config, train_labels: np.ndarray, n_cls: int, device: torch.device) -> torch.nn.Module:
    """The configured loss; class weights from the training fold's labels alone (not the validation fold's)."""
    weight = losses.class_weights(train_labels, n_cls).to(device) if cfg.train.class_weights else None
    soft = cfg.train.mixup > 0 or cfg.train.cutmix > 0
    return losses.create(cfg.train.loss, n_cls, cfg.train.label_smoothing, weight, soft=soft).to(device)


def enter_phase(cfg: Config, learner: engine.Learner, epoch: int, steps_per_epoch: int, step: int = 0,
                index: int | None = None, start_step: int | None = None) -> None:
    """The freeze schedule's phase for `epoch` (or phase `index`, as a checkpoint names it). A phase is
    built as a unit: its trainable set, an optimizer for it (state kept for parameters trained in the
    phase before), its own LR schedule over its own epochs, counted from `start_step` (the step it began
    at), and a new training view, since DDP registers its gradient hooks on the trainable parameters.
    The same code runs whether the run was interrupted or not, so a resume is exact."""
    f = learner.freezer
    index = f.index_at(epoch) if index is None else index
    if not f.enter(index) and learner.optimizer is not None:
        return
    learner.optimizer = f.rebuild_optimizer(learner.optimizer) if learner.optimizer is not None else f.optimizer()
    learner.phase_start = step if start_step is None else start_step
    learner.scheduler = make_scheduler(cfg, learner.optimizer, steps_per_epoch, *f.span(index))
    if learner.scheduler is not None and step > learner.phase_start:
        learner.scheduler.step_update(num_updates=step - learner.phase_start)
    learner.train_view = training_view(learner.model, cfg, learner.ctx.env)
    if learner.ctx.env.is_main and len(f.schedule) > 1:
        first, end = f.span(index)
        now, peak = f.group_lrs(learner.optimizer), f.group_lrs(learner.optimizer, "initial_lr")
        log.info("freeze phase %d/%d (epochs %d-%d, train %s): %d trainable parameters; LR starts at %s, peaks at %s",
                 index + 1, len(f.schedule), first + 1, end, f.phase["train"], f.trainable_count(),
                 ", ".join(f"{k} {v:.2e}" for k, v in now.items()), ", ".join(f"{v:.2e}" for v in peak.values()))


def phase_state(learner: engine.Learner) -> dict:
    """What names the phase a checkpoint's optimizer and scheduler belong to."""
    return {"index": learner.freezer.index, "start_step": learner.phase_start}


def training_view(model: torch.nn.Module, cfg: Config, env: dist.Env) -> torch.nn.Module:
    """The bare model under DDP (torchrun), then torch.compile if asked."""
    view = model
    if env.distributed:
        ids = [env.device.index] if env.device.type == "cuda" else None
        view = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
    return torch.compile(view) if cfg.train.compile else view


def make_scheduler(cfg: Config, optimizer, steps_per_epoch: int, first: int = 0, end: int | None = None):
    """The LR schedule of one freeze phase, epochs [first, end): warmup and decay over that phase alone
    (with no freezing, the one phase is the whole run)."""
    if cfg.sched.name == "none":
        return None
    epochs = (cfg.train.epochs if end is None else end) - first
    updates = max(1, math.ceil(steps_per_epoch / cfg.train.accum_steps))  # the last micro-batch steps too
    sched, _ = timm.scheduler.create_scheduler_v2(
        optimizer, sched=cfg.sched.name, num_epochs=epochs, warmup_epochs=cfg.sched.warmup * epochs,
        min_lr=cfg.sched.min_lr, warmup_lr=cfg.sched.min_lr, decay_epochs=cfg.sched.step_epochs,
        decay_rate=cfg.sched.gamma, patience_epochs=2, plateau_mode="min" if cfg.train.monitor == "val_loss" else "max",
        step_on_epochs=cfg.sched.name == "plateau", updates_per_epoch=updates,
    )
    return sched


@dataclass
class TrainState:
    split_hash: str
    classes: list[str]
    epoch: int = 0  # next epoch to run
    step: int = 0  # optimizer steps so far
    best: float | None = None
    best_epoch: int = -1
    best_row: dict | None = None
    wandb_id: str = ""
    bad_epochs: int = 0
    seconds: float = 0.0
    batches_done: int = 0  # of the current epoch; > 0 only in a checkpoint written on preemption
    loss_sum: float = 0.0  # train loss summed over those batches, so a resumed epoch reports the whole epoch's mean
    batch_sizes: dict | None = None  # world size, per-process and global batch (auto may pick the batch)
    pruned_epoch: int = 0  # a sweep's pruner stopped the run after this epoch
    averaged: dict | None = None  # train.avg_top_k: the averaged weights' epochs, metrics and whether they won


RESTORED = ("epoch", "step", "best", "best_epoch", "best_row", "wandb_id", "bad_epochs", "seconds", "batches_done",
            "loss_sum")


def checkpoint_state(cfg: Config, learner: engine.Learner, state: TrainState, rngs: list[dict]) -> dict:
    """Everything a resume needs; the Saver adds its own top-k list. `rngs`: every rank's random state
    (dist.gather_objects), so each rank resumes its own stream."""
    return {
        "model": learner.model.state_dict(),
        "model_ema": learner.ema.module.state_dict() if learner.ema is not None else None,
        "optimizer": learner.optimizer.state_dict(),
        "scheduler": learner.scheduler.state_dict() if learner.scheduler is not None else None,
        "scaler": learner.scaler.state_dict() if learner.scaler is not None else None,
        "phase": phase_state(learner), "norm": learner.ctx.norm, "amp": amp_mode(cfg, learner.ctx.env.device),
        **{k: getattr(state, k) for k in RESTORED}, "rng": rngs[0], "rng_ranks": rngs, "config": to_dict(cfg),
        "batch_sizes": state.batch_sizes,
        "classes": state.classes, "split_hash": state.split_hash, **ckpt.provenance(),
    }


def restore(cfg: Config, learner: engine.Learner, state: TrainState, saver: ckpt.Saver, saved: dict,
            steps_per_epoch: int) -> None:
    """Continue from a checkpoint that rundir.check_resume has accepted: into the phase it was written
    in (fit then enters the next one, if due, as an uninterrupted run does)."""
    phase = saved.get("phase") or {}
    index = phase.get("index")
    if index is None:  # a checkpoint from before phases were saved: epoch-end saves hold the last epoch's
        index = learner.freezer.index_at(max(saved["epoch"] - (0 if saved.get("batches_done") else 1), 0))
    enter_phase(cfg, learner, saved["epoch"], steps_per_epoch, saved["step"], index=index,
                start_step=phase.get("start_step", 0))
    learner.model.load_state_dict(saved["model"])
    if learner.ema is not None and saved.get("model_ema") is not None:
        learner.ema.module.load_state_dict(saved["model_ema"])
    learner.optimizer.load_state_dict(saved["optimizer"])
    if learner.scheduler is not None and saved.get("scheduler"):
        learner.scheduler.load_state_dict(saved["scheduler"])
    if learner.scaler is not None and saved.get("scaler"):
        learner.scaler.load_state_dict(saved["scaler"])
    for k in RESTORED:
        setattr(state, k, saved.get(k, getattr(state, k)))
    saver.restore(saved.get("top"))
    env, ranks = learner.ctx.env, saved.get("rng_ranks") or []
    ckpt.set_rng_state(ranks[env.rank] if len(ranks) == env.world_size else saved["rng"])
    log.info("resumed from epoch %d (step %d)", state.epoch, state.step)


class Preemption:
    """SIGTERM / SIGINT set a flag; the loop finishes its step, writes last.pt and leaves. Under DDP the
    ranks agree first (every `every` steps, at the same step on every rank): one rank's signal stops them
    all at one step, so none is left waiting in an all-reduce and last.pt holds that step."""

    def __init__(self, env: dist.Env | None = None, every: int = 1):
        self.env, self.every = env or dist.Env(), every
        self.requested = False
        self.signum = signal.SIGTERM  # which signal asked; the exit code is 128 + it, as shells expect
        self._asked = 0  # the signal this process received (0: none)

    def __call__(self, step: int) -> bool:
        if not self.env.distributed:
            return self.requested
        if step % self.every:
            return False
        agreed = dist.all_max(self.env, self._asked)  # a host sync, so only every `every` steps
        if agreed:
            self.requested, self.signum = True, signal.Signals(agreed)
        return bool(agreed)

    def _handle(self, signum, _frame) -> None:
        self._asked, self.signum = int(signum), signum
        self.requested = not self.env.distributed  # under DDP: once the ranks agree
        log.warning("received %s: finishing the current step, then saving last.pt", signal.Signals(signum).name)

    def __enter__(self) -> Preemption:
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


@dataclass
class Run:
    """One training run, as fit and its steps see it."""

    cfg: Config
    env: dist.Env
    learner: engine.Learner
    loaders: Loaders
    state: TrainState
    tracker: Tracker | NullTracker
    saver: ckpt.Saver
    dir: Path
    sweep_trial: Judge
    epoch_started: float = 0.0  # perf_counter at the start of the current epoch
    epoch_wall: float = 0.0  # seconds the last epoch took, evaluation and checkpoints included
    epoch_extra: float = 0.0  # of those, outside the training steps


def fit(run: Run) -> None:
    """Epochs until train.epochs, an early stop, the sweep's pruner, or a preemption signal."""
    log_start(run)
    while run.state.epoch < run.cfg.train.epochs:
        run.epoch_started = time.perf_counter()
        enter_phase(run.cfg, run.learner, run.state.epoch, run.loaders.steps, run.state.step)
        result = train_epoch(run)
        if result["interrupted"]:
            stop_preempted(run)
        logits, m = evaluate(run)
        row = record_epoch(run, result, logits, m)
        run.epoch_wall = time.perf_counter() - run.epoch_started
        run.epoch_extra = max(run.epoch_wall - result["seconds"], 0.0)
        if should_stop(run, row):
            break
    run.saver.wait()  # every checkpoint on disk (and a failed write said) before anything reads them
    if run.cfg.train.avg_top_k and not run.state.pruned_epoch:
        average_best(run)


def average_best(run: Run) -> None:
    """The mean of the best train.avg_top_k epochs' weights, evaluated like an epoch: averaged.pt, and
    best.pt and oof.csv if it beats the best epoch (the run's summary says which won)."""
    cfg, state, learner = run.cfg, run.state, run.learner
    names = [t[1] for t in run.saver.top[: cfg.train.avg_top_k]]
    if len(names) < 2:
        return
    target = learner.ema.module if learner.ema is not None else learner.model
    if run.env.is_main:
        target.load_state_dict(ckpt.average_weights([run.saver.dir / n for n in names]))
    dist.broadcast_module(run.env, target)
    recompute_bn(run, target)
    logits, m = evaluate(run)
    epochs = sorted(int(n[5:8]) for n in names)
    better = run.saver.better(m[cfg.train.monitor], state.best, m["val_loss"], best_loss(state))
    state.averaged = {"epochs": epochs, **m, "best": better}
    rngs = dist.gather_objects(run.env, ckpt.rng_state())
    if not run.env.is_main:
        return
    saved = checkpoint_state(cfg, learner, state, rngs)
    saved["averaged_epochs"] = epochs
    ckpt.save_atomic(saved, run.saver.dir / "averaged.pt", *([run.saver.dir / "best.pt"] if better else []))
    if better:
        state.best, state.best_row = m[cfg.train.monitor], {**(state.best_row or {}), **m}
        write_oof(run.dir, run.loaders, logits, cfg.data.root)
    log.info("averaged epochs %s: val_loss %.4f  val_acc %.4f  val_f1 %.4f%s", epochs, m["val_loss"], m["val_acc"],
             m["val_f1"], "  *best* (best.pt, oof.csv)" if better else f"  (best epoch {state.best_epoch} stays)")

def recompute_bn(run: Run, model: torch.nn.Module) -> None:
    """BatchNorm statistics for averaged weights, from one pass over the training part without augmentation
    (torch's swa_utils.update_bn): the mean of several epochs' running statistics does not describe the
    averaged weights' activations. Each rank measures its shard; evaluation then syncs the buffers."""
    plain = copy.copy(run.loaders.train.dataset)
    plain.transform = None
    loader = ds.eval_loader(plain, run.loaders.batch_size, run.cfg.data.num_workers, run.env.rank, run.env.world_size)
    ctx = run.learner.ctx
    with torch.no_grad():
        torch.optim.swa_utils.update_bn((ctx.batch(x, y)[0] for x, y in loader), model)


def log_start(run: Run) -> None:
    if run.env.is_main:
        b, cfg = run.state.batch_sizes, run.cfg
        log.info("run %s: %d train / %d val images, batch %d per process x %d processes x %d accumulation = %d "
                 "global, %d epochs", run.dir.name, len(run.loaders.train.dataset), len(run.loaders.val.dataset),
                 b["batch_size_per_process"], b["world_size"], cfg.train.accum_steps, b["global_batch_size"],
                 cfg.train.epochs)


def train_epoch(run: Run) -> dict:
    """One epoch of optimizer steps (from the preempted batch when resuming mid-epoch)."""
    cfg, env, loaders, state = run.cfg, run.env, run.loaders, run.state
    ds.set_epoch(loaders.train, cfg.seed, state.epoch)
    loaders.train.sampler.skip = state.batches_done * loaders.batch_size
    loader, lines = epoch_progress(run)
    memory.reset_peak(env.device)
    try:
        result = engine.train_one_epoch(run.learner, loader, state.step, on_log=lines)
    except torch.OutOfMemoryError:
        if env.is_main:
            with open(run.dir / "train.log", "a") as f:
                f.write(traceback.format_exc())
        raise memory.OutOfMemory(memory.oom_message(
            env.device, loaders.batch_size, f"in epoch {state.epoch + 1} after step {state.step}")) from None
    state.step = result["step"]
    state.seconds += result["seconds"]
    state.batches_done += result["batches"]
    state.loss_sum += result["loss"] * result["batches"]
    return {**result, "loss": state.loss_sum / max(state.batches_done, 1)}


def stop_preempted(run: Run) -> None:
    """last.pt, one line, and exit 130 after Ctrl-C (SIGINT), 143 after SIGTERM."""
    signum = int(getattr(run.learner.ctx.stop, "signum", signal.SIGTERM))
    rngs = dist.gather_objects(run.env, ckpt.rng_state())
    if run.env.is_main:
        run.saver.save_last(checkpoint_state(run.cfg, run.learner, run.state, rngs))
        print(f"stopped by {signal.Signals(signum).name} in epoch {run.state.epoch + 1} after "
              f"{run.state.batches_done} batches; last.pt holds that state: resume with run.resume=auto "
              f"run.name={run.dir.name}", file=sys.stderr, flush=True)
    dist.barrier(run.env)  # no rank leaves (and so has its launcher stop the rest) before last.pt is written
    raise SystemExit(128 + signum)


def evaluate(run: Run) -> tuple[torch.Tensor, dict]:
    """Validation logits (every rank holds all of them) and metrics. The bare model: ranks may hold
    different numbers of validation batches, and a DDP forward is a collective every rank must join."""
    learner = run.learner
    eval_model = learner.ema.module if learner.ema is not None else learner.model
    dist.sync_buffers(run.env, learner.model)  # also what the checkpoint saves
    if eval_model is not learner.model:
        dist.sync_buffers(run.env, eval_model)
    if not len(run.loaders.val_labels):  # a refit (split.fold=-1): every fold trains, nothing to validate on
        return None, {"val_loss": math.nan, "val_acc": math.nan, "val_f1": math.nan}
    logits = engine.predict_logits(eval_model, run.loaders.val, learner.ctx)
    return logits, engine.val_metrics(logits, run.loaders.val_labels)


def record_epoch(run: Run, result: dict, logits: torch.Tensor, m: dict) -> dict:
    """Scheduler, best, metrics row, tracker, checkpoints and OOF (rank 0); the row."""
    cfg, learner, state = run.cfg, run.learner, run.state
    epoch, metric = state.epoch + 1, m[cfg.train.monitor]
    if learner.scheduler is not None:
        learner.scheduler.step(epoch - learner.freezer.phase["epoch"], metric)
    row = {"epoch": epoch, "step": state.step, "train_loss": result["loss"], **m,
           "lr": learner.optimizer.param_groups[0]["lr"], "trainable_params": learner.freezer.trainable_count(),
           "images_per_s": result["images"] / max(result["seconds"], 1e-9), "epoch_s": result["seconds"],
           **learner.freezer.group_lrs(learner.optimizer), **memory.report(run.env.device)}
    # a refit's best is its latest epoch; a tie on the metric goes to the lower val loss
    is_best = logits is None or run.saver.better(metric, state.best, m["val_loss"], best_loss(state))
    if is_best:
        state.best, state.best_epoch, state.best_row, state.bad_epochs = metric, epoch, row, 0
    else:
        state.bad_epochs += 1
    state.epoch, state.batches_done, state.loss_sum = epoch, 0, 0.0
    rngs = dist.gather_objects(run.env, ckpt.rng_state())
    if run.env.is_main:
        if logits is not None:
            per_class = engine.per_class_f1(logits, run.loaders.val_labels, len(state.classes))
            run.tracker.log({f"val_f1_class/{c}": float(f) for c, f in zip(state.classes, per_class)},
                            step=state.step)
        run.tracker.log_epoch(row)
        run.saver.save(checkpoint_state(cfg, learner, state, rngs), epoch, metric, is_best, m["val_loss"])
        if is_best and logits is not None:
            write_oof(run.dir, run.loaders, logits, cfg.data.root)
        left = cfg.train.epochs - epoch
        eta = f", run ETA {progress.run_eta(0, left, time.perf_counter() - run.epoch_started)}" if left else ""
        log.info("epoch %d/%d  train_loss %.4f  val_loss %.4f  val_acc %.4f  val_f1 %.4f%s  (%.1fs, %.0f img/s%s)",
                 epoch, cfg.train.epochs, result["loss"], m["val_loss"], m["val_acc"], m["val_f1"],
                 "  *best*" if is_best else "", result["seconds"], row["images_per_s"], eta)
    return row


def best_loss(state: TrainState) -> float:
    """The best epoch's validation loss (what breaks a tie on the monitored metric)."""
    loss = (state.best_row or {}).get("val_loss")
    return math.inf if loss is None or math.isnan(loss) else loss


def tied_epochs(metrics: pd.DataFrame, monitor: str, best: float | None) -> list[int]:
    """The epochs whose monitored metric equals the best one (saturated validation ties)."""
    if best is None or monitor not in metrics or math.isnan(best):
        return []
    return metrics.loc[metrics[monitor] == best, "epoch"].astype(int).tolist()


def should_stop(run: Run, row: dict) -> bool:
    """The sweep's pruner (every rank gets its answer) or train.early_stop."""
    cfg, state = run.cfg, run.state
    if run.sweep_trial.should_stop(state.epoch, row, last=state.epoch >= cfg.train.epochs):
        state.pruned_epoch = state.epoch
        if run.env.is_main:
            log.info("pruned by the sweep after epoch %d", state.epoch)
        return True
    if cfg.train.early_stop and state.bad_epochs >= cfg.train.early_stop:
        if run.env.is_main:
            log.info("early stop: %s has not improved for %d epochs", cfg.train.monitor, state.bad_epochs)
        return True
    return False


def epoch_progress(run: Run):
    """The epoch's loader (a bar on a terminal) and its per-interval callback (tracker + progress lines)."""
    cfg, env, loaders, state = run.cfg, run.env, run.loaders, run.state
    name, left = f"{state.epoch + 1}/{cfg.train.epochs}", cfg.train.epochs - state.epoch
    known = f" (run ETA {progress.run_eta(0, left, run.epoch_wall)})" if run.epoch_wall else ""
    loader = progress.bar(loaders.train, f"epoch {name}{known}", loaders.batch_size, env.is_main)
    lines = progress.Lines(lambda row: run.tracker.log(row, step=row["step"]), epoch=name, first_step=state.step,
                           steps=math.ceil((loaders.steps - state.batches_done) / cfg.train.accum_steps),
                           images_per_step=state.batch_sizes["global_batch_size"], every_s=cfg.train.log_every_s,
                           show=env.is_main, epochs_after=left - 1,
                           full_steps=math.ceil(loaders.steps / cfg.train.accum_steps), epoch_extra_s=run.epoch_extra)
    return loader, lines


def write_oof(run_dir: Path, loaders: Loaders, logits: torch.Tensor, data_root: str) -> None:
    """Out-of-fold predictions of the best epoch: for error analysis and stacking. `image` is the path
    inside the data set, so a teammate's run (data elsewhere) lines up with yours in an ensemble."""
    images = [Path(os.path.relpath(p, data_root)).as_posix() for p in loaders.val_paths]
    files.write_csv(run_dir / "oof.csv", oofs.frame(loaders.val_paths, images, loaders.val_labels, loaders.val_groups,
                                                   logits.softmax(1).numpy()))


def write_figures(run_dir: Path, classes: list[str], oof: pd.DataFrame | None) -> None:
    if (run_dir / "metrics.csv").is_file():
        plots.learning_curves(run_dir / "metrics.csv", run_dir / "learning_curves.png")
    if oof is not None:
        y, pred = oof["label"].to_numpy(), oof["pred"].to_numpy()
        plots.confusion(y, pred, classes, run_dir / "confusion_matrix.png")
        plots.per_class_f1(y, pred, classes, run_dir / "per_class_f1.png")
        plots.worst_predictions(oof, classes, run_dir / "worst_predictions.png")


def say_ties(run: Run) -> list[int] | None:
    """The epochs that tied with the best on the monitored metric (saturated validation), said in the log;
    None without a tie."""
    cfg, state, path = run.cfg, run.state, run.dir / "metrics.csv"
    tied = tied_epochs(pd.read_csv(path), cfg.train.monitor, state.best) if path.is_file() else []
    if len(tied) < 2:
        return None
    log.info("%s %.4f at epochs %s: kept epoch %d by val loss (validation this small or easy saturates; a wider "
             "validation fold tells these epochs apart)", cfg.train.monitor, state.best, ", ".join(map(str, tied)),
             state.best_epoch)
    return tied


def write_summary(run: Run) -> dict:
    """summary.json, the figures and the tracker's final records (rank 0); the summary."""
    cfg, state, run_dir = run.cfg, run.state, run.dir
    best = state.best_row or {}
    summary = {
        "run": run_dir.name, "status": "pruned" if state.pruned_epoch else "finished",
        "pruned_epoch": state.pruned_epoch or None, "metric_name": cfg.train.monitor, "best_metric": state.best,
        "best_epoch": state.best_epoch, "val_f1": best.get("val_f1"), "val_acc": best.get("val_acc"),
        "val_loss": best.get("val_loss"), "epochs_done": state.epoch, "train_seconds": round(state.seconds, 1),
        "model": cfg.model.name, "img_size": list(img_hw(cfg)), "fold": cfg.split.fold, "split_hash": state.split_hash,
        **(state.batch_sizes or {}), "averaged": state.averaged, "wandb_id": state.wandb_id, "owner": getpass.getuser(),
        "host": socket.gethostname(), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if run.env.is_main:
        summary["best_tied_epochs"] = say_ties(run)
        files.write_json(run_dir / "summary.json", summary)
        run.tracker.summary({k: v for k, v in summary.items() if v is not None})
        oof = pd.read_csv(run_dir / "oof.csv") if (run_dir / "oof.csv").is_file() else None
        if cfg.log.figures:
            write_figures(run_dir, state.classes, oof)
        if oof is not None:
            run.tracker.log_final(run_dir, oof, state.classes, cfg.log.wandb.log_model)
        run.tracker.finish()
        log.info("done: best %s %.4f at epoch %d -> %s", cfg.train.monitor, state.best or float("nan"),
                 state.best_epoch, run_dir)
    return summary
