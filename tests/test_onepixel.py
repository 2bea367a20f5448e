"""One-pixel attack (seed 001; Su et al.'s DE/rand/1): budget, seeding, success, early stop, targeted,
errors, and a cross-check against scipy's differential evolution."""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

import advlens as al
from advlens._checks import AdvlensError
from advlens.attacks.onepixel import _draw_parents, apply_pixels, init_population


@pytest.fixture(scope="module")
def xy(digits_model, digits_test):
    """The first 20 correctly classified test digits ``[20,3,32,32]`` and labels."""
    x, y = digits_test.x[:40], digits_test.y[:40]
    keep = digits_model.predict(x) == y
    return x[keep][:20], y[keep][:20]


@contextlib.contextmanager
def counted(model):
    """Count the images that go through ``model``'s forward (a forward hook, removed on exit)."""
    seen = [0]
    handle = model.register_forward_hook(lambda mod, inp, out: seen.__setitem__(0, seen[0] + len(inp[0])))
    try:
        yield seen
    finally:
        handle.remove()


def _p_label(model, x, y):
    with torch.no_grad():
        return model(x).softmax(1).gather(1, y[:, None])[:, 0]


def test_apply_pixels_by_hand():
    x = torch.zeros(2, 3, 4, 5)
    genes = torch.tensor([[2.7, 0.2, 1.5, -0.1, 0.3],  # → (2, 0), colour clamped to (1, 0, 0.3)
                          [9.0, 4.99, 0.1, 0.2, 0.4]])  # row clamped to 3, col floor 4
    out = apply_pixels(x, genes)
    want = x.clone()
    want[0, :, 2, 0] = torch.tensor([1.0, 0.0, 0.3])
    want[1, :, 3, 4] = torch.tensor([0.1, 0.2, 0.4])
    assert torch.equal(out, want) and torch.equal(x, torch.zeros(2, 3, 4, 5))  # x untouched
    two = apply_pixels(x[:1], torch.tensor([[1.0, 1.0, 0.5, 0.5, 0.5, 1.0, 1.0, 0.9, 0.9, 0.9]]))
    assert torch.equal(two[0, :, 1, 1], torch.full((3,), 0.9)) and (two != 0).sum() == 3  # later pixel wins


def test_init_population_follows_su_et_al():
    gen = torch.Generator().manual_seed(0)
    pop = init_population(50, 40, 2, (32, 24), gen).view(50, 40, 2, 5)
    assert pop.shape == (50, 40, 2, 5)
    assert 0 <= pop[..., 0].min() and pop[..., 0].max() < 32 and pop[..., 1].max() < 24
    assert abs(pop[..., 0].mean().item() - 16) < 0.5 and abs(pop[..., 1].mean().item() - 12) < 0.5
    rgb = pop[..., 2:]
    assert rgb.min() >= 0 and rgb.max() <= 1
    inside = rgb[(rgb > 0) & (rgb < 1)]  # N(128/255, 127/255) clipped: ~31% land on 0 or 1
    assert 0.25 < ((rgb == 0) | (rgb == 1)).float().mean().item() < 0.37
    assert abs(inside.mean().item() - 128 / 255) < 0.02


def test_parents_are_distinct_and_uniform():
    gen = torch.Generator().manual_seed(0)
    r = _draw_parents(400, 5, gen, torch.device("cpu"))  # [3,400,5]
    members = torch.cat([torch.arange(5).expand(1, 400, 5), r])  # i, r1, r2, r3
    assert (members.sort(0).values.diff(dim=0) != 0).all()  # pairwise distinct
    counts = torch.bincount((r[0] - torch.arange(5)).remainder(5).flatten(), minlength=5)
    assert counts[0] == 0 and (counts[1:] - 500).abs().max() < 80  # r1 uniform over the 4 others


