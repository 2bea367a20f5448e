"""``explain``: maps of one or several methods at every requested layer from one pass."""
from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from contextlib import nullcontext

from .._checks import AdvlensError, check_bool, check_images, check_int, check_layers, check_number, unknown_name
from ..models.wrapper import ClassifierModel
from .batching import concat_maps, resolve_batch_size, run_batched
from .engine import Pass, check_model, forward_backward
from .gradient import smooth_relu
from .methods import METHODS, Method, list_methods, method_info

__all__ = ["explain", "explain_many", "layers_for", "list_methods", "maps_from_pass", "method_options", "normalize_maps"]


def method_options(method: str) -> set[str]:
    """Keyword options ``method`` accepts (own-pass methods' parameters, ``tau`` of ``grad``; see
    :meth:`~advlens.explain.methods.Method.options`)."""
    return set(method_info(method).options())


def _own_pass(info: Method, model: ClassifierModel, x: torch.Tensor, target, create_graph: bool,
              seed: int, options: dict[str, object]) -> torch.Tensor:
    params = inspect.signature(info.fn).parameters
    kw = {k: v for k, v in options.items() if k in params}
    if "seed" in params:
        kw["seed"] = seed
    if "create_graph" in params:
        kw["create_graph"] = create_graph
    return info.fn(model, x, target, **kw)


def normalize_maps(m: torch.Tensor) -> torch.Tensor:
    """Min–max normalize each map of ``m`` ``[N,H,W]`` to [0,1]; a constant map becomes 0."""
    lo = m.amin(dim=(1, 2), keepdim=True)
    rng = m.amax(dim=(1, 2), keepdim=True) - lo
    return (m - lo) / torch.where(rng > 0, rng, torch.ones_like(rng))


