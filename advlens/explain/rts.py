"""RTS: real-time saliency (Dabkowski & Gal, NeurIPS 2017), the model-guided interpreter of seed 004.

A small masking network ``g(x, c)`` predicts, in one forward pass, the preservation mask ``m ∈ [0,1]`` of
class ``c`` for image ``x``. It is trained once per classifier, on the classifier's own training data, with
the classifier frozen, to minimise seed 004 eq. 11 (Dabkowski & Gal eq. 5)::

    λ1·TV(m) + λ2·AV(m) − log f_c(Φ(x; M)) + λ3·f_c(Φ(x; 1 − M))^λ4,     Φ(x; M) = M ⊙ x + (1 − M) ⊙ r

with ``M`` the mask upsampled to the image, ``f_c`` the softmax probability of ``c`` and ``r`` an alternative
image: with probability 1/2 a heavily blurred copy of ``x``, otherwise a random flat colour plus pixel noise
(Dabkowski & Gal's recipe; their code's amplitudes rescaled from their [−2, 2] image range to [0, 1]).

Masker (ours, tiny, U-Net-like; Dabkowski & Gal pair a fixed pretrained encoder with a trained U-Net): the
fixed encoder is the explained classifier's own feature map at its CAM layer (frozen, never trained here;
``enc(x)`` of seed 004's ℓ_enc), and a small trained image encoder on ``(x − 0.5)·4`` (the [−2, 2] input
range of Dabkowski & Gal, REFERENCE.md) gives the skip features at H/2 and H/4. The class selector is a
learned class embedding ``e_c`` that gates the projected classifier features ``p`` at H/4:
``p · σ(⟨p, e_c⟩)``. As in Dabkowski & Gal's code, the spatial mean of ``⟨p, e_c⟩`` is also trained as a
"class present" logit (binary cross-entropy, real vs fake class), and the masker sees *fake* classes (30 % of
samples): for a class that is not in the image the objective is ``λ1·TV + λ2·AV`` alone, which drives the
preserved area to zero, so the mask answers the class it is asked about. The decoder returns to H/2 with
skip connections; sigmoid → ``m`` at H/2, upsampled bilinearly to the image.

Cache: ``$ADVLENS_HOME/rts/{model.name}-{data}-seed{seed}.safetensors`` (weights + JSON metadata, written
atomically, read with safetensors only). :func:`rts` trains it on first use (with a logged warning).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .._checks import AdvlensError, check_images, check_int
from .._io import atomic_write
from ..models.fitting import train_epochs
from ..models.small_vgg import _N_IMAGES, advlens_home
from ..models.wrapper import ClassifierModel
from .engine import capture, check_model, resolve_target
from .mask import blur, upsample_mask
from .methods import register_method

__all__ = [
    "LAMBDAS",
    "RTSMasker",
    "classifier_features",
    "feature_layer",
    "load_rts",
    "rts",
    "rts_cache_path",
    "rts_loss",
    "rts_with_scores",
    "train_rts",
]

log = logging.getLogger(__name__)

_ARCH_VERSION = 1
#: Weights of seed 004 eq. 11 (see :func:`rts_loss` for why these values).
LAMBDAS = {"tv": 0.01, "area": 3.0, "destroy": 3.0, "power": 0.3}
_FAKE_FRACTION = 0.3    # share of training samples given a wrong ("fake") class
_BLUR = (11, 10.0)      # kernel, sigma of the blurred alternative (MASK's settings)
_COLOUR_RANGE = 0.165   # random flat colour 0.5 ± 0.0825 (Dabkowski & Gal: ±0.33 in [−2, 2] units)
_NOISE_STD = 0.0275     # pixel noise of the colour alternative (their 0.11 in [−2, 2] units)
_SAMPLES = 6000         # default budget: epochs = round(_SAMPLES / training images), at least 1
_WIDTH = 16
_BATCH = 32
_LR = 3e-3


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    """3×3 conv → GroupNorm (per image: batch-independent) → ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.GroupNorm(4, c_out), nn.ReLU())


