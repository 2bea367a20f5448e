"""Detector base: scikit-learn-style ``fit`` / ``score`` / ``predict`` and safe ``save`` / ``load``.

A detector is fitted on clean images of one model; ``score(x)`` is higher for inputs that look more
adversarial; ``predict(x)`` thresholds it. ``save(path)`` writes ``path`` (safetensors: the fitted
tensors) and ``path.json`` (the parameters, the model's name, versions) atomically; ``load(path,
model)`` reads them back without pickle.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import torch

from .._checks import AdvlensError, check_images
from .._io import atomic_write, versions
from ..explain.engine import check_model
from ..models.wrapper import ClassifierModel

__all__ = ["Detector", "auto_batch"]


def auto_batch(x: torch.Tensor, batch_size: int | None) -> int:
    """``batch_size``, or for None: 256 images on a GPU; on a CPU 256 at 32×32, fewer for larger images
    (16 at 224×224: big CPU batches of large images run several times slower per image)."""
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

    def save(self, path: str | Path) -> Path:
        """Write the fitted detector to ``path`` (safetensors) and ``path.json`` (parameters)."""
        from safetensors.torch import save

        self._check_fitted()
        path = Path(path)
        meta = {"kind": self.kind, "model": self.model.name, "threshold": self.threshold,
                "params": {p: getattr(self, p) for p in self.params}, "versions": versions()}
        data = {k: v.detach().cpu().contiguous() for k, v in self.state.items()}
        atomic_write(path, lambda f: f.write(save(data)))
        atomic_write(path.with_name(path.name + ".json"), lambda f: f.write(json.dumps(meta, indent=2).encode()))
        return path

    @classmethod
    def load(cls, path: str | Path, model: ClassifierModel) -> Detector:
        """Read a detector written by :meth:`save` for ``model`` (the same model it was fitted on)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(path)
        meta_path = path.with_name(path.name + ".json")
        if not path.is_file() or not meta_path.is_file():
            raise AdvlensError(f"detector files not found: {path} and {meta_path} are both needed")
        try:
            meta = json.loads(meta_path.read_text())
            state = load_file(str(path))
        except (json.JSONDecodeError, SafetensorError, OSError) as e:
            raise AdvlensError(f"cannot read detector {path}: {e}") from None
        if meta.get("kind") != cls.kind:
            raise AdvlensError(f"{path} holds a {meta.get('kind')!r} detector, not {cls.kind!r}")
        model = check_model(model)
        if meta.get("model") != model.name:
            raise AdvlensError(f"{path} was fitted on model {meta.get('model')!r}, not {model.name!r}")
        det = cls(**meta["params"])
        det.model, det.threshold = model, float(meta["threshold"])
        det.state = {k: v.to(model.device) for k, v in state.items()}
        return det

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

