"""`baseline train`: config -> data -> model -> epochs -> checkpoints. Returns the run summary.

The table of contents of a run: the data and its defaults, the run folder (locked, resumed or new), then
inside it the assembly (session.py), the freeze phases (phases.py) and the epoch loop (loop.py)."""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from . import checkpoint as ckpt
from . import cpus, dist, files, loop, phases, rundir, session
from .config import Config, age_edges, save_yaml, to_dict
from .data import pseudo
from .data.competition import OFFICIAL_EDGES
from .data.layouts import Table
from .data.split import Hashes, hash_cache, split_path
from .errors import LostPeer
from .runfolder import RunFolder
from .tracking import NullTracker, Tracker, truncate_metrics

log = logging.getLogger("baseline")


def run(cfg: Config, judge: Callable[[Config, dist.Env, float | None], loop.Judge] | None = None) -> dict:
    """Train one run; `judge(cfg, env, best so far)` makes the per-epoch stop question (default: none)."""
    with dist.session(cfg.train.device) as env:
        return _train(cfg, env, judge)


def _train(cfg: Config, env: dist.Env, judge=None) -> dict:
    session.seed_everything(cfg.seed)
    session.preflight(cfg)
    share = session.watch_machine(env)
    new_split = None if split_path(cfg).is_file() else split_path(cfg)
    hashes = Hashes(hash_cache(cfg))
    table, fold, split_hash = session.prepare_data(cfg, env, hashes)
    table, fold, line = pseudo.with_pseudo(cfg, table, fold, split_hash, hashes)  # after the split: it stays
    table = session.for_task(cfg, table)
    notes: list[str] = []
    if line:
        session.say(env, line, notes)
    with contextlib.ExitStack() as held:
        try:
            batch_asked = cfg.train.batch_size
            cfg = session.resolve_defaults(cfg, env, table, fold, notes, share)
            session.say(env, cpus.set_threads(cfg.train.threads, share, cfg.data.num_workers), notes)
            state = loop.TrainState(split_hash=split_hash, classes=table.classes)
            resume_from = rundir.resume_point(cfg)
            saved = ckpt.read(resume_from) if resume_from else None
            if saved is not None and batch_asked in ("data", "auto"):
                cfg = session.trained_batch(cfg, saved)
            elif batch_asked == "data":
                cfg = session.fit_data_batch(cfg, env, len(table.classes), notes)
            if saved is not None:
                rundir.check_resume(cfg, saved, table.classes, state.split_hash, resume_from, cfg.train.amp,
                                    env.world_size)
            images = session.decode_images(cfg, table, env)  # every image decoded before the run folder is touched
            run_dir = (RunFolder.of_checkpoint(resume_from).path if resume_from else
                       Path(cfg.run.dir) / dist.broadcast_object(env, rundir.run_name(cfg)))
            held.enter_context(rundir.locked(run_dir, env))
        except Exception:
            if new_split is not None and env.is_main:  # a refused run leaves no split file it drew
                new_split.unlink(missing_ok=True)
            raise
        if env.is_main:
            hashes.save()  # an accepted run keeps the image hashes for the next one (a refused one, nothing)
            RunFolder(run_dir).checkpoints.mkdir(parents=True, exist_ok=True)
            save_yaml(cfg, RunFolder(run_dir).config)
        with file_log(RunFolder(run_dir).log, env, notes), loop.Preemption(env, cfg.train.log_interval) as stop:
            return train_in_folder(cfg, env, table, fold, state, run_dir, saved, images, stop, judge)


