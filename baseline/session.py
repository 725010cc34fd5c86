"""A run's assembly, shared by `train`, `cv`, `lr-find`, `bench` and `recipe`: the data (table, split,
decoded images, datasets, loaders), the defaults resolved from it, the batch size, and the learner
(model, optimizer, loss, mixup)."""

from __future__ import annotations

import logging
import random
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import timm
import timm.data
import timm.loss
import timm.scheduler
import timm.utils
import torch

from . import checkpoint as ckpt
from . import cpus, defaults, dist, engine, freeze, losses, memory, models, rundir
from .config import Config, ConfigError, age_edges, img_hw
from .data import crops, store
from .data import dataset as ds
from .data.batch_aug import BatchAug
from .data.competition import OFFICIAL_EDGES, field_classes, field_of
from .data.competition import label as age_label
from .data.layouts import Table, read_table
from .data.split import Hashes, load_or_write_folds, read_folds_hashed, split_path
from .data.transforms import train_transform

log = logging.getLogger("baseline")


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
    defaults.resolve_mode(cfg.log.wandb)  # a W&B key that cannot work: before anything is read


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
    """Every `auto` but train.batch_size=auto, from the data, the device and this process's `share` of the
    machine (logged on rank 0): defaults.resolve."""
    n_train = int((fold != cfg.split.fold).sum())
    logger = log if env.is_main else None
    share = share or cpus.Share(cpus.usable_cores(), 0.0, env.local_world)
    # the training part's people decide age_edges=auto and sampler=auto: validation stays unseen
    part = table.df[fold != cfg.split.fold]
    ages = part.drop_duplicates("group")["age"].dropna().to_numpy() if "age" in part.columns else None
    return defaults.resolve(cfg, table.df["path"].tolist(), n_train, env.device, env.world_size, share, logger, notes,
                            ages=ages)


def filter_of(cfg: Config) -> str:
    """The resize filter: as resolved by defaults.resolve, bilinear where that was skipped."""
    return "bilinear" if cfg.data.interpolation == "auto" else cfg.data.interpolation


@dataclass
class Images:
    """The table's images as training reads them: the decode-once cache (None with data.cache=off) and the
    crop box of each path (None: whole photos)."""

    cache: np.ndarray | None
    boxes: dict[str, ds.Box] | None = None


def crop_boxes(cfg: Config, paths: list[str], env: dist.Env) -> dict[str, ds.Box] | None:
    """data.crop's box per image; a machine's local rank 0 detects faces first, the others read its file."""
    if cfg.data.crop == "none":
        return None
    disk = store.beside_data(cfg, ".cache", written=True)
    return dist.local_first(env, lambda: crops.boxes_for(cfg.data.crop, cfg.data.crop_margin, paths, disk,
                                                         cfg.data.max_pixels, say=env.is_main))


def decode_images(cfg: Config, table: Table, env: dist.Env | None = None) -> Images:
    """The images decoded once (cropped first with data.crop); a broken image is a DataError here. Several
    processes on one machine decode once: its local rank 0 writes the cache (RAM: a file in shared memory,
    removed once every process has mapped it; disk: the cache file), the others map it read-only."""
    env = env or dist.Env()
    paths, hw, interp = table.df["path"].tolist(), img_hw(cfg), filter_of(cfg)
    boxes = crop_boxes(cfg, paths, env)
    mode = ds.cache_mode(cfg.data.cache, len(paths), hw, cfg.data.cache_ram_gb)
    disk = store.beside_data(cfg, ".cache", written=True)
    if not env.distributed or mode == "off":
        return Images(ds.build_cache(paths, hw, mode, disk, cfg.data.cache_ram_gb, cfg.data.max_pixels, interp,
                                     boxes), boxes)
    token = dist.broadcast_object(env, uuid.uuid4().hex[:8])

    def write() -> tuple[str, bool]:
        shared = ds.shared_cache_file(paths, hw, token, interp, boxes=boxes) if mode == "ram" else None
        if mode == "ram" and shared is None:
            log.warning("shared memory (%s) is too small for the decode cache: using a disk cache in %s "
                        "(in Docker: --shm-size or --ipc=host)", ds.SHARED_DIR, disk)
        file = shared or disk / f"{ds.cache_key(paths, hw, interp, boxes)}.npy"
        return str(ds.write_cache_file(paths, hw, file, cfg.data.max_pixels, interp, boxes)), shared is not None

    file, temporary = dist.local_first(env, write)
    try:
        cache = np.load(file, mmap_mode="r")
        dist.barrier(env)  # every process has mapped it: the memory is freed when the last one lets go
    finally:
        if temporary and env.is_local_main:
            Path(file).unlink(missing_ok=True)
    return Images(cache, boxes)


