"""The epoch loop inside a run folder: train, evaluate, record, checkpoint (best / last / top-k), stop
(early stop, a sweep's pruner, preemption), and the run's output files (oof.csv, figures, summary.json)."""

from __future__ import annotations

import copy
import getpass
import logging
import math
import os
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import pandas as pd
import torch

from . import checkpoint as ckpt
from . import dist, engine, files, memory, plots, progress
from . import oof as oofs
from .config import Config, img_hw, to_dict
from .data import dataset as ds
from .runfolder import AVERAGED, RunFolder
from .session import Loaders, amp_mode
from .tracking import NullTracker, Tracker

log = logging.getLogger("baseline")


class Judge(Protocol):
    """Asked after every epoch whether the run stops there (a sweep trial's pruner: sweeps/trial.py)."""

    def should_stop(self, epoch: int, row: dict, last: bool) -> bool: ...


class KeepGoing:
    """Outside a sweep: no one stops the run."""

    def should_stop(self, epoch: int, row: dict, last: bool) -> bool:
        return False


@dataclass
class TrainState:
    split_hash: str
    classes: list[str]
    epoch: int = 0  # next epoch to run
    step: int = 0  # optimizer steps so far
    best: float | None = None
    best_epoch: int = -1
    best_row: dict | None = None
    wandb_id: str = ""
    bad_epochs: int = 0
    seconds: float = 0.0
    batches_done: int = 0  # of the current epoch; > 0 only in a checkpoint written on preemption
    loss_sum: float = 0.0  # train loss summed over those batches, so a resumed epoch reports the whole epoch's mean
    batch_sizes: dict | None = None  # world size, per-process and global batch (auto may pick the batch)
    pruned_epoch: int = 0  # a sweep's pruner stopped the run after this epoch
    averaged: dict | None = None  # train.avg_top_k: the averaged weights' epochs, metrics and whether they won


RESTORED = ckpt.PROGRESS  # what a resume puts back into the TrainState


def checkpoint_state(cfg: Config, learner: engine.Learner, state: TrainState, rngs: list[dict]) -> ckpt.Checkpoint:
    """Everything a resume needs; the Saver adds its own top-k list. `rngs`: every rank's random state
    (dist.gather_objects), so each rank resumes its own stream."""
    return ckpt.Checkpoint(
        model=learner.model.state_dict(),
        model_ema=learner.ema.module.state_dict() if learner.ema is not None else None,
        **learner.phases.state_dict(),  # optimizer, scheduler, phase
        scaler=learner.scaler.state_dict() if learner.scaler is not None else None,
        progress={k: getattr(state, k) for k in RESTORED}, rng=rngs[0], rng_ranks=rngs,
        config=to_dict(cfg), classes=state.classes, split_hash=state.split_hash,
        amp=amp_mode(cfg, learner.ctx.env.device), batch_sizes=state.batch_sizes, provenance=ckpt.provenance())


def restore(learner: engine.Learner, state: TrainState, saver: ckpt.Saver, saved: ckpt.Checkpoint) -> None:
    """Continue from a checkpoint that rundir.check_resume has accepted: into the phase it was written
    in (fit then enters the next one, if due, as an uninterrupted run does)."""
    learner.phases.load_state_dict({"phase": saved.phase, "optimizer": saved.optimizer, "scheduler": saved.scheduler},
                                   saved.epoch, saved.step, mid_epoch=bool(saved.progress.get("batches_done")))
    learner.model.load_state_dict(saved.model)
    if learner.ema is not None and saved.model_ema is not None:
        learner.ema.module.load_state_dict(saved.model_ema)
    if learner.scaler is not None and saved.scaler:
        learner.scaler.load_state_dict(saved.scaler)
    for k in RESTORED:
        setattr(state, k, saved.progress.get(k, getattr(state, k)))
    saver.restore(saved.top)
    env, ranks = learner.ctx.env, saved.rng_ranks
    ckpt.set_rng_state(ranks[env.rank] if len(ranks) == env.world_size else saved.rng)
    log.info("resumed from epoch %d (step %d)", state.epoch, state.step)


