"""Figures for studies: map grids and per-layer similarity curves, and the plumbing every figure shares
(group comparisons — bar charts and heatmaps — are in :mod:`advlens.report.charts`).

Everything here draws on a private :class:`matplotlib.figure.Figure` with an Agg canvas — pyplot and
its global state are never touched, so these functions are safe in scripts, servers and threads that
use their own figures. Each figure is freed after it is saved, and every save is atomic (temp file in
the destination folder, then :func:`os.replace`).

Tensors may live on any device; they are moved to the CPU here, at the report boundary.
"""
from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from advlens._checks import AdvlensError
from advlens._io import atomic_write

__all__ = ["map_grid", "layer_shift_plot"]

PathLike = str | os.PathLike[str]
_DPI = 100
_BANDS = ("iqr", "std", "sem", None)


# --------------------------------------------------------------------------------------------- plumbing
def _new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure with an Agg canvas and constrained layout (size in inches)."""
    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: PathLike) -> Path:
    """Save ``fig`` atomically to ``path`` (format from the suffix, PNG by default) and free it."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    try:
        if fmt not in fig.canvas.get_supported_filetypes():
            supported = ", ".join(sorted(fig.canvas.get_supported_filetypes()))
            raise AdvlensError(f"cannot save a figure as {path.name!r}: unknown format {fmt!r} (use one of: {supported})")
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=_DPI, facecolor="white")
        return atomic_write(path, lambda f: f.write(buf.getvalue()))
    finally:
        fig.clear()


def _to_numpy(t: object, name: str) -> np.ndarray:
    """Detach a tensor (any device/dtype) to a float32 numpy array — the only device→host step here."""
    if isinstance(t, np.ndarray):
        return t.astype(np.float32, copy=False)
    if not isinstance(t, torch.Tensor):
        raise AdvlensError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    return t.detach().to("cpu", torch.float32).numpy()


def _check_columns(df: object, columns: Sequence[str | None]) -> pd.DataFrame:
    """Check that ``df`` is a non-empty DataFrame holding every named column."""
    if not isinstance(df, pd.DataFrame):
        raise AdvlensError(f"df must be a pandas DataFrame in long form, got {type(df).__name__}")
    if df.empty:
        raise AdvlensError("df is empty: nothing to plot")
    missing = [c for c in columns if c is not None and c not in df.columns]
    if missing:
        raise AdvlensError(f"df has no column(s) {missing}; available: {list(df.columns)}")
    return df


