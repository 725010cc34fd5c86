"""Every `auto` of a run, resolved once, before anything is built, from the facts it needs: the data (image
sizes, the training part's size and ages), the weights, the device, the processes and the cores, W&B's key.
Each choice is logged with its reason and saved resolved in the run's config.yaml and checkpoints.
(`train.batch_size=auto`, the largest batch that fits, needs the built model: session.settle_batch_size.)
"""

from __future__ import annotations

import copy
import logging
import math
import netrc
import os

import numpy as np
import torch

from . import cpus
from .config import Config, ConfigError, WandbCfg, img_hw
from .data import dataset as ds
from .data.competition import OFFICIAL_EDGES
from .errors import TrackingError
from .models import bare, is_custom, pretrained_source, shapes_only, wants_channels_last, weights_norm

log = logging.getLogger("baseline")

MIN_STEPS = 30  # optimizer steps per epoch that the batch should leave, where the data allows
# train.batch_size=data stays in 32..cap: below 32 a step costs nearly as much as at 32; on the CPU an
# image costs as much at 64 as at 32 (resnet18 at 72x56: about 80-85 img/s at either), so
# larger batches only take optimizer steps away.
# On a GPU the cap is high and memory decides (session.fit_data_batch halves it until a probe step fits).
MIN_BATCH, MAX_BATCH = 32, {"cpu": 32, "cuda": 256}
TINY = 320  # fewer training images than this: batch 16, else an epoch is under 10 steps
SIDE = {"cpu": 64, "cuda": 224}  # img_size=auto aims at about SIDE x SIDE pixels on this device
SAMPLE = 200  # images whose headers img_size=auto reads


def _round8(v: float) -> int:
    return max(32, int(round(v / 8)) * 8)


def img_size_for(sizes: list[tuple[int, int]], side: int, upsample: bool = False) -> tuple[int, int]:
    """[h, w] with the median aspect ratio of `sizes` ((w, h) pairs), about side*side pixels, never
    upsampling past the median image unless `upsample` (pretrained weights: their features need the
    resolution they were trained near, so 8x8 scans go in at side x side). At least 32, multiples of 8."""
    w, h = np.median(np.array(sizes, dtype=float), axis=0)
    area = side * side if upsample else min(side * side, w * h)
    th = math.sqrt(area * h / w)
    return _round8(th), _round8(area / th)


def batch_for(n_train: int, world: int, device: torch.device) -> int:
    """Largest power of two from MIN_BATCH up to the device's cap that still leaves MIN_STEPS optimizer
    steps per epoch; 16 for a tiny data set; never more than a process has images."""
    per_process = n_train // world
    if per_process < TINY:
        return max(1, min(16, per_process))
    bs = 2 ** math.floor(math.log2(max(per_process / MIN_STEPS, 1)))
    return int(min(max(bs, MIN_BATCH), MAX_BATCH["cuda" if device.type == "cuda" else "cpu"]))


def workers_for(device: torch.device, cores: int) -> int:
    """Loader workers per process from `cores`, this process's share of the machine (cores / local processes).
    On the CPU the workers take cores from the model; images are decoded once and cached, so the main
    process can augment them. On a GPU they keep the device fed, one core left to the main process."""
    return 0 if device.type != "cuda" else max(1, min(8, cores - 1))


CONTEST_SHARE = 0.9  # the >=60 people at exactly 60 that make a data set contest-shaped
# fewer people aged 60+ than this say nothing about the shape. Not more: a 120-person contest-like set has
# 7 people aged 60, a fold's training part 4-5, and a threshold of 5 flipped the recipe between folds of
# one cv, and between a cv and the same cv after `data audit --corrections` moved one 60 to 57 (eval
# macro-F1 0.725 -> 0.556 on contest_a, seed 0, from the recipe alone)
CONTEST_MIN_OLD = 2
CONTEST_EDGES = (30, 58)


