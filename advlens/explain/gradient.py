"""Input-gradient explanations: saliency, SmoothGrad and seed 004's Grad with a smoothed ReLU."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .._checks import check_int, check_number
from .._rng import randn_per_image
from ..models.wrapper import ClassifierModel
from .engine import forward_backward, resolve_target
from .methods import register_method

__all__ = ["saliency_from_grad", "smoothgrad", "smooth_relu", "smooth_relu_grad"]


def smooth_relu_grad(z: torch.Tensor, tau: float) -> torch.Tensor:
    """Seed 004's smoothed ReLU derivative ``h(z)`` (Sec. IV-C), differentiable in ``z``; elementwise, any
    shape (e.g. ``[N,K,h,w]``) → the same shape.

    ``h(z) = 1 + z/sqrt(z² + τ)`` for ``z < 0`` and ``z/sqrt(z² + τ)`` for ``z ≥ 0``: close to the
    step function away from ``|z| ≲ sqrt(τ)``, but with a non-zero derivative, so gradient maps of
    ReLU networks get a non-zero Hessian (the ReLU Hessian is zero almost everywhere).
    """
    s = z / torch.sqrt(z * z + tau)
    return torch.where(z < 0, 1 + s, s)


class _SmoothReLU(torch.autograd.Function):
    """``ReLU`` (or ``ReLU6`` with ``cap=6``) forward; backward by :func:`smooth_relu_grad`."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, tau: float, cap: float | None) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(z)
        ctx.tau, ctx.cap = tau, cap
        return z.clamp(0, cap) if cap is not None else z.clamp_min(0)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        (z,) = ctx.saved_tensors
        h = smooth_relu_grad(z, ctx.tau)
        if ctx.cap is not None:  # relu6(z) = relu(z) − relu(z − 6)
            h = h - smooth_relu_grad(z - ctx.cap, ctx.tau)
        return g * h, None, None


@contextmanager
def smooth_relu(model: ClassifierModel, tau: float = 1e-4) -> Iterator[int]:
    """Within the context, every ``nn.ReLU``/``nn.ReLU6`` module of ``model`` back-propagates
    through the smoothed derivative of seed 004 (forward values unchanged). Yields the number of
    modules patched; the original ``forward`` methods are restored on exit.

    Activations applied functionally (``F.relu`` inside a ``forward``) are not smoothed.
    """
    tau = check_number(tau, "tau", 0)
    patched = [m for m in model.modules() if type(m) in (nn.ReLU, nn.ReLU6)]
    try:
        for m in patched:
            cap = 6.0 if isinstance(m, nn.ReLU6) else None
            m.forward = (lambda z, _c=cap: _SmoothReLU.apply(z, tau, _c))  # type: ignore[method-assign]
        yield len(patched)
    finally:
        for m in patched:
            m.__dict__.pop("forward", None)


@register_method("grad", "input", smooth_relu=True, extra_options={"tau": 1e-4},
                 summary="seed 004's Grad: saliency through the smoothed ReLU (Sec. IV-C), twice differentiable")
@register_method("saliency", "input", summary="saliency: max_c |∂y/∂x_c| (Simonyan et al.)")
def saliency_from_grad(grad: torch.Tensor) -> torch.Tensor:
    """Saliency (Simonyan et al.): ``max_c |d score / d x_c|`` → ``[N,H,W]`` from ``grad`` ``[N,C,H,W]``."""
    return grad.abs().amax(dim=1)


@register_method("smoothgrad", "own", summary="SmoothGrad: mean saliency over noisy copies (Smilkov et al.)")
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
    go through the model in batches of ``batch_size``; the target is each clean image's class. The
    noise is drawn per image from ``seed`` and the image's content (:mod:`advlens._rng`), so a map does
    not depend on the batch.

    Shape: ``x`` ``[N,3,H,W]`` → ``[N,H,W]``.
    """
    n_samples, batch_size = check_int(n_samples, "n_samples", 1), check_int(batch_size, "batch_size", 1)
    noise_level = check_number(noise_level, "noise_level", 0, strict=False)
    if target is None:
        with torch.no_grad():
            target = model(x).argmax(1)
    n = x.shape[0]
    tgt = resolve_target(target, torch.empty(n, len(model.labels), device=x.device))
    span = (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3))).view(n, 1, 1, 1, 1)
    noise = randn_per_image(x, seed, copies=n_samples)  # [n_samples,N,...]: per image, not per batch
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