class Preemption:
    """SIGTERM / SIGINT set a flag; the loop finishes its step, writes last.pt and leaves. Under DDP the
    ranks agree first (every `every` steps, at the same step on every rank): one rank's signal stops them
    all at one step, so none is left waiting in an all-reduce and last.pt holds that step."""

    def __init__(self, env: dist.Env | None = None, every: int = 1):
        self.env, self.every = env or dist.Env(), every
        self.requested = False
        self.signum = signal.SIGTERM  # which signal asked; the exit code is 128 + it, as shells expect
        self._asked = 0  # the signal this process received (0: none)

    def __call__(self, step: int) -> bool:
        if not self.env.distributed:
            return self.requested
        if step % self.every:
            return False
        agreed = dist.all_max(self.env, self._asked)  # a host sync, so only every `every` steps
        if agreed:
            self.requested, self.signum = True, signal.Signals(agreed)
        return bool(agreed)

    def _handle(self, signum, _frame) -> None:
        self._asked, self.signum = int(signum), signum
        self.requested = not self.env.distributed  # under DDP: once the ranks agree
        log.warning("received %s: finishing the current step, then saving last.pt", signal.Signals(signum).name)

    def __enter__(self) -> Preemption:
        self._old = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


@dataclass
class Run:
    """One training run, as fit and its steps see it."""

    cfg: Config
    env: dist.Env
    learner: engine.Learner
    loaders: Loaders
    state: TrainState
    tracker: Tracker | NullTracker
    saver: ckpt.Saver
    dir: Path
    sweep_trial: Judge
    epoch_started: float = 0.0  # perf_counter at the start of the current epoch
    epoch_wall: float = 0.0  # seconds the last epoch took, evaluation and checkpoints included
    epoch_extra: float = 0.0  # of those, outside the training steps


def fit(run: Run) -> None:
    """Epochs until train.epochs, an early stop, the sweep's pruner, or a preemption signal."""
    log_start(run)
    try:
        epochs(run)
    except BaseException:
        # a checkpoint still being written ends first (or removes its temporary); its own error, if it had
        # one (a full disk it filled), is the one said
        run.saver.wait()
        raise
    run.saver.wait()  # every checkpoint on disk (and a failed write said) before anything reads them
    if run.cfg.train.avg_top_k and not run.state.pruned_epoch:
        average_best(run)


def average_best(run: Run) -> None:
    """The mean of the best train.avg_top_k epochs' weights, evaluated like an epoch: averaged.pt, and
    best.pt and oof.csv if it beats the best epoch (the run's summary says which won)."""
    cfg, state, learner = run.cfg, run.state, run.learner
    names = [t[1] for t in run.saver.top[: cfg.train.avg_top_k]]
    if len(names) < 2:
        return
    target = learner.ema.module if learner.ema is not None else learner.model
    if run.env.is_main:
        target.load_state_dict(ckpt.average_weights([run.saver.dir / n for n in names]))
    dist.broadcast_module(run.env, target)
    recompute_bn(run, target)
    logits, m = evaluate(run)
    epochs = sorted(int(n[5:8]) for n in names)
    better = run.saver.better(m[cfg.train.monitor], state.best, m["val_loss"], best_loss(state))
    state.averaged = {"epochs": epochs, **m, "best": better}
    rngs = dist.gather_objects(run.env, ckpt.rng_state())
    if not run.env.is_main:
        return
    saved = replace(checkpoint_state(cfg, learner, state, rngs), averaged_epochs=epochs)
    folder = RunFolder(run.dir)
    ckpt.save_atomic(saved.to_dict(), folder.checkpoints / AVERAGED, *([folder.best] if better else []))
    if better:
        state.best, state.best_row = m[cfg.train.monitor], {**(state.best_row or {}), **m}
        write_oof(run.dir, run.loaders, logits, cfg.data.root)
    log.info("averaged epochs %s: val_loss %.4f  val_acc %.4f  val_f1 %.4f%s", epochs, m["val_loss"], m["val_acc"],
             m["val_f1"], "  *best* (best.pt, oof.csv)" if better else f"  (best epoch {state.best_epoch} stays)")


def recompute_bn(run: Run, model: torch.nn.Module) -> None:
    """BatchNorm statistics for averaged weights, from one pass over the training part without augmentation
    (torch's swa_utils.update_bn): the mean of several epochs' running statistics does not describe the
    averaged weights' activations. Each rank measures its shard; evaluation then syncs the buffers."""
    plain = copy.copy(run.loaders.train.dataset)
    plain.transform = None
    loader = ds.eval_loader(plain, run.loaders.batch_size, run.cfg.data.num_workers, run.env.rank, run.env.world_size)
    ctx = run.learner.ctx
    with torch.no_grad():
        torch.optim.swa_utils.update_bn((ctx.batch(x, y)[0] for x, y in loader), model)


