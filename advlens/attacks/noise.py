"""Perturbation strength scaling and matched Gaussian noise (seeds 000 and 002)."""
from __future__ import annotations

import torch

from .._checks import AdvlensError, check_images, check_int, check_number
from .._rng import randn_per_image

__all__ = ["matched_noise", "scale_perturbation"]


def _pair(x: torch.Tensor, x_adv: torch.Tensor) -> None:
    check_images(x, "x")
    check_images(x_adv, "x_adv")
    if x.shape != x_adv.shape:
        raise AdvlensError(f"x and x_adv must have the same shape, got {list(x.shape)} and {list(x_adv.shape)}")


def scale_perturbation(x: torch.Tensor, x_adv: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """``clip(x + strength·(x_adv − x), 0, 1)``: the perturbation at another strength (seed 000:
    25 %, 50 %, 100 %, 200 %, 400 %, always added to the clean image, not chained).

    Shape: ``[N,3,H,W]`` → ``[N,3,H,W]``.
    """
    _pair(x, x_adv)
    strength = check_number(strength, "strength", 0, strict=False)
    return torch.clamp(x + strength * (x_adv - x), 0.0, 1.0)


def matched_noise(x: torch.Tensor, x_adv: torch.Tensor, strength: float = 1.0, seed: int = 0) -> torch.Tensor:
    """Gaussian noise matched to an adversarial perturbation, added to the clean image.

    Seed 002 eq. 2 / seed 000: ``N_g ~ N(μ_a, σ_a)`` with ``μ_a``, ``σ_a`` the mean and standard
    deviation of ``N_a = x_adv − x`` over all pixels and channels of each image; returns
    ``clip(x + strength·N_g, 0, 1)`` (the noisy counterpart of
    ``scale_perturbation(x, x_adv, strength)``).

    Args:
        x, x_adv: ``[N,3,H,W]`` clean and adversarial images in [0,1].
        strength: scale of the noise (same scale as the perturbation it is compared with).
        seed: noise seed; the standard-normal draw is made per image from the clean image's content
            (:mod:`advlens._rng`), so an image's noise does not depend on the batch (its size, the
            other images, its position). The same clean image gets the same draw for any ``x_adv``
            (only ``μ_a``, ``σ_a`` and ``strength`` change it), on a given device.

    Returns:
        ``[N,3,H,W]`` noisy images in [0,1].
    """
    _pair(x, x_adv)
    strength, seed = check_number(strength, "strength", 0, strict=False), check_int(seed, "seed")
    p = (x_adv - x).flatten(1)
    mu = p.mean(1).view(-1, 1, 1, 1)
    sigma = p.std(1, unbiased=False).view(-1, 1, 1, 1)
    n = randn_per_image(x, seed) * sigma + mu
    return torch.clamp(x + strength * n, 0.0, 1.0)