def _ordered(values: pd.Series) -> list:
    """Distinct values in order of first appearance (categoricals keep their category order)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return [c for c in values.cat.categories if (values == c).any()]
    return list(pd.unique(values.dropna()))


# --------------------------------------------------------------------------------------------- map grid
def map_grid(
    path: PathLike,
    rows: Mapping[str, torch.Tensor],
    maps: Mapping[str, Mapping[str, torch.Tensor]],
    layers: Sequence[str],
    index: int = 0,
    titles: Mapping[str, str] | Sequence[str] | None = None,
    *,
    title: str | None = None,
    alpha: float = 0.5,
    cmap: str = "jet",
) -> Path:
    """Draw one image's explanation maps: a row per condition, a column per layer.

    The first column shows the image of each condition (e.g. clean, adversarial, noisy); every further
    column overlays the map of one layer (``cmap`` at ``alpha``) on that image. Column headers are the
    layer names; row labels are the condition names, followed by ``titles`` (e.g. the predicted class).

    Args:
        path: output file (``.png`` unless another matplotlib format is named by the suffix).
        rows: condition name -> images ``[N,3,H,W]`` (or ``[N,1,H,W]``) in [0,1], any device.
        maps: condition name -> (layer name -> maps ``[N,H,W]`` in [0,1]); every condition of ``rows``
            needs every layer of ``layers``. Maps of another size are resized (bilinear) to the image.
        layers: the layers to show, as columns, in this order.
        index: which image of the batch to draw.
        titles: optional per-row subtitles, as a mapping condition -> text or a sequence aligned with
            ``rows``.
        title: optional figure title.
        alpha: opacity of the map over the image.
        cmap: matplotlib colormap name for the maps.

    Returns:
        The written path.

    Raises:
        AdvlensError: empty input, unknown condition/layer, wrong shapes or an index out of range.

    Example:
        >>> maps = al.explain(model, x, layers=["blocks.2", "blocks.5"])          # doctest: +SKIP
        >>> map_grid("grid.png", {"clean": x}, {"clean": maps}, ["blocks.2", "blocks.5"])  # doctest: +SKIP
    """
    conditions = list(rows)
    layers = list(layers)
    if not conditions:
        raise AdvlensError("rows is empty: give at least one condition, e.g. {'clean': x}")
    if not layers:
        raise AdvlensError("layers is empty: name at least one layer to show")
    if isinstance(titles, Mapping):
        subtitles = [str(titles.get(c, "")) for c in conditions]
    elif titles is None:
        subtitles = [""] * len(conditions)
    else:
        subtitles = [str(t) for t in titles]
        if len(subtitles) != len(conditions):
            raise AdvlensError(f"titles has {len(subtitles)} entries but rows has {len(conditions)} conditions")

    images, overlays = [], []
    for cond in conditions:
        img = _image_at(rows[cond], f"rows[{cond!r}]", index)
        if cond not in maps:
            raise AdvlensError(f"maps has no condition {cond!r}; available: {list(maps)}")
        row_maps = []
        for layer in layers:
            if layer not in maps[cond]:
                raise AdvlensError(f"maps[{cond!r}] has no layer {layer!r}; available: {list(maps[cond])}")
            row_maps.append(_map_at(maps[cond][layer], f"maps[{cond!r}][{layer!r}]", index, img.shape[:2]))
        images.append(img)
        overlays.append(row_maps)

    ncols, nrows = 1 + len(layers), len(conditions)
    fig = _new_figure(1.9 * ncols + 0.6, 1.9 * nrows + (0.5 if title else 0.25))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    colormap = colormaps[cmap]
    for r, (cond, img, row_maps) in enumerate(zip(conditions, images, overlays)):
        for c in range(ncols):
            ax = axes[r, c]
            ax.imshow(img, interpolation="nearest")
            if c > 0:
                ax.imshow(row_maps[c - 1], cmap=colormap, vmin=0.0, vmax=1.0, alpha=alpha, interpolation="bilinear")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if r == 0:
                ax.set_title("image" if c == 0 else layers[c - 1], fontsize=8)
        label = cond + (f"\n{subtitles[r]}" if subtitles[r] else "")
        axes[r, 0].set_ylabel(label, fontsize=9)
    fig.colorbar(ScalarMappable(Normalize(0.0, 1.0), colormap), ax=axes, shrink=0.7, label="map value")
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def _image_at(x: object, name: str, index: int) -> np.ndarray:
    """Image ``index`` of a batch ``[N,C,H,W]`` as an ``[H,W,3]`` array in [0,1]."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] not in (1, 3):
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise AdvlensError(f"{name} must be a Tensor [N,3,H,W] of images in [0,1], got {shape}")
    if not -x.shape[0] <= index < x.shape[0]:
        raise AdvlensError(f"index {index} is out of range for {name} with {x.shape[0]} images")
    img = _to_numpy(x[index], name).transpose(1, 2, 0)
    img = np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img
    return np.clip(np.nan_to_num(img), 0.0, 1.0)


