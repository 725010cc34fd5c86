"""Feeding the model: persistent loader workers and their seeds, threads per process, workers per rank,
one decode per machine."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from baseline import cpus, defaults
from baseline.cli import main
from baseline.config import AugCfg, load_config
from baseline.data import dataset as ds
from baseline.data.layouts import read_table
from baseline.data.transforms import train_transform


def _epochs(root, workers: int, epochs=(3, 3, 4)):
    paths = read_table(load_config(None, [f"data.root={root}"])).df.path.tolist()[:48]
    d = ds.ImageDataset(paths, list(range(len(paths))), (16, 16), train_transform(AugCfg(), (16, 16)),
                        ds.build_cache(paths, (16, 16), "ram", None, 1))
    loader = ds.train_loader(d, 8, workers, seed=1, rank=0, world=1)
    out = []
    for e in epochs:
        ds.set_epoch(loader, 1, e)
        out.append([(x.clone(), y.clone()) for x, y in loader])
    return loader, out


def _same(a, b) -> bool:
    return all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True))


def test_persistent_workers_see_each_epochs_seed_and_match_the_main_process(synth_root):
    loader, (a, b, c) = _epochs(synth_root, workers=2)
    assert loader.persistent_workers and loader._iterator is not None  # the same two workers all along
    assert _same(a, b)  # epoch 3 again: same order, same augmentation
    assert not _same(a, c)  # epoch 4: another order and augmentation (the seed reached the workers)
    _, (w0,) = _epochs(synth_root, workers=0, epochs=(3,))
    assert _same(a, w0)  # what is learned does not depend on the worker count


class _Draws(Dataset):
    """What a worker's NumPy stream gives, with the worker's id."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i):
        info = torch.utils.data.get_worker_info()
        return torch.tensor([np.random.randint(1 << 30), info.id if info else -1])


def _draws(seed: int) -> list[tuple[int, int]]:
    loader = DataLoader(_Draws(), batch_size=1, num_workers=2, generator=torch.Generator().manual_seed(seed),
                        **ds.worker_options(2))
    first, second = [tuple(b[0].tolist()) for b in loader], [tuple(b[0].tolist()) for b in loader]
    return first + second


def test_worker_numpy_seeds_differ_by_worker_and_epoch_and_repeat_with_the_seed():
    run = _draws(5)
    by_worker = {w: [v for v, ww in run if ww == w] for w in (0, 1)}
    assert set(by_worker[0]).isdisjoint(by_worker[1])  # two workers, two streams (not the parent's copy)
    assert len(set(v for v, _ in run)) == len(run)  # the second epoch goes on, it does not repeat
    assert _draws(5) == run and _draws(6) != run


def test_two_runs_with_two_workers_give_the_same_metrics(tiny, tmp_path):
    for name in ("a", "b"):
        assert main(["train", *tiny(**{"data.num_workers": 2, "train.epochs": 2, "run.name": name})]) == 0
    rows = [json.loads((tmp_path / "runs" / n / "summary.json").read_text()) for n in ("a", "b")]
    assert rows[0]["val_loss"] == rows[1]["val_loss"] and rows[0]["val_f1"] == rows[1]["val_f1"]


# ---------------------------------------------------------------- threads and workers per process
def test_threads_are_the_free_cores_split_among_local_processes_less_workers():
    assert cpus.Share(cores=16, busy=0.0, local_world=1).threads() == 16
    assert cpus.Share(16, 0.0, 8).threads() == 2
    assert cpus.Share(16, 0.0, 2).threads(workers=3) == 5
    assert cpus.Share(2, 0.0, 2).threads() == 1  # NPROC=2 on 2 cores: one thread each, not two
    assert cpus.Share(2, 1.0, 1).threads() == 1  # a second job on one of two cores
    assert cpus.Share(2, 0.4, 1).threads() == 2  # a little background noise is not a job
    assert cpus.Share(4, 9.0, 1).threads() == 1 and cpus.Share(8, 0.0, 2).threads(workers=7) == 1


