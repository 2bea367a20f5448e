"""Detector base: scikit-learn-style ``fit`` / ``score`` / ``predict`` and safe ``save`` / ``load``.

A detector is fitted on clean images of one model; ``score(x)`` is higher for inputs that look more
adversarial; ``predict(x)`` thresholds it. ``save(path)`` writes ``path`` (safetensors: the fitted
tensors) and ``path.json`` (the parameters, the model's name, the name, shape and dtype of every tensor,
versions) atomically; ``load(path, model)`` reads them back without pickle and checks every part of
both files against each other, the detector's parameters and the model, so an edited or damaged file
is refused with one line that names it.
"""
from __future__ import annotations

import inspect
import json
import math
import numbers
from pathlib import Path
from typing import Any, ClassVar

import torch

from .._checks import AdvlensError, check_images, check_path, file_kind, first_line
from .._io import atomic_write, versions
from ..explain.engine import check_model
from ..models.wrapper import ClassifierModel

__all__ = ["Detector", "auto_batch"]

#: keys every ``path.json`` must hold, with their JSON types
_META_KEYS: dict[str, tuple[type, ...]] = {"kind": (str,), "model": (str,), "threshold": (numbers.Real,),
                                           "params": (dict,), "tensors": (dict,)}
_MAX_META_BYTES = 16 << 20


