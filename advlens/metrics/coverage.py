r"""Neuron coverage as DLFuzz and DeepXplore define it (REFERENCE.md DLFuzz; seed 000, §III-D, Fig. 2).

A *neuron* is one output channel (or unit) of a layer. For one input, each layer output ``A``
(``[K,h,w]``, or ``[K]`` for dense layers) is min–max scaled over the whole layer,

.. math::

    \tilde A = \frac{A - \min A}{\max A - \min A} \quad (\tilde A = 0 \text{ for a constant layer}),

and the value of neuron ``k`` is the spatial mean :math:`v_k = \operatorname{mean}_{h,w} \tilde A_{k}`.
The neuron is *covered* by the input when :math:`v_k > t` (threshold ``t = 0.25`` in seed 000 and the
DLFuzz README). Neuron coverage of a set of inputs = fraction of all neurons covered by at least
one of them. Seed 000 (Fig. 2) plots how this fraction grows.

Which layers (``layers``):

* ``"dlfuzz"`` (default, DLFuzz ``utils_tmp.init_coverage_tables``: every Keras layer but the input
  and flatten ones) — found from the model's modules in one traced forward: every ``Conv*d`` and
  ``Linear``, its output taken after the normalization / activation / dropout modules applied
  directly to it (Keras fuses the activation into ``Conv2D``/``Dense``), and every pooling module
  that changes the shape (torchvision VGG-16's ``AdaptiveAvgPool2d(7)`` on a 7×7 map is the identity
  and no Keras layer). Departures: the last ``Linear`` gives logits (Keras VGG-16's last layer is the
  softmax); functional operations (``x.mean``, ``+``) are no modules and not counted.
* ``"explained"`` — only the explainable layers ``model.layers`` (the behaviour before issue 16;
  ``"all"`` is accepted as the old name of this set).
* a layer name or list of names — from ``model.layers`` or the ``"dlfuzz"`` set.

Every set is read in one forward pass (forward hooks).

Example:
    >>> tracker = CoverageTracker(model)            # DLFuzz's layers
    >>> tracker.update(x).shape       # [N], fraction of all neurons each input newly covered
    torch.Size([4])
    >>> 0.0 <= tracker.coverage <= 1.0
    True
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from advlens._checks import AdvlensError, check_images, check_int, check_number, unknown_name
from advlens.explain.engine import check_model
from advlens.models.wrapper import ClassifierModel

__all__ = ["CoverageTracker", "NeuronLayer", "coverage_layers", "neuron_coverage", "neuron_values", "first_covered"]

LAYER_SETS = ("dlfuzz", "explained")
_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
          nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
          nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d)
_FUSED = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm,
          nn.modules.dropout._DropoutNd, nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU,
          nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
          nn.Softplus, nn.Softsign, nn.Softmax)


@dataclass(frozen=True, eq=False)
class NeuronLayer:
    """A layer whose output channels are neurons: the output of ``module`` at its ``call``-th run
    (0 = first) in one forward, reported as ``name``."""

    name: str
    module: nn.Module
    call: int = 0


@contextmanager
def hook_runs(model: ClassifierModel, modules: Sequence[nn.Module],
            fn: Callable[[nn.Module, int, tuple, object], None]) -> Iterator[None]:
    """Call ``fn(module, call, inputs, output)`` after every run of each of ``modules`` (``call``
    counts the runs since entering); in-place modules run out of place meanwhile (outputs stay intact)."""
    inplace = [m for m in model.modules() if getattr(m, "inplace", None) is True]
    counts: dict[int, int] = {}

    def hook(mod: nn.Module, inputs: tuple, output: object) -> None:
        k = counts.get(id(mod), 0)
        counts[id(mod)] = k + 1
        fn(mod, k, inputs, output)

    handles = []
    try:
        for m in inplace:
            m.inplace = False
        for m in {id(m): m for m in modules}.values():
            handles.append(m.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()
        for m in inplace:
            m.inplace = True


def _dlfuzz_layers(model: ClassifierModel) -> list[NeuronLayer]:
    """DLFuzz's layers of ``model`` (module docstring), from one forward of a zero image of the model's size."""
    records: list[tuple[nn.Module, int, object, torch.Tensor]] = []

    def record(mod: nn.Module, k: int, inputs: tuple, out: object) -> None:
        if isinstance(out, torch.Tensor):
            records.append((mod, k, inputs[0] if inputs else None, out))

    x = torch.zeros(1, 3, *model.input_size, dtype=model.mean.dtype, device=model.device)
    with torch.no_grad(), hook_runs(model, list(model.net.modules()), record):
        model(x)
    dotted = {id(m): n for n, m in model.net.named_modules()}
    explained = {id(m): n for n, m in model.layers.items()}
    found: list[NeuronLayer] = []
    for i, (mod, k, inp, out) in enumerate(records):
        if isinstance(mod, _POOLS) and not (isinstance(inp, torch.Tensor) and inp.shape == out.shape):
            end = (mod, k)
        elif isinstance(mod, _WEIGHTED):
            end = (mod, k)
            for nxt, k2, inp2, out2 in records[i + 1:]:  # the next module run on this output, if fused
                if inp2 is out:
                    if not (isinstance(nxt, _FUSED) and out2.shape == out.shape):
                        break
                    end, out = (nxt, k2), out2
        else:
            continue
        name = explained.get(id(end[0])) if end[1] == 0 else None
        found.append(NeuronLayer(name or dotted[id(mod)] + (f"#{k}" if k else ""), *end))
    if not found:
        raise AdvlensError(f"{model.name} has no conv, linear or pooling module: no neurons for DLFuzz's coverage")
    return found


def coverage_layers(model: ClassifierModel, layers: str | Sequence[str] | Sequence[NeuronLayer] = "dlfuzz",
                    ) -> list[NeuronLayer]:
    """The layers whose channels are neurons: ``"dlfuzz"`` (default), ``"explained"`` (``"all"``), one
    name or a list of names (module docstring); a list of :class:`NeuronLayer` is returned as is.

    Raises:
        AdvlensError: an unknown set or layer name, or an empty list.
    """
    check_model(model)
    if isinstance(layers, (list, tuple)) and layers and all(isinstance(v, NeuronLayer) for v in layers):
        return list(layers)
    if layers in ("explained", "all"):
        return [NeuronLayer(n, m) for n, m in model.layers.items()]
    if layers == "dlfuzz":
        return _dlfuzz_layers(model)
    names = [layers] if isinstance(layers, str) else layers
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(v, str) for v in names):
        raise AdvlensError(f"layers must be 'dlfuzz', 'explained', a layer name or a non-empty list of names, "
                           f"got {layers!r}")
    if all(n in model.layers for n in names):
        return [NeuronLayer(n, model.layers[n]) for n in names]
    known = {l.name: l for l in _dlfuzz_layers(model)} | {n: NeuronLayer(n, m) for n, m in model.layers.items()}
    for n in names:
        if n not in known:
            raise unknown_name(f"layer of {model.name}", n, known)
    return [known[n] for n in names]


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


def layer_outputs_pass(
    model: ClassifierModel, x: torch.Tensor, layers: Sequence[NeuronLayer]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One forward (grad mode as the caller set it): logits ``[N,C]`` and ``{layer name: output}``.

    Raises:
        AdvlensError: a layer did not run, or returned something other than a tensor.
    """
    want = {(id(l.module), l.call): l.name for l in layers}
    store: dict[str, torch.Tensor] = {}

    def keep(mod: nn.Module, k: int, inputs: tuple, out: object) -> None:
        name = want.get((id(mod), k))
        if name is not None:
            if not isinstance(out, torch.Tensor):
                raise AdvlensError(f"layer {name!r} returns {type(out).__name__}, not a tensor; pick another layer")
            store[name] = out

    with hook_runs(model, [l.module for l in layers], keep):
        logits = model(x)
    missing = [l.name for l in layers if l.name not in store]
    if missing:
        raise AdvlensError(f"layer(s) {missing} did not run in the forward pass")
    return logits, {l.name: store[l.name] for l in layers}


