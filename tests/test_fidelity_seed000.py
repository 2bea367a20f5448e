"""Seed 000 (Renkhoff, Tan et al.) definitions pinned by independent computations: DLFuzz's neurons and
their coverage (numpy loops in float64), the coverage progression of Fig. 2, and the study's derived
tables (Figs. 6–7, the attack/noise table) on hand-made tables."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import advlens as al
from advlens._checks import AdvlensError
from advlens.metrics.coverage import coverage_layers, first_covered, neuron_coverage, neuron_values
from advlens.studies import layer_shift
from advlens.studies.runner import run_study
from advlens.studies.spec import load_spec

MEAN, STD = (0.5, 0.25, 0.375), (0.25, 0.5, 0.125)


@pytest.fixture(scope="module")
def net3() -> al.ClassifierModel:
    """conv(3→2, 3×3) → ReLU → maxpool 2 → flatten → linear(8→4) → ReLU → linear(4→3); explained: the ReLU "1"."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 4), nn.ReLU(),
                        nn.Linear(4, 3))
    return al.wrap(net, MEAN, STD, layers=["1"], input_size=(6, 6), name="net3").double().eval()


def _by_hand(model: al.ClassifierModel, x: torch.Tensor) -> list[np.ndarray]:
    """DLFuzz's neuron values of the four layers (conv+ReLU, pool, dense+ReLU, logits) with numpy loops."""
    p = {k: v.detach().numpy() for k, v in model.net.state_dict().items()}
    z = (x.numpy() - np.array(MEAN)[:, None, None]) / np.array(STD)[:, None, None]
    layers: list[list[np.ndarray]] = [[], [], [], []]
    for img in z:
        conv = np.zeros((2, 4, 4))
        for c in range(2):
            for i in range(4):
                for j in range(4):
                    conv[c, i, j] = (p["0.weight"][c] * img[:, i:i + 3, j:j + 3]).sum() + p["0.bias"][c]
        relu = np.maximum(conv, 0)
        pool = np.array([[[relu[c, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max() for j in range(2)] for i in range(2)]
                         for c in range(2)])
        dense = np.maximum(p["4.weight"] @ pool.reshape(-1) + p["4.bias"], 0)
        logits = p["6.weight"] @ dense + p["6.bias"]
        for k, a in enumerate((relu, pool, dense, logits)):
            s = (a - a.min()) / (a.max() - a.min())  # min–max over the whole layer
            layers[k].append(s.reshape(len(s), -1).mean(1) if s.ndim == 3 else s)  # spatial mean per channel
    return [np.stack(v) for v in layers]


def test_dlfuzz_neurons_and_coverage_by_hand(net3):
    x = torch.rand(5, 3, 6, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    assert [(l.name, type(l.module).__name__) for l in coverage_layers(net3)] == [
        ("1", "ReLU"), ("2", "MaxPool2d"), ("4", "ReLU"), ("6", "Linear")]  # no input, no flatten
    want = _by_hand(net3, x)
    got = neuron_values(net3, x)
    assert list(got) == ["1", "2", "4", "6"]
    for g, w in zip(got.values(), want):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-10, atol=1e-12)
    allv = np.concatenate(want, 1)  # [5, 2+2+4+3]
    for t in (0.1, 0.25, 0.6):
        assert neuron_coverage(net3, x, threshold=t) == pytest.approx((allv > t).any(0).sum() / 11)
    # option: the explainable layers only (the ReLU "1": 2 neurons)
    assert neuron_coverage(net3, x, layers="explained") == pytest.approx((want[0] > 0.25).any(0).mean())
    first = first_covered(torch.from_numpy(allv), 0.25)
    hand = [next((i for i in range(5) if allv[i, k] > 0.25), -1) for k in range(11)]
    assert first.tolist() == hand
    with pytest.raises(AdvlensError, match="layer of net3"):
        coverage_layers(net3, ["1", "nope"])


def test_coverage_progression_joins_chunks_in_order():
    # chunk 0: images 0-1, chunk 1: images 2-4 (positions in the data set: +2); 5 neurons
    first = pd.DataFrame({"chunk": [0, 0, 1, 1, 1], "condition": "noise", "strength": 1.0,
                          "neuron": [0, 3, 3, 1, 4], "first": [1, 0, 0, 2, 0]})
    attack = pd.DataFrame({"chunk": [1, 0], "images": [3, 2], "neurons": [5, 5]})
    prog = layer_shift.coverage_progression(first, attack)
    # earliest data-set positions: n0 → 1, n3 → 0, n1 → 4, n4 → 2; n2 never
    assert prog.images.tolist() == [1, 2, 3, 4, 5]
    np.testing.assert_allclose(prog.coverage, [1 / 5, 2 / 5, 3 / 5, 3 / 5, 4 / 5])
    with pytest.raises(AdvlensError, match="numbers of neurons"):
        layer_shift.coverage_progression(first, attack.assign(neurons=[5, 6]))


def test_derived_compromise_histogram_and_attack_tables():
    # one explainer, strength 1, 3 successful images, 2 layers; D_g medians: layer a 0.5, layer b 0.8
    rows = []
    for img, (da, db), (ga, gb) in zip("pqr", [(0.4, 0.9), (0.6, 0.7), (0.1, 0.2)],
                                       [(0.5, 0.8), (0.4, 0.9), (0.6, 0.7)]):
        for cond, va, vb in (("adversarial", da, db), ("noise", ga, gb)):
            rows += [{"image": img, "explainer": "gradcam", "strength": 1.0, "condition": cond, "layer": l,
                      "layer_index": i, "cosine": v, "attack_success": True} for i, (l, v) in enumerate(
                          (("a", va), ("b", vb)))]
    images = pd.DataFrame({"image": list("pqrpqr"), "strength": 1.0, "condition": ["adversarial"] * 3 + ["noise"] * 3,
                           "flipped": [True, True, False, False, False, True], "psnr": [30.0, 32, 34, 40, 42, 44],
                           "linf": [0.1, 0.3, 0.2, 0.5, 0.4, 0.6]})
    meta = {"spec": {"noise_rule": "median", "count": "successful"}}
    d = layer_shift.derived(meta, {"results": pd.DataFrame(rows), "images": images})
    prob = d["compromise_probability"].set_index("layer")
    # a: D_a < 0.5 for p (0.4), r (0.1) → 2/3; b: D_a < 0.8 for q (0.7), r (0.2) → 2/3
    assert prob.threshold.tolist() == [0.5, 0.8]
    np.testing.assert_allclose(prob.compromise_probability, [2 / 3, 2 / 3])
    hist = d["compromised_layers"]  # p: 1 layer, q: 1, r: 2
    assert hist.compromised_layers.tolist() == [1, 2] and hist.images.tolist() == [3, 3]
    np.testing.assert_allclose(hist.fraction_of_images, [2 / 3, 1 / 3])
    att = d["attack_noise"].set_index("condition")
    np.testing.assert_allclose(att.flip_rate, [2 / 3, 1 / 3])
    np.testing.assert_allclose(att.psnr_db, [32.0, 42.0])
    np.testing.assert_allclose(att.max_linf, [0.3, 0.6])


def test_study_records_coverage_matching_neuron_coverage(tmp_path, digits_model):
    spec_file = tmp_path / "spec.toml"
    spec_file.write_text('study = "layer_shift"\nmodel = "small_vgg_digits"\ndata = "digits"\nsplit = "test"\n'
                         'strengths = [1]\nexplainers = ["gradcam"]\nmetrics = ["cosine"]\nbatch_size = 3\n'
                         'limit = 5\nlayers = ["block3_conv2"]\n[attack]\nmethod = "fgsm"\neps = 0.05\n')
    out = tmp_path / "s"
    run_study(load_spec(spec_file), out, progress=False)
    prog = pd.read_parquet(out / "coverage_progression.parquet")
    final = pd.read_parquet(out / "neuron_coverage.parquet").set_index("condition")
    assert set(final.index) == {"clean", "adversarial", "noise"} and (prog.groupby("condition").images.max() == 5).all()
    assert prog.groupby("condition").coverage.apply(lambda c: c.is_monotonic_increasing).all()
    x = al.load_images("digits", split="test", size=digits_model.input_size)[:5].x
    assert final.loc["clean", "coverage"] == pytest.approx(neuron_coverage(digits_model, x))  # 282 DLFuzz neurons
    assert pd.read_parquet(out / "attack.parquet").neurons.tolist() == [282, 282]
    assert (out / "figures" / "coverage_adversarial_vs_noise.png").is_file()
    assert (out / "figures" / "coverage_per_strength.png").is_file()
    assert (out / "compromise_probability.parquet").is_file() and (out / "attack_noise.parquet").is_file()
