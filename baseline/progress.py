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


class Lines:
    """Wraps the tracker's per-interval callback; off a terminal, logs step, loss, images/s and the
    epoch's ETA at most every `every_s` seconds (rank 0 only: `show`)."""

    def __init__(self, on_log: Callable[[dict], None], *, epoch: str, first_step: int, steps: int,
                 images_per_step: int, every_s: float, show: bool):
        self.on_log, self.epoch, self.first_step, self.steps = on_log, epoch, first_step, steps
        self.images_per_step, self.every_s = images_per_step, every_s
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
        log.info("epoch %s  step %d/%d  loss %.4f  %.0f img/s  ETA %s", self.epoch, done, self.steps,
                 row["train/loss"], rate * self.images_per_step, _clock(eta))


def _clock(seconds: float) -> str:
    m, s = divmod(int(round(max(seconds, 0))), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}"
