"""The Learner bundle, train_one_epoch (AMP, accumulation with DDP no_sync, clipping, EMA) and
predict_logits (every item exactly once across ranks, in dataset order); val_metrics from the
gathered logits."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, f1_score

from . import dist
from .data.dataset import normalize
from .models import unwrap


@dataclass
class StepCtx:
    """What every step needs, fixed for a run."""

    env: dist.Env
    mean: torch.Tensor
    std: torch.Tensor
    amp_dtype: torch.dtype | None = None  # None: full precision
    channels_last: bool = False
    accum_steps: int = 1
    clip_grad: float = 0.0
    log_interval: int = 20
    stop: Callable[[int], bool] = field(default=lambda step: False)  # preemption (asked after `step`): leave
    on_train: Callable[[], None] = field(default=lambda: None)  # after model.train(): re-freeze BN stats

    @property
    def norm(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    def autocast(self):
        dev = self.env.device.type
        return torch.autocast(dev, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def batch(self, x: torch.Tensor, y: torch.Tensor, aug=None, key: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """A loader's uint8 batch on the device, augmented there (`aug`: a BatchAug, seeded by `key`) and
        normalised."""
        dev = self.env.device
        x = x.to(dev, non_blocking=True)
        x = normalize(aug(x, key) if aug is not None else x, self.mean, self.std, self.channels_last)
        return x, y.to(dev, non_blocking=True)


@dataclass
class Learner:
    """The model and everything that updates it. `phases` (phases.Phases) owns what changes at a freeze-phase
    boundary: the optimizer, the LR schedule and the training view."""

    model: torch.nn.Module  # the bare model: checkpoints, evaluation, EMA
    ctx: StepCtx
    loss_fn: torch.nn.Module
    freezer: Any  # freeze.Freezer
    mixup: Any = None  # timm Mixup
    ema: Any = None  # timm ModelEmaV3
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    batch_aug: Any = None  # aug.on_device: a batch_aug.BatchAug, else the loader augments per item
    phases: Any = None  # phases.Phases, once the loaders say how many steps an epoch has

    @property
    def optimizer(self) -> torch.optim.Optimizer:
        return self.phases.optimizer

    @property
    def train_view(self) -> torch.nn.Module:
        return self.phases.view


class SameClassCutMix:
    """With probability `p` per batch, each image's right half is replaced by the right half of another
    image of the same class in the batch (a vertical cut: two halves of one class, so the label stays
    exact). Images are paired within their class at random; one without a partner is left whole. No host
    sync: the coin is the CPU generator's, the pairing is on the device."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if torch.rand(()) >= self.p:
            return x, y
        partner = same_class_partners(y)
        half = x.shape[-1] // 2
        return torch.cat([x[..., :half], x[partner][..., half:]], dim=-1), y


def same_class_partners(y: torch.Tensor) -> torch.Tensor:
    """For each item, another item of its class (itself when it has none): a random order within each
    class, each item taking the next one's half, the last the first's (a cycle per class)."""
    n = y.shape[0]
    order = torch.argsort(y.double() * 2 + torch.rand(n, device=y.device, dtype=torch.double))
    ys, pos = y[order], torch.arange(n, device=y.device)
    new_class = torch.ones(n, dtype=torch.bool, device=y.device)
    new_class[1:] = ys[1:] != ys[:-1]
    start = torch.where(new_class, pos, torch.zeros_like(pos)).cummax(0).values  # each class's first position
    nxt = (pos + 1).clamp(max=n - 1)
    mate = torch.where((pos + 1 < n) & (ys[nxt] == ys), nxt, start)
    partner = torch.empty_like(order)
    partner[order] = order[mate]
    return partner


