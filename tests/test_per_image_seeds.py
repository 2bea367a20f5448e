"""Per-image randomness (issue 15): an image's noise, detector score and attack result do not depend on
the batch — alone, among other images, in another order, with another batch or chunk size."""
from __future__ import annotations

import copy

import pytest
import torch

import advlens as al
from advlens._rng import _mix64, image_generators, image_seeds, rand_per_image, randn_per_image
from advlens.detect import BehaviorDeviation

M64 = (1 << 64) - 1


@pytest.fixture(scope="module")
def digits(digits_model, digits_test):
    """Six correctly classified test digits and their labels."""
    x, y = digits_test.x[:24], digits_test.y[:24]
    keep = digits_model.predict(x) == y
    return x[keep][:6], y[keep][:6]


def _batchings(n: int) -> list[list[int]]:
    """Index lists that put every image in other company: alone, reversed, interleaved, in pairs."""
    return [[i] for i in range(n)] + [list(range(n))[::-1], [3, 0, 5, 1], [2, 4], list(range(n))]


def _per_image(fn, x: torch.Tensor, *rest: torch.Tensor) -> list[dict[int, torch.Tensor]]:
    """``fn`` on every batching of :func:`_batchings`; one ``{image: result}`` per batching."""
    out = []
    for idx in _batchings(len(x)):
        res = fn(x[idx], *(r[idx] for r in rest))
        out.append({i: res[k] for k, i in enumerate(idx)})
    return out


def _reference_seed(img: torch.Tensor, seed: int) -> int:
    """image_seeds in pure Python integers (no tensor reduction): the hash is exact by definition."""
    q = (img.float() * 65535).round().long().flatten().tolist()
    h = sum(v * (_mix64(j) | 1) for j, v in enumerate(q)) & M64
    base = _mix64(seed & M64)
    for s in img.shape:
        base = _mix64(base ^ s)
    return _mix64(base ^ h) >> 1


# ---------------------------------------------------------------- image_seeds


