"""Safe weight loading: ``torch.load(weights_only=True)`` or safetensors, never pickle."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from .._checks import AdvlensError

__all__ = ["read_state_dict", "load_into", "cached_file"]

log = logging.getLogger(__name__)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.pth``/``.pt`` (``weights_only=True``) or ``.safetensors``.

    A checkpoint that nests the state dict under ``"state_dict"`` or ``"model"`` is unwrapped.

    Raises:
        AdvlensError: missing or unreadable file, or content that is not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise AdvlensError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: object = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle with code, wrong format
        first = str(e).strip().splitlines()[0][:160] if str(e).strip() else ""
        raise AdvlensError(
            f"cannot read weights file {path} as a PyTorch (weights_only) or safetensors checkpoint "
            f"({type(e).__name__}{': ' + first if first else ''})"
        ) from None
    if isinstance(obj, Mapping) and len(obj) == 1:
        (key, inner), = obj.items()
        if key in ("state_dict", "model") and isinstance(inner, Mapping):
            obj = inner
    if not isinstance(obj, Mapping) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise AdvlensError(f"weights file {path} is not a state dict (a mapping of parameter names to tensors)")
    return dict(obj)


def load_into(net: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``net`` strictly, with a one-line error on any key or shape mismatch."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise AdvlensError(
            f"weights {source} do not fit this architecture: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]})"
        )
    wrong = [k for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise AdvlensError(
            f"weights {source} do not fit this architecture: {k} has shape {list(state[k].shape)}, "
            f"expected {list(own[k].shape)} ({len(wrong)} mismatches)"
        )
    net.load_state_dict(state, strict=True)


def cached_file(url_or_name: str) -> Path | None:
    """Path of a torch-hub checkpoint (``<hub>/checkpoints/<basename>``) if already on disk."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url_or_name).name
    return path if path.is_file() else None
