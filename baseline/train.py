"""`baseline train`: config -> data -> model -> epochs -> checkpoints. Returns the run summary."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import timm.data
import timm.loss
import timm.scheduler
import timm.utils
import torch

from . import checkpoint as ckpt
from . import defaults, dist, engine, freeze, losses, memory, models, plots, progress, rundir, trial
from .config import Config, ConfigError, img_hw, save_yaml, to_dict
from .data import dataset as ds
from .data.layouts import Table, read_table
from .data.split import file_hash, load_or_write_folds, read_folds, split_path
from .data.transforms import train_transform
from .tracking import NullTracker, Tracker, resolve_mode, truncate_metrics

log = logging.getLogger("baseline")


def run(cfg: Config) -> dict:
    env = dist.setup(cfg.train.device)
    try:
        return _train(cfg, env)
    finally:
        dist.teardown()


def _train(cfg: Config, env: dist.Env) -> dict:
    seed_everything(cfg.seed)
    preflight(cfg)
    table, fold, split_file = prepare_data(cfg, env)
    cfg = resolve_defaults(cfg, env, table, fold)
    state = TrainState(split_hash=file_hash(split_file), classes=table.classes)
    resume_from = rundir.resume_point(cfg)
    saved = ckpt.load(resume_from) if resume_from else None
    if saved is not None:
        rundir.check_resume(cfg, saved, table.classes, state.split_hash, resume_from)
    cache = decode_images(cfg, table)  # every image decoded before the run folder is touched
    run_dir = resume_from.parent.parent if resume_from else Path(cfg.run.dir) / dist.broadcast_object(
        env, rundir.run_name(cfg))
    with rundir.locked(run_dir, env):
        if env.is_main:
            (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
            save_yaml(cfg, run_dir / "config.yaml")
        with file_log(run_dir / "train.log", env):
            return _train_in(cfg, env, table, fold, state, run_dir, saved, cache)


def _train_in(cfg, env, table, fold, state, run_dir, saved, cache) -> dict:
    if env.is_main:
        write_data_record(run_dir, table)
    data = build_loaders(cfg, env, table, fold, cache)
    parts = build_parts(cfg, env, table, data)
    if saved is not None:
        restore(cfg, parts, state, saved, len(data.train))
    if env.is_main:  # rows past the checkpoint (or all, for a fresh start in an old folder) are stale
        truncate_metrics(run_dir / "metrics.csv", state.epoch)
    batches = {"world_size": env.world, "batch_size_per_process": data.batch_size,
               "global_batch_size": data.batch_size * env.world * cfg.train.accum_steps}
    state.batches = batches
    tracked = {**to_dict(cfg), **batches}
    tracker = (Tracker(run_dir, cfg.log.wandb, tracked, run_dir.name, state.wandb_id, cfg.log.tensorboard, state.step)
               if env.is_main else NullTracker())
    state.wandb_id = tracker.wandb_id
    saver = ckpt.Saver(run_dir / "checkpoints", "min" if cfg.train.monitor == "val_loss" else "max",
                       cfg.train.keep_top_k, state.top)
    try:
        with Preemption() as stop:
            fit(cfg, env, parts, data, state, tracker, saver, run_dir, stop, trial.Reporter(cfg, env))
        return finish(cfg, env, state, run_dir, tracker)
    finally:
        tracker.finish()  # also on errors and preemption, so W&B's files are complete


# ---------------------------------------------------------------- steps
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def preflight(cfg: Config) -> None:
    """Checks that need no data, so a typo fails before anything is read or written."""
    models.check_name(cfg.model.name)
    p = cfg.model.pretrained
    if isinstance(p, str) and p and not Path(p).is_file():
        raise models.ModelError(f"model.pretrained '{p}' is not a file (expected a weights file, true or false)")
    freeze.resolve_schedule(cfg)
    resolve_mode(cfg.log.wandb)


def prepare_data(cfg: Config, env: dist.Env) -> tuple[Table, np.ndarray, Path]:
    """Read the table; rank 0 writes the split file if there is none and runs the leakage checks
    (reading every image once), the others wait and read the folds."""
    table = read_table(cfg)
    if env.is_main:
        fold, path = load_or_write_folds(cfg, table)
    dist.barrier(env)
    if not env.is_main:
        path = split_path(cfg)
        fold = read_folds(cfg, table, path)
    return table, fold, path


def resolve_defaults(cfg: Config, env: dist.Env, table: Table, fold: np.ndarray) -> Config:
    """img_size, batch size and workers from the data and the device (logged on rank 0)."""
    n_train = int((fold != cfg.split.fold).sum())
    logger = log if env.is_main else None
    return defaults.resolve(cfg, table.df["path"].tolist(), n_train, env.device, env.world, os.cpu_count() or 1,
                            logger)


def write_data_record(run_dir: Path, table: Table) -> None:
    """The class list (index -> name) and any label corrections applied, next to the run."""
    (run_dir / "classes.json").write_text(json.dumps(table.classes, indent=1))
    fixes = table.df.attrs.get("corrections")
    if fixes:
        pd.DataFrame(fixes).to_csv(run_dir / "corrections_applied.csv", index=False)


@contextlib.contextmanager
def file_log(path: Path, env: dist.Env):
    """Everything logged during the run also goes to the run's train.log (rank 0)."""
    if not env.is_main:
        yield
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        yield
    except Exception:
        handler.handle(logging.LogRecord("baseline", logging.ERROR, "", 0, traceback.format_exc(), None, None))
        raise
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


