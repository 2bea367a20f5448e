"""ADV², AdvEdge, AdvEdge⁺ (seed 004): they fool the classifier while keeping the explanation."""
from __future__ import annotations

import pytest
import torch

import advlens as al
from advlens.attacks.interpretation import edge_weights


@pytest.fixture(scope="module")
def case(digits_model, digits_test):
    """16 test digits with the paper's random targets y_t = (y + randint(1, C)) mod C."""
    x, y = digits_test.x[:16], digits_test.y[:16]
    g = torch.Generator().manual_seed(0)
    t = (y + torch.randint(1, 10, (16,), generator=g)) % 10
    return digits_model, x, y, t


def _l1(model, x, x_adv, y, t, interpreter):
    (ben,) = al.explain(model, x, interpreter, target=y).values()
    (adv,) = al.explain(model, x_adv, interpreter, target=t).values()
    return (adv - ben).abs().mean(dim=(1, 2))


def test_edge_weights():
    x = torch.zeros(2, 3, 16, 16)
    x[:, :, :, 8:] = 1.0  # one vertical edge
    w = edge_weights(x)
    assert w.shape == (2, 1, 16, 16) and w[:, :, :, :5].abs().max() == 0 and w.max() > 0.1
    b = edge_weights(x, phi=0.1)
    assert set(b.unique().tolist()) == {0.0, 1.0} and torch.equal(b, (w > 0.1).float())


@pytest.mark.parametrize("interpreter, steps, ratio", [("cam", 100, 0.75), ("grad", 60, 0.95)])
def test_adv2_keeps_the_map_closer_than_pgd_at_similar_success(case, interpreter, steps, ratio):
    """Measured on 16 digits (targeted, eps 0.031, alpha 1/255): CAM 100 steps — PGD success 0.94,
    L1 0.227; ADV² 0.88, L1 0.134. Grad 100 steps — PGD 0.94, L1 0.128; ADV² 0.94, L1 0.105."""
    model, x, y, t = case
    pgd = al.attack(model, x, y, "pgd", target=t, eps=0.031, alpha=1 / 255, steps=steps, random_start=False)
    adv2 = al.attack(model, x, y, "adv2", target=t, interpreter=interpreter, steps=steps)
    assert (adv2.x_adv - x).abs().max() <= 0.031 + 1e-6 and adv2.x_adv.min() >= 0 and adv2.x_adv.max() <= 1
    assert adv2.success.float().mean() >= pgd.success.float().mean() - 0.15
    assert adv2.success.float().mean() >= 0.6
    d_pgd = _l1(model, x, pgd.x_adv, y, t, interpreter).mean()
    d_adv2 = _l1(model, x, adv2.x_adv, y, t, interpreter).mean()
    assert d_adv2 < ratio * d_pgd, (float(d_adv2), float(d_pgd))
    assert adv2.params["method"] == "adv2" and adv2.params["interpreter"] == interpreter
    assert adv2.extras["target_map"].shape == (16, 32, 32)


def test_advedge_puts_the_perturbation_on_edges(case):
    model, x, y, t = case
    res = al.attack(model, x[:8], y[:8], "advedge+", target=t[:8], interpreter="cam", steps=30)
    off_edge = edge_weights(x[:8], phi=0.1).expand_as(x[:8]) == 0
    assert (res.x_adv - x[:8])[off_edge].abs().max() == 0  # AdvEdge⁺ never touches non-edge pixels
    res = al.attack(model, x[:8], y[:8], "advedge", target=t[:8], interpreter="cam", steps=30)
    w = edge_weights(x[:8]).expand_as(x[:8])
    delta = (res.x_adv - x[:8]).abs()
    assert delta[w < 0.01].mean() < 0.25 * delta[w > 0.1].mean()  # N_w = E(x) scales the step
    assert delta.max() <= 0.031 + 1e-6


def test_interpretation_attack_rejects_bad_parameters(case):
    model, x, y, t = case
    with pytest.raises(al.AdvlensError, match="interpreter"):
        al.attack(model, x[:2], y[:2], "adv2", interpreter="lime", steps=1)
    with pytest.raises(al.AdvlensError, match="base attack"):
        al.attack(model, x[:2], y[:2], "advedge", base="fgsm", steps=1)
    with pytest.raises(al.AdvlensError, match="do not apply to base 'pgd'"):
        al.attack(model, x[:2], y[:2], "adv2", c=1.0, steps=1)
    with pytest.raises(al.AdvlensError, match="target_map"):
        al.attack(model, x[:2], y[:2], "adv2", target_map=torch.zeros(2, 8, 8), steps=1)
    with pytest.raises(al.AdvlensError, match="weight must be finite and non-negative"):
        al.attack(model, x[:2], y[:2], "pgd", weight=-torch.ones(2, 1, 32, 32), steps=1)  # shared with cw/stadv
    with pytest.raises(al.AdvlensError, match="lam"):
        al.attack(model, x[:2], y[:2], "adv2", lam=-1.0, steps=1)


@pytest.mark.parametrize("base, extra", [("cw", {"binary_search_steps": 1}), ("stadv", {})])
def test_adv2_over_cw_and_stadv_keeps_the_cam_map(case, base, extra):
    """Seed 004 eqs. 6–7: the same interpretation term on the C&W and StAdv frameworks. Measured on 8
    digits, 100 steps, λ 10: C&W success 1.0 / 1.0, L1 0.270 → 0.178; StAdv 0.875 / 0.875, 0.270 → 0.203."""
    model, x, y, t = case
    x, y, t = x[:8], y[:8], t[:8]
    plain = al.attack(model, x, y, base, target=t, steps=100, **extra)
    adv2 = al.attack(model, x, y, "adv2", target=t, base=base, interpreter="cam", steps=100, **extra)
    assert adv2.success.float().mean() >= plain.success.float().mean() - 0.13
    assert _l1(model, x, adv2.x_adv, y, t, "cam").mean() < 0.85 * _l1(model, x, plain.x_adv, y, t, "cam").mean()
    assert adv2.params["base"] == base and adv2.x_adv.min() >= 0 and adv2.x_adv.max() <= 1