def train_in_folder(cfg: Config, env: dist.Env, table: Table, fold: np.ndarray, state: loop.TrainState, run_dir: Path,
                    saved: ckpt.Checkpoint | None, images: session.Images, stop: loop.Preemption, judge=None) -> dict:
    """Everything that happens inside the locked run folder: build, (restore), fit, summary."""
    if env.is_main:
        write_data_record(run_dir, table)
    learner = session.build_learner(cfg, env, table, stop, initial_weights=saved is None,
                                    train_labels=session.training_part(cfg, table, fold)[1])
    if env.rank:  # after the model is built (identical on every rank): each rank its own mixup, dropout, ...
        session.seed_everything(session.rank_seed(cfg.seed, env.rank))
    train_ds, val_ds = session.build_datasets(cfg, table, fold, images)
    if env.is_main and (age_edges(cfg) != OFFICIAL_EDGES or cfg.data.drop_ages):
        n_out = int((fold != cfg.split.fold).sum()) - len(train_ds)
        log.info("training labels: age buckets start at %s (official %s); %d training image(s) of ages %s left out; "
                 "validation keeps the official labels", cfg.data.age_edges, list(OFFICIAL_EDGES), n_out,
                 cfg.data.drop_ages)
    batch = session.settle_batch_size(cfg, env, learner, len(table.classes), len(train_ds))
    if cfg.train.batch_size == "auto":  # the one key whose default needs the built model
        cfg = replace(cfg, train=replace(cfg.train, batch_size=batch))
        if env.is_main:
            save_yaml(cfg, RunFolder(run_dir).config)
    loaders = session.build_loaders(cfg, env, train_ds, val_ds, batch)
    loaders.val_groups = table.df["group"].astype(str).to_numpy()[fold == cfg.split.fold].tolist()
    learner.phases = phases.Phases(cfg, learner.freezer, learner.model, env, loaders.steps)
    learner.phases.enter(0)
    saver = ckpt.Saver(RunFolder(run_dir).checkpoints, "min" if cfg.train.monitor == "val_loss" else "max",
                       cfg.train.keep_top_k, background=cfg.train.async_save)
    if saved is not None:
        loop.restore(learner, state, saver, saved)
    if env.is_main:  # rows past the checkpoint (or all, for a fresh start in an old folder) are stale
        truncate_metrics(RunFolder(run_dir).metrics, state.epoch)
    state.batch_sizes = {"world_size": env.world_size, "batch_size_per_process": batch,
                         "global_batch_size": batch * env.world_size * cfg.train.accum_steps}
    tracker = (Tracker(run_dir, cfg.log.wandb, {**to_dict(cfg), **state.batch_sizes}, run_dir.name, state.wandb_id,
                       cfg.log.tensorboard, state.step) if env.is_main else NullTracker())
    state.wandb_id = tracker.wandb_id
    judged = judge(cfg, env, state.best) if judge else loop.KeepGoing()
    run = loop.Run(cfg, env, learner, loaders, state, tracker, saver, run_dir, judged)
    try:
        loop.fit(run)
        return loop.write_summary(run)
    except RuntimeError as e:
        if not dist.is_lost_peer(env, e):
            raise
        raise LostPeer(loop.lost_peer_message(run, e)) from None
    finally:
        tracker.finish()  # also on errors and preemption, so W&B's files are complete


def write_data_record(run_dir: Path, table: Table) -> None:
    """The class list (index -> name) and any label corrections applied, next to the run."""
    files.write_json(RunFolder(run_dir).classes, table.classes, indent=1)
    fixes = table.df.attrs.get("corrections")
    if fixes:
        pd.DataFrame(fixes).to_csv(RunFolder(run_dir).corrections, index=False)


@contextlib.contextmanager
def file_log(path: Path, env: dist.Env, notes: list[str] = ()):
    """Everything logged during the run also goes to the run's train.log (rank 0), after `notes` (what
    was logged before the folder existed: the resolved defaults)."""
    if not env.is_main:
        yield
        return
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for line in notes:
        handler.handle(logging.LogRecord("baseline", logging.INFO, "", 0, line, None, None))
    logging.getLogger().addHandler(handler)
    try:
        yield
    except Exception:
        handler.handle(logging.LogRecord("baseline", logging.ERROR, "", 0, traceback.format_exc(), None, None))
        raise
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
