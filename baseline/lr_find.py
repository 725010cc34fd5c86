"""`baseline lr-find`: an LR range test (Smith 2015; fastai's `lr_find`, Lightning's LearningRateFinder) on
the run's own config: its data, model, first freeze phase and optimizer, the LR of every parameter group
raised together (keeping their ratios), exponentially, from `lrfind.start` to `lrfind.end` over `lrfind.steps`
optimizer steps, stopping once the smoothed loss passes 4x its lowest. Writes `<run.dir>/lr-find/<name>/`
(lr_find.csv, lr_find.png) and no run folder: the weights it moved are thrown away."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import cpus, dist, engine, files, phases, session
from .config import Config

log = logging.getLogger("baseline")


def run(cfg: Config) -> dict:
    with dist.session(cfg.train.device) as env:
        return _find(cfg, env)


def _find(cfg: Config, env: dist.Env) -> dict:
    session.seed_everything(cfg.seed)
    session.preflight(cfg)
    share = session.watch_machine(env)
    table, fold, _ = session.prepare_data(cfg, env)
    cfg = session.resolve_defaults(cfg, env, table, fold, share=share)
    session.say(env, cpus.set_threads(cfg.train.threads, share, cfg.data.num_workers))
    images = session.decode_images(cfg, table, env)
    learner = session.build_learner(cfg, env, table, stop=lambda step: False,
                                  train_labels=session.training_part(cfg, table, fold)[1])
    train_ds, val_ds = session.build_datasets(cfg, table, fold, images)
    batch = session.settle_batch_size(cfg, env, learner, len(table.classes), len(train_ds))
    loaders = session.build_loaders(cfg, env, train_ds, val_ds, batch)
    learner.phases = phases.Phases(cfg, learner.freezer, learner.model, env, loaders.steps, schedule=False)
    learner.phases.enter(0)  # the first phase, without its LR schedule: the range test sets the LR itself
    rows = range_test(cfg, learner, loaders.train)
    out = Path(cfg.run.dir) / "lr-find" / (cfg.run.name or f"{cfg.model.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    result = suggest(rows)
    if env.is_main:
        files.write_csv(out / "lr_find.csv", rows)
        picture(rows, result, out / "lr_find.png")
        log.info("lr-find: lowest smoothed loss %.4f at LR %.2e; suggested optim.lr=%.2e (a tenth of that; steepest "
                 "descent at %.2e) -> %s", result["min_loss"], result["min_lr"], result["suggested"],
                 result["steepest"], out)
    return {**result, "dir": str(out)}


def range_test(cfg: Config, learner: engine.Learner, loader) -> pd.DataFrame:
    """(step, lr, loss, smoothed) while the LR factor grows from lrfind.start/optim.lr to lrfind.end/optim.lr."""
    f = cfg.lrfind
    n = min(f.steps, max(2, len(loader) * 50))
    base = [g["lr"] for g in learner.optimizer.param_groups]
    top = max(base)
    ratio = (f.end / f.start) ** (1 / (n - 1))
    rows, avg, best, step = [], 0.0, math.inf, 0
    learner.train_view.train()
    learner.ctx.on_train()
    while step < n:
        for x, y in loader:
            factor = f.start * ratio ** step / top
            for g, b in zip(learner.optimizer.param_groups, base):
                g["lr"] = b * factor
            x, y = learner.ctx.batch(x, y)
            loss = engine.forward_backward(learner, x, y, sync=True, group=1).item()  # a host sync: not a hot loop
            engine.optimizer_step(learner, step)
            avg = 0.98 * avg + 0.02 * loss
            smooth = avg / (1 - 0.98 ** (step + 1))  # bias-corrected, as fastai
            rows.append({"step": step, "lr": top * factor, "loss": loss, "smoothed": smooth})
            best, step = min(best, smooth), step + 1
            if step >= n or not math.isfinite(loss) or smooth > 4 * best:
                return pd.DataFrame(rows)
    return pd.DataFrame(rows)


def suggest(rows: pd.DataFrame) -> dict:
    """A tenth of the LR at the lowest smoothed loss (the usual rule), and the LR of steepest descent."""
    lr, sm = rows["lr"].to_numpy(), rows["smoothed"].to_numpy()
    i = int(np.nanargmin(sm))
    grad = np.gradient(sm, np.log(lr)) if len(sm) > 2 else np.zeros(len(sm))
    j = int(np.nanargmin(grad[: max(i, 1)]))
    return {"min_lr": float(lr[i]), "min_loss": float(sm[i]), "suggested": float(lr[i] / 10), "steepest": float(lr[j])}


def picture(rows: pd.DataFrame, result: dict, out: Path) -> None:
    from .plots import plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(rows["lr"], rows["loss"], color="0.8", lw=0.8, label="loss")
    ax.plot(rows["lr"], rows["smoothed"], color="tab:blue", label="smoothed")
    ax.axvline(result["suggested"], color="tab:green", ls="--", label=f"suggested {result['suggested']:.1e}")
    ax.axvline(result["steepest"], color="tab:orange", ls=":", label=f"steepest {result['steepest']:.1e}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="train loss", title="LR range test")
    top = rows["smoothed"].min() * 4
    ax.set_ylim(top=min(top, rows["loss"].max()) * 1.05)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
