"""The one way the kit replaces a file: write a temporary beside it, then rename it over the old one.
A reader (a teammate's `baseline runs`, a resume after a kill) sees the old file or the new one, never
half of one; a failed write (a full disk, a broken image, Ctrl-C) removes its temporary, so nothing
half-written stays behind to fill the disk. Checkpoints add their own error report (checkpoint.save_atomic)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from .errors import DiskFull


@contextlib.contextmanager
def replacing(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` (this process's own: two writers never share one) to write as one
    likes; renamed onto `path` when the block succeeds, removed when it fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:  # any file of a run: one line, not a traceback
            free = shutil.disk_usage(path.parent).free / 2**20
            raise DiskFull(f"could not write '{path}' (no space left on device; {free:.0f} MB free there now): free "
                           "space, then resume with run.resume=auto") from None
        raise


@contextlib.contextmanager
def atomic(path: str | Path, mode: str = "w", **open_kw) -> Iterator:
    """An open file whose contents replace `path` when the block succeeds (flushed and fsynced first)."""
    with replacing(path) as tmp, open(tmp, mode, **open_kw) as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_text(path: str | Path, text: str) -> None:
    with atomic(path) as f:
        f.write(text)


def write_json(path: str | Path, obj, indent: int = 2) -> None:
    write_text(path, json.dumps(obj, indent=indent))


def write_csv(path: str | Path, df, **to_csv) -> None:
    """A pandas frame as CSV, whole or not at all."""
    with atomic(path, newline="") as f:
        df.to_csv(f, **{"index": False, **to_csv})