class RTSMasker(nn.Module):
    """Class-conditional masking model ``g(x, f(x), c)`` → preservation mask at half resolution.

    Two encoders, as in Dabkowski & Gal (a fixed pretrained encoder plus a trained U-Net): the classifier's
    own frozen feature map ``f(x)`` (its CAM layer: the class-aware, pretrained part, whose parameters are
    never trained here) and a small trained image encoder on ``(x − 0.5)·4`` (spatial detail, U-Net skips).
    At H/4 the projected classifier features ``p`` meet the class embedding ``e_c``: the selector gate
    ``σ(⟨p, e_c⟩)`` scales ``p`` before it joins the image features in the decoder, and the spatial mean of ``⟨p, e_c⟩`` is the "class present" logit
    that Dabkowski & Gal's code trains on real vs fake classes.

    Args:
        num_classes: classes of the explained classifier (size of the selector embedding).
        feat_channels: channels of the classifier feature map.
        width: channels of the first stage (the H/4 stage uses ``2·width``).

    Shape:
        ``forward(x, feats, c)``: ``x`` ``[N,3,H,W]`` in [0,1], ``feats`` ``[N,K,h,w]``, ``c`` ``[N]`` long →
        ``[N,1,⌈H/2⌉,⌈W/2⌉]`` in [0,1].
    """

    def __init__(self, num_classes: int, feat_channels: int, width: int = 16) -> None:
        super().__init__()
        w1, w2 = width, 2 * width
        self.enc1 = nn.Sequential(_conv(3, w1, 2), _conv(w1, w1))
        self.enc2 = nn.Sequential(_conv(w1, w2, 2), _conv(w2, w2))
        self.proj = nn.Sequential(nn.Conv2d(feat_channels, w2, 1, bias=False), nn.GroupNorm(4, w2), nn.ReLU())
        self.selector = nn.Embedding(num_classes, w2)
        nn.init.normal_(self.selector.weight, 0.0, w2 ** -0.5)
        self.dec2 = nn.Sequential(_conv(2 * w2, w2), _conv(w2, w2))
        self.dec1 = nn.Sequential(_conv(w2 + w1, w1), _conv(w1, w1))
        self.head = nn.Conv2d(w1, 1, 1)

    def select(self, x: Tensor, feats: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """Mask ``[N,1,⌈H/2⌉,⌈W/2⌉]`` and the selector's "class ``c`` is present" logit ``[N]``."""
        e1 = self.enc1((x - 0.5) * 4.0)
        e2 = self.enc2(e1)
        p = self.proj(F.interpolate(feats, size=e2.shape[-2:], mode="bilinear", align_corners=False))
        act = (p * self.selector(c)[:, :, None, None]).sum(1, keepdim=True)   # ⟨p, e_c⟩ per location
        d2 = self.dec2(torch.cat([e2, p * torch.sigmoid(act)], 1))           # class selector gate on p
        d1 = self.dec1(torch.cat([F.interpolate(d2, size=e1.shape[-2:], mode="nearest"), e1], 1))
        return torch.sigmoid(self.head(d1)), act.mean(dim=(1, 2, 3))

    def forward(self, x: Tensor, feats: Tensor, c: Tensor) -> Tensor:
        return self.select(x, feats, c)[0]


def feature_layer(model: ClassifierModel) -> str:
    """The classifier layer RTS uses as its fixed encoder: ``model.cam_layer``, else the last layer."""
    return model.cam_layer or list(model.layers)[-1]


def classifier_features(model: ClassifierModel, x: Tensor, layer: str | None = None) -> Tensor:
    """Output of ``layer`` (default :func:`feature_layer`) for ``x`` — RTS's encoder ``enc(x)`` of seed 004.

    Differentiable w.r.t. ``x`` under grad mode (for the ℓ_enc term of the attack on RTS).

    Shape: ``[N,3,H,W]`` → ``[N,K,h,w]``.
    """
    return _features_and_logits(model, x, layer or feature_layer(model))[0]


def _features_and_logits(model: ClassifierModel, x: Tensor, layer: str) -> tuple[Tensor, Tensor]:
    with capture(model, [layer]) as store:
        logits = model(x)
        feats = store[layer]
    if feats.ndim != 4:
        raise AdvlensError(f"RTS needs a spatial feature map; layer {layer!r} gives shape {list(feats.shape)}")
    return feats, logits


def _tv(m: Tensor) -> Tensor:
    """``Σ (m_{i,j} − m_{i,j+1})² + Σ (m_{i,j} − m_{i+1,j})²`` per map (seed 004, after eq. 11): ``[N,1,h,w]`` → ``[N]``."""
    return (m[..., 1:, :] - m[..., :-1, :]).square().flatten(1).sum(1) + \
        (m[..., :, 1:] - m[..., :, :-1]).square().flatten(1).sum(1)


def _alternative(x: Tensor, gen: torch.Generator) -> Tensor:
    """Alternative image ``r`` per sample: blurred copy (p = 1/2) or flat random colour + noise."""
    n = x.shape[0]
    use_blur = torch.rand(n, 1, 1, 1, generator=gen) < 0.5
    colour = 0.5 + _COLOUR_RANGE * (torch.rand(n, 3, 1, 1, generator=gen) - 0.5)
    noise = _NOISE_STD * torch.randn(x.shape, generator=gen)
    flat = (colour + noise).to(x)
    return torch.where(use_blur.to(x.device), blur(x, *_BLUR), flat)


def rts_loss(model: ClassifierModel, m_low: Tensor, x: Tensor, c: Tensor, real: Tensor, alt: Tensor,
             lambdas: dict[str, float] | None = None) -> Tensor:
    """Seed 004 eq. 11 per sample; fake-class samples (``real`` False) keep only ``λ1·TV + λ2·AV``.

    Defaults (:data:`LAMBDAS`): ``λ4 = 0.3`` as Dabkowski & Gal (a power < 1 keeps pushing the deleted-image
    probability towards 0); ``λ1 = 0.01`` (TV of the 16×16 mask, summed: a sharp object outline costs ~20,
    so ~0.2), ``λ2 = 3`` (an object covering 15 % costs 0.45), ``λ3 = 3``. Checked on the shapes test images
    with the true object masks: a slightly dilated object mask costs ≈ 2.3, the all-ones mask ≈ 4.2 and the
    exact object ≈ 3.2, so the object is the preferred solution; with a first guess ``λ1 = 0.05, λ2 = 2``
    the all-ones mask (3.2) was nearly as cheap as the object (2.9) and training stalled at near-uniform
    masks. Around these values (λ2 ∈ {2, 3, 4}, λ3 ∈ {3, 5}, λ1 ∈ {0.01, 0.05}) the IoU with the true masks
    varied only within noise (0.47–0.51).

    Args:
        model: frozen classifier; m_low: ``[N,1,h,w]``; x: ``[N,3,H,W]``; c: ``[N]`` class asked for;
        real: ``[N]`` bool, whether ``c`` is the image's class; alt: ``[N,3,H,W]`` alternative ``r``.

    Returns:
        ``[N]``.
    """
    lam = {**LAMBDAS, **(lambdas or {})}
    m = upsample_mask(m_low, tuple(x.shape[-2:]))
    both = torch.cat([m * x + (1 - m) * alt, (1 - m) * x + m * alt])  # Φ(x; M), Φ(x; 1 − M)
    logp = F.log_softmax(model(both), 1).gather(1, c.repeat(2).view(-1, 1)).squeeze(1)
    keep, gone = logp.chunk(2)
    destroy = gone.exp().clamp_min(1e-6).pow(lam["power"])
    reg = lam["tv"] * _tv(m_low) + lam["area"] * m_low.flatten(1).mean(1)
    return reg + torch.where(real, -keep + lam["destroy"] * destroy, torch.zeros_like(keep))


def rts_cache_path(model_name: str, data: str, seed: int) -> Path:
    """``$ADVLENS_HOME/rts/{model_name}-{data}-seed{seed}.safetensors``."""
    return advlens_home() / "rts" / f"{model_name}-{data}-seed{seed}.safetensors"


def _data_for(model: ClassifierModel, data: str | None) -> str:
    if data is not None:
        return data
    if model.name.startswith("small_vgg_"):
        return model.name[len("small_vgg_"):]
    raise AdvlensError(
        f"cannot tell which data {model.name!r} was trained on; pass data=... (e.g. 'shapes') to train RTS"
    )


def train_rts(
    model: ClassifierModel,
    data: str,
    seed: int = 0,
    epochs: int | None = None,
    out: str | Path | None = None,
    progress: bool = True,
    n: int | None = None,
) -> RTSMasker:
    """Train the RTS masking model for ``model`` on ``load_images(data, split="train")`` (seed 004 eq. 11).

    Deterministic for a seed on a given device and thread count (init, batch order, flips, fake classes
    and alternative images all come from ``seed``); the classifier is frozen and its mode untouched.

    Args:
        model: the classifier to explain (its labels must match the data's).
        data: a labelled image source of :func:`advlens.load_images` (``"shapes"``, ``"digits"``…).
        seed: seed of everything random; part of the cache name.
        epochs: passes over the training split (default: about 6,000 image presentations, e.g. 3 epochs
            of the 2,000 shapes training images, ~1 minute on one CPU core).
        out: file to write (default :func:`rts_cache_path`, which :func:`rts` loads).
        progress: tqdm bar over epochs.
        n: images to load (default: as many as ``small_vgg`` trains on, e.g. 2,500 shapes).

    Returns:
        The trained :class:`RTSMasker` in eval mode, with frozen parameters.
    """
    from ..data import load_images

    check_model(model)
    train = load_images(data, n=n or _N_IMAGES.get(data), split="train", seed=seed)
    if train.y is None or len(train.labels) != len(model.labels):
        raise AdvlensError(
            f"data {data!r} must be labelled with the {len(model.labels)} classes of {model.name!r} to train RTS"
        )
    epochs = int(epochs or max(1, round(_SAMPLES / len(train))))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    layer = feature_layer(model)
    with torch.no_grad():
        feat_channels = classifier_features(model, train.x[:1].to(device), layer).shape[1]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = RTSMasker(len(model.labels), feat_channels, _WIDTH).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=_LR)
    gen = torch.Generator().manual_seed(seed)
    k = len(model.labels)

    def step(idx: Tensor, epoch: int, batch: int) -> Tensor:
        x, y = train.x[idx], train.y[idx]
        flip = torch.rand(len(idx), generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x).to(device)
        real = torch.rand(len(idx), generator=gen) >= _FAKE_FRACTION
        fake = (y + torch.randint(1, k, y.shape, generator=gen)) % k
        c = torch.where(real, y, fake).to(device)
        alt = _alternative(x, gen)
        with torch.no_grad():
            feats = classifier_features(model, x, layer)
        m_low, exists = net.select(x, feats, c)
        loss = rts_loss(model, m_low, x, c, real.to(device), alt).mean()
        return loss + F.binary_cross_entropy_with_logits(exists, real.to(exists))

    start = time.perf_counter()
    losses = train_epochs(list(net.parameters()), opt, step, len(train), _BATCH, epochs, gen,
                          desc=f"train RTS masker for {model.name} on {data}" if progress else None)
    net.eval().requires_grad_(False)
    meta = {
        "model": model.name, "data": data, "seed": seed, "epochs": epochs, "n_images": len(train),
        "num_classes": k, "feature_layer": layer, "feat_channels": feat_channels, "width": _WIDTH,
        "arch_version": _ARCH_VERSION, "lambdas": LAMBDAS, "fake_fraction": _FAKE_FRACTION,
        "final_loss": round(losses[-1], 4), "seconds": round(time.perf_counter() - start, 2),
    }
    _save(net, Path(out) if out else rts_cache_path(model.name, data, seed), meta)
    return net