@dataclass
class Data:
    train: torch.utils.data.DataLoader
    val: torch.utils.data.DataLoader
    val_labels: np.ndarray
    val_paths: list[str]
    batch_size: int


def decode_images(cfg: Config, table: Table) -> np.ndarray | None:
    """The decode-once cache (None with data.cache=off); a broken image is a DataError here."""
    return ds.build_cache(table.df["path"].tolist(), img_hw(cfg), cfg.data.cache, Path(cfg.data.root) / ".cache",
                          cfg.data.cache_ram_gb, cfg.data.max_pixels)


def build_loaders(cfg: Config, env: dist.Env, table: Table, fold: np.ndarray, cache: np.ndarray | None) -> Data:
    hw = img_hw(cfg)
    df = table.df
    is_val = fold == cfg.split.fold
    tr_idx, va_idx = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    sub = (lambda idx: cache[idx]) if cache is not None else (lambda idx: None)
    labels = df["label"].to_numpy()
    train_ds = ds.ImageDataset(df["path"].iloc[tr_idx], labels[tr_idx].tolist(), hw,
                               train_transform(cfg.aug, hw), sub(tr_idx), cfg.data.max_pixels)
    val_ds = ds.ImageDataset(df["path"].iloc[va_idx], labels[va_idx].tolist(), hw, None, sub(va_idx),
                             cfg.data.max_pixels)
    bs = cfg.train.batch_size if isinstance(cfg.train.batch_size, int) else 0
    if bs > len(train_ds) // env.world:
        raise ConfigError(f"train.batch_size={bs} is larger than the {len(train_ds) // env.world} training images per process")
    return Data(
        train=ds.train_loader(train_ds, max(bs, 1), cfg.data.num_workers, cfg.seed, env.rank, env.world),
        val=ds.eval_loader(val_ds, max(bs, 64) * 2, cfg.data.num_workers, env.rank, env.world),
        val_labels=labels[va_idx], val_paths=df["path"].iloc[va_idx].tolist(), batch_size=bs,
    )


@dataclass
class Parts:
    model: torch.nn.Module  # possibly DDP-wrapped
    raw: torch.nn.Module  # the bare model
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler | None
    ema: object
    loss_fn: torch.nn.Module
    mixup: object
    ctx: engine.StepCtx
    freezer: freeze.Freezer


def amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    mode = cfg.train.amp
    if mode == "auto":
        mode = "bf16" if device.type == "cuda" else "off"
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def build_parts(cfg: Config, env: dist.Env, table: Table, data: Data) -> Parts:
    n_cls = len(table.classes)
    raw = models.create(cfg.model, n_cls).to(env.device)
    if cfg.train.channels_last:
        raw = raw.to(memory_format=torch.channels_last)
    mean, std = models.data_stats(raw)
    dtype = amp_dtype(cfg, env.device)
    ctx = engine.StepCtx(env, torch.tensor(mean, device=env.device), torch.tensor(std, device=env.device), dtype,
                         cfg.train.channels_last, cfg.train.accum_steps, cfg.train.clip_grad, cfg.train.log_interval)
    if data.batch_size == 0:  # train.batch_size=auto
        data.batch_size = memory.find_batch_size(cfg, env, raw, ctx, n_cls, data)
        data.train = ds.train_loader(data.train.dataset, data.batch_size, cfg.data.num_workers, cfg.seed, env.rank, env.world)
    freezer = freeze.Freezer(cfg, raw)
    freezer.apply(0)
    ctx.on_train = freezer.frozen_bn_eval
    weight = losses.class_weights(table.df["label"].to_numpy(), n_cls).to(env.device) if cfg.train.class_weights else None
    mixup = None
    if cfg.train.mixup > 0 or cfg.train.cutmix > 0:
        mixup = timm.data.Mixup(mixup_alpha=cfg.train.mixup, cutmix_alpha=cfg.train.cutmix,
                                label_smoothing=cfg.train.label_smoothing, num_classes=n_cls)
        loss_fn = timm.loss.SoftTargetCrossEntropy() if cfg.train.loss != "f1" else losses.create("f1", n_cls)
    else:
        loss_fn = losses.create(cfg.train.loss, n_cls, cfg.train.label_smoothing, weight)
    model = wrap(raw, cfg, env)
    optimizer = freezer.optimizer()
    scheduler = make_scheduler(cfg, optimizer, len(data.train))
    scaler = torch.amp.GradScaler(env.device.type) if dtype == torch.float16 else None
    ema = timm.utils.ModelEmaV3(raw, decay=cfg.train.ema) if cfg.train.ema > 0 else None
    return Parts(model, raw, optimizer, scheduler, scaler, ema, loss_fn.to(env.device), mixup, ctx, freezer)


