"""2-D embedding scatter plots (e.g. the UMAP of LRP signatures of seed 001, Figs. 4–6)."""
from __future__ import annotations

import pandas as pd

from .figures import PathLike, _check_columns, _new_figure, _ordered, _save

__all__ = ["embedding_plot"]

_MARKERS = ("o", "^", "s", "D", "v", "P", "X", "*")


def embedding_plot(
    path: PathLike,
    df: pd.DataFrame,
    x: str = "u0",
    y: str = "u1",
    hue: str = "condition",
    style: str | None = None,
    title: str | None = None,
    facet: str | None = None,
):
    """Scatter of the 2-D points ``(x, y)`` coloured by ``hue`` and marked by ``style``, one panel per
    value of ``facet``.

    Args:
        df: long table, one row per point.
        hue, style, facet: column names (``style``/``facet`` optional).

    Returns:
        The written path.
    """
    df = _check_columns(df, [x, y, hue, style, facet])
    panels = _ordered(df[facet]) if facet else [None]
    fig = _new_figure(4.6 * len(panels) + 1.2, 4.4)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    hues, styles = _ordered(df[hue]), (_ordered(df[style]) if style else [None])
    colors = {h: f"C{i % 10}" for i, h in enumerate(hues)}
    for ax, panel in zip(axes, panels):
        d = df if panel is None else df[df[facet] == panel]
        for h in hues:
            for k, s in enumerate(styles):
                pts = d[(d[hue] == h) & ((d[style] == s) if style else True)]
                if len(pts):
                    label = f"{h}" if not style else f"{h} · {s}"
                    ax.scatter(pts[x], pts[y], s=14, c=colors[h], marker=_MARKERS[k % len(_MARKERS)],
                               alpha=0.75, linewidths=0, label=label)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(str(panel) if panel is not None else "", fontsize=10)
    entries: dict[str, object] = {}  # every panel's entries, once (a value may appear in one panel only)
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    axes[-1].legend(list(entries.values()), list(entries), fontsize=7, loc="center left",
                    bbox_to_anchor=(1.0, 0.5), frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)
