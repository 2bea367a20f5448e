"""Find the explainable layers of any classifier from one probe forward (CNNs and vision transformers).

``layers="auto"`` (the default of :func:`advlens.wrap` and of every model reference such as
``timm:resnet18``) means:

* timm models with ``feature_info``: its modules, in order (every stage of a CNN, every block of a
  ViT/DeiT, every stage of a Swin);
* any other network: every block (the outermost modules with children that are items of an
  ``nn.Sequential``/``nn.ModuleList`` without being containers: residual blocks, MBConv, transformer
  blocks, …) plus, outside the blocks, the last module at each spatial resolution; in forward order,
  each output once (named after the innermost module returning that tensor, in-place changes counted).

Transformer outputs get a :class:`~advlens.models.tokens.TokenGrid` so every CAM method sees
``[N, C, h, w]``. The CAM pair (``cam_layer``, ``classifier``) is kept only where it is exact: the
last layer's global average pooled through the final ``nn.Linear`` reproduces the logits of a
random probe image.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .._checks import AdvlensError, unknown_name
from .tokens import TokenGrid

__all__ = ["LayerInfo", "probe_layers", "find_layers", "find_cam", "layer_table"]

_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
#: what :func:`probe_layers` returns: ``(infos, logits [1, C], {name: output})``
Probe = tuple[list["LayerInfo"], torch.Tensor, dict]


@dataclass(frozen=True)
class LayerInfo:
    """One module's output in the probe forward.

    Attributes:
        name: module name (as in ``named_modules()``). shape: output shape without the batch dim.
        calls: times the module ran in one forward (only modules that run once can be explained).
        order: completion order in the forward. ident: ``(id, version)`` of the output tensor: two
            modules with the same ident return the very same values (a container returning its last
            child's output); an in-place change in between (``out += x``) bumps the version.
    """

    name: str
    shape: tuple[int, ...]
    calls: int
    order: int
    ident: tuple[int, int]


def _probe_input(net: nn.Module, input_size: tuple[int, int]) -> torch.Tensor:
    """A seeded normal image ``[1, 3, H, W]`` on the network's device (never the global RNG)."""
    ref = next(iter(net.parameters()), None)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 3, *input_size, generator=gen)
    return x.to(ref.device) if ref is not None else x


def probe_layers(net: nn.Module, input_size: tuple[int, int]) -> tuple[list[LayerInfo], torch.Tensor, dict]:
    """One eval-mode forward of a random image with a hook on every module (hooks removed, mode restored).

    Returns:
        ``(infos, logits, outputs)``: each module with a tensor output in completion order, the logits
        ``[1, C]`` and ``{name: output tensor}`` (for :func:`find_cam`).
    """
    records: dict[str, list] = {}
    outputs: dict[str, torch.Tensor] = {}
    versions: dict[str, int] = {}
    order: list[str] = []
    handles = []

    def hook(name: str):
        def fn(module: nn.Module, inputs: object, output: object) -> None:
            if isinstance(output, torch.Tensor):
                records.setdefault(name, []).append(output.shape[1:])
                if name not in outputs:
                    outputs[name] = output
                    versions[name] = output._version  # an in-place op (``out += x``) later makes it new
                    order.append(name)

        return fn

    was_training = net.training
    inplace = [m for m in net.modules() if getattr(m, "inplace", None) is True]
    try:
        for m in inplace:  # as in the engine's pass: an in-place op must not make two outputs one tensor
            m.inplace = False
        for name, module in net.named_modules():
            if name:
                handles.append(module.register_forward_hook(hook(name)))
        net.eval()
        with torch.no_grad():
            logits = net(_probe_input(net, input_size))
    except Exception as e:  # a user's network that cannot take this input
        raise AdvlensError(f"the network fails on a {input_size[0]}×{input_size[1]} input "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                           "set its input size (--input-size / input_size)") from None
    finally:
        for h in handles:
            h.remove()
        for m in inplace:
            m.inplace = True
        net.train(was_training)
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise AdvlensError(f"the network must return logits [N, classes]; it returned "
                           f"{type(logits).__name__} {list(getattr(logits, 'shape', []))}")
    infos = [LayerInfo(name, tuple(outputs[name].shape[1:]), len(records[name]), i, (id(outputs[name]), versions[name]))
             for i, name in enumerate(order)]
    return infos, logits, outputs