def contest_shaped(ages: np.ndarray | None) -> tuple[bool, str]:
    """Whether the people's ages have the mask contest's shape: the >=60 bucket is (almost) one age, 60,
    so 57-59 look like it and it is rare. There the age edge at 58 and balanced sampling, together, won on
    all three contest-like sets, the held-out one included (docs/benchmarks.md, "Contest techniques"). The
    reason, too."""
    if ages is None or not len(ages):
        return False, "no ages (not the mask layout)"
    old = ages[ages >= 60]
    if len(old) < CONTEST_MIN_OLD:
        return False, f"{len(old)} people aged 60+, too few to tell the data's shape"
    share = float((old == 60).mean())
    return share >= CONTEST_SHARE, f"{share:.0%} of the {len(old)} people aged 60+ are exactly 60"


def contest_defaults(cfg: Config, ages: np.ndarray | None) -> list[str]:
    """Resolve data.age_edges=auto and train.sampler=auto in place from the people's `ages`; the reasons."""
    if "auto" not in (cfg.data.age_edges, cfg.train.sampler):
        return []
    shaped, why = contest_shaped(ages if cfg.data.format == "mask" else None)
    reasons = []
    if cfg.data.age_edges == "auto":
        cfg.data.age_edges = list(CONTEST_EDGES if shaped else OFFICIAL_EDGES)
        reasons.append(f"data.age_edges={cfg.data.age_edges}: {why}" + (
            " (the contest's shape: 58+ train as >=60; validation and the submission stay official)" if shaped
            else ""))
    if cfg.train.sampler == "auto":
        cfg.train.sampler = "balanced" if shaped else "shuffle"
        reasons.append(f"train.sampler={cfg.train.sampler}" + (
            f" (power {cfg.train.sampler_power}): contest-shaped data ({why})" if shaped else f": {why}"))
    return reasons


def image_sizes(paths: list[str], n: int = SAMPLE) -> list[tuple[int, int]]:
    """(w, h) of an evenly spaced sample of `paths`, from the headers (EXIF rotation counted)."""
    picked = paths if len(paths) <= n else [paths[i] for i in np.linspace(0, len(paths) - 1, n).astype(int)]
    return [ds.header_size(p) for p in picked]


def resolve_img_size(cfg: Config, paths: list[str], device: torch.device) -> str:
    """data.img_size=auto in place, from the images' headers; the reason."""
    sizes = image_sizes(paths)
    side = SIDE["cuda" if device.type == "cuda" else "cpu"]
    cfg.data.img_size = list(img_size_for(sizes, side, upsample=bool(cfg.model.pretrained)))
    w, h = np.median(np.array(sizes), axis=0)
    return (f"data.img_size={cfg.data.img_size} from the data's {w:.0f}x{h:.0f} (w x h, median) images, about "
            f"{side}x{side} pixels on {device.type}"
            + (" (smaller images upsampled: pretrained weights)" if cfg.model.pretrained else ""))


def resolve_channels_last(cfg: Config, device: torch.device) -> str:
    """train.channels_last=auto in place, from the model's layers (on the meta device: no memory); the reason."""
    probe = bare(cfg.model, 2) if is_custom(cfg.model.name) else shapes_only(cfg.model, 2)
    cfg.train.channels_last = wants_channels_last(probe, device)
    return f"train.channels_last={str(cfg.train.channels_last).lower()}: " + (
        "on a GPU" if device.type == "cuda" else
        f"{cfg.model.name} is a conv net (NHWC is 1.04-1.73x faster on the CPU)" if cfg.train.channels_last
        else f"{cfg.model.name} is no conv net (NHWC measured slower for a ViT on the CPU)")