@pytest.mark.parametrize("pixels", [1, 3])
def test_at_most_pixels_change_and_extras_match(digits_model, xy, pixels):
    x, y = xy[0][:4], xy[1][:4]
    res = al.attack(digits_model, x, y, method="onepixel", pixels=pixels, popsize=12, iterations=2, seed=1)
    changed = (res.x_adv != x).any(1)  # [N,H,W] positions where any channel differs
    assert changed.sum((1, 2)).max() <= pixels
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1 and res.x_adv.shape == x.shape
    coords, colors = res.extras["coords"], res.extras["colors"]
    assert coords.shape == (4, pixels, 2) and coords.dtype == torch.long and colors.shape == (4, pixels, 3)
    want = x.clone()
    for n in range(4):
        for p in range(pixels):
            want[n, :, coords[n, p, 0], coords[n, p, 1]] = colors[n, p]
    assert torch.equal(res.x_adv, want)
    assert torch.equal(res.success, res.pred != y)
    assert res.extras["queries"].dtype == torch.long and (res.extras["queries"] == 12 * 3).all()
    assert res.params == {"method": "onepixel", "pixels": pixels, "popsize": 12, "iterations": 2, "f": 0.5,
                          "early_stop": True}


def test_seeded(digits_model, xy):
    x, y = xy[0][:3], xy[1][:3]
    kw = {"method": "onepixel", "pixels": 2, "popsize": 10, "iterations": 3}
    a = al.attack(digits_model, x, y, seed=5, **kw)
    b = al.attack(digits_model, x, y, seed=5, **kw)
    c = al.attack(digits_model, x, y, seed=6, **kw)
    assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.extras["coords"], b.extras["coords"])
    assert torch.equal(a.extras["queries"], b.extras["queries"])
    assert not torch.equal(a.x_adv, c.x_adv)


def test_succeeds_on_trained_model(digits_model, xy):
    """One pixel barely moves this model (32×32 digits upsampled from 8×8, global average pooling).

    Measured on these 20 images (seed 0, 1 thread): pixels=1 with Su et al.'s popsize 400 and 10
    generations succeeds on 1/20 (p_y stays ≈ 0.99 on most; 0/8 with the full 100 generations in
    benchmarks/onepixel.py), pixels=5 on 2/20. With popsize 50 and 10 generations: pixels=20 4/20,
    pixels=30 7/20 (5/20 from the initial population; median p_y 0.68 → 0.53), pixels=40 with
    popsize 100 13/20. The test asserts on pixels=30 and on DE's progress over its first generation.
    """
    x, y = xy
    kw = {"method": "onepixel", "pixels": 30, "popsize": 50}
    res = al.attack(digits_model, x, y, iterations=10, **kw)
    first = al.attack(digits_model, x, y, iterations=1, **kw)
    assert res.success_rate >= 0.2, res.success_rate  # measured 0.35
    assert res.success.sum() >= first.success.sum()
    p_res, p_first = _p_label(digits_model, res.x_adv, y), _p_label(digits_model, first.x_adv, y)
    both_failed = ~first.success & ~res.success
    assert (p_res <= p_first + 1e-6)[both_failed].all()  # same seed: the best so far never gets worse
    assert p_res.median() < p_first.median() - 0.05, (p_res.median(), p_first.median())  # 0.53 vs 0.68


def test_early_stop_evaluates_only_active_images(digits_model, xy):
    x, y = xy[0][:4], xy[1][:4]
    y_wrong = y.clone()
    y_wrong[:2] = (y[:2] + 1) % 10  # images 0, 1 are already "misclassified": the first population succeeds
    kw = {"method": "onepixel", "popsize": 16, "iterations": 5}
    with counted(digits_model) as seen:
        res = al.attack(digits_model, x, y_wrong, **kw)
    q = res.extras["queries"]
    assert res.success[:2].all() and (q[:2] == 16).all()
    assert (q[2:][~res.success[2:]] == 16 * 6).all()
    assert seen[0] == q.sum() + len(x)  # only active images reach the model (+ one final check)
    full = al.attack(digits_model, x, y_wrong, early_stop=False, **kw)
    assert (full.extras["queries"] == 16 * 6).all() and full.success[:2].all()


