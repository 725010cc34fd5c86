"""`baseline bench`: the same model, batch and data four ways, in images per second.

limit     a plain step (forward, cross-entropy, backward, AdamW) of a fresh copy of the model on one
          normalised batch already in memory, in the faster memory format of the two (and bf16 on a
          GPU): the most any trainer and data pipeline can reach for this model and batch
kit step  the kit's own step (engine.train_one_epoch: AMP, accumulation, clipping, scaler, EMA, mixup as
          configured; the uint8 batch normalised on the device) on batches already in memory
kit       the same step fed by the kit's loader (decode-once cache, augmentation)
naive     PIL open + torchvision transforms per item, no cache, and a plain forward/backward/step
          (how most baselines load and train)
Also the loaders alone (no model), and inference (kit vs naive). Quote ratios, not absolute times.
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from .. import cpus, dist, engine, models, phases, session
from ..config import Config, img_hw
from ..data.layouts import read_table


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


class _First:
    """The first n batches of a loader, with a length (train_one_epoch reads it)."""

    def __init__(self, batches, n: int):
        self.batches, self.n = batches, n

    def __iter__(self):
        return itertools.islice(iter(self.batches), self.n)

    def __len__(self) -> int:
        return self.n


def _time_real_steps(learner: engine.Learner, batches, max_batches: int) -> float:
    """images/s of the trainer's own step; warm-up steps first (allocator, kernels: the first few steps
    of a shape run up to 20% slower on the CPU)."""
    engine.train_one_epoch(learner, _First(batches, 3), step=0)
    t0 = time.perf_counter()
    r = engine.train_one_epoch(learner, _First(batches, max_batches), step=3)
    return r["images"] / (time.perf_counter() - t0)


def plain_limit(cfg: Config, device: torch.device, n_cls: int, bs: int, hw: tuple[int, int],
                steps: int) -> tuple[float, bool]:
    """images/s of the simplest honest step on a fresh copy of the model, in whichever memory format is
    faster here; the rate and whether channels_last was the faster."""
    return max((_plain_rate(cfg, device, n_cls, bs, hw, steps, nhwc), nhwc) for nhwc in (False, True))


def _plain_rate(cfg: Config, device: torch.device, n_cls: int, bs: int, hw: tuple[int, int], steps: int,
                nhwc: bool) -> float:
    """All of the model training, AdamW at optim.lr, one normalised batch in memory; bf16 on a GPU."""
    from dataclasses import replace

    model = models.create(replace(cfg.model, pretrained=False), n_cls).to(device).train()
    x, y = torch.randn(bs, 3, *hw, device=device), torch.randint(0, n_cls, (bs,), device=device)
    if nhwc:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)

    def step(_x, _y):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = torch.nn.functional.cross_entropy(model(_x), _y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    _time_steps(step, itertools.repeat((x, y)), 3)  # warm-up: allocator, kernels
    return _time_steps(step, itertools.repeat((x, y)), steps + 1)


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
    loaders, learner, seconds to build the decode-once cache)."""
    env = dist.Env(device=dist.pick_device(cfg.train.device, 0))
    table = read_table(cfg)
    fold = np.full(len(table.df), 1)
    fold[: len(fold) // 5] = 0
    share = cpus.watch()
    cfg = session.resolve_defaults(cfg, env, table, fold, share=share)
    print(cpus.set_threads(cfg.train.threads, share, cfg.data.num_workers))
    t0 = time.perf_counter()
    train_ds, val_ds = session.build_datasets(cfg, table, fold, session.decode_images(cfg, table))
    cache_s = time.perf_counter() - t0
    learner = session.build_learner(cfg, env, table, stop=lambda step: False)
    batch = session.settle_batch_size(cfg, env, learner, len(table.classes), len(train_ds))
    loaders = session.build_loaders(cfg, env, train_ds, val_ds, batch)
    # The phase of the last epoch: where a run spends its time (after a head-only warm-up, the whole model).
    learner.phases = phases.Phases(cfg, learner.freezer, learner.model, env, len(loaders.train))
    learner.phases.enter(cfg.train.epochs - 1)
    return cfg, env, table, loaders, learner, cache_s


def run(cfg: Config, batches: int = 30, rounds: int = 2) -> dict:
    cfg, env, table, data, learner, cache_s = setup(cfg)
    ctx, model, opt = learner.ctx, learner.train_view, learner.optimizer
    mean, std = ctx.mean.cpu().tolist(), ctx.std.cpu().tolist()
    hw, bs = img_hw(cfg), data.batch_size
    tr = data.train.dataset
    naive = DataLoader(NaiveDataset(list(tr.paths), tr.labels, hw, mean, std, True), batch_size=bs, shuffle=True,
                       num_workers=cfg.data.num_workers, drop_last=True)

    def naive_step(x, y):
        x, y = x.to(env.device), y.to(env.device)
        with ctx.autocast():
            loss = learner.loss_fn(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    model.train()
    mem_x = torch.randint(0, 255, (bs, 3, *hw), dtype=torch.uint8)
    mem_y = torch.randint(0, len(table.classes), (bs,))
    limit_format: list[bool] = []

    def limit() -> float:
        rate, nhwc = plain_limit(cfg, env.device, len(table.classes), bs, hw, batches)
        limit_format.append(nhwc)
        return rate

    ways = {
        "data_kit": lambda: _time_loader(data.train, batches * 3),
        "data_naive": lambda: _time_loader(naive, batches * 3),
        "train_limit": limit,
        "train_kit_step": lambda: _time_real_steps(learner, itertools.repeat((mem_x, mem_y)), batches),
        "train_kit": lambda: _time_real_steps(learner, data.train, batches),
        "train_naive": lambda: _time_steps(naive_step, naive, batches),
    }
    # Interleaved rounds, best of each: a shared, noisy machine slows some rounds, never speeds one up.
    out: dict = {}
    for _ in range(rounds):
        for name, fn in ways.items():
            out[name] = max(out.get(name, 0.0), fn())
    out["limit_channels_last"] = limit_format[-1]
    out["kit_channels_last"] = learner.ctx.channels_last
    out.update(inference_rates(cfg, env, data, model, ctx, rounds))
    out["cache_build_s"] = cache_s
    return out


def inference_rates(cfg: Config, env: dist.Env, data, model, ctx: engine.StepCtx, rounds: int) -> dict:
    """images/s of the kit's prediction and of a naive loader feeding the same model, best of `rounds`
    after a warm-up round (the first batches of a new shape run cold)."""
    val = data.val.dataset
    mean, std = ctx.mean.cpu().tolist(), ctx.std.cpu().tolist()
    naive_val = DataLoader(NaiveDataset(list(val.paths), val.labels, img_hw(cfg), mean, std, False),
                           batch_size=data.batch_size * 2, num_workers=cfg.data.num_workers)
    model.eval()

    def naive_infer():
        for x, _ in naive_val:
            model(x.to(env.device))

    infer, out = {"infer_kit": lambda: engine.predict_logits(model, data.val, ctx), "infer_naive": naive_infer}, {}
    with torch.inference_mode():
        for r in range(rounds + 1):
            for name, fn in infer.items():
                t = time.perf_counter()
                fn()
                if r:
                    out[name] = max(out.get(name, 0.0), len(val) / (time.perf_counter() - t))
    return out


def report(r: dict) -> str:
    lines = [
        "images/s (higher is better); ratios are what to quote",
        f"  data only : kit {r['data_kit']:9.1f}  naive {r['data_naive']:9.1f}   "
        f"kit/naive {r['data_kit'] / r['data_naive']:.1f}x",
        f"  train step: limit {r['train_limit']:7.1f}  kit step {r['train_kit_step']:7.1f}  kit {r['train_kit']:7.1f}"
        f"  naive {r['train_naive']:7.1f}",
        f"              kit step/limit {r['train_kit_step'] / r['train_limit']:.2f}  "
        f"kit/limit {r['train_kit'] / r['train_limit']:.2f}  kit/naive {r['train_kit'] / r['train_naive']:.2f}x   "
        f"(limit {_layout(r['limit_channels_last'])}, kit {_layout(r['kit_channels_last'])})",
        f"  inference : kit {r['infer_kit']:9.1f}  naive {r['infer_naive']:9.1f}   "
        f"kit/naive {r['infer_kit'] / r['infer_naive']:.2f}x",
        f"  (decode-once cache built in {r['cache_build_s']:.1f}s, paid once per run)",
    ]
    return "\n".join(lines)


def _layout(nhwc: bool) -> str:
    return "channels_last" if nhwc else "contiguous"


# ---------------------------------------------------------------- the feeding side alone
GPU_GOAL = 3000  # img/s: resnet50 at 224 px, bf16, on an H100/H200 class GPU


def loader_run(cfg: Config, hw: tuple[int, int] = (224, 224), batch: int = 64, images: int = 640,
               workers: list[int] | None = None) -> dict:
    """The training loader alone at `hw` with the configured augmentation (aug.*), from the decode-once
    cache, for each worker count (0: the main process); and the same augmentation on whole batches
    (aug.on_device) on this machine's CPU. images/s, best of two passes after a warm-up pass."""
    from ..data import dataset as ds
    from ..data.batch_aug import BatchAug
    from ..data.transforms import train_transform

    table = read_table(cfg)
    paths = (table.df["path"].tolist() * (images // len(table.df) + 1))[:images]
    t0 = time.perf_counter()
    cache = ds.build_cache(paths, hw, "ram", None, 0.0, cfg.data.max_pixels, "bilinear")
    out = {"decode": len(paths) / (time.perf_counter() - t0), "cores": cpus.usable_cores(), "hw": hw,
           "batch": batch, "workers": {}}
    counts = workers or sorted({0, 1, 2, out["cores"]})
    data = ds.ImageDataset(paths, [0] * len(paths), hw, train_transform(cfg.aug, hw), cache)
    for w in counts:
        loader = ds.train_loader(data, batch, w, cfg.seed, 0, 1)
        rates = []
        for epoch in range(3):  # the first pass starts the workers
            ds.set_epoch(loader, cfg.seed, epoch)
            rates.append(_time_loader(loader, len(loader)))
        out["workers"][w] = max(rates[1:])
        del loader
    aug = BatchAug(cfg.aug, cfg.seed)
    x = torch.from_numpy(np.ascontiguousarray(cache[:batch])).permute(0, 3, 1, 2).contiguous()
    aug(x, 0)
    t0, reps = time.perf_counter(), max(1, images // batch)
    for k in range(reps):
        aug(x, k + 1)
    out["on_device_cpu"] = reps * batch / (time.perf_counter() - t0)
    return out


def loader_report(r: dict) -> str:
    h, w = r["hw"]
    one = r["workers"].get(1) or r["workers"][min(r["workers"])]
    lines = [f"training loader at {w}x{h}, batch {r['batch']}, default augmentation, from the decode-once cache "
             f"(images/s; {r['cores']} usable core(s) here)"]
    for n, rate in r["workers"].items():
        who = "main process" if n == 0 else f"{n} worker(s)"
        lines.append(f"  {who:<16} {rate:8.0f}" + (f"   {rate / n:6.0f} per worker" if n else ""))
    need = math.ceil(GPU_GOAL / one)
    lines += [f"  a GPU at {GPU_GOAL} img/s needs about {need} worker(s) of this machine's speed "
              f"({'has' if need <= r['cores'] else 'more than'} its {r['cores']} core(s))",
              f"  the same augmentation on whole batches (aug.on_device) on this CPU: {r['on_device_cpu']:.0f}",
              f"  decoding the images once: {r['decode']:.0f} img/s"]
    return "\n".join(lines)
