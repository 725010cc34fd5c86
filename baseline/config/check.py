"""The rules a config must follow that its types alone cannot say: ranges (from the fields' metadata) and
rules across keys. Broken, they are one line naming the key, before anything runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .schema import Config, walk


def _validate_recipe(cfg: Config) -> None:
    """The contest switches: lr-find's range, same-class CutMix, weight averaging, age edges."""
    if not 0 < cfg.lrfind.start < cfg.lrfind.end or cfg.lrfind.steps < 5:
        raise ConfigError(f"config keys 'lrfind.*': expected 0 < start < end and steps >= 5, got start="
                          f"{cfg.lrfind.start} end={cfg.lrfind.end} steps={cfg.lrfind.steps}")
    if cfg.train.cutmix_same_class and (cfg.train.mixup or cfg.train.cutmix):
        raise ConfigError("train.cutmix_same_class keeps labels exact; with train.mixup / train.cutmix (soft, mixed "
                          "labels) the two would fight: choose one")
    if cfg.train.avg_top_k and not 2 <= cfg.train.avg_top_k <= cfg.train.keep_top_k:
        raise ConfigError("config key 'train.avg_top_k': averages of the best N epochs need 2 <= N <= "
                          f"train.keep_top_k (the epochs kept on disk), got {cfg.train.avg_top_k} with "
                          f"train.keep_top_k={cfg.train.keep_top_k}; e.g. train.keep_top_k=3 train.avg_top_k=3")
    edges, drop = cfg.data.age_edges, cfg.data.drop_ages  # auto resolves to valid edges (defaults.py)
    if edges != "auto" and (len(edges) != 2 or not 0 < edges[0] < edges[1] <= 120):
        raise ConfigError(f"config key 'data.age_edges': expected two ages [a, b] with 0 < a < b <= 120 (where the "
                          f"middle and the oldest bucket start; official [30, 60]), got {edges!r}")
    if (edges not in ("auto", [30, 60]) or drop) and cfg.data.format != "mask":
        raise ConfigError("config keys 'data.age_edges' / 'data.drop_ages' are for the mask layout (people with an "
                          f"age); data.format={cfg.data.format} has none")
    m = cfg.pseudo.mask
    if m and (len(m) != 3 or not all(0 <= v <= 1 for v in m)):
        raise ConfigError(f"config key 'pseudo.mask': expected [] or three probabilities (worn, incorrect, not worn), "
                          f"got {m!r}")
    if (m or cfg.pseudo.gender or cfg.pseudo.age) and cfg.data.format != "mask":
        raise ConfigError("config keys 'pseudo.gender' / 'pseudo.age' / 'pseudo.mask' are for the mask layout's 18 "
                          f"classes; data.format={cfg.data.format} has none: use pseudo.threshold")
    if any(not 0 <= a <= 120 for a in drop):
        raise ConfigError(f"config key 'data.drop_ages': expected ages in 0..120, got {drop!r}")


def validate(cfg: Config) -> None:
    """Cross-field rules that types alone cannot say."""
    _validate_recipe(cfg)
    size = cfg.data.img_size
    if isinstance(size, list) and len(size) != 2:
        raise ConfigError(f"config key 'data.img_size': expected an int or [h, w], got {size!r}")
    name = cfg.run.name
    if name and (name in (".", "..") or "/" in name or "\\" in name or Path(name).is_absolute()):
        raise ConfigError(f"config key 'run.name': expected a folder name inside run.dir (no '/', '..' or absolute "
                          f"path: `baseline runs` and submit's newest run look only there), got {name!r}; set "
                          "run.dir to keep runs elsewhere")
    for key in ("mean", "std"):
        v = getattr(cfg.data, key)
        if isinstance(v, list) and (len(v) != 3 or (key == "std" and min(v) <= 0)):
            raise ConfigError(f"config key 'data.{key}': expected auto or three numbers (R, G, B)"
                              f"{', each > 0' if key == 'std' else ''}, got {v!r}")
    if cfg.split.folds < 2:
        raise ConfigError(f"config key 'split.folds': expected at least 2, got {cfg.split.folds}")
    if not -1 <= cfg.split.fold < cfg.split.folds:
        raise ConfigError(f"config key 'split.fold': expected 0..{cfg.split.folds - 1} (or -1: train on every fold, "
                          f"no validation, as `baseline refit` does), got {cfg.split.fold}")
    if cfg.split.fold == -1 and (cfg.sched.name == "plateau" or cfg.train.early_stop or cfg.train.avg_top_k):
        raise ConfigError("split.fold=-1 (a refit on every fold) has no validation to steer sched.name=plateau, "
                          "train.early_stop or train.avg_top_k; use a fixed schedule and epoch count")
    if cfg.optim.layer_decay > 0 and cfg.sched.name == "none":
        raise ConfigError("config key 'optim.layer_decay' needs a scheduler (timm's schedulers apply the "
                          "per-layer scales); set sched.name=cosine|step|plateau")
    if isinstance(size, int):
        size = [size, size]
    if isinstance(size, list) and min(size) < 8:
        raise ConfigError(f"config key 'data.img_size': expected sides of at least 8 pixels, got {cfg.data.img_size!r}")
    if any(not 0.25 <= v <= 4 for v in cfg.submit.tta_scales):
        raise ConfigError(f"config key 'submit.tta_scales': expected multiples of the image size in 0.25..4, "
                          f"got {cfg.submit.tta_scales!r}")
    if cfg.model.task != "all" and (cfg.data.format != "mask" or cfg.model.head != "linear"):
        raise ConfigError(f"config key 'model.task={cfg.model.task}': a one-field model needs data.format=mask and "
                          f"model.head=linear, got data.format={cfg.data.format}, model.head={cfg.model.head}")
    check_ranges(cfg)


def check_ranges(cfg: Config) -> None:
    """Every key with a range in its field metadata (schema.setting) holds a value inside it."""
    for key, f, _ in walk(cfg):
        lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
        if lo is None and hi is None:
            continue
        value = get(cfg, key)
        if isinstance(value, str):  # 'auto' / 'data' and the like: checked by type
            continue
        if not (lo is None or value >= lo) or not (hi is None or value <= hi) or value != value:
            raise ConfigError(f"config key '{key}': expected {f.metadata['what']}, got {value!r}")


def get(cfg: Config, key: str) -> Any:
    """The value of a dotted key."""
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node