def epochs(run: Run) -> None:
    while run.state.epoch < run.cfg.train.epochs:
        run.epoch_started = time.perf_counter()
        run.learner.phases.enter(run.state.epoch, run.state.step)
        result = train_epoch(run)
        if result["interrupted"]:
            stop_preempted(run)
        logits, m = evaluate(run)
        row = record_epoch(run, result, logits, m)
        run.epoch_wall = time.perf_counter() - run.epoch_started
        run.epoch_extra = max(run.epoch_wall - result["seconds"], 0.0)
        if should_stop(run, row):
            break


def log_start(run: Run) -> None:
    if run.env.is_main:
        b, cfg = run.state.batch_sizes, run.cfg
        log.info("run %s: %d train / %d val images, batch %d per process x %d processes x %d accumulation = %d "
                 "global, %d epochs", run.dir.name, len(run.loaders.train.dataset), len(run.loaders.val.dataset),
                 b["batch_size_per_process"], b["world_size"], cfg.train.accum_steps, b["global_batch_size"],
                 cfg.train.epochs)


def train_epoch(run: Run) -> dict:
    """One epoch of optimizer steps (from the preempted batch when resuming mid-epoch)."""
    cfg, env, loaders, state = run.cfg, run.env, run.loaders, run.state
    ds.set_epoch(loaders.train, cfg.seed, state.epoch)
    loaders.train.sampler.skip = state.batches_done * loaders.batch_size
    loader, lines = epoch_progress(run)
    memory.reset_peak(env.device)
    try:
        result = engine.train_one_epoch(run.learner, loader, state.step, on_log=lines)
    except torch.OutOfMemoryError:
        if env.is_main:
            with open(RunFolder(run.dir).log, "a") as f:
                f.write(traceback.format_exc())
        raise memory.OutOfMemory(memory.oom_message(
            env.device, loaders.batch_size, f"in epoch {state.epoch + 1} after step {state.step}")) from None
    state.step = result["step"]
    state.seconds += result["seconds"]
    state.batches_done += result["batches"]
    state.loss_sum += result["loss"] * result["batches"]
    return {**result, "loss": state.loss_sum / max(state.batches_done, 1)}


def stop_preempted(run: Run) -> None:
    """last.pt, one line, and exit 130 after Ctrl-C (SIGINT), 143 after SIGTERM."""
    signum = int(getattr(run.learner.ctx.stop, "signum", signal.SIGTERM))
    rngs = dist.gather_objects(run.env, ckpt.rng_state())
    if run.env.is_main:
        run.saver.save_last(checkpoint_state(run.cfg, run.learner, run.state, rngs))
        print(f"stopped by {signal.Signals(signum).name} in epoch {run.state.epoch + 1} after "
              f"{run.state.batches_done} batches; last.pt holds that state: resume with run.resume=auto "
              f"run.name={run.dir.name}", file=sys.stderr, flush=True)
    dist.barrier(run.env)  # no rank leaves (and so has its launcher stop the rest) before last.pt is written
    raise SystemExit(128 + signum)


def evaluate(run: Run) -> tuple[torch.Tensor, dict]:
    """Validation logits (every rank holds all of them) and metrics. The bare model: ranks may hold
    different numbers of validation batches, and a DDP forward is a collective every rank must join."""
    learner = run.learner
    eval_model = learner.ema.module if learner.ema is not None else learner.model
    dist.sync_buffers(run.env, learner.model)  # also what the checkpoint saves
    if eval_model is not learner.model:
        dist.sync_buffers(run.env, eval_model)
    if not len(run.loaders.val_labels):  # a refit (split.fold=-1): every fold trains, nothing to validate on
        return None, {"val_loss": math.nan, "val_acc": math.nan, "val_f1": math.nan}
    logits = engine.predict_logits(eval_model, run.loaders.val, learner.ctx)
    return logits, engine.val_metrics(logits, run.loaders.val_labels)


