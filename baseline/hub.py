"""The Hugging Face hub, asked before any data is read: is a model's config or its weights in the local cache,
and if not, can the hub be reached (one connection of a few seconds instead of the hub client's minute of
retries)? Each no is one ModelError that says how to go on offline."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import timm
import torch

from .errors import ModelError


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def unreachable(url: str) -> str | None:
    """Why `url`'s host cannot be reached now (None if it can): one connection attempt of a few seconds,
    instead of the hub client's minute of retries."""
    if _hub_offline():
        return "HF_HUB_OFFLINE is set"
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urlparse(proxy or url)
    try:
        socket.create_connection((target.hostname, target.port or 443), timeout=5).close()
        return None
    except OSError as e:
        return f"{target.hostname} is not reachable ({e})"


def _hub_cached(repo_id: str, files: tuple[str, ...]) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, f), str) for f in files)


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


OFFLINE_HINT = ("without network, copy the weights file here and set model.pretrained=/path/to/weights "
                "(.safetensors, .pth, a timm checkpoint or a baseline best.pt); weights already in the local hub "
                "cache load with HF_HUB_OFFLINE=1")


def check_hub_model(name: str) -> None:
    """An `hf-hub:` model needs its config.json from the hub (or the local cache)."""
    source, _, repo = name.partition(":")
    if source == "local-dir":
        if not Path(repo).is_dir():
            raise ModelError(f"model.name '{name}': '{repo}' is not a folder")
        return
    if _hub_cached(repo, ("config.json",)):
        return
    why = unreachable(_hub_endpoint())
    if why:
        raise ModelError(f"model.name '{name}' needs its config from the Hugging Face hub and {why}; for timm's "
                         f"own models use the plain name (e.g. 'resnet18.a1_in1k'); {OFFLINE_HINT}")


def check_hub_weights(name: str) -> None:
    """model.pretrained=true: refuse at once (before any data is read) when the weights are neither
    in the local cache nor reachable."""
    if name.startswith("local-dir:"):
        return
    if name.startswith("hf-hub:"):
        repo = name.partition(":")[2]
        if _hub_cached(repo, ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")):
            return
        why = unreachable(_hub_endpoint())
    else:
        pc = timm.models.get_pretrained_cfg(name)
        if pc is None or not (pc.hf_hub_id or pc.url):
            raise ModelError(f"model.pretrained=true: timm has no pretrained weights for '{name}'; "
                             f"see timm.list_pretrained('{name.split('.')[0]}*')")
        if pc.hf_hub_id and _hub_cached(pc.hf_hub_id, ("model.safetensors", "pytorch_model.bin")):
            return
        if pc.url and (Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(pc.url).path).name).is_file():
            return
        why = unreachable(_hub_endpoint() if pc.hf_hub_id else pc.url)
    if why:
        raise ModelError(f"could not load hub weights for '{name}': they are not in the local cache and {why}; "
                         f"{OFFLINE_HINT}")
