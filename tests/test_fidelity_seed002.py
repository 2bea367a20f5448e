"""Seed 002 (Tan et al.) definitions pinned on independent computations: the per-image PCA of step 1 against
scikit-learn in float64, step 5's median rule on hand-built deviations, the VGG-16 probe layer, and both
NoiseCAM forms against explicit loops over the formulas on a tiny float64 conv net."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import advlens as al
from advlens.detect import BehaviorDeviation, NoiseCAMDetector
from advlens.detect.behavior import pca_reconstruct, probe_layer
from advlens.models import ClassifierModel


def _image() -> torch.Tensor:
    """One float64 image ``[1,3,20,16]`` in [0,1]: a rank-3 pattern per channel plus small noise, so 99 % of the
    variance needs a few of the 16 components (the PCA truncates)."""
    g = torch.Generator().manual_seed(0)
    u, v = torch.rand(3, 20, 3, generator=g, dtype=torch.float64), torch.rand(3, 3, 16, generator=g, dtype=torch.float64)
    x = u @ v / 3 + 0.02 * torch.rand(3, 20, 16, generator=g, dtype=torch.float64)
    return x.clamp(0, 1)[None]


def _sklearn_pca(m: torch.Tensor) -> tuple[torch.Tensor, int]:
    from sklearn.decomposition import PCA

    pca = PCA(n_components=0.99, svd_solver="full").fit(m.numpy())
    return torch.from_numpy(pca.inverse_transform(pca.transform(m.numpy()))), pca.n_components_


def test_step1_pca_per_image_matches_sklearn():
    """Seed 002 Sec. III-D step 1: PCA of the input itself keeping 99 % of its variance — per channel (rows are
    samples, the default) and as one H×(W·C) matrix — equals scikit-learn's PCA(0.99) reconstruction."""
    x = _image()
    want, ks = zip(*(_sklearn_pca(x[0, c]) for c in range(3)))
    assert all(1 < k < 16 for k in ks)  # the 99 % cut keeps some, not all, components
    got = pca_reconstruct(x[0], 0.99)
    torch.testing.assert_close(got, torch.stack(want), atol=1e-10, rtol=0)
    torch.testing.assert_close(BehaviorDeviation().clean(x)[0], torch.stack(want).clamp(0, 1), atol=1e-10, rtol=0)
    rows = x[0].permute(1, 2, 0).reshape(20, 16 * 3)  # H × (W·C)
    want_img, k_img = _sklearn_pca(rows)
    assert 1 < k_img < 20
    got_img = BehaviorDeviation(pca="image").clean(x)[0].permute(1, 2, 0).reshape(20, 48)
    torch.testing.assert_close(got_img, want_img.clamp(0, 1), atol=1e-10, rtol=0)
    torch.testing.assert_close(pca_reconstruct(x[0], 1.0), x[0], atol=1e-12, rtol=0)  # all components: exact


def test_step5_paper_rule_and_calibrated_option_on_hand_built_deviations():
    """Seed 002 step 5 with Sec. III-D's "compromised": flagged when D_o is below the median D_g (threshold 0).
    Input 0: D_g {0.9, 0.7, 0.95, 0.85}, median (0.85 + 0.9) / 2 = 0.875, D_o 0.88 → −0.005, not flagged;
    input 1: D_g {0.8, 0.6, 0.5, 0.9}, median 0.7, D_o 0.65 → 0.05, flagged."""
    d_g = torch.tensor([[0.9, 0.8], [0.7, 0.6], [0.95, 0.5], [0.85, 0.9]], dtype=torch.float64)
    d_o = torch.tensor([0.88, 0.65], dtype=torch.float64)
    det = BehaviorDeviation()
    assert det.rule == "paper" and det.threshold == 0.0
    score = det.compare(d_o, d_g)
    torch.testing.assert_close(score, torch.tensor([-0.005, 0.05], dtype=torch.float64), atol=1e-12, rtol=0)
    assert (score > det.threshold).tolist() == [False, True]
    # option "calibrated": (mean − D_o) / std (n − 1); input 0: mean 0.85, std √(0.035 / 3)
    z = BehaviorDeviation(rule="calibrated").compare(d_o, d_g)
    assert z[0].item() == pytest.approx((0.85 - 0.88) / math.sqrt(0.035 / 3), abs=1e-12)


