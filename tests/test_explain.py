"""The explanation engine: one pass for all layers, hygiene, differentiability, errors."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

import advlens as al
from advlens.explain import cam as cam_fns
from advlens.explain import forward_backward, normalize_maps


def test_all_13_vgg_layers_from_one_forward_and_one_backward(vgg16, x64, monkeypatch):
    layers = list(vgg16.layers)
    assert layers == [f"block{b}_conv{k}" for b, n in [(1, 2), (2, 2), (3, 3), (4, 3), (5, 3)] for k in range(1, n + 1)]
    forwards, grad_calls, backward_visits = [], [], []
    h1 = vgg16.net.register_forward_pre_hook(lambda m, i: forwards.append(1))

    def count_backward(module, inputs, output):  # a tensor hook fires once per backward through it
        output.register_hook(lambda g: backward_visits.append(1))

    h2 = vgg16.net.features[0].register_forward_hook(count_backward)
    real_grad = torch.autograd.grad
    monkeypatch.setattr(torch.autograd, "grad", lambda *a, **k: grad_calls.append(1) or real_grad(*a, **k))
    try:
        maps = al.explain_many(vgg16, x64, ["gradcam", "gradcam++", "layercam", "noisecam", "saliency"])
    finally:
        h1.remove()
        h2.remove()
    assert len(forwards) == 1 and len(grad_calls) == 1 and len(backward_visits) == 1
    assert set(maps["gradcam"]) == set(layers) and len(maps["gradcam"]) == 13


def test_hooks_removed_and_inplace_restored_even_on_error(x64):
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3), nn.ReLU(inplace=True),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    model = al.wrap(net, (0.5,) * 3, (0.5,) * 3, layers=["0", "1", "3"])
    maps = al.explain(model, x64, "gradcam")
    assert set(maps) == {"0", "1", "3"}
    with pytest.raises(al.AdvlensError, match="out of range"):
        al.explain(model, x64, "gradcam", target=99)
    assert all(not m._forward_hooks for m in net.modules())
    assert net[1].inplace is True and net[3].inplace is True


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam", "noisecam", "saliency", "smoothgrad"])
def test_maps_are_finite_in_unit_range_at_input_size(resnet50, x64, method):
    maps = al.explain(resnet50, x64, method, layers=["layer2.0", "layer4.2"], n_samples=3) if method == "smoothgrad" \
        else al.explain(resnet50, x64, method, layers=["layer2.0", "layer4.2"])
    for m in maps.values():
        assert m.shape == (2, 64, 64)
        assert torch.isfinite(m).all() and m.min() >= 0 and m.max() <= 1
        assert not m.requires_grad


def _tiny_double() -> al.ClassifierModel:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Softplus(), nn.Conv2d(4, 5, 3, padding=1), nn.Softplus(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)).double()
    with torch.no_grad():  # positive head and last conv: maps of class 1 are not all zero
        net[-1].weight.abs_()
        net[2].weight.abs_()
    model = al.wrap(net, (0.5,) * 3, (0.25,) * 3, layers=["1", "3"], labels=["a", "b", "c"], input_size=(6, 6))
    return model.double()


@pytest.mark.parametrize("method, normalize", [
    ("gradcam", False), ("gradcam", True), ("gradcam++", False), ("layercam", False), ("saliency", False),
])
def test_maps_are_differentiable_and_match_finite_differences(method, normalize):
    model = _tiny_double()
    x = torch.rand(2, 3, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 0.8 + 0.1
    x.requires_grad_(True)
    weights = torch.rand(2, 6, 6, dtype=torch.float64)

    def f(inp):
        maps = al.explain(model, inp, method, target=1, create_graph=True, normalize=normalize)
        return sum((m * weights).sum() for m in maps.values())

    (g,) = torch.autograd.grad(f(x), x)
    assert g.abs().sum() > 0
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-5, rtol=1e-3)


def test_cam_equals_relu_free_gradcam_on_global_pool_head(digits_model, digits_test):
    """For GAP + linear, dScore/dA = W[c,k]/(h·w), so Grad-CAM = ReLU(CAM)/(h·w) at that layer."""
    x = digits_test.x[:4]
    layer = digits_model.cam_layer
    p = forward_backward(digits_model, x, [layer])
    A, g = p.acts[layer], p.grads[layer]
    raw_cam = cam_fns.cam(A, digits_model.classifier.weight[p.target])
    h, w = A.shape[-2:]
    assert (raw_cam < 0).any() and (raw_cam > 0).any()
    assert torch.allclose(raw_cam.clamp_min(0), cam_fns.gradcam(A, g) * h * w, atol=1e-4, rtol=1e-4)
    ours = al.explain(digits_model, x, "cam")[layer]
    up = torch.nn.functional.interpolate(raw_cam[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(ours, normalize_maps(up), atol=1e-5)


def test_noisecam_is_global_minus_pixel_weights(vgg16, x64):
    """Seed 002 eqs. 16-17 by hand: ReLU(sum_k (w_k - ReLU(g)) A)."""
    p = forward_backward(vgg16, x64, ["block1_conv2"], target=0)
    A, g = p.acts["block1_conv2"].double(), p.grads["block1_conv2"].double()
    w = cam_fns.gradcam_pp_weights(A, g)
    expected = torch.relu(((w - torch.relu(g)) * A).sum(1))
    got = al.explain(vgg16, x64, "noisecam", layers=["block1_conv2"], target=0, normalize=False)["block1_conv2"]
    assert torch.allclose(got.double(), expected, rtol=1e-4, atol=1e-6 * expected.abs().max().item())


def test_smoothgrad_is_seeded_and_reduces_to_saliency_without_noise(digits_model, digits_test):
    x = digits_test.x[:3]
    a = al.explain(digits_model, x, "smoothgrad", seed=1, n_samples=4)["input"]
    b = al.explain(digits_model, x, "smoothgrad", seed=1, n_samples=4)["input"]
    c = al.explain(digits_model, x, "smoothgrad", seed=2, n_samples=4)["input"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    flat = al.explain(digits_model, x, "smoothgrad", n_samples=2, noise_level=0.0)["input"]
    sal = al.explain(digits_model, x, "saliency")["input"]
    assert torch.allclose(flat, sal, atol=1e-5)


def test_batch_size_gives_the_same_maps(digits_model, digits_test):
    x = digits_test.x[:5]
    full = al.explain(digits_model, x, "layercam")
    chunked = al.explain(digits_model, x, "layercam", batch_size=2)
    assert all(torch.allclose(full[k], chunked[k], atol=1e-5) for k in full)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "gradkam"}, "unknown explanation method 'gradkam'; did you mean 'gradcam'"),
        ({"layers": ["block9_conv1"]}, "unknown layer of vgg16 'block9_conv1'"),
        ({"target": torch.tensor([1, 2, 3])}, "target must be an int or a tensor of shape"),
        ({"method": "cam"}, "cam needs a model with global pooling"),
        ({"n_samples": 4}, "unknown explanation option(s) ['n_samples']"),
    ],
)
def test_bad_requests_fail_clearly(vgg16, x64, kwargs, message):
    with pytest.raises(al.AdvlensError, match=re.escape(message)):
        al.explain(vgg16, x64, **kwargs)


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.rand(3, 64, 64), r"shape \[N,C,H,W\].*add a batch dimension"),
        (torch.full((1, 3, 8, 8), float("nan")), "NaN"),
        (torch.rand(1, 1, 8, 8), "3 channels"),
        (torch.rand(1, 3, 8, 8) * 255, r"must be in \[0,1\]"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "float tensor"),
    ],
)
def test_bad_images_fail_clearly(vgg16, x, message):
    with pytest.raises(al.AdvlensError, match=message):
        al.explain(vgg16, x)


def test_plain_module_is_rejected_with_a_hint(x64):
    with pytest.raises(al.AdvlensError, match="al.wrap"):
        al.explain(nn.Conv2d(3, 3, 1), x64)


def test_explain_many_returns_the_logits_of_its_own_forward(digits_model, digits_test):
    x = digits_test.x[:4]
    with torch.no_grad():
        expected = digits_model(x)
    forwards = []
    h = digits_model.net.register_forward_pre_hook(lambda m, i: forwards.append(1))
    try:
        maps, logits = al.explain_many(digits_model, x, ["gradcam", "saliency"], return_logits=True)
    finally:
        h.remove()
    assert len(forwards) == 1 and torch.allclose(logits, expected, atol=1e-5)
    assert set(maps) == {"gradcam", "saliency"}


def test_grad_is_saliency_with_a_nonzero_hessian(digits_model, digits_test):
    """Seed 004 Sec. IV-C: the ReLU net's saliency has a zero Hessian, so attacks on it cannot move
    the map; the smoothed-ReLU Grad keeps (almost) the same map but is twice differentiable."""
    x = digits_test.x[:4]
    sal = al.explain(digits_model, x, "saliency")["input"]
    grad = al.explain(digits_model, x, "grad")["input"]
    assert al.metrics.cosine(sal, grad).min() > 0.99
    hess = {}
    for m in ("saliency", "grad"):
        xr = x.clone().requires_grad_(True)
        raw = al.explain(digits_model, xr, m, create_graph=True, normalize=False)["input"]
        (hess[m],) = torch.autograd.grad(raw.pow(2).sum(), xr, allow_unused=False)
    assert hess["saliency"].abs().max() < 1e-6  # piecewise-linear network: no second-order signal
    assert hess["grad"].abs().max() > 1e-3 and torch.isfinite(hess["grad"]).all()
    # forward values and the model are untouched by the smoothing
    assert "forward" not in vars(digits_model.layers["block1_conv1"])
    with pytest.raises(al.AdvlensError, match="tau"):
        al.explain(digits_model, x, "grad", tau=0.0)
    with pytest.raises(al.AdvlensError, match="unknown explanation option"):
        al.explain(digits_model, x, "grad", n_samples=3)
