"""The one-pixel attack (Su et al.; seed 001 §2 "black-box attacks"): batched differential evolution.

A candidate changes ``pixels`` pixels of one image; its genes are ``pixels`` × (row, col, r, g, b).
Differential evolution DE/rand/1 (Storn & Price) with scale ``F`` and no crossover, as Su et al.:

    trial_i = parent_r1 + F · (parent_r2 − parent_r3),   r1, r2, r3, i pairwise distinct,

and a trial replaces its parent when its fitness is not worse. Every generation of every image is
built as one tensor of candidate images (the pixels are written into copies with advanced
indexing) and sent through the model in chunks of ``batch_size``; images that already succeeded
are no longer evaluated (early stop). Only softmax outputs are used, under ``torch.no_grad()``.
The populations are per image, and so is their randomness: image ``i`` draws its initial population
and its parents from its own generator (:mod:`advlens._rng`), so its search does not depend on the
batch.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from .._checks import check_bool, check_int, check_number
from .._rng import image_generators
from ..models.wrapper import ClassifierModel
from .base import AttackResult, finish, register_attack

__all__ = ["apply_pixels", "init_population", "onepixel"]

GENES = 5  # genes per pixel: row, col, r, g, b
_COLOR_MEAN, _COLOR_STD = 128 / 255, 127 / 255  # Su et al.: colours ~ N(128, 127) on 0..255


def _check_params(pixels: int, popsize: int, iterations: int, f: float, batch_size: int, hw: int,
                  early_stop: bool = True) -> float:
    """Validate the attack's parameters (one-line :class:`AdvlensError`); return ``f`` as a float."""
    check_int(pixels, "pixels", 1, hw)  # at most the number of pixels of the image
    check_int(popsize, "popsize", 4)  # DE/rand/1 needs the parent and three other members
    check_int(iterations, "iterations", 1)
    check_int(batch_size, "batch_size", 1)
    check_bool(early_stop, "early_stop")
    return check_number(f, "f (the DE scale factor)", 0, 2)


