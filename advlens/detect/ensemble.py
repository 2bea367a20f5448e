"""Interpretation-ensemble detector (seed 004, Sec. VII-B, Tables IV and V).

The maps of several interpreters (Grad, CAM, MASK, RTS, … — any :func:`~advlens.explain` method) of
one input are stacked as the channels of one image (:meth:`EnsembleDetector.stack`):

* ``channels="two"`` (default, the paper's main setting): the maps only — for two interpreters
  ``(a, b)``, Table IV's upper block, "2-channel samples" (Sec. VII-B: "stacked single-channel
  attribution maps of two interpreters … two-channel data"); one map gives one channel, three give
  three (Table V).
* ``channels="abc"``: two interpreters give ``(a, b, a·b)`` — Table IV's lower block, "3-channel
  samples" (Sec. VII-B, "in another setting, we also created a third channel by multiplying the two
  attribution maps"); three give ``(a, b, c)``; one is repeated three times.

A backbone turns the stacked image ``[N,C,H,W]`` into a feature vector and a gradient-boosting
classifier (scikit-learn, seed 004's "final layer") separates benign from adversarial vectors:

* ``backbone="pixels"`` (default): the stacked maps average-pooled to 8×8 (on our 32×32 models it
  separates better than ImageNet features of the upsampled maps, see the README);
* ``backbone="cnn"``: a small CNN (:class:`MapCNN`) trained end to end on the stacked maps (binary
  cross-entropy, a linear head), whose stage averages then feed the boosting — the paper's VGG-16
  "with the input and output layers replaced and trained", scaled to our image sizes;
* ``backbone="efficientnet_lite0"``: a frozen ImageNet CNN (the bundled weights; seed 004 uses
  VGG-16), the global average of several stages of the maps resized to ``size``; fewer than three
  channels are padded with zero channels (the paper retrains the input layer instead).

The detector is supervised. Seed 004 trains it on adversarial examples of its *interpretation-aware*
attacks: :meth:`EnsembleDetector.fit` without ``x_adv`` runs ``train_attack`` (default ``"advedge"``,
seed 004 Sec. IV-B; ``"adv2"``, ``"advedge+"``, or ``"pgd"``, the earlier interpretation-blind
default) toward a random other class per image (drawn from the image's own generator,
:mod:`advlens._rng`), against the first of the ensemble's interpreters that the attack can target
(the paper attacks one interpreter of the pair, Sec. VII-B). The score is the boosting's probability
that the input is adversarial; ``predict`` flags > 0.5. Maps explain each input's predicted class;
layer methods use the model's CAM layer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import AdvlensError, check_choice, check_images, check_int, unknown_name
from .._rng import image_generators
from ..attacks.pgd import EVAL_PGD
from ..explain import explain
from ..explain.methods import list_methods, method_info
from ..explain.engine import capture, check_model
from .base import Detector
from .boosting import decision, fit_boosting

__all__ = ["EnsembleDetector", "BACKBONES", "CHANNELS", "TRAIN_ATTACKS", "MapCNN", "interpreter_maps",
           "random_targets"]

#: feature extractors: backbone name -> layers whose global averages form the features ("cnn" is trained)
BACKBONES = {
    "efficientnet_lite0": ("blocks.1.1", "blocks.2.1", "blocks.3.2", "blocks.4.2", "blocks.5.3", "head"),
    "pixels": (),
    "cnn": (),
}
#: how the maps are stacked (module docstring): "two" stacks the maps, "abc" adds a·b for two interpreters
CHANNELS = ("two", "abc")
#: the attacks that make the training examples, with their default parameters. The interpretation-aware
#: ones use seed 004's ε = 0.031 but 20 steps instead of the paper's 300 at α = 1/255 (cheap); AdvEdge's
#: steps are weighted per pixel by E(x) ≤ 1/√2 (≈ 0.3 at most on digits), hence α = ε.
TRAIN_ATTACKS: dict[str, dict[str, Any]] = {
    "advedge": {**EVAL_PGD, "alpha": EVAL_PGD["eps"]},
    "advedge+": dict(EVAL_PGD),
    "adv2": dict(EVAL_PGD),
    "pgd": dict(EVAL_PGD),
}
_CNN_PREFIX = "cnn."


def _layers(model, method: str):
    if method_info(method).kind != "layer":  # input-pixel maps, or CAM at its own layer
        return "all"
    return [model.cam_layer or list(model.layers)[-1]]


def interpreter_maps(model, x: torch.Tensor, interpreters, options: dict[str, dict[str, Any]] | None = None,
                     batch_size: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """One map per image and interpreter, ``{interpreter: [N,H,W]}`` in [0,1], explaining each image's
    predicted class; layer methods (``gradcam``, ``layercam``, …) at the model's CAM layer."""
    target = model.predict(x, batch_size)
    out = {}
    for m in interpreters:
        (v,) = explain(model, x, m, layers=_layers(model, m), target=target, batch_size=batch_size, seed=seed,
                       **(options or {}).get(m, {})).values()
        out[m] = v.detach()
    return out


