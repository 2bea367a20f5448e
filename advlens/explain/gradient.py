"""Input-gradient explanations: saliency and SmoothGrad."""
from __future__ import annotations

import torch

from ..models.wrapper import ClassifierModel
from .engine import forward_backward, resolve_target

__all__ = ["saliency_from_grad", "smoothgrad"]


def saliency_from_grad(grad: torch.Tensor) -> torch.Tensor:
    """Saliency (Simonyan et al.): ``max_c |d score / d x_c|`` → ``[N,H,W]`` from ``grad`` ``[N,C,H,W]``."""
    return grad.abs().amax(dim=1)


def smoothgrad(
    model: ClassifierModel,
    x: torch.Tensor,
    target: int | torch.Tensor | None = None,
    n_samples: int = 25,
    noise_level: float = 0.15,
    seed: int = 0,
    batch_size: int = 256,
    create_graph: bool = False,
) -> torch.Tensor:
    """SmoothGrad (Smilkov et al.): mean saliency over noisy copies ``x + N(0, σ²)``.

    ``σ = noise_level · (max(x_n) − min(x_n))`` per image, as in the paper. The noisy copies are
    not clipped to [0,1] (the paper adds noise to the input as is). All ``N · n_samples`` copies
    go through the model in batches of ``batch_size``; the target is each clean image's class.

    Shape: ``x`` ``[N,3,H,W]`` → ``[N,H,W]``.
    """
    if target is None:
        with torch.no_grad():
            target = model(x).argmax(1)
    n = x.shape[0]
    tgt = resolve_target(target, torch.empty(n, len(model.labels), device=x.device))
    gen = torch.Generator(device=x.device).manual_seed(seed)
    span = (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3))).view(n, 1, 1, 1, 1)
    noise = torch.randn((n_samples, *x.shape), generator=gen, device=x.device, dtype=x.dtype)
    noisy = (x.unsqueeze(0) + noise * (noise_level * span).transpose(0, 1)).reshape(-1, *x.shape[1:])
    tgts = tgt.repeat(n_samples)
    total = torch.zeros(n, *x.shape[2:], device=x.device, dtype=x.dtype)
    for i in range(0, len(noisy), batch_size):
        chunk = noisy[i : i + batch_size]
        p = forward_backward(
            model, chunk, [], tgts[i : i + batch_size], create_graph=create_graph,
            input_grad=True, check=False,
        )
        sal = saliency_from_grad(p.input_grad)
        idx = torch.arange(i, i + len(chunk), device=x.device) % n
        total = total.index_add(0, idx, sal)
    return total / n_samples
