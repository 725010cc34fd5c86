"""Freezing schedules on timm's own stage grouping (`group_matcher`) and freeze/unfreeze helpers.

A schedule is a list of phases, each in force from its `epoch` on:
    {epoch: 0, train: head}                                   only the classifier learns
    {epoch: 2, train: last_stages, stages: 2, lr_scale: 0.1}  + the last 2 backbone stages at lr*0.1
    {epoch: 4, train: all, lr_scale: 0.1}                     everything; backbone at lr*0.1
Frozen parts keep their BatchNorm statistics too (their BN layers stay in eval mode), unless
freeze.bn=train. The optimizer is rebuilt at each boundary with the head at lr and the backbone at
lr*lr_scale, each split into weight-decay and no-decay groups (up to four groups); parameters trained
in both phases keep their optimizer state. With optim.layer_decay > 0 timm's layer-wise groups
replace these, so a phase's lr_scale below 1 is refused there.
"""

from __future__ import annotations

import torch
from timm.models import group_modules
from timm.optim import create_optimizer_v2
from timm.utils.model import freeze as timm_freeze
from timm.utils.model import unfreeze as timm_unfreeze

from .config import Config, ConfigError

PRESETS = {
    "none": [{"epoch": 0, "train": "all", "lr_scale": 1.0}],
    # fastai's fine_tune: one epoch head-only, then everything, each phase with its own warmup and decay.
    # The backbone at the head's LR: on real ImageNet weights (tf_efficientnet_lite0, 4 epochs, seed 0)
    # lr_scale 0.1 gave 0.28 / 0.89 / 0.89 macro-F1 on faces_b / digits / shapes, 0.5 gave 0.66 / 0.98,
    # 1.0 gave 0.85 / 0.99 / 0.99 (docs/benchmarks.md, "What the freezing measurements say").
    "fine_tune": [{"epoch": 0, "train": "head"}, {"epoch": 1, "train": "all", "lr_scale": 1.0}],
}
PHASE_KEYS = {"epoch", "train", "stages", "lr_scale"}


def preset_for(cfg: Config) -> str:
    """freeze.preset=auto: fine_tune on pretrained weights (a team's own module only if it names its
    head), none from scratch."""
    if cfg.freeze.preset != "auto":
        return cfg.freeze.preset
    from . import models

    if not models.pretrained_source(cfg.model):
        return "none"

    named_head = not models.is_custom(cfg.model.name) or hasattr(models.custom_class(cfg.model.name),
                                                                  "get_classifier")
    return "fine_tune" if named_head else "none"


def resolve_schedule(cfg: Config) -> list[dict]:
    schedule = cfg.freeze.schedule or PRESETS[preset_for(cfg)]
    out = []
    for i, ph in enumerate(schedule):
        key = f"freeze.schedule[{i}]"
        unknown = set(ph) - PHASE_KEYS
        if unknown:
            raise ConfigError(f"{key}: unknown key(s) {sorted(unknown)}; allowed: {sorted(PHASE_KEYS)}")
        if ph.get("train") not in ("head", "last_stages", "all"):
            raise ConfigError(f"{key}.train: expected head | last_stages | all, got {ph.get('train')!r}")
        if not isinstance(ph.get("epoch"), int) or ph["epoch"] < 0:
            raise ConfigError(f"{key}.epoch: expected an int >= 0, got {ph.get('epoch')!r}")
        if ph["train"] == "last_stages" and (not isinstance(ph.get("stages"), int) or ph["stages"] < 1):
            raise ConfigError(f"{key}.stages: train=last_stages needs stages >= 1")
        out.append({"stages": 0, "lr_scale": 1.0, **ph})
    out.sort(key=lambda p: p["epoch"])
    if cfg.optim.layer_decay > 0 and any(p["lr_scale"] != 1.0 for p in out):
        raise ConfigError("freeze.schedule lr_scale and optim.layer_decay both set the backbone's LR; timm's "
                          "layer-wise groups would ignore lr_scale: use one of them")
    if out[0]["epoch"] != 0:
        raise ConfigError("freeze.schedule: the first phase must start at epoch 0")
    return out


def check_head(cfg: Config) -> None:
    """Before any data is read: a team's own module must name its head for a schedule that freezes."""
    from . import models

    if models.is_custom(cfg.model.name) and any(p["train"] != "all" for p in resolve_schedule(cfg)):
        split_head(models.bare(cfg.model, 2), needs_head=True, name=cfg.model.name)