def test_image_seeds_depend_on_content_and_seed_only(digits):
    x = digits[0]
    seeds = image_seeds(x, 7)
    assert len(seeds) == len(x) and all(0 <= s < 1 << 63 for s in seeds)
    assert len(set(seeds)) == len(x)  # different images, different seeds
    assert seeds == [_reference_seed(img, 7) for img in x]  # exact integer hash
    assert image_seeds(x[[4, 1]], 7) == [seeds[4], seeds[1]]  # position and batch size do not matter
    assert image_seeds(torch.cat([x[2:3], x[2:3], x[:1]]), 7) == [seeds[2], seeds[2], seeds[0]]
    assert image_seeds(x.double(), 7) == seeds  # quantized from float32 either way
    other = image_seeds(x, 8)
    assert all(a != b for a, b in zip(seeds, other))  # another seed, other seeds
    assert image_seeds(x, -1) != image_seeds(x, 1)
    one_level = x[:1].clone()
    one_level[0, 1, 5, 7] += 1 / 65535  # one quantization step in one value
    assert image_seeds(one_level, 7)[0] != seeds[0]
    moved = x[:1].roll(1, dims=-1)  # same values elsewhere
    assert image_seeds(moved, 7)[0] != seeds[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_image_seeds_are_the_same_on_cuda(digits):
    x = digits[0]
    assert image_seeds(x.cuda(), 3) == image_seeds(x, 3)


def test_noise_is_exactly_per_image(digits):
    x = digits[0]
    for draw in (randn_per_image, rand_per_image):
        full = draw(x, 0)
        assert full.shape == x.shape and full.dtype == x.dtype
        for part in _per_image(lambda xb: draw(xb, 0), x):
            assert all(torch.equal(v, full[i]) for i, v in part.items())
        assert not torch.equal(full, draw(x, 1))
    copies = randn_per_image(x, 0, copies=5)  # copy-major, one generator per image
    assert copies.shape == (5, *x.shape)
    alone = randn_per_image(x[3:4], 0, copies=5)
    assert torch.equal(copies[:, 3], alone[:, 0])
    gen = image_generators(x[3:4], 0)[0]
    assert torch.equal(copies[:, 3], torch.randn((5, *x.shape[1:]), generator=gen))
    flow = rand_per_image(x, 0, shape=(2, 4, 4))
    assert flow.shape == (len(x), 2, 4, 4) and torch.equal(flow[2:3], rand_per_image(x[2:3], 0, shape=(2, 4, 4)))


# ---------------------------------------------------------------- matched noise and the behaviour detector


def test_matched_noise_is_per_image(digits_model, digits):
    x, y = digits
    x_adv = (x + 0.05 * torch.linspace(-1, 1, x[0].numel()).view_as(x[0]) * (1 + torch.arange(len(x))).view(-1, 1, 1, 1)
             ).clamp(0, 1)
    full = al.matched_noise(x, x_adv, strength=2.0, seed=3)
    for part in _per_image(lambda a, b: al.matched_noise(a, b, strength=2.0, seed=3), x, x_adv):
        assert all(torch.equal(v, full[i]) for i, v in part.items())


def test_behavior_scores_are_per_image(digits_model, digits):
    """In float64, so the comparison checks the randomness, not the conv kernels' rounding (float32's ~1e-6
    differences of the Grad-CAM maps between batch sizes; ~1e-13 in float64). The paper's score
    median(D_g) − D_o is small here (≈ 5e-4), so the tolerances are far below it."""
    model = copy.deepcopy(digits_model).double()
    x = digits[0][:4].double()
    fit = al.load_images("digits", split="train").x[:40].double()
    det = BehaviorDeviation(copies=6, threshold=2.0).fit(model, fit)
    full = det.score(x)
    other = BehaviorDeviation(copies=6, threshold=2.0, seed=1).fit(model, fit).score(x[:1])
    assert (other - full[:1]).abs().max() > 0.05 * full[:1].abs().max()  # the noise matters (measured 15 %)
    xc = det.clean(x)
    copies = det.benign_copies(x, xc).view(6, len(x), *x.shape[1:])
    for idx in ([2], [3, 0]):
        torch.testing.assert_close(det.score(x[idx]), full[idx], atol=1e-9, rtol=0)
        sub = det.benign_copies(x[idx], xc[idx]).view(6, len(idx), *x.shape[1:])
        torch.testing.assert_close(sub, copies[:, idx], atol=1e-12, rtol=0)  # same draws; mean/std ulps
    small = BehaviorDeviation(copies=6, threshold=2.0, batch_size=5).fit(model, fit)  # other passes
    torch.testing.assert_close(small.score(x[[3, 1]]), full[[3, 1]], atol=1e-9, rtol=0)


# ---------------------------------------------------------------- attacks


def test_pgd_random_start_is_per_image(digits_model, digits):
    x, y = digits[0][:4], digits[1][:4]
    kw = {"method": "pgd", "eps": 0.05, "alpha": 0.01, "steps": 2, "random_start": True, "seed": 4}
    full = al.attack(digits_model, x, y, **kw)
    runs = {(0, 1, 2, 3): al.attack(digits_model, x, y, chunk_size=3, **kw)}  # chunks of 3 and 1
    for idx in ((2,), (3, 0, 1)):  # alone; another batch in another order
        runs[idx] = al.attack(digits_model, x[list(idx)], y[list(idx)], **kw)
    for idx, res in runs.items():
        idx = list(idx)
        torch.testing.assert_close(res.x_adv, full.x_adv[idx], atol=1e-5, rtol=0)
        torch.testing.assert_close(res.confidence, full.confidence[idx], atol=1e-5, rtol=0)
        assert torch.equal(res.pred, full.pred[idx])
    start = (rand_per_image(x, 4) * 2 - 1) * 0.05  # the start itself is exact: one step from it
    one = al.attack(digits_model, x[2:3], y[2:3], **{**kw, "steps": 1}).x_adv
    grad = al.attacks.objective_grad(digits_model, (x + start).clamp(0, 1)[2:3], y[2:3])[0]
    want = al.attacks.project_linf((x + start).clamp(0, 1)[2:3] + 0.01 * grad.sign(), x[2:3], 0.05)
    assert torch.equal(one, want)


def test_other_random_attacks_are_per_image(digits_model, digits):
    """One-pixel's populations, StAdv's flow start and DLFuzz's picks (strategy 2: no batch coverage)."""
    x, y = digits[0][:3], digits[1][:3]
    for kw in ({"method": "onepixel", "pixels": 2, "popsize": 6, "iterations": 2, "early_stop": False},
               {"method": "stadv", "steps": 1}, {"method": "dlfuzz", "strategy": 2, "iterations": 2, "step": 0.05}):
        full = al.attack(digits_model, x, y, seed=2, **kw)
        chunked = al.attack(digits_model, x, y, seed=2, chunk_size=1, **kw)
        swapped = al.attack(digits_model, x[[2, 0]], y[[2, 0]], seed=2, **kw)
        torch.testing.assert_close(chunked.x_adv, full.x_adv, atol=1e-5, rtol=0)
        torch.testing.assert_close(swapped.x_adv, full.x_adv[[2, 0]], atol=1e-5, rtol=0)