def _map_at(m: object, name: str, index: int, size: tuple[int, int]) -> np.ndarray:
    """Map ``index`` of a batch ``[N,H,W]`` as an ``[H,W]`` array at the image ``size``."""
    if not isinstance(m, torch.Tensor) or m.ndim != 3:
        shape = list(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
        raise AdvlensError(f"{name} must be a Tensor [N,H,W] of maps, got {shape}")
    if not -m.shape[0] <= index < m.shape[0]:
        raise AdvlensError(f"index {index} is out of range for {name} with {m.shape[0]} maps")
    one = m[index].detach().to("cpu", torch.float32)
    if tuple(one.shape) != tuple(size):
        one = torch.nn.functional.interpolate(one[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    return one.numpy()


# -------------------------------------------------------------------------------------- layer shift plot
def layer_shift_plot(
    path: PathLike,
    df: pd.DataFrame,
    x: str = "layer",
    y: str = "cosine",
    hue: str | None = "condition",
    layer_order: Sequence[str] | None = None,
    title: str | None = None,
    *,
    band: str | None = "iqr",
    ylabel: str | None = None,
    xlabel: str | None = None,
) -> Path:
    """Plot the mean of a similarity per layer, one line per ``hue`` value, with a spread band.

    Typical use (seed 000): how far the adversarial image's maps drift from the clean maps, layer by
    layer, compared with matched random noise of the same strength.

    Args:
        path: output file (``.png`` by default).
        df: long-form table with one row per observation (e.g. image × layer × condition).
        x: column of layer names (x-axis, categorical).
        y: column of the numeric value to average (e.g. ``"cosine"``).
        hue: column splitting the data into lines (e.g. ``"condition"``), or ``None`` for one line.
        layer_order: layers in forward order (e.g. ``list(model.layers)``); layers absent from ``df`` are
            skipped. Default: order of first appearance in ``df``.
        title: figure title (default: ``"<y> per layer"``).
        band: spread shown around each mean: ``"iqr"`` (25th–75th percentile band), ``"std"``
            (± one standard deviation), ``"sem"`` (± standard error) or ``None``.
        ylabel: y-axis label (default: ``y``).
        xlabel: x-axis label (default: ``"<x> (forward order)"``).

    Returns:
        The written path.

    Raises:
        AdvlensError: missing columns, empty table, non-numeric ``y``, unknown ``band``, or layers in
            ``df`` that ``layer_order`` does not list.
    """
    df = _check_columns(df, [x, y, hue])
    if band not in _BANDS:
        raise AdvlensError(f"unknown band {band!r}; choose from {list(_BANDS)}")
    if not pd.api.types.is_numeric_dtype(df[y]):
        raise AdvlensError(f"column {y!r} must be numeric to plot, got dtype {df[y].dtype}")
    present = _ordered(df[x])
    if layer_order is None:
        order = present
    else:
        listed, seen = set(layer_order), set(present)
        unknown = [v for v in present if v not in listed]
        if unknown:
            raise AdvlensError(f"layer_order does not list layer(s) {unknown[:5]} found in column {x!r}")
        order = [v for v in layer_order if v in seen]
    pos = {v: i for i, v in enumerate(order)}
    groups = [(None, df)] if hue is None else [(h, df[df[hue] == h]) for h in _ordered(df[hue])]

    fig = _new_figure(max(6.0, 0.32 * len(order) + 2.5), 4.2)
    ax = fig.add_subplot()
    for h, sub in groups:
        stats = sub.groupby(x, observed=True, sort=False)[y].agg(
            mean="mean", std="std", count="count", q25=lambda s: s.quantile(0.25), q75=lambda s: s.quantile(0.75)
        )
        stats = stats.reindex([v for v in order if v in stats.index])
        xs = np.array([pos[v] for v in stats.index])
        (line,) = ax.plot(xs, stats["mean"], marker="o", markersize=3.5, linewidth=1.6,
                          label=None if h is None else str(h))
        if band is not None:
            if band == "iqr":
                lo, hi = stats["q25"], stats["q75"]
            else:
                half = stats["std"].fillna(0.0)
                half = half / np.sqrt(stats["count"]) if band == "sem" else half
                lo, hi = stats["mean"] - half, stats["mean"] + half
            ax.fill_between(xs, lo.to_numpy(float), hi.to_numpy(float), color=line.get_color(), alpha=0.18,
                            linewidth=0)
    ax.set_xticks(range(len(order)))
    ax.set_xticklabels([str(v) for v in order], rotation=60, ha="right", fontsize=8)
    ax.set_xlim(-0.5, len(order) - 0.5)
    ax.set_xlabel(xlabel or f"{x} (forward order)")
    ax.set_ylabel(ylabel or y)
    ax.grid(True, alpha=0.3)
    band_note = {"iqr": "band: interquartile range", "std": "band: ± 1 std", "sem": "band: ± 1 s.e.m.", None: ""}
    ax.set_title(title if title is not None else f"{y} per {x}", fontsize=11)
    if hue is not None:
        ax.legend(title=f"{hue}" + (f" ({band_note[band]})" if band else ""), fontsize=8, title_fontsize=8)
    elif band:
        ax.text(0.99, 0.02, band_note[band], transform=ax.transAxes, ha="right", fontsize=7, alpha=0.7)
    return _save(fig, path)