def random_targets(x: torch.Tensor, y: torch.Tensor, classes: int, seed: int) -> torch.Tensor:
    """A random class ``≠ y`` per image ``[N]`` (long, on ``y``'s device): ``(y + 1 + r) mod K`` with ``r``
    uniform in ``[0, K−2]`` drawn from image ``i``'s own generator (:func:`advlens._rng.image_generators`),
    so an image gets the same target alone or in any batch. ``x`` ``[N,C,H,W]``, ``y`` ``[N]``."""
    if classes < 2:
        raise AdvlensError(f"a random target class needs at least 2 classes, the model has {classes}")
    r = torch.stack([torch.randint(classes - 1, (), generator=g, device=x.device) for g in image_generators(x, seed)])
    return (y.to(r.device) + 1 + r).remainder(classes).to(y.device)


class MapCNN(nn.Module):
    """The ``cnn`` backbone: three 3×3 conv + ReLU stages (16, 32, 64 channels; 2×2 max-pool after the
    first two) and a linear head on the global average. ``features`` ``[N,C,H,W] -> [N,112]`` are the
    global averages of the three stages; ``forward`` gives the logit ``[N]`` of "adversarial"."""

    widths = (16, 32, 64)

    def __init__(self, in_channels: int) -> None:
        super().__init__()
        chans = (in_channels, *self.widths)
        self.stages = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans, chans[1:]))
        self.head = nn.Linear(self.widths[-1], 1)

    def _stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, conv in enumerate(self.stages):
            x = F.relu(conv(x if i == 0 else F.max_pool2d(x, 2)))
            outs.append(x)
        return outs

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([o.mean((2, 3)) for o in self._stages(x)], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._stages(x)[-1].mean((2, 3))).squeeze(1)


def train_map_cnn(img: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int,
                  batch_size: int = 64, lr: float = 1e-3) -> MapCNN:
    """A :class:`MapCNN` trained on ``img`` ``[N,C,H,W]`` with 0/1 ``labels`` ``[N]`` on ``img``'s device:
    Adam, class-balanced binary cross-entropy, ``epochs`` shuffled passes. Initial weights and the
    shuffles come from ``seed`` (and cuDNN's deterministic kernels), so a seed gives the same weights."""
    dev = img.device
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        net = MapCNN(img.shape[1]).to(dev)
    gen = torch.Generator().manual_seed(seed)
    labels = labels.to(dev).float()
    pos = labels.sum().clamp_min(1)
    lossf = nn.BCEWithLogitsLoss(pos_weight=(len(labels) - pos) / pos)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
        for _ in range(epochs):
            order = torch.randperm(len(img), generator=gen).to(dev)
            for i in range(0, len(img), batch_size):
                idx = order[i : i + batch_size]
                opt.zero_grad(set_to_none=True)
                lossf(net(img[idx]), labels[idx]).backward()
                opt.step()
    return net.eval()


