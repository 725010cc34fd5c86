"""What a person watching a run sees between epoch lines: a tqdm bar on a terminal (images/s and
ETA), and where stderr is not a terminal (nohup, slurm, CI, a pipe) no bar at all but one line
every `train.log_every_s` seconds, written at the log-interval host syncs the loop makes anyway."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable

from tqdm import tqdm

log = logging.getLogger("baseline")


def on_terminal() -> bool:
    return sys.stderr.isatty()


def bar(loader: Iterable, desc: str, batch_size: int, show: bool) -> Iterable:
    """The loader itself off a terminal (no carriage returns in logs), else a bar counting images."""
    if not show or not on_terminal():
        return loader
    return tqdm(loader, desc=desc, leave=False, unit="img", unit_scale=batch_size, dynamic_ncols=True)


def track(items: Iterable, desc: str, total: int, show: bool = True, every_s: float = 10.0,
          unit: str = "img", per_item: int = 1) -> Iterable:
    """`items` with progress: a bar on a terminal, else a line at most every `every_s` seconds (count,
    rate, ETA). `per_item`: units in one item (images in a batch)."""
    if not show:
        yield from items
        return
    if on_terminal():
        yield from tqdm(items, desc=desc, total=total // per_item or None, leave=False, unit=unit,
                        unit_scale=per_item, dynamic_ncols=True)
        return
    t0 = last = time.perf_counter()
    for k, item in enumerate(items, 1):
        yield item
        now = time.perf_counter()
        if now - last >= every_s:
            last = now
            done = min(k * per_item, total)
            rate = done / (now - t0)
            log.info("%s: %d/%d %s, %.0f %s/s, ETA %s", desc, done, total, unit, rate, unit,
                     _clock((total - done) / max(rate, 1e-9)))


def run_eta(epoch_left_s: float, epochs_after: int, epoch_s: float) -> str:
    """The whole run's ETA: what is left of this epoch, and `epochs_after` more at `epoch_s` each."""
    return _clock(epoch_left_s + epochs_after * epoch_s)


class Lines:
    """Wraps the tracker's per-interval callback; off a terminal, logs step, loss, images/s and the
    ETA of the epoch and of the run at most every `every_s` seconds (rank 0 only: `show`).
    `epochs_after`: epochs still to run after this one; `epoch_extra_s`: the seconds an epoch spends
    outside its training steps (evaluation, checkpoints), as measured on the last one."""

    def __init__(self, on_log: Callable[[dict], None], *, epoch: str, first_step: int, steps: int,
                 images_per_step: int, every_s: float, show: bool, epochs_after: int = 0,
                 full_steps: int | None = None, epoch_extra_s: float = 0.0):
        self.on_log, self.epoch, self.first_step, self.steps = on_log, epoch, first_step, steps
        self.images_per_step, self.every_s = images_per_step, every_s
        self.epochs_after, self.full_steps, self.extra = epochs_after, full_steps or steps, epoch_extra_s
        self.show = show and not on_terminal()
        self.t0 = self.last = time.perf_counter()

    def __call__(self, row: dict) -> None:
        self.on_log(row)
        now = time.perf_counter()
        if not self.show or now - self.last < self.every_s:
            return
        self.last = now
        done = row["step"] - self.first_step
        rate = done / max(now - self.t0, 1e-9)
        eta = (self.steps - done) / max(rate, 1e-9)
        whole = run_eta(eta + self.extra, self.epochs_after, self.full_steps / max(rate, 1e-9) + self.extra)
        log.info("epoch %s  step %d/%d  loss %.4f  %.0f img/s  ETA epoch %s, run %s", self.epoch, done, self.steps,
                 row["train/loss"], rate * self.images_per_step, _clock(eta), whole)


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(max(seconds, 0))), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"