def test_vgg16_default_probe_is_block5_conv1():
    """Seed 002 step 4: "the first convolution layer in block 5" of VGG-16; NoiseCAM: its third conv layer."""
    model = al.load_model("vgg16", weights="random")
    assert probe_layer(list(model.layers)) == "block5_conv1"
    x = torch.rand(1, 3, 224, 224)
    assert BehaviorDeviation(copies=2).fit(model, x).layer == "block5_conv1"
    assert NoiseCAMDetector().fit(model, x).layer == "block2_conv1"
    assert probe_layer(["a", "b", "c", "d", "e", "f"]) == "e"  # no block names: two thirds deep


# --------------------------------------------------------------------------- NoiseCAM by hand
def _tiny_model() -> ClassifierModel:
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)).double().eval()
    layers = {"conv1": net[1], "conv2": net[3]}
    return ClassifierModel(net, (0.5,) * 3, (0.5,) * 3, layers, ["a", "b", "c"], (6, 6), "tiny")


def _by_hand(model: ClassifierModel, x: torch.Tensor, form: str) -> torch.Tensor:
    """NoiseCAM at ``conv1`` of one image by explicit loops over k, i, j (seed 002 eqs. 9–17, or the code form)."""
    net = model.net
    z = (x - 0.5) / 0.5
    A = net[1](net[0](z)).detach().requires_grad_(True)
    logits = net[4:](net[3](net[2](A)))
    c = int(logits.argmax())
    (g,) = torch.autograd.grad(logits[0, c], A)
    A, g, S = A[0].detach(), g[0], float(logits[0, c].detach())
    K, H, W = A.shape
    pix = [(i, j) for i in range(H) for j in range(W)]
    out = torch.zeros(H, W, dtype=torch.float64)
    for k in range(K):
        sum_a = sum(float(A[k, a, b]) for a, b in pix)
        e = math.exp(S) if form == "code" else 1.0
        alpha = {}
        for i, j in pix:
            gij = float(g[k, i, j])
            num, den = e * gij ** 2, 2 * e * gij ** 2 + e * gij ** 3 * sum_a
            if form == "code":
                alpha[i, j] = num / (den if num != 0 else den + 1.0)
            else:
                alpha[i, j] = num / den if den != 0 else 0.0
        total = sum(alpha.values()) if form == "code" else 1.0
        w_k = sum(max(e * float(g[k, i, j]), 0.0) * alpha[i, j] / (total or 1.0) for i, j in pix)
        for i, j in pix:
            out[i, j] += (w_k - max(float(g[k, i, j]), 0.0)) * float(A[k, i, j])
    return out.clamp_min(0)


@pytest.mark.parametrize("form", ["paper", "code"])
def test_noisecam_forms_match_the_formulas_by_hand(form):
    """Seed 002 eqs. 15–17 (default) and the authors' code form (e^S on the Grad-CAM++ weight, α / Σα)."""
    model = _tiny_model()
    x = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    det = NoiseCAMDetector(layer="conv1", noisecam_form=form).fit(model, x)
    got = det.raw_maps(x)
    want = torch.stack([_by_hand(model, x[n : n + 1], form) for n in range(2)])
    assert want.abs().max() > 0  # a map that is not all zero
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)
    other = NoiseCAMDetector(layer="conv1", noisecam_form="code" if form == "paper" else "paper").fit(model, x)
    assert not torch.allclose(other.maps(x), det.maps(x), atol=1e-3)  # the two forms do differ here
