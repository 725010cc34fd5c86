"""The run folder: its name, a lock so that one training at a time writes it, the resume guard,
and the state `baseline runs` reads (finished, running, stopped, failed)."""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import json
import logging
import os
import socket
import time
from datetime import datetime
from pathlib import Path

from . import dist
from .checkpoint import Checkpoint, CheckpointError
from .config import Config, ConfigError, meta, to_dict
from .runfolder import RunFolder

log = logging.getLogger("baseline")

LOCK = ".lock"
ERROR = "error.txt"
class RunLocked(ConfigError):
    """Another training holds the run folder."""


def run_name(cfg: Config) -> str:
    """run.name, or one a teammate can read: model, fold, user, and a short hash of config + time."""
    if cfg.run.name:
        return cfg.run.name
    stamp = f"{to_dict(cfg)}{datetime.now().isoformat()}"
    user = getpass.getuser().replace("-", "")
    return f"{cfg.model.name}-f{cfg.split.fold}-{user}-{hashlib.sha1(stamp.encode()).hexdigest()[:6]}"


def resume_point(cfg: Config) -> Path | None:
    """The checkpoint run.resume names (None: a fresh run)."""
    if cfg.run.resume == "auto":
        if not cfg.run.name:
            raise ConfigError("run.resume=auto needs run.name (the run folder to continue)")
        last = RunFolder(Path(cfg.run.dir) / cfg.run.name).last
        return last if last.is_file() else None
    if cfg.run.resume:
        path = Path(cfg.run.resume)
        if not path.is_file():
            raise ConfigError(f"run.resume '{path}' is not a checkpoint file")
        return path
    return None


# ---------------------------------------------------------------- lock
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def acquire(run_dir: Path) -> Path:
    """Create run_dir/.lock (host, pid, time) or refuse with its holder. A lock left by a dead
    process on this host is taken over with a warning."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        held = _holder(path)
        if held.get("host") != me["host"] or _alive(int(held.get("pid", 0))):
            raise RunLocked(f"run folder '{run_dir}' is in use by pid {held.get('pid')} on {held.get('host')} "
                            f"(since {held.get('since')}); wait for it, or choose another run.name") from None
        log.warning("run folder '%s': taking over the lock of pid %s, which is no longer running",
                    run_dir, held.get("pid"))
        tmp = run_dir / f"{LOCK}.{os.getpid()}"
        tmp.write_text(json.dumps(me))
        os.replace(tmp, path)
        if _holder(path).get("pid") != me["pid"]:  # another process took it over at the same moment
            raise RunLocked(f"run folder '{run_dir}' was just taken by another process; "
                            "choose another run.name") from None
        return path
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(me))
    return path


@contextlib.contextmanager
def locked(run_dir: Path, env: dist.Env):
    """Hold the run folder's lock (rank 0) for the whole run; every rank refuses together if it is
    held. A failure's one line goes to error.txt for `baseline runs`."""
    refusal = None
    if env.is_main:
        try:
            path = acquire(run_dir)
        except RunLocked as e:
            refusal = str(e)
    refusal = dist.broadcast_object(env, refusal)
    if refusal:
        raise RunLocked(refusal)
    if not env.is_main:
        yield
        return
    (run_dir / ERROR).unlink(missing_ok=True)
    try:
        yield
    except BaseException as e:
        if not isinstance(e, (KeyboardInterrupt, SystemExit)):
            with contextlib.suppress(OSError):  # on a full disk this write fails too; the run's own error wins
                (run_dir / ERROR).write_text(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}\n")
        raise
    finally:
        if _holder(path).get("pid") == os.getpid():
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------- resume guard
def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "schedule":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_diff(saved: dict, now: dict) -> tuple[list[str], list[str]]:
    """Keys that differ between a checkpoint's config and this one: (refused, allowed), as
    'key: checkpoint -> now' lines."""
    a, b = _flat(saved), _flat(now)
    refused, allowed = [], []
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            line = f"{key}: {a.get(key)!r} -> {b.get(key)!r}"
            # a key the checkpoint lacks is newer than the kit that wrote it: allowed, and said
            (allowed if meta(key).get("resumable") or key not in a else refused).append(line)
    return refused, allowed


def check_resume(cfg: Config, saved: Checkpoint, classes: list[str], split_hash: str, path: Path, amp: str = "",
                 world_size: int | None = None) -> None:
    """Refuse a resume that would change what is learned, before anything is written. `amp`: the precision
    this device would train in (train.amp=auto is bf16 on a GPU and off on the CPU, so moving a run changes it).
    `world_size`: this run's processes; another number would change the global batch, the LR schedule's
    steps and which rows a mid-epoch resume skips."""
    refused, allowed = config_diff(saved.config, to_dict(cfg))
    was = (saved.batch_sizes or {}).get("world_size")
    if world_size is not None and was is not None and was != world_size:
        refused.append(f"processes: the checkpoint trained with {was}, this run has {world_size} (resume with "
                       f"--nproc {was})")
    if amp and saved.amp and saved.amp != amp:
        refused.append(f"precision: the checkpoint trained with amp {saved.amp}, this device would use {amp} "
                       f"(set train.amp={saved.amp} to keep it)")
    if saved.classes != classes:
        refused.append(f"classes: {len(saved.classes)} in the checkpoint, {len(classes)} in the data")
    if saved.split_hash != split_hash:
        refused.append(f"split file: sha {saved.split_hash or None} in the checkpoint, {split_hash} now")
    if refused:
        raise CheckpointError(f"cannot resume from '{path}': " + "; ".join(refused) +
                              ". Set these back, or start a new run (another run.name)")
    for line in allowed:
        log.info("resume: %s", line)


# ---------------------------------------------------------------- state
def state(run_dir: Path) -> str:
    """finished | pruned at epoch N | running | failed: <line> | stopped | empty."""
    run = RunFolder(run_dir)
    if run.summary_file.is_file() and not (run_dir / LOCK).is_file():
        pruned = run.summary().get("pruned_epoch")
        return f"pruned at epoch {pruned}" if pruned else "finished"
    held = _holder(run_dir / LOCK)
    if held and (held.get("host") != socket.gethostname() or _alive(int(held.get("pid", 0)))):
        return "running"
    if (run_dir / ERROR).is_file():
        return "failed: " + (run_dir / ERROR).read_text().strip()
    return "stopped" if run.last.is_file() else "empty"
