"""The errors a user can cause or meet, and the exit codes they end a command with (README, "Exit codes").
They live here, below every module that raises them, so that the CLI names them without importing torch."""

from __future__ import annotations

USER_ERROR = 2  # bad input: a config key, data, a model name, a checkpoint, W&B; one line says which
OUT_OF_MEMORY = 3  # the message says where and what to try
LOST_PEER = 4  # a process of a multi-process run died or could not be reached


class ConfigError(ValueError):
    """A config key or value that is not what the kit expects."""


class DataError(ValueError):
    """Input data that cannot be used as it is; the message names the file, row or column."""


class ModelError(ValueError):
    """A model name or weights file the kit cannot use."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used for what was asked."""


class DiskFull(ValueError):
    """A file could not be written for lack of space; the message names it and says how to go on."""


class TrackingError(ValueError):
    """W&B cannot be used as configured; the message says how to go on without it."""


class OutOfMemory(RuntimeError):
    """Training ran out of memory; the message says where and what to try."""


class LostPeer(Exception):
    """Another process of this run died or stopped answering; the message says how to resume."""


USER_ERRORS = (ConfigError, DataError, ModelError, CheckpointError, TrackingError, DiskFull)
