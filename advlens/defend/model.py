"""A classifier behind an input transform, usable wherever a :class:`ClassifierModel` is.

``wrap(model, "median", k=3)`` returns a :class:`DefendedModel`: the same network, layers, labels and
normalization, whose forward first applies the transform. Every attack, explainer, detector and study
therefore runs against the defended model unchanged — and sees the *true* gradient of the defence:
zero through bit squeezing, none through JPEG (both look robust to a plain gradient attack only
because the gradient is masked).

``defended.adaptive()`` is the honest attacker's view of the same model (Athalye et al., 2018):

- non-differentiable transforms get BPDA: the forward is the real transform, the backward that of a
  differentiable approximation ``g`` (``g(x) + (T(x) − g(x)).detach()``): kornia's differentiable JPEG
  for JPEG, the identity (straight-through) for bit squeezing;
- random transforms get EOT: the forward runs ``samples`` draws as one batch and returns the mean
  of their log-probabilities, so the cross-entropy an attack differentiates is the expectation of
  the per-draw cross-entropies, and its gradient the EOT gradient.

Attacks run on the adaptive view; their success is judged by its forward (the real transform).
"""
from __future__ import annotations

import torch
from torch import nn

from .._checks import AdvlensError, check_choice, check_int, unknown_name
from ..models.wrapper import ClassifierModel
from .transforms import TRANSFORMS

__all__ = ["DefendedModel", "wrap", "list_defenses"]


def list_defenses() -> list[str]:
    """Names of the input-transform defenses."""
    return list(TRANSFORMS)


class InputTransform(nn.Module):
    """``x → T(x)`` with the gradient mode ``"exact"`` (autograd's) or ``"bpda"`` (the surrogate's, or straight-through)."""

    def __init__(self, name: str, params: dict, gradient: str = "exact", seed: int = 0,
                 size: tuple[int, int] = (32, 32)) -> None:
        super().__init__()
        if not isinstance(name, str) or name not in TRANSFORMS:
            raise unknown_name("defense", name, TRANSFORMS)
        spec = TRANSFORMS[name]
        bad = sorted(set(params) - set(spec.defaults))
        if bad:
            raise AdvlensError(f"unknown parameter(s) {bad} for defense {name!r} (accepted: {sorted(spec.defaults)})")
        gradient, seed = check_choice(gradient, "gradient", ("exact", "bpda")), check_int(seed, "seed")
        self.spec, self.params, self.gradient, self.seed = spec, {**spec.defaults, **params}, gradient, seed
        self._gens: dict[torch.device, torch.Generator] = {}
        spec.fn(torch.zeros(1, 3, *size), **self._call_params(torch.device("cpu")))  # validate parameters now
        self._gens.clear()

    def _call_params(self, device: torch.device) -> dict:
        if not self.spec.random:
            return self.params
        if device not in self._gens:
            self._gens[device] = torch.Generator(device=device).manual_seed(self.seed)
        return {**self.params, "generator": self._gens[device]}

    def reseed(self, seed: int | None = None) -> None:
        """Restart the random draws (from ``seed``, default the construction seed)."""
        self.seed = self.seed if seed is None else check_int(seed, "seed")
        self._gens.clear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.spec.fn(x, **self._call_params(x.device))
        if self.gradient == "bpda":
            if self.spec.surrogate is None:
                return x + (out - x).detach()
            approx = self.spec.surrogate(x, **self.params)
            return approx + (out - approx).detach()
        if not out.requires_grad and x.requires_grad:  # no autograd path (jpeg): a zero gradient, not an error
            return out + 0 * x
        return out

    def extra_repr(self) -> str:
        return f"{self.spec.name}, {self.params}, gradient={self.gradient}"


class DefendedModel(ClassifierModel):
    """``model`` behind :class:`InputTransform` ``transform``; the network's modules are shared, not copied.

    Attributes:
        base: the undefended model. transform: the input transform. samples: EOT draws per forward
            (1 = a plain forward returning logits).
    """

    def __init__(self, base: ClassifierModel, transform: InputTransform, samples: int = 1) -> None:
        if isinstance(base, DefendedModel):
            raise AdvlensError("the model is already defended; wrap the undefended model (model.base)")
        tag = ",".join(f"{k}={v}" for k, v in transform.params.items())
        super().__init__(base.net, base.mean.flatten().tolist(), base.std.flatten().tolist(), base.layers, base.labels,
                         base.input_size, f"{base.name}+{transform.spec.name}({tag})", base.cam_layer, base.classifier,
                         base.grids, base.crop_pct, base.interpolation)
        self.to(base.device)
        self.precision, self.channels_last = base.precision, base.channels_last
        self.compile_options = base.compile_options
        self.transform = transform
        self.samples = check_int(samples, "samples (EOT draws, --eot)", 1)
        object.__setattr__(self, "base", base)  # not a submodule: its parameters are already ours

    @property
    def defense(self) -> str:
        return self.transform.spec.name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N,C]`` of ``T(x)``; with ``samples > 1`` the mean log-probabilities over draws."""
        if self.samples == 1:
            return super().forward(self.transform(x))
        if any(m._forward_hooks for m in self.layers.values()):
            raise AdvlensError("the EOT view (samples > 1) only serves attacks on the prediction; "
                               "explain the defended model itself")
        n = len(x)
        logp = super().forward(self.transform(x.repeat(self.samples, 1, 1, 1))).log_softmax(1)
        return logp.view(self.samples, n, -1).mean(0)

    def adaptive(self, samples: int = 8) -> DefendedModel:
        """The adaptive attacker's view: BPDA for non-differentiable, EOT (``samples`` draws) for random transforms."""
        spec = self.transform.spec
        samples = check_int(samples, "samples (EOT draws, --eot)", 1)
        if spec.differentiable and not spec.random:
            return self
        gradient = "exact" if spec.differentiable else "bpda"
        t = InputTransform(spec.name, {k: self.transform.params[k] for k in spec.defaults}, gradient,
                           self.transform.seed + 1, self.input_size)
        return DefendedModel(self.base, t, samples if spec.random else 1)


def wrap(model: ClassifierModel, defense: str, seed: int = 0, **params) -> DefendedModel:
    """Put ``model`` behind the input transform ``defense`` (see :mod:`advlens.defend.transforms`).

    Args:
        model: an undefended :class:`ClassifierModel`.
        defense: ``median``, ``squeeze``, ``blur``, ``jpeg`` or ``noise``.
        seed: the draws of a random transform.
        **params: the transform's parameters (``k``, ``bits``, ``sigma``, ``quality``).

    Example:
        >>> defended = wrap(model, "median", k=3)
        >>> res = al.attack(defended.adaptive(), x, y, method="pgd", steps=5)  # BPDA/EOT where needed
        >>> res.x_adv.shape
        torch.Size([4, 3, 32, 32])
    """
    if not isinstance(model, ClassifierModel):
        raise AdvlensError(f"expected an advlens ClassifierModel, got {type(model).__name__}")
    return DefendedModel(model, InputTransform(defense, params, seed=seed, size=model.input_size))
