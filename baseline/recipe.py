"""`baseline bench recipe`: the kit's defaults against the simplest honest script, on many data sets.

For every data set of the suite (data/suite.py) and every seed, two runs on the same split, model,
image size and epochs:
  kit        `baseline train` with its defaults (only data set, seed, epochs and model given);
  reference  a minimal loop: images decoded into one tensor, AdamW + one-cycle, batch 32, random
             flip, label smoothing 0.1, evaluated every epoch.
Both report their best validation macro-F1 and wall time. The held-out set is reported last.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import f1_score

from . import train
from .config import Config, load_config
from .data import suite
from .data.layouts import read_table
from .data.split import load_or_write_folds

log = logging.getLogger("baseline")

REF_BATCH, REF_LR, REF_SMOOTHING = 32, 1e-3, 0.1
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def reference(model_name: str, paths: list[str], labels: np.ndarray, is_val: np.ndarray, hw: tuple[int, int],
              n_cls: int, epochs: int, seed: int) -> float:
    """The 60-line script: best val macro-F1 over its epochs."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB").resize((hw[1], hw[0]), Image.BILINEAR)))
                     for p in paths]).permute(0, 3, 1, 2)
    x = (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    y = torch.tensor(labels)
    tr, va = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    model = timm.create_model(model_name, num_classes=n_cls)
    steps = max(1, len(tr) // REF_BATCH)
    opt = torch.optim.AdamW(model.parameters(), lr=REF_LR)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=REF_LR, total_steps=epochs * steps)
    best = 0.0
    for _ in range(epochs):
        model.train()
        order = rng.permutation(tr)
        for s in range(steps):
            idx = order[s * REF_BATCH:(s + 1) * REF_BATCH]
            xb = x[idx]
            flip = torch.rand(len(idx)) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=REF_SMOOTHING)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.inference_mode():
            pred = torch.cat([model(x[va[i:i + 256]]).argmax(1) for i in range(0, len(va), 256)])
        best = max(best, f1_score(labels[va], pred.numpy(), average="macro", zero_division=0))
    return float(best)


def set_config(ds: suite.DataSet, folder: Path, seed: int, epochs: int, run_dir: Path, extra: list[str]) -> Config:
    over = {"data.root": str(folder), **ds.overrides, "seed": seed, "train.epochs": epochs,
            "run.dir": str(run_dir), "run.name": f"{ds.name}-s{seed}", "log.wandb.mode": "disabled",
            "log.figures": False}  # many short runs, read by their numbers
    return load_config(None, [f"{k}={v}" for k, v in over.items()] + list(extra))


def one(ds: suite.DataSet, folder: Path, seed: int, epochs: int, run_dir: Path, extra: list[str]) -> dict:
    """Kit then reference on one data set and seed, the same split (written before either is timed)."""
    cfg = set_config(ds, folder, seed, epochs, run_dir, extra)
    table = read_table(cfg)
    fold, _ = load_or_write_folds(cfg, table)
    t0 = time.perf_counter()
    summary = train.run(cfg)
    kit_s = time.perf_counter() - t0
    hw = tuple(summary["img_size"])
    t0 = time.perf_counter()
    ref_f1 = reference(cfg.model.name, table.df["path"].tolist(), table.df["label"].to_numpy(),
                       fold == cfg.split.fold, hw, len(table.classes), cfg.train.epochs, seed)
    ref_s = time.perf_counter() - t0
    shutil.rmtree(run_dir / cfg.run.name, ignore_errors=True)
    return {"set": ds.name, "seed": seed, "img_size": f"{hw[0]}x{hw[1]}", "epochs": cfg.train.epochs,
            "kit_batch": summary["batch_size_per_process"], "kit_f1": summary["val_f1"], "ref_f1": ref_f1,
            "kit_s": kit_s, "ref_s": ref_s}


def run(cfg: Config, extra: list[str]) -> pd.DataFrame:
    """Every (data set, seed); rows as they finish, also written to `<bench.out>/recipe_runs.csv`."""
    b = cfg.bench
    div = 8 if b.tiny else 1
    sets = [s for s in suite.SUITE if not b.sets or s.name in b.sets]
    sets.sort(key=lambda s: s.held_out)  # the honest check last
    out = Path(b.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ds in sets:
            folder = suite.ensure(ds, Path(b.root), div)
            for seed in range(b.seeds):
                rows.append(one(ds, folder, seed, 1 if b.tiny else ds.epochs, Path(tmp), extra))
                log.info("recipe %s seed %d: kit %.4f in %.0fs, reference %.4f in %.0fs", ds.name, seed,
                         rows[-1]["kit_f1"], rows[-1]["kit_s"], rows[-1]["ref_f1"], rows[-1]["ref_s"])
                pd.DataFrame(rows).to_csv(out / "recipe_runs.csv", index=False)
    return pd.DataFrame(rows)


def table(rows: pd.DataFrame) -> pd.DataFrame:
    """One line per data set: F1 mean and std over seeds, the difference, and the time ratio."""
    held = {s.name for s in suite.SUITE if s.held_out}
    g = rows.groupby("set", sort=False)
    t = pd.DataFrame({
        "img_size": g["img_size"].first(), "epochs": g["epochs"].first(), "seeds": g.size(),
        "kit_f1": g["kit_f1"].mean(), "kit_std": g["kit_f1"].std(ddof=0),
        "ref_f1": g["ref_f1"].mean(), "ref_std": g["ref_f1"].std(ddof=0),
        "time_ratio": g["kit_s"].sum() / g["ref_s"].sum(), "kit_s": g["kit_s"].mean(), "ref_s": g["ref_s"].mean(),
    })
    t["kit_minus_ref"] = t["kit_f1"] - t["ref_f1"]
    t["ok"] = (t["kit_minus_ref"] >= -0.01) & (t["time_ratio"] <= 1.5)
    t = t.loc[sorted(t.index, key=lambda n: n in held)]  # stable: the held-out set last
    t.index = [f"{n} (held out)" if n in held else n for n in t.index]
    return t.reset_index(names="data set")


def markdown(t: pd.DataFrame) -> str:
    lines = ["| data set | img_size | epochs | kit val macro-F1 | reference val macro-F1 | kit − ref | "
             "kit time / ref time | kit s | ref s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in t.itertuples(index=False):
        lines.append(f"| {r[0]} | {r.img_size} | {r.epochs} | {r.kit_f1:.3f} ± {r.kit_std:.3f} | "
                     f"{r.ref_f1:.3f} ± {r.ref_std:.3f} | {r.kit_minus_ref:+.3f} | {r.time_ratio:.2f} | "
                     f"{r.kit_s:.0f} | {r.ref_s:.0f} |")
    return "\n".join(lines)


def main(cfg: Config, overrides: list[str]) -> int:
    """Run the suite, print and save the table; exit 1 when a data set misses the bar."""
    extra = [o for o in overrides if not o.startswith("bench.")]
    t = table(run(cfg, extra))
    md = markdown(t)
    out = Path(cfg.bench.out)
    (out / "recipe.md").write_text(md + "\n")
    t.to_csv(out / "recipe.csv", index=False)
    print(md)
    print(f"(rows per seed in {out / 'recipe_runs.csv'}; the bar: kit >= ref - 0.01 and kit time <= 1.5x ref)")
    return 0 if t["ok"].all() else 1
