"""The GPU tier: `pytest -m gpu` (`make gpu-test`) on a machine with CUDA; skipped, with the reason, without.
What only a GPU can show: a bf16 step in channels_last, torch.compile, the out-of-memory path (one line,
exit 3), NCCL collectives, pinned-memory loading with workers, the memory-fitted batch, the memory report."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from baseline.cli import main
from tests.test_engine import clean_env

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="no CUDA device here (the GPU tier runs where one is)")]


def gpu_overrides(tiny, **extra):
    return tiny(**{"train.device": "cuda", "data.num_workers": 2, **extra})


def test_a_bf16_channels_last_run_trains_and_records_gpu_memory(tiny, tmp_path):
    assert main(["train", *gpu_overrides(tiny, **{"run.name": "bf16", "train.epochs": 2})]) == 0
    cfg = (tmp_path / "runs" / "bf16" / "config.yaml").read_text()
    assert "channels_last: auto" in cfg or "channels_last: true" in cfg
    saved = torch.load(tmp_path / "runs" / "bf16" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["amp"] == "bf16" and saved["epoch"] == 2
    import pandas as pd

    rows = pd.read_csv(tmp_path / "runs" / "bf16" / "metrics.csv")
    assert (rows["mem_alloc_peak_mb"] > 0).all() and (rows["mem_reserved_peak_mb"] >= rows["mem_alloc_peak_mb"]).all()


def test_torch_compile_trains(tiny, tmp_path):
    assert main(["train", *gpu_overrides(tiny, **{"run.name": "compiled", "train.compile": "true"})]) == 0
    assert json.loads((tmp_path / "runs" / "compiled" / "summary.json").read_text())["epochs_done"] == 1


def test_out_of_memory_is_one_line_and_exit_3(tiny, tmp_path):
    over = gpu_overrides(tiny, **{"run.name": "oom", "data.img_size": 2048, "model.name": "resnet50",
                                  "train.batch_size": 64, "data.cache": "off"})
    r = subprocess.run([sys.executable, "-m", "baseline", "train", *over], capture_output=True, text=True,
                       env=clean_env(), timeout=300)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 3 and last.startswith("error: out of memory"), r.stderr[-2000:]
    assert "GiB reserved of" in last and "Traceback" not in r.stderr


def test_gpu_check_forced_oom_says_exit_3(synth_root, tmp_path):
    from baseline.bench import gpucheck

    over = [f"data.root={synth_root}", "log.wandb.mode=disabled", "model.name=test_resnet"]
    assert gpucheck.forced_oom(over, str(tmp_path)).startswith("exit 3: error: out of memory")


def test_nccl_collectives_through_torchrun(tmp_path):
    script = tmp_path / "nccl.py"
    script.write_text(
        "import torch, torch.distributed as d\n"
        "torch.cuda.set_device(0); d.init_process_group('nccl')\n"
        "t = torch.arange(6.0, device='cuda').view(3, 2); d.all_reduce(t)\n"
        "box = [None]; d.broadcast_object_list(box if d.get_rank() else ['x'], src=0)\n"
        "print('ok', float(t.sum()), d.get_backend()); d.destroy_process_group()\n")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                        str(script)], capture_output=True, text=True, env=clean_env(), timeout=180)
    assert r.returncode == 0 and "ok 15.0 nccl" in r.stdout, r.stderr[-2000:]


def test_a_torchrun_run_on_one_gpu(tiny, tmp_path):
    over = gpu_overrides(tiny, **{"run.name": "tr"})
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m",
                        "baseline", "train", *over], capture_output=True, text=True, env=clean_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "runs" / "tr" / "summary.json").read_text())["epochs_done"] == 1


def test_the_loader_pins_batches_with_persistent_workers(synth_root):
    from baseline.config import AugCfg, load_config
    from baseline.data import dataset as ds
    from baseline.data.layouts import read_table
    from baseline.data.transforms import train_transform

    paths = read_table(load_config(None, [f"data.root={synth_root}"])).df.path.tolist()
    d = ds.ImageDataset(paths, [0] * len(paths), (32, 32), train_transform(AugCfg(), (32, 32)),
                        ds.build_cache(paths, (32, 32), "ram", None, 1))
    loader = ds.train_loader(d, 16, 2, seed=0, rank=0, world=1)
    ds.set_epoch(loader, 0, 0)
    x, _ = next(iter(loader))
    assert loader.pin_memory and loader.persistent_workers and x.is_pinned()
    assert x.to("cuda", non_blocking=True).device.type == "cuda"


def test_the_data_batch_is_halved_until_it_fits():
    from baseline import dist, engine, memory, models
    from baseline.config import ModelCfg

    dev = torch.device("cuda:0")
    model = models.create(ModelCfg(name="resnet50", pretrained=False), 10).to(dev).to(memory_format=torch.channels_last)
    ctx = engine.StepCtx(dist.Env(device=dev), torch.zeros(3, device=dev), torch.ones(3, device=dev), torch.bfloat16,
                         True)
    total = torch.cuda.get_device_properties(dev).total_memory
    huge = 1 << 14  # 16,384 images at 448 px: over a terabyte of activations
    fits = memory.largest_fitting(model, ctx, 10, (448, 448), huge)
    assert 2 <= fits < huge, (fits, total)


def test_baseline_gpus_matches_nvml_to_torch_by_uuid():
    from baseline import gpus

    x = torch.zeros(256, 2**20, device="cuda")  # 1 GiB of this process's own
    lines = gpus.report_lines()
    assert len(lines) == torch.cuda.device_count() and lines[0].startswith("cuda:0 ")
    others = gpus.others_by_uuid()
    assert others is not None and gpus.torch_uuid(0) in others  # the same GPU, found by its UUID
    g = gpus.visible()[0]
    assert g.allocated_mb >= 1024 and g.reserved_mb >= g.allocated_mb and g.free_mb < g.total_mb
    del x
