"""Gradient boosting (scikit-learn) fitted on CPU, evaluated as tensors on the model's device.

seed 004's ensemble detector ends in a gradient-boosting classifier. scikit-learn fits it; its trees
are then exported to padded tensors (``feature``, ``threshold``, ``left``, ``right``, ``value``,
all ``[T, M]`` for T trees of at most M nodes) so that a detector can be saved with safetensors (no
pickle) and scored without scikit-learn, batched on any device. :func:`decision` reproduces
``GradientBoostingClassifier.decision_function`` exactly (float32 features compared in float64, as
scikit-learn's trees do).
"""
from __future__ import annotations

import numpy as np
import torch

from .._checks import AdvlensError

__all__ = ["fit_boosting", "decision"]


def fit_boosting(features: torch.Tensor, labels: torch.Tensor, n_estimators: int = 100, max_depth: int = 3,
                 learning_rate: float = 0.1, seed: int = 0) -> dict[str, torch.Tensor]:
    """Fit a binary ``GradientBoostingClassifier`` on ``features`` ``[N,F]`` and ``labels`` ``[N]`` (0/1).

    Returns the trees as tensors (see the module docstring) plus ``init`` (the raw score every
    input starts from) and ``rate`` (the learning rate), all on ``features``' device.
    """
    from sklearn.ensemble import GradientBoostingClassifier

    y = labels.detach().cpu().numpy().astype(int)
    if len(np.unique(y)) != 2:
        raise AdvlensError("gradient boosting needs examples of both classes (clean and adversarial)")
    X = features.detach().cpu().float().numpy()
    clf = GradientBoostingClassifier(n_estimators=n_estimators, max_depth=max_depth, learning_rate=learning_rate,
                                     random_state=seed).fit(X, y)
    trees = [est.tree_ for est in clf.estimators_[:, 0]]
    m = max(t.node_count for t in trees)

    def pad(attr: str, fill, dtype) -> torch.Tensor:
        out = np.full((len(trees), m), fill, dtype=dtype)
        for i, t in enumerate(trees):
            out[i, : t.node_count] = np.asarray(getattr(t, attr)).reshape(t.node_count)
        return torch.from_numpy(out)

    state = {"feature": pad("feature", 0, np.int64).clamp_min(0), "threshold": pad("threshold", 0.0, np.float64),
             "left": pad("children_left", -1, np.int64), "right": pad("children_right", -1, np.int64),
             "value": pad("value", 0.0, np.float64), "rate": torch.tensor(float(clf.learning_rate), dtype=torch.float64)}
    x0 = X[:1]
    tree_sum = sum(float(est.predict(x0)[0]) for est in clf.estimators_[:, 0])
    state["init"] = torch.tensor(float(clf.decision_function(x0)[0]) - clf.learning_rate * tree_sum, dtype=torch.float64)
    return {k: v.to(features.device) for k, v in state.items()}


def decision(state: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
    """Raw boosting score (log-odds of "adversarial") ``[N]`` float64 of ``features`` ``[N,F]``."""
    feature, threshold, left, right = state["feature"], state["threshold"], state["left"], state["right"]
    n_trees, n_nodes = feature.shape
    x = features.float().double()  # scikit-learn compares float32 features with float64 thresholds
    node = torch.zeros(len(x), n_trees, dtype=torch.long, device=x.device)
    offset = torch.arange(n_trees, device=x.device) * n_nodes  # index into the flattened [T*M] tables
    for _ in range(n_nodes):  # a path is at most M nodes long; stop once every walk reached a leaf
        flat = node + offset
        nxt_left = left.flatten()[flat]
        if bool((nxt_left < 0).all()):
            break
        go_left = x.gather(1, feature.flatten()[flat]) <= threshold.flatten()[flat]
        step = torch.where(go_left, nxt_left, right.flatten()[flat])
        node = torch.where(nxt_left < 0, node, step)
    leaf_values = state["value"].flatten()[node + offset]
    return state["init"] + state["rate"] * leaf_values.sum(1)
