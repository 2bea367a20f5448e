"""Seed 004's interpretation-ensemble detector and its tensor form of scikit-learn's gradient boosting."""
from __future__ import annotations

import pytest
import torch
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.metrics import roc_auc_score

import advlens as al
from advlens.detect import EnsembleDetector, load, make
from advlens.detect.boosting import decision, fit_boosting


def test_boosting_tensors_reproduce_sklearn_decision_function():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 12, generator=g)
    y = ((x[:, 0] + 0.5 * x[:, 3] ** 2 + 0.3 * torch.randn(400, generator=g)) > 0.5).long()
    state = fit_boosting(x, y, n_estimators=60, max_depth=3, seed=0)
    clf = GradientBoostingClassifier(n_estimators=60, max_depth=3, random_state=0).fit(x.numpy(), y.numpy())
    x_new = torch.randn(300, 12, generator=g)
    x_new[:5, 0] = torch.from_numpy(clf.estimators_[0, 0].tree_.threshold[:5]).float()  # values on split points
    ours = decision(state, x_new)
    assert ours.dtype == torch.float64 and ours.shape == (300,)
    assert torch.allclose(ours, torch.from_numpy(clf.decision_function(x_new.numpy())), rtol=0, atol=1e-12)
    with pytest.raises(al.AdvlensError, match="both classes"):
        fit_boosting(x, torch.zeros(400))


@pytest.fixture(scope="module")
def digit_sets(digits_model):
    fit = al.load_images("digits", split="train").x[:300]
    test = al.load_images("digits", split="test")
    x, y = test.x[:48], test.y[:48]
    adv = al.attack(digits_model, x, y, "pgd", eps=0.031, alpha=0.031 / 8, steps=20).x_adv
    return fit, x, adv, al.matched_noise(x, adv, seed=0)


def _auc(neg: torch.Tensor, pos: torch.Tensor) -> float:
    return roc_auc_score([0] * len(neg) + [1] * len(pos), torch.cat([neg, pos]).numpy())


def test_ensemble_separates_pgd_on_held_out_digits(digits_model, digit_sets, tmp_path):
    """Measured (48 held-out digits, PGD ε 0.031, grad + cam, pixel features): AUC 0.93 vs clean, 0.90 vs
    matched noise (fit on 300 train digits + the PGD examples made from them, ``train_attack="pgd"``)."""
    fit, x, adv, noise = digit_sets
    det = EnsembleDetector(train_attack="pgd", channels="abc").fit(digits_model, fit)  # grad, cam, grad·cam; pixels
    s_clean, s_adv, s_noise = det.score(x), det.score(adv), det.score(noise)
    assert ((0 <= s_adv) & (s_adv <= 1)).all()
    assert _auc(s_clean, s_adv) > 0.8 and _auc(s_noise, s_adv) > 0.75
    again = load(det.save(tmp_path / "ens.safetensors"), digits_model)
    assert isinstance(again, EnsembleDetector) and again.interpreters == ["grad", "cam"]
    assert torch.equal(again.score(adv), s_adv) and torch.equal(again.predict(adv), s_adv > 0.5)


def test_ensemble_cnn_backbone_and_given_adversarial_examples(digits_model, digit_sets):
    fit, x, adv, _ = digit_sets
    det = make("ensemble", interpreters=["cam"], backbone="efficientnet_lite0", channels="abc", n_estimators=20)
    det.fit(digits_model, x[:24], x_adv=adv[:24])
    maps = det.maps(x[24:])
    img = det.stack(maps)
    assert img.shape == (24, 3, 32, 32) and torch.equal(img[:, 0], img[:, 2])  # one map is repeated
    feats = det.features(maps)
    assert feats.shape == (24, 24 + 40 + 80 + 112 + 192 + 1280) and torch.isfinite(feats).all()
    assert torch.equal(det.score(x[24:]), det.score_maps(maps))
    two = EnsembleDetector(["grad", "cam"], backbone="pixels", channels="abc")
    m2 = {"grad": torch.rand(2, 8, 8), "cam": torch.rand(2, 8, 8)}
    assert torch.equal(two.stack(m2)[:, 2], m2["grad"] * m2["cam"])  # Table IV's product channel


def test_ensemble_fails_clearly(digits_model, digit_sets):
    fit, x, adv, _ = digit_sets
    with pytest.raises(al.AdvlensError, match="1 to 3 interpreters"):
        EnsembleDetector(["grad", "cam", "mask", "rts"])
    with pytest.raises(al.AdvlensError, match="unknown interpreter"):
        EnsembleDetector(["gard"])
    with pytest.raises(al.AdvlensError, match="unknown backbone"):
        EnsembleDetector(backbone="vgg99")
    with pytest.raises(al.AdvlensError, match="unknown train_attack"):
        EnsembleDetector(train_attack="advegde")
    with pytest.raises(al.AdvlensError, match="channels must be one of"):
        EnsembleDetector(channels="three")
    with pytest.raises(al.AdvlensError, match="attack_options must be a dict"):
        EnsembleDetector(attack_options=[("steps", 3)])
    with pytest.raises(al.AdvlensError, match="cnn_epochs"):
        EnsembleDetector(backbone="cnn", cnn_epochs=0)
    with pytest.raises(al.AdvlensError, match="not fitted yet"):
        EnsembleDetector().score(x)
    with pytest.raises(al.AdvlensError, match="unknown detector"):
        make("ensembel")
    with pytest.raises(al.AdvlensError, match="bad parameter"):
        make("ensemble", interpretres=["grad"])
    with pytest.raises(al.AdvlensError, match="x_adv must"):
        EnsembleDetector(["cam"], backbone="pixels").fit(digits_model, x[:8], x_adv=adv[0])
    with pytest.raises(al.AdvlensError, match="maps of \\['grad'\\] are missing"):
        EnsembleDetector(["grad", "cam"]).stack({"cam": torch.rand(2, 8, 8)})


def test_ensemble_file_saved_before_train_attack_loads_as_fitted(digits_model, tmp_path):
    """A detector file whose params hold the old ``attack`` dict (no channels / train_attack) loads with
    the behaviour it was fitted with: PGD training examples, the (a, b, a·b) stack."""
    import json

    g = torch.Generator().manual_seed(0)
    clean = {"grad": torch.rand(20, 32, 32, generator=g) * 0.5, "cam": torch.rand(20, 32, 32, generator=g) * 0.5}
    adv = {k: v + 0.4 for k, v in clean.items()}
    det = EnsembleDetector(train_attack="pgd", channels="abc", n_estimators=5).fit_maps(digits_model, clean, adv)
    path = det.save(tmp_path / "old.safetensors")
    meta_path = path.with_name(path.name + ".json")
    meta = json.loads(meta_path.read_text())
    for key in ("channels", "train_attack", "attack_options", "cnn_epochs"):
        del meta["params"][key]
    meta["params"]["attack"] = {"method": "pgd", "eps": 0.031, "alpha": 0.031 / 8, "steps": 20}
    meta_path.write_text(json.dumps(meta))
    old = load(path, digits_model)
    assert old.train_attack == "pgd" and old.attack_options == {"eps": 0.031, "alpha": 0.031 / 8, "steps": 20}
    assert old.channels == "abc" and torch.equal(old.score_maps(adv), det.score_maps(adv))
