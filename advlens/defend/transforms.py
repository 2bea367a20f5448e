"""Input-transform defenses, batched on the images' device: ``fn(x [N,3,H,W] in [0,1], **params) -> same``.

- ``median``: median smoothing over a ``k × k`` window (seed 004's "MS"; kornia, reflect border).
- ``squeeze``: bit-depth squeezing to ``bits`` bits per channel (seed 004's "BS"; Xu et al.'s feature
  squeezing: ``round(x · (2^bits − 1)) / (2^bits − 1)``).
- ``blur``: Gaussian blur with standard deviation ``sigma`` (seed 002 reports that blur removes the
  adversarial effect but costs clean accuracy; kornia, kernel ``2·⌈3σ⌉ + 1``, reflect border).
- ``jpeg``: JPEG compression at ``quality`` (libjpeg through torchvision; nvjpeg on CUDA).
- ``noise``: additive Gaussian noise of standard deviation ``sigma`` (random: the transform for which
  an adaptive attacker uses Expectation over Transformation).

:data:`TRANSFORMS` records for each whether autograd can differentiate it meaningfully and whether it
is random; the adaptive view of a defended model (:mod:`advlens.defend.model`) uses these flags to
pick BPDA (straight-through gradient) or EOT.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kornia
import torch

from .._checks import AdvlensError, check_int, check_number

__all__ = ["Transform", "TRANSFORMS", "median", "squeeze", "blur", "jpeg", "jpeg_surrogate", "noise"]


def _fits(x: torch.Tensor, pad: int, what: str) -> None:
    """Reflect padding needs ``pad`` < the image's height and width."""
    if pad >= min(x.shape[-2:]):
        raise AdvlensError(f"images of {x.shape[-2]}x{x.shape[-1]} pixels are too small for {what}")


def median(x: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Median over each pixel's ``k × k`` neighbourhood (odd ``k``), reflect border (scipy's ``mirror``):
    ``[N,C,H,W]`` → ``[N,C,H,W]``."""
    k = check_int(k, "k (median window)", 1, 63)
    if k % 2 == 0:
        raise AdvlensError(f"k (median window) must be odd, got {k}")
    if k == 1:
        return x
    _fits(x, k // 2, f"a median window of {k}")
    return kornia.filters.median_blur(x, k, border_type="reflect")


def squeeze(x: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """Reduce every channel to ``2^bits`` levels: ``round(x · (2^bits − 1)) / (2^bits − 1)``; ``[N,C,H,W]`` →
    ``[N,C,H,W]``."""
    levels = 2 ** check_int(bits, "bits", 1, 8) - 1
    return torch.round(x * levels) / levels


def blur(x: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Gaussian blur, kernel ``2·⌈3σ⌉ + 1`` (scipy's ``truncate=3``), reflect border: ``[N,C,H,W]`` →
    ``[N,C,H,W]``."""
    sigma = check_number(sigma, "sigma (blur)", 0)
    k = 2 * math.ceil(3 * sigma) + 1
    _fits(x, k // 2, f"a Gaussian blur of sigma {sigma:g} (kernel {k})")
    return kornia.filters.gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="reflect")


def jpeg(x: torch.Tensor, quality: int = 75) -> torch.Tensor:
    """JPEG encode + decode at ``quality`` (1–100) of the 8-bit image, ``[N,3,H,W]`` → ``[N,3,H,W]``; not
    differentiable.

    Each image goes through :func:`torchvision.io.encode_jpeg` / ``decode_jpeg`` (libjpeg on the CPU,
    nvjpeg on CUDA) as ``round(255 · x)``.
    """
    from torchvision.io import decode_jpeg, encode_jpeg

    quality = check_int(quality, "quality", 1, 100)
    with torch.no_grad():
        u8 = (x.detach() * 255).round().clamp(0, 255).to(torch.uint8)
        data = encode_jpeg(list(u8), quality=quality)
        out = decode_jpeg(data, device=x.device)
    return torch.stack(out).to(x.dtype) / 255


def jpeg_surrogate(x: torch.Tensor, quality: int = 75) -> torch.Tensor:
    """kornia's differentiable JPEG (Reich et al. 2024) at ``quality``, ``[N,3,H,W]`` → ``[N,3,H,W]``: BPDA's
    backward for :func:`jpeg`
    (within ~0.003 mean / 0.03 max of the real codec; its gradient, unlike the identity's, knows which
    frequencies JPEG discards)."""
    q = torch.tensor([float(quality)], device=x.device, dtype=x.dtype)
    return kornia.enhance.jpeg_codec_differentiable(x, q)


def noise(x: torch.Tensor, sigma: float = 0.05, generator: torch.Generator | None = None) -> torch.Tensor:
    """``clamp(x + sigma · ε, 0, 1)`` with ``ε ~ N(0, 1)`` drawn from ``generator``; ``[N,C,H,W]`` → ``[N,C,H,W]``."""
    sigma = check_number(sigma, "sigma (noise)", 0)
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.clamp(x + sigma * eps, 0.0, 1.0)


@dataclass(frozen=True)
class Transform:
    """A registered transform: the function, its defaults and how an adaptive attacker gets a gradient.

    Attributes:
        differentiable: autograd's gradient of ``fn`` is informative (blur, median, noise); False
            means zero almost everywhere (squeeze) or absent (jpeg) — BPDA replaces it.
        random: ``fn`` draws randomness (takes ``generator``) — EOT averages over draws.
        surrogate: BPDA's differentiable approximation of ``fn`` (same parameters) whose gradient
            replaces ``fn``'s; None = the identity (straight-through).
    """

    name: str
    fn: Callable[..., torch.Tensor]
    defaults: dict[str, Any] = field(default_factory=dict)
    differentiable: bool = True
    random: bool = False
    surrogate: Callable[..., torch.Tensor] | None = None


TRANSFORMS: dict[str, Transform] = {
    t.name: t
    for t in (
        Transform("median", median, {"k": 3}),
        Transform("squeeze", squeeze, {"bits": 4}, differentiable=False),
        Transform("blur", blur, {"sigma": 1.0}),
        Transform("jpeg", jpeg, {"quality": 75}, differentiable=False, surrogate=jpeg_surrogate),
        Transform("noise", noise, {"sigma": 0.05}, random=True),
    )
}
