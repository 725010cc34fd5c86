"""OOM tools: batch-size finder, per-epoch memory report, and a message instead of a traceback."""

from __future__ import annotations

import logging
import resource
import sys

import torch

from . import dist
from .errors import OutOfMemory

log = logging.getLogger(__name__)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def rss_mb() -> float:
    """Peak resident set size of this process, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform != "darwin" else 2**20)


def report(device: torch.device) -> dict:
    """The per-epoch memory columns: this process's peak RSS; on a GPU the numbers `baseline gpus` prints."""
    out = {"mem_rss_mb": round(rss_mb(), 1)}
    if device.type == "cuda":
        from .gpus import device_memory, others_by_uuid

        g = device_memory(device.index or 0, others_by_uuid())
        out.update(mem_alloc_peak_mb=round(g.peak_allocated_mb, 1), mem_reserved_peak_mb=round(g.peak_reserved_mb, 1),
                   mem_free_mb=round(g.free_mb, 1))
        if g.others_mb is not None:
            out["mem_others_mb"] = round(g.others_mb, 1)
    return out


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def oom_message(device: torch.device, batch_size: int | str, where: str) -> str:
    used = ""
    if device.type == "cuda":
        from .gpus import device_memory, others_by_uuid

        g = device_memory(device.index or 0, others_by_uuid())
        others = "" if g.others_mb is None else f", {g.others_mb / 1024:.1f} GiB held by other processes"
        used = (f"; {g.allocated_mb / 1024:.2f} GiB allocated, {g.reserved_mb / 1024:.2f} GiB reserved of "
                f"{g.total_mb / 1024:.1f} GiB{others}")
    return (f"out of memory {where} with train.batch_size={batch_size}{used}. Try: a smaller train.batch_size "
            "(with train.accum_steps to keep the global batch), train.amp=bf16, train.batch_size=auto, "
            "train.channels_last=true, or a smaller data.img_size. The full traceback is in the run's train.log.")


def _fits(model, ctx, n_cls: int, batch: int, hw: tuple[int, int], steps: int = 2) -> bool:
    """A few real forward/backward/optimizer steps at `batch`, optimizer state included."""
    device = ctx.env.device
    params = [p for p in model.parameters() if p.requires_grad]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(params, lr=0.0)
    try:
        for _ in range(steps):
            x = torch.randint(0, 255, (batch, 3, *hw), dtype=torch.uint8)
            y = torch.randint(0, n_cls, (batch,))
            x, y = ctx.batch(x, y)
            with ctx.autocast():
                loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return True
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not is_oom(e):
            raise
        return False
    finally:
        del opt
        model.load_state_dict(state)
        if device.type == "cuda":
            torch.cuda.empty_cache()


def cpu_budget_batches(hw: tuple[int, int], budget_gb: float) -> int:
    # Activation memory of a small CNN is roughly 2 KiB per pixel per image in training (measured on
    # resnet18); on the CPU we bound by that instead of waiting for the OS to kill us.
    return max(1, int(budget_gb * 2**30 / (hw[0] * hw[1] * 2048)))


def find_batch_size(cfg, env, model, ctx, n_cls: int, n_train: int) -> int:
    """Largest batch that fits: double until it fails or hits the cap, then binary search.
    Every rank runs the search; all use the smallest result."""
    from .config import img_hw

    hw = img_hw(cfg)
    cap = min(cfg.train.max_batch_size, n_train // env.world_size)
    if env.device.type != "cuda":
        cap = min(cap, cpu_budget_batches(hw, cfg.train.cpu_mem_gb))
    with torch.random.fork_rng(devices=[env.device] if env.device.type == "cuda" else []):
        lo = _search(model, ctx, n_cls, hw, cap)
    if lo == 0:
        raise OutOfMemory(oom_message(env.device, 2, "finding the batch size"))
    found = dist.all_min(env, lo)
    if env.is_main:
        log.info("train.batch_size=auto: %d per process (cap %d)", found, cap)
    return found


def largest_fitting(model, ctx, n_cls: int, hw: tuple[int, int], batch: int) -> int:
    """`batch`, halved until a few real steps at it fit (0 if not even 2 do)."""
    while batch >= 2 and not _fits(model, ctx, n_cls, batch, hw):
        batch //= 2
    return batch if batch >= 2 else 0


def _search(model, ctx, n_cls: int, hw: tuple[int, int], cap: int) -> int:
    lo, hi = 0, 2  # BatchNorm cannot train on a batch of 1
    while hi <= cap and _fits(model, ctx, n_cls, hi, hw):
        lo, hi = hi, hi * 2
    hi = min(hi, cap + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if _fits(model, ctx, n_cls, mid, hw) else (lo, mid)
    return lo
