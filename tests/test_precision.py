"""bf16 autocast and channels_last (``ClassifierModel.set_precision``) against fp32, on the CPU.

Measured on 256 digits test images (small VGG, 2 CPU threads): Grad-CAM median cosine to the fp32 map
0.999-1.0 at every layer, LayerCAM 0.984-1.0 (the first two layers are the least stable); PGD-20
success decisions identical on 100 % of the images (PGD-10: 99.2 %, FGSM: 95 %, single steps sit on the
decision boundary).
"""
from __future__ import annotations

import pytest
import torch

import advlens as al
from advlens._checks import AdvlensError
from advlens.metrics import cosine


@pytest.fixture
def model(digits_model):
    yield digits_model
    digits_model.set_precision("fp32")


def test_bf16_maps_and_attack_decisions_agree_with_fp32(model, digits_test):
    x, y = digits_test.x[:128], digits_test.y[:128]
    ref = {m: al.explain(model, x, m) for m in ("gradcam", "layercam")}
    r32 = al.attack(model, x, y, "pgd", eps=0.031, alpha=0.031 / 8, steps=20)
    model.set_precision("bf16", channels_last=True)
    assert model(x[:2]).dtype == torch.float32
    for method, floor in (("gradcam", 0.99), ("layercam", 0.98)):
        maps = al.explain(model, x, method)
        for layer, m in maps.items():
            assert m.dtype == torch.float32 and torch.isfinite(m).all()
            assert float(cosine(ref[method][layer], m).median()) >= floor, (method, layer)
        last = list(maps)[-1]
        assert float(cosine(ref[method][last], maps[last]).min()) >= 0.99
    rb = al.attack(model, x, y, "pgd", eps=0.031, alpha=0.031 / 8, steps=20)
    assert float((rb.success == r32.success).float().mean()) >= 0.97
    assert (rb.x_adv - x).abs().max() <= 0.031 + 1e-6
    xs = x[:4].clone().requires_grad_(True)
    (g,) = al.explain(model, xs, "gradcam", layers=[last], create_graph=True).values()
    (dx,) = torch.autograd.grad(g.sum(), xs)  # differentiable maps still work
    assert dx.dtype == torch.float32 and torch.isfinite(dx).all() and dx.abs().sum() > 0
    model.set_precision("fp32")
    assert torch.equal(al.explain(model, x, "gradcam")[last], ref["gradcam"][last])  # fp32 comes back exactly


def test_channels_last_alone_keeps_fp32_results(model, digits_test):
    x = digits_test.x[:32]
    ref = al.explain(model, x, "gradcam")
    model.set_precision("fp32", channels_last=True)
    for layer, m in al.explain(model, x, "gradcam").items():
        assert torch.allclose(m, ref[layer], atol=1e-4), layer
    with pytest.raises(AdvlensError, match="unknown precision 'fp16'"):
        model.set_precision("fp16")


def test_bf16_on_a_cpu_without_native_bf16_warns(model, monkeypatch, caplog):
    from advlens.models import wrapper

    for native, warned in ((False, True), (True, False)):
        monkeypatch.setattr(wrapper, "_cpu_has_bf16", lambda native=native: native)
        caplog.clear()
        with caplog.at_level("WARNING", logger="advlens.models.wrapper"):
            model.set_precision("bf16")
        assert ("runs 18-25x slower than fp32" in caplog.text) is warned
        model.set_precision("fp32")