def test_set_threads_sets_torchs_thread_count_and_says_why():
    before = torch.get_num_threads()
    try:
        line = cpus.set_threads("auto", cpus.Share(2, 1.0, 1), 0)
        assert torch.get_num_threads() == 1 and line.startswith("threads: 1 per process")
        assert "1.0 busy with other processes" in line
        assert cpus.set_threads(3, cpus.Share(2, 1.0, 1), 0).startswith("threads: 3 per process (train.threads)")
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_cgroup_quota_v2_and_v1(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpus.cgroup_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpus.cgroup_quota(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cpus.cgroup_quota(v1) == 2.0


def test_busy_cores_sees_a_spinning_process():
    import multiprocessing as mp

    idle = cpus.busy_cores(0.5)
    spinner = mp.get_context("spawn").Process(target=_spin, daemon=True)
    spinner.start()
    try:
        import time

        time.sleep(1.0)  # spawned and spinning
        busy = cpus.busy_cores(0.5)
    finally:
        spinner.kill()
    assert busy > idle + 0.6, (idle, busy)


def _spin() -> None:
    while True:
        pass


def test_workers_follow_the_local_world_size():
    share = cpus.Share(cores=16, busy=0.0, local_world=8)
    assert defaults.workers_for(torch.device("cuda", 0), share.per_process()) == 1  # 2 cores each: 1 worker
    assert defaults.workers_for(torch.device("cuda", 0), cpus.Share(16, 0.0, 1).per_process()) == 8
    assert defaults.workers_for(torch.device("cuda", 0), cpus.Share(16, 0.0, 2).per_process()) == 7
    assert defaults.workers_for(torch.device("cpu"), share.per_process()) == 0


def test_a_run_logs_its_threads(tiny, tmp_path):
    assert main(["train", *tiny(**{"train.threads": 1, "run.name": "t"})]) == 0
    log = (tmp_path / "runs" / "t" / "train.log").read_text()
    assert "threads: 1 per process (train.threads)" in log


@pytest.mark.parametrize("value", ["0", "x"])
def test_bad_thread_counts_are_refused(value, tiny, capsys):
    assert main(["train", *tiny(**{"train.threads": value})]) == 2
    assert "train.threads" in capsys.readouterr().err


# ---------------------------------------------------------------- one decode per machine
def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _decode_in_rank(rank: int, world: int, port: int, overrides: list[str], out) -> None:
    """One process of a 2-process group: the RAM cache, then the disk cache, each decode counted."""
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from baseline import dist, session

    real, mode = ds._decode, {"now": ""}

    def counted(*args, **kwargs):
        with open(out / f"decodes-{mode['now']}{rank}.txt", "a") as f:
            f.write("1\n")
        return real(*args, **kwargs)

    ds._decode = counted
    with dist.session("cpu") as env:
        for mode["now"] in ("ram", "disk"):
            cfg = load_config(None, [*overrides, f"data.cache={mode['now']}"])
            cache = session.decode_images(cfg, read_table(cfg), env)
            np.save(out / f"cache-{mode['now']}{rank}.npy", np.asarray(cache.cache))
            if mode["now"] == "ram":
                dist.barrier(env)
                (out / f"shm-left{rank}.txt").write_text(str(len(list(ds.SHARED_DIR.glob("baseline-*")))))


def test_the_processes_of_one_machine_decode_the_images_once(synth_copy, tmp_path):
    import shutil

    import torch.multiprocessing as tmp_mp

    shutil.rmtree(synth_copy / ".cache", ignore_errors=True)  # the shared test data's caches, from other tests
    before = len(list(ds.SHARED_DIR.glob("baseline-*")))
    overrides = [f"data.root={synth_copy}", "data.img_size=24", "model.pretrained=false", "data.interpolation=bilinear"]
    tmp_mp.spawn(_decode_in_rank, args=(2, _free_port(), overrides, tmp_path), nprocs=2)
    n = len(read_table(load_config(None, overrides)).df)
    for mode in ("ram", "disk"):
        decodes = {r: len(f.read_text().split()) if (f := tmp_path / f"decodes-{mode}{r}.txt").is_file() else 0
                   for r in (0, 1)}
        assert decodes == {0: n, 1: 0}, mode  # local rank 0 decoded every image once; rank 1 none
        a, b = np.load(tmp_path / f"cache-{mode}0.npy"), np.load(tmp_path / f"cache-{mode}1.npy")
        assert a.shape == (n, 24, 24, 3) and np.array_equal(a, b)
    assert int((tmp_path / "shm-left0.txt").read_text()) == before  # the shared-memory file went once mapped
    assert len(list((synth_copy / ".cache").glob("*.npy"))) == 1  # the disk cache: one file; RAM left none


# ---------------------------------------------------------------- progress
def test_the_eta_is_the_whole_runs():
    from baseline import progress

    assert progress.run_eta(60, 9, 600) == "1:31:00"  # a minute left of this epoch, 9 more of 10 minutes


def test_progress_lines_off_a_terminal_count_and_time(caplog):
    import logging
    import time

    from baseline import progress

    def slow():
        for i in range(6):
            time.sleep(0.02)
            yield i

    with caplog.at_level(logging.INFO, logger="baseline"):
        assert list(progress.track(slow(), "predict", total=60, every_s=0.03, per_item=10)) == list(range(6))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("predict: ")]
    assert lines and all(" img/s, ETA 0:00:" in ln for ln in lines) and "/60 img" in lines[0]


def test_a_run_says_what_it_decodes_and_the_runs_eta(tiny, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO):
        assert main(["train", *tiny(**{"train.epochs": 2, "run.name": "eta", "data.cache": "ram"})]) == 0
    said = [r.getMessage() for r in caplog.records]
    decoding = next(i for i, m in enumerate(said) if m.startswith("decoding 210 images at 32x32 into memory"))
    assert decoding < next(i for i, m in enumerate(said) if m.startswith("run eta:"))  # while it happens
    log = (tmp_path / "runs" / "eta" / "train.log").read_text()
    assert "epoch 1/2" in log and "run ETA 0:" in log.split("epoch 1/2")[1].splitlines()[0]


def test_image_hashes_are_kept_between_runs_until_a_file_changes(synth_copy, tmp_path):
    import hashlib

    import pandas as pd

    from baseline.data.split import content_hashes

    paths = read_table(load_config(None, [f"data.root={synth_copy}"])).df.path.tolist()[:6]
    cache = tmp_path / "sha1.csv"
    first = content_hashes(paths, cache)
    assert first == [hashlib.sha1(open(p, "rb").read()).hexdigest() for p in paths]
    kept = pd.read_csv(cache)
    kept.loc[kept["path"].str.endswith(paths[0].split("/")[-1]), "sha1"] = "from-the-cache"
    kept.to_csv(cache, index=False)
    with open(paths[1], "ab") as f:  # a changed file: new size and mtime, hashed again
        f.write(b"\0")
    again = content_hashes(paths, cache)
    assert again[0] == "from-the-cache"  # not read again
    assert again[1] == hashlib.sha1(open(paths[1], "rb").read()).hexdigest() != first[1]
    assert again[2:] == first[2:]


# ---------------------------------------------------------------- augmentation on the device
def _batch(n=8, h=32, w=24):
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_batch_aug_is_a_function_of_seed_and_step():
    from baseline.data.batch_aug import BatchAug

    aug = BatchAug(AugCfg(hflip=0.5, affine=0.5, color=0.5, dropout=0.5), seed=3)
    x = _batch()
    a, b, c = aug(x, 7), aug(x, 7), aug(x, 8)
    assert a.dtype == torch.float32 and a.shape == x.shape and 0 <= a.min() and a.max() <= 255
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(BatchAug(AugCfg(), seed=4)(x, 7), BatchAug(AugCfg(), seed=3)(x, 7))


def test_batch_aug_does_each_kind_as_configured():
    from baseline.data.batch_aug import BatchAug

    x = _batch()
    off = AugCfg(hflip=0, affine=0, color=0, dropout=0)
    assert torch.equal(BatchAug(off, 0)(x, 1), x.float())  # nothing asked, nothing changed
    assert torch.equal(BatchAug(AugCfg(hflip=1, affine=0), 0)(x, 1), x.float().flip(3))
    moved = BatchAug(AugCfg(hflip=0, affine=1), 0)(x, 1)
    assert all(not torch.allclose(m, o) for m, o in zip(moved, x.float()))  # every image moved
    holes = BatchAug(AugCfg(hflip=0, affine=0, dropout=1), 0)(x + 1, 1)  # +1: no black pixels before
    zero_share = (holes == 0).all(1).float().mean((1, 2))
    assert ((zero_share > 1 / 64 * 0.5) & (zero_share < 2 / 16 + 0.01)).all(), zero_share


def test_a_run_can_augment_on_the_device(tiny, tmp_path):
    assert main(["train", *tiny(**{"aug.on_device": "true", "train.epochs": 2, "run.name": "dev"})]) == 0
    summary = json.loads((tmp_path / "runs" / "dev" / "summary.json").read_text())
    assert summary["epochs_done"] == 2 and summary["val_loss"] == summary["val_loss"]  # not NaN


def test_bench_loader_reports_each_worker_count(synth_root):
    from baseline.bench import speed as bench

    r = bench.loader_run(load_config(None, [f"data.root={synth_root}"]), hw=(64, 64), batch=16, images=64,
                         workers=[0, 1])
    assert set(r["workers"]) == {0, 1} and all(v > 0 for v in r["workers"].values()) and r["on_device_cpu"] > 0
    text = bench.loader_report(r)
    assert "1 worker(s)" in text and "per worker" in text and "a GPU at 3000 img/s needs about" in text


# ---------------------------------------------------------------- checkpoints that do not stall the loop
def test_checkpoints_written_in_the_background_are_the_ones_written_in_the_loop(tiny, tmp_path):
    for name, background in (("sync", "false"), ("async", "true")):
        over = tiny(**{"run.name": name, "train.epochs": 3, "train.keep_top_k": 2, "train.async_save": background})
        assert main(["train", *over]) == 0
    a, b = (tmp_path / "runs" / n / "checkpoints" for n in ("sync", "async"))
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())  # top-k kept, evicted gone
    for f in ("last.pt", "best.pt"):
        x, y = (torch.load(d / f, weights_only=True) for d in (a, b))
        assert x["epoch"] == y["epoch"] == (3 if f == "last.pt" else x["best_epoch"])
        assert all(torch.equal(x["model"][k], y["model"][k]) for k in x["model"])
        assert x["top"] == y["top"]


