"""Detection figures (seed 002 Fig. 8, seed 004 Sec. VII-B): ROC curves and rates against strength."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .figures import PathLike, _check_columns, _new_figure, _ordered, _save

__all__ = ["roc_curves", "roc_plot", "strength_plot"]


def roc_curves(df: pd.DataFrame, *, detector: str = "detector", condition: str = "condition",
               score: str = "score") -> pd.DataFrame:
    """ROC curve points per detector and negative set: adversarial inputs (positives) against clean and against
    matched-noise inputs (scikit-learn ``roc_curve`` / ``roc_auc_score``).

    Args:
        df: one row per scored input with the columns ``detector``, ``condition`` (``clean``, ``adversarial``,
            ``noise``) and ``score`` (higher = more adversarial).

    Returns:
        One row per curve point: ``detector``, ``negative`` (``clean`` / ``noise``), ``fpr``, ``tpr`` and the
        curve's ``auc`` (repeated on its points).
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    df = _check_columns(df, [detector, condition, score])
    parts = []
    for name in _ordered(df[detector]):
        g = df[df[detector] == name]
        pos = g[g[condition] == "adversarial"][score]
        for neg_name in ("clean", "noise"):
            neg = g[g[condition] == neg_name][score]
            if len(pos) == 0 or len(neg) == 0:
                continue
            labels = [0] * len(neg) + [1] * len(pos)
            values = pd.concat([neg, pos]).to_numpy()
            fpr, tpr, _ = roc_curve(labels, values)
            parts.append(pd.DataFrame({"detector": name, "negative": neg_name, "fpr": fpr, "tpr": tpr,
                                       "auc": float(roc_auc_score(labels, values))}))
    cols = ["detector", "negative", "fpr", "tpr", "auc"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)


def roc_plot(path: PathLike, df: pd.DataFrame, title: str | None = None, *, detector: str = "detector",
             condition: str = "condition", score: str = "score") -> Path:
    """ROC curve per detector: adversarial inputs (positives) against clean inputs (solid) and against
    matched-noise inputs (dashed); the legend carries each curve's AUC.

    Args:
        path: output file (``.png`` by default).
        df: the curve points of :func:`roc_curves` (columns ``detector``, ``negative``, ``fpr``, ``tpr``,
            ``auc``), or scored inputs (``detector``, ``condition``, ``score``) they are computed from.
        title: figure title.

    Returns:
        The written path.
    """
    if isinstance(df, pd.DataFrame) and {"fpr", "tpr", "auc", "negative"} <= set(df.columns):
        curves = _check_columns(df, [detector, "negative", "fpr", "tpr", "auc"])
    else:
        curves = roc_curves(df, detector=detector, condition=condition, score=score).rename(
            columns={"detector": detector})
    fig = _new_figure(5.6, 4.6)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", linewidth=0.8)
    for i, name in enumerate(_ordered(curves[detector])):
        for neg_name, style in (("clean", "-"), ("noise", "--")):
            c = curves[(curves[detector] == name) & (curves.negative == neg_name)]
            if len(c):
                ax.plot(c.fpr, c.tpr, style, color=f"C{i}", linewidth=1.5,
                        label=f"{name} vs {neg_name} (AUC {c.auc.iloc[0]:.3f})")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title or "ROC: adversarial vs clean (solid) and noise (dashed)", fontsize=10)
    return _save(fig, path)


def strength_plot(path: PathLike, table: pd.DataFrame, rates: tuple[str, ...] = ("tpr", "tnr_clean", "tnr_noise",
                  "auc_clean"), title: str | None = None, *, detector: str = "detector",
                  strength: str = "strength") -> Path:
    """One panel per rate (columns of ``table``, e.g. TPR, TNR on clean / noise, AUC) against perturbation
    strength (log scale), one line per detector.

    Args:
        path: output file (``.png`` by default).
        table: one row per detector × strength with the ``rates`` columns (see
            :func:`advlens.studies.detection.detection_table`).
    """
    table = _check_columns(table, [detector, strength, *rates])
    fig = _new_figure(3.0 * len(rates) + 0.6, 3.3)
    axes = fig.subplots(1, len(rates), sharey=True, squeeze=False)[0]
    names = {"tpr": "TPR (adversarial flagged)", "tnr_clean": "TNR on clean", "tnr_noise": "TNR on matched noise",
             "accuracy": "accuracy", "auc_clean": "ROC-AUC vs clean", "auc_noise": "ROC-AUC vs noise"}
    for ax, rate in zip(axes, rates):
        for i, name in enumerate(_ordered(table[detector])):
            g = table[table[detector] == name].sort_values(strength)
            ax.plot(g[strength], g[rate], marker="o", markersize=3.5, color=f"C{i}", label=str(name))
        ax.set_xscale("log", base=2)
        ticks = sorted(table[strength].unique())
        ax.set_xticks(ticks, [f"{t:g}×" for t in ticks], fontsize=8)
        ax.minorticks_off()
        ax.set_title(names.get(rate, rate), fontsize=9)
        ax.set_xlabel("strength", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=7, loc="lower left")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
