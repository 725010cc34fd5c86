"""Checkpoints: atomic writes, best / last / top-k, RNG state for exact resume, and what a checkpoint
holds (the Checkpoint type: loop.checkpoint_state makes one; `read` gives one to loop.restore, the resume
guard in rundir, predict and the sweeps)."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import os
import random
import shutil
import subprocess
import threading
from dataclasses import dataclass, field, fields, replace
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

from .errors import CheckpointError
from .runfolder import BEST, LAST

PROGRESS = ("epoch", "step", "best", "best_epoch", "best_row", "wandb_id", "bad_epochs", "seconds", "batches_done",
            "loss_sum")  # epoch: the next to run; batches_done, loss_sum: of a preempted epoch
PROVENANCE = ("versions", "lock_sha256", "git_commit")


@dataclass
class Checkpoint:
    """What a checkpoint holds, in groups. On disk it is a flat dict with these keys (`to_dict`), so a
    file written before this type existed reads back (`from_dict` fills what it lacks)."""

    # weights: the model's, and the EMA's (None without EMA)
    model: dict
    model_ema: dict | None = None
    # the update: optimizer, scheduler, scaler (None where unused) and the freeze phase {index, start_step}
    optimizer: dict | None = None
    scheduler: dict | None = None
    scaler: dict | None = None
    phase: dict = field(default_factory=dict)
    # progress (PROGRESS), the Saver's top-k list, every rank's random state (rng: rank 0's)
    progress: dict = field(default_factory=dict)
    top: list | None = None
    rng: dict | None = None
    rng_ranks: list = field(default_factory=list)
    # identity: the resolved config (a dict), classes, split file hash, AMP as resolved, the batch sizes
    # (world size, per process, global), provenance() and, for averaged.pt, the epochs averaged
    config: dict = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    split_hash: str = ""
    amp: str = ""
    batch_sizes: dict | None = None
    provenance: dict = field(default_factory=dict)
    averaged_epochs: list[int] | None = None

    @property
    def epoch(self) -> int:
        """The next epoch to run."""
        return int(self.progress.get("epoch", 0))

    @property
    def step(self) -> int:
        return int(self.progress.get("step", 0))

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("progress", "provenance")}
        if self.averaged_epochs is None:  # averaged.pt's mark (and best.pt's, when the average won)
            del out["averaged_epochs"]
        return {**out, **self.progress, **self.provenance}

    @classmethod
    def from_dict(cls, d: dict) -> Checkpoint:
        own = {f.name for f in fields(cls)} - {"progress", "provenance"}
        kept = {k: d[k] for k in own if k in d}
        kept["phase"], kept["rng_ranks"] = kept.get("phase") or {}, kept.get("rng_ranks") or []
        return cls(**{"model": {}, **kept, "progress": {k: d[k] for k in PROGRESS if k in d},
                      "provenance": {k: d[k] for k in PROVENANCE if k in d}})


IDENTITY = ("config", "classes")  # what every use of a checkpoint needs


def read(path: str | Path, mmap: bool = False) -> Checkpoint:
    """A baseline checkpoint file as a Checkpoint (refused, with its path, if it is not one)."""
    saved = load(path, mmap)
    if any(k not in saved for k in IDENTITY):
        raise CheckpointError(f"'{path}' is not a baseline checkpoint (no {'/'.join(IDENTITY)} inside)")
    return Checkpoint.from_dict(saved)


def inference_weights(saved: Checkpoint) -> dict:
    """The weights that were evaluated, kept as best and are submitted: the EMA's where there is one."""
    return saved.model_ema if saved.model_ema is not None else saved.model


