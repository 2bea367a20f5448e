"""Pieces shared by the studies: loading, per-layer similarity rows, example maps."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from .. import metrics as M
from .._checks import AdvlensError
from ..data import ImageBatch, load_images
from ..explain import explain_many
from ..explain.api import normalize_maps
from ..models import ClassifierModel, load_model

__all__ = ["Unit", "load_entry", "main_entry", "maps_in_batches", "similarity_rows", "SIMILARITIES", "chunks", "entries",
           "safe_name", "units_per_chunk", "entries_on_test_split"]


@dataclass
class Unit:
    """One resumable piece of a study: ``run(*shared)`` returns ``{table: DataFrame}`` (``results`` required).

    ``shared`` holds the large objects the unit reads (models, image sets), which many units share:
    the Ray backend puts each into the object store once instead of pickling it with every task.
    """

    key: str
    run: Callable[..., dict[str, Any]]
    shared: tuple[Any, ...] = ()


#: similarity metrics a study can record per layer (maps [N,H,W] -> [N])
SIMILARITIES = {"cosine": M.cosine, "nissim": M.nissim, "ssim": M.ssim, "l1": M.l1, "iou": M.iou}


def load_entry(entry: dict[str, Any], spec, limit: int | None | str = "spec") -> tuple[ClassifierModel, ImageBatch]:
    """Model and images of one ``{model, data, weights?, model_options?, seed?, split?, n?, defense?}`` entry, the
    images prepared as the model expects (:meth:`~advlens.models.ClassifierModel.image_options`).

    The model runs on ``spec.device`` with the spec's precision, memory format and compile mode;
    ``limit`` defaults to ``spec.limit``.

    ``defense`` (``{kind, **params}``, e.g. ``{kind = "median", k = 3}``) puts the model behind that input
    transform (:func:`advlens.defend.wrap`), so any study runs against the defended model.

    ``n`` is passed to :func:`~advlens.data.load_images` (for ``shapes``: the size of the generated
    set, so its test split matches the one the model was trained beside); ``limit`` then keeps
    the first images. Without a split, ``limit`` is the subset size itself.
    """
    seed, limit = spec.seed, spec.limit if limit == "spec" else limit
    kw = {"seed": entry["seed"]} if "seed" in entry else {}
    model = load_model(entry["model"], weights=entry.get("weights"), device=spec.device, **kw,
                       **entry.get("model_options", {}))
    model.set_precision(spec.precision, channels_last=spec.channels_last)
    if spec.compile != "off":
        model.set_compile(spec.compile)
    if entry.get("defense"):  # {kind, **params}: the study runs against the model behind that input transform
        from ..defend import wrap

        d = dict(entry["defense"])
        if "kind" not in d:
            raise AdvlensError(f"the defense of {entry['model']!r} needs a 'kind' key, got {entry['defense']!r}")
        model = wrap(model, d.pop("kind"), seed=seed, **d)
    n = entry.get("n", None if entry.get("split") else limit)
    batch = load_images(entry["data"], n=n, split=entry.get("split"), seed=seed, skip_bad=spec.skip_bad,
                        **model.image_options())
    if limit is not None:
        batch = batch[:limit]
    return model, batch


def main_entry(spec) -> dict[str, Any]:
    """The spec's own ``model``/``weights``/``model_options``/``data``/``split`` as one entry."""
    return {"model": spec.model, "data": spec.data, "weights": spec.weights, "split": spec.split,
            "model_options": spec.model_options}


def entries(spec) -> list[dict[str, Any]]:
    """The spec's ``models`` list, or its single ``model``/``data`` as a one-entry list."""
    return spec.models or [main_entry(spec)]


def entries_on_test_split(spec, why: str) -> list[dict[str, Any]]:
    """:func:`entries`, each required to evaluate split ``test``; ``why`` completes the error message."""
    found = entries(spec)
    for entry in found:
        if entry.get("split") != "test":
            raise AdvlensError(f"a {spec.study} study {why}; set split = 'test' in the entry of {entry['model']!r}")
    return found


def safe_name(name: str) -> str:
    """``name`` with anything but letters, digits, ``-`` and ``_`` replaced (for file names)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def units_per_chunk(spec, run) -> list:
    """One :class:`~advlens.studies.runner.Unit` per model entry × chunk of ``spec.batch_size`` images;
    ``run(model, batch, slice, chunk_index, entry)`` computes a chunk's tables."""
    units = []
    for mi, entry in enumerate(entries(spec)):
        model, batch = load_entry(entry, spec)
        for i, sl in enumerate(chunks(len(batch), spec.batch_size)):
            units.append(Unit(f"{mi:02d}-{safe_name(model.name)}-{i:05d}",
                              lambda m, b, sl=sl, i=i, e=entry: run(m, b, sl, i, e), (model, batch)))
    return units


def chunks(n: int, size: int) -> list[slice]:
    """``range(n)`` as consecutive slices of at most ``size`` (a study's resumable units of images)."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def maps_in_batches(model: ClassifierModel, x: torch.Tensor, methods: Sequence[str], layers, batch_size: int,
                    target: torch.Tensor | None = None, normalize: bool = True,
                    ) -> tuple[dict[str, dict[str, torch.Tensor]], torch.Tensor]:
    """``explain_many`` over batches of ``x``: ``({method: {layer: [N,H,W]}}, predictions [N])``.

    The predictions come from the same forward as the maps. ``target`` ``[N]``: the classes to
    explain (None = each input's predicted class). ``normalize``: min–max normalize each map
    (:func:`~advlens.explain.api.normalize_maps`); False keeps the raw (upsampled) maps.
    """
    parts = [explain_many(model, x[s], methods, layers=layers, target=None if target is None else target[s],
                          return_logits=True, normalize=normalize) for s in chunks(len(x), batch_size)]
    maps = {m: {n: torch.cat([p[0][m][n] for p in parts]) for n in parts[0][0][m]} for m in parts[0][0]}
    return maps, torch.cat([p[1].argmax(1) for p in parts])


def similarity_rows(
    clean: dict[str, dict[str, torch.Tensor]],
    other: dict[str, dict[str, torch.Tensor]],
    names: Sequence[str],
    metric_names: Sequence[str],
    minmax: Sequence[str] = (),
    **columns: Any,
) -> pd.DataFrame:
    """One row per image × explainer × layer with each metric of (clean map, other map).

    ``minmax``: the metrics whose two maps are min–max normalized first
    (:func:`~advlens.explain.api.normalize_maps`, per map); the others take the maps as given. Pass
    raw maps (``maps_in_batches(..., normalize=False)``) with it: min–max normalizing the raw
    upsampled maps gives exactly the maps ``explain`` returns with ``normalize=True``.
    ``columns`` are constant columns (strength, condition, …) added to every row.
    """
    parts = []
    for method, layers in clean.items():
        for index, (layer, ref) in enumerate(layers.items()):
            pair = (ref, other[method][layer])
            scaled = tuple(normalize_maps(m) for m in pair) if any(m in minmax for m in metric_names) else pair
            values = {m: SIMILARITIES[m](*(scaled if m in minmax else pair)).detach().cpu().numpy()
                      for m in metric_names}
            parts.append(pd.DataFrame({"image": list(names), **columns, "explainer": method, "layer": layer,
                                       "layer_index": index, **values}))
    return pd.concat(parts, ignore_index=True)