def resolve(cfg: Config, paths: list[str], n_train: int, device: torch.device, world: int, cores: int | cpus.Share,
            logger: logging.Logger | None = log, notes: list[str] | None = None,
            ages: np.ndarray | None = None, data: bool = True) -> Config:
    """A copy of `cfg` with every default made concrete; each choice told to `logger` and appended to
    `notes` (for the run's train.log, which does not exist yet). `cores`: this process's cores, or its
    share of the machine (cpus.watch); `ages`: one per person (mask layout); `data=False`: no data to read,
    only the keys that need none (`baseline config` without the data)."""
    cfg = copy.deepcopy(cfg)
    share = cores if isinstance(cores, cpus.Share) else cpus.Share(cores, 0.0, 1)
    reasons = (contest_defaults(cfg, ages) if data else []) + data_defaults(cfg, paths, n_train, device, world)
    reasons += machine_defaults(cfg, len(paths), device, share)
    for r in reasons if logger else []:
        logger.info("default: %s", r)
    if notes is not None:
        notes += [f"default: {r}" for r in reasons]
    return cfg


def data_defaults(cfg: Config, paths: list[str], n_train: int, device: torch.device, world: int) -> list[str]:
    """The weights, image size, batch, normalisation and freeze preset, in place; the reasons."""
    reasons = []
    if cfg.model.pretrained == "auto":
        cfg.model.pretrained = pretrained_source(cfg.model)
        reasons.append(f"model.pretrained={cfg.model.pretrained}: " + (
            "the real ImageNet weights the lock ships for this model" if cfg.model.pretrained else
            f"no weights ship with the kit for {cfg.model.name} (true: the hub; or a weights file)"))
    if cfg.data.img_size == "auto" and paths:
        reasons.append(resolve_img_size(cfg, paths, device))
    if cfg.train.batch_size == "data" and n_train:
        cfg.train.batch_size = batch_for(n_train, world, device)
        reasons.append(f"train.batch_size={cfg.train.batch_size} because {n_train} training images "
                       f"({n_train // (cfg.train.batch_size * world)} steps per epoch)")
    norm = weights_norm(cfg.model) if "auto" in (cfg.data.mean, cfg.data.std, cfg.data.interpolation) else {}
    for key in ("mean", "std"):
        if getattr(cfg.data, key) == "auto":
            setattr(cfg.data, key, [float(v) for v in norm[key]])
            reasons.append(f"data.{key}={getattr(cfg.data, key)}: what {cfg.model.name}'s weights were trained with")
    if cfg.data.interpolation == "auto":
        cfg.data.interpolation = norm["interpolation"] if cfg.model.pretrained else "bilinear"
        reasons.append(f"data.interpolation={cfg.data.interpolation}: " + (
            "the resize filter the weights were trained with" if cfg.model.pretrained else "from scratch"))
    if cfg.freeze.preset == "auto" and not cfg.freeze.schedule:
        from .freeze import preset_for

        cfg.freeze.preset = preset_for(cfg)
        reasons.append(f"freeze.preset={cfg.freeze.preset}: " + (
            "pretrained weights (one head-only epoch, then everything)" if cfg.freeze.preset == "fine_tune"
            else "from scratch" if not cfg.model.pretrained else "the module names no head"))
    return reasons


def amp_for(device: torch.device) -> str:
    """train.amp=auto: bf16 on a GPU, off on the CPU."""
    return "bf16" if device.type == "cuda" else "off"


