"""C&W-L2 (binary search over c) and StAdv: ranges, success on the trained digits model, the
search, the per-pixel weight N_w and the extra loss term of seed 004, and clear errors."""
from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

import advlens as al
from advlens.attacks.cw import cw
from advlens.attacks.stadv import flow_loss, stadv, warp


@pytest.fixture(scope="module")
def xy(digits_model, digits_test):
    x, y = digits_test.x[:16], digits_test.y[:16]
    assert torch.equal(digits_model.predict(x), y)  # all 16 are classified correctly
    return x, y


@pytest.fixture(scope="module")
def cw_untargeted(digits_model, xy):
    x, y = xy
    return al.attack(digits_model, x, y, method="cw", c=1.0, steps=50, binary_search_steps=1)


@pytest.fixture(scope="module")
def stadv_default(digits_model, xy):
    x, y = xy
    return al.attack(digits_model, x, y, method="stadv", steps=100)


def _l2(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).norm(dim=1)


# ---------------------------------------------------------------- C&W


def test_cw_range_reported_l2_and_untargeted_success(cw_untargeted, xy):
    x, y = xy
    res = cw_untargeted
    assert res.x_adv.shape == x.shape and res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert torch.allclose(res.extras["l2"], _l2(res.x_adv, x), atol=1e-6)
    assert torch.equal(res.success, res.pred != y)
    assert torch.equal(res.success, ~torch.isnan(res.extras["c"]))
    assert torch.equal(res.x_adv[~res.success], x[~res.success])  # failures return x
    # measured: 16/16 succeed, mean L2 0.94 (c = 1, 50 steps, early stop after 15)
    assert res.success_rate >= 0.75, res.success_rate
    assert res.extras["l2"][res.success].mean() < 2.0


def test_cw_targeted_reaches_the_target(digits_model, xy):
    x, y = xy
    target = (y + 3) % 10
    res = al.attack(digits_model, x, y, method="cw", c=1.0, steps=50, binary_search_steps=1, target=target)
    assert torch.equal(res.success, res.pred == target)
    # measured: 16/16, mean L2 1.00
    assert res.success_rate >= 0.75, res.success_rate
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1


def test_binary_search_finds_smaller_perturbations(digits_model, xy, cw_untargeted):
    x, y = xy
    search = al.attack(digits_model, x[:8], y[:8], method="cw", c=1.0, steps=50, binary_search_steps=3)
    large = al.attack(digits_model, x[:8], y[:8], method="cw", c=100.0, steps=50, binary_search_steps=1)
    assert search.success.all() and large.success.all()  # equal success (measured: 8/8 both)
    # measured mean L2: search 0.59 (c ends at 0.25–0.5), single c = 100: 0.94
    assert search.extras["l2"].mean() < 0.8 * large.extras["l2"].mean()
    assert (search.extras["c"] < 1).any()
    # round 1 of the search is the single c = 1 run, and the smallest L2 is kept
    single = cw_untargeted.extras["l2"][:8]
    assert (search.extras["l2"] <= single + 1e-6).all()


def test_cw_weight_zero_pins_pixels(digits_model, xy):
    x, y = xy[0][:4], xy[1][:4]
    weight = torch.zeros(4, 1, 32, 32)
    weight[..., :16] = 1.0
    res = al.attack(digits_model, x, y, method="cw", c=10.0, steps=20, binary_search_steps=1, weight=weight)
    assert torch.equal(res.x_adv[..., 16:], x[..., 16:])
    moved = res.success
    assert moved.any() and (res.x_adv[moved][..., :16] != x[moved][..., :16]).any()


def test_cw_penalty_enters_the_objective(digits_model, xy):
    x, y = xy[0][:4], xy[1][:4]
    seen = {}

    def darker(x_adv, logits, maps):  # per-image penalty [N] on the mean of x̂
        seen["maps"] = maps
        return 200.0 * x_adv.mean((1, 2, 3))

    kw = {"method": "cw", "c": 1.0, "steps": 15, "binary_search_steps": 1}
    plain = al.attack(digits_model, x, y, **kw)
    pushed = al.attack(digits_model, x, y, loss_fn=darker,
                       explainer={"method": "gradcam", "layers": ["block3_conv2"]}, **kw)
    both = plain.success & pushed.success
    assert both.any() and not torch.equal(plain.x_adv, pushed.x_adv)
    shift = (pushed.x_adv - x)[both].mean((1, 2, 3)) - (plain.x_adv - x)[both].mean((1, 2, 3))
    assert (shift < 0).all() and shift.mean() < -1e-3  # measured: −0.002 … −0.0096 per image
    assert seen["maps"]["gradcam"]["block3_conv2"].requires_grad