def wrap(raw: torch.nn.Module, cfg: Config, env: dist.Env) -> torch.nn.Module:
    """The training view of the bare model: DDP under torchrun, then torch.compile if asked. Made anew
    when the trainable set changes, since DDP registers its gradient hooks on the trainable parameters."""
    model = raw
    if env.distributed:
        ids = [env.device.index] if env.device.type == "cuda" else None
        model = torch.nn.parallel.DistributedDataParallel(raw, device_ids=ids)
    return torch.compile(model) if cfg.train.compile else model


def make_scheduler(cfg: Config, optimizer, steps_per_epoch: int):
    if cfg.sched.name == "none":
        return None
    updates = max(1, math.ceil(steps_per_epoch / cfg.train.accum_steps))  # the last micro-batch steps too
    sched, _ = timm.scheduler.create_scheduler_v2(
        optimizer, sched=cfg.sched.name, num_epochs=cfg.train.epochs, warmup_epochs=cfg.sched.warmup * cfg.train.epochs,
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
    top: list | None = None
    wandb_id: str = ""
    bad_epochs: int = 0
    seconds: float = 0.0
    batches_done: int = 0  # of the current epoch; > 0 only in a checkpoint written on preemption
    batches: dict | None = None  # world size, per-process and global batch (auto may pick the batch)
    pruned_epoch: int = 0  # a sweep's pruner stopped the run after this epoch


def checkpoint_state(cfg: Config, parts: Parts, state: TrainState, saver: ckpt.Saver) -> dict:
    return {
        "model": parts.raw.state_dict(),
        "model_ema": parts.ema.module.state_dict() if parts.ema is not None else None,
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict() if parts.scheduler is not None else None,
        "scaler": parts.scaler.state_dict() if parts.scaler is not None else None,
        "epoch": state.epoch, "step": state.step, "best": state.best, "best_epoch": state.best_epoch,
        "best_row": state.best_row, "top": [list(t) for t in saver.top], "bad_epochs": state.bad_epochs,
        "batches_done": state.batches_done,
        "seconds": state.seconds, "rng": ckpt.rng_state(), "config": to_dict(cfg), "classes": state.classes,
        "split_hash": state.split_hash, "wandb_id": state.wandb_id, **ckpt.provenance(),
    }


def restore(cfg: Config, parts: Parts, state: TrainState, saved: dict, steps_per_epoch: int) -> None:
    """Continue from a checkpoint that rundir.check_resume has accepted."""
    if parts.freezer.apply(saved["epoch"]):  # resuming in a later freeze phase: its optimizer groups
        parts.optimizer = parts.freezer.optimizer()
        parts.scheduler = make_scheduler(cfg, parts.optimizer, steps_per_epoch)
        parts.model = wrap(parts.raw, cfg, parts.ctx.env)
    parts.raw.load_state_dict(saved["model"])
    if parts.ema is not None and saved.get("model_ema") is not None:
        parts.ema.module.load_state_dict(saved["model_ema"])
    parts.optimizer.load_state_dict(saved["optimizer"])
    if parts.scheduler is not None and saved.get("scheduler"):
        parts.scheduler.load_state_dict(saved["scheduler"])
    if parts.scaler is not None and saved.get("scaler"):
        parts.scaler.load_state_dict(saved["scaler"])
    for k in ("epoch", "step", "best", "best_epoch", "best_row", "top", "wandb_id", "bad_epochs", "seconds",
              "batches_done"):
        setattr(state, k, saved.get(k, getattr(state, k)))
    ckpt.set_rng_state(saved["rng"])
    log.info("resumed from epoch %d (step %d)", state.epoch, state.step)


class Preemption:
    """SIGTERM / SIGINT set a flag; the loop finishes its step, writes last.pt and leaves."""

    def __init__(self):
        self.requested = False

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum, _frame) -> None:
        self.requested = True
        log.warning("received %s: finishing the current step, then saving last.pt", signal.Signals(signum).name)

    def __enter__(self) -> Preemption:
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