def neuron_values(
    model: ClassifierModel, x: torch.Tensor, layers: str | Sequence[str] | Sequence[NeuronLayer] = "dlfuzz",
    batch_size: int = 64,
) -> dict[str, torch.Tensor]:
    """Neuron values (min–max scaled, spatially averaged layer outputs; see the module docstring).

    Args:
        model: the classifier.
        x: ``[N,3,H,W]`` images in [0,1] on the model's device.
        layers: ``"dlfuzz"`` (default), ``"explained"``, one name or a list (:func:`coverage_layers`).
        batch_size: images per forward (one forward per chunk, no gradients).

    Returns:
        ``{layer: Tensor[N,K]}`` in layer order, values in [0,1].

    Example:
        >>> v = neuron_values(model, x)          # {"block1_conv1": [N,16], ..., "fc": [N,10]}
        >>> v["block1_conv1"].shape, v["fc"].shape
        (torch.Size([4, 16]), torch.Size([4, 10]))
    """
    model = check_model(model)
    check_images(x)
    found = coverage_layers(model, layers)
    batch_size = check_int(batch_size, "batch_size", 1)
    chunks: dict[str, list[torch.Tensor]] = {l.name: [] for l in found}
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            _, outputs = layer_outputs_pass(model, x[i : i + batch_size], found)
            for n, out in outputs.items():
                chunks[n].append(scaled_channel_means(out))
    return {n: torch.cat(v) for n, v in chunks.items()}