def test_a_snapshot_does_not_follow_the_live_tensors():
    from baseline.checkpoint import snapshot

    w = torch.zeros(3)
    snap = snapshot({"model": {"w": w}, "top": [[0.5, "epoch001.pt"]], "n": 1})
    w.add_(1)
    assert torch.equal(snap["model"]["w"], torch.zeros(3)) and snap["top"] == [[0.5, "epoch001.pt"]]


def test_the_train_and_val_datasets_index_the_one_cache_not_copies_of_it(synth_root):
    from baseline import session

    cfg = load_config(None, [f"data.root={synth_root}", "data.img_size=16", "model.pretrained=false",
                             "data.interpolation=bilinear", "split.folds=3", "data.age_edges=[30,60]"])
    table = read_table(cfg)
    fold = np.arange(len(table.df)) % 3
    cache = ds.build_cache(table.df.path.tolist(), (16, 16), "ram", None, 1)
    tr, va = session.build_datasets(cfg, table, fold, session.Images(cache))
    assert tr.cache is cache and va.cache is cache  # one array for the machine, shared by both (and by ranks)
    first_val = int(np.flatnonzero(fold == 0)[0])
    assert torch.equal(va[0][0], torch.from_numpy(cache[first_val]).permute(2, 0, 1))


def test_an_image_drawn_twice_in_an_epoch_is_augmented_two_ways_and_shares_keep_the_seeds(synth_root):
    """Balanced sampling draws with replacement: each draw's augmentation is seeded by its position in the
    epoch's whole draw, so repeats differ, and two ranks' shares (and a mid-epoch resume) carry exactly
    the one-process seeds."""
    paths = read_table(load_config(None, [f"data.root={synth_root}"])).df.path.tolist()[:40]
    labels = [0] * 36 + [1] * 4
    d = ds.ImageDataset(paths, labels, (16, 16), train_transform(AugCfg(hflip=0.5, affine=1.0), (16, 16)),
                        ds.build_cache(paths, (16, 16), "ram", None, 1))
    one = ds.BalancedSampler(labels, 1.0, 1, 0, seed=3)
    one.set_epoch(0)
    one.aug_seed = 7
    keys = list(one)
    first, again = next((k, m) for k in range(len(keys)) for m in range(k + 1, len(keys))
                        if keys[k][0] == keys[m][0])
    assert not torch.equal(d[keys[first]][0], d[keys[again]][0])  # the same image, augmented two ways
    ranks = [ds.BalancedSampler(labels, 1.0, 2, r, seed=3) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(0)
        r.aug_seed = 7
    assert [k for pair in zip(list(ranks[0]), list(ranks[1])) for k in pair] == keys
    ranks[1].skip = 5
    assert list(ranks[1]) == keys[11::2]  # resumed after 5 of its items: the same seeds as uninterrupted
