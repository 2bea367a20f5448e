"""DLFuzz (seed 000; REFERENCE.md DLFuzz) and neuron coverage: formulas by hand, selection, attack."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import advlens as al
from advlens._checks import AdvlensError
from advlens.attacks.dlfuzz import dlfuzz_objective, select_neurons
from advlens.metrics import CoverageTracker, neuron_coverage, neuron_values
from advlens.metrics.coverage import scaled_channel_means

MEAN, STD = (0.5, 0.25, 0.375), (0.25, 0.5, 0.125)  # exact in float32 (the wrapper's buffers)
SIZES = (4, 3, 3, 5, 6)  # DLFuzz's layers: "1" (ReLU conv), "3" (tanh conv), "4" (pool), "7" (tanh dense), "8" (logits)
EXPLAINED = (0, 1, 3)  # the explainable layers "1", "3", "7" among them


@pytest.fixture(scope="module")
def tiny() -> al.ClassifierModel:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 3, padding=1), nn.Tanh(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 6),
    )
    model = al.wrap(net, MEAN, STD, layers=["1", "3", "7"], input_size=(6, 6), name="tiny")
    return model.double().eval()


@pytest.fixture(scope="module")
def x_tiny() -> torch.Tensor:
    return torch.rand(3, 3, 6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def _hand_outputs(model, x):
    """Layer outputs [1]: [N,4,6,6], [3]: [N,3,6,6], [4]: [N,3,1,1], [7]: [N,5], [8]: [N,6] and logits, by hand."""
    net = model.net
    z = (x - torch.tensor(MEAN, dtype=x.dtype).view(1, 3, 1, 1)) / torch.tensor(STD, dtype=x.dtype).view(1, 3, 1, 1)
    a1 = torch.clamp(F.conv2d(z, net[0].weight, net[0].bias, padding=1), min=0)
    a3 = torch.tanh(F.conv2d(a1, net[2].weight, net[2].bias, padding=1))
    h = torch.tanh(a3.mean((2, 3)) @ net[6].weight.T + net[6].bias)
    logits = h @ net[8].weight.T + net[8].bias
    return [a1, a3, a3.mean((2, 3), keepdim=True), h, logits], logits


def _hand_values(model, x):
    outs, _ = _hand_outputs(model, x)
    vals = []
    for a in outs:
        rows = []
        for i in range(len(x)):
            s = (a[i] - a[i].min()) / (a[i].max() - a[i].min())
            rows.append(s.mean((1, 2)) if s.ndim == 3 else s)
        vals.append(torch.stack(rows))
    return vals


def _hand_objective(model, x, y, index, sign, w=0.5, lam=0.5, top_k=4, scores="probs"):
    outs, logits = _hand_outputs(model, x)
    s = logits.softmax(1) if scores == "probs" else logits
    means = torch.cat([a.mean((2, 3)) if a.ndim == 4 else a for a in outs], 1)  # [N,12]
    res = []
    for i in range(len(x)):
        ranked = [int(c) for c in torch.argsort(s[i], descending=True) if int(c) != int(y[i])][:top_k]
        term = w * sum(s[i, c] for c in ranked) - s[i, y[i]]
        term = term + lam * sum(sign[i, j] * means[i, index[i, j]] for j in range(index.shape[1]))
        res.append(term)
    return torch.stack(res)


# ---------------------------------------------------------------- objective


@pytest.mark.parametrize("scores", ["probs", "logits"])
def test_objective_matches_hand_computation(tiny, x_tiny, scores):
    y = torch.tensor([0, 3, 5])
    index = torch.tensor([[0, 5, 9], [1, 2, 11], [4, 6, 7]])
    sign = torch.tensor([[1.0, -1.0, 1.0], [1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]], dtype=torch.float64)
    got = dlfuzz_objective(tiny, x_tiny, y, index, sign, scores=scores, lam=0.7, predict_weight=0.3)
    want = _hand_objective(tiny, x_tiny, y, index, sign, w=0.3, lam=0.7, scores=scores)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # a shared [M] selection broadcasts to every image; default signs are +1
    shared = dlfuzz_objective(tiny, x_tiny, y, torch.tensor([3, 8]), scores=scores)
    ones = torch.ones(3, 2, dtype=torch.float64)
    want2 = _hand_objective(tiny, x_tiny, y, torch.tensor([[3, 8]] * 3), ones, scores=scores)
    torch.testing.assert_close(shared, want2, rtol=1e-10, atol=1e-12)


def test_objective_gradient_matches_finite_differences(tiny, x_tiny):
    y = torch.tensor([1, 2, 4])
    index = torch.tensor([[0, 4, 8, 10]] * 3)
    others = torch.tensor([[0, 2, 3, 4], [0, 1, 3, 5], [0, 1, 2, 3]])  # fixed, as during the attack
    xa = x_tiny.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(dlfuzz_objective(tiny, xa, y, index, others=others).sum(), xa)
    h, flat = 1e-6, x_tiny.flatten()
    coords = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(0))[:40]
    for k in coords.tolist():
        e = torch.zeros_like(flat)
        e[k] = h
        with torch.no_grad():
            up = dlfuzz_objective(tiny, (flat + e).view_as(x_tiny), y, index, others=others).sum()
            down = dlfuzz_objective(tiny, (flat - e).view_as(x_tiny), y, index, others=others).sum()
        assert float((up - down) / (2 * h)) == pytest.approx(float(g.flatten()[k]), rel=1e-5, abs=1e-8)


# ---------------------------------------------------------------- coverage


def test_neuron_values_and_coverage_match_hand_computation(tiny, x_tiny):
    got = neuron_values(tiny, x_tiny)
    want = _hand_values(tiny, x_tiny)
    assert list(got) == ["1", "3", "4", "7", "8"]  # DLFuzz's layers: conv, conv, pool, dense, dense
    for g, w, k in zip(got.values(), want, SIZES):
        assert g.shape == (3, k)
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)
    explained = neuron_values(tiny, x_tiny, layers="explained")
    assert list(explained) == ["1", "3", "7"]
    for g, i in zip(explained.values(), EXPLAINED):
        torch.testing.assert_close(g, want[i], rtol=1e-10, atol=1e-12)
    allv = torch.cat(want, 1)
    for t in (0.1, 0.25, 0.5):
        hand = float((allv > t).any(0).double().mean())
        assert neuron_coverage(tiny, x_tiny, threshold=t) == pytest.approx(hand)
    assert neuron_coverage(tiny, x_tiny, layers=["3"], threshold=0.25) == pytest.approx(
        float((want[1] > 0.25).any(0).double().mean()))
    # a constant layer has value 0 (no division by zero)
    assert torch.equal(scaled_channel_means(torch.full((2, 3, 4, 4), 7.0)), torch.zeros(2, 3))


def test_tracker_counts_gains_and_monotone_coverage(tiny, x_tiny):
    tr = CoverageTracker(tiny, threshold=0.25)
    assert tr.coverage == 0.0 and tr.times == {}
    total = sum(SIZES)
    hits = torch.cat(_hand_values(tiny, x_tiny), 1) > 0.25  # [3,21]
    gain = tr.update(x_tiny)
    assert torch.equal(tr.times_flat, hits.long().sum(0))
    seen = torch.zeros(total, dtype=torch.bool)
    for i in range(3):  # each input's gain = neurons it covers first, in batch order
        assert gain[i].item() == pytest.approx(float((hits[i] & ~seen).sum()) / total)
        seen |= hits[i]
    assert float(gain.sum()) == pytest.approx(tr.coverage)
    snapshot = tr.copy()
    tr.update(x_tiny[:1])
    assert torch.equal(tr.times_flat, hits.long().sum(0) + hits[0].long())
    assert torch.equal(snapshot.times_flat, hits.long().sum(0))  # the copy is independent
    assert [t.shape[0] for t in tr.times.values()] == list(SIZES)
    assert all(torch.equal(c, t > 0) for c, t in zip(tr.covered.values(), tr.times.values()))
    gen, last = torch.Generator().manual_seed(0), tr.coverage
    for _ in range(5):
        tr.update(torch.rand(4, 3, 6, 6, generator=gen, dtype=torch.float64))
        assert tr.coverage >= last
        last = tr.coverage


# ---------------------------------------------------------------- neuron selection


@pytest.fixture(scope="module")
def digits_xy(digits_model, digits_test):
    x, y = digits_test.x[:48], digits_test.y[:48]
    keep = digits_model.predict(x) == y
    return x[keep], y[keep]


@pytest.fixture(scope="module")
def tracked(digits_model, digits_xy):
    tr = CoverageTracker(digits_model, layers="explained")  # the six ReLU layers: 224 neurons
    tr.update(digits_xy[0][:16])
    return tr


@pytest.mark.parametrize("strategy", [None, 0, 1, 2, 3])
def test_strategies_pick_distinct_neurons_deterministically(tracked, digits_xy, strategy):
    x = digits_xy[0][:6]
    index, sign = select_neurons(tracked, x, strategy, neurons=10, generator=torch.Generator().manual_seed(5))
    assert index.shape == sign.shape == (6, 10)
    assert all(len(set(r.tolist())) == 10 for r in index)
    assert int(index.min()) >= 0 and int(index.max()) < tracked.total == 224
    assert set(sign.unique().tolist()) <= {-1.0, 1.0}
    again = select_neurons(tracked, x, strategy, neurons=10, generator=torch.Generator().manual_seed(5))
    assert torch.equal(index, again[0]) and torch.equal(sign, again[1])
    if strategy == 3:  # negated neurons sit just below the threshold, maximized ones just above
        values = torch.cat(list(neuron_values(tracked.model, x, tracked.layers).values()), 1).gather(1, index)
        below, above = sign < 0, (sign > 0) & (values > 0.25) & (values < 0.5)
        assert ((values[below] > 0.05) & (values[below] < 0.25)).all()
        assert (below.sum(1) + above.sum(1) == 10).all()


def test_strategy_preferences(tracked, digits_model, digits_xy):
    tr = tracked.copy()
    x = digits_xy[0][:1].expand(400, -1, -1, -1)
    gen = torch.Generator().manual_seed(0)
    times = torch.randint(0, 6, (tr.total,), generator=gen)
    times[: tr.total // 3] = 0
    tr.times_flat = times
    picks = torch.zeros(tr.total)
    for strategy in (1, 0, None):
        index, _ = select_neurons(tr, x, strategy, neurons=10, generator=gen)
        picks = torch.bincount(index.flatten(), minlength=tr.total).float() / len(x)
        if strategy == 1:  # ∝ max − times: never-covered neurons far more often, most-covered never
            assert picks[times == 0].mean() > 2 * picks[times == 4].mean()  # weights 5 vs 1
            assert picks[times == times.max()].sum() == 0
        elif strategy == 0:  # ∝ times: never-covered ones never
            assert picks[times == 0].sum() == 0
            assert picks[times == 5].mean() > 2 * picks[times == 1].mean()
        else:  # random uncovered only
            assert picks[times > 0].sum() == 0
    # strategy 2: uniform among the top 10 % of neurons by the producing conv's mean weight
    convs = [m for n, m in digits_model.net.features.named_children() if n.endswith("_conv")]
    means = torch.cat([c.weight.detach().flatten(1).mean(1) for c in convs])
    k = math.ceil(0.1 * tr.total)
    top = set(means.masked_fill(means <= 0, -math.inf).topk(k).indices.tolist())
    index, _ = select_neurons(tr, x[:50], 2, neurons=10, generator=gen)
    assert set(index.flatten().tolist()) == top


# ---------------------------------------------------------------- the attack


def test_attack_default_budget(digits_model, digits_xy):
    x, y = digits_xy
    res = al.attack(digits_model, x, y, method="dlfuzz", step=0.01, iterations=8)
    ex = res.extras
    assert res.x_adv.shape == x.shape and res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert torch.equal(ex["perturbation"], res.x_adv - x)
    norm0 = x.flatten(1).norm(dim=1)
    rel = ex["perturbation"].flatten(1).norm(dim=1) / norm0
    one_step = 0.01 * math.sqrt(x[0].numel()) / norm0  # ‖step·ĝ‖ with RMS(ĝ) ≤ 1
    assert (rel <= 0.02 + one_step + 1e-6).all()
    assert ((ex["iterations_used"] >= 1) & (ex["iterations_used"] <= 8)).all()
    stopped_early = ex["iterations_used"] < 8
    assert (res.success[stopped_early] | (rel[stopped_early] >= 0.02)).all()
    curve = ex["coverage_curve"]
    assert curve.shape == (9,) and (curve.diff() >= 0).all()
    assert ex["coverage_before"] == curve[0] and ex["coverage_after"] == curve[-1]
    assert ex["coverage_after"] >= ex["coverage_before"]
    assert res.params["strategy"] == 1 and res.params["max_rel_l2"] == 0.02
    assert res.params["layers"] == [  # DLFuzz's layers: the convs (after their ReLU), the pools, the dense layer
        "block1_conv1", "block1_conv2", "features.block1_pool", "block2_conv1", "block2_conv2",
        "features.block2_pool", "block3_conv1", "block3_conv2", "fc"]


def test_attack_succeeds_with_larger_steps(digits_model, digits_xy):
    x, y = digits_xy
    res = al.attack(digits_model, x, y, method="dlfuzz", step=0.05, iterations=10, max_rel_l2=None, seed=0)
    # observed: 40 / 48 digits flipped (0.83); coverage 0.384 → 0.451 (logits: 48 / 48 in ~1.3 steps)
    assert res.success_rate >= 0.7, res.success_rate
    assert float(res.extras["coverage_after"]) > float(res.extras["coverage_before"])
    assert torch.equal(res.success, res.pred != y)
    flipped = res.extras["iterations_used"][res.success]
    assert (flipped >= 1).all()  # first adversarial kept: no further steps after the flip


def test_attack_seeded_and_tracker(digits_model, digits_xy):
    x, y = digits_xy[0][:6], digits_xy[1][:6]
    kw = dict(method="dlfuzz", step=0.02, iterations=2, strategy=None)
    a, b = al.attack(digits_model, x, y, seed=1, **kw), al.attack(digits_model, x, y, seed=1, **kw)
    assert torch.equal(a.x_adv, b.x_adv)
    tr = CoverageTracker(digits_model)
    tr.update(digits_xy[0][6:20])
    before = tr.coverage
    res = al.attack(digits_model, x, y, seed=1, tracker=tr, **kw)
    assert float(res.extras["coverage_before"]) >= before and tr.coverage == float(res.extras["coverage_after"])


@pytest.mark.parametrize("params, words", [
    ({"strategy": 5}, "strategy"), ({"strategy": "1"}, "strategy"), ({"strategy": True}, "strategy"),
    ({"neurons": 0}, "neurons"), ({"neurons": -3}, "neurons"), ({"neurons": 10_000}, "exceeds"),
    ({"scores": "softmax"}, "scores"), ({"step": 0}, "step"), ({"iterations": 0}, "iterations"),
    ({"top_k": 10}, "top_k"), ({"max_rel_l2": -1.0}, "max_rel_l2"), ({"target": 3}, "untargeted"),
])
def test_bad_parameters(digits_model, digits_xy, params, words):
    x, y = digits_xy[0][:2], digits_xy[1][:2]
    with pytest.raises(AdvlensError, match=words) as err:
        al.attack(digits_model, x, y, method="dlfuzz", **params)
    assert "\n" not in str(err.value)


def test_bad_selection_calls(tiny, x_tiny):
    tr = CoverageTracker(tiny)
    with pytest.raises(AdvlensError, match="update"):
        select_neurons(tr, x_tiny.float(), 1)
    tr.update(x_tiny)
    with pytest.raises(AdvlensError, match="strategy"):
        select_neurons(tr, x_tiny, 7)
    with pytest.raises(AdvlensError, match="exceeds"):
        select_neurons(tr, x_tiny, 1, neurons=22)
    with pytest.raises(AdvlensError, match="scores"):
        dlfuzz_objective(tiny, x_tiny, torch.tensor([0, 1, 2]), torch.tensor([0]), scores="prob")