def first_covered(values: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """Per neuron, the position of the first input covering it (value ``> threshold``), −1 if none.

    ``values [N,T]`` → ``long [T]``. Coverage of the first ``n`` inputs is ``((f ≥ 0) & (f < n)).mean()``,
    and of several sets, placed one after another, the minimum of their shifted positions (seed 000 Fig. 2).
    """
    hit = values > check_number(threshold, "threshold")
    return torch.where(hit.any(0), hit.to(torch.uint8).argmax(0), torch.full_like(hit[0], -1, dtype=torch.long))


class CoverageTracker:
    """Accumulated neuron coverage over every input seen so far (DLFuzz's ``model_layer_times``).

    State lives on the model's device. Layer sizes ``K`` are learned at the first :meth:`update`;
    before it, :attr:`coverage` is 0 and :attr:`covered` / :attr:`times` are empty.

    Args:
        model: the classifier.
        threshold: a neuron is covered by an input when its value is ``> threshold`` (0.25, seed 000).
        layers: which layers' channels count as neurons: ``"dlfuzz"`` (default), ``"explained"``, names
            (:func:`coverage_layers`).

    Attributes:
        layers: the :class:`NeuronLayer` s, in order.
        names: their names.
        sizes: their channel counts ``K`` (after the first update).
        times_flat: ``long [T]`` how many inputs covered each neuron (layers concatenated in order).

    Example:
        >>> tr = CoverageTracker(model, threshold=0.25)
        >>> _ = tr.update(x[:2]); before = tr.coverage
        >>> _ = tr.update(x[2:]); tr.coverage >= before
        True
    """

    def __init__(self, model: ClassifierModel, threshold: float = 0.25,
                 layers: str | Sequence[str] | Sequence[NeuronLayer] = "dlfuzz") -> None:
        self.model = check_model(model)
        self.threshold = check_number(threshold, "threshold")
        self.layers: list[NeuronLayer] = coverage_layers(model, layers)
        self.names: list[str] = [l.name for l in self.layers]
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
        new.layers, new.names, new.sizes = list(self.layers), list(self.names), list(self.sizes)
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
        values = neuron_values(self.model, x, self.layers, batch_size)
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
    model: ClassifierModel, x: torch.Tensor, threshold: float = 0.25,
    layers: str | Sequence[str] | Sequence[NeuronLayer] = "dlfuzz",
) -> float:
    """Fraction of neurons covered (value ``> threshold``) by at least one input of ``x``.

    Args:
        model: the classifier. x: ``[N,3,H,W]`` in [0,1]. threshold: 0.25 as in seed 000.
        layers: which layers' channels count as neurons (:func:`coverage_layers`; DLFuzz's by default).

    Returns:
        Coverage in [0,1] (a float: coverage is a property of the set, not per image).

    Example:
        >>> c = neuron_coverage(model, x, threshold=0.25)
        >>> 0.0 <= c <= 1.0
        True
    """
    tracker = CoverageTracker(model, threshold, layers)
    tracker.update(x)
    return tracker.coverage
