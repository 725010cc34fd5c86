"""timm model factory: random init, hub weights, or a local weights file; the head made anew
for the task's class count."""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

import timm
import timm.data
import torch
from timm.models import load_state_dict

from .config import ModelCfg

log = logging.getLogger(__name__)


class ModelError(ValueError):
    """A model name or weights file the kit cannot use."""


def check_name(name: str) -> None:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise ModelError(f"model.name '{name}' is not a timm model{hint}")


def _file_classes(state: dict, classifier: str | tuple) -> int | None:
    names = classifier if isinstance(classifier, (list, tuple)) else [classifier]
    w = state.get(f"{names[0]}.weight")
    return int(w.shape[0]) if w is not None else None


def create(cfg: ModelCfg, num_classes: int) -> torch.nn.Module:
    """A timm model with `num_classes` outputs, weights as `cfg.pretrained` says, head as `cfg.head` says."""
    model = _create(cfg, num_classes)
    return factorize(model, cfg.name) if cfg.head == "factorized" else model


class FactorizedHead(torch.nn.Module):
    """The mask competition's label as three heads: mask (3), gender (2), age (3). The 18-class logit
    is the sum of their log-probabilities, so softmax gives the product of the three heads'
    probabilities, and cross-entropy on it is the sum of their three cross-entropies: every loss,
    metric, checkpoint and submission works unchanged. Index mask*6 + gender*3 + age, as the label."""

    def __init__(self, in_features: int):
        super().__init__()
        self.mask, self.gender, self.age = (torch.nn.Linear(in_features, n) for n in (3, 2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, g, a = (head(x).float().log_softmax(1) for head in (self.mask, self.gender, self.age))
        return (m[:, :, None, None] + g[:, None, :, None] + a[:, None, None, :]).flatten(1)


def factorize(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """Replace the model's linear classifier by a FactorizedHead (the mask layout's 18 classes only)."""
    if model.num_classes != 18:
        raise ModelError(f"model.head=factorized is for the mask layout's 18 classes (3 masks x 2 genders x 3 "
                         f"ages); this task has {model.num_classes}. Use model.head=linear")
    path = model.pretrained_cfg.get("classifier", "fc")
    path = path[0] if isinstance(path, (list, tuple)) else path
    old = model.get_submodule(path)
    if not isinstance(old, torch.nn.Linear):
        raise ModelError(f"model.head=factorized: {name}'s classifier '{path}' is a {type(old).__name__}, "
                         "not a linear layer; use model.head=linear")
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, FactorizedHead(old.in_features))
    return model


def _create(cfg: ModelCfg, num_classes: int) -> torch.nn.Module:
    check_name(cfg.name)
    kw = dict(num_classes=num_classes, drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate)
    p = cfg.pretrained
    if p is False or p == "":
        return timm.create_model(cfg.name, pretrained=False, **kw)
    if p is True:
        try:
            return timm.create_model(cfg.name, pretrained=True, **kw)
        except Exception as e:  # network, missing hub entry, auth: all end the same way for the user
            raise ModelError(
                f"could not load hub weights for '{cfg.name}' ({type(e).__name__}: {str(e)[:160]}); "
                "without network, download the weights elsewhere and set model.pretrained=/path/to/weights"
                " (.safetensors, .pth, a timm checkpoint or a baseline best.pt)"
            ) from None
    return _create_from_file(cfg, Path(p), kw)


def _create_from_file(cfg: ModelCfg, path: Path, kw: dict) -> torch.nn.Module:
    if not path.is_file():
        raise ModelError(f"model.pretrained '{path}' is not a file (expected a weights file, true or false)")
    # timm's own loader: picks `model_ema`/`state_dict`/`model` from a checkpoint and strips prefixes.
    try:
        state = load_state_dict(str(path))
    except Exception as e:
        raise ModelError(f"model.pretrained '{path}' could not be read as weights: {e}") from None
    probe = timm.create_model(cfg.name, pretrained=False, **kw)
    classifier = probe.pretrained_cfg.get("classifier", "fc")
    file_classes = _file_classes(state, classifier)
    model_keys, file_keys = set(probe.state_dict()), set(state)
    missing, unexpected = sorted(model_keys - file_keys), sorted(file_keys - model_keys)
    if len(missing) > len(model_keys) // 2:
        raise ModelError(
            f"model.pretrained '{path}' does not fit '{cfg.name}': {len(missing)} of {len(model_keys)} "
            f"weights missing (e.g. {missing[:3]}); was it saved from another architecture?"
        )
    if missing or unexpected:
        log.warning("weights file %s: missing keys %s, unexpected keys %s", path, missing[:10], unexpected[:10])
    overlay = dict(file=str(path), num_classes=file_classes or kw["num_classes"])
    try:
        model = timm.create_model(cfg.name, pretrained=True, pretrained_cfg_overlay=overlay, **kw)
    except RuntimeError as e:
        raise ModelError(f"model.pretrained '{path}' does not fit '{cfg.name}': {str(e)[:300]}") from None
    if file_classes != kw["num_classes"]:
        log.info("weights file has %s classes, the task %d: the head is new", file_classes, kw["num_classes"])
    return model


def data_stats(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std the model's weights were trained with (timm's pretrained config)."""
    cfg = timm.data.resolve_data_config({}, model=model)
    return tuple(cfg["mean"]), tuple(cfg["std"])


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under DDP and torch.compile, so state dicts carry no prefixes."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
