"""How many CPU cores a process may use, and torch's thread count from them.

torch starts one intra-op thread per core it sees, whatever else runs. Two processes of one run on two
cores then run four threads, and a second job on the machine makes every parallel op wait for its slowest
thread (measured here: resnet18 at 32 px, 13-15 img/s with two threads beside a busy process, 37-40 with
one). So each process takes its share: the cores it may use (affinity, cgroup quota), less those that other
processes keep busy when the run starts, divided among this machine's processes, less the loader's workers.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger("baseline")

BUSY_SAMPLE_S = 0.3  # how long the run watches the machine before it starts


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (containers)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = cgroup_quota()
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The CPU quota in cores (cgroup v2 cpu.max, or v1 cfs_quota_us / cfs_period_us), None if unlimited."""
    try:
        if (root / "cpu.max").is_file():
            quota, period = (root / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def _cpu_times(cpus: set[int]) -> tuple[int, int]:
    """(busy, total) jiffies summed over `cpus`, from /proc/stat."""
    busy = total = 0
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu" or int(name[3:]) not in cpus:
            continue
        values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
        total += sum(values)
        busy += sum(values) - values[3] - values[4]
    return busy, total


def busy_cores(seconds: float = BUSY_SAMPLE_S) -> float:
    """How many of our cores other processes keep busy, watched for `seconds` while this one sleeps
    (so every process of a run should watch at the same moment: dist.barrier first). 0 where /proc is not."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    try:
        b0, t0 = _cpu_times(cpus)
        time.sleep(seconds)
        b1, t1 = _cpu_times(cpus)
    except (OSError, ValueError):
        return 0.0
    return len(cpus) * (b1 - b0) / (t1 - t0) if t1 > t0 else 0.0


@dataclass(frozen=True)
class Share:
    """One process's part of the machine."""

    cores: int  # usable by this process (affinity, quota)
    busy: float  # kept busy by other processes when the run started
    local_world: int  # processes of this run on this machine

    def threads(self, workers: int = 0) -> int:
        """Intra-op threads: the free cores, split among the local processes, less the loader's workers."""
        free = max(1, self.cores - round(self.busy))
        return max(1, free // self.local_world - workers)

    def per_process(self) -> int:
        """Cores per local process, busy ones counted (what data.num_workers=auto splits)."""
        return max(1, self.cores // self.local_world)


def watch(local_world: int = 1, seconds: float = BUSY_SAMPLE_S) -> Share:
    return Share(usable_cores(), busy_cores(seconds), local_world)


def set_threads(requested: int | str, share: Share, workers: int) -> str:
    """Set torch's intra-op threads to `requested` (train.threads) or, for auto, share.threads(workers);
    the line that says how many and why."""
    n = share.threads(workers) if requested == "auto" else int(requested)
    torch.set_num_threads(n)
    why = ("train.threads" if requested != "auto" else
           f"{share.cores} usable core(s), {share.busy:.1f} busy with other processes, {share.local_world} "
           f"process(es) of this run here, {workers} loader worker(s) each; train.threads=N to override")
    return f"threads: {n} per process ({why})"
