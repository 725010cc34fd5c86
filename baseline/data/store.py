"""Where the kit writes beside a data set (its split file, decode cache and report): `<data.root>/<name>`,
or, when the data root is read-only (the usual shared team mount), `<run.dir>/data/<root>-<hash>/<name>`,
a folder named by the data root's absolute path, so every run on that data finds the same one."""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from pathlib import Path

from ..config import Config

log = logging.getLogger("baseline")


def beside_data(cfg: Config, name: str, written: bool = False) -> Path:
    """`<data.root>/<name>`, or its stand-in under run.dir when the data root cannot be written. `written`:
    the kit writes into it (caches, reports), so one already there must also be writable."""
    root = Path(cfg.data.root)
    # one already there (a teammate wrote it) is used as it is; a missing root is refused by the layout reader
    there = (root / name).exists() and (not written or writable(root / name))
    if not root.is_dir() or writable(root) or there:
        return root / name
    return stand_in(cfg, name)


def stand_in(cfg: Config, name: str) -> Path:
    root = Path(cfg.data.root).resolve()
    tag = hashlib.sha1(str(root).encode()).hexdigest()[:8]
    path = Path(cfg.run.dir) / "data" / f"{root.name or 'root'}-{tag}" / name
    _say_once(str(root), str(path.parent))
    return path


def writable(folder: Path) -> bool:
    """Can files be made in `folder` (False on a read-only mount, also for root)."""
    return folder.is_dir() and os.access(folder, os.W_OK)


@functools.cache
def _say_once(root: str, there: str) -> None:
    log.info("note: data root %s is read-only: the split file, decode cache and report go to %s", root, there)
