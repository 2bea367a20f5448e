"""``shapes``: seeded procedural images of one shape on a textured background, with its true object mask.

Each image shows one filled shape (circle, square, triangle, cross or ring) of random size, position,
rotation and colour on a random background texture (smooth colour field, stripes or checkerboard) with
pixel noise. The mask is the shape's area coverage ≥ 0.5 at the output resolution, so explanations can be
scored against the truth (IoU with ``masks``). Rendering is vectorized in torch at 2× resolution and
box-filtered down (antialiased edges).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from advlens._checks import AdvlensError

from .batch import ImageBatch
from .photos import select_split

__all__ = ["SHAPE_CLASSES", "render_shapes", "load_shapes"]

SHAPE_CLASSES = ("circle", "square", "triangle", "cross", "ring")
RADIUS_FRACTION = (0.18, 0.34)  # circumradius as a fraction of min(H, W)
TEXTURE_AMPLITUDE = (0.05, 0.2)  # background deviation from its base colour
NOISE_STD = (0.0, 0.05)          # per-pixel Gaussian noise
MIN_SIZE = 8
_PIXELS_PER_CHUNK = 1 << 22      # hi-res pixels rendered at once (bounds memory for large sizes)


def _inside(cls: int, u: Tensor, v: Tensor) -> Tensor:
    """Membership of shape ``cls`` at local coordinates ``u, v`` (units of the circumradius), bool like ``u``."""
    if cls == 0:  # circle
        return u * u + v * v <= 1.0
    if cls == 1:  # square inscribed in the unit circle
        return torch.maximum(u.abs(), v.abs()) <= 1.0 / math.sqrt(2.0)
    if cls == 2:  # equilateral triangle inscribed in the unit circle (inradius 1/2)
        inside = torch.ones_like(u, dtype=torch.bool)
        for k in range(3):
            phi = math.pi / 2 + 2 * math.pi * k / 3
            inside &= u * math.cos(phi) + v * math.sin(phi) <= 0.5
        return inside
    if cls == 3:  # plus sign with arms of half-width 0.3
        a, b = u.abs(), v.abs()
        return ((a <= 0.3) & (b <= 0.95)) | ((b <= 0.3) & (a <= 0.95))
    rho2 = u * u + v * v  # ring
    return (rho2 <= 1.0) & (rho2 >= 0.55**2)


def _draw_params(n: int, size: tuple[int, int], gen: torch.Generator) -> dict[str, Tensor]:
    """All random choices for ``n`` images, drawn up front so the result depends only on (seed, n, size)."""
    h, w = size
    k = len(SHAPE_CLASSES)
    y = (torch.arange(n) % k)[torch.randperm(n, generator=gen)]
    u = torch.rand(n, 16, generator=gen)
    lo, hi = RADIUS_FRACTION
    r = ((lo + (hi - lo) * u[:, 0]) * min(h, w)).clamp(min=2.0, max=(min(h, w) - 2) / 2)
    base = 0.15 + 0.7 * u[:, 1:4]
    return {
        "y": y,
        "r": r,
        "cx": r + 1 + u[:, 4] * (w - 2 * r - 2),  # shape stays ≥ 1 px inside the border
        "cy": r + 1 + u[:, 5] * (h - 2 * r - 2),
        "theta": 2 * math.pi * u[:, 6],
        "texture": (u[:, 7] * 3).long().clamp(max=2),  # 0 smooth, 1 stripes, 2 checker
        "amp": TEXTURE_AMPLITUDE[0] + (TEXTURE_AMPLITUDE[1] - TEXTURE_AMPLITUDE[0]) * u[:, 8],
        "freq": 2.0 + 4.0 * u[:, 9],           # stripes / checks per image side
        "phi": math.pi * u[:, 10],
        "phase": 2 * math.pi * u[:, 11],
        "noise": NOISE_STD[0] + (NOISE_STD[1] - NOISE_STD[0]) * u[:, 12],
        "base": base,
        # foreground differs from the background's base colour by 0.35..0.65 in every channel (mod 1)
        "fg": torch.remainder(base + 0.35 + 0.3 * torch.rand(n, 3, generator=gen), 1.0),
    }


def _background(p: dict[str, Tensor], ys: Tensor, xs: Tensor, side: float, gen: torch.Generator) -> Tensor:
    """Background ``[m, 3, H2, W2]`` for a chunk of parameters ``p``."""
    m = p["r"].shape[0]
    h2, w2 = ys.numel(), xs.numel()
    smooth = F.interpolate(torch.rand(m, 3, 4, 4, generator=gen) * 2 - 1, size=(h2, w2), mode="bilinear",
                           align_corners=True)
    ang = 2 * math.pi * p["freq"].view(m, 1, 1) / side
    phi, phase = p["phi"].view(m, 1, 1), p["phase"].view(m, 1, 1)
    yy, xx = ys.view(1, -1, 1), xs.view(1, 1, -1)
    stripes = torch.sin(ang * (xx * torch.cos(phi) + yy * torch.sin(phi)) + phase)
    checker = torch.sign(torch.sin(ang * xx + phase) * torch.sin(ang * yy + phase))
    kind = p["texture"].view(m, 1, 1, 1)
    tex = torch.where(kind == 0, smooth, torch.where(kind == 1, stripes[:, None], checker[:, None]))
    return p["base"].view(m, 3, 1, 1) + p["amp"].view(m, 1, 1, 1) * tex


def render_shapes(n: int, size: tuple[int, int] = (32, 32), seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Render ``n`` shape images deterministically for ``seed``.

    Args:
        n: number of images (classes are balanced: ``y = i mod 5`` shuffled).
        size: output ``(H, W)``, each at least 8.
        seed: seed of every random choice.

    Returns:
        ``(x, y, masks)``: float32 ``[n, 3, H, W]`` in [0, 1], int64 ``[n]`` indexing
        :data:`SHAPE_CLASSES`, bool ``[n, H, W]`` (never empty; never touching the border).
    """
    h, w = size
    if min(h, w) < MIN_SIZE:
        raise AdvlensError(f"shapes needs size at least {MIN_SIZE}x{MIN_SIZE}, got {h}x{w}")
    gen = torch.Generator().manual_seed(int(seed))
    params = _draw_params(n, size, gen)
    ys = (torch.arange(2 * h, dtype=torch.float32) + 0.5) / 2  # hi-res pixel centres in output pixels
    xs = (torch.arange(2 * w, dtype=torch.float32) + 0.5) / 2
    x_out = torch.empty(n, 3, h, w)
    m_out = torch.empty(n, h, w, dtype=torch.bool)
    chunk = max(1, _PIXELS_PER_CHUNK // (4 * h * w))
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        p = {key: val[sl] for key, val in params.items()}
        m = p["r"].shape[0]
        dx = xs.view(1, 1, -1) - p["cx"].view(m, 1, 1)
        dy = ys.view(1, -1, 1) - p["cy"].view(m, 1, 1)
        cos, sin = torch.cos(p["theta"]).view(m, 1, 1), torch.sin(p["theta"]).view(m, 1, 1)
        r = p["r"].view(m, 1, 1)
        u, v = (cos * dx + sin * dy) / r, (cos * dy - sin * dx) / r
        hi_mask = torch.zeros(m, 2 * h, 2 * w, dtype=torch.bool)
        for cls in range(len(SHAPE_CLASSES)):
            sel = p["y"] == cls
            if sel.any():
                hi_mask[sel] = _inside(cls, u[sel], v[sel])
        bg = _background(p, ys, xs, float(min(h, w)), gen)
        img = torch.where(hi_mask[:, None], p["fg"].view(m, 3, 1, 1), bg)
        img = F.avg_pool2d(img, 2)
        cover = F.avg_pool2d(hi_mask[:, None].float(), 2)[:, 0]
        noise = torch.randn(m, 3, h, w, generator=gen) * p["noise"].view(m, 1, 1, 1)
        x_out[sl] = (img + noise).clamp_(0.0, 1.0)
        m_out[sl] = cover >= 0.5
    return x_out, params["y"], m_out


def load_shapes(size: tuple[int, int], n: int | None, split: str | None, seed: int) -> ImageBatch:
    """Generate ``n`` (default 200) shape images with ``seed``; ``split`` keeps the fixed stratified split.

    ``split="train"``/``"test"`` returns the 80 %/20 % stratified split (split seed 0) of the *same*
    generated set, so train and test with the same ``seed`` and ``n`` are disjoint and together make the set.
    Names are ``shapes_0007`` (index in the generated set); labels :data:`SHAPE_CLASSES`.
    """
    total = 200 if n is None else n
    x, y, masks = render_shapes(total, size, seed)
    idx = select_split(y, total, split, "shapes")
    if split is not None:  # no copy of the whole set when all of it is returned
        x, y, masks = x[idx], y[idx], masks[idx]
    return ImageBatch(x, y, [f"shapes_{i:04d}" for i in idx.tolist()], masks, list(SHAPE_CLASSES))
