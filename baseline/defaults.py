"""Defaults that depend on the data and the device: `data.img_size=auto`, `train.batch_size=data`,
`data.num_workers=auto`, `train.channels_last=auto`, `data.age_edges=auto` and `train.sampler=auto`. Each
is resolved once, before anything is built, logged with its reason, and saved resolved in the run's
config.yaml and checkpoints.
"""

from __future__ import annotations

import copy
import logging
import math

import numpy as np
import torch

from .config import Config
from .data.competition import OFFICIAL_EDGES
from .data.dataset import header_size
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
    all three contest-like sets, the held-out one included (README, "Contest benchmark"). The reason, too."""
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
    return [header_size(p) for p in picked]


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


def resolve(cfg: Config, paths: list[str], n_train: int, device: torch.device, world: int, cores: int,
            logger: logging.Logger | None = log, notes: list[str] | None = None,
            ages: np.ndarray | None = None) -> Config:
    """A copy of `cfg` with every data-aware default made concrete; each choice told to `logger` and
    appended to `notes` (for the run's train.log, which does not exist yet). `ages`: one per person
    (mask layout)."""
    cfg = copy.deepcopy(cfg)
    reasons = contest_defaults(cfg, ages)
    if cfg.model.pretrained == "auto":
        cfg.model.pretrained = pretrained_source(cfg.model)
        reasons.append(f"model.pretrained={cfg.model.pretrained}: " + (
            "the real ImageNet weights the lock ships for this model" if cfg.model.pretrained else
            f"no weights ship with the kit for {cfg.model.name} (true: the hub; or a weights file)"))
    if cfg.data.img_size == "auto":
        reasons.append(resolve_img_size(cfg, paths, device))
    if cfg.train.batch_size == "data":
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
    if cfg.train.channels_last == "auto":
        reasons.append(resolve_channels_last(cfg, device))
    if cfg.data.num_workers == "auto":
        cfg.data.num_workers = workers_for(device, cores)
        reasons.append(f"data.num_workers={cfg.data.num_workers} on {device.type} ({cores} core(s) per process)")
    for r in reasons if logger else []:
        logger.info("default: %s", r)
    if notes is not None:
        notes += [f"default: {r}" for r in reasons]
    return cfg