def _finish(raw: torch.Tensor, size: tuple[int, int], normalize: bool) -> torch.Tensor:
    """Upsample ``[N,h,w]`` bilinearly (half-pixel centres) to ``size``, then normalize."""
    if tuple(raw.shape[-2:]) != tuple(size):
        raw = F.interpolate(raw[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    return normalize_maps(raw) if normalize else raw


def layers_for(model: ClassifierModel, method: str, layers: str | Sequence[str]) -> list[str]:
    """Layers ``method`` is computed at: none for input-pixel methods, the CAM layer for ``cam``."""
    kind = method_info(method).kind
    if kind in ("input", "own"):
        return []
    if kind == "head":
        if model.cam_layer is None or model.classifier is None:
            raise AdvlensError(f"{method} needs a model with global pooling + linear head; {model.name} has none")
        if layers == "all":
            return [model.cam_layer]
        names = model.resolve_layers(layers)
        if names != [model.cam_layer]:
            raise AdvlensError(f"{method} is defined only at {model.cam_layer!r} (the layer feeding global pooling)")
        return names
    return model.resolve_layers(layers)


def maps_from_pass(
    model: ClassifierModel,
    p: Pass,
    per_method: dict[str, list[str]],
    normalize: bool = True,
    eps: float = 0.0,
) -> dict[str, dict[str, torch.Tensor]]:
    """Turn one :class:`~advlens.explain.engine.Pass` into maps of every method in ``per_method``.

    ``per_method`` maps a method name to its layers (empty for input-pixel methods). Maps are
    differentiable if the pass was made with ``create_graph=True``.
    """
    size = tuple(p.input_size)
    out: dict[str, dict[str, torch.Tensor]] = {}
    with torch.set_grad_enabled(p.create_graph):
        for m, names in per_method.items():
            info = METHODS[m]
            if info.kind == "layer":
                out[m] = {n: _finish(info.fn(p.acts[n], p.grads[n], eps), size, normalize) for n in names}
            elif info.kind == "head":
                w = model.classifier.weight[p.target]
                out[m] = {n: _finish(info.fn(p.acts[n], w), size, normalize) for n in names}
            elif info.kind == "input":  # smooth_relu methods: the caller ran the pass under smooth_relu
                out[m] = {"input": _finish(info.fn(p.input_grad), size, normalize)}
            else:
                raise AdvlensError(f"{m} needs a pass of its own; it cannot come from a shared pass")
    return out


def pass_context(model: ClassifierModel, method: str, tau: object = None):
    """The context the engine's pass runs in for ``method``: seed 004's smoothed ReLU for ``grad``
    (``tau``: its smoothing, default the method's), else nothing."""
    info = method_info(method)
    if not info.smooth_relu:
        return nullcontext()
    return smooth_relu(model, info.extra_options["tau"] if tau is None else tau)


def explain_many(
    model: ClassifierModel,
    x: torch.Tensor,
    methods: Sequence[str],
    layers: str | Sequence[str] = "all",
    target: int | torch.Tensor | None = None,
    create_graph: bool = False,
    normalize: bool = True,
    seed: int = 0,
    eps: float = 0.0,
    return_logits: bool = False,
    **options: object,
) -> dict[str, dict[str, torch.Tensor]] | tuple[dict[str, dict[str, torch.Tensor]], torch.Tensor]:
    """Maps of several methods at all requested layers, sharing ONE forward and ONE backward.

    ``gradcam``, ``gradcam++``, ``layercam``, ``noisecam``, ``cam`` and ``saliency`` all come
    from the same pass (``grad``: the same pass through seed 004's smoothed ReLU); the ``own``
    methods of :data:`~advlens.explain.methods.METHODS` (``smoothgrad``, ``lrp``, ``mask``, ``rts``)
    need a computation of their own.

    Args:
        methods: a list of method names; the other arguments are those of :func:`explain`.
        return_logits: also return the logits ``[N,C]`` of that same forward (no extra pass to get
            the predictions).
        **options: go to the own-pass methods that accept them (see :func:`method_options`).

    Returns:
        ``{method: {layer: Tensor[N,H,W]}}`` at the input size; input-pixel methods use the key
        ``"input"``. With ``return_logits``: ``(maps, logits)``.
    """
    model = check_model(model)
    check_images(x)
    if isinstance(methods, str) or not isinstance(methods, (list, tuple)):
        raise AdvlensError(f"methods must be a list of method names, got {methods!r}; use explain() for one method")
    layers = check_layers(layers)
    create_graph, normalize = check_bool(create_graph, "create_graph"), check_bool(normalize, "normalize")
    return_logits, seed = check_bool(return_logits, "return_logits"), check_int(seed, "seed")
    eps = check_number(eps, "eps", 0, strict=False)
    methods = list(dict.fromkeys(methods))
    for m in methods:
        if not isinstance(m, str) or m not in list_methods():
            raise unknown_name("explanation method", m, list_methods())
    infos = {m: method_info(m) for m in methods}
    accepted = set().union(*(set(i.options()) for i in infos.values()))
    unknown = sorted(set(options) - accepted)
    if unknown:
        known = {m: sorted(METHODS[m].options()) for m in list_methods() if METHODS[m].options()}
        raise AdvlensError(f"unknown explanation option(s) {unknown} for {methods} (options per method: {known})")
    if create_graph:
        for i in infos.values():
            if not i.differentiable:
                raise AdvlensError(f"create_graph=True: {i.why_not}")
    out: dict[str, dict[str, torch.Tensor]] = {}
    logits = None
    # the shared pass, then (grad) the same pass through the smoothed ReLU: one code path for every pass method
    for smooth in (False, True):
        group = {m: layers_for(model, m, layers) for m, i in infos.items() if i.shares_pass and i.smooth_relu == smooth}
        if not group:
            continue
        needed = list(dict.fromkeys(n for names in group.values() for n in names))
        want_input = any(infos[m].kind == "input" for m in group)
        with pass_context(model, next(iter(group)), options.get("tau")) if smooth else nullcontext():
            p = forward_backward(model, x, needed, target, create_graph=create_graph, input_grad=want_input)
        out.update(maps_from_pass(model, p, group, normalize, eps))
        target = p.target if target is None else target
        logits = p.logits if logits is None else logits
    own = [i for i in infos.values() if not i.shares_pass]
    if own and target is None:
        with torch.no_grad():
            logits = model(x)
        target = logits.argmax(1)
    for i in own:
        raw = _own_pass(i, model, x, target, create_graph, seed, options)
        out[i.name] = {"input": _finish(raw, tuple(x.shape[-2:]), normalize)}
    maps = {m: out[m] for m in methods}
    if not return_logits:
        return maps
    if logits is None:
        with torch.no_grad():
            logits = model(x)
    return maps, logits


def explain(
    model: ClassifierModel,
    x: torch.Tensor,
    method: str = "gradcam",
    layers: str | Sequence[str] = "all",
    target: int | torch.Tensor | None = None,
    create_graph: bool = False,
    normalize: bool = True,
    seed: int = 0,
    eps: float = 0.0,
    batch_size: int | str | None = None,
    **method_kw: object,
) -> dict[str, torch.Tensor]:
    """Explanation maps of ``method`` for every requested layer, from one forward and one backward.

    Args:
        model: a :class:`~advlens.models.ClassifierModel`.
        x: images ``[N,3,H,W]`` in [0,1] on the model's device.
        method: one of :func:`list_methods` — ``gradcam``, ``gradcam++``, ``layercam``,
            ``noisecam`` (seed 002), ``cam``, ``saliency``, ``smoothgrad``, ``grad`` (seed 004),
            ``lrp`` (seed 001, zennit), ``mask`` and ``rts`` (seed 004).
        layers: ``"all"`` (``model.layers`` in forward order), a name, or a list of names.
        target: None = each image's predicted class, an int, or a tensor ``[N]``.
        create_graph: keep the graph so the maps are differentiable with respect to ``x``
            (set ``x.requires_grad_()``; used by attacks on the explainer, seed 004).
        normalize: min–max normalize each map to [0,1] (after bilinear upsampling to the
            input size); ``False`` returns the raw upsampled maps.
        seed: randomness of ``smoothgrad``.
        eps: added to the Grad-CAM++/NoiseCAM alpha denominator (0 = the paper; 1e-6 reproduces
            pytorch-grad-cam).
        batch_size: split ``x`` into chunks of this size (maps are concatenated); ``"auto"`` picks
            the largest that fits the device's free memory
            (:func:`~advlens.explain.batching.auto_batch_size`) and halves it if a chunk still runs
            out of memory.
        **method_kw: options of the own-pass methods, e.g. ``n_samples``, ``noise_level`` for
            ``smoothgrad``, ``tau`` for ``grad``, ``epsilon``/``composite`` for ``lrp``,
            ``steps``/``lr`` for ``mask``, ``data`` for ``rts`` (see :func:`method_options`).

    Returns:
        ``{layer: Tensor[N,H,W]}`` on ``x``'s device (``{"input": …}`` for input-pixel methods).

    Example:
        >>> maps = explain(model, x, "gradcam", layers=["block3_conv1", "block3_conv2"])
        >>> maps["block3_conv2"].shape
        torch.Size([4, 32, 32])
    """
    if not isinstance(method, str):
        raise AdvlensError(f"method must be a string, got {type(method).__name__}; use explain_many for several")
    check_images(x)
    kw = dict(layers=layers, create_graph=create_graph, normalize=normalize, seed=seed, eps=eps, **method_kw)
    bs = resolve_batch_size(check_model(model), batch_size, len(x))
    if bs >= len(x) and batch_size != "auto":
        return explain_many(model, x, [method], target=target, **kw)[method]

    def chunk(sl: slice) -> dict[str, torch.Tensor]:
        t = target[sl] if isinstance(target, torch.Tensor) and target.ndim else target
        return explain_many(model, x[sl], [method], target=t, **kw)[method]

    return concat_maps(run_batched(chunk, len(x), bs, backoff=batch_size == "auto"))
