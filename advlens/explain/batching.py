"""Batch sizes chosen from free memory, and batched runs that halve the batch on out-of-memory.

:func:`auto_batch_size` measures what one image costs: on CUDA the peak allocated memory of a real
all-layer forward + backward at 2 and at 4 images (the difference is the per-image cost, the rest
is fixed), on the CPU the bytes of every module's output in one forward (kept for the backward,
plus a gradient each). It divides the free memory (CUDA: ``mem_get_info`` plus
what PyTorch's caching allocator holds unused; CPU: ``MemAvailable``) by that cost and rounds down to
a power of two. :func:`run_batched` runs a function over chunks and, when a chunk still runs out of
memory (other processes, fragmentation), halves the batch and retries that chunk.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from .. import _checks
from .._checks import AdvlensError
from ..models.wrapper import ClassifierModel

__all__ = ["auto_batch_size", "image_cost", "run_batched", "resolve_batch_size", "concat_maps"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def _probe(model: ClassifierModel, n: int, size: tuple[int, int]) -> None:
    """One all-layer forward + backward (the explanation engine's pass) on ``n`` random images."""
    from .engine import forward_backward

    x = torch.rand(n, 3, *size, device=model.device)
    forward_backward(model, x, list(model.layers), input_grad=True, check=False)


def image_cost(model: ClassifierModel, size: tuple[int, int] | None = None) -> tuple[int, int]:
    """``(fixed bytes, bytes per image)`` of an all-layer forward + backward of ``model``.

    CUDA: measured peaks at 2 and 4 images. CPU: estimated from one forward of one image as twice
    the bytes of every leaf module's output (the activation autograd keeps and its gradient) plus the
    input and its gradient; fixed cost 0. The estimate errs high: VGG-16 at 224, 220 MiB estimated vs
    140 MiB measured (peak RSS of 16 images).
    """
    size = size or model.input_size
    dev = model.device
    if dev.type == "cuda":
        peaks = []
        for n in (2, 4):
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
            _probe(model, n, size)
            torch.cuda.synchronize(dev)
            peaks.append(torch.cuda.max_memory_allocated(dev) - base)
        per = max(1, (peaks[1] - peaks[0]) // 2)
        return max(0, peaks[0] - 2 * per), per
    total = [0]
    leaves = [m for m in model.net.modules() if not list(m.children())]

    def count(module, inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            total[0] += output.numel() * output.element_size()

    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model(torch.rand(1, 3, *size, device=dev))
    finally:
        for h in handles:
            h.remove()
    return 0, 2 * total[0] + 2 * 3 * size[0] * size[1] * 4


def auto_batch_size(model: ClassifierModel, size: tuple[int, int] | None = None, fraction: float = 0.6,
                    max_batch: int = 1024) -> int:
    """The largest power of two of images whose all-layer forward + backward fits in ``fraction`` of
    the free memory of the model's device (at least 1, at most ``max_batch``).

    Example:
        >>> bs = auto_batch_size(model)          # e.g. 256 for VGG-16 at 224 on an 80 GB GPU
        >>> bs >= 1
        True
        >>> maps = al.explain(model, x, "gradcam", batch_size="auto")  # the same, with OOM back-off
        >>> maps["block3_conv2"].shape
        torch.Size([4, 32, 32])
    """
    if not 0 < fraction <= 1:
        raise AdvlensError(f"fraction must be in (0, 1], got {fraction}")
    fixed, per = image_cost(model, size)
    free = _checks.free_memory(model.device)
    n = max(1, min(int(max_batch), int((free * fraction - fixed) // per)))
    n = 1 << (n.bit_length() - 1)  # round down to a power of two
    log.info("auto batch size %d (%.1f MiB per image, %.0f MiB free)", n, per / 2**20, free / 2**20)
    return n


def resolve_batch_size(model: ClassifierModel, batch_size: int | str | None, n: int) -> int:
    """``batch_size`` as an int for ``n`` images: None = all at once, ``"auto"`` = :func:`auto_batch_size`."""
    if batch_size is None:
        return max(1, n)
    if batch_size == "auto":
        return auto_batch_size(model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise AdvlensError(f"batch_size must be a positive integer, 'auto' or None, got {batch_size!r}")
    return batch_size


def run_batched(fn: Callable[[slice], T], n: int, batch_size: int, backoff: bool = True) -> list[T]:
    """``[fn(slice) for each chunk of batch_size]`` over ``n`` items; with ``backoff``, a chunk that
    runs out of memory is retried at half the batch size (down to 1, then the error is raised).
    More than one chunk shows a transient progress bar on a terminal (none in logs or pipes)."""
    from tqdm.auto import tqdm

    out: list[T] = []
    start, bs = 0, max(1, int(batch_size))
    with tqdm(total=n, unit="img", leave=False, disable=None if n > bs else True) as bar:
        while start < n:
            sl = slice(start, min(start + bs, n))
            try:
                out.append(fn(sl))
            except torch.OutOfMemoryError:
                if not backoff or bs == 1:
                    raise AdvlensError(f"out of memory at batch size {bs}; free memory on the device "
                                       "or lower the image size") from None
                bs //= 2
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                log.warning("out of memory: retrying with batch size %d", bs)
                continue
            bar.update(sl.stop - start)
            start = sl.stop
    return out


def concat_maps(parts: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate per-chunk ``{name: [n,...]}`` dicts along the first dimension."""
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