def save_atomic(obj: dict, path: Path, *copies: Path) -> None:
    """Write to a temporary file, then rename: a kill at any moment leaves the previous good file.
    `copies` get the same bytes without serializing again (a hard link where the disk allows it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    done: list[Path] = []
    try:
        with open(tmp, "wb") as f:  # our handle: closed (its space freed) even when the write fails half-way
            torch.save(obj, f)
        for dst in copies:
            dst_tmp = dst.with_name(f".{dst.name}.tmp")
            dst_tmp.unlink(missing_ok=True)
            done.append(dst_tmp)
            try:
                os.link(tmp, dst_tmp)
            except OSError:
                shutil.copyfile(tmp, dst_tmp)
            os.replace(dst_tmp, dst)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError from its writer
        full = shutil.disk_usage(path.parent).free < 2**20
        for t in (tmp, *done):  # a half-written temporary would keep the disk full for the resume
            with contextlib.suppress(OSError):
                t.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free / 2**20
        raise CheckpointError(f"could not write checkpoint '{path}' ({_reason(e, full)}; {free:.0f} MB free there "
                              f"now); the previous {path.name} is intact: free space, then resume with "
                              "run.resume=auto") from None


def _reason(e: Exception, full: bool) -> str:
    if full or "No space left" in str(e) or getattr(e, "errno", None) == 28:
        return "no space left on device"
    return (str(e).splitlines()[0] if str(e) else type(e).__name__)[:160]


def load(path: str | Path, mmap: bool = False) -> dict:
    """`mmap=True` maps the tensors instead of reading them: for a look at the metadata (classes,
    config) of a large checkpoint without paying its size."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:
        raise CheckpointError(f"checkpoint '{path}' could not be read: {str(e)[:200]}") from None


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": list(random.getstate()[1]) + [random.getstate()[2] or 0],
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((3, tuple(py[:-1]), py[-1] or None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


LOCK = Path(__file__).resolve().parent.parent / "requirements.lock"


@functools.cache
def provenance() -> dict:
    """Package versions, the lock file's hash and the git commit, so a checkpoint says what made it."""
    versions = {}
    for pkg in ("torch", "torchvision", "timm", "albumentations", "baseline"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "unknown"
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    lock = hashlib.sha256(LOCK.read_bytes()).hexdigest()[:16] if LOCK.is_file() else "unknown"
    return {"versions": versions, "lock_sha256": lock, "git_commit": commit}


def average_weights(paths: list[Path]) -> dict:
    """The element-wise mean of the checkpoints' inference weights (what timm's avg_checkpoints.py does);
    integer buffers (BatchNorm's step counter) are the first checkpoint's."""
    states = [inference_weights(read(p)) for p in paths]
    out = {}
    for k, v in states[0].items():
        if v.is_floating_point():
            out[k] = (sum(s[k].double() for s in states) / len(states)).to(v.dtype)
        else:
            out[k] = v.clone()
    return out


def snapshot(obj):
    """`obj` with every tensor copied to the CPU: what a background write may serialize while training
    goes on changing the originals."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


class Saver:
    """Keeps `last.pt`, `best.pt` and the top-k epochs by the monitored metric. With `background`, an
    epoch's checkpoint is copied to the CPU and written by a thread while the next epoch trains (a
    resnet50's model, optimizer and EMA are hundreds of MB: seconds a GPU would wait); wait() returns
    once it is on disk, and raises its error, if it had one."""

    def __init__(self, ckpt_dir: Path, mode: str, keep_top_k: int, background: bool = False):
        self.dir, self.mode, self.k, self.background = ckpt_dir, mode, keep_top_k, background
        self.top: list[tuple[float, str, float]] = []  # (metric, file name, val loss), best first; in every checkpoint
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None

    def wait(self) -> None:
        """The background write, finished; its CheckpointError raised here."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _write(self, obj: dict, path: Path, copies: list[Path], evicted: list[str]) -> None:
        save_atomic(obj, path, *copies)
        for old in evicted:
            (self.dir / old).unlink(missing_ok=True)

    def _write_logged(self, *args) -> None:
        try:
            self._write(*args)
        except BaseException as e:  # noqa: BLE001 - raised in the training thread by wait()
            self._error = e

    def restore(self, top: list | None) -> None:
        """The top-k list of a checkpoint being resumed (one written before ties were broken by val loss
        has no loss: such an entry loses every tie)."""
        self.top = [(t[0], t[1], t[2] if len(t) > 2 else math.inf) for t in (top or [])]

    def save_last(self, state: Checkpoint) -> None:
        """last.pt alone (a preempted epoch), written before this returns."""
        self.wait()
        save_atomic(replace(state, top=[list(t) for t in self.top]).to_dict(), self.dir / LAST)

    def better(self, a: float, b: float | None, a_loss: float = math.inf, b_loss: float = math.inf) -> bool:
        """Whether metric `a` beats `b`; an equal metric goes to the lower validation loss. Validation that
        is small or easy ties often (val_f1 1.000 for several epochs), and the first of a tie is the least
        trained model among equals: measured on an unseen 150-person set, epoch 4 of a 1.000 tie scored
        0.928 on the eval set where epoch 10 of the same tie scored 0.986."""
        if b is None or a != b:
            return b is None or (a < b if self.mode == "min" else a > b)
        return a_loss < b_loss

    def _rank(self, entry: tuple) -> tuple:
        metric, _, loss = entry
        return (metric if self.mode == "min" else -metric, loss)

    def save(self, state: Checkpoint, epoch: int, metric: float, is_best: bool, loss: float = math.inf) -> None:
        """Serialize once; best.pt and a top-k file are links to the same bytes. `loss`: the epoch's
        validation loss, which breaks a tie on the metric."""
        copies = [self.dir / BEST] if is_best else []
        if self.k > 1:
            name = f"epoch{epoch:03d}.pt"
            self.top.append((metric, name, loss))
            self.top.sort(key=self._rank)
            if name in [t[1] for t in self.top[: self.k]]:
                copies.append(self.dir / name)
        self.wait()  # one write at a time, in epoch order
        evicted, self.top = self.top[self.k:], self.top[: self.k]
        args = (replace(state, top=[list(t) for t in self.top]).to_dict(), self.dir / LAST, copies,
                [t[1] for t in evicted])
        if not self.background:
            self._write(*args)
            return
        self._writer = threading.Thread(target=self._write_logged, args=(snapshot(args[0]), *args[1:]),
                                        name="checkpoint-writer", daemon=False)
        self._writer.start()
