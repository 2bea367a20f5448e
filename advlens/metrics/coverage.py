r"""Neuron coverage as DLFuzz and DeepXplore define it (REFERENCE.md DLFuzz; seed 000, §III-D).

A *neuron* is one output channel of a layer in ``model.layers``. For one input, each layer output
``A`` (``[K,h,w]``, or ``[K]`` for dense layers) is min–max scaled over the whole layer,

.. math::

    \tilde A = \frac{A - \min A}{\max A - \min A} \quad (\tilde A = 0 \text{ for a constant layer}),

and the value of neuron ``k`` is the spatial mean :math:`v_k = \operatorname{mean}_{h,w} \tilde A_{k}`.
The neuron is *covered* by the input when :math:`v_k > t` (threshold ``t = 0.25`` in seed 000 and the
DLFuzz README). Neuron coverage of a set of inputs = fraction of all neurons covered by at least
one of them. Seed 000 (Fig. 2) plots how this fraction grows while DLFuzz runs.

Example:
    >>> tracker = CoverageTracker(model)
    >>> gain = tracker.update(x)      # [N], fraction of all neurons each input newly covered
    >>> tracker.coverage              # float in [0, 1]
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from advlens._checks import AdvlensError, check_images
from advlens.explain.engine import capture, check_model
from advlens.models.wrapper import ClassifierModel

__all__ = ["CoverageTracker", "neuron_coverage", "neuron_values"]


def channel_means(output: torch.Tensor) -> torch.Tensor:
    """Raw spatial mean of each channel (DLFuzz's neuron term ``mean_{h,w} a_n``): ``[N,K,…]`` → ``[N,K]``."""
    return output.flatten(2).mean(2) if output.ndim > 2 else output


def scaled_channel_means(output: torch.Tensor) -> torch.Tensor:
    """Neuron values of one layer output: per-input min–max scaling, then the spatial mean per channel.

    The mean is linear, so ``mean((a − min)/(max − min)) = (mean(a) − min)/(max − min)``: only the
    channel means and the per-input extremes are computed. Shape: ``[N,K,*spatial]`` or ``[N,K]`` →
    ``[N,K]`` in [0,1] (a constant layer gives 0).
    """
    a = output.detach()
    flat = a.flatten(1)
    lo, hi = torch.aminmax(flat, dim=1, keepdim=True)
    span = hi - lo
    scaled = (channel_means(a) - lo) / torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, scaled.clamp(0.0, 1.0), torch.zeros_like(scaled))


