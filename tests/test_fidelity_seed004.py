"""Seed 004's definitions pinned on small examples: ℓ_enc against RTS, interpretation-robust training, the
Table VI sweep; seed 001's iterative-FGSM "immune" retraining; the derived tables of both studies."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from torch.nn import functional as F

import advlens as al
from advlens.attacks.interpretation import ENC_WEIGHT, _MapLoss
from advlens._rng import rand_per_image
from advlens.defend.recipes import (
    interpretation_difference,
    retrain,
    robust_loss,
    training_data,
    worst_case_example,
)
from advlens.explain import normalize_maps
from advlens.explain.engine import capture
from advlens.explain.rts import classifier_features, rts, train_rts
from advlens.metrics import kendall_tau
from advlens.studies import defenses, interpreter_attack


@pytest.fixture(scope="module")
def xy(digits_model, digits_test):
    return digits_test.x[:6], digits_test.y[:6]


def test_rts_encoder_loss_is_ce_of_the_encoder_scores_and_the_attack_stays_in_the_ball(digits_model, xy):
    """Seed 004 Sec. IV-E: ℓ = λ·mean (g(x̂) − m_t)² + w·ℓ_enc, ℓ_enc = −log softmax(s(enc(x̂)))_{y_t}, s = the
    classifier head (GAP + fc) on RTS's encoder features; recomputed here in float64 by hand."""
    m = digits_model
    train_rts(m, "digits", epochs=1, n=64, progress=False)  # the default cache path, which rts() loads
    x, y = xy
    t = (y + 1) % 10
    m_t = torch.rand(x.shape[0], *x.shape[-2:], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = classifier_features(m, x).double()
        s = feats.mean(dim=(2, 3)) @ m.classifier.weight.double().T + m.classifier.bias.double()
        enc = torch.stack([torch.logsumexp(s[i], 0) - s[i, t[i]] for i in range(len(x))])
        g = normalize_maps(rts(m, x, t, data="digits"))
        map_term = 2.0 * (g.double() - m_t.double()).pow(2).mean(dim=(1, 2))
        for on, expected in ((True, map_term + ENC_WEIGHT * enc), (False, map_term)):
            loss = _MapLoss(m, "rts", m_t, 2.0, y, t, None, {"rts_data": "digits", "enc_loss": on})
            torch.testing.assert_close(loss(x, None, None).double(), expected, rtol=1e-5, atol=1e-6)
    kw = dict(target=t, interpreter="rts", rts_data="digits", steps=4, eps=0.03, alpha=0.01)
    with_enc, without = (al.attack(m, x, y, "advedge", enc_loss=on, **kw) for on in (True, False))
    for res in (with_enc, without):
        assert (res.x_adv - x).abs().max() <= 0.03 + 1e-6 and res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert with_enc.params["enc_weight"] == ENC_WEIGHT and without.params["enc_weight"] == 0.0
    assert not torch.equal(with_enc.x_adv, without.x_adv)  # the term acts on the iterates


def test_interpretation_difference_is_the_papers_two_class_l1_by_hand():
    """Seed 004 Sec. VI-B: D = ½(‖g_y(x) − g_y(x̂)‖₁ + ‖g_t(x) − g_t(x̂)‖₁), g_c = ReLU(Σ_k w_ck A^k) / its L1
    mass, t = the most likely class of x̂ other than y; loops in float64."""
    gen = torch.Generator().manual_seed(3)
    a, b = torch.rand(2, 4, 3, 3, generator=gen), torch.rand(2, 4, 3, 3, generator=gen)
    model = SimpleNamespace(classifier=SimpleNamespace(weight=torch.rand(5, 4, generator=gen) - 0.2))
    y, logits = torch.tensor([0, 3]), torch.tensor([[9.0, 1, 2, 0, 0], [0, 4, 0, 8, 1]])
    got = interpretation_difference(model, a, b, y, logits)
    w = model.classifier.weight.double()
    for n, t in enumerate((2, 1)):  # the largest logit after removing y
        d = 0.0
        for c in (int(y[n]), t):
            ga = torch.relu(sum(w[c, k] * a[n, k].double() for k in range(4)))
            gb = torch.relu(sum(w[c, k] * b[n, k].double() for k in range(4)))
            d += (ga / ga.sum() - gb / gb.sum()).abs().sum().item() / 2
        assert math.isclose(float(got[n]), d, rel_tol=1e-5)


def test_robust_loss_is_clean_ce_plus_gamma_times_the_worst_case_difference(digits_model, xy):
    m, (x, y) = digits_model, xy
    kw = dict(eps=0.05, alpha=0.02, steps=3, seed=1)
    clean_ce = F.cross_entropy(m(x), y)
    assert torch.equal(robust_loss(m, x, y, 0.0, objective="paper", **kw), clean_ce)  # γ = 0: clean CE exactly
    x_w = worst_case_example(m, x, y, **kw)
    with torch.no_grad(), capture(m, [m.cam_layer]) as acts:
        logits = m(torch.cat([x, x_w]))
        f = acts[m.cam_layer]
    d_w = interpretation_difference(m, f[:6], f[6:], y, logits[6:])
    torch.testing.assert_close(robust_loss(m, x, y, 1.5, objective="paper", **kw), clean_ce + 1.5 * d_w.mean())
    assert (x_w - x).abs().max() <= 0.05 + 1e-6 and x_w.min() >= 0 and x_w.max() <= 1
    start = torch.clamp(x + 0.05 * (rand_per_image(x, 1) * 2 - 1), 0, 1)  # the PGD's random start
    with torch.no_grad(), capture(m, [m.cam_layer]) as acts:
        logits = m(start)
        d_0 = interpretation_difference(m, f[:6], acts[m.cam_layer], y, logits)
    assert d_w.mean() > d_0.mean() + 0.05, (d_0, d_w)  # the inner maximization raises D
    pgd = robust_loss(m, x, y, 0.0, objective="pgd_ce", **kw)  # the old form: CE at the PGD example
    assert pgd > clean_ce


def test_immune_retraining_uses_the_iterative_fgsm_by_default(digits_model):
    x, y = training_data("digits")
    _, info = retrain(digits_model, "digits", "fgsm", n_attack=48, epochs=1)
    it = al.attack(digits_model, x[:48], y[:48], "ifgsm", eps_step=1 / 255, max_eps=32 / 255, seed=0)
    assert info["recipe"]["fgsm_form"] == "iterative" and info["recipe"]["attack"]["max_eps"] == 32 / 255
    assert info["n_adversarial"] == int(it.success.sum())
    _, single = retrain(digits_model, "digits", "fgsm", n_attack=48, epochs=1, fgsm_form="single")
    assert single["recipe"]["attack"] == {"eps": 0.1}
    with pytest.raises(al.AdvlensError, match="fgsm_form"):
        retrain(digits_model, "digits", "fgsm", fgsm_form="multi")


def test_table6_sweep_is_cam_tau_under_the_interpretation_attack(digits_model, xy):
    m, (x, y) = digits_model, xy
    spec = SimpleNamespace(attack={"sweep": [0.05], "sweep_steps": 2}, seed=0)
    row = defenses._sweep(spec, m, x, y, clean_maps=None).iloc[0]
    x_w = worst_case_example(m, x, y, 0.05, 0.0625, 2, 0)
    cam = [next(iter(al.explain(m, v, "cam", target=y).values())) for v in (x, x_w)]
    assert (row.form, row.interpreter) == ("paper", "cam")
    assert math.isclose(row.tau, float(kendall_tau(*cam).nanmean()), rel_tol=1e-6)
    old = SimpleNamespace(attack={**spec.attack, "sweep_form": "pgd_gradcam"}, seed=0)
    clean = defenses._gradcam(m, x, y)
    assert defenses._sweep(old, m, x, y, clean).iloc[0].interpreter == "gradcam"
    assert defenses.PAPER_SWEEP[4] == 9 / 255 and len(defenses.PAPER_SWEEP) == 6


def test_derived_tables_hold_every_report_number():
    res = pd.DataFrame({"model": "m", "defense": ["none"] * 4 + ["robust"] * 4, "kind": ["none"] * 4 + ["robust"] * 4,
                        "attack": "pgd", "mode": ["plain"] * 4 + ["transfer"] * 2 + ["plain"] * 2,
                        "correct": [0, 0, 0, 1, 1, 1, 0, 1], "tau": 0.5, "adv_success": True, "image": list("abcd") * 2,
                        "clean_accuracy": [0.9] * 4 + [0.8] * 4, "clean_images": 4})
    sweep = pd.DataFrame({"model": "m", "defense": ["none", "robust"], "eps": 2 / 255, "accuracy": [0.1, 0.6],
                          "tau": [0.2, 0.9], "form": "paper", "interpreter": "cam"})
    out = defenses.derived({"spec": {}}, {"results": res, "defenses": res.drop_duplicates("defense"), "sweep": sweep})
    acc = out["defense_accuracy"].set_index("defense")
    assert acc.loc["none", "accuracy_plain"] == 0.25 and acc.loc["robust", "accuracy_transfer"] == 1.0
    t6 = out["seed004_table6"].set_index(["defense", "value"])
    assert t6.loc[("robust", "accuracy"), "0"] == 0.8 and t6.loc[("robust", "tau"), "2/255"] == 0.9
    assert "seed001_table1" in out and "detection_rates" not in out
    r = pd.DataFrame({"model": "m", "base": "pgd", "attack": ["adv2"] * 4, "attacked": "cam",
                      "evaluated": ["cam", "grad"] * 2, "image": list("aabb"), "success": [1, 1, 0, 0],
                      "confidence": 0.7, "l1": [0.1, 0.3, 0.9, 0.9], "iou": 0.5, "noise_rate": 0.01, "time_s": 1.0})
    ia = interpreter_attack.derived({"spec": {}}, {"results": r})
    row = ia["attack_interpreter"].set_index("interpreter").loc["cam"]
    assert row.success_rate == 0.5 and row.l1 == pytest.approx(0.1)  # means over successful images
    assert ia["transfer_l1"].iloc[0][["cam", "grad"]].tolist() == pytest.approx([0.1, 0.3])