class EnsembleDetector(Detector):
    """Seed 004's multi-interpreter detector (see the module docstring).

    Args:
        interpreters: 1–3 explanation methods whose maps are stacked (default grad + cam, both fast;
            seed 004's best set is grad, cam, mask, Table V).
        channels: ``"two"`` (default, the paper's main setting: the maps only; two give ``(a, b)``,
            Table IV "2-channel samples") or ``"abc"`` (two maps give ``(a, b, a·b)``, Table IV
            "3-channel samples").
        backbone: ``pixels`` (default: measured better here, AUC 0.93 vs 0.84 on held-out digits
            with 1,000 fit images), ``cnn`` (a small CNN trained on the maps, then boosting) or
            ``efficientnet_lite0`` (frozen ImageNet CNN, seed 004's design).
        size: side the stacked maps are resized to before ``efficientnet_lite0`` (112).
        train_attack: the attack that makes the adversarial training examples when :meth:`fit` gets
            none: ``advedge`` (default, seed 004's), ``advedge+``, ``adv2`` or ``pgd`` (untargeted).
        attack_options: its parameters over :data:`TRAIN_ATTACKS`' defaults (ε 0.031, 20 steps), e.g.
            ``{"steps": 300, "alpha": 1/255, "interpreter": "cam"}``.
        options: per-interpreter explanation options, e.g. ``{"mask": {"steps": 100}}``.
        cnn_epochs: training passes of the ``cnn`` backbone (30).
        n_estimators, max_depth, learning_rate: the gradient boosting (scikit-learn's defaults).
        batch_size: images per explanation / backbone pass.
        seed: the training attack's random target classes and any explanation noise (SmoothGrad), both
            drawn per image from the image's content (:mod:`advlens._rng`), so a score does not depend
            on the batch; the ``cnn`` backbone's initial weights and shuffles; and the boosting's fit.
    """

    kind = "ensemble"
    params = ("interpreters", "channels", "backbone", "size", "train_attack", "attack_options", "options",
              "cnn_epochs", "n_estimators", "max_depth", "learning_rate", "batch_size", "seed")

    def __init__(self, interpreters: tuple[str, ...] | list[str] = ("grad", "cam"), channels: str = "two",
                 backbone: str = "pixels", size: int = 112, train_attack: str = "advedge",
                 attack_options: dict[str, Any] | None = None, options: dict[str, dict[str, Any]] | None = None,
                 cnn_epochs: int = 30, n_estimators: int = 100, max_depth: int = 3, learning_rate: float = 0.1,
                 batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        interpreters = list(dict.fromkeys(interpreters))
        if not 1 <= len(interpreters) <= 3:
            raise AdvlensError(f"an ensemble stacks 1 to 3 interpreters (the backbone takes 3 channels), "
                               f"got {interpreters}")
        for m in interpreters:
            if m not in list_methods():
                raise unknown_name("interpreter", m, list_methods())
        if backbone not in BACKBONES:
            raise unknown_name("backbone", backbone, BACKBONES)
        if train_attack not in TRAIN_ATTACKS:
            raise unknown_name("train_attack", train_attack, TRAIN_ATTACKS)
        if attack_options is not None and not isinstance(attack_options, dict):
            raise AdvlensError(f"attack_options must be a dict of {train_attack} parameters, got {attack_options!r}")
        self.interpreters, self.backbone, self.size = interpreters, backbone, int(size)
        self.channels = str(check_choice(channels, "channels", CHANNELS))
        self.train_attack, self.attack_options = train_attack, dict(attack_options or {})
        self.options = {k: dict(v) for k, v in (options or {}).items()}
        self.cnn_epochs = check_int(cnn_epochs, "cnn_epochs", 1)
        self.n_estimators, self.max_depth, self.learning_rate = int(n_estimators), int(max_depth), float(learning_rate)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.threshold = 0.5
        self._net = None

    @classmethod
    def _from_params(cls, params: dict[str, Any], meta_path: Path, model) -> Detector:
        """As :meth:`Detector._from_params`; a file saved before ``channels`` / ``train_attack`` existed
        (its ``attack`` = ``{"method": …, **params}``) loads with the behaviour it was fitted with."""
        if "attack" in params and "train_attack" not in params:
            params = dict(params)
            old = params.pop("attack")
            old = dict(old) if isinstance(old, dict) else {}
            params.setdefault("train_attack", old.pop("method", "pgd"))
            params.setdefault("attack_options", old)
            params.setdefault("channels", "abc")
            params.setdefault("cnn_epochs", 30)
        return super()._from_params(params, meta_path, model)

    # ------------------------------------------------------------------ fitting
    def fit(self, model, x_clean: torch.Tensor, x_adv: torch.Tensor | None = None) -> EnsembleDetector:
        """Fit on clean images ``[N,3,H,W]`` and adversarial ones ``[M,3,H,W]``; returns ``self``.

        Without ``x_adv``, :meth:`training_attack` runs on ``x_clean`` and the examples it made
        successfully (the random target reached; for ``pgd``, misclassified) are the adversarial class.
        """
        super().fit(model, x_clean)
        x_clean = x_clean.to(self.model.device)
        if x_adv is None:
            res = self.training_attack(x_clean)
            if int(res.success.sum()) < 2:
                raise AdvlensError(f"the {self.train_attack} attack fooled {int(res.success.sum())} of {len(x_clean)} "
                                   "images; pass x_adv or stronger attack_options")
            x_adv = res.x_adv[res.success]
        else:
            check_images(x_adv, "x_adv")
            self._check_size(x_adv)
        return self.fit_maps(self.model, self.maps(x_clean), self.maps(x_adv.to(self.model.device)))

    def _fit(self, x: torch.Tensor) -> None:
        for m in self.interpreters:  # fail early on an interpreter the model cannot give
            _layers(self.model, m)

    def training_attack(self, x: torch.Tensor):
        """The :class:`~advlens.attacks.AttackResult` of ``train_attack`` on ``x`` ``[N,3,H,W]`` (the fitted
        model): interpretation-aware attacks go toward :func:`random_targets` of the predicted classes
        (seed 004's targeted attacks, eqs. 5–8) against ``attack_options["interpreter"]``, by default
        the first of ``interpreters`` they can target; ``pgd`` goes away from the predicted class."""
        from ..attacks import attack
        from ..attacks.interpretation import INTERPRETERS

        self._check_fitted()
        params = {**TRAIN_ATTACKS[self.train_attack], **self.attack_options}
        y = self.model.predict(x, self.batch_size)
        if self.train_attack == "pgd":
            return attack(self.model, x, y, "pgd", seed=self.seed, **params)
        if "interpreter" not in params:
            usable = [m for m in self.interpreters if m in INTERPRETERS]
            if not usable:
                raise AdvlensError(f"{self.train_attack} targets one of {', '.join(INTERPRETERS)}, none of "
                                   f"{self.interpreters}; set attack_options={{'interpreter': …}}")
            params["interpreter"] = usable[0]
        target = random_targets(x, y, len(self.model.labels), self.seed)
        return attack(self.model, x, y, self.train_attack, target=target, seed=self.seed, **params)

    def fit_maps(self, model, clean: dict[str, torch.Tensor], adv: dict[str, torch.Tensor]) -> EnsembleDetector:
        """Fit the backbone (``cnn``) and the boosting on precomputed maps ``{interpreter: [N,H,W]}`` of
        ``model``'s clean and adversarial images (what :meth:`maps` returns: a study fits many
        interpreter sets from one set of maps); returns ``self``."""
        self.model = check_model(model)
        n_clean, n_adv = len(clean[self.interpreters[0]]), len(adv[self.interpreters[0]])
        labels = torch.cat([torch.zeros(n_clean), torch.ones(n_adv)])
        self.state = {}
        if self.backbone == "cnn":
            img = torch.cat([self.stack(clean), self.stack(adv)])
            net = train_map_cnn(img, labels, self.cnn_epochs, self.seed, self.batch_size)
            self.state = {_CNN_PREFIX + k: v.detach().clone() for k, v in net.state_dict().items()}
            self._net = net
        feats = torch.cat([self.features(clean), self.features(adv)])
        self.state.update(fit_boosting(feats, labels, self.n_estimators, self.max_depth, self.learning_rate,
                                       self.seed))
        return self

    # ------------------------------------------------------------------ maps and features
    def maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{interpreter: [N,H,W]}`` maps in [0,1] explaining each image's predicted class."""
        self._check_fitted()
        return interpreter_maps(self.model, x, self.interpreters, self.options, self.batch_size, self.seed)

    def stack(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        """The stacked image ``[N,C,H,W]`` of the interpreters' maps ``{interpreter: [N,H,W]}`` (module
        docstring): ``abc`` → ``C = 3``; ``two`` → ``C`` = the number of interpreters."""
        missing = [m for m in self.interpreters if m not in maps]
        if missing:
            raise AdvlensError(f"maps of {missing} are missing (have {sorted(maps)})")
        ch = [maps[m].float() for m in self.interpreters]
        if self.channels == "abc":
            if len(ch) == 1:
                ch = ch * 3
            elif len(ch) == 2:
                ch.append(ch[0] * ch[1])
        return torch.stack(ch, 1)

    def features(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        """Feature vectors ``[N,F]`` (float32) of the stacked maps."""
        img = self.stack(maps)
        if self.backbone == "pixels":
            return F.adaptive_avg_pool2d(img, 8).flatten(1)
        if self.backbone == "cnn":
            net = self._cnn(img.device)
            with torch.no_grad():
                return torch.cat([net.features(img[i : i + self.batch_size]).float()
                                  for i in range(0, len(img), self.batch_size)])
        if img.shape[1] < 3:  # a frozen RGB backbone: zero channels for the missing ones
            img = F.pad(img, (0, 0, 0, 0, 0, 3 - img.shape[1]))
        net = self._backbone(img.device)
        names = BACKBONES[self.backbone]
        parts = []
        with torch.no_grad(), capture(net, names) as acts:
            for i in range(0, len(img), self.batch_size):
                chunk = F.interpolate(img[i : i + self.batch_size], size=(self.size, self.size), mode="bilinear",
                                      align_corners=False)
                net(chunk)
                parts.append(torch.cat([acts[n].mean((2, 3)) for n in names], 1).float())
                acts.clear()
        return torch.cat(parts)

    def _backbone(self, device: torch.device):
        if self._net is None:
            from ..models import load_model

            self._net = load_model(self.backbone, device=str(device)).eval()
        return self._net

    def _cnn(self, device: torch.device) -> MapCNN:
        """The trained ``cnn`` backbone, rebuilt from ``state`` (``cnn.*`` tensors) after a load."""
        if self._net is None:
            weights = {k[len(_CNN_PREFIX):]: v for k, v in self.state.items() if k.startswith(_CNN_PREFIX)}
            if not weights:
                raise AdvlensError("this EnsembleDetector has no trained cnn backbone; call .fit(model, x_clean) first")
            in_channels = 3 if self.channels == "abc" else len(self.interpreters)
            net = MapCNN(in_channels)
            try:
                net.load_state_dict(weights, strict=True)
            except RuntimeError as e:
                raise AdvlensError(f"the cnn backbone's weights do not fit a MapCNN of {in_channels} input "
                                   f"channels ({str(e).splitlines()[0][:120]})") from None
            self._net = net.to(device).eval()
        return self._net

    def _check_state(self, model) -> None:
        if self.backbone == "cnn":
            self._cnn(model.device)

    # ------------------------------------------------------------------ scoring
    def score_maps(self, maps: dict[str, torch.Tensor]) -> torch.Tensor:
        """Probability ``[N]`` that each input is adversarial, from precomputed maps."""
        self._check_fitted()
        if "init" not in self.state:
            raise AdvlensError("this EnsembleDetector has no fitted classifier; call .fit(model, x_clean) first")
        return torch.sigmoid(decision(self.state, self.features(maps))).float()

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        return self.score_maps(self.maps(x))
