"""Safe weight loading: ``torch.load(weights_only=True)`` or safetensors, never pickle."""
from __future__ import annotations

import io
import logging
import pickletools
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from .._checks import AdvlensError, check_file, check_path, first_line

__all__ = ["read_state_dict", "load_into", "fit_keys", "cached_file"]

log = logging.getLogger(__name__)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.pth``/``.pt`` (``weights_only=True``) or ``.safetensors``.

    A training checkpoint that nests the state dict under ``"state_dict"`` (PyTorch Lightning), ``"model"``
    or ``"model_state_dict"`` beside other entries (epoch, optimizer state…) is unwrapped; key prefixes
    are fitted when loading (:func:`load_into`). No pickled
    code ever runs: torch's weights-only unpickler refuses any other Python object, and the error names
    the objects found (read from the pickle's opcodes, never by unpickling them). torch's warnings while
    reading are silenced: every problem is the one-line error below.

    Raises:
        AdvlensError: missing, non-regular or unreadable file, pickled Python objects, content that is
            not a state dict, or NaN/inf in a floating-point tensor (the first such key is named).
    """
    path = check_file(check_path(path, "weights"), "weights file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if path.suffix.lower() == ".safetensors":
                from safetensors.torch import load_file

                obj: object = load_file(str(path), device="cpu")
            else:
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, pickle with code, wrong format
        foreign = _pickled_globals(path) if path.suffix.lower() != ".safetensors" else []
        if foreign:
            shown = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
            raise AdvlensError(
                f"cannot read weights file {path}: it is not a weights-only checkpoint: it contains pickled Python "
                f"objects ({shown}); advlens never runs pickles — save a state_dict or safetensors"
            ) from None
        raise AdvlensError(
            f"cannot read weights file {path} as a PyTorch (weights_only) or safetensors checkpoint "
            f"({type(e).__name__}: {first_line(e, 160)})"
        ) from None
    obj = _unwrap(obj)
    if not isinstance(obj, Mapping) or not obj or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise AdvlensError(f"weights file {path} is not a state dict (a mapping of parameter names to tensors)")
    for k, v in obj.items():
        if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all()):
            bad = "NaN" if bool(torch.isnan(v).any()) else "infinite"
            raise AdvlensError(f"weights file {path} holds {bad} values in tensor {k!r}; the checkpoint is corrupt "
                               "(or saved from a diverged training run)")
    return dict(obj)


#: where training checkpoints keep the model's state dict, in the order looked for
_NESTED = ("state_dict", "model_state_dict", "model", "net")
#: key prefixes written by wrappers: DDP/DataParallel, Lightning modules, torch.compile, advlens' wrapper
_PREFIXES = ("module.", "model.", "_orig_mod.", "net.")


def _unwrap(obj: object) -> object:
    """The state dict inside a training checkpoint (``{"state_dict": ..., "epoch": ...}``), else ``obj``."""
    if not isinstance(obj, Mapping) or all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    for key in _NESTED:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner
    return obj


def fit_keys(state: Mapping[str, torch.Tensor], own: Sequence[str]) -> dict[str, torch.Tensor]:
    """``state`` with the wrapper prefixes of :data:`_PREFIXES` removed (up to two, e.g. Lightning around
    DDP) when that makes its keys those of ``own``; ``state`` unchanged when nothing fits better.

    Keys without the prefix are dropped with it (a Lightning module's loss weights, advlens' ``mean``/``std``
    buffers): only a prefix under which exactly ``own`` is found is taken.
    """
    want = set(own)
    if set(state) == want:
        return dict(state)
    candidates = [(p,) for p in _PREFIXES] + [(p, q) for p in _PREFIXES for q in _PREFIXES if p != q]
    for prefixes in candidates:
        cut = dict(state)
        for p in prefixes:
            cut = {k[len(p):]: v for k, v in cut.items() if k.startswith(p)}
        if set(cut) == want:
            return cut
    return dict(state)


def _allowed_globals() -> set[str]:
    """Globals torch's weights-only unpickler accepts (tensor rebuilds, storages, dtypes, OrderedDict…)."""
    try:
        from torch import _weights_only_unpickler as wou

        return {str(k) for k in wou._get_allowed_globals()}
    except Exception:  # a private API: fall back to the essentials
        return {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter"}


def _pickled_globals(path: Path, limit: int = 1 << 16) -> list[str]:
    """Python objects (``module.name``) a pickle in ``path`` would import, other than the ones torch's
    weights-only unpickler accepts; read from the opcodes with :mod:`pickletools` (nothing is executed).

    Looks at every ``*.pkl`` of a ``torch.save`` zip archive, else at the pickles at the start of the
    file (legacy ``torch.save`` writes several back to back). Empty when nothing is found or the file is
    no pickle at all.
    """
    streams: list[io.BufferedIOBase] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                streams = [io.BytesIO(z.read(n)) for n in z.namelist() if n.endswith(".pkl")]
        else:
            with path.open("rb") as raw:  # pickles come first; the tensors' bytes are not needed
                streams = [io.BytesIO(raw.read(64 << 20))]
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError):
        return []
    allowed, found = _allowed_globals(), []
    for f in streams:
        for _ in range(8):  # legacy files: magic number, protocol, sys info, the object
            strings: list[str] = []
            try:
                for op, arg, _pos in pickletools.genops(f):
                    if op.name == "GLOBAL":  # protocol ≤ 3 spells builtins "__builtin__"
                        found.append(str(arg).replace(" ", ".").replace("__builtin__.", "builtins."))
                    elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                        found.append(f"{strings[-2]}.{strings[-1]}")
                    elif isinstance(arg, str):
                        strings.append(arg)
                    if len(found) > limit:
                        break
            except Exception:  # not (or no longer) a pickle: raw tensor bytes, garbage
                break
    return [g for g in dict.fromkeys(found) if g not in allowed]


def load_into(net: nn.Module, state: Mapping[str, torch.Tensor], source: str, hint: str = "") -> None:
    """Load ``state`` into ``net`` strictly (wrapper prefixes fitted, :func:`fit_keys`), with a one-line
    error naming the first missing/unexpected keys or the first shape mismatch (``hint`` appended)."""
    own = net.state_dict()
    state = fit_keys(state, list(own))
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise AdvlensError(
            f"weights {source} do not fit this architecture: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]}){hint}"
        )
    wrong = [k for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        k = wrong[0]
        raise AdvlensError(
            f"weights {source} do not fit this architecture: {k} has shape {list(state[k].shape)}, "
            f"expected {list(own[k].shape)} ({len(wrong)} mismatches){hint}"
        )
    net.load_state_dict(state, strict=True)


def cached_file(url_or_name: str) -> Path | None:
    """Path of a torch-hub checkpoint (``<hub>/checkpoints/<basename>``) if already on disk."""
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url_or_name).name
    return path if path.is_file() else None
