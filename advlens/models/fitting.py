"""The one training loop: seeded mini-batch epochs over a fixed set of images.

Every network advlens trains goes through :func:`train_epochs` — the small classifiers
(:func:`advlens.models.small_vgg.train_small`), the RTS masking model (:func:`advlens.explain.rts.train_rts`)
and the defenses' fine-tuning (:func:`advlens.defend.training.fit`). The loop owns what they share and
what makes them reproducible: the batch order (``torch.randperm`` from the caller's seeded generator,
drawn once per epoch), the gradient step on the listed parameters only (``torch.autograd.grad``, so a
frozen classifier inside the loss never collects ``.grad``), the optional per-batch learning-rate
schedule, the progress bar, the per-epoch callback (checkpoints) and an early stop. What differs — the
loss of a batch, its augmentation, the device — stays in the caller's ``step``.

Example:
    >>> import torch
    >>> w = torch.zeros(3, requires_grad=True)
    >>> x, y = torch.randn(10, 3, generator=torch.Generator().manual_seed(0)), torch.ones(10)
    >>> opt = torch.optim.SGD([w], lr=0.1)
    >>> def step(idx, epoch, batch):
    ...     return ((x[idx] @ w - y[idx]) ** 2).mean()
    >>> losses = train_epochs([w], opt, step, n=10, batch_size=4, epochs=3, gen=torch.Generator().manual_seed(0))
    >>> len(losses), losses[-1] < losses[0]
    (3, True)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["train_epochs", "BatchStep"]

BatchStep = Callable[[Tensor, int, int], Tensor]
"""``step(idx, epoch, batch) -> loss``: ``idx`` ``[B]`` (int64, CPU) indexes the caller's images; the
scalar loss is differentiated with respect to the listed parameters."""


def train_epochs(
    params: Sequence[Tensor],
    opt: torch.optim.Optimizer,
    step: BatchStep,
    n: int,
    batch_size: int,
    epochs: int,
    gen: torch.Generator,
    start_epoch: int = 0,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    stop_after: int | None = None,
    desc: str | None = None,
) -> list[float]:
    """Run epochs ``start_epoch … epochs-1`` of mini-batch training over ``n`` examples.

    Each epoch draws one permutation of ``range(n)`` from ``gen`` and splits it into batches of
    ``batch_size`` (the last may be smaller); per batch: ``loss = step(idx, epoch, b)`` (under
    ``torch.enable_grad``), gradients of ``loss`` for ``params`` (unused ones get none), ``opt.step()``,
    then ``scheduler.step()`` if given. ``gen`` is the caller's, so randomness the step draws from it
    (flips, fake classes) interleaves with the batch order exactly as it always has.

    Args:
        params: the parameters being trained (those ``opt`` holds).
        step: the batch loss, see :data:`BatchStep`; it also sets module modes if it needs them.
        start_epoch: first epoch to run (a resumed checkpoint's count).
        on_epoch: ``(epoch, loss)`` after each completed epoch (0-based index), e.g. to write a checkpoint.
        stop_after: stop after this many epochs of this call (simulates an interruption).
        desc: show a tqdm bar over epochs with this description (None: silent).

    Returns:
        The mean loss per example of each epoch this call completed.
    """
    params = list(params)
    epochs_range = range(start_epoch, epochs)
    bar = epochs_range
    if desc is not None:
        from tqdm.auto import tqdm

        bar = tqdm(epochs_range, desc=desc, unit="epoch", initial=start_epoch, total=epochs)
    losses: list[float] = []
    for epoch in bar:
        if stop_after is not None and len(losses) >= stop_after:
            break
        total: Tensor | float = 0.0  # summed on the loss's device: one host sync per epoch, not per batch
        for b, idx in enumerate(torch.randperm(n, generator=gen).split(batch_size)):
            with torch.enable_grad():
                loss = step(idx, epoch, b)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
            for p, g in zip(params, grads):
                p.grad = g
            opt.step()
            if scheduler is not None:
                scheduler.step()
            total = total + loss.detach().double() * len(idx)
        losses.append(float(total) / n)
        if desc is not None:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if on_epoch is not None:
            on_epoch(epoch, losses[-1])
    return losses
