"""torchrun environment, the one rank gate, and exact gathers for evaluation."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import LOST_PEER


@dataclass(frozen=True)
class Env:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    local_rank: int = 0  # on this machine
    local_world: int = 1  # processes of the run on this machine

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cuda":
        return torch.device(f"cuda:{local_rank}")
    return torch.device(name)


PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Linux: the kernel kills this process when its parent dies, so a killed sweep worker leaves no
    trial training on without it (the trial's retry would find the run folder busy)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: a killed worker's trial runs to its end
        pass


def setup(device: str = "auto") -> Env:
    """Read torchrun's variables (WORLD_SIZE, RANK, LOCAL_RANK, LOCAL_WORLD_SIZE) and join the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    dev = pick_device(device, local_rank)
    if os.environ.get(REPORT_ENV):  # a process of our own launcher (launch): it goes when the launcher goes
        die_with_parent()
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Env(rank, world, dev, local_rank, local_world)


@contextlib.contextmanager
def session(device: str = "auto"):
    """setup() for the block, teardown() after it, also on errors."""
    env = setup(device)
    try:
        yield env
    finally:
        teardown()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: Env) -> None:
    if env.distributed:
        dist.barrier()


def gather_rows(env: Env, t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows (ranks may hold different counts), in rank order, on all ranks."""
    if not env.distributed:
        return t
    n = torch.tensor([t.shape[0]], device=t.device)
    counts = [torch.zeros_like(n) for _ in range(env.world_size)]
    dist.all_gather(counts, n)
    size = int(max(c.item() for c in counts))
    padded = torch.zeros((size, *t.shape[1:]), dtype=t.dtype, device=t.device)
    padded[: t.shape[0]] = t
    parts = [torch.zeros_like(padded) for _ in range(env.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(c.item())] for p, c in zip(parts, counts)])


def sync_buffers(env: Env, module: torch.nn.Module) -> None:
    """Rank 0's BatchNorm statistics on every rank, so evaluation matches the saved checkpoint."""
    if env.distributed:
        for b in module.buffers():
            dist.broadcast(b, src=0)


def broadcast_module(env: Env, module: torch.nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank."""
    if env.distributed:
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def all_min(env: Env, value: int) -> int:
    return _all_reduce_int(env, value, dist.ReduceOp.MIN)


def all_max(env: Env, value: int) -> int:
    return _all_reduce_int(env, value, dist.ReduceOp.MAX)


def _all_reduce_int(env: Env, value: int, op) -> int:
    if not env.distributed:
        return value
    t = torch.tensor([value], device=env.device)
    dist.all_reduce(t, op=op)
    return int(t.item())


def main_first(env: Env, fn):
    """`fn()` on rank 0 alone (writing a shared file), the others waiting; its result on rank 0, None
    elsewhere. If it fails, every rank raises its error, so none is left waiting for a rank that left."""
    if not env.distributed:
        return fn()
    result, error = None, None
    if env.is_main:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - handed to every rank, raised there
            error = e
    error = broadcast_object(env, error)
    if error is not None:
        raise error
    return result


def local_first(env: Env, fn):
    """`fn()` on each machine's local rank 0 (writing a file that machine's processes share), the others
    waiting; every rank gets its own machine's result (small and picklable). If it failed anywhere, every
    rank raises (its own machine's error first), so none is left waiting."""
    if not env.distributed:
        return fn()
    result, error = None, None
    if env.is_local_main:
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - handed to every rank, raised there
            error = e
    everyone = gather_objects(env, (result, error))
    mine = everyone[env.rank - env.local_rank]  # torchrun numbers a machine's processes contiguously
    errors = [mine[1]] + [e for _, e in everyone if e is not None]
    if any(e is not None for e in errors):
        raise next(e for e in errors if e is not None)
    return mine[0]


def broadcast_object(env: Env, obj):
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_mean(env: Env, t: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar tensor over ranks (the train loss every rank saw, not rank 0's alone)."""
    if not env.distributed:
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / env.world_size


def gather_objects(env: Env, obj) -> list:
    """Every rank's `obj`, in rank order, on every rank (per-rank RNG states for a checkpoint)."""
    if not env.distributed:
        return [obj]
    out = [None] * env.world_size
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------- a lost peer
log = logging.getLogger("baseline")


_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Socket Timeout",
              "NCCL communicator was aborted", "ProcessGroupNCCL", "ProcessGroupGloo", "gloo/transport")


# launch() -> its processes: the file where rank 0 leaves its lost-peer line (where the run stood, how to
# resume), so the launcher says it in one line with what it knows (which rank died, by what signal).
REPORT_ENV = "BASELINE_LOST_PEER_REPORT"


def report_lost_peer(message: str) -> bool:
    """Hand `message` to our launcher; False when there is none (plain torchrun: print it yourself)."""
    path = os.environ.get(REPORT_ENV)
    if not path:
        return False
    try:
        Path(path).write_text(message)
    except OSError:
        return False
    return True


def is_lost_peer(env: Env, e: BaseException) -> bool:
    """A collective failed because a peer is gone (gloo's and NCCL's errors, not ours)."""
    return env.distributed and (isinstance(e, dist.DistError) or any(s in str(e) for s in _PEER_GONE))


def peer_error(e: BaseException) -> str:
    """The part of gloo's / NCCL's message that says what happened, without its source path."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    hit = next((s for s in _PEER_GONE if s in text), None)
    return hit[0].lower() + hit[1:] if hit and " " in hit else text.rsplit("] ", 1)[-1][:120]


def launch(nproc: int, args: list[str]) -> int:
    """`python -m baseline ARGS` as `nproc` processes on this machine: torchrun's own launcher, run in
    this process so that a process's death is one line (which rank, by what signal) and a documented
    exit code instead of torchrun's report. A process that exits with its own code (2 bad input,
    3 out of memory, 130/143 after a signal) has printed its own line; that code is returned."""
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import elastic_launch

    ns = torchrun.parse_args(["--standalone", f"--nproc_per_node={nproc}", "-m", "baseline", *args])
    ns.rdzv_backend, ns.rdzv_endpoint, ns.rdzv_id = "c10d", "localhost:0", str(uuid.uuid4())  # --standalone
    ns.master_port = ns.master_port or 29500
    # CPU threads shared among the processes (torchrun would give each one thread, and say so at length)
    threads = os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    log.info("%d processes, %s CPU threads each (OMP_NUM_THREADS)", nproc, threads)
    quiet = logging.getLogger("torch.distributed")
    level, quiet.level = quiet.level, logging.CRITICAL  # its banner, warnings and report: we say what matters
    config, cmd, cmd_args = torchrun.config_from_args(ns)
    with tempfile.TemporaryDirectory(prefix="baseline-launch-") as tmp:
        report = Path(tmp) / "lost_peer.txt"
        os.environ[REPORT_ENV] = str(report)  # the processes inherit it
        try:
            elastic_launch(config, cmd)(*cmd_args)
            return 0
        except SignalException as e:  # Ctrl-C / SIGTERM on this launcher: the processes got it too
            return 128 + int(e.sigval)
        except ChildFailedError as e:
            return say_failure(e, nproc, report.read_text() if report.is_file() else "")
        finally:
            os.environ.pop(REPORT_ENV, None)
            quiet.setLevel(level)


def say_failure(e, nproc: int, survivor: str) -> int:
    """One line for a failed multi-process run, and its exit code. A process that exited with its own
    code has said why (2 bad input, 3 out of memory, 130/143 a signal, 1 a crash); one killed by a signal
    could not, so this says which, with the survivor's word on where the run stood and how to resume."""
    rank, failure = first_failure(e)
    if failure.exitcode > 0 and failure.exitcode != LOST_PEER:
        if survivor:  # e.g. one rank crashed (its traceback is above): how to go on
            print(f"error: {survivor}", file=sys.stderr)
        return failure.exitcode
    if failure.exitcode < 0:
        oom = (" (the out-of-memory killer uses SIGKILL: see dmesg; a smaller train.batch_size or fewer "
               "data.num_workers need less memory)") if failure.exitcode == -9 else ""
        what = f"process rank {rank} of {nproc} (pid {failure.pid}) was killed by {failure.signal_name()}{oom}"
    else:
        what = f"process rank {rank} of {nproc} lost contact with the others"
    print(f"error: {what}; {survivor or 'the others stopped'}", file=sys.stderr)
    return LOST_PEER


def first_failure(e) -> tuple[int, object]:
    """The process that failed first: one killed by a signal other than the launcher's own SIGTERM, or
    else one that exited with a code, or else the first failure torchrun saw."""
    failures = sorted(e.failures.items())
    for pred in (lambda f: f.exitcode < 0 and f.exitcode != -15, lambda f: f.exitcode > 0 and f.exitcode != LOST_PEER,
                 lambda f: True):
        for rank, f in failures:
            if pred(f):
                return rank, f
    return e.get_first_failure()


def launch_command(nproc: int, args: list[str]) -> list[str]:
    """`python -m baseline ARGS` (the one place that builds that command line: cv's folds, sweeps'
    trials); `--nproc N` makes the command start its N processes itself (`launch`)."""
    return [sys.executable, "-m", "baseline", *args, *([f"--nproc={nproc}"] if nproc > 1 else [])]
