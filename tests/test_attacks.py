"""Attacks stay in their budget and in [0,1], succeed on a trained model, and fail clearly."""
from __future__ import annotations

import pytest
import torch

import advlens as al


@pytest.fixture(scope="module")
def xy(digits_model, digits_test):
    x, y = digits_test.x[:48], digits_test.y[:48]
    keep = digits_model.predict(x) == y  # attack correctly classified images
    return x[keep], y[keep]


@pytest.mark.parametrize("method, params, bound", [
    ("fgsm", {"eps": 0.1}, 0.1),
    ("pgd", {"eps": 0.05, "alpha": 0.01, "steps": 5}, 0.05),
    ("ifgsm", {"eps_step": 0.02, "max_eps": 0.2}, 0.2),
])
def test_attacks_stay_in_ball_and_unit_range(digits_model, xy, method, params, bound):
    x, y = xy
    res = al.attack(digits_model, x, y, method=method, **params)
    assert res.x_adv.shape == x.shape
    assert (res.x_adv - x).abs().max().item() <= bound + 1e-6
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert res.success.dtype == torch.bool and res.pred.shape == y.shape
    assert torch.equal(res.success, res.pred != y)
    assert ((res.confidence > 0) & (res.confidence <= 1)).all() and res.time_s > 0


def test_pgd_succeeds_on_trained_model(digits_model, xy):
    x, y = xy
    res = al.attack(digits_model, x, y, method="pgd", eps=0.1, alpha=0.02, steps=20, seed=0)
    assert res.success_rate >= 0.9, res.success_rate
    weak = al.attack(digits_model, x, y, method="pgd", eps=0.01, alpha=0.0025, steps=20)
    assert weak.success_rate < res.success_rate


def test_targeted_pgd_reaches_target(digits_model, xy):
    x, y = xy
    target = (y + 3) % 10
    res = al.attack(digits_model, x, y, method="pgd", eps=0.15, alpha=0.02, steps=30, target=target)
    assert torch.equal(res.success, res.pred == target)
    assert res.success_rate >= 0.8, res.success_rate


def test_fgsm_succeeds_on_trained_model(digits_model, xy):
    x, y = xy
    assert al.attack(digits_model, x, y, method="fgsm", eps=0.2).success_rate >= 0.5


def test_ifgsm_reports_the_minimal_flipping_eps(digits_model, xy):
    x, y = xy
    step = 0.01
    res = al.attack(digits_model, x, y, method="ifgsm", eps_step=step, max_eps=0.3)
    eps = res.extras["eps"]
    assert torch.equal(res.success, ~torch.isnan(eps)) and res.success.any()
    direction = al.attacks.objective_grad(digits_model, x, y)[0].sign()
    ok = res.success
    with torch.no_grad():
        at = digits_model((x + eps[:, None, None, None] * direction).clamp(0, 1)[ok]).argmax(1)
        below = digits_model((x + (eps - step)[:, None, None, None] * direction).clamp(0, 1)[ok]).argmax(1)
    assert (at != y[ok]).all()
    assert (below == y[ok]).all()
    assert torch.allclose((res.x_adv[ok] - x[ok]).abs().amax((1, 2, 3)), eps[ok], atol=1e-6)


def test_random_start_is_seeded(digits_model, xy):
    x, y = xy
    a = al.attack(digits_model, x, y, method="pgd", eps=0.05, steps=1, seed=1).x_adv
    b = al.attack(digits_model, x, y, method="pgd", eps=0.05, steps=1, seed=1).x_adv
    c = al.attack(digits_model, x, y, method="pgd", eps=0.05, steps=1, seed=2).x_adv
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_extra_loss_term_enters_the_objective(digits_model, xy):
    x, y = xy
    seen = {}

    def stay_close(x_adv, logits, maps):
        seen["maps"] = maps
        return 1e6 * ((x_adv - x) ** 2).sum((1, 2, 3))

    res = al.attack(digits_model, x, y, method="pgd", eps=0.2, alpha=0.01, steps=6, random_start=False,
                    loss_fn=stay_close, explainer={"method": "gradcam", "layers": ["block3_conv2"]})
    # the penalty dominates: every step pulls back toward x, so we never get past one step
    assert (res.x_adv - x).abs().max().item() <= 0.01 + 1e-6
    m = seen["maps"]["gradcam"]["block3_conv2"]
    assert m.shape == (len(x), 32, 32) and m.requires_grad


