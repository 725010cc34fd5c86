"""`baseline gpus`: one line per visible GPU, the numbers the memory columns and the out-of-memory message use.

This process's memory from torch's own counters (allocated, reserved, peaks; what the caching allocator
holds but does not use is the fragmentation); the device's free and total memory from the driver
(`torch.cuda.mem_get_info`); what *other* processes hold from NVIDIA's NVML binding (`nvidia-ml-py`),
matched to torch's device by UUID, because NVML numbers every GPU of the machine and ignores
CUDA_VISIBLE_DEVICES. Not GPUtil: its last release is from 2018, it shells out to nvidia-smi and parses
its text, knows nothing of this process's allocator, and breaks on newer Pythons (distutils).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

MB = 2**20


@dataclass(frozen=True)
class GpuMemory:
    index: int  # torch's (after CUDA_VISIBLE_DEVICES)
    name: str
    uuid: str
    total_mb: float
    free_mb: float  # on the device, every process counted
    allocated_mb: float  # by this process's tensors
    reserved_mb: float  # by this process's caching allocator
    peak_allocated_mb: float
    peak_reserved_mb: float
    others_mb: float | None  # held by other processes (NVML); None where NVML cannot say

    @property
    def fragmentation(self) -> float:
        """Reserved by this process but not allocated, as a share of what it reserved."""
        return 1 - self.allocated_mb / self.reserved_mb if self.reserved_mb else 0.0

    def line(self) -> str:
        others = "?" if self.others_mb is None else f"{self.others_mb / 1024:.1f}"
        return (f"cuda:{self.index} {self.name} ({self.uuid}): {self.free_mb / 1024:.1f} of {self.total_mb / 1024:.1f}"
                f" GiB free; this process {self.allocated_mb / 1024:.2f} GiB allocated, {self.reserved_mb / 1024:.2f}"
                f" reserved (peak {self.peak_reserved_mb / 1024:.2f}, {self.fragmentation:.0%} of it unused); other "
                f"processes {others} GiB")


def torch_uuid(index: int) -> str:
    """The device's UUID as NVML spells it ("GPU-..."); torch gives it without the prefix."""
    u = str(torch.cuda.get_device_properties(index).uuid)
    return u if u.startswith(("GPU-", "MIG-")) else f"GPU-{u}"


def others_by_uuid() -> dict[str, float] | None:
    """MiB of GPU memory held by processes other than this one, per GPU UUID (all of the machine's
    GPUs, as NVML sees them); None where NVML is not there (no driver library, no nvidia-ml-py)."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - pynvml missing, or NVMLError_LibraryNotFound / DriverNotLoaded
        return None
    try:
        out = {}
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = pynvml.nvmlDeviceGetUUID(h)
            uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
            procs = pynvml.nvmlDeviceGetComputeRunningProcesses(h) + pynvml.nvmlDeviceGetGraphicsRunningProcesses(h)
            out[uuid] = sum((p.usedGpuMemory or 0) for p in procs if p.pid != os.getpid()) / MB
        return out
    except Exception:  # noqa: BLE001 - e.g. NVML_ERROR_NO_PERMISSION inside some containers
        return None
    finally:
        pynvml.nvmlShutdown()


def device_memory(index: int, others: dict[str, float] | None = None) -> GpuMemory:
    free, total = torch.cuda.mem_get_info(index)
    uuid = torch_uuid(index)
    return GpuMemory(index, torch.cuda.get_device_name(index), uuid, total / MB, free / MB,
                     torch.cuda.memory_allocated(index) / MB, torch.cuda.memory_reserved(index) / MB,
                     torch.cuda.max_memory_allocated(index) / MB, torch.cuda.max_memory_reserved(index) / MB,
                     None if others is None else others.get(uuid, 0.0))


def visible() -> list[GpuMemory]:
    if not torch.cuda.is_available():
        return []
    others = others_by_uuid()
    return [device_memory(i, others) for i in range(torch.cuda.device_count())]


def report_lines() -> list[str]:
    gpus = visible()
    if not gpus:
        why = ("CUDA_VISIBLE_DEVICES is empty" if os.environ.get("CUDA_VISIBLE_DEVICES") == "" else
               "torch sees no CUDA device" + ("" if torch.version.cuda else " (a CPU-only torch build)"))
        return [f"no GPU visible: {why}; training runs on the CPU"]
    return [g.line() for g in gpus]


def main() -> int:
    print("\n".join(report_lines()))
    return 0
