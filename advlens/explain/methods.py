"""The explanation-method registry: one record per method, filled by ``@register_method`` next to each
method's code. :func:`~advlens.explain.explain`, the attacks' explainer penalties, the detector-aware
attack and the CLI read it; nothing else lists methods.

Kinds (how a method is computed):

* ``layer`` — from one layer's activation ``A`` ``[N,K,h,w]`` and gradient ``g`` (Grad-CAM family):
  ``fn(A, g, eps) -> [N,h,w]``; every layer of one forward + backward pass.
* ``head`` — CAM: ``fn(A, W[target]) -> [N,h,w]`` at the layer feeding global pooling + linear head.
* ``input`` — from the input gradient of the same pass: ``fn(grad [N,C,H,W]) -> [N,H,W]``; with
  ``smooth_relu`` the pass back-propagates through seed 004's smoothed ReLU (``grad``), so it runs as a
  pass of its own alongside the shared one, but by the same code.
* ``own`` — a computation of its own: ``fn(model, x, target, **options) -> [N,H,W]`` (SmoothGrad's
  noisy copies, LRP's modified backward, MASK's optimisation, RTS's masker).
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from .._checks import unknown_name

__all__ = ["Method", "register_method", "method_info", "list_methods", "METHODS"]

Kind = Literal["layer", "head", "input", "own"]
_NOT_OPTIONS = {"model", "x", "target", "create_graph", "seed"}


@dataclass(frozen=True)
class Method:
    """One explanation method.

    Attributes:
        name: the name :func:`~advlens.explain.explain` accepts.
        kind: ``layer``, ``head``, ``input`` or ``own`` (module docstring).
        fn: the function computing the raw map.
        differentiable: ``create_graph=True`` gives maps differentiable in ``x`` (seed 004's attacks).
        why_not: for a non-differentiable method, what to do instead (the error message).
        smooth_relu: the pass back-propagates through seed 004's smoothed ReLU (Sec. IV-C).
        extra_options: options with defaults that are not ``fn``'s parameters (``tau`` of ``grad``).
        summary: one line for ``--help`` and the documentation.
    """

    name: str
    kind: Kind
    fn: Callable[..., Any]
    differentiable: bool = True
    why_not: str = ""
    smooth_relu: bool = False
    extra_options: dict[str, Any] = field(default_factory=dict)
    summary: str = ""

    @property
    def shares_pass(self) -> bool:
        """Computed from the engine's forward + backward pass (every method but ``own`` ones)."""
        return self.kind != "own"

    @property
    def at_layers(self) -> bool:
        """One map per layer (``layer``, ``head``); else one map over the input pixels (key ``"input"``)."""
        return self.kind in ("layer", "head")

    def options(self) -> dict[str, Any]:
        """Keyword options and their defaults (own-pass methods' parameters, plus ``extra_options``)."""
        found = dict(self.extra_options)
        if self.kind == "own":
            for p in inspect.signature(self.fn).parameters.values():
                if p.name not in _NOT_OPTIONS and p.kind is p.POSITIONAL_OR_KEYWORD:
                    found[p.name] = p.default
        return found


#: name -> :class:`Method`, in registration order (the order of :func:`list_methods`)
METHODS: dict[str, Method] = {}


def register_method(name: str, kind: Kind, **info: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator registering ``fn`` as explanation method ``name`` (``info``: the other :class:`Method`
    fields). A function may carry several names (``saliency`` and ``grad``). Registering a name twice is refused."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in METHODS:
            raise RuntimeError(f"explanation method {name!r} registered twice")
        METHODS[name] = Method(name, kind, fn, **info)
        return fn

    return deco


def _loaded() -> dict[str, Method]:
    """Import every module of this package once: each registers its methods (a new method is one new file)."""
    import importlib
    import pkgutil
    from pathlib import Path

    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__package__}.{info.name}")  # cached after the first time
    return METHODS


def method_info(name: object) -> Method:
    """The record of method ``name`` (one line with close matches when unknown)."""
    found = _loaded()
    if not isinstance(name, str) or name not in found:
        raise unknown_name("explanation method", name, list(found))
    return found[name]


def list_methods(kind: Kind | None = None) -> list[str]:
    """Names accepted by :func:`~advlens.explain.explain` (of one ``kind`` if given)."""
    order = {"layer": 0, "head": 1, "input": 2, "own": 3}  # the Grad-CAM family first, own passes last
    found = [m for m in _loaded().values() if kind is None or m.kind == kind]
    return [m.name for m in sorted(found, key=lambda m: order[m.kind])]  # stable: registration order within a kind