def training_part(cfg: Config, table: Table, fold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The training rows (table indices) and the labels they train with: the table's own, or on the
    competition layout those of data.age_edges, without the ages in data.drop_ages. The validation fold
    keeps the official labels (build_datasets), so metrics, OOF and the submission stay comparable."""
    tr = np.flatnonzero(fold != cfg.split.fold)
    labels = table.df["label"].to_numpy()
    edges, drop = age_edges(cfg), cfg.data.drop_ages
    if edges == OFFICIAL_EDGES and not drop:
        return tr, task_labels(cfg, labels[tr])
    part = table.df.iloc[tr]
    keep = ~part["age"].isin(drop).to_numpy()
    tr, part = tr[keep], part[keep]
    y = np.array([label if np.isnan(a) else age_label(int(m), int(g), a, edges)  # pseudo rows: no age, as labelled
                  for label, m, g, a in zip(part["label"], part["mask"], part["gender"], part["age"].astype(float))])
    return tr, task_labels(cfg, y)


def task_labels(cfg: Config, labels: np.ndarray) -> np.ndarray:
    """The table's labels as model.task learns them: as they are, or one field of the 18 classes."""
    return labels if cfg.model.task == "all" else field_of(labels, cfg.model.task)


def for_task(cfg: Config, table: Table) -> Table:
    """The table with model.task's classes (its rows keep the 18-class labels: training_part and
    build_datasets take the field)."""
    return table if cfg.model.task == "all" else Table(table.df, field_classes(cfg.model.task))


def build_datasets(cfg: Config, table: Table, fold: np.ndarray, images: Images):
    """(train, val) datasets of the configured fold, served from the decode-once cache."""
    hw = img_hw(cfg)
    df, labels = table.df, table.df["label"].to_numpy()
    tr, train_labels = training_part(cfg, table, fold)
    va = np.flatnonzero(fold == cfg.split.fold)
    per_item = None if cfg.aug.on_device else train_transform(cfg.aug, hw)  # else BatchAug in the step
    train_ds = ds.ImageDataset(df["path"].iloc[tr], train_labels.tolist(), hw, per_item, images.cache,
                               cfg.data.max_pixels, filter_of(cfg), rows=tr, boxes=images.boxes)
    val_ds = ds.ImageDataset(df["path"].iloc[va], task_labels(cfg, labels[va]).tolist(), hw, None, images.cache,
                             cfg.data.max_pixels,
                             filter_of(cfg), rows=va, boxes=images.boxes)
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


def trained_batch(cfg: Config, saved: ckpt.Checkpoint) -> Config:
    """A resume of train.batch_size=data or auto keeps the batch its checkpoint trained with (a new probe
    may find another, and the schedule's steps and the mid-epoch skip would no longer match)."""
    batch = saved.config["train"]["batch_size"]
    if not isinstance(batch, int):  # a checkpoint from before config.yaml held the resolved batch
        batch = int((saved.batch_sizes or {})["batch_size_per_process"])
    return replace(cfg, train=replace(cfg.train, batch_size=batch))


def fit_data_batch(cfg: Config, env: dist.Env, n_cls: int, notes: list[str]) -> Config:
    """train.batch_size=data on a GPU: halved until a probe step of this model fits in the GPU's memory
    (the data's choice goes up to 256)."""
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


def settle_batch_size(cfg: Config, env: dist.Env, learner: engine.Learner, n_cls: int, n_train: int) -> int:
    """train.batch_size as a number: as given, or (auto) the largest that fits, found before any
    loader exists (a resume took its checkpoint's: trained_batch)."""
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


def amp_mode(cfg: Config, device: torch.device) -> str:
    """train.amp as used on `device` (resolved by defaults.resolve; auto where a caller skipped it)."""
    return defaults.amp_for(device) if cfg.train.amp == "auto" else cfg.train.amp


def amp_dtype(cfg: Config, device: torch.device) -> torch.dtype | None:
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp_mode(cfg, device)]


def build_learner(cfg: Config, env: dist.Env, table: Table, stop, initial_weights: bool = True,
                  train_labels: np.ndarray | None = None) -> engine.Learner:
    """Model, freezer (in its first phase), step context, loss, mixup, EMA and scaler; phases.Phases adds
    the optimizer, scheduler and training view once the loaders exist. A resume loads no initial weights (a run folder
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
    labels = task_labels(cfg, table.df["label"].to_numpy()) if train_labels is None else train_labels
    return engine.Learner(
        model, ctx, build_loss(cfg, labels, n_cls, env.device), freezer, mixup=build_mixup(cfg, n_cls),
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
