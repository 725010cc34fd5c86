"""Reading and writing a config: dataclass defaults < YAML files (in order) < `key=value` overrides.

A YAML file may nest keys (`train: {epochs: 3}`) or spell them dotted (`train.epochs: 3`). Unknown keys and
values of the wrong type are rejected with the key's dotted name before anything runs. The resolved config
(defaults.resolve: no `auto` left) is saved with every run and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from ..errors import ConfigError
from .check import get, validate
from .schema import Config, walk


def type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


class _Text(str):
    """A command-line value: its text, plus what YAML reads in it (`3` -> 3, `[a,b]` -> list).
    A str-typed key takes the text as written, so `run.name=off` stays "off", not False."""

    parsed: Any


def _text(raw: str) -> _Text:
    t = _Text(raw)
    try:
        t.parsed = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"value '{raw}' is not valid YAML ({e.problem})") from None
    if t.parsed is None:
        t.parsed = ""
    return t


def _check(key: str, value: Any, tp: Any) -> Any:
    """Return `value` as type `tp`, or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if isinstance(value, _Text):
        if tp is str or (origin is Literal and str(value) in typing.get_args(tp)):  # amp=off: the word, not False
            return str(value)
        if origin not in (Union, types.UnionType):
            value = _fix_yaml_floats(value.parsed)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        if value is False and "off" in typing.get_args(tp):  # YAML 1.1 reads `amp: off` in a file as false
            return "off"
    elif origin in (Union, types.UnionType):
        for arm in sorted(typing.get_args(tp), key=lambda a: a is str):  # text as written only if nothing else fits
            try:
                return _check(key, value, arm)
            except ConfigError:
                pass
    elif origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, (list, tuple)):
            return [_check(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is dict:
        if isinstance(value, dict):
            return value
    raise ConfigError(f"config key '{key}': expected {type_name(tp)}, got {value!r}")


def _merge(obj: Any, updates: dict, prefix: str = "") -> None:
    hints = typing.get_type_hints(type(obj))
    for k, v in updates.items():
        if isinstance(k, str) and "." in k:  # a dotted key in a YAML file: train.epochs: 3
            k, rest = k.split(".", 1)
            v = {rest: v}
        key = f"{prefix}{k}"
        if k not in hints:
            known = ", ".join(f"{prefix}{n}" for n in hints)
            raise ConfigError(f"unknown config key '{key}' (known here: {known})")
        current = getattr(obj, k)
        if dataclasses.is_dataclass(current):
            if not isinstance(v, dict):
                raise ConfigError(f"config key '{key}' is a section; set its fields, e.g. {key}.<field>=...")
            _merge(current, v, prefix=f"{key}.")
        else:
            setattr(obj, k, _check(key, v, hints[k]))


def parse_override(text: str) -> dict:
    """`a.b=value` -> {'a': {'b': value}}; the value is read as YAML (so `[1,2]`, `true`, `1e-3` work)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    value = _text(raw)
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def _fix_yaml_floats(d: Any) -> Any:
    # YAML 1.1 reads `1e-3` (no dot) as a string; a user writing it means a number.
    if isinstance(d, dict):
        return {k: _fix_yaml_floats(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_fix_yaml_floats(v) for v in d]
    if isinstance(d, str):
        try:
            if "e" in d.lower() and d.lower() not in {"inf", "nan"}:
                return float(d)
        except ValueError:
            pass
    return d


def read_yaml(path: str | Path) -> dict:
    """A config file's mapping of keys, or one line naming the file and what is wrong."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        line = p.read_bytes()[:e.start].count(b"\n") + 1
        raise ConfigError(f"config file '{p}' is not UTF-8 text (line {line}: byte 0x{e.object[e.start]:02x}); "
                          "save it as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{p}' is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of keys, got {type(data).__name__}")
    return _fix_yaml_floats(data)


def load_config(paths: str | Path | list | tuple | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults < each YAML file in `paths`, in order < overrides, validated."""
    cfg = Config()
    for path in [paths] if isinstance(paths, (str, Path)) else paths or []:
        try:
            _merge(cfg, read_yaml(path))
        except ConfigError as e:
            raise ConfigError(f"{e} (in {path})" if str(path) not in str(e) else str(e)) from None
    for o in overrides:
        _merge(cfg, parse_override(o))
    validate(cfg)
    return cfg


def config_flags(paths: str | Path | list | tuple | None) -> list[str]:
    """The command-line flags that pass `paths` on to another `baseline` command."""
    return [a for p in ([paths] if isinstance(paths, (str, Path)) else paths or []) for a in ("--config", str(p))]


def machine_resets() -> list[str]:
    """`key=default` for every machine key (device, threads, workers, ...: schema.setting(machine=True)): after
    a run's saved config, so that another run reusing it (a refit, a sweep's best.yaml) resolves them on the
    machine that runs it."""
    fresh = Config()
    return [f"{key}={get(fresh, key)}" for key, f, _ in walk(fresh) if f.metadata.get("machine")]


def for_another_run(cfg: Config) -> Config:
    """`cfg` with its machine keys back at their defaults (machine_resets)."""
    out = from_dict(to_dict(cfg))
    for o in machine_resets():
        _merge(out, parse_override(o))
    return out


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict) -> Config:
    """Rebuild a Config from a saved dict (run folder or checkpoint), validating it again."""
    cfg = Config()
    _merge(cfg, d)
    return cfg


def img_hw(cfg: Config) -> tuple[int, int]:
    s = cfg.data.img_size
    if s == "auto":
        raise ConfigError("data.img_size=auto is resolved from the data (baseline.defaults.resolve) before use")
    return (s, s) if isinstance(s, int) else (s[0], s[1])


def age_edges(cfg: Config) -> tuple[int, int]:
    e = cfg.data.age_edges
    if e == "auto":
        raise ConfigError("data.age_edges=auto is resolved from the data (baseline.defaults.resolve) before use")
    return (e[0], e[1])


def save_yaml(cfg: Config, path: Path) -> None:
    from ..files import write_text  # the config package imports nothing of the kit at load time

    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
