"""Images and maps as ``data:image/png;base64,…`` URLs for the page (torch up to the final PNG bytes)."""
from __future__ import annotations

import base64
import io
from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = ["png_url", "map_urls", "MAX_SIDE"]

#: longest side of an encoded map or image (the page scales them; large inputs stay light)
MAX_SIDE = 224


@lru_cache(maxsize=1)
def _colormap() -> torch.Tensor:
    """matplotlib's ``jet`` as a ``[256, 3]`` float table."""
    from matplotlib import colormaps

    return torch.tensor(colormaps["jet"](torch.linspace(0, 1, 256).numpy())[:, :3], dtype=torch.float32)


def _fit(img: torch.Tensor, max_side: int) -> torch.Tensor:
    """``[C,H,W]`` shrunk (antialiased) so its longest side is at most ``max_side``; small ones unchanged."""
    h, w = img.shape[-2:]
    if max(h, w) <= max_side:
        return img
    f = max_side / max(h, w)
    size = (max(1, round(h * f)), max(1, round(w * f)))
    return F.interpolate(img[None].float(), size=size, mode="bilinear", antialias=True, align_corners=False)[0]


def png_url(img: torch.Tensor, max_side: int = MAX_SIDE) -> str:
    """``img`` ``[3,H,W]`` in [0,1] as a PNG data URL."""
    from PIL import Image

    rgb = (_fit(img.detach().float().cpu(), max_side).clamp(0, 1) * 255).round().to(torch.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb.permute(1, 2, 0).contiguous().numpy()).save(buf, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def map_urls(maps: torch.Tensor, background: torch.Tensor, max_side: int = MAX_SIDE, alpha: float = 0.55) -> list[str]:
    """Maps ``[M,H,W]`` (each min–max scaled, ``jet``) blended over the grey ``background`` ``[3,H,W]``, as PNG
    data URLs (colored together in one pass; only the PNG encoding runs per map)."""
    m = maps.detach().float().cpu()
    if m.shape[-2:] != background.shape[-2:]:
        background = F.interpolate(background[None].float(), size=m.shape[-2:], mode="bilinear", align_corners=False)[0]
    flat = m.flatten(1)
    lo, hi = flat.min(1).values.view(-1, 1, 1), flat.max(1).values.view(-1, 1, 1)
    unit = torch.where(hi > lo, (m - lo) / (hi - lo).clamp_min(1e-30), torch.zeros_like(m))
    colored = _colormap()[(unit * 255).round().long()].permute(0, 3, 1, 2)  # [M,3,H,W]
    grey = background.detach().float().cpu().mean(0, keepdim=True)
    return [png_url(img, max_side) for img in alpha * colored + (1 - alpha) * grey]
