"""Model registry: ``@register_model`` fills a name -> builder table (timm style)."""
from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

import torch

from .._checks import AdvlensError, unknown_name
from .wrapper import ClassifierModel

__all__ = ["register_model", "list_models", "load_model"]

Builder = Callable[..., ClassifierModel]
_REGISTRY: dict[str, Builder] = {}


def register_model(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(weights=None, **kw) -> ClassifierModel`` under ``name``."""

    def deco(fn: Builder) -> Builder:
        if name in _REGISTRY:
            raise RuntimeError(f"model {name!r} registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style wildcard ``pattern``."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


def load_model(
    name: str,
    weights: str | None = None,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> ClassifierModel:
    """Build a registered model in eval mode, with frozen parameters.

    Parameters have ``requires_grad=False``: attacks and explanations need gradients only with
    respect to inputs and activations, so no weight gradients are ever computed. Call
    ``model.requires_grad_(True)`` (and ``model.train()``) to fine-tune it.

    Args:
        name: a name from :func:`list_models`.
        weights: a ``.pth``/``.safetensors`` state dict, ``"random"`` for random init, or None for
            the model's default (bundled weights, the local torch/timm cache, or the advlens cache).
        device: where to put the model (default CPU).
        **kwargs: builder options; ``None`` values are dropped so CLI defaults never override
            a model's own defaults.

    Raises:
        AdvlensError: unknown name (with close matches) or unusable weights.

    Example:
        >>> model = load_model("efficientnet_lite0")
        >>> model(torch.rand(1, 3, 224, 224)).shape
        torch.Size([1, 1000])
    """
    if name not in _REGISTRY:
        raise unknown_name("model", name, list_models())
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    model = _REGISTRY[name](weights=weights, **kwargs)
    if device is not None:
        try:
            model = model.to(device)
        except (RuntimeError, AssertionError) as e:
            raise AdvlensError(f"cannot use device {device!r}: {str(e).splitlines()[0]}") from None
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()
