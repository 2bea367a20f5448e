"""Bad parameters through the public API: one line, naming the parameter, never a traceback (issue 15).

Every case fails in validation, before any attack iteration, explanation pass or training step, so the
table runs in seconds on four digits and the small trained VGG.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import advlens as al
from advlens._checks import AdvlensError
from advlens.defend import adversarial_train, retrain, wrap
from advlens.defend.transforms import TRANSFORMS

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def model():
    """The small digits VGG, randomly initialised (seeded): validation and shapes do not need training, and
    the file then runs in seconds on its own (the trained ``digits_model`` costs minutes per session)."""
    torch.manual_seed(0)
    return al.load_model("small_vgg_digits", weights="random")


@pytest.fixture(scope="module")
def xy():
    batch = al.load_images("digits", n=4)
    return batch.x, batch.y


def _attack(method, **params):
    return lambda m, x, y: al.attack(m, x, y, method=method, **params)


def _explain(method="gradcam", **kw):
    return lambda m, x, y: al.explain(m, x, method=method, **kw)


def _wrap(defense, **params):
    return lambda m, x, y: wrap(m, defense, **params)


# (call, substrings the message must contain: the parameter's name first)
CASES = {
    # --- the known failures of the issue
    "pgd loss_fn from the CLI": (_attack("pgd", loss_fn="abc"), ("loss_fn must be a callable", "command line")),
    "pgd random_start str": (_attack("pgd", random_start="maybe"), ("random_start must be True or False",)),
    "pgd eps bool": (_attack("pgd", eps=True), ("eps must", "bool")),
    "pgd eps > 1": (_attack("pgd", eps=2.0), ("eps must be a positive number <= 1",)),
    "pgd eps 0": (_attack("pgd", eps=0), ("eps must",)),
    "pgd eps nan": (_attack("pgd", eps=NAN), ("eps must", "not finite")),
    "pgd alpha 0": (_attack("pgd", alpha=0), ("alpha must",)),
    "pgd alpha negative": (_attack("pgd", alpha=-0.1), ("alpha must",)),
    "pgd steps 0": (_attack("pgd", steps=0), ("steps must be an int >= 1",)),
    "pgd steps negative": (_attack("pgd", steps=-3), ("steps must",)),
    "pgd steps float": (_attack("pgd", steps=2.5), ("steps must",)),
    "pgd steps str": (_attack("pgd", steps="10"), ("steps must",)),
    "pgd explainer str": (_attack("pgd", explainer="gradcam"), ("explainer must", "command line")),
    "pgd explainer key": (_attack("pgd", explainer={"methods": "gradcam"}), ("explainer has unknown key",)),
    "pgd weight str": (_attack("pgd", weight="abc"), ("weight must",)),
    "pgd unknown parameter": (_attack("pgd", epsilon=0.1), ("['epsilon']", "did you mean 'eps'", "accepted:")),
    "fgsm eps inf": (_attack("fgsm", eps=INF), ("eps must",)),
    "fgsm eps str": (_attack("fgsm", eps="0.1"), ("eps must", "str")),
    "ifgsm eps_step 0": (_attack("ifgsm", eps_step=0), ("eps_step must",)),
    "ifgsm max_eps > 1": (_attack("ifgsm", max_eps=5), ("max_eps must",)),
    "ifgsm eps_step > max_eps": (_attack("ifgsm", eps_step=0.2, max_eps=0.1), ("eps_step must be <= max_eps",)),
    "cw c negative": (_attack("cw", c=-1.0), ("c must be a positive number",)),
    "cw kappa negative": (_attack("cw", kappa=-1), ("kappa must be a non-negative number",)),
    "cw lr 0": (_attack("cw", lr=0), ("lr must",)),
    "cw binary_search_steps 0": (_attack("cw", binary_search_steps=0), ("binary_search_steps must",)),
    "cw steps bool": (_attack("cw", steps=True), ("steps must",)),
    "cw loss_fn int": (_attack("cw", loss_fn=3), ("loss_fn must be a callable",)),
    "stadv tau negative": (_attack("stadv", tau=-0.1), ("tau must",)),
    "stadv lr str": (_attack("stadv", lr="fast"), ("lr must",)),
    "stadv kappa nan": (_attack("stadv", kappa=NAN), ("kappa must",)),
    "onepixel pixels 0": (_attack("onepixel", pixels=0), ("pixels must",)),
    "onepixel pixels > image": (_attack("onepixel", pixels=5000), ("pixels must be an int in [1, 1024]",)),
    "onepixel popsize 3": (_attack("onepixel", popsize=3), ("popsize must be an int >= 4",)),
    "onepixel iterations 0": (_attack("onepixel", iterations=0), ("iterations must",)),
    "onepixel f > 2": (_attack("onepixel", f=2.5), ("f (the DE scale factor) must",)),
    "onepixel early_stop str": (_attack("onepixel", early_stop="yes"), ("early_stop must be True or False",)),
    "onepixel batch_size 0": (_attack("onepixel", batch_size=0), ("batch_size must",)),
    "dlfuzz strategy 7": (_attack("dlfuzz", strategy=7), ("strategy", "None, 0, 1, 2, 3")),
    "dlfuzz strategy bool": (_attack("dlfuzz", strategy=True), ("strategy",)),
    "dlfuzz scores": (_attack("dlfuzz", scores="prob"), ("scores must be one of", "did you mean 'probs'")),
    "dlfuzz layers int": (_attack("dlfuzz", layers=5), ("layers must",)),
    "dlfuzz layers unknown": (_attack("dlfuzz", layers=["nope"]), ("layer", "'nope'")),
    "dlfuzz neurons 0": (_attack("dlfuzz", neurons=0), ("neurons must",)),
    "dlfuzz step negative": (_attack("dlfuzz", step=-1), ("step must",)),
    "dlfuzz max_rel_l2 0": (_attack("dlfuzz", max_rel_l2=0), ("max_rel_l2 must",)),
    "dlfuzz threshold nan": (_attack("dlfuzz", threshold=NAN), ("threshold must",)),
    "dlfuzz tracker str": (_attack("dlfuzz", tracker="x"), ("tracker must",)),
    "dlfuzz top_k 0": (_attack("dlfuzz", top_k=0), ("top_k must",)),
    "adv2 base": (_attack("adv2", base="fgsm"), ("base attack 'fgsm'",)),
    "adv2 interpreter": (_attack("adv2", interpreter="lime"), ("interpreter 'lime'",)),
    "adv2 lam bool": (_attack("adv2", lam=True), ("lam must",)),
    "adv2 lam negative": (_attack("adv2", lam=-1.0), ("lam must",)),
    "advedge+ phi str": (_attack("advedge+", phi="x"), ("phi",)),
    "adv2 eps > 1": (_attack("adv2", eps=2), ("eps must",)),
    "adv2 steps 0": (_attack("adv2", steps=0), ("steps must",)),
    "adv2 layer int": (_attack("adv2", interpreter="gradcam", layer=5), ("layer must",)),
    "adv2 target_map str": (_attack("adv2", target_map="abc"), ("target_map must",)),
    "adv2 target_map nan": (_attack("adv2", target_map=torch.full((4, 32, 32), NAN)), ("target_map",)),
    "adv2 c on pgd": (_attack("adv2", c=1.0), ("['c'] do not apply to base 'pgd'",)),
    "adv2 cw c negative": (_attack("adv2", base="cw", c=-1.0), ("c must",)),
    "advedge stadv flow_tau": (_attack("advedge", base="stadv", flow_tau=-1.0), ("flow_tau must",)),
    "adv2 smooth_tau str": (_attack("adv2", interpreter="grad", smooth_tau="x"), ("smooth_tau must",)),
    "adv2 mask_steps negative": (_attack("adv2", interpreter="mask", mask_steps=-1), ("mask_steps must",)),
    "adv2 rts_data int": (_attack("adv2", interpreter="rts", rts_data=5), ("rts_data must",)),
    # --- arguments of attack() itself
    "unknown attack": (_attack("pgdd"), ("unknown attack 'pgdd'", "did you mean 'pgd'")),
    "y float": (lambda m, x, y: al.attack(m, x, torch.full((4,), 0.5), method="fgsm"), ("y must", "float")),
    "y out of range": (lambda m, x, y: al.attack(m, x, torch.tensor([0, 1, 2, 10]), method="fgsm"), ("y holds",)),
    "y shape": (lambda m, x, y: al.attack(m, x, y[:2], method="fgsm"), ("y must have shape [4]",)),
    "y str": (lambda m, x, y: al.attack(m, x, "abc", method="fgsm"), ("y must",)),
    "target out of range": (_attack("fgsm", target=10), ("target holds",)),
    "target float": (_attack("fgsm", target=1.5), ("target must",)),
    "target bool": (_attack("fgsm", target=True), ("target must",)),
    "target float tensor": (_attack("fgsm", target=torch.ones(4)), ("target must",)),
    "seed str": (_attack("fgsm", seed="a"), ("seed must",)),
    "seed float": (_attack("pgd", seed=1.5), ("seed must",)),
    "chunk_size 0": (_attack("fgsm", chunk_size=0), ("chunk_size must",)),
    # --- perturbation helpers
    "matched_noise strength nan": (lambda m, x, y: al.matched_noise(x, x, strength=NAN), ("strength must",)),
    "matched_noise strength negative": (lambda m, x, y: al.matched_noise(x, x, strength=-1), ("strength must",)),
    "matched_noise seed str": (lambda m, x, y: al.matched_noise(x, x, seed="0"), ("seed must",)),
    "scale_perturbation strength str": (lambda m, x, y: al.scale_perturbation(x, x, "2"), ("strength must",)),
    # --- explain
    "explain layers int": (_explain(layers=5), ("layers must",)),
    "explain layers unknown": (_explain(layers=["nope"]), ("layer", "'nope'")),
    "explain layers empty": (_explain(layers=[]), ("layers must",)),
    "explain batch_size 0": (_explain(batch_size=0), ("batch_size must",)),
    "explain batch_size str": (_explain(batch_size="x"), ("batch_size must",)),
    "explain unknown method": (_explain("gradkam"), ("explanation method 'gradkam'", "did you mean 'gradcam'")),
    "explain method int": (_explain(5), ("method must",)),
    "explain target float": (_explain(target=1.5), ("target must",)),
    "explain target bool": (_explain(target=True), ("target must",)),
    "explain target str": (_explain(target="a"), ("target must",)),
    "explain target out of range": (_explain(target=99), ("target class out of range",)),
    "explain normalize str": (_explain(normalize="yes"), ("normalize must be True or False",)),
    "explain create_graph int": (_explain(create_graph=1), ("create_graph must",)),
    "explain eps negative": (_explain("gradcam++", eps=-1), ("eps must",)),
    "explain seed float": (_explain("smoothgrad", seed=1.5), ("seed must",)),
    "explain option of another method": (_explain(n_samples=4), ("unknown explanation option(s) ['n_samples']",)),
    "explain_many methods str": (lambda m, x, y: al.explain_many(m, x, "gradcam"), ("methods must",)),
    "smoothgrad n_samples 0": (_explain("smoothgrad", n_samples=0), ("n_samples must",)),
    "smoothgrad noise_level negative": (_explain("smoothgrad", noise_level=-0.1), ("noise_level must",)),
    "grad tau str": (_explain("grad", tau="x"), ("tau must",)),
    "mask steps negative": (_explain("mask", steps=-1), ("steps must",)),
    "mask lr 0": (_explain("mask", lr=0), ("lr must",)),
    "mask blur_kernel even": (_explain("mask", blur_kernel=4), ("blur_kernel must be odd",)),
    "mask init > 1": (_explain("mask", init=2), ("init must",)),
    "mask mask_size 0": (_explain("mask", mask_size=0), ("mask_size must",)),
    "rts data int": (_explain("rts", data=5), ("data must",)),
    "lrp epsilon 0": (_explain("lrp", epsilon=0), ("epsilon must",)),
    # --- defenses
    "median k even": (_wrap("median", k=4), ("k (median window) must be odd",)),
    "median k float": (_wrap("median", k=3.0), ("k (median window) must",)),
    "squeeze bits 0": (_wrap("squeeze", bits=0), ("bits must be an int in [1, 8]",)),
    "squeeze bits bool": (_wrap("squeeze", bits=True), ("bits must",)),
    "blur sigma 0": (_wrap("blur", sigma=0), ("sigma (blur) must",)),
    "blur sigma nan": (_wrap("blur", sigma=NAN), ("sigma (blur) must",)),
    "blur sigma too large": (_wrap("blur", sigma=100), ("sigma 100",)),
    "jpeg quality 0": (_wrap("jpeg", quality=0), ("quality must be an int in [1, 100]",)),
    "jpeg quality 101": (_wrap("jpeg", quality=101), ("quality must",)),
    "jpeg quality float": (_wrap("jpeg", quality=50.5), ("quality must",)),
    "noise sigma negative": (_wrap("noise", sigma=-1), ("sigma (noise) must",)),
    "noise sigma str": (_wrap("noise", sigma="0.1"), ("sigma (noise) must",)),
    "wrap seed str": (_wrap("noise", seed="x"), ("seed must",)),
    "wrap unknown defense": (_wrap("medain"), ("defense 'medain'", "did you mean 'median'")),
    "wrap parameter of another defense": (_wrap("median", sigma=1.0), ("['sigma'] for defense 'median'",)),
    "eot 0": (lambda m, x, y: wrap(m, "noise").adaptive(0), ("--eot", "samples")),
    "eot str": (lambda m, x, y: wrap(m, "noise").adaptive("8"), ("--eot",)),
    "eot 0 on a deterministic defense": (lambda m, x, y: wrap(m, "median").adaptive(0), ("--eot",)),
    # --- training recipes (refused before any attack or training)
    "retrain epochs 0": (lambda m, x, y: retrain(m, "digits", epochs=0), ("epochs must",)),
    "retrain lr 0": (lambda m, x, y: retrain(m, "digits", lr=0), ("lr must",)),
    "retrain n_attack 0": (lambda m, x, y: retrain(m, "digits", n_attack=0), ("n_attack must",)),
    "retrain method": (lambda m, x, y: retrain(m, "digits", method="pgd"), ("retraining attack 'pgd'",)),
    "adversarial_train eps > 1": (lambda m, x, y: adversarial_train(m, "digits", eps=2), ("eps must",)),
    "adversarial_train steps 0": (lambda m, x, y: adversarial_train(m, "digits", steps=0), ("steps must",)),
    "adversarial_train alpha negative": (lambda m, x, y: adversarial_train(m, "digits", alpha=-1), ("alpha must",)),
    "adversarial_train gamma negative": (lambda m, x, y: adversarial_train(m, "digits", gamma=-1), ("gamma must",)),
    "adversarial_train epochs float": (lambda m, x, y: adversarial_train(m, "digits", epochs=1.5), ("epochs must",)),
    "adversarial_train lr str": (lambda m, x, y: adversarial_train(m, "digits", lr="x"), ("lr must",)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_parameter_fails_in_one_line_naming_it(model, xy, case):
    call, expected = CASES[case]
    x, y = xy
    with pytest.raises(AdvlensError) as err:
        call(model, x, y)
    message = str(err.value)
    assert "\n" not in message and message.strip() == message and message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_every_attack_and_defense_has_bad_parameter_cases():
    attacked = {c.split()[0].split("+")[0] for c in CASES}
    assert {m.rstrip("+") for m in al.list_attacks()} <= attacked
    assert set(TRANSFORMS) <= attacked


# valid parameters, given explicitly (numpy scalars and the bounds included), still run
VALID = {
    "fgsm": {"eps": np.float32(0.1)},
    "ifgsm": {"eps_step": 0.05, "max_eps": 0.1},
    "pgd": {"eps": 1, "alpha": 0.01, "steps": np.int64(2), "random_start": np.bool_(False)},
    "cw": {"c": 1, "kappa": 0, "steps": 2, "lr": 0.01, "binary_search_steps": 1},
    "stadv": {"tau": 0, "kappa": 0.0, "steps": 2, "lr": 0.01},
    "onepixel": {"pixels": 1, "popsize": 4, "iterations": 1, "f": 2, "batch_size": 8, "early_stop": False},
    "dlfuzz": {"strategy": None, "neurons": 2, "iterations": 1, "scores": "logits", "layers": ["block3_conv2"],
               "max_rel_l2": None},
    "adv2": {"interpreter": "gradcam", "layer": "block3_conv2", "steps": 1, "lam": 0, "eps": 0.03, "alpha": 0.01},
    "advedge": {"base": "cw", "interpreter": "cam", "steps": 1, "c": 1.0, "binary_search_steps": 1},
    "advedge+": {"base": "stadv", "interpreter": "cam", "steps": 1, "flow_tau": 0.0, "phi": 0},
}


@pytest.mark.parametrize("method", list(VALID))
def test_valid_parameters_still_work(model, xy, method):
    x, y = xy
    res = al.attack(model, x[:2], y[:2], method=method, **VALID[method])
    assert res.x_adv.shape == x[:2].shape and torch.isfinite(res.x_adv).all()


def test_every_attack_has_a_valid_run():
    assert set(VALID) == set(al.list_attacks())


def test_valid_defense_and_explain_parameters_still_work(model, xy):
    x, y = xy
    for name, params in {"median": {"k": np.int64(3)}, "squeeze": {"bits": 8}, "blur": {"sigma": 0.5},
                         "jpeg": {"quality": 100}, "noise": {"sigma": 1e-3}}.items():
        defended = wrap(model, name, seed=np.int64(1), **params)
        assert defended.adaptive(1).predict(x).shape == (4,)
    maps = al.explain(model, x, "gradcam", layers=("block3_conv2",), target=np.int64(3), eps=0,
                      normalize=np.bool_(True))
    assert maps["block3_conv2"].shape == (4, 32, 32)
    assert al.matched_noise(x, x, strength=0, seed=-1).equal(x)