def fit(cfg: Config, env: dist.Env, parts: Parts, data: Data, state: TrainState, tracker, saver: ckpt.Saver,
        run_dir: Path, stop: Preemption, sweep_trial: trial.Reporter) -> None:
    parts.ctx.stop = stop
    if env.is_main:
        log.info("run %s: %d train / %d val images, batch %d per process x %d processes x %d accumulation = %d "
                 "global, %d epochs", run_dir.name, len(data.train.dataset), len(data.val.dataset), data.batch_size,
                 env.world, cfg.train.accum_steps, state.batches["global_batch_size"], cfg.train.epochs)
    while state.epoch < cfg.train.epochs:
        epoch = state.epoch
        if parts.freezer.apply(epoch):  # a schedule boundary: new trainable set, new optimizer groups
            parts.optimizer = parts.freezer.rebuild_optimizer(parts.optimizer)
            parts.scheduler = make_scheduler(cfg, parts.optimizer, len(data.train))
            if parts.scheduler is not None:
                parts.scheduler.step_update(num_updates=state.step)
            parts.model = wrap(parts.raw, cfg, env)
        ds.set_epoch(data.train, cfg.seed, epoch)
        data.train.sampler.skip = state.batches_done * data.batch_size  # > 0 only when resuming a preempted epoch
        loader, lines = epoch_progress(cfg, env, data, state, tracker)
        memory.reset_peak(env.device)
        try:
            tr = engine.train_one_epoch(parts.model, loader, parts.optimizer, parts.scheduler, parts.loss_fn,
                                        parts.ctx, step=state.step, scaler=parts.scaler, ema=parts.ema,
                                        mixup=parts.mixup, on_log=lines)
        except torch.OutOfMemoryError:
            if env.is_main:
                with open(run_dir / "train.log", "a") as f:
                    f.write(traceback.format_exc())
            raise memory.OutOfMemory(memory.oom_message(
                env.device, data.batch_size, f"in epoch {epoch + 1} after step {state.step}")) from None
        state.step = tr["step"]
        state.seconds += tr["seconds"]
        state.batches_done += tr["batches"]
        if tr["interrupted"]:
            if env.is_main:
                ckpt.save_atomic(checkpoint_state(cfg, parts, state, saver), run_dir / "checkpoints" / "last.pt")
            raise SystemExit(f"stopped by signal in epoch {epoch + 1} after {state.batches_done} batches; last.pt "
                             f"holds that state: resume with run.resume=auto run.name={run_dir.name}")
        # The bare model: ranks may hold different numbers of validation batches, and a DDP forward
        # is a collective that every rank must join.
        eval_model = parts.ema.module if parts.ema is not None else parts.raw
        dist.sync_buffers(env, parts.raw)
        dist.sync_buffers(env, eval_model)
        logits = engine.predict_logits(eval_model, data.val, parts.ctx)
        m = engine.metrics(logits, data.val_labels)
        if parts.scheduler is not None:
            parts.scheduler.step(epoch + 1, m[cfg.train.monitor])
        row = {"epoch": epoch + 1, "step": state.step, "train_loss": tr["loss"], **m,
               "lr": parts.optimizer.param_groups[0]["lr"], "trainable_params": parts.freezer.trainable(),
               "images_per_s": tr["images"] / max(tr["seconds"], 1e-9), "epoch_s": tr["seconds"],
               **parts.freezer.group_lrs(parts.optimizer), **memory.report(env.device)}
        per_class = engine.per_class_f1(logits, data.val_labels, len(state.classes))
        tracker.log({f"val_f1_class/{c}": float(f) for c, f in zip(state.classes, per_class)}, step=state.step)
        metric = m[cfg.train.monitor]
        is_best = saver.better(metric, state.best)
        if is_best:
            state.best, state.best_epoch, state.best_row, state.bad_epochs = metric, epoch + 1, row, 0
        else:
            state.bad_epochs += 1
        state.epoch, state.batches_done = epoch + 1, 0
        if env.is_main:
            tracker.log_epoch(row)
            saver.save(checkpoint_state(cfg, parts, state, saver), epoch + 1, metric, is_best)
            if is_best:
                write_oof(run_dir, data, logits, parts.raw)
            log.info("epoch %d/%d  train_loss %.4f  val_loss %.4f  val_acc %.4f  val_f1 %.4f%s  (%.1fs, %.0f img/s)",
                     epoch + 1, cfg.train.epochs, tr["loss"], m["val_loss"], m["val_acc"], m["val_f1"],
                     "  *best*" if is_best else "", tr["seconds"], row["images_per_s"])
        if sweep_trial.should_stop(epoch + 1, row, last=epoch + 1 >= cfg.train.epochs):  # every rank gets the pruner's answer
            state.pruned_epoch = epoch + 1
            if env.is_main:
                log.info("pruned by the sweep after epoch %d", epoch + 1)
            break
        if cfg.train.early_stop and state.bad_epochs >= cfg.train.early_stop:
            if env.is_main:
                log.info("early stop: %s has not improved for %d epochs", cfg.train.monitor, state.bad_epochs)
            break


