"""The model factory: any timm name (`resnet18`, `resnet18.a1_in1k`, `hf-hub:timm/...`) or a team's own
`package.module:ClassName`; random init, hub weights, or a local weights file under timm's key names or
any other names whose tensors line up in order and shape (e.g. `efficientnet_pytorch`); the head made
anew for the task's class count."""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

import timm
import timm.data
import torch

from . import hub
from .config import ModelCfg
from .errors import ModelError
from .weights import bundled_weights, classifier_keys, is_counter, match_weights, read_weights

log = logging.getLogger(__name__)

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "interpolation": "bilinear"}


# ---------------------------------------------------------------- names
def is_custom(name: str) -> bool:
    """`package.module:ClassName`: a team's own nn.Module (not a timm `hf-hub:` / `local-dir:` source)."""
    return ":" in name and name.split(":", 1)[0] not in ("hf-hub", "local-dir")


def timm_name(name: str) -> str:
    """The name as timm's registry knows it: `hf-hub:timm/<registered name>` is that name (the same
    weights, found without asking the hub for its config)."""
    if name.startswith("hf-hub:timm/") and timm.is_model(name.removeprefix("hf-hub:timm/")):
        return name.removeprefix("hf-hub:timm/")
    return name


def check_name(name: str) -> None:
    if is_custom(name):
        custom_class(name)
        return
    name = timm_name(name)
    if name.startswith(("hf-hub:", "local-dir:")):
        hub.check_hub_model(name)
        return
    if not timm.is_model(name):  # is_model accepts `arch.tag`
        close = difflib.get_close_matches(name.split(".")[0], timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
        raise ModelError(f"model.name '{name}' is not a timm model{hint} (also accepted: 'arch.tag', "
                         "'hf-hub:org/repo', or your own 'package.module:ClassName')")
    tag = name.partition(".")[2]
    if tag and not timm.list_pretrained(name):
        raise ModelError(f"model.name '{name}': timm has no weights tagged '{tag}' for this architecture; "
                         f"see timm.list_pretrained('{name.partition('.')[0]}*')")


def custom_class(name: str) -> type:
    """The class behind `package.module:ClassName`, importable from the working directory."""
    module, _, cls = name.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj = getattr(importlib.import_module(module), cls)
    except (ImportError, AttributeError) as e:
        raise ModelError(f"model.name '{name}': could not import {cls} from {module} ({type(e).__name__}: {e}); "
                         "expected 'package.module:ClassName' importable from the working directory") from None
    if not (isinstance(obj, type) and issubclass(obj, torch.nn.Module)):
        raise ModelError(f"model.name '{name}': {cls} is not an nn.Module class")
    return obj


def check_weights(cfg: ModelCfg) -> None:
    """Everything about the weights that can be refused before any data is read: a file that does not
    fit the model, hub weights that cannot be fetched."""
    cfg = replace(cfg, pretrained=pretrained_source(cfg))
    if cfg.pretrained is True:
        if is_custom(cfg.name):
            raise ModelError(f"model.pretrained=true is for timm names; '{cfg.name}' loads its own weights in its "
                             "__init__, or set model.pretrained=/path/to/weights")
        hub.check_hub_weights(timm_name(cfg.name))
    elif isinstance(cfg.pretrained, str) and cfg.pretrained:
        probe = bare(cfg, 2) if is_custom(cfg.name) else shapes_only(cfg, 2)  # a team's __init__ may need real tensors
        match_weights(probe, read_weights(Path(cfg.pretrained)), cfg.pretrained, cfg.name)


def pretrained_source(cfg: ModelCfg) -> bool | str:
    """model.pretrained as used: `auto` is the bundled file for this model, else false (from scratch)."""
    if cfg.pretrained != "auto":
        return cfg.pretrained
    return (None if is_custom(cfg.name) else bundled_weights(timm_name(cfg.name))) or False


# ---------------------------------------------------------------- building
def create(cfg: ModelCfg, num_classes: int) -> torch.nn.Module:
    """The model with `num_classes` outputs, weights as `cfg.pretrained` says, head as `cfg.head` says."""
    model = _create(cfg, num_classes)
    return factorize(model, cfg.name) if cfg.head == "factorized" else model


def bare(cfg: ModelCfg, num_classes: int) -> torch.nn.Module:
    """Random init; a custom class is called with `num_classes=`."""
    if is_custom(cfg.name):
        model = custom_class(cfg.name)(num_classes=num_classes)
        if not isinstance(model, torch.nn.Module):
            raise ModelError(f"model.name '{cfg.name}' did not build an nn.Module")
        if not hasattr(model, "num_classes"):
            model.num_classes = num_classes  # what the engine reads, as on every timm model
        return model
    return timm.create_model(timm_name(cfg.name), pretrained=False, num_classes=num_classes, drop_rate=cfg.drop_rate,
                             drop_path_rate=cfg.drop_path_rate)


def shapes_only(cfg: ModelCfg, num_classes: int) -> torch.nn.Module:
    """The model on the meta device: its tensor names and shapes, no memory and no init, for matching a
    weights file before the real model is built."""
    with torch.device("meta"):
        return bare(cfg, num_classes)


def is_convolutional(model: torch.nn.Module) -> bool:
    """More than one 2-D convolution: a conv net, not a transformer whose only conv is its patch embedding."""
    return sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) > 1