def _save(net: RTSMasker, path: Path, meta: dict) -> None:
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_write(path, lambda f: f.write(save(state, metadata={"advlens": json.dumps(meta)})))


_LOADED: dict[tuple[str, int, str], tuple[RTSMasker, dict]] = {}


def load_rts(path: str | Path, device: torch.device | str = "cpu") -> tuple[RTSMasker, dict]:
    """Load a masker written by :func:`train_rts` (safetensors only) → ``(masker, metadata)``."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise AdvlensError(f"no RTS masker at {path}; train one with train_rts(model, data)")
    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("advlens", "{}"))
    if meta.get("arch_version") != _ARCH_VERSION or "feat_channels" not in meta:
        raise AdvlensError(f"{path} is not an RTS masker of this advlens version; retrain it with train_rts")
    net = RTSMasker(int(meta["num_classes"]), int(meta["feat_channels"]), int(meta["width"]))
    net.load_state_dict(load_file(str(path)))
    return net.to(device).eval().requires_grad_(False), meta


def _cached(model: ClassifierModel, data: str, seed: int, device: torch.device) -> tuple[RTSMasker, dict]:
    path = rts_cache_path(model.name, data, seed)
    if not path.is_file():
        log.warning("RTS masker for %s on %s (seed %d) not cached yet: training it now", model.name, data, seed)
        train_rts(model, data, seed=seed, progress=False)
    key = (str(path), path.stat().st_mtime_ns, str(device))
    if key not in _LOADED:
        _LOADED[key] = load_rts(path, device)
    return _LOADED[key]


def rts_with_scores(
    model: ClassifierModel,
    x: Tensor,
    target: int | Tensor | None = None,
    seed: int = 0,
    data: str | None = None,
) -> tuple[Tensor, Tensor]:
    """RTS map of ``x`` and the class scores of RTS's encoder on ``x`` (for seed 004's ``ℓ_enc``, Sec. IV-E).

    RTS here reads the explained classifier's own frozen features at :func:`feature_layer` as its encoder
    ``enc(x)`` (module docstring), so the encoder's class scores — what ADV²'s ``ℓ_enc(enc(x̂), y_t)``
    compares with the target class — are the classifier's logits of the forward pass that computes
    ``enc(x)`` (in the authors' code, the logits of RTS's separately fine-tuned ResNet-50 encoder).

    Returns:
        ``(m [N,H,W] in [0,1], scores [N,C])``, both differentiable w.r.t. ``x``; ``m`` as :func:`rts`.
    """
    check_model(model)
    check_images(x)
    seed = check_int(seed, "seed")
    if data is not None and not isinstance(data, str):
        raise AdvlensError(f"data must be the name of the data the RTS masker trains on (e.g. 'shapes'), got {data!r}")
    net, meta = _cached(model, _data_for(model, data), seed, x.device)
    if meta["num_classes"] != len(model.labels):
        raise AdvlensError(f"the cached RTS masker has {meta['num_classes']} classes, {model.name!r} has {len(model.labels)}")
    feats, logits = _features_and_logits(model, x, meta["feature_layer"])
    c = resolve_target(target, logits.detach()).to(x.device)
    return upsample_mask(net(x, feats, c), tuple(x.shape[-2:]))[:, 0], logits


@register_method("rts", "own", summary="RTS: real-time saliency masker (Dabkowski & Gal; seed 004 eq. 11)")
def rts(
    model: ClassifierModel,
    x: Tensor,
    target: int | Tensor | None = None,
    seed: int = 0,
    data: str | None = None,
) -> Tensor:
    """RTS saliency map (Dabkowski & Gal; seed 004 eq. 11): the masker's preservation mask for ``target``.

    One forward of the cached masker (trained on first use), so the map is differentiable w.r.t. ``x``.

    Args:
        model: the explained classifier (used for the cache name and, with ``target=None``, the prediction).
        x: ``[N,3,H,W]`` in [0,1].
        target: None = predicted class, an int, or ``[N]``.
        seed: seed of the masker's training (selects the cache file).
        data: training data of ``model``; inferred for ``small_vgg_<data>`` models.

    Returns:
        Raw map ``m`` ``[N,H,W]`` in [0,1], high = preserved = important.

    Example:
        >>> m = rts(al.load_model("small_vgg_shapes"), x)   # doctest: +SKIP
    """
    return rts_with_scores(model, x, target, seed, data)[0]
