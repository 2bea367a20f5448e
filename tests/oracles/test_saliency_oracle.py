"""Saliency against captum's ``Saliency(abs=True)``, reduced by max over channels on both sides."""
from __future__ import annotations

import pytest

import advlens as al

captum_attr = pytest.importorskip("captum.attr")


@pytest.mark.parametrize("arch", ["vgg16", "resnet50"])
def test_saliency_matches_captum(request, arch, x64):
    model = request.getfixturevalue(arch)
    raw = al.explain(model, x64, "saliency", target=4, normalize=False)["input"]
    ref = captum_attr.Saliency(model).attribute(x64.clone().requires_grad_(True), target=4, abs=True).amax(1)
    scale = ref.abs().max().item()
    assert scale > 0
    assert (raw - ref).abs().max().item() <= 1e-4 * scale
    normed = al.explain(model, x64, "saliency", target=4)["input"]
    lo, hi = ref.amin((1, 2), keepdim=True), ref.amax((1, 2), keepdim=True)
    assert (normed - (ref - lo) / (hi - lo)).abs().max().item() < 1e-4
