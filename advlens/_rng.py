"""Per-image randomness: every image draws its random numbers from its own generator.

A result computed for one image must not depend on the other images of its batch, on its position
there, or on how a caller chunks a data set. So nothing random is drawn "for the batch": image ``i``
gets a generator seeded with :func:`image_seeds` — a 63-bit value derived from the caller's ``seed``
and an exact integer hash of the image's *content* — and draws its own numbers from it.

The content hash quantizes the image to ``round(x·65535)`` (a float32 product, then int64),
multiplies it element-wise by a fixed odd int64 pattern (splitmix64 of the flat index) and sums per
image in int64; wrap-around is part of the definition (arithmetic mod 2⁶⁴), so the sum is exact and
independent of the reduction order — the same on CPU and CUDA. The sums are then mixed with ``seed`` and the image shape by the
splitmix64 finalizer in Python integers.

Consequences worth knowing: two identical images get the same numbers (whatever their position);
the draws themselves come from ``torch.Generator(device=x.device)``, so CPU and CUDA streams
differ (as for any torch generator) even though the seeds are equal.

Example:
    >>> randn_per_image(x, seed=0).shape            # [N,C,H,W], row i from image i's generator
    torch.Size([4, 3, 32, 32])
    >>> randn_per_image(x, seed=0, copies=50).shape  # [50,N,C,H,W], copy-major
    torch.Size([50, 4, 3, 32, 32])
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache

import torch

__all__ = ["image_generators", "image_seeds", "rand_per_image", "randn_per_image", "random_other_class"]

_M64 = (1 << 64) - 1
_GOLDEN, _MUL1, _MUL2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_LEVELS = 65535  # quantization of [0,1]: 16 bits per value
_CHUNK = 1 << 22  # elements per hashing step (bounds the int64 temporaries to 32 MiB)


def _mix64(z: int) -> int:
    """splitmix64 (Steele et al.; Vigna's reference constants) of a Python int, mod 2⁶⁴: a bijection."""
    z = (z + _GOLDEN) & _M64
    z = ((z ^ (z >> 30)) * _MUL1) & _M64
    z = ((z ^ (z >> 27)) * _MUL2) & _M64
    return z ^ (z >> 31)


def _signed(v: int) -> int:
    """The int64 with the bits of ``v`` (``0 ≤ v < 2⁶⁴``)."""
    return v - (1 << 64) if v >= 1 << 63 else v


def _srl(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of an int64 tensor (``>>`` is arithmetic on signed integers)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


@lru_cache(maxsize=8)
def _pattern(d: int) -> torch.Tensor:
    """The fixed odd int64 weights ``[d]`` of the content hash: splitmix64 of ``0..d−1``, low bit set.

    Built on the CPU (wrap-around int64 arithmetic equals :func:`_mix64` bit for bit) and cached.
    """
    z = torch.arange(d, dtype=torch.int64) + _signed(_GOLDEN)
    z = (z ^ _srl(z, 30)) * _signed(_MUL1)
    z = (z ^ _srl(z, 27)) * _signed(_MUL2)
    return (z ^ _srl(z, 31)) | 1


def _content_hashes(x: torch.Tensor) -> list[int]:
    """``Σ_j round(x_j·65535)·p_j mod 2⁶⁴`` per image, as ints in ``[0, 2⁶⁴)``; ``[N,...]`` → ``N`` ints."""
    flat = x.detach().flatten(1)
    d = flat.shape[1]
    pattern = _pattern(d).to(x.device)
    step = max(1, _CHUNK // max(d, 1))
    sums = []
    for lo in range(0, len(flat), step):
        # one correctly rounded float32 product, then round-half-even: the same bits on every device
        q = (flat[lo:lo + step].float() * _LEVELS).round_().to(torch.int64)
        sums.append(q.mul_(pattern).sum(1))
    return [h & _M64 for h in torch.cat(sums).tolist()] if sums else []


def image_seeds(x: torch.Tensor, seed: int) -> list[int]:
    """One deterministic 63-bit seed per image, from ``seed`` and the image's content.

    Exact integer arithmetic only (see the module docstring): the seed of an image is the same alone
    or in any batch, at any position, on CPU or CUDA; it differs between images whose quantized
    values (``round(x·65535)``) differ, and between ``seed`` values (up to 2⁻⁶³ collisions).

    Args:
        x: ``[N,C,H,W]`` (any ``[N,...]``) finite images, normally in [0,1].
        seed: the caller's seed (any Python int; taken mod 2⁶⁴).

    Returns:
        ``N`` ints in ``[0, 2⁶³)``, for ``torch.Generator.manual_seed``.
    """
    base = _mix64(int(seed) & _M64)
    for s in x.shape[1:]:  # the image shape: equal contents of other shapes seed differently
        base = _mix64(base ^ int(s))
    return [_mix64(base ^ h) >> 1 for h in _content_hashes(x)]


def image_generators(x: torch.Tensor, seed: int) -> list[torch.Generator]:
    """One ``torch.Generator`` on ``x``'s device per image, seeded by :func:`image_seeds`.

    For attacks that keep drawing during their iterations (one-pixel's parents, DLFuzz's picks):
    image ``i`` draws only from generator ``i``, so its stream does not depend on the others.

    Shape: ``x`` ``[N,C,H,W]`` → a list of ``N`` generators.
    """
    return [torch.Generator(device=x.device).manual_seed(s) for s in image_seeds(x, seed)]


def _per_image(draw: Callable[..., torch.Tensor], x: torch.Tensor, seed: int, copies: int | None,
               shape: Sequence[int] | None) -> torch.Tensor:
    sample = tuple(x.shape[1:]) if shape is None else tuple(shape)
    lead = () if copies is None else (int(copies),)
    out = torch.empty((*lead, len(x), *sample), device=x.device, dtype=x.dtype)
    where = (slice(None),) * len(lead)
    for i, gen in enumerate(image_generators(x, seed)):
        # a fresh tensor per image: its numbers depend only on (seed_i, shape, device, dtype)
        out[(*where, i)] = draw((*lead, *sample), generator=gen, device=x.device, dtype=x.dtype)
    return out


def randn_per_image(x: torch.Tensor, seed: int, copies: int | None = None,
                    shape: Sequence[int] | None = None) -> torch.Tensor:
    """Standard normal noise, image ``i``'s from its own generator (:func:`image_generators`).

    Args:
        x: ``[N,C,H,W]`` images; their content seeds the draws, their device and dtype are the output's.
        seed: the caller's seed.
        copies: draw this many samples per image, copy-major (None: one).
        shape: the shape of one sample (None: ``x.shape[1:]``).

    Returns:
        ``[N,*shape]``, or ``[copies,N,*shape]`` with ``copies``; image ``i``'s slice is
        ``torch.randn((copies, *shape))`` (or ``torch.randn(shape)``) of its own generator, whatever
        the batch.
    """
    return _per_image(torch.randn, x, seed, copies, shape)


def rand_per_image(x: torch.Tensor, seed: int, copies: int | None = None,
                   shape: Sequence[int] | None = None) -> torch.Tensor:
    """Uniform noise in [0,1), image ``i``'s (of ``x`` ``[N,...]``) from its own generator; as
    :func:`randn_per_image`.

    Returns:
        ``[N,*shape]``, or ``[copies,N,*shape]`` with ``copies`` (``shape`` default ``x.shape[1:]``).
    """
    return _per_image(torch.rand, x, seed, copies, shape)


def random_other_class(x: torch.Tensor, y: torch.Tensor, classes: int, seed: int) -> torch.Tensor:
    """Seed 004's random target ``y_t = (y + randint(1, C)) mod C`` (never ``y``), each image's shift drawn
    from its own generator (:func:`image_generators`), so an image gets the same target in any batch.

    Shapes: ``x`` ``[N,C,H,W]``, ``y`` int64 ``[N]`` -> int64 ``[N]`` on ``y``'s device.
    """
    if len(x) == 0:
        return y.clone()
    shift = torch.stack([torch.randint(1, classes, (), generator=g, device=x.device)
                         for g in image_generators(x, seed)])
    return (y + shift.to(y.device)) % classes