def init_population(
    n: int, popsize: int, pixels: int, size: tuple[int, int], gen: torch.Generator,
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Su et al.'s initial population: coordinates uniform, colours ~ N(128/255, 127/255) clipped.

    Args:
        n: number of images; popsize: candidates per image; pixels: pixels per candidate.
        size: ``(H, W)``; coordinates are drawn uniformly in ``[0, H) × [0, W)``.
        gen: the random generator (on ``device``).

    Returns:
        genes ``[n, popsize, 5·pixels]``: per pixel (row, col, r, g, b).
    """
    h, w = size
    shape = (n, popsize, pixels)
    row = torch.rand(shape, generator=gen, device=device, dtype=dtype) * h
    col = torch.rand(shape, generator=gen, device=device, dtype=dtype) * w
    rgb = torch.randn((*shape, 3), generator=gen, device=device, dtype=dtype) * _COLOR_STD + _COLOR_MEAN
    genes = torch.cat([row[..., None], col[..., None], rgb.clamp(0.0, 1.0)], -1)
    return genes.reshape(n, popsize, pixels * GENES)


def _clip_genes(genes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Clip genes ``[..., 5·P]`` to their box: rows to [0, H], columns to [0, W], colours to [0, 1]."""
    g = genes.unflatten(-1, (-1, GENES))
    hi = torch.tensor([size[0], size[1], 1.0, 1.0, 1.0], device=genes.device, dtype=genes.dtype)
    return torch.minimum(g.clamp(min=0.0), hi).flatten(-2)


def _positions(genes: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel rows ``[B,P]`` and columns ``[B,P]`` (floor of the gene, inside the image) and colours ``[B,P,3]``."""
    g = genes.unflatten(-1, (-1, GENES))
    rows = g[..., 0].floor().long().clamp(0, size[0] - 1)
    cols = g[..., 1].floor().long().clamp(0, size[1] - 1)
    return rows, cols, g[..., 2:].clamp(0.0, 1.0)


def _paste_(images: torch.Tensor, genes: torch.Tensor) -> torch.Tensor:
    """Write each candidate's pixels into its image, in place: ``images`` ``[B,3,H,W]``, ``genes`` ``[B,5·P]``.

    One advanced-indexing write per pixel slot (a loop over ``P``, never over images or
    candidates); when a candidate names the same position twice, its later pixel wins.
    """
    rows, cols, colors = _positions(genes, images.shape[-2:])
    b = torch.arange(len(images), device=images.device)[:, None]
    ch = torch.arange(3, device=images.device)[None, :]
    for p in range(rows.shape[1]):
        images[b, ch, rows[:, p, None], cols[:, p, None]] = colors[:, p].to(images.dtype)
    return images


def apply_pixels(x: torch.Tensor, genes: torch.Tensor) -> torch.Tensor:
    """Images ``x`` ``[B,3,H,W]`` (or ``[1,3,H,W]``, broadcast) with candidate ``genes`` ``[B,5·P]`` pasted in.

    Pixel ``p`` of a candidate sets position ``(floor(row), floor(col))`` (clamped to the
    image) to its colour (clamped to [0,1]). Returns a new tensor ``[B,3,H,W]``.
    """
    return _paste_(x.expand(len(genes), -1, -1, -1).clone(), genes)


def _evaluate(
    model: ClassifierModel, x: torch.Tensor, label: torch.Tensor, targeted: bool,
    idx: torch.Tensor, genes: torch.Tensor, batch_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fitness (lower is better) and success ``[A,S]`` of candidates ``genes`` ``[A,S,D]`` on images ``x[idx]``.

    All ``A·S`` candidate images are built chunk by chunk (``batch_size`` at a time) with one
    gather of the clean images and one advanced-indexing write per pixel slot.
    """
    a, s, d = genes.shape
    flat = genes.reshape(a * s, d)
    owner = idx.repeat_interleave(s)
    fit, ok = torch.empty(a * s, device=x.device, dtype=x.dtype), torch.empty(a * s, device=x.device, dtype=torch.bool)
    for lo in range(0, a * s, batch_size):
        hi = min(lo + batch_size, a * s)
        who = owner[lo:hi]
        prob = model(_paste_(x[who], flat[lo:hi])).softmax(1)
        p_label = prob.gather(1, label[who, None])[:, 0]
        pred = prob.argmax(1)
        fit[lo:hi] = -p_label if targeted else p_label
        ok[lo:hi] = pred == label[who] if targeted else pred != label[who]
    return fit.view(a, s), ok.view(a, s)


_RAW = 1 << 62  # raw integers for the parent draws; ``raw mod (s − k)`` is uniform up to s/2⁶² bias


def _draw_parents(n: int, s: int, gen: torch.Generator | Sequence[torch.Generator],
                  device: torch.device) -> torch.Tensor:
    """Indices ``[3,n,s]``: for member ``i`` of each population three members, pairwise distinct and ≠ i.

    Each draw is uniform over the members not yet taken: a uniform index over the ``s − k``
    remaining ones is shifted past the ``k`` taken ones in increasing order. ``gen`` is one generator
    for all ``n`` populations, or one per population (population ``j`` draws ``[3,s]`` from ``gen[j]``
    alone: one call per population, the rest batched).
    """
    if isinstance(gen, torch.Generator):
        raw = torch.randint(0, _RAW, (n, 3, s), generator=gen, device=device)
    else:
        raw = torch.stack([torch.randint(0, _RAW, (3, s), generator=g, device=device) for g in gen])
    taken = torch.arange(s, device=device).expand(n, s)[..., None]  # [n,s,1], sorted
    drawn = []
    for k in range(1, 4):
        r = raw[:, k - 1] % (s - k)
        for j in range(k):
            r = r + (r >= taken[..., j])
        drawn.append(r)
        taken = torch.cat([taken, r[..., None]], -1).sort(-1).values
    return torch.stack(drawn)


def _key(fit: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """Ranking key (lower is better): a success beats any failure, then lower fitness (|fit| ≤ 1)."""
    return fit - 4.0 * ok.to(fit.dtype)


@register_attack("onepixel", norm="l0", black_box=True)
def onepixel(
    model: ClassifierModel, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None, seed: int = 0,
    pixels: int = 1, popsize: int = 400, iterations: int = 100, f: float = 0.5, batch_size: int | None = None,
    early_stop: bool = True,
) -> AttackResult:
    """One-pixel attack (Su et al., "One pixel attack for fooling deep neural networks"; seed 001 §2).

    Black-box: only the softmax of ``model`` is used. Differential evolution DE/rand/1 with scale
    ``f`` and no crossover over candidates of ``pixels`` × (row, col, r, g, b); initial population
    as Su et al. (coordinates uniform over the image, colours ~ N(128/255, 127/255) clipped to
    [0,1]). After mutation, genes are clipped to the image / to [0,1]; a pixel's position is
    the floor of its (row, col) genes. Fitness (minimised): untargeted ``p_y``, targeted
    ``−p_target``; a trial replaces its parent when not worse. The defaults are Su et al.'s
    settings, which REFERENCE.md prescribes for seed 001 (the paper does not give them): population 400,
    up to 100 generations, F = 0.5, early stop on success. Su et al. stop untargeted CIFAR runs only
    once ``p_y < 5%``; here an image stops as soon as one candidate succeeds (the attack's goal).

    Each generation, all candidates of all still-active images form one tensor evaluated in
    chunks of ``batch_size`` on the model's device. Image ``i`` draws its population and parents
    from its own generator (seeded by ``seed`` and its content, :mod:`advlens._rng`), one call per
    active image and generation, so its search does not depend on the other images, their order,
    the batch size or when the others stop (up to float rounding in the batched model calls, which
    can tip a comparison of fitnesses).

    Args:
        y: ``[N]`` true labels. target: ``[N]`` target classes (targeted mode) or None.
        seed: the initial population and the parent draws, drawn per image from the image's content
            (:mod:`advlens._rng`), so results do not depend on the batch.
        pixels: pixels changed per image (Su et al.: 1, 3, 5).
        popsize: candidates per image (≥ 4). iterations: maximum generations.
        f: DE scale factor in (0, 2]. batch_size: candidate images per model call (None: 4096 on a
            GPU, 256 on CPU, where 128–256 run ~1.3–2× faster on the digits VGG: the chunk stays in cache).
        early_stop: stop an image once a candidate succeeds (else run all generations).

    Returns:
        :class:`AttackResult`; ``x_adv`` is ``x`` with the best candidate (a successful one if any,
        else the lowest fitness) pasted in. ``extras``: ``queries`` ``[N]`` long (model evaluations
        spent on each image, ``popsize`` per generation including the initial one), ``coords``
        ``[N,pixels,2]`` long (row, col), ``colors`` ``[N,pixels,3]`` in [0,1].

    Shape: ``x`` ``[N,3,H,W]`` in [0,1] → ``x_adv`` same shape, at most ``pixels`` positions changed.

    Example:
        >>> res = al.attack(model, x, y, method="onepixel", pixels=1, popsize=10, iterations=2)
        >>> res.x_adv.shape, res.extras["queries"].shape   # queries: [N] model calls per image
        (torch.Size([4, 3, 32, 32]), torch.Size([4]))
    """
    size = (x.shape[-2], x.shape[-1])
    if batch_size is None:  # measured: chunks of 256 run 1.3–2× faster on CPU (cache); big batches feed a GPU
        batch_size = 4096 if x.device.type == "cuda" else 256
    f = _check_params(pixels, popsize, iterations, f, batch_size, size[0] * size[1], early_stop)
    start = time.perf_counter()
    x = x.detach()
    n, s, dev = len(x), popsize, x.device
    targeted = target is not None
    label = target if targeted else y
    gens = image_generators(x, seed)
    everyone = torch.arange(n, device=dev)
    with torch.no_grad():
        pop = torch.cat([init_population(1, s, pixels, size, g, dev, x.dtype) for g in gens])
        fit, ok = _evaluate(model, x, label, targeted, everyone, pop, batch_size)
        queries = torch.full((n,), s, dtype=torch.long, device=dev)
        pick = _key(fit, ok).argmin(1)
        best = pop[everyone, pick]
        best_fit, best_ok = fit[everyone, pick], ok[everyone, pick]
        active = ~best_ok if early_stop else torch.ones(n, dtype=torch.bool, device=dev)
        for _ in range(iterations):
            idx = active.nonzero()[:, 0]
            if idx.numel() == 0:
                break
            r1, r2, r3 = _draw_parents(len(idx), s, [gens[i] for i in idx.tolist()], dev)
            rows = idx[:, None]
            trial = pop[rows, r1] + f * (pop[rows, r2] - pop[rows, r3])
            trial = _clip_genes(trial, size)
            t_fit, t_ok = _evaluate(model, x, label, targeted, idx, trial, batch_size)
            queries[idx] += s
            keep = t_fit <= fit[idx]
            pop[idx] = torch.where(keep[..., None], trial, pop[idx])
            fit[idx] = torch.where(keep, t_fit, fit[idx])
            # best-so-far: the trial population may hold a success its selection discarded
            pick = _key(t_fit, t_ok).argmin(1)
            sub = torch.arange(len(idx), device=dev)
            c_fit, c_ok = t_fit[sub, pick], t_ok[sub, pick]
            better = _key(c_fit, c_ok) < _key(best_fit[idx], best_ok[idx])
            upd = idx[better]
            best[upd] = trial[better, pick[better]]
            best_fit[upd], best_ok[upd] = c_fit[better], c_ok[better]
            if early_stop:
                active[idx] = ~best_ok[idx]
        x_adv = apply_pixels(x, best)
    rows, cols, colors = _positions(best, size)
    params = {"method": "onepixel", "pixels": pixels, "popsize": popsize, "iterations": iterations, "f": f,
              "early_stop": early_stop}
    extras = {"queries": queries, "coords": torch.stack([rows, cols], -1), "colors": colors}
    return finish(model, x_adv, y, target, start, params, extras)