def epoch_progress(cfg: Config, env: dist.Env, data: Data, state: TrainState, tracker):
    """The epoch's loader (a bar on a terminal) and its per-interval callback (tracker + progress lines)."""
    name = f"{state.epoch + 1}/{cfg.train.epochs}"
    loader = progress.bar(data.train, f"epoch {name}", data.batch_size, env.is_main)
    lines = progress.Lines(lambda row: tracker.log(row, step=row["step"]), epoch=name, first_step=state.step,
                           steps=math.ceil((len(data.train) - state.batches_done) / cfg.train.accum_steps),
                           images_per_step=state.batches["global_batch_size"], every_s=cfg.train.log_every_s,
                           show=env.is_main)
    return loader, lines


def write_oof(run_dir: Path, data: Data, logits: torch.Tensor, raw: torch.nn.Module) -> None:
    """Out-of-fold predictions of the best epoch: for error analysis and stacking."""
    probs = logits.softmax(1).numpy()
    df = pd.DataFrame({"path": data.val_paths, "label": data.val_labels, "pred": probs.argmax(1)})
    df = pd.concat([df, pd.DataFrame(probs, columns=[f"p{i}" for i in range(probs.shape[1])])], axis=1)
    tmp = run_dir / ".oof.csv.tmp"
    df.to_csv(tmp, index=False)
    tmp.replace(run_dir / "oof.csv")


def write_figures(run_dir: Path, classes: list[str], oof: pd.DataFrame | None) -> None:
    if (run_dir / "metrics.csv").is_file():
        plots.learning_curves(run_dir / "metrics.csv", run_dir / "learning_curves.png")
    if oof is not None:
        y, pred = oof["label"].to_numpy(), oof["pred"].to_numpy()
        plots.confusion(y, pred, classes, run_dir / "confusion_matrix.png")
        plots.per_class_f1(y, pred, classes, run_dir / "per_class_f1.png")
        plots.worst_predictions(oof, classes, run_dir / "worst_predictions.png")


def finish(cfg: Config, env: dist.Env, state: TrainState, run_dir: Path, tracker) -> dict:
    best = state.best_row or {}
    summary = {
        "run": run_dir.name, "status": "pruned" if state.pruned_epoch else "finished",
        "pruned_epoch": state.pruned_epoch or None, "metric_name": cfg.train.monitor, "best_metric": state.best,
        "best_epoch": state.best_epoch, "val_f1": best.get("val_f1"), "val_acc": best.get("val_acc"),
        "val_loss": best.get("val_loss"), "epochs_done": state.epoch, "train_seconds": round(state.seconds, 1),
        "model": cfg.model.name, "img_size": list(img_hw(cfg)), "fold": cfg.split.fold, "split_hash": state.split_hash,
        **(state.batches or {}), "wandb_id": state.wandb_id, "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if env.is_main:
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        tracker.summary({k: v for k, v in summary.items() if v is not None})
        oof = pd.read_csv(run_dir / "oof.csv") if (run_dir / "oof.csv").is_file() else None
        write_figures(run_dir, state.classes, oof)
        if oof is not None:
            tracker.log_final(run_dir, oof, state.classes, cfg.log.wandb.log_model)
        tracker.finish()
        log.info("done: best %s %.4f at epoch %d -> %s", cfg.train.monitor, state.best or float("nan"),
                 state.best_epoch, run_dir)
    return summary
