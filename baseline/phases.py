"""The freeze phases' lifecycle: which parameters train in each phase, with which LR schedule and
optimizer, in which compiled / DDP view."""

from __future__ import annotations

import logging
import math

import timm
import timm.data
import timm.loss
import timm.scheduler
import timm.utils
import torch

from . import dist, engine
from .config import Config

log = logging.getLogger("baseline")


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
