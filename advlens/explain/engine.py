"""One-pass multi-layer capture: activations and their gradients for many layers at once.

A forward hook per requested layer keeps that layer's output; after ONE forward, ONE call to
``torch.autograd.grad`` returns the gradient of the target scores with respect to all of them
(and optionally the input). Hooks live in a context manager and are removed in ``finally``;
in-place activations are switched off for the pass (so a hooked output is never overwritten)
and restored afterwards, leaving the caller's model exactly as it was.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .._checks import AdvlensError, check_images
from ..models.wrapper import ClassifierModel

__all__ = ["capture", "Pass", "forward_backward", "resolve_target", "check_model"]


def check_model(model: object) -> ClassifierModel:
    """``model`` if it is an advlens :class:`~advlens.models.wrapper.ClassifierModel`, else a one-line
    :class:`~advlens._checks.AdvlensError` saying how to wrap a plain ``nn.Module``."""
    if not isinstance(model, ClassifierModel):
        raise AdvlensError(
            f"expected an advlens ClassifierModel, got {type(model).__name__}; "
            "use al.load_model(name) or al.wrap(module, mean, std, layers=[...])"
        )
    return model


@contextmanager
def capture(model: ClassifierModel, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Context manager filling ``{layer name: output tensor}`` during forwards inside it.

    A transformer layer's tokens are stored as their spatial grid ``[N, C, h, w]`` (``model.grids``,
    :class:`~advlens.models.tokens.TokenGrid`), and the network continues from that grid.

    Raises:
        AdvlensError: a hooked layer returns something other than a tensor, or runs twice in
            one forward (hook a module that runs once instead).
    """
    store: dict[str, torch.Tensor] = {}
    handles = []
    inplace = [m for m in model.modules() if getattr(m, "inplace", None) is True]

    grids = getattr(model, "grids", {})

    def hook(name: str):
        grid = grids.get(name)

        def fn(module: nn.Module, inputs: object, output: object) -> torch.Tensor | None:
            if not isinstance(output, torch.Tensor):
                raise AdvlensError(f"layer {name!r} returns {type(output).__name__}, not a tensor; pick another layer")
            if name in store:
                raise AdvlensError(f"layer {name!r} runs more than once per forward; pick a module that runs once")
            if grid is None:
                store[name] = output
                return None
            store[name] = spatial = grid.to_grid(output)  # tokens -> [N,C,h,w]; the network goes on from it
            return grid.from_grid(spatial, output)

        return fn

    try:
        for m in inplace:
            m.inplace = False
        for n in dict.fromkeys(names):
            handles.append(model.layers[n].register_forward_hook(hook(n)))
        yield store
    finally:
        for h in handles:
            h.remove()
        for m in inplace:
            m.inplace = True
        store.clear()


def resolve_target(target: int | torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """Class index per image ``[N]``: None = predicted class, an int for all, or a tensor ``[N]``."""
    n, c = logits.shape
    if target is None:
        return logits.detach().argmax(1)
    if isinstance(target, (bool, str)):
        raise AdvlensError(f"target must be a class index (int) or a tensor [{n}] of them, got {target!r}")
    try:
        t = torch.as_tensor(target, device=logits.device)
    except (TypeError, ValueError, RuntimeError):
        raise AdvlensError(f"target must be a class index (int) or a tensor [{n}] of them, "
                           f"got {type(target).__name__}") from None
    if t.dtype == torch.bool:
        raise AdvlensError(f"target must hold class indices (integers), got dtype {t.dtype}")
    if t.is_floating_point():
        raise AdvlensError(f"target must hold class indices (integers), got dtype {t.dtype}")
    t = t.long().expand(n) if t.ndim == 0 else t.long()
    if t.shape != (n,):
        raise AdvlensError(f"target must be an int or a tensor of shape [{n}], got shape {list(t.shape)}")
    if ((t < 0) | (t >= c)).any():
        raise AdvlensError(f"target class out of range [0, {c - 1}]: {t.tolist()[:8]}")
    return t


@dataclass
class Pass:
    """What one forward + one backward produced.

    Attributes:
        logits: ``[N,C]``.
        target: ``[N]`` class whose score was differentiated.
        acts: ``{layer: [N,K,h,w]}`` activations.
        grads: ``{layer: [N,K,h,w]}`` d(score)/d(activation).
        input_grad: ``[N,3,H,W]`` d(score)/d(x), or None if not requested.
        input_size: ``(H, W)`` of the input.
        create_graph: whether the gradients carry a graph (differentiable maps).
    """

    logits: torch.Tensor
    target: torch.Tensor
    acts: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor]
    input_grad: torch.Tensor | None
    input_size: tuple[int, int]
    create_graph: bool


def forward_backward(
    model: ClassifierModel,
    x: torch.Tensor,
    layers: Sequence[str],
    target: int | torch.Tensor | None = None,
    create_graph: bool = False,
    input_grad: bool = False,
    check: bool = True,
) -> Pass:
    """Run one forward and one backward; return activations and gradients of all ``layers``.

    The differentiated score is ``sum_n logits[n, target[n]]`` (pre-softmax class scores), so
    each image's gradients are its own.

    Args:
        model: the classifier.
        x: ``[N,3,H,W]`` in [0,1]. With ``create_graph=True`` keep ``x.requires_grad`` set to get
            maps that are differentiable with respect to it.
        layers: layer names (already resolved).
        target: see :func:`resolve_target`.
        create_graph: build the graph of the gradients (for differentiable explanations).
        input_grad: also return d(score)/dx.
        check: validate ``x`` (off for internal callers that feed noisy copies outside [0,1]).
    """
    if check:
        check_images(x)
    with torch.enable_grad(), capture(model, layers) as store:
        xin = x if x.requires_grad else x.detach().requires_grad_(True)
        logits = model(xin)
        tgt = resolve_target(target, logits)
        missing = [n for n in layers if n not in store]
        if missing:
            raise AdvlensError(f"layer(s) {missing} did not run in the forward pass")
        acts = {n: store[n] for n in layers}
        inputs = list(acts.values()) + ([xin] if input_grad else [])
        score = logits.gather(1, tgt[:, None]).sum()
        grads = torch.autograd.grad(score, inputs, create_graph=create_graph, allow_unused=True)
        if any(a.dtype in (torch.bfloat16, torch.float16) for a in acts.values()):  # autocast: maps in float32
            acts = {n: a.float() for n, a in acts.items()}
            grads = tuple(None if g is None else g.float() for g in grads)
    unused = [n for n, g in zip(list(acts) + ["input"], grads) if g is None]
    if unused:
        raise AdvlensError(f"the class score does not depend on layer(s) {unused}")
    if not create_graph:
        acts = {n: a.detach() for n, a in acts.items()}
    return Pass(
        logits=logits if create_graph else logits.detach(),
        target=tgt,
        acts=acts,
        grads=dict(zip(acts, grads[: len(acts)])),
        input_grad=grads[-1] if input_grad else None,
        input_size=(x.shape[-2], x.shape[-1]),
        create_graph=create_graph,
    )