def train_one_epoch(learner: Learner, loader, step: int, on_log: Callable[[dict], None] | None = None) -> dict:
    """One pass over `loader`; returns mean loss, images seen, seconds, the global step, and
    whether a stop was requested. Host syncs happen only at log intervals."""
    ctx, model = learner.ctx, learner.train_view
    model.train()
    ctx.on_train()
    t0, images, n_batches, n = time.perf_counter(), 0, 0, len(loader)
    loss_sum = torch.zeros((), device=ctx.env.device)
    window, window_n = torch.zeros((), device=ctx.env.device), 0
    interrupted = False
    for i, (x, y) in enumerate(loader):
        x, y = ctx.batch(x, y, learner.batch_aug, key=step * ctx.accum_steps + i % ctx.accum_steps)
        if learner.mixup is not None:
            x, y = learner.mixup(x, y)
        last_micro = (i + 1) % ctx.accum_steps == 0 or i + 1 == n
        group = min(ctx.accum_steps, n - i // ctx.accum_steps * ctx.accum_steps)  # the last one may be short
        loss = forward_backward(learner, x, y, sync=last_micro, group=group)
        loss_sum += loss
        window += loss
        window_n, n_batches, images = window_n + 1, n_batches + 1, images + x.shape[0]
        if not last_micro:
            continue
        step = optimizer_step(learner, step)
        if on_log is not None and step % ctx.log_interval == 0:
            loss_now = dist.all_mean(ctx.env, window / window_n).item()  # every rank's, at log intervals only
            on_log({"train/loss": loss_now, "train/lr": learner.optimizer.param_groups[0]["lr"], "step": step})
            window.zero_()
            window_n = 0
        if ctx.stop(step):
            interrupted = True
            break
    # every rank's mean, not rank 0's alone (ranks run the same number of batches: the sampler drops the rest)
    return {"loss": dist.all_mean(ctx.env, loss_sum / max(n_batches, 1)).item(), "images": images * ctx.env.world_size,
            "seconds": time.perf_counter() - t0, "step": step, "batches": n_batches, "interrupted": interrupted}


def forward_backward(learner: Learner, x: torch.Tensor, y: torch.Tensor, sync: bool, group: int) -> torch.Tensor:
    """One micro-batch of an accumulation group of `group` (its loss divided by the group's own size, so
    every step averages its micro-batches); DDP all-reduces gradients only on the group's last one."""
    model, ctx, scaler = learner.train_view, learner.ctx, learner.scaler
    no_sync = contextlib.nullcontext() if sync or not hasattr(model, "no_sync") else model.no_sync()
    with no_sync:
        with ctx.autocast():
            loss = learner.loss_fn(model(x), y)
        (scaler.scale(loss) if scaler else loss).div(group).backward()
    return loss.detach()


def optimizer_step(learner: Learner, step: int) -> int:
    """Clip, step (through the fp16 scaler), schedule, EMA; the new global step."""
    opt, scaler, clip = learner.optimizer, learner.scaler, learner.ctx.clip_grad
    if clip > 0:
        if scaler:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(learner.train_view.parameters(), clip)
    if scaler:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    opt.zero_grad(set_to_none=True)
    step += 1
    learner.phases.after_step(step)
    if learner.ema is not None:
        learner.ema.update(learner.train_view, step=step)
    return step


@torch.inference_mode()
def predict_logits(model, loader, ctx: StepCtx, tta: bool = False, track=None, embed: bool = False):
    """Logits for every item of `loader`'s dataset, in dataset order, identical on every rank; with `embed`,
    also each item's `embedding`. The loader must shard with `ShardSampler` so every item is seen exactly
    once. `track`: wraps the batches (progress.track) for a long prediction."""
    model.eval()
    outs, idx, embs = [], [], []
    batches = zip(loader, _batches(loader))
    for (x, _), batch_idx in (track(batches) if track else batches):
        x, _ = ctx.batch(x, torch.zeros(0))
        with ctx.autocast():
            out = model(x).float()
            if embed:
                embs.append(embedding(model, x, out))
            if tta:
                out = (out.softmax(1) + model(torch.flip(x, dims=[3])).float().softmax(1)).div(2).log()
        outs.append(out)
        idx.append(torch.as_tensor(batch_idx, device=out.device))
    n_cls = _num_classes(model)
    local_idx = torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long, device=ctx.env.device)
    order = dist.gather_rows(ctx.env, local_idx)
    result = in_order(ctx, torch.cat(outs) if outs else torch.zeros((0, n_cls), device=ctx.env.device), order)
    if not embed:
        return result
    return result, in_order(ctx, torch.cat(embs) if embs else torch.zeros((0, 1), device=ctx.env.device), order)


def in_order(ctx: StepCtx, local: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    rows = dist.gather_rows(ctx.env, local)
    result = torch.empty_like(rows)
    result[order] = rows
    return result.cpu()


EMBED_GRID = 4  # the feature map is pooled to this many cells a side: where things are in the photo counts


def embedding(model, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """What person grouping compares (submit/people.py): the model's middle feature map (timm's
    forward_intermediates) pooled to an EMBED_GRID x EMBED_GRID grid. Its final features describe the
    class (the mask, which changes from photo to photo of one person); the middle ones still describe the
    scene and the person's look, which a person's photos share. A model without forward_intermediates
    (a team's own module): its logits."""
    m = unwrap(model)
    if not hasattr(m, "forward_intermediates") or not hasattr(m, "feature_info"):
        return logits
    mid = m.forward_intermediates(x, indices=[len(m.feature_info) // 2], intermediates_only=True, stop_early=True)[0]
    return torch.nn.functional.adaptive_avg_pool2d(mid.float(), EMBED_GRID).flatten(1)


def _num_classes(model) -> int:
    return unwrap(model).num_classes


def _batches(loader):
    ids = list(iter(loader.sampler))
    bs = loader.batch_size
    for s in range(0, len(ids), bs):
        yield ids[s: s + bs]


def val_metrics(logits: torch.Tensor, labels: np.ndarray) -> dict:
    pred = logits.argmax(1).numpy()
    return {
        "val_loss": float(F.cross_entropy(logits, torch.as_tensor(labels, dtype=torch.long))),
        "val_acc": float(accuracy_score(labels, pred)),
        "val_f1": float(f1_score(labels, pred, average="macro", zero_division=0)),
    }


def per_class_f1(logits: torch.Tensor, labels: np.ndarray, num_classes: int) -> np.ndarray:
    return f1_score(labels, logits.argmax(1).numpy(), average=None, labels=list(range(num_classes)), zero_division=0)
