"""`baseline gpus` and the GPU memory numbers, on the CPU path (the GPU path: tests/test_gpu.py)."""

import subprocess
import sys

import pytest
import torch

from baseline import gpus
from tests.test_engine import clean_env


@pytest.mark.skipif(torch.cuda.is_available(), reason="the no-GPU path")
def test_without_a_gpu_it_is_one_line_saying_so():
    from baseline.cli import main

    assert main(["gpus"]) == 0
    assert gpus.report_lines() == ["no GPU visible: torch sees no CUDA device; training runs on the CPU"]
    hidden = subprocess.run([sys.executable, "-m", "baseline", "gpus"], capture_output=True, text=True,
                            env={**clean_env(), "CUDA_VISIBLE_DEVICES": ""})
    assert hidden.returncode == 0 and hidden.stdout.strip().splitlines() == [
        "no GPU visible: CUDA_VISIBLE_DEVICES is empty; training runs on the CPU"], hidden.stdout + hidden.stderr
    assert gpus.visible() == []


def test_nvml_without_a_driver_is_unknown_not_an_error():
    import pynvml  # nvidia-ml-py: in the lock

    assert hasattr(pynvml, "nvmlDeviceGetHandleByUUID")
    if not torch.cuda.is_available():
        assert gpus.others_by_uuid() is None  # no libnvidia-ml here: "?" in the line, not a traceback


def test_a_gpus_line_says_free_this_process_and_the_others():
    g = gpus.GpuMemory(0, "NVIDIA H200", "GPU-1234", total_mb=143771, free_mb=100000, allocated_mb=30720,
                       reserved_mb=40960, peak_allocated_mb=35000, peak_reserved_mb=40960, others_mb=2048)
    line = g.line()
    assert line.startswith("cuda:0 NVIDIA H200 (GPU-1234): 97.7 of 140.4 GiB free")
    assert "30.00 GiB allocated, 40.00 reserved" in line and "25% of it unused" in line
    assert line.endswith("other processes 2.0 GiB")
    assert "other processes ? GiB" in gpus.GpuMemory(0, "x", "GPU-0", 1, 1, 0, 0, 0, 0, None).line()
