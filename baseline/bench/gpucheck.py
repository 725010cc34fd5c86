"""`baseline bench gpu` (`make gpu-check`): what to measure the day a GPU is lent, in one table.

- the kit's train step against the in-memory limit (bench.run), eager and with train.compile=true;
- train.batch_size=auto: the batch it settles on;
- a forced out-of-memory: `baseline train` with a batch far beyond the device must end with the
  one-line message (exit 3), not a traceback;
- inference images/s and peak memory.
On a GPU: resnet50 at 224x224, bf16, channels_last. With `bench.tiny=true` (the CPU, CI): test_resnet
at 32x32, full precision, no compile, so the script keeps working where no GPU is; the forced OOM
needs a GPU.
"""

from __future__ import annotations

import subprocess
import sys
import time

import torch

from .. import dist, memory
from ..config import Config, load_config
from . import speed as bench

GPU = ["model.name=resnet50", "data.img_size=224", "train.amp=bf16", "train.channels_last=true"]
TINY = ["model.name=test_resnet", "data.img_size=32"]  # amp auto: full precision on the CPU


def settings(cfg: Config, overrides: list[str]) -> list[str]:
    base = TINY if cfg.bench.tiny else GPU
    return [f"data.root={cfg.data.root}", "log.wandb.mode=disabled", *base, *overrides]


def auto_batch(over: list[str]) -> int:
    """The batch train.batch_size=auto settles on, through the kit's own path (settle_batch_size)."""
    data = bench.setup(load_config(None, [*over, "train.batch_size=auto"]))[3]
    return data.batch_size


def forced_oom(over: list[str], run_dir: str) -> str:
    """`baseline train` at a step no device holds: the exit code and its last stderr line. The images are
    made huge (2048 px), not the batch: training refuses a batch larger than the data set (bad input,
    exit 2) before it meets the device."""
    r = subprocess.run([sys.executable, "-m", "baseline", "train", *over, "data.img_size=2048", "train.batch_size=64",
                        "data.cache=off", "train.epochs=1", f"run.dir={run_dir}", "run.name=forced-oom"],
                       capture_output=True, text=True)
    last = (r.stderr.strip().splitlines() or [""])[-1]
    return f"exit {r.returncode}: {last[:160]}"


def run(cfg: Config, overrides: list[str]) -> list[tuple[str, str]]:
    over = settings(cfg, [o for o in overrides if not o.startswith("bench.")])
    device = dist.pick_device(load_config(None, over).train.device, 0)
    name = f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""
    rows = [("device", f"{device}{name}"), ("settings", " ".join(over[2:]))]
    variants = [("eager", [])] + ([] if cfg.bench.tiny else [("compile", ["train.compile=true"])])
    for name, extra in variants:
        memory.reset_peak(device)
        t0 = time.perf_counter()
        r = bench.run(load_config(None, [*over, *extra]), batches=4 if cfg.bench.tiny else 20)
        rows += [(f"train img/s, {name}", f"kit {r['train_kit']:.1f} / limit {r['train_limit']:.1f} "
                                          f"= {r['train_kit'] / r['train_limit']:.2f}; kit step "
                                          f"{r['train_kit_step']:.1f} = {r['train_kit_step'] / r['train_limit']:.2f}"),
                 (f"inference img/s, {name}", f"{r['infer_kit']:.1f}"),
                 (f"seconds, {name}", f"{time.perf_counter() - t0:.0f}")]
    if cfg.bench.tiny:
        rows.append(("compile", "skipped in tiny mode (about 2 minutes of compiling on 2 CPU cores)"))
    rows.append(("peak memory", ", ".join(f"{k} {v}" for k, v in memory.report(device).items())))
    rows.append(("batch_size=auto", str(auto_batch(over))))
    rows.append(("forced OOM", forced_oom(over, cfg.bench.out) if device.type == "cuda" else "n/a (needs a GPU)"))
    return rows


def main(cfg: Config, overrides: list[str]) -> int:
    rows = run(cfg, overrides)
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k:<{width}}  {v}" for k, v in rows))
    oom = dict(rows)["forced OOM"]
    return 0 if oom.startswith("n/a") or (oom.startswith("exit 3: error: out of memory")) else 1
