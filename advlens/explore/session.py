"""The explorer's state: models loaded once, image sources, bounded caches and one queue per model.

Requests for one model are served one at a time (a lock per model: computations do not fight over the
cores); results are cached per (model, image, attack, parameters), so moving a slider back is a lookup.
Every cache is bounded, so the server's memory stays flat however long it runs.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import torch

from .._checks import AdvlensError, unknown_name
from ..attacks import attack_info, list_attacks
from ..data import count_images, iter_images, list_sources, load_images
from ..explain.methods import list_methods, method_info
from ..models import ClassifierModel, list_models, load_model
from .encode import map_urls, png_url
from .live import CONDITIONS, LiveParams, attack_image, compare_layers, top_labels

__all__ = ["Session", "ApiError", "LRU", "MAX_UPLOAD_BYTES", "MAX_PIXELS", "SOURCE_IMAGES"]

#: uploads larger than this (decoded bytes) or with more pixels are refused with HTTP 413
MAX_UPLOAD_BYTES, MAX_PIXELS = 10 * 1024 * 1024, 40_000_000
#: images of a source offered by thumbnail (the first ones, read as one chunk)
SOURCE_IMAGES = 256


class ApiError(Exception):
    """A request the explorer refuses with an HTTP status other than 400 (404, 413, 415)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class LRU:
    """A small least-recently-used cache (thread-safe)."""

    def __init__(self, size: int) -> None:
        self.size, self._data, self._lock = size, OrderedDict(), threading.Lock()

    def get_or_make(self, key: Hashable, make: Callable[[], Any]) -> tuple[Any, bool]:
        """``(value, was_cached)``; ``make()`` runs outside the cache's lock."""
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key], True
        value = make()
        with self._lock:
            self._data[key] = value
            while len(self._data) > self.size:
                self._data.popitem(last=False)
        return value, False

    def __len__(self) -> int:
        return len(self._data)


def explorer_methods() -> list[str]:
    """Every layer method, CAM, and the input methods saliency and LRP (not the trained masks)."""
    return [m for m in list_methods() if method_info(m).kind in ("layer", "head")] + ["saliency", "lrp"]