def test_targeted(digits_model, xy):
    x, y = xy[0][:6], xy[1][:6]
    res = al.attack(digits_model, x, y, method="onepixel", target=y, popsize=8, iterations=3)
    assert res.success.all() and (res.extras["queries"] == 8).all()  # the target is already predicted
    with torch.no_grad():
        runner_up = digits_model(x).topk(2, 1).indices[:, 1]
    res = al.attack(digits_model, x, y, method="onepixel", target=runner_up, pixels=40, popsize=40,
                    iterations=8)
    assert torch.equal(res.success, res.pred == runner_up)
    assert res.success.sum() >= 2, res.success  # measured 3/6 (2 of them from the initial population)


@pytest.mark.parametrize("params, match", [
    ({"pixels": 0}, r"pixels must be an int in \[1, 1024\], got 0"),
    ({"pixels": 1.5}, "pixels must be an int"),
    ({"pixels": 2000}, r"pixels must be an int in \[1, 1024\], got 2000"),  # at most the image's pixels
    ({"popsize": 3}, "popsize must be an int >= 4"),
    ({"iterations": 0}, "iterations must be an int >= 1"),
    ({"f": 0.0}, r"f \(the DE scale factor\) must be a positive number <= 2"),
    ({"f": 2.5}, "must be a positive number <= 2"),
    ({"f": float("nan")}, "must be a positive number <= 2"),
    ({"batch_size": 0}, "batch_size"),
    ({"crossover": 0.5}, "unknown parameter"),
])
def test_bad_parameters(digits_model, xy, params, match):
    x, y = xy[0][:1], xy[1][:1]
    with pytest.raises(AdvlensError, match=match) as err:
        al.attack(digits_model, x, y, method="onepixel", **params)
    assert "\n" not in str(err.value)


def _scipy_onepixel(model, x1, y1, pixels, popsize, iterations, seed):
    """scipy's DE with the same settings on one image: (success, best p_y)."""
    from scipy.optimize import differential_evolution

    h, w = x1.shape[-2:]
    gen = torch.Generator().manual_seed(seed)
    init = init_population(1, popsize, pixels, (h, w), gen)[0].double().numpy()  # population = ours
    hit = [False]

    def fitness(v: np.ndarray) -> np.ndarray:  # [D,S] → p_y [S]
        with torch.no_grad():
            prob = model(apply_pixels(x1, torch.as_tensor(v.T, dtype=x1.dtype))).softmax(1)
        hit[0] = hit[0] or bool((prob.argmax(1) != y1).any())
        return prob[:, y1].double().numpy()

    res = differential_evolution(
        fitness, [(0, h), (0, w), (0, 1), (0, 1), (0, 1)] * pixels, maxiter=iterations, init=init,
        mutation=0.5, recombination=1.0, strategy="rand1bin", polish=False, tol=0, atol=-1, rng=seed,
        vectorized=True, updating="deferred", callback=lambda intermediate_result: hit[0],
    )
    return hit[0], float(res.fun)


def test_matches_scipy_differential_evolution(digits_model, xy):
    """Same DE/rand/1 (F 0.5, no crossover, same population): at least scipy's successes.

    Measured: ours succeeds on images 0, 1 (p_y 0.39, 0.41 at the returned candidate), fails on 2
    (best p_y 0.92); scipy succeeds on 1 only (best p_y 0.44, 0.33, 0.94).
    """
    x, y = xy[0][:3], xy[1][:3]
    kw = {"pixels": 20, "popsize": 40, "iterations": 6}
    ours = al.attack(digits_model, x, y, method="onepixel", **kw)
    theirs = [_scipy_onepixel(digits_model, x[i:i + 1], int(y[i]), seed=i, **kw) for i in range(3)]
    ok_scipy = torch.tensor([ok for ok, _ in theirs])
    assert ours.success.sum() >= ok_scipy.sum(), (ours.success, ok_scipy)
    p_ours = _p_label(digits_model, ours.x_adv, y)
    p_scipy = torch.tensor([p for _, p in theirs])
    failed = ~ours.success & ~ok_scipy
    assert (p_ours[failed] <= p_scipy[failed] + 0.1).all(), (p_ours, p_scipy)
