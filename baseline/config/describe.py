"""Every key with its meaning, read from the comments in schema.py (one source for `baseline config` and
docs/config.md, so the two cannot disagree with the code)."""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass
from typing import Any

from . import schema
from .check import get
from .load import to_dict, type_name
from .schema import Config, walk

FIELD = re.compile(r"^    (\w+): .*?(?:  # (.*))?$")


@dataclass
class Key:
    key: str
    section: str  # the section's dotted name ("" for top-level keys)
    type: str
    default: Any
    meaning: str  # the whole comment
    short: str  # one line: the comment beside the key, else the first clause of the one above
    machine: bool
    resumable: bool


def _comments(cls: type) -> dict[str, tuple[str, str]]:
    """field name -> (the comment lines just above it, the comment beside it)."""
    out, above = {}, []
    for line in inspect.getsource(cls).splitlines():
        stripped = line.strip()
        if stripped.startswith("# ") and line.startswith("    #"):
            above.append(stripped[2:])
            continue
        m = FIELD.match(line)
        if m:
            out[m.group(1)] = " ".join(above), m.group(2) or ""
        above = []
    return out


def keys() -> list[Key]:
    """Every leaf key of the config, in the order the sections declare them."""
    classes = {c for _, _, c in walk()}
    notes = {cls: _comments(cls) for cls in classes}
    hints = {cls: typing.get_type_hints(cls) for cls in classes}
    defaults = Config()
    out = []
    for key, f, cls in walk():
        section = key.rsplit(".", 1)[0] if "." in key else ""
        meta = schema.meta(key)
        above, beside = notes[cls].get(f.name, ("", ""))
        whole = " ".join(filter(None, (above, beside)))
        out.append(Key(key, section, type_name(hints[cls][f.name]), get(defaults, key), whole,
                       beside or _first_clause(above), bool(meta.get("machine")), bool(meta.get("resumable"))))
    return out


def _first_clause(text: str, most: int = 100) -> str:
    cut = re.split(r"(?<=;)\s|(?<=\.)\s(?=[A-Z])", text, maxsplit=1)[0].rstrip(".;")
    return cut if len(cut) <= most else cut[:most - 3].rsplit(" ", 1)[0] + " ..."


def sections() -> dict[str, str]:
    """section dotted name -> its one-line docstring."""
    out = {"": (Config.__doc__ or "").strip()}
    for f in dataclasses.fields(Config):
        sub = f.default_factory
        if isinstance(sub, type) and dataclasses.is_dataclass(sub):
            out[f.name] = (sub.__doc__ or "").strip()
            for g in dataclasses.fields(sub):
                if isinstance(g.default_factory, type) and dataclasses.is_dataclass(g.default_factory):
                    out[f"{f.name}.{g.name}"] = (g.default_factory.__doc__ or "").strip()
    return out


def _show(v: Any) -> str:
    if isinstance(v, str):
        return repr(v) if v == "" else v
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def text(cfg: Config, resolved: Config | None = None) -> str:
    """The config a run would use, every key grouped by section: `key: value`, what a default `auto` would
    be here (from `resolved`), the default where the value differs, and the key's meaning."""
    now, done = to_dict(cfg), to_dict(resolved) if resolved else None
    heads, lines, last = sections(), [], None
    for k in keys():
        if k.section != last:
            lines += ["", f"{k.section or 'top level'}: {heads.get(k.section, '')}"]
            last = k.section
        value = _get(now, k.key)
        shown = _show(value)
        if done is not None and value in ("auto", "data") and _get(done, k.key) != value:
            shown += f" -> {_show(_get(done, k.key))} here"
        if value != k.default:
            shown += f" (default {_show(k.default)})"
        lines.append(f"  {k.key}: {shown}" + (f"  # {k.short}" if k.short else ""))
    return "\n".join(lines).lstrip("\n") + "\n"


def _get(d: dict, key: str) -> Any:
    for part in key.split("."):
        d = d[part]
    return d


def markdown() -> str:
    """docs/config.md: every key, its type, default and meaning, a table per section."""
    heads = sections()
    out = ["# Every config key", "",
           "Generated from `baseline/config/schema.py` by `make config-docs`; a test fails when it is stale. "
           "`baseline config [--config F ...] [key=value ...]` prints the same keys with the values a run would "
           "use, `auto` shown with what it resolves to on your machine.", "",
           "Set a key in a YAML file (nested, `train: {epochs: 3}`, or dotted, `train.epochs: 3`; several "
           "`--config` files stack, later ones win) or on the command line (`train.epochs=3`). "
           "**machine**: `auto` is resolved from the machine that runs (a reused config resolves it again). "
           "**resume**: a resume may change the key.", ""]
    last = None
    for k in keys():
        if k.section != last:
            out += ["", f"## `{k.section or 'top level'}`", "", heads.get(k.section, ""), "",
                    "| key | type | default | meaning |", "|---|---|---|---|"]
            last = k.section
        flags = ", ".join(n for n, on in (("machine", k.machine), ("resume", k.resumable)) if on)
        meaning = k.meaning.replace("|", "\\|") + (f" *({flags})*" if flags else "")
        out.append(f"| `{k.key}` | {k.type.replace('|', 'or')} | `{_show(k.default)}` | {meaning} |")
    return "\n".join(out) + "\n"