def _check_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise AdvlensError(f"threshold must be a finite number (DLFuzz uses 0.25), got {threshold!r}")
    return float(threshold)


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise AdvlensError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def layer_outputs_pass(
    model: ClassifierModel, x: torch.Tensor, names: Sequence[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward (grad mode as the caller set it): logits ``[N,C]`` and ``{layer: output}``.

    Raises:
        AdvlensError: a requested layer did not run.
    """
    with capture(model, names) as store:
        logits = model(x)
        missing = [n for n in names if n not in store]
        if missing:
            raise AdvlensError(f"layer(s) {missing} did not run in the forward pass")
        outputs = {n: store[n] for n in names}
    return logits, outputs


def neuron_values(
    model: ClassifierModel, x: torch.Tensor, layers: str | Sequence[str] = "all", batch_size: int = 64
) -> dict[str, torch.Tensor]:
    """Neuron values (min–max scaled, spatially averaged layer outputs; see the module docstring).

    Args:
        model: the classifier.
        x: ``[N,3,H,W]`` images in [0,1] on the model's device.
        layers: ``"all"``, one layer name or a list of names of ``model.layers``.
        batch_size: images per forward (one forward per chunk, no gradients).

    Returns:
        ``{layer: Tensor[N,K]}`` in layer order, values in [0,1].

    Example:
        >>> v = neuron_values(model, x)          # {"block1_conv1": [N,16], ...}
    """
    model = check_model(model)
    check_images(x)
    names = model.resolve_layers(layers)
    batch_size = _check_batch_size(batch_size)
    chunks: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            _, outputs = layer_outputs_pass(model, x[i : i + batch_size], names)
            for n in names:
                chunks[n].append(scaled_channel_means(outputs[n]))
    return {n: torch.cat(v) for n, v in chunks.items()}


class CoverageTracker:
    """Accumulated neuron coverage over every input seen so far (DLFuzz's ``model_layer_times``).

    State lives on the model's device. Layer sizes ``K`` are learned at the first :meth:`update`;
    before it, :attr:`coverage` is 0 and :attr:`covered` / :attr:`times` are empty.

    Args:
        model: the classifier.
        threshold: a neuron is covered by an input when its value is ``> threshold`` (0.25, seed 000).
        layers: which layers' channels count as neurons (default all of ``model.layers``).

    Attributes:
        names: the layer names, in order. sizes: their channel counts ``K`` (after the first update).
        times_flat: ``long [T]`` how many inputs covered each neuron (layers concatenated in order).

    Example:
        >>> tr = CoverageTracker(model, threshold=0.25)
        >>> tr.update(x_clean); before = tr.coverage
        >>> tr.update(x_adv); tr.coverage >= before
        True
    """

    def __init__(self, model: ClassifierModel, threshold: float = 0.25, layers: str | Sequence[str] = "all") -> None:
        self.model = check_model(model)
        self.threshold = _check_threshold(threshold)
        self.names: list[str] = model.resolve_layers(layers)
        self.sizes: list[int] = []
        self.times_flat = torch.zeros(0, dtype=torch.long, device=model.device)

    @property
    def total(self) -> int:
        """Number of neurons ``T = Σ K`` (0 before the first update)."""
        return int(self.times_flat.numel())

    @property
    def coverage(self) -> float:
        """Fraction of all neurons covered by at least one input so far (0.0 before any update)."""
        return float((self.times_flat > 0).float().mean()) if self.total else 0.0

    @property
    def times(self) -> dict[str, torch.Tensor]:
        """``{layer: long Tensor[K]}``: inputs that covered each neuron (views of :attr:`times_flat`)."""
        return dict(zip(self.names, self.times_flat.split(self.sizes))) if self.total else {}

    @property
    def covered(self) -> dict[str, torch.Tensor]:
        """``{layer: bool Tensor[K]}``: covered by at least one input so far."""
        return {n: t > 0 for n, t in self.times.items()}

    def copy(self) -> CoverageTracker:
        """An independent tracker with the same state (the model is shared, not copied)."""
        new = CoverageTracker.__new__(CoverageTracker)
        new.model, new.threshold = self.model, self.threshold
        new.names, new.sizes = list(self.names), list(self.sizes)
        new.times_flat = self.times_flat.clone()
        return new

    def update(self, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Count the neurons covered by each input of ``x``.

        Args:
            x: ``[N,3,H,W]`` images in [0,1].

        Returns:
            ``[N]`` coverage gain of each input: the fraction of all neurons it covered for the first
            time, inputs taken in batch order (so the gains sum to the growth of :attr:`coverage`).
        """
        values = neuron_values(self.model, x, self.names, batch_size)
        return self.update_values(torch.cat([values[n] for n in self.names], 1), [v.shape[1] for v in values.values()])

    def update_values(self, values: torch.Tensor, sizes: Sequence[int] | None = None) -> torch.Tensor:
        """:meth:`update` from precomputed neuron values ``[N,T]`` (layers concatenated in order).

        Args:
            values: ``[N,T]`` neuron values, e.g. from :func:`scaled_channel_means` of each layer.
            sizes: the channel count of each layer (required at the first update).

        Returns:
            ``[N]`` coverage gains, as :meth:`update`.
        """
        if not self.sizes:
            if sizes is None or len(sizes) != len(self.names):
                raise AdvlensError(f"the first update needs the channel count of each of the {len(self.names)} layers")
            self.sizes = [int(k) for k in sizes]
            self.times_flat = torch.zeros(sum(self.sizes), dtype=torch.long, device=values.device)
        if values.ndim != 2 or values.shape[1] != self.total:
            raise AdvlensError(f"values must have shape [N,{self.total}], got {list(values.shape)}")
        hit = values.to(self.times_flat.device) > self.threshold  # [N,T]
        fresh = hit & (self.times_flat == 0)
        first = fresh & (fresh.long().cumsum(0) == 1)  # the first input (in batch order) to cover it
        self.times_flat += hit.long().sum(0)
        return first.float().sum(1) / self.total

    def __repr__(self) -> str:
        return (f"CoverageTracker(model={self.model.name!r}, threshold={self.threshold}, "
                f"layers={len(self.names)}, neurons={self.total}, coverage={self.coverage:.4f})")


def neuron_coverage(
    model: ClassifierModel, x: torch.Tensor, threshold: float = 0.25, layers: str | Sequence[str] = "all"
) -> float:
    """Fraction of neurons covered (value ``> threshold``) by at least one input of ``x``.

    Args:
        model: the classifier. x: ``[N,3,H,W]`` in [0,1]. threshold: 0.25 as in seed 000.
        layers: which layers' channels count as neurons.

    Returns:
        Coverage in [0,1] (a float: coverage is a property of the set, not per image).

    Example:
        >>> neuron_coverage(model, x, threshold=0.25)
        0.61
    """
    tracker = CoverageTracker(model, threshold, layers)
    tracker.update(x)
    return tracker.coverage