def record_epoch(run: Run, result: dict, logits: torch.Tensor, m: dict) -> dict:
    """Scheduler, best, metrics row, tracker, checkpoints and OOF (rank 0); the row."""
    cfg, learner, state = run.cfg, run.learner, run.state
    epoch, metric = state.epoch + 1, m[cfg.train.monitor]
    learner.phases.after_epoch(epoch, metric)
    row = {"epoch": epoch, "step": state.step, "train_loss": result["loss"], **m,
           "lr": learner.optimizer.param_groups[0]["lr"], "trainable_params": learner.freezer.trainable_count(),
           "images_per_s": result["images"] / max(result["seconds"], 1e-9), "epoch_s": result["seconds"],
           **learner.freezer.group_lrs(learner.optimizer), **memory.report(run.env.device)}
    # a refit's best is its latest epoch; a tie on the metric goes to the lower val loss
    is_best = logits is None or run.saver.better(metric, state.best, m["val_loss"], best_loss(state))
    if is_best:
        state.best, state.best_epoch, state.best_row, state.bad_epochs = metric, epoch, row, 0
    else:
        state.bad_epochs += 1
    state.epoch, state.batches_done, state.loss_sum = epoch, 0, 0.0
    rngs = dist.gather_objects(run.env, ckpt.rng_state())
    if run.env.is_main:
        if logits is not None:
            per_class = engine.per_class_f1(logits, run.loaders.val_labels, len(state.classes))
            run.tracker.log({f"val_f1_class/{c}": float(f) for c, f in zip(state.classes, per_class)},
                            step=state.step)
        run.tracker.log_epoch(row)
        run.saver.save(checkpoint_state(cfg, learner, state, rngs), epoch, metric, is_best, m["val_loss"])
        if is_best and logits is not None:
            write_oof(run.dir, run.loaders, logits, cfg.data.root)
        left = cfg.train.epochs - epoch
        eta = f", run ETA {progress.run_eta(0, left, time.perf_counter() - run.epoch_started)}" if left else ""
        log.info("epoch %d/%d  train_loss %.4f  val_loss %.4f  val_acc %.4f  val_f1 %.4f%s  (%.1fs, %.0f img/s%s)",
                 epoch, cfg.train.epochs, result["loss"], m["val_loss"], m["val_acc"], m["val_f1"],
                 "  *best*" if is_best else "", result["seconds"], row["images_per_s"], eta)
    return row


def best_loss(state: TrainState) -> float:
    """The best epoch's validation loss (what breaks a tie on the monitored metric)."""
    loss = (state.best_row or {}).get("val_loss")
    return math.inf if loss is None or math.isnan(loss) else loss


def tied_epochs(metrics: pd.DataFrame, monitor: str, best: float | None) -> list[int]:
    """The epochs whose monitored metric equals the best one (saturated validation ties)."""
    if best is None or monitor not in metrics or math.isnan(best):
        return []
    return metrics.loc[metrics[monitor] == best, "epoch"].astype(int).tolist()


def should_stop(run: Run, row: dict) -> bool:
    """The sweep's pruner (every rank gets its answer) or train.early_stop."""
    cfg, state = run.cfg, run.state
    if run.sweep_trial.should_stop(state.epoch, row, last=state.epoch >= cfg.train.epochs):
        state.pruned_epoch = state.epoch
        if run.env.is_main:
            log.info("pruned by the sweep after epoch %d", state.epoch)
        return True
    if cfg.train.early_stop and state.bad_epochs >= cfg.train.early_stop:
        if run.env.is_main:
            log.info("early stop: %s has not improved for %d epochs", cfg.train.monitor, state.bad_epochs)
        return True
    return False


def epoch_progress(run: Run):
    """The epoch's loader (a bar on a terminal) and its per-interval callback (tracker + progress lines)."""
    cfg, env, loaders, state = run.cfg, run.env, run.loaders, run.state
    name, left = f"{state.epoch + 1}/{cfg.train.epochs}", cfg.train.epochs - state.epoch
    known = f" (run ETA {progress.run_eta(0, left, run.epoch_wall)})" if run.epoch_wall else ""
    loader = progress.bar(loaders.train, f"epoch {name}{known}", loaders.batch_size, env.is_main)
    lines = progress.Lines(lambda row: run.tracker.log(row, step=row["step"]), epoch=name, first_step=state.step,
                           steps=math.ceil((loaders.steps - state.batches_done) / cfg.train.accum_steps),
                           images_per_step=state.batch_sizes["global_batch_size"], every_s=cfg.train.log_every_s,
                           show=env.is_main, epochs_after=left - 1,
                           full_steps=math.ceil(loaders.steps / cfg.train.accum_steps), epoch_extra_s=run.epoch_extra)
    return loader, lines