def machine_defaults(cfg: Config, n_images: int, device: torch.device, share: cpus.Share) -> list[str]:
    """The keys this machine decides (schema.setting(machine=True)), in place; the reasons."""
    reasons = []
    if cfg.train.device == "auto":
        cfg.train.device = device.type  # each process picks its own GPU (dist.pick_device)
        reasons.append(f"train.device={cfg.train.device}" + (": no GPU here" if device.type == "cpu" else ""))
    if cfg.train.amp == "auto":
        cfg.train.amp = amp_for(device)
        reasons.append(f"train.amp={cfg.train.amp} on {device.type}")
    if cfg.train.channels_last == "auto":
        reasons.append(resolve_channels_last(cfg, device))
    if cfg.train.async_save == "auto":
        cfg.train.async_save = device.type == "cuda"
        reasons.append(f"train.async_save={str(cfg.train.async_save).lower()} on {device.type}")
    if cfg.data.num_workers == "auto":
        cfg.data.num_workers = workers_for(device, share.per_process())
        reasons.append(f"data.num_workers={cfg.data.num_workers} on {device.type} ({share.per_process()} core(s) "
                       "per process)")
    if cfg.train.threads == "auto":
        cfg.train.threads = share.threads(cfg.data.num_workers)
        reasons.append(f"train.threads={cfg.train.threads}: {share.cores} usable core(s), {share.busy:.1f} busy with "
                       f"other processes, {share.local_world} process(es) of this run here, "
                       f"{cfg.data.num_workers} loader worker(s) each")
    if cfg.data.cache == "auto" and cfg.data.img_size != "auto":
        cfg.data.cache = ds.cache_mode("auto", n_images, img_hw(cfg), cfg.data.cache_ram_gb)
        reasons.append(f"data.cache={cfg.data.cache}: {n_images} images at {img_hw(cfg)} are "
                       f"{'under' if cfg.data.cache == 'ram' else 'over'} data.cache_ram_gb={cfg.data.cache_ram_gb}")
    if cfg.log.wandb.mode == "auto":
        cfg.log.wandb.mode = resolve_mode(cfg.log.wandb)
        reasons.append(f"log.wandb.mode={cfg.log.wandb.mode}: " + (
            "an API key is set" if cfg.log.wandb.mode == "online" else "no API key (wandb sync later)"))
    return reasons


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        rc = netrc.netrc(os.path.expanduser("~/.netrc"))
    except (OSError, netrc.NetrcParseError):
        return False
    return any("wandb" in host for host in rc.hosts)


def resolve_mode(cfg: WandbCfg) -> str:
    """auto: online with a usable API key, offline without one. A key that cannot be one (wandb's own
    format check) is refused at once, before W&B spends seconds retrying it."""
    if cfg.mode == "offline" or cfg.mode == "disabled":
        return cfg.mode
    from wandb.sdk.lib.wbauth.validation import check_api_key

    key = os.environ.get("WANDB_API_KEY") or None
    problem = check_api_key(key) if key else None
    if problem:
        raise TrackingError(f"WANDB_API_KEY is not usable ({problem}) Fix it, or run without W&B's server: "
                            "log.wandb.mode=offline (sync later) or log.wandb.mode=disabled")
    if cfg.mode == "online":
        return "online"
    return "online" if has_api_key() else "offline"


def preview(cfg: Config) -> tuple[Config, str]:
    """What a run of `cfg` on this machine would resolve every `auto` to (`baseline config`), reading the data's
    table and split file, writing nothing; with no data (or a broken one), the keys that need none, and why."""
    from .data.layouts import DataError, read_table
    from .data.split import read_folds_hashed, split_path
    from .dist import pick_device

    device, share = pick_device(cfg.train.device, 0), cpus.Share(cpus.usable_cores(), 0.0, 1)
    try:
        table = read_table(cfg)
    except (DataError, ConfigError) as e:
        return resolve(cfg, [], 0, device, 1, share, None, data=False), f"(the data's defaults need the data: {e})"
    path = split_path(cfg)
    fold = (read_folds_hashed(cfg, table, path)[0] if path.is_file() else
            np.arange(len(table.df)) % cfg.split.folds)  # no split file yet: its fold sizes, about
    part = table.df[fold != cfg.split.fold]
    ages = part.drop_duplicates("group")["age"].dropna().to_numpy() if "age" in part.columns else None
    out = resolve(cfg, table.df["path"].tolist(), len(part), device, 1, share, None, ages=ages)
    return out, "" if path.is_file() else f"(no split file {path} yet: the training part's size and ages estimated)"