def _token_grid(net: nn.Module, info: LayerInfo, channels: int | None,
                input_size: tuple[int, int]) -> TokenGrid | None:
    """The layout of a transformer output: ``[T, C]`` tokens or NHWC ``[h, w, C]``; None for NCHW.

    A 3-d output is NHWC when ``channels`` (timm's ``feature_info``) is its last dim, or, without it,
    when only its first two dims have the input's aspect ratio (NCHW wins a tie)."""
    if len(info.shape) == 2:
        tokens = info.shape[0]
        grid = getattr(getattr(net, "patch_embed", None), "grid_size", None)
        if grid is not None and tokens >= grid[0] * grid[1]:
            return TokenGrid("tokens", (int(grid[0]), int(grid[1])), tokens - int(grid[0]) * int(grid[1]))
        for prefix in (getattr(net, "num_prefix_tokens", None), 0, 1, 2):
            if prefix is not None and tokens > prefix and math.isqrt(tokens - prefix) ** 2 == tokens - prefix:
                side = math.isqrt(tokens - prefix)
                return TokenGrid("tokens", (side, side), prefix)
        return None
    if len(info.shape) == 3:
        a, b, c = info.shape
        if channels is not None:
            return TokenGrid("nhwc") if c == channels != a else None
        aspect = input_size[0] / input_size[1]
        if abs(b / c - aspect) > 0.01 * aspect and abs(a / b - aspect) <= 0.01 * aspect:
            return TokenGrid("nhwc")
    return None


def _spatial(info: LayerInfo, grid: TokenGrid | None) -> tuple[int, int] | None:
    """``(h, w)`` of a layer's map, or None when it has none."""
    if grid is not None:
        return grid.grid if grid.layout == "tokens" else (info.shape[0], info.shape[1])
    return (info.shape[1], info.shape[2]) if len(info.shape) == 3 else None