def write_oof(run_dir: Path, loaders: Loaders, logits: torch.Tensor, data_root: str) -> None:
    """Out-of-fold predictions of the best epoch: for error analysis and stacking. `image` is the path
    inside the data set, so a teammate's run (data elsewhere) lines up with yours in an ensemble."""
    images = [Path(os.path.relpath(p, data_root)).as_posix() for p in loaders.val_paths]
    frame = oofs.frame(loaders.val_paths, images, loaders.val_labels, loaders.val_groups, logits.softmax(1).numpy())
    files.write_csv(RunFolder(run_dir).oof, frame)


def write_figures(run_dir: Path, classes: list[str], oof: pd.DataFrame | None) -> None:
    if RunFolder(run_dir).metrics.is_file():
        plots.learning_curves(RunFolder(run_dir).metrics, run_dir / "learning_curves.png")
    if oof is not None:
        y, pred = oof["label"].to_numpy(), oof["pred"].to_numpy()
        plots.confusion(y, pred, classes, run_dir / "confusion_matrix.png")
        plots.per_class_f1(y, pred, classes, run_dir / "per_class_f1.png")
        plots.worst_predictions(oof, classes, run_dir / "worst_predictions.png")


def say_ties(run: Run) -> list[int] | None:
    """The epochs that tied with the best on the monitored metric (saturated validation), said in the log;
    None without a tie."""
    cfg, state, path = run.cfg, run.state, RunFolder(run.dir).metrics
    tied = tied_epochs(pd.read_csv(path), cfg.train.monitor, state.best) if path.is_file() else []
    if len(tied) < 2:
        return None
    log.info("%s %.4f at epochs %s: kept epoch %d by val loss (validation this small or easy saturates; a wider "
             "validation fold tells these epochs apart)", cfg.train.monitor, state.best, ", ".join(map(str, tied)),
             state.best_epoch)
    return tied


def write_summary(run: Run) -> dict:
    """summary.json, the figures and the tracker's final records (rank 0); the summary."""
    cfg, state, run_dir = run.cfg, run.state, run.dir
    best = state.best_row or {}
    summary = {
        "run": run_dir.name, "status": "pruned" if state.pruned_epoch else "finished",
        "pruned_epoch": state.pruned_epoch or None, "metric_name": cfg.train.monitor, "best_metric": state.best,
        "best_epoch": state.best_epoch, "val_f1": best.get("val_f1"), "val_acc": best.get("val_acc"),
        "val_loss": best.get("val_loss"), "epochs_done": state.epoch, "train_seconds": round(state.seconds, 1),
        "model": cfg.model.name, "img_size": list(img_hw(cfg)), "fold": cfg.split.fold, "split_hash": state.split_hash,
        **(state.batch_sizes or {}), "averaged": state.averaged, "wandb_id": state.wandb_id, "owner": getpass.getuser(),
        "host": socket.gethostname(), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if run.env.is_main:
        summary["best_tied_epochs"] = say_ties(run)
        files.write_json(RunFolder(run_dir).summary_file, summary)
        run.tracker.summary({k: v for k, v in summary.items() if v is not None})
        oof = pd.read_csv(RunFolder(run_dir).oof) if RunFolder(run_dir).oof.is_file() else None
        if cfg.log.figures:
            write_figures(run_dir, state.classes, oof)
        if oof is not None:
            run.tracker.log_final(run_dir, oof, state.classes, cfg.log.wandb.log_model)
        run.tracker.finish()
        log.info("done: best %s %.4f at epoch %d -> %s", cfg.train.monitor, state.best or float("nan"),
                 state.best_epoch, run_dir)
    return summary


def lost_peer_message(run: Run, e: BaseException) -> str:
    """Where the run stood when a peer went, and how to go on."""
    where = f"in epoch {run.state.epoch + 1} (step {run.state.step})"
    done = run.state.epoch if RunFolder(run.dir).last.is_file() else 0
    then = (f"last.pt holds epoch {done}: resume with run.resume=auto run.name={run.dir.name} (the same --nproc)"
            if done else "no epoch was finished, so there is nothing to resume: start it again")
    return f"lost another process of this run {where} ({dist.peer_error(e)}); {then}"
