"""Model registry: ``@register_model`` fills a name -> builder table (timm style)."""
from __future__ import annotations

import fnmatch
import inspect
import os
from collections.abc import Callable
from typing import Any

import torch

from .._checks import AdvlensError, check_device, check_path, first_line, unknown_name
from .refs import REFERENCE_FORMS, is_reference, load_reference
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
        name: a name from :func:`list_models`, or a reference to any other network: ``timm:NAME``,
            ``torchvision:NAME``, ``path/to/file.py:factory``, ``package.module:factory``
            (:func:`~advlens.models.refs.load_reference`: layers found automatically, preprocessing from
            the model's configuration; options ``num_classes``, ``labels``, ``mean``, ``std``,
            ``input_size``, ``layers``).
        weights: a ``.pth``/``.safetensors`` state dict, ``"random"`` for random init, or None for
            the model's default (bundled weights, the local torch/timm cache, or the advlens cache).
        device: where to put the model (default CPU).
        **kwargs: builder (or reference) options; ``None`` values are dropped so CLI defaults never override
            a model's own defaults.

    Raises:
        AdvlensError: unknown name (with close matches), unusable weights, a device this machine does not
            have, or an option the model does not take (each checked before anything is built).

    Example:
        >>> model = load_model("efficientnet_lite0")
        >>> model(torch.rand(1, 3, 224, 224)).shape
        torch.Size([1, 1000])
    """
    if not isinstance(name, str):
        raise AdvlensError(f"model name must be a str such as 'vgg16', got {type(name).__name__} "
                           f"{first_line(repr(name), 60)}")
    if name not in _REGISTRY and not is_reference(name):
        err = unknown_name("model", name, list_models())
        raise AdvlensError(f"{err}, or a reference {REFERENCE_FORMS}")
    if weights is not None and not (isinstance(weights, str) and weights == "random"):
        if not isinstance(weights, (str, os.PathLike)):
            raise AdvlensError(f"weights must be a file path (str or os.PathLike), 'random' or None, "
                               f"got {type(weights).__name__} {first_line(repr(weights), 60)}")
        weights = str(check_path(weights, "weights"))
    dev = check_device(device) if device is not None else None
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if name in _REGISTRY:
        builder = _REGISTRY[name]
        _check_options(name, builder, kwargs)
        model = builder(weights=weights, **kwargs)
    else:
        _check_options(name, load_reference, kwargs)
        model = load_reference(name, weights, **kwargs)
    if dev is not None:
        try:
            model = model.to(dev)
        except (RuntimeError, AssertionError) as e:
            raise AdvlensError(f"cannot use device {device!r}: {str(e).splitlines()[0]}") from None
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def _check_options(name: str, builder: Builder, kwargs: dict[str, Any]) -> None:
    """Refuse options the builder of ``name`` does not take (one line listing the ones it does)."""
    try:
        sig = inspect.signature(builder)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    options = [p for p in params if p not in ("weights", "ref")]
    for key in kwargs:
        if key not in params or key in ("weights", "ref"):
            took = f"takes {', '.join(options)}" if options else "takes no options"
            raise AdvlensError(f"model {name!r} has no option {key!r} (it {took} besides weights and device)")