# ---------------------------------------------------------------- StAdv


@pytest.mark.parametrize("shape", [(2, 3, 32, 32), (1, 3, 37, 45), (1, 1, 224, 224)])
def test_zero_flow_is_the_identity_exactly(shape):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    n, _, h, w = shape
    assert torch.equal(warp(x, torch.zeros(n, 2, h, w)), x)
    # a one-pixel horizontal flow samples the right neighbour; the last column repeats the edge
    right = warp(x, torch.cat([torch.ones(n, 1, h, w), torch.zeros(n, 1, h, w)], 1))
    assert torch.equal(right[..., :-1], x[..., 1:]) and torch.equal(right[..., -1], x[..., -1])
    down = warp(x, torch.cat([torch.zeros(n, 1, h, w), -torch.ones(n, 1, h, w)], 1))
    assert torch.equal(down[..., 1:, :], x[..., :-1, :]) and torch.equal(down[..., 0, :], x[..., 0, :])


def test_warp_is_the_bilinear_formula_of_eq3():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 9, 11, generator=g)
    flow = 3 * torch.randn(2, 2, 9, 11, generator=g)
    u = (torch.arange(11).view(1, 1, 11) + flow[:, 0]).clamp(0, 10)
    v = (torch.arange(9).view(1, 9, 1) + flow[:, 1]).clamp(0, 8)
    u0, v0 = u.floor().long().clamp(max=9), v.floor().long().clamp(max=7)
    expect = torch.zeros_like(x)
    for du in (0, 1):
        for dv in (0, 1):
            q_u, q_v = u0 + du, v0 + dv
            wgt = (1 - (u - q_u).abs()) * (1 - (v - q_v).abs())
            idx = (q_v * 11 + q_u).flatten(1)[:, None].expand(-1, 3, -1)
            expect += wgt[:, None] * x.flatten(2).gather(2, idx).view_as(x)
    assert torch.allclose(warp(x, flow), expect, atol=1e-5)


def test_flow_loss_matches_eq4():
    flow = torch.zeros(1, 2, 3, 3)
    assert flow_loss(flow).item() == 0 and flow_loss(flow, 1e-8).item() > 0
    flow[0, 0, 1, 1] = 3.0
    flow[0, 1, 1, 1] = 4.0  # one pixel moved by (3, 4): 4 neighbours, each pair counted twice
    assert flow_loss(flow).item() == pytest.approx(8 * 5.0)
    zero = torch.zeros(1, 2, 4, 4, requires_grad=True)
    (grad,) = torch.autograd.grad(flow_loss(zero, 1e-8).sum(), zero)
    assert torch.isfinite(grad).all()  # finite at a constant flow thanks to eps


def test_stadv_range_success_and_extras(stadv_default, xy):
    x, y = xy
    res = stadv_default
    assert res.x_adv.shape == x.shape and res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert torch.equal(res.success, res.pred != y)
    # measured: 16/16 (τ = 0.0005, 100 steps), mean flow loss 548
    assert res.success_rate >= 0.75, res.success_rate
    fl = res.extras["flow_loss"]
    assert torch.isfinite(fl).all() and (fl > 0).all()
    assert torch.allclose(fl, flow_loss(res.extras["flow"]), rtol=1e-5)
    assert torch.allclose(res.x_adv, warp(x, res.extras["flow"]).clamp(0, 1), atol=1e-6)


def test_larger_tau_gives_smoother_flows(digits_model, xy, stadv_default):
    x, y = xy
    smooth = al.attack(digits_model, x, y, method="stadv", steps=100, tau=0.005)
    both = smooth.success & stadv_default.success
    assert both.float().mean() >= 0.75  # measured: 16/16 for both τ
    # measured mean flow loss: 233 (τ = 0.005) vs 548 (τ = 0.0005)
    assert smooth.extras["flow_loss"][both].mean() < 0.7 * stadv_default.extras["flow_loss"][both].mean()


def test_stadv_weight_zero_changes_nothing(digits_model, xy):
    x, y = xy[0][:2], xy[1][:2]
    res = al.attack(digits_model, x, y, method="stadv", steps=3, weight=torch.zeros(2, 3, 32, 32))
    assert torch.equal(res.x_adv, x) and not res.success.any()
    assert torch.equal(res.extras["flow"], torch.zeros(2, 2, 32, 32))
    half = torch.ones(1, 1, 32, 32)
    half[..., 16:] = 0
    part = stadv(digits_model, x, y, steps=3, weight=half)
    assert (part.extras["flow"][..., 16:] == 0).all() and (part.extras["flow"][..., :15] != 0).any()