def auto_batch(x: torch.Tensor, batch_size: int | None) -> int:
    """``batch_size``, or for None (from the images ``x`` ``[N,C,H,W]``): 256 images on a GPU; on a CPU 256 at
    32×32, fewer for larger images (16 at 224×224: big CPU batches of large images run several times slower
    per image)."""
    if batch_size is not None:
        return int(batch_size)
    if x.device.type != "cpu":
        return 256
    return int(max(16, min(256, 262144 // (x.shape[-2] * x.shape[-1]))))


class Detector:
    """Shared plumbing; subclasses implement ``_fit(x)``, ``_score(x)`` and list their ``params``."""

    kind: ClassVar[str] = "detector"
    params: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.model: ClassifierModel | None = None
        self.state: dict[str, torch.Tensor] = {}
        self.threshold: float = 0.0

    # ------------------------------------------------------------------ public API
    def fit(self, model: ClassifierModel, x_clean: torch.Tensor) -> Detector:
        """Fit on clean images ``[N,3,H,W]`` in [0,1] of ``model``; returns ``self``."""
        self.model = check_model(model)
        check_images(x_clean, "x_clean")
        self._check_size(x_clean)
        self._fit(x_clean.to(model.device))
        return self

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """Adversarial score ``[N]`` (higher = more adversarial) of images ``[N,3,H,W]`` in [0,1]."""
        self._check_fitted()
        check_images(x)
        self._check_size(x)
        return self._score(x.to(self.model.device))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """``[N]`` bool: flagged as adversarial (``score > threshold``)."""
        return self.score(x) > self.threshold

    def save(self, path: str | Path, model_source: dict[str, Any] | None = None) -> Path:
        """Write the fitted detector to ``path`` (safetensors) and ``path.json`` (parameters, tensor list).

        Args:
            model_source: how to load the model again (JSON-able, e.g. ``{"model": "timm:resnet18",
                "weights": "/abs/ckpt.pth", "model_options": {"num_classes": 10}}``), kept in ``path.json`` as
                ``"model_source"`` so that scoring with the detector needs no model flags again.
        """
        from safetensors.torch import save

        self._check_fitted()
        path = check_path(path, "path")
        data = {k: v.detach().cpu().contiguous() for k, v in self.state.items()}
        meta = {"kind": self.kind, "model": self.model.name, "threshold": self.threshold,
                "params": {p: getattr(self, p) for p in self.params},
                "tensors": {k: {"shape": list(v.shape), "dtype": _dtype_name(v)} for k, v in data.items()},
                "versions": versions()}
        if model_source is not None:
            meta["model_source"] = json.loads(json.dumps(model_source))
        atomic_write(path, lambda f: f.write(save(data, metadata={"advlens": json.dumps({"detector": self.kind})})))
        atomic_write(path.with_name(path.name + ".json"), lambda f: f.write(json.dumps(meta, indent=2).encode()))
        return path

    @classmethod
    def load(cls, path: str | Path, model: ClassifierModel) -> Detector:
        """Read a detector written by :meth:`save` for ``model`` (the same model it was fitted on).

        Raises:
            AdvlensError: (one line naming the file) a missing or non-regular file, invalid JSON, a missing
                key or a value of the wrong type, another kind of detector or model, unknown or bad
                parameters, a file that is not safetensors, tensors missing, added, reshaped or of another
                dtype than ``path.json`` lists, or NaN/inf in them.
        """
        path = check_path(path, "detector path")
        meta_path = path.with_name(path.name + ".json")
        kinds = {p: file_kind(p) for p in (path, meta_path)}
        if "missing" in kinds.values():
            raise AdvlensError(f"detector files not found: {path} and {meta_path} are both needed")
        for p, kind in kinds.items():
            if kind != "a regular file":
                raise AdvlensError(f"detector file {p} is {kind}, not a regular file")
        meta = _read_meta(meta_path)
        if meta["kind"] != cls.kind:
            raise AdvlensError(f"{path} holds a {meta['kind']!r} detector, not {cls.kind!r}")
        model = check_model(model)
        if meta["model"] != model.name:
            raise AdvlensError(f"{path} was fitted on model {meta['model']!r}, not {model.name!r}")
        state = _read_state(path, meta["tensors"], meta_path)
        det = cls._from_params(meta["params"], meta_path, model)
        det.model, det.threshold = model, float(meta["threshold"])
        det.state = {k: v.to(model.device) for k, v in state.items()}
        try:
            det._check_state(model)
        except AdvlensError as e:
            raise AdvlensError(f"detector {path}: {e}") from None
        return det

    @classmethod
    def _from_params(cls, params: dict[str, Any], meta_path: Path, model: ClassifierModel) -> Detector:
        """A detector built from the ``params`` of ``meta_path``: every listed parameter present, of the type
        of its default, accepted by the constructor, and a ``layer`` that ``model`` has."""
        unknown = sorted(set(params) - set(cls.params))
        missing = [p for p in cls.params if p not in params]
        if unknown or missing:
            what = f"unknown parameter {unknown[0]!r}" if unknown else f"missing parameter {missing[0]!r}"
            raise AdvlensError(f"{meta_path}: {what} for a {cls.kind} detector (parameters: {', '.join(cls.params)})")
        defaults = {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items()
                    if p.default is not inspect.Parameter.empty}
        for name, value in params.items():
            problem = _param_problem(name, value, defaults.get(name))
            if problem:
                raise AdvlensError(f"{meta_path}: parameter {name!r} {problem}, got {first_line(repr(value), 60)}")
        try:
            det = cls(**params)
        except AdvlensError as e:
            raise AdvlensError(f"{meta_path}: {e}") from None
        except (TypeError, ValueError, KeyError) as e:
            raise AdvlensError(f"{meta_path}: bad parameters for a {cls.kind} detector ({first_line(e, 120)})") from None
        layer = getattr(det, "layer", None)
        if layer is not None:
            try:
                model.resolve_layers([layer])
            except AdvlensError as e:
                raise AdvlensError(f"{meta_path}: parameter 'layer': {e}") from None
        return det

    def _check_state(self, model: ClassifierModel) -> None:
        """Hook for subclasses: check that the loaded ``state`` fits ``model`` (shapes that depend on its
        input size or layers); raise :class:`AdvlensError` (one line) when not. The base checks nothing more."""

    # ------------------------------------------------------------------ helpers
    def _check_fitted(self) -> None:
        if self.model is None:
            raise AdvlensError(f"this {type(self).__name__} is not fitted yet; call .fit(model, x_clean) first")

    def _check_size(self, x: torch.Tensor) -> None:
        size = tuple(x.shape[-2:])
        want = tuple(self.model.input_size) if self.model is not None else size
        if size != want:
            raise AdvlensError(f"images are {size[0]}×{size[1]}, the model takes {want[0]}×{want[1]}")

    def _fit(self, x: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _score(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        ps = ", ".join(f"{p}={getattr(self, p)!r}" for p in self.params)
        return f"{type(self).__name__}({ps}){'' if self.model is None else ' fitted on ' + self.model.name}"



# --------------------------------------------------------------------------- reading the two files
def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _read_meta(meta_path: Path) -> dict[str, Any]:
    """``path.json`` parsed and checked: a JSON object with every key of :data:`_META_KEYS` of its type, a
    finite threshold and a tensor list ``{name: {"shape": [ints ≥ 0], "dtype": str}}``."""
    size = meta_path.stat().st_size
    if size > _MAX_META_BYTES:
        raise AdvlensError(f"detector metadata {meta_path} is {size / 2**20:.0f} MiB; a detector's is a few KiB")
    try:
        meta = json.loads(meta_path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise AdvlensError(f"detector metadata {meta_path} is not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise AdvlensError(f"detector metadata {meta_path} is not valid JSON ({e.msg} at line {e.lineno}, "
                           f"column {e.colno})") from None
    except (OSError, RecursionError) as e:
        raise AdvlensError(f"cannot read detector metadata {meta_path} ({first_line(e, 120)})") from None
    if not isinstance(meta, dict):
        raise AdvlensError(f"detector metadata {meta_path} must be a JSON object, got {type(meta).__name__}")
    for key, types in _META_KEYS.items():
        if key not in meta:
            raise AdvlensError(f"detector metadata {meta_path} has no {key!r} key; fit and save the detector again")
        value = meta[key]
        if not isinstance(value, types) or isinstance(value, bool):
            raise AdvlensError(f"detector metadata {meta_path}: {key!r} must be a JSON "
                               f"{_json_type(types[0])}, got {first_line(repr(value), 60)}")
    if not math.isfinite(meta["threshold"]):
        raise AdvlensError(f"detector metadata {meta_path}: 'threshold' must be finite, got {meta['threshold']!r}")
    for name, spec in meta["tensors"].items():
        shape = spec.get("shape") if isinstance(spec, dict) else None
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                for d in shape) and isinstance(spec.get("dtype"), str)):
            raise AdvlensError(f"detector metadata {meta_path}: tensor {name!r} must be listed as "
                               f'{{"shape": [ints], "dtype": str}}, got {first_line(repr(spec), 60)}')
    return meta


def _json_type(t: type) -> str:
    return {str: "string", dict: "object", numbers.Real: "number"}.get(t, t.__name__)


def _read_state(path: Path, listed: dict[str, dict], meta_path: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` (safetensors), exactly those ``path.json`` lists, same shapes and dtypes, finite."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as e:  # SafetensorError (not safetensors, truncated header), OSError
        raise AdvlensError(f"cannot read detector {path}: not a safetensors file ({first_line(e, 120)})") from None
    missing = [k for k in listed if k not in state]
    extra = [k for k in state if k not in listed]
    if missing or extra:
        what = f"lacks tensor {missing[0]!r}" if missing else f"holds tensor {extra[0]!r}"
        raise AdvlensError(f"detector {path} {what} that {meta_path.name} does not list as it does "
                           f"(listed: {', '.join(listed) or 'none'}; found: {', '.join(state) or 'none'})")
    for k, v in state.items():
        want_shape, want_dtype = listed[k]["shape"], listed[k]["dtype"]
        if list(v.shape) != want_shape or _dtype_name(v) != want_dtype:
            raise AdvlensError(f"detector {path}: tensor {k!r} is {_dtype_name(v)} {list(v.shape)}, "
                               f"{meta_path.name} lists {want_dtype} {want_shape}")
        if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all()):
            raise AdvlensError(f"detector {path}: tensor {k!r} holds NaN or infinite values")
    return state


def _param_problem(name: str, value: object, default: object) -> str | None:
    """Why ``value`` (from JSON) cannot be parameter ``name`` whose constructor default is ``default``, or None.

    The JSON type must match the default's (a float parameter also takes an int); parameters whose default
    is None take anything except that ``layer`` must be a str and ``batch_size`` an int ≥ 1."""
    if value is None:
        return None if default is None else f"must not be null (default {default!r})"
    if default is None:
        if name == "layer" and not isinstance(value, str):
            return "must be a layer name (str) or null"
        if name == "batch_size" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            return "must be an int >= 1 or null"
        return None
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, list)
    elif isinstance(default, dict):
        ok = isinstance(value, dict)
    else:
        return None
    return None if ok else f"must be {_json_kind(default)}"


def _json_kind(default: object) -> str:
    if isinstance(default, bool):
        return "true or false"
    if isinstance(default, int):
        return "an int"
    if isinstance(default, float):
        return "a finite number"
    if isinstance(default, str):
        return "a string"
    return "a list" if isinstance(default, (list, tuple)) else "an object"
