"""The freeze phases' lifecycle (Phases): which parameters train in each phase, with which optimizer and LR
schedule, in which compiled / DDP view; what a checkpoint keeps of it."""

from __future__ import annotations

import logging
import math

import timm
import timm.data
import timm.loss
import timm.scheduler
import timm.utils
import torch

from . import dist
from .config import Config

log = logging.getLogger("baseline")


class Phases:
    """The freeze schedule's lifecycle over a run, as one object that owns what changes at a phase boundary: the
    trainable set (the freezer), the optimizer (state kept for parameters trained in the phase before), the
    phase's own LR schedule over its own epochs, and the training view (DDP registers its gradient hooks on
    the trainable parameters, so a new set needs a new view). `schedule=False`: no LR schedule (lr-find sets
    the LR itself). The same code runs whether a run was interrupted or not, so a resume is exact."""

    def __init__(self, cfg: Config, freezer, model: torch.nn.Module, env: dist.Env, steps_per_epoch: int,
                 schedule: bool = True):
        self.cfg, self.freezer, self.model, self.env = cfg, freezer, model, env
        self.steps_per_epoch, self.schedule = steps_per_epoch, schedule
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None  # a timm scheduler, or None
        self.view: torch.nn.Module | None = None  # what trains: the model under DDP and/or torch.compile
        self.start = 0  # the optimizer step the phase began at: its schedule counts from there

    def enter(self, epoch: int, step: int = 0, index: int | None = None, start_step: int | None = None) -> None:
        """The phase of `epoch` (or phase `index`, as a checkpoint names it), begun at `start_step`; nothing
        changes while the phase goes on."""
        f = self.freezer
        index = f.index_at(epoch) if index is None else index
        if not f.enter(index) and self.optimizer is not None:
            return
        self.optimizer = f.rebuild_optimizer(self.optimizer) if self.optimizer is not None else f.optimizer()
        self.start = step if start_step is None else start_step
        self.scheduler = (make_scheduler(self.cfg, self.optimizer, self.steps_per_epoch, *f.span(index))
                          if self.schedule else None)
        if self.scheduler is not None and step > self.start:
            self.scheduler.step_update(num_updates=step - self.start)
        self.view = training_view(self.model, self.cfg, self.env)
        if self.env.is_main and len(f.schedule) > 1:
            self._say(index)

    def _say(self, index: int) -> None:
        f = self.freezer
        first, end = f.span(index)
        now, peak = f.group_lrs(self.optimizer), f.group_lrs(self.optimizer, "initial_lr")
        log.info("freeze phase %d/%d (epochs %d-%d, train %s): %d trainable parameters; LR starts at %s, peaks at %s",
                 index + 1, len(f.schedule), first + 1, end, f.phase["train"], f.trainable_count(),
                 ", ".join(f"{k} {v:.2e}" for k, v in now.items()), ", ".join(f"{v:.2e}" for v in peak.values()))

    def after_step(self, step: int) -> None:
        """After optimizer step number `step` (global): the phase's own schedule, per update."""
        if self.scheduler is not None:
            self.scheduler.step_update(num_updates=step - self.start)

    def after_epoch(self, epoch: int, metric: float) -> None:
        """After epoch number `epoch` (1-based, global), with the monitored metric (plateau steps on it)."""
        if self.scheduler is not None:
            self.scheduler.step(epoch - self.freezer.phase["epoch"], metric)

    def state_dict(self) -> dict:
        """What a checkpoint keeps: the phase's name (index, start step), the optimizer, the schedule."""
        return {"phase": {"index": self.freezer.index, "start_step": self.start},
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}

    def load_state_dict(self, state: dict, epoch: int, step: int, mid_epoch: bool = False) -> None:
        """Into the phase a checkpoint (`state`: what state_dict returned) was written in, at `epoch` and `step`
        (`mid_epoch`: written on preemption, inside `epoch`), with its optimizer and schedule."""
        index = state["phase"].get("index")
        if index is None:  # a checkpoint from before phases were saved: epoch-end saves hold the last epoch's
            index = self.freezer.index_at(max(epoch - (0 if mid_epoch else 1), 0))
        self.enter(epoch, step, index=index, start_step=state["phase"].get("start_step", 0))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])


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
