"""Charts that compare groups: grouped bar charts with honest error bars, annotated heatmaps.

Rates keep their [0, 1] range (Wilson score intervals, not ± std); a missing group is drawn
differently from a zero one; labels are written only where they cannot overlap. Drawing and saving
go through :mod:`advlens.report.figures`' pyplot-free, atomic plumbing.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from advlens._checks import AdvlensError

from .figures import PathLike, _check_columns, _new_figure, _ordered, _save

__all__ = ["bar_plot", "heatmap_plot", "wilson_interval"]


def bar_plot(
    path: PathLike,
    df: pd.DataFrame,
    x: str,
    y: str,
    hue: str | None = None,
    title: str | None = None,
    *,
    ylabel: str | None = None,
    annotate: bool = True,
    errorbars: bool | str = True,
) -> Path:
    """Grouped bar chart of ``y`` per ``x`` (and per ``hue``), e.g. attack success rate or PSNR per attack.

    When several rows share an ``(x, hue)`` pair, the bar shows their mean with a ± one standard
    deviation error bar, or (``errorbars="wilson"``, for 0/1 outcomes) the 95 % Wilson score interval of
    the rate, which stays in [0, 1]. A missing ``(x, hue)`` pair is marked "n/a" (a zero is a "0" bar).
    Values are written above the bars only while they cannot overlap (at most 4 bars per group).

    Args:
        path: output file (``.png`` by default).
        df: long-form table.
        x: column of group names (x-axis, categorical, order of first appearance).
        y: numeric column giving bar heights.
        hue: optional column splitting each group into side-by-side bars.
        title: figure title (default: ``"<y> by <x>"``).
        ylabel: y-axis label (default: ``y``).
        annotate: write each bar's value (3 significant digits) above it.
        errorbars: ``True``: ± one standard deviation; ``"wilson"``: Wilson intervals of 0/1 outcomes;
            ``False``: none.

    Returns:
        The written path.

    Raises:
        AdvlensError: missing columns, empty table or non-numeric ``y``.
    """
    df = _check_columns(df, [x, y, hue])
    if not pd.api.types.is_numeric_dtype(df[y]):
        raise AdvlensError(f"column {y!r} must be numeric to plot, got dtype {df[y].dtype}")
    xs = _ordered(df[x])
    hues = [None] if hue is None else _ordered(df[hue])
    width = 0.8 / len(hues)
    fig = _new_figure(max(5.0, 0.5 * len(xs) * max(1, len(hues)) ** 0.5 + 2.5), 4.0)
    ax = fig.add_subplot()
    if errorbars not in (True, False, "wilson"):
        raise AdvlensError(f"errorbars must be True, False or 'wilson', got {errorbars!r}")
    annotate = annotate and len(hues) <= 4  # more bars per group: labels would overlap
    for k, h in enumerate(hues):
        sub = df if h is None else df[df[hue] == h]
        stats = sub.groupby(x, observed=True, sort=False)[y].agg(["mean", "std", "count", "sum"]).reindex(xs)
        offsets = np.arange(len(xs)) - 0.4 + width * (k + 0.5)
        mean = stats["mean"].to_numpy(float)
        if errorbars == "wilson":
            lo, hi = wilson_interval(stats["sum"].fillna(0).to_numpy(float), stats["count"].fillna(0).to_numpy(float))
            err = np.vstack([np.nan_to_num(mean - lo), np.nan_to_num(hi - mean)]).clip(min=0)
        else:
            sd = stats["std"].where(stats["count"] > 1).to_numpy(float)
            err = None if not errorbars or np.isnan(sd).all() else np.nan_to_num(sd)
        bars = ax.bar(offsets, np.nan_to_num(mean), width=width * 0.92, yerr=err, capsize=3,
                      label=None if h is None else str(h))
        for off, v in zip(offsets, mean):
            if math.isnan(v):  # missing is not zero
                ax.text(off, 0, "n/a", ha="center", va="bottom", fontsize=6, color="0.4", rotation=90)
        if annotate:
            labels = ["" if math.isnan(v) else f"{v:.3g}" for v in mean]
            ax.bar_label(bars, labels=labels, fontsize=7, padding=2)
    ax.set_xticks(range(len(xs)))
    rotate = len(xs) > 6 or max(len(str(v)) for v in xs) > 12
    ax.set_xticklabels([str(v) for v in xs], rotation=45 if rotate else 0, ha="right" if rotate else "center",
                       fontsize=8)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel or y)
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_axisbelow(True)
    ax.margins(y=0.12)
    ax.set_title(title if title is not None else f"{y} by {x}", fontsize=11)
    if hue is not None:
        ax.legend(title=hue, fontsize=8, title_fontsize=8)
    return _save(fig, path)


def wilson_interval(successes: np.ndarray, n: np.ndarray, z: float = 1.959964) -> tuple[np.ndarray, np.ndarray]:
    """95 % Wilson score interval ``(low, high)`` of the rates ``successes / n`` (NaN where ``n`` is 0).

    ``(p + z²/2n ± z·sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n)``: unlike ± one standard deviation it stays in
    [0, 1] and is not empty at a rate of 0 or 1.
    """
    n = np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.asarray(successes, float) / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def heatmap_plot(path: PathLike, df: pd.DataFrame, row: str, col: str, value: str, title: str | None = None, *,
                 vmin: float = 0.0, vmax: float = 1.0, fmt: str = "{:.2f}") -> Path:
    """Annotated heatmap of ``value`` per ``row`` × ``col`` (mean of rows sharing a cell), for comparisons of
    many groups (defense × attack·mode): every cell carries its value, a missing cell is hatched and marked
    "n/a" (not drawn as zero).

    Returns:
        The written path.
    """
    df = _check_columns(df, [row, col, value])
    rows, cols = _ordered(df[row]), _ordered(df[col])
    grid = df.pivot_table(index=row, columns=col, values=value, aggfunc="mean").reindex(index=rows, columns=cols)
    data = grid.to_numpy(float)
    fig = _new_figure(max(5.0, 0.9 * len(cols) + 3.0), max(2.5, 0.38 * len(rows) + 1.6))
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(data)
    im = ax.imshow(masked, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    for i in range(len(rows)):
        for j in range(len(cols)):
            v = data[i, j]
            if math.isnan(v):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.6", linewidth=0))
                ax.text(j, i, "n/a", ha="center", va="center", fontsize=7, color="0.4")
            else:
                dark = (v - vmin) / ((vmax - vmin) or 1) < 0.6
                ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7, color="white" if dark else "black")
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels([str(c) for c in cols], rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([str(r) for r in rows], fontsize=8)
    fig.colorbar(im, ax=ax, label=value, fraction=0.04)
    ax.set_title(title if title is not None else f"{value} by {row} and {col}", fontsize=11)
    return _save(fig, path)