def wants_channels_last(model: torch.nn.Module, device: torch.device) -> bool:
    """train.channels_last=auto: on a GPU (its tensor cores want NHWC), and on the CPU for conv nets.
    Measured on 2 CPU cores, forward+backward+AdamW at 72x56, batch 32, NHWC over the default layout:
    tf_efficientnet_lite0 1.73x, lite1 1.63x, efficientnet_b0 1.67x, mobilenetv3_large_100 1.54x,
    test_resnet 1.38x, regnetx_002 1.33x, densenet121 1.28x, resnet18 1.11x, resnet50 1.12x, convnext_atto
    1.04x; vit_tiny 0.90x (docs/benchmarks.md). Depthwise convolutions gain most."""
    return device.type == "cuda" or is_convolutional(model)


def channels_last(value: bool | str, model: torch.nn.Module, device: torch.device) -> bool:
    """train.channels_last as used: a resolved bool, or (a config from before it was resolved) the rule."""
    return wants_channels_last(model, device) if value == "auto" else bool(value)


def _create(cfg: ModelCfg, num_classes: int) -> torch.nn.Module:
    p = pretrained_source(cfg)
    if p is False or p == "":
        return bare(cfg, num_classes)
    if p is True:
        check_weights(cfg)
        name = timm_name(cfg.name)
        try:
            model = timm.create_model(name, pretrained=True, num_classes=num_classes, drop_rate=cfg.drop_rate,
                                      drop_path_rate=cfg.drop_path_rate)
        except Exception as e:  # network, missing hub entry, auth: all end the same way for the user
            raise ModelError(f"could not load hub weights for '{name}' ({type(e).__name__}: {str(e)[:160]}); "
                             f"{hub.OFFLINE_HINT}") from None
        if num_classes != model.pretrained_cfg.get("num_classes"):
            zero_head(model)
        return model
    return _create_from_file(cfg, Path(p), num_classes)


def zero_head(model: torch.nn.Module) -> None:
    """A re-made classifier on pretrained features starts at zero: logits 0, loss log(C), gradients only
    from the data. timm's init for a new EfficientNet head (uniform in +-1/sqrt(classes): weight std 0.14
    for 18 classes) on real, unnormalised features (row norm about 66 at 64 px) starts at loss 7 (log(18)
    is 2.9), and a head-only phase then never recovers (train loss 9.97 after one epoch on faces_b; 2.07
    with a zero start). Measured: docs/training.md, "Transfer learning"."""
    for k in classifier_keys(model):
        with torch.no_grad():
            model.get_parameter(k).zero_()