def _block_names(net: nn.Module) -> set[str]:
    """The outermost blocks: modules with children, items of an ``nn.Sequential``/``nn.ModuleList`` but
    not containers themselves (a residual block, an MBConv, a transformer block; a conv-norm-act
    ``Sequential`` or a stage is not one — the search goes through stages into their blocks)."""
    containers = (nn.Sequential, nn.ModuleList)
    found: set[str] = set()

    def walk(module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            name = f"{prefix}.{child_name}" if prefix else child_name
            if (isinstance(module, containers) and not isinstance(child, containers)
                    and any(True for _ in child.children())):
                found.add(name)  # a block: its insides are not searched
            else:
                walk(child, name)

    walk(net, "")
    return found


def find_layers(net: nn.Module, input_size: tuple[int, int], layers: str | Sequence[str] = "auto",
                probe: Probe | None = None) -> tuple[dict[str, nn.Module], dict[str, TokenGrid]]:
    """The explainable layers of ``net`` and the token grids of the transformer ones.

    Args:
        net: the network (normalized input). input_size: ``(H, W)`` of its input.
        layers: ``"auto"`` (see the module docstring) or module names (their grids are found too).
        probe: the result of :func:`probe_layers` for ``net`` at ``input_size``, if already run.

    Returns:
        ``({name: module}, {name: TokenGrid})``, layers in forward order.

    Raises:
        AdvlensError: an unknown module name, a module that runs more than once or returns no tensor,
            or no layer with a spatial map.
    """
    infos, _, _ = probe or probe_layers(net, input_size)
    by_name = {i.name: i for i in infos}
    modules = dict(net.named_modules())
    channels = _feature_channels(net)
    if layers == "auto":
        names = _auto_names(net, infos, channels, input_size)
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
        for n in names:
            if n not in modules or not n:
                raise unknown_name("submodule", n, [k for k in modules if k])
            if n not in by_name:
                raise AdvlensError(f"layer {n!r} returns no tensor (or does not run) in a forward; pick another")
            if by_name[n].calls > 1:
                raise AdvlensError(f"layer {n!r} runs {by_name[n].calls} times per forward; pick a module that runs once")
    grids = {n: g for n in names if (g := _token_grid(net, by_name[n], channels.get(n), input_size)) is not None}
    if layers == "auto":
        names = [n for n in names if _spatial(by_name[n], grids.get(n)) is not None]
    if not names:
        raise AdvlensError("found no layer with a spatial output [C, h, w] (or transformer tokens); name the layers")
    return {n: modules[n] for n in names}, grids


def _feature_channels(net: nn.Module) -> dict[str, int]:
    """``{module: channels}`` from timm's ``feature_info`` (empty for other networks)."""
    info = getattr(net, "feature_info", None)
    if not isinstance(info, Sequence) or not all(isinstance(f, Mapping) and "module" in f for f in info):
        return {}
    return {str(f["module"]): int(f.get("num_chs", 0)) for f in info}


def _auto_names(net: nn.Module, infos: list[LayerInfo], channels: dict[str, int],
                input_size: tuple[int, int]) -> list[str]:
    """Layer names for ``layers="auto"`` in forward order."""
    by_name = {i.name: i for i in infos}
    if channels and all(n in by_name and by_name[n].calls == 1 for n in channels):
        return sorted(channels, key=lambda n: by_name[n].order)
    blocks = _block_names(net)
    modules = dict(net.named_modules())
    inside = tuple(f"{b}." for b in blocks)
    seen: set[tuple[int, int]] = set()
    last_at: dict[tuple[int, int], str] = {}
    keep: set[str] = set()
    for info in infos:  # completion order: an inner module before the container returning its output
        if (info.calls != 1 or info.ident in seen or isinstance(modules[info.name], _POOLS)
                or (info.name.startswith(inside) and info.name not in blocks)):
            continue
        hw = _spatial(info, _token_grid(net, info, None, input_size))
        if hw is None or hw[0] * hw[1] <= 1:
            continue
        seen.add(info.ident)
        last_at[hw] = info.name
        if info.name in blocks:
            keep.add(info.name)
    keep.update(last_at.values())
    return sorted(keep, key=lambda n: by_name[n].order)


def find_cam(net: nn.Module, input_size: tuple[int, int], layers: Mapping[str, nn.Module],
             grids: Mapping[str, TokenGrid], classifier: nn.Module | None = None,
             probe: Probe | None = None) -> tuple[str | None, nn.Linear | None]:
    """``(cam_layer, classifier)`` when CAM is exact for ``net``, else ``(None, None)``.

    The last ``nn.Linear`` (or ``classifier``) and the last layer qualify when
    ``classifier(mean over h, w of the layer's output)`` equals the logits of a random probe image
    (relative error ≤ 1e-4): then the network is global average pooling + that linear layer.
    ``probe``: the result of :func:`probe_layers` for ``net`` at ``input_size``, if already run.
    """
    linear = classifier if isinstance(classifier, nn.Linear) else None
    if linear is None:
        linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
        linear = linears[-1] if linears else None
    if linear is None or not layers:
        return None, None
    last = list(layers)[-1]
    if last in grids:
        return None, None
    _, logits, outputs = probe or probe_layers(net, input_size)
    act = outputs.get(last)
    if act is None or act.ndim != 4 or act.shape[1] != linear.in_features:
        return None, None
    with torch.no_grad():
        cam_logits = linear(act.mean(dim=(2, 3)))
    err = (cam_logits - logits).abs().max() / logits.abs().max().clamp_min(1e-12)
    return (last, linear) if float(err) <= 1e-4 else (None, None)


def layer_table(model) -> list[dict[str, str]]:
    """One row per explainable layer of a :class:`~advlens.models.ClassifierModel`: ``name``, the
    ``shape`` of its map input ``C×h×w`` (after any token reshape) and a ``note`` (token layout, CAM)."""
    _, _, outputs = probe_layers(model.net, model.input_size)
    module_names = {id(m): n for n, m in model.net.named_modules()}  # display name -> module name
    rows = []
    for name, module in model.layers.items():
        out, grid = outputs.get(module_names.get(id(module), "")), model.grids.get(name)
        if out is None:
            shape, note = "-", "does not run in a forward"
        else:
            mapped = grid.to_grid(out) if grid is not None else out
            shape = "×".join(str(d) for d in mapped.shape[1:])
            note = "" if grid is None else (f"tokens → {grid.grid[0]}×{grid.grid[1]} grid, {grid.prefix} prefix "
                                            "token(s) dropped" if grid.layout == "tokens" else "NHWC → NCHW")
        if name == model.cam_layer:
            note = (note + "; " if note else "") + "CAM layer"
        rows.append({"name": name, "shape": shape, "note": note})
    return rows