class Session:
    """Models, sources, caches and progress of one explorer app.

    Args:
        model: the default model (a registered name or a reference such as ``timm:resnet18``).
        images: an extra image source offered first (a folder, a table, a file).
        weights, model_options: for ``model`` (:func:`advlens.load_model`). device: where models run.
    """

    def __init__(self, model: str | None = None, images: str | None = None, weights: str | None = None,
                 model_options: dict | None = None, device: str = "cpu") -> None:
        self.default_model = model or "efficientnet_lite0"
        registered = list_models()
        self.models = [self.default_model] + [m for m in registered if m != self.default_model]
        self.sources = ([images] if images else []) + [s for s in list_sources() if s != images]
        self.weights, self.model_options, self.device = weights, dict(model_options or {}), device
        self._models: dict[str, ClassifierModel] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard, self._loading = threading.Lock(), threading.Lock()
        self._batches, self._attacks, self._results = LRU(4), LRU(64), LRU(48)
        self.status: dict[str, Any] = {"busy": False, "stage": None, "queued": 0}

    # ------------------------------------------------------------------ models and images
    def lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def model(self, name: str) -> ClassifierModel:
        """The model ``name`` (loaded once; the default model with its weights and options)."""
        if name not in self.models:
            raise unknown_name("model", name, self.models)
        with self._loading:  # one load at a time: two first requests do not load (or train) a model twice
            if name not in self._models:
                own = name == self.default_model
                self._models[name] = load_model(name, weights=self.weights if own else None, device=self.device,
                                                **(self.model_options if own else {}))
        return self._models[name]

    def adopt(self, model: ClassifierModel) -> None:
        """Serve requests for ``model.name`` with this already loaded model (a study's own)."""
        if model.name not in self.models:
            self.models.append(model.name)
        with self._loading:
            self._models[model.name] = model

    def batch(self, model: ClassifierModel, source: str):
        """The first :data:`SOURCE_IMAGES` images of ``source`` prepared for ``model``, and the source's count."""
        if source not in self.sources:
            raise unknown_name("image source", source, self.sources)

        def read():
            first = next(iter(iter_images(source, chunk_size=SOURCE_IMAGES, **model.image_options())))
            return first, count_images(source)

        return self._batches.get_or_make((model.name, source), read)[0]

    def source_image(self, model: ClassifierModel, source: str, index: int) -> tuple[torch.Tensor, str]:
        """Image ``index`` of ``source`` ``[1,3,H,W]`` and its cache key."""
        batch, _ = self.batch(model, source)
        if not 0 <= index < len(batch):
            raise ApiError(404, f"index {index} is out of range: the explorer offers the first {len(batch)} images "
                                f"of source {source!r}")
        return batch.x[index:index + 1].to(model.device), f"{source}#{index}"

    def uploaded_image(self, model: ClassifierModel, data: str) -> tuple[torch.Tensor, str]:
        """An uploaded image (a data URL or bare base64) prepared for ``model``, and its key (a hash)."""
        from PIL import Image, UnidentifiedImageError

        if len(data) > (MAX_UPLOAD_BYTES * 4) // 3 + 1024:
            raise ApiError(413, f"upload larger than {MAX_UPLOAD_BYTES // 2**20} MB")
        payload = data.split(",", 1)[1] if data.startswith("data:") else data
        try:
            raw = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(415, "image is not base64 (send a data URL or base64 of a PNG/JPEG)") from None
        if len(raw) > MAX_UPLOAD_BYTES:
            raise ApiError(413, f"upload larger than {MAX_UPLOAD_BYTES // 2**20} MB")
        try:
            with Image.open(io.BytesIO(raw)) as im:  # the header only: the size before any decoding
                w, h, fmt = *im.size, (im.format or "png").lower()
        except (UnidentifiedImageError, OSError, ValueError):
            raise ApiError(415, "upload is not an image PIL can read (PNG, JPEG, …)") from None
        if w * h > MAX_PIXELS:
            raise ApiError(413, f"upload has {w}×{h} = {w * h / 1e6:.0f} megapixels, more than {MAX_PIXELS // 10**6}")
        with tempfile.TemporaryDirectory(prefix="advlens-upload-") as tmp:
            path = Path(tmp) / f"upload.{'jpg' if fmt == 'jpeg' else fmt}"
            path.write_bytes(raw)
            try:
                x = load_images(path, **model.image_options()).x
            except AdvlensError as e:
                raise ApiError(415, str(e).replace(str(path), "the upload")) from None
        return x.to(model.device), "upload:" + hashlib.sha256(raw).hexdigest()

    # ------------------------------------------------------------------ the computation
    def run(self, name: str, get_image: Callable[[ClassifierModel], tuple[torch.Tensor, str]], p: LiveParams) -> dict:
        """The page's response for one request (cached); requests for one model wait for each other."""
        check_params(p)
        with self._guard:
            self.status["queued"] += 1
        with self.lock(name):
            with self._guard:
                self.status.update(queued=self.status["queued"] - 1, busy=True, stage="load")
            try:
                return self._run_locked(name, get_image, p)
            finally:
                self.status.update(busy=False, stage=None)

    def _run_locked(self, name: str, get_image, p: LiveParams) -> dict:
        import time

        t0 = time.perf_counter()
        model = self.model(name)
        x, key = get_image(model)

        def compute() -> dict:
            self.status["stage"] = "attack"
            res, _ = self._attacks.get_or_make((name, key, p.attack_key()), lambda: attack_image(model, x, p))
            out = compare_layers(model, x, res, p, stage=lambda s: self.status.update(stage=s))
            self.status["stage"] = "encode"
            return encode(out, model.labels, p)

        out, cached = self._results.get_or_make((name, key, p), compute)
        return {**out, "time_s": round(time.perf_counter() - t0, 4), "cached": cached}

    # ------------------------------------------------------------------ what the page offers
    def options(self, mode: str) -> dict:
        attacks = []
        for a in list_attacks():
            info, d = attack_info(a), attack_info(a).defaults()
            attacks.append({"name": a, "norm": info.norm, "black_box": info.black_box,
                            "eps": d.get("eps", d.get("max_eps")), "steps": d.get("steps", d.get("iterations"))})
        methods = [{"name": m, "kind": method_info(m).kind} for m in explorer_methods()]
        pgd = next(a for a in attacks if a["name"] == "pgd")
        return {"mode": mode, "models": self.models, "sources": self.sources, "attacks": attacks, "explainers": methods,
                "strengths": [0.25, 0.5, 1.0, 2.0, 4.0], "k": 8,
                "defaults": {"model": self.default_model, "source": self.sources[0], "attack": "pgd", "eps": pgd["eps"],
                             "steps": pgd["steps"], "method": "gradcam", "strength": 1.0}}


def check_params(p: LiveParams) -> None:
    """Names the app does not offer are refused before any work."""
    if p.attack not in list_attacks():
        raise unknown_name("attack", p.attack, list_attacks())
    if p.method not in explorer_methods():
        raise unknown_name("explainer", p.method, explorer_methods())


def encode(out: dict, labels: list[str], p: LiveParams) -> dict:
    """:func:`~advlens.explore.live.compare_layers`'s tensors as PNG data URLs and plain numbers."""
    clean = out["inputs"]["clean"]
    return {
        "layers": out["layers"],
        "labels": {c: top_labels(out["probs"][c], labels) for c in CONDITIONS},
        "images": {c: png_url(img) for c, img in out["inputs"].items()},
        "maps": {c: dict(zip(maps, map_urls(torch.stack(list(maps.values())), clean))) for c, maps in out["maps"].items()},
        "cosine": {c: {n: round(v, 6) for n, v in d.items()} for c, d in out["cosine"].items()},
        "threshold": {n: round(v, 6) for n, v in out["threshold"].items()},
        "compromised": out["compromised"], "k": p.k, "strength": p.strength,
        "attack_success": out["attack_success"],
    }