def test_stadv_is_seeded_and_takes_the_explainer_term(digits_model, xy):
    x, y = xy[0][:4], xy[1][:4]
    a = al.attack(digits_model, x, y, method="stadv", steps=3, seed=5)
    b = al.attack(digits_model, x, y, method="stadv", steps=3, seed=5)
    c = al.attack(digits_model, x, y, method="stadv", steps=3, seed=6)
    assert torch.equal(a.x_adv, b.x_adv) and not torch.equal(a.x_adv, c.x_adv)
    seen = {}

    def keep_map(x_adv, logits, maps):
        m = maps["gradcam"]["block3_conv2"]
        seen["ok"] = m.requires_grad
        return 100.0 * F.relu(m).mean((1, 2))

    d = al.attack(digits_model, x, y, method="stadv", steps=3, seed=5, loss_fn=keep_map,
                  explainer={"method": "gradcam", "layers": ["block3_conv2"]})
    assert seen["ok"] and not torch.equal(a.x_adv, d.x_adv)


def _margin(model, x_adv, y):
    """``max_{i≠y} Z_i − Z_y`` ``[N]``."""
    with torch.no_grad():
        z = model(x_adv)
    return z.scatter(1, y[:, None], -torch.inf).amax(1) - z.gather(1, y[:, None]).squeeze(1)


def test_kappa_is_the_confidence_of_kept_results(digits_model, xy):
    x, y = xy[0][:8], xy[1][:8]
    res = al.attack(digits_model, x, y, method="cw", c=10.0, kappa=3.0, steps=30, binary_search_steps=1)
    assert res.success.all()  # measured: 8/8, margins 3.05 … 3.54
    assert (_margin(digits_model, res.x_adv, y) >= 3.0 - 1e-4).all()
    flow = al.attack(digits_model, x, y, method="stadv", kappa=2.0, steps=60)
    ok = flow.success
    assert ok.float().mean() >= 0.5  # measured: 8/8 misclassified
    # success is pred != y; an image that never reached the κ margin keeps its last iterate, which may be
    # misclassified with a smaller margin. Measured: 8/8 reach κ on 1 thread, 7/8 on 2 (margins 2.00 … 3.48).
    hit = flow.extras["reached"]
    assert hit.float().mean() >= 0.75 and not (hit & ~ok).any()
    assert (_margin(digits_model, flow.x_adv[hit], y[hit]) >= 2.0 - 1e-4).all()


def test_stadv_targeted(digits_model, xy):
    x, y = xy[0][:8], xy[1][:8]
    target = (y + 3) % 10
    res = al.attack(digits_model, x, y, method="stadv", steps=60, target=target)
    assert torch.equal(res.success, res.pred == target)
    assert res.success_rate >= 0.25, res.success_rate  # measured: 5/8 after 60 steps


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("method, params, message", [
    ("cw", {"steps": 0}, "steps must be an int >= 1"),
    ("cw", {"c": 0}, "c must be a positive number"),
    ("cw", {"c": -1.0}, "c must be a positive number"),
    ("cw", {"lr": 0}, "lr must be a positive number"),
    ("cw", {"binary_search_steps": 0}, "binary_search_steps must be an int >= 1"),
    ("cw", {"kappa": -1}, "kappa must be a non-negative number"),
    ("cw", {"weight": torch.ones(2, 2, 32, 32)}, r"weight must have shape \[16,1\|3,32,32\]"),
    ("stadv", {"tau": -0.1}, "tau must be a non-negative number"),
    ("stadv", {"steps": 2.5}, "steps must be an int >= 1"),
    ("stadv", {"lr": -1e-3}, "lr must be a positive number"),
    ("stadv", {"weight": -torch.ones(16, 1, 32, 32)}, "weight must be finite and non-negative"),
    ("stadv", {"flow_tau": 1}, r"unknown parameter\(s\) \['flow_tau'\]"),
])
def test_bad_parameters_fail_in_one_line(digits_model, xy, method, params, message):
    x, y = xy
    with pytest.raises(al.AdvlensError, match=message) as err:
        al.attack(digits_model, x, y, method=method, **params)
    assert "\n" not in str(err.value)
    if "flow_tau" not in params:
        fn = cw if method == "cw" else stadv
        with pytest.raises(al.AdvlensError, match=message):
            fn(digits_model, x, y, **params)