def test_matched_noise_has_the_perturbations_statistics():
    x = torch.full((3, 3, 64, 64), 0.5)
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(3, 3, 64, 64, generator=g) * torch.tensor([0.01, 0.02, 0.03]).view(3, 1, 1, 1) + 0.005
    x_adv = x + delta
    noisy = al.matched_noise(x, x_adv, strength=1.0, seed=0)
    n = (noisy - x).flatten(1)
    assert torch.allclose(n.mean(1), delta.flatten(1).mean(1), atol=1.5e-3)
    assert torch.allclose(n.std(1), delta.flatten(1).std(1), rtol=0.03)
    assert torch.equal(noisy, al.matched_noise(x, x_adv, seed=0))
    assert not torch.equal(noisy, al.matched_noise(x, x_adv, seed=1))
    double = al.matched_noise(x, x_adv, strength=2.0, seed=0) - x
    assert torch.allclose(double, 2 * (noisy - x), atol=1e-6)


def test_scale_perturbation_adds_to_the_clean_image():
    x = torch.full((1, 3, 4, 4), 0.5)
    x_adv = x + 0.01
    assert torch.allclose(al.scale_perturbation(x, x_adv, 4.0), x + 0.04)
    assert al.scale_perturbation(x, torch.ones_like(x), 4.0).max() == 1.0


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "pgdd"}, "unknown attack 'pgdd'; did you mean 'pgd'"),
    ({"method": "pgd", "epsilon": 0.1}, r"unknown parameter\(s\) \['epsilon'\]"),
    ({"method": "fgsm", "eps": -1}, "eps must be a positive number"),
    ({"method": "pgd", "steps": 0}, "steps must be an int >= 1"),
    ({"method": "pgd", "target": 10}, "target holds a class outside"),
])
def test_bad_attack_requests_fail_clearly(digits_model, xy, kwargs, message):
    x, y = xy
    with pytest.raises(al.AdvlensError, match=message):
        al.attack(digits_model, x, y, **kwargs)


def test_attack_records_hold_norms_and_defaults_and_refuse_duplicates(digits_model, xy):
    from advlens.attacks import attack_info, register_attack

    assert attack_info("pgd").norm == "linf" and attack_info("cw").norm == "l2"
    assert attack_info("onepixel").black_box and not attack_info("pgd").black_box
    assert attack_info("pgd").defaults()["alpha"] is None  # the default step lives in pgd: eps / 4
    with pytest.raises(RuntimeError, match="registered twice"):
        register_attack("pgd")(lambda *a, **k: None)
    with pytest.raises(al.AdvlensError, match="did you mean 'pgd'"):
        attack_info("pdg")
    x, y = xy
    a = al.attack(digits_model, x, y, "pgd", eps=0.03, steps=3, alpha=None)  # None = the attack's default
    b = al.attack(digits_model, x, y, "pgd", eps=0.03, steps=3, alpha=0.03 / 4)
    assert torch.equal(a.x_adv, b.x_adv) and a.params["alpha"] == 0.03 / 4


def test_cli_attack_gives_the_library_result(digits_model, tmp_path):
    """The CLI's unset flags are the library's defaults: same parameters, same adversarial labels."""
    import pandas as pd

    from advlens.cli import main

    out = tmp_path / "att"
    assert main(["attack", "--model", "small_vgg_digits", "--images", "digits", "--limit", "6", "--method", "pgd",
                 "--eps", "0.03", "--steps", "5", "--out", str(out), "--quiet"]) == 0
    rows = pd.read_parquet(out / "results.parquet")
    batch = al.load_images("digits", size=digits_model.input_size, n=6, seed=0)[:6]
    res = al.attack(digits_model, batch.x, None, "pgd", eps=0.03, steps=5)
    assert rows.adv_pred.tolist() == [digits_model.labels[int(i)] for i in res.pred]
    assert rows.success.tolist() == res.success.tolist()
    import json

    ran = json.loads((out / "attack.json").read_text())  # what ran, with the attack's own defaults resolved
    assert ran["params"] == res.params and ran["seed"] == 0 and ran["count"] == 6
    # unset --eps/--steps are the attack's own defaults, recorded as such
    assert main(["attack", "--model", "small_vgg_digits", "--images", "digits", "--limit", "2", "--method", "fgsm",
                 "--out", str(tmp_path / "att2"), "--quiet"]) == 0
    ran = json.loads((tmp_path / "att2" / "attack.json").read_text())
    assert ran["params"] == {"method": "fgsm", "eps": al.attacks.attack_info("fgsm").defaults()["eps"]}