class Freezer:
    """Which modules train in each phase of the schedule, and the optimizer that matches. Phases are
    addressed by their index in the schedule, so a checkpoint names the phase it was written in."""

    def __init__(self, cfg: Config, model: torch.nn.Module):
        self.cfg, self.model = cfg, model
        self.schedule = resolve_schedule(cfg)
        self.head_modules, self.stages = split_head(model, needs_head=any(p["train"] != "all" for p in self.schedule),
                                                    name=cfg.model.name)
        self.index: int | None = None

    @property
    def phase(self) -> dict | None:
        return None if self.index is None else self.schedule[self.index]

    def index_at(self, epoch: int) -> int:
        return max(i for i, p in enumerate(self.schedule) if p["epoch"] <= epoch)

    def span(self, index: int) -> tuple[int, int]:
        """[first epoch, end epoch) of a phase; the last one ends at train.epochs."""
        nxt = self.schedule[index + 1]["epoch"] if index + 1 < len(self.schedule) else self.cfg.train.epochs
        return self.schedule[index]["epoch"], max(nxt, self.schedule[index]["epoch"] + 1)

    def phase_at(self, epoch: int) -> dict:
        return self.schedule[self.index_at(epoch)]

    def backbone_trainable(self, phase: dict) -> list[str]:
        if phase["train"] == "all":
            return [m for g in self.stages for m in g]
        if phase["train"] == "last_stages":
            return [m for g in self.stages[-phase["stages"]:] for m in g]
        return []

    def enter(self, index: int) -> bool:
        """Set requires_grad for phase `index`; returns whether that changed the phase."""
        if index == self.index:
            return False
        phase = self.schedule[index]
        backbone = [m for g in self.stages for m in g]
        if backbone:
            timm_freeze(self.model, backbone, include_bn_running_stats=False)
        timm_unfreeze(self.model, self.head_modules + self.backbone_trainable(phase), include_bn_running_stats=False)
        self.index = index
        return True

    def freeze_for(self, epoch: int) -> bool:
        return self.enter(self.index_at(epoch))

    def frozen_bn_eval(self) -> None:
        """Called after model.train(): BN layers of frozen parts keep their running statistics."""
        if self.cfg.freeze.bn != "frozen_while_frozen":
            return
        trainable = set(self.head_modules + self.backbone_trainable(self.phase))
        for name, mod in self.model.named_modules():
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) and not _under(name, trainable):
                mod.eval()

    def param_groups(self) -> list[dict]:
        head = set(self.head_modules)
        groups: dict[str, list] = {"head": [], "backbone": []}
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                groups["head" if _under(name.rsplit(".", 1)[0], head) else "backbone"].append(p)
        lr = self.cfg.optim.lr
        out = [{"params": groups["head"], "lr": lr, "name": "head"}]
        if groups["backbone"]:
            out.append({"params": groups["backbone"], "lr": lr * self.phase["lr_scale"], "name": "backbone"})
        return out

    def optimizer(self) -> torch.optim.Optimizer:
        o = self.cfg.optim
        if o.layer_decay > 0:
            # timm's layer-wise decay builds its own groups from the model; only trainable params join.
            return create_optimizer_v2(self.model, opt=o.name, lr=o.lr, weight_decay=o.weight_decay,
                                       momentum=o.momentum, layer_decay=o.layer_decay, foreach=True)
        groups = []
        for g in self.param_groups():
            groups += _split_decay(g, o.weight_decay)
        # foreach: one kernel per op over all tensors; torch only picks it by itself for CUDA tensors. On
        # the CPU (resnet18) AdamW's step took 0.024 s with it and 0.030 s without, measured alone.
        return create_optimizer_v2(groups, opt=o.name, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum,
                                   foreach=True)

    def rebuild_optimizer(self, old: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """A new optimizer for the new trainable set; state carried over for parameters in both."""
        new = self.optimizer()
        for group in new.param_groups:
            for p in group["params"]:
                if p in old.state:
                    new.state[p] = old.state[p]
        return new

    def trainable_count(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    @staticmethod
    def group_lrs(optimizer: torch.optim.Optimizer, key: str = "lr") -> dict:
        out: dict[str, float] = {}
        for i, g in enumerate(optimizer.param_groups):
            out.setdefault(f"lr_{g.get('name', i)}", g.get(key, g["lr"]))
        return out


def split_head(model: torch.nn.Module, needs_head: bool, name: str) -> tuple[list[str], list[list[str]]]:
    """(head module names, backbone stages in order). timm models: timm's own coarse grouping; the
    classifier is in the last group, and the rest of that group (e.g. a final norm) trains with it. A
    team's own module: its get_classifier() is the head, its other top-level children the stages."""
    get = getattr(model, "get_classifier", None)
    head_mod = get() if callable(get) else None
    head = [n for n, m in model.named_modules() if n and head_mod is not None and m is head_mod]
    if not head:
        if needs_head:
            raise ConfigError(f"freeze: '{name}' does not say which part is its head; give the module a "
                              "get_classifier() that returns its classifier layer (timm's convention), or set "
                              "freeze.preset=none")
        return [], [[n for n, _ in model.named_children()]]
    if hasattr(model, "group_matcher"):
        groups = group_modules(model, model.group_matcher(coarse=True))
        ordered = [groups[k] for k in sorted(groups)]
        head_group = ordered[-1] if any(h in ordered[-1] for h in head) else sorted(head)
        return head_group, [g for g in ordered if g is not head_group]
    top = head[0].split(".")[0]
    return head, [[n] for n, _ in model.named_children() if n != top]


def _under(name: str, prefixes: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _split_decay(group: dict, weight_decay: float) -> list[dict]:
    """No weight decay on biases and norm weights (1-d tensors), as timm does."""
    decay = [p for p in group["params"] if p.ndim > 1]
    no_decay = [p for p in group["params"] if p.ndim <= 1]
    base = {k: v for k, v in group.items() if k != "params"}
    return [g for g in ({**base, "params": decay, "weight_decay": weight_decay},
                        {**base, "params": no_decay, "weight_decay": 0.0}) if g["params"]]
