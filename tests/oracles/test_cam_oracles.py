"""Our CAM maps against pytorch-grad-cam, torch-cam and the paper formula.

Normalization on both sides: the ReLU'd low-resolution map is upsampled bilinearly with
half-pixel centres to the input size and min-max normalized per map. pytorch-grad-cam does
min-max → cv2.resize (INTER_LINEAR, half-pixel) → min-max, which equals ours because min-max is
affine and bilinear resizing commutes with affine maps. torchcam's raw maps (``normalized=False``)
get exactly our upsampling + min-max in the test.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import advlens as al

pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

TOL = 1e-4
LAYERS = {
    "vgg16": ["block1_conv2", "block3_conv1", "block4_conv3", "block5_conv3"],
    "resnet50": ["stem", "layer1.2", "layer3.0", "layer4.2"],
}
PGC = {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "layercam": LayerCAM}


def _model(request, name):
    return request.getfixturevalue(name)


@pytest.mark.parametrize("arch", ["vgg16", "resnet50"])
@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_against_pytorch_grad_cam(request, arch, method, x64):
    model = _model(request, arch)
    target = 7
    # pytorch-grad-cam adds 1e-6 to the Grad-CAM++ alpha denominator; so do we here (eps=1e-6).
    # Our weights are frozen, so its input must require grad for it to get a graph.
    ours = al.explain(model, x64, method, layers=LAYERS[arch], target=target, eps=1e-6)
    for layer in LAYERS[arch]:
        with PGC[method](model=model, target_layers=[model.layers[layer]]) as cam:
            ref = cam(input_tensor=x64.clone().requires_grad_(True), targets=[ClassifierOutputTarget(target)] * len(x64))
        diff = (ours[layer] - torch.from_numpy(ref)).abs().max().item()
        assert diff < TOL, f"{arch} {method} {layer}: max abs diff {diff:.2e}"


@pytest.mark.parametrize("arch", ["vgg16", "resnet50"])
@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_against_torchcam(request, arch, method, x64):
    torchcam = pytest.importorskip("torchcam.methods")
    model = _model(request, arch)
    layers = LAYERS[arch]
    ours = al.explain(model, x64, method, layers=layers, target=3)
    cls = {"gradcam": torchcam.GradCAM, "layercam": torchcam.LayerCAM}[method]
    x = x64.clone().requires_grad_(True)  # our model's weights are frozen; torchcam needs a graph
    with cls(model, target_layer=[model.layers[n] for n in layers]) as extractor:
        scores = model(x)
        raw = extractor(class_idx=[3] * len(x), scores=scores, normalized=False)
    for layer, r in zip(layers, raw):
        up = F.interpolate(r[:, None].detach(), size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        ref = _minmax(up)
        diff = (ours[layer] - ref).abs().max().item()
        assert diff < TOL, f"{arch} {method} {layer}: max abs diff {diff:.2e}"


def _minmax(m: torch.Tensor) -> torch.Tensor:
    lo = m.amin(dim=(1, 2), keepdim=True)
    hi = m.amax(dim=(1, 2), keepdim=True)
    return (m - lo) / (hi - lo).clamp_min(1e-12)


def _paper_gradcam_pp(A: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Grad-CAM++ from Chattopadhay et al. eq. 19 / seed 002 eqs. 10-12, float64, channel by channel."""
    n, k = A.shape[:2]
    out = np.zeros((n,) + A.shape[2:])
    for i in range(n):
        for c in range(k):
            a, gr = A[i, c], g[i, c]
            den = 2 * gr**2 + a.sum() * gr**3
            alpha = np.divide(gr**2, den, out=np.zeros_like(gr), where=den != 0)
            out[i] += (alpha * np.maximum(gr, 0)).sum() * a
    return np.maximum(out, 0)


@pytest.mark.parametrize("arch", ["vgg16", "resnet50"])
def test_gradcam_pp_matches_paper_formula(request, arch, x64):
    """Without eps, our Grad-CAM++ is the paper's formula (checked in float64, loop by loop)."""
    model = _model(request, arch)
    layer = LAYERS[arch][2]
    from advlens.explain import forward_backward
    from advlens.explain.api import normalize_maps

    fb = forward_backward(model, x64, [layer], target=5)
    ref = _paper_gradcam_pp(fb.acts[layer].double().numpy(), fb.grads[layer].double().numpy())
    ref_up = F.interpolate(torch.from_numpy(ref)[:, None].float(), size=x64.shape[-2:], mode="bilinear",
                           align_corners=False)[:, 0]
    ours = al.explain(model, x64, "gradcam++", layers=[layer], target=5)[layer]
    assert (ours - normalize_maps(ref_up)).abs().max().item() < TOL