def _create_from_file(cfg: ModelCfg, path: Path, num_classes: int) -> torch.nn.Module:
    state = read_weights(path)
    # a team's module is loaded in place (built for real once); a timm model is built once, by timm's loader
    model = bare(cfg, num_classes) if is_custom(cfg.name) else shapes_only(cfg, num_classes)
    m = match_weights(model, state, str(path), cfg.name)
    mapped = {k: state[f] for k, f in m.pairs.items()}
    mapped.update({k: torch.zeros((), dtype=torch.long) for k in model.state_dict()
                   if is_counter(k) and k not in mapped})
    if is_custom(cfg.name):
        missing, _ = model.load_state_dict(mapped, strict=False)
        if set(missing) - set(classifier_keys(model)):
            raise ModelError(f"model.pretrained '{path}' does not fit '{cfg.name}': {sorted(missing)[:5]} missing")
    else:
        # timm's own loader, so its per-model filter (e.g. resizing a ViT's position table) and input-channel
        # adaptation apply; a different num_classes in the overlay makes it drop the head and load non-strict.
        overlay = dict(state_dict=mapped, num_classes=num_classes if m.head == "kept" else -1)
        try:
            model = timm.create_model(timm_name(cfg.name), pretrained=True, pretrained_cfg_overlay=overlay,
                                      num_classes=num_classes, drop_rate=cfg.drop_rate,
                                      drop_path_rate=cfg.drop_path_rate)
        except RuntimeError as e:
            raise ModelError(f"model.pretrained '{path}' does not fit '{cfg.name}': {str(e)[:300]}") from None
    if m.head == "re-made":
        zero_head(model)
    log.info("weights %s: %s%s", path.name, m.describe(),
             f" (the file has {m.file_classes} classes, the task {num_classes})" if m.head == "re-made" and
             m.file_classes else "")
    return model


def norm_config(model: torch.nn.Module) -> dict:
    """mean, std and interpolation the model's weights were trained with (timm's pretrained config;
    a custom module may carry its own `pretrained_cfg`, else ImageNet's)."""
    pc = getattr(model, "pretrained_cfg", None) or {}
    if not pc:
        return dict(IMAGENET)
    cfg = timm.data.resolve_data_config({}, model=model)
    return {"mean": tuple(cfg["mean"]), "std": tuple(cfg["std"]), "interpolation": cfg.get("interpolation",
                                                                                            "bilinear")}


def weights_norm(cfg: ModelCfg) -> dict:
    """norm_config for a model name, without building the model (timm's registry, a cached hub config, or
    a custom class's `pretrained_cfg` attribute)."""
    if is_custom(cfg.name):
        pc = getattr(custom_class(cfg.name), "pretrained_cfg", None) or {}
    else:
        name = timm_name(cfg.name)
        if name.startswith(("hf-hub:", "local-dir:")):
            return norm_config(bare(cfg, 2))
        pc = timm.models.get_pretrained_cfg(name)
        pc = pc.to_dict() if pc is not None else {}
    return {k: tuple(pc[k]) if k != "interpolation" else pc[k] for k in IMAGENET if k in pc} | {
        k: v for k, v in IMAGENET.items() if k not in pc}


def data_stats(model: torch.nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    n = norm_config(model)
    return n["mean"], n["std"]


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
    keys = classifier_keys(model)
    path = keys[0].rpartition(".")[0] if keys else ""
    old = model.get_submodule(path) if path else None
    if not isinstance(old, torch.nn.Linear):
        raise ModelError(f"model.head=factorized: {name}'s classifier is a {type(old).__name__}, not a linear "
                         "layer (or get_classifier() is missing); use model.head=linear")
    if old.out_features != 18:
        raise ModelError(f"model.head=factorized is for the mask layout's 18 classes (3 masks x 2 genders x 3 "
                         f"ages); this task has {old.out_features}. Use model.head=linear")
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, FactorizedHead(old.in_features))
    return model


def set_grad_checkpointing(model: torch.nn.Module, name: str) -> None:
    """timm's gradient checkpointing (activations recomputed in the backward pass), or a clear refusal."""
    try:
        model.set_grad_checkpointing(True)
    except (AttributeError, NotImplementedError, AssertionError) as e:
        raise ModelError(f"train.grad_checkpointing=true: model '{name}' does not support it ({e}); "
                         "use train.batch_size=auto, train.accum_steps or train.amp=bf16 to save memory") from None


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model under DDP and torch.compile, so state dicts carry no prefixes."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)
