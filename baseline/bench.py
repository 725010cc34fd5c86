"""`baseline bench`: the same model, batch and data three ways, in images per second.

limit  forward+backward on tensors already in memory (the most any pipeline can reach)
kit    the kit's loader (decode-once cache) feeding a plain forward/backward/AdamW step (no
       accumulation, clipping, scaler or EMA: the data path is what this compares)
naive  PIL open + torchvision transforms per item, no cache (how most baselines load)
Also the loaders alone (no model), and inference (kit vs naive). Quote ratios, not absolute times.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from . import dist, engine, train
from .config import Config, img_hw
from .data.layouts import read_table


class NaiveDataset(Dataset):
    """What a typical competition baseline does: open, convert, resize, normalise, every item, every epoch."""

    def __init__(self, paths: list[str], labels: list[int], hw: tuple[int, int], mean, std, train: bool):
        aug = [T.RandomHorizontalFlip()] if train else []
        self.paths, self.labels = paths, labels
        self.tf = T.Compose([T.Resize(hw), *aug, T.ToTensor(), T.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return self.tf(Image.open(self.paths[i]).convert("RGB")), self.labels[i]


def _time_loader(loader, max_batches: int) -> float:
    n, t0 = 0, time.perf_counter()
    for i, (x, _) in enumerate(loader):
        n += x.shape[0]
        if i + 1 >= max_batches:
            break
    return n / (time.perf_counter() - t0)


def _time_steps(step, batches, max_batches: int) -> float:
    n, t0 = 0, None
    for i, (x, y) in enumerate(batches):
        if i == 1:  # the first step pays one-time costs (allocator, kernels)
            t0, n = time.perf_counter(), 0
        step(x, y)
        n += x.shape[0]
        if i + 1 >= max_batches:
            break
    return n / (time.perf_counter() - t0)


def setup(cfg: Config):
    """The kit's own path on one process, a fixed fifth as validation: (cfg resolved, env, table,
    loaders, parts, seconds to build the decode-once cache)."""
    env = dist.Env(device=dist.pick_device(cfg.train.device, 0))
    table = read_table(cfg)
    fold = np.full(len(table.df), 1)
    fold[: len(fold) // 5] = 0
    cfg = train.resolve_defaults(cfg, env, table, fold)
    t0 = time.perf_counter()
    data = train.build_loaders(cfg, env, table, fold, train.decode_images(cfg, table))
    cache_s = time.perf_counter() - t0
    return cfg, env, table, data, train.build_parts(cfg, env, table, data), cache_s


def run(cfg: Config, batches: int = 10, rounds: int = 2) -> dict:
    cfg, env, table, data, parts, cache_s = setup(cfg)
    ctx, model, opt = parts.ctx, parts.model, parts.optimizer
    mean, std = ctx.mean.cpu().tolist(), ctx.std.cpu().tolist()
    hw, bs = img_hw(cfg), data.batch_size
    tr = data.train.dataset
    naive = DataLoader(NaiveDataset(list(tr.paths), tr.labels, hw, mean, std, True), batch_size=bs, shuffle=True,
                       num_workers=cfg.data.num_workers, drop_last=True)

    def step(x, y, normalised=False):
        if normalised:
            x, y = x.to(env.device), y.to(env.device)
        else:
            x, y = ctx.batch(x, y)
        with ctx.autocast():
            loss = parts.loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    mem_x = torch.randint(0, 255, (bs, 3, *hw), dtype=torch.uint8)
    mem_y = torch.randint(0, len(table.classes), (bs,))
    ways = {
        "data_kit": lambda: _time_loader(data.train, batches * 3),
        "data_naive": lambda: _time_loader(naive, batches * 3),
        "train_limit": lambda: _time_steps(step, ((mem_x, mem_y) for _ in range(batches)), batches),
        "train_kit": lambda: _time_steps(step, data.train, batches),
        "train_naive": lambda: _time_steps(lambda x, y: step(x, y, True), naive, batches),
    }
    # Interleaved rounds, best of each: a shared, noisy machine slows some rounds, never speeds one up.
    out: dict[str, float] = {}
    for _ in range(rounds):
        for name, fn in ways.items():
            out[name] = max(out.get(name, 0.0), fn())
    val = data.val.dataset
    naive_val = DataLoader(NaiveDataset(list(val.paths), val.labels, hw, mean, std, False), batch_size=bs * 2,
                           num_workers=cfg.data.num_workers)
    model.eval()
    with torch.inference_mode():
        t = time.perf_counter()
        engine.predict_logits(model, data.val, ctx)
        out["infer_kit"] = len(val) / (time.perf_counter() - t)
        t = time.perf_counter()
        for x, _ in naive_val:
            model(x.to(env.device))
        out["infer_naive"] = len(val) / (time.perf_counter() - t)
    out["cache_build_s"] = cache_s
    return out


def report(r: dict) -> str:
    lines = [
        "images/s (higher is better); ratios are what to quote",
        f"  data only : kit {r['data_kit']:9.1f}  naive {r['data_naive']:9.1f}   kit/naive {r['data_kit'] / r['data_naive']:.1f}x",
        f"  train step: limit {r['train_limit']:7.1f}  kit {r['train_kit']:7.1f}  naive {r['train_naive']:7.1f}   "
        f"kit/limit {r['train_kit'] / r['train_limit']:.2f}  kit/naive {r['train_kit'] / r['train_naive']:.2f}x",
        f"  inference : kit {r['infer_kit']:9.1f}  naive {r['infer_naive']:9.1f}   kit/naive {r['infer_kit'] / r['infer_naive']:.2f}x",
        f"  (decode-once cache built in {r['cache_build_s']:.1f}s, paid once per run)",
    ]
    return "\n".join(lines)
