"""XGrad-CAM, the worked example of a new explainer (docs/contributing.md): one file, this test."""
from __future__ import annotations

import pytest
import torch

import advlens as al

pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam import XGradCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402


def test_xgradcam_is_registered_and_matches_pytorch_grad_cam(vgg16, x64):
    from advlens.explain import method_info

    info = method_info("xgradcam")
    assert info.kind == "layer" and info.differentiable and "xgradcam" in al.list_methods()
    layers = ["block3_conv1", "block5_conv3"]
    ours = al.explain(vgg16, x64, "xgradcam", layers=layers, target=7, eps=1e-7)  # pytorch-grad-cam's 1e-7
    for layer in layers:
        with XGradCAM(model=vgg16, target_layers=[vgg16.layers[layer]]) as cam:
            ref = cam(input_tensor=x64.clone().requires_grad_(True), targets=[ClassifierOutputTarget(7)] * len(x64))
        assert (ours[layer] - torch.from_numpy(ref)).abs().max().item() < 1e-4, layer
    # from the same single pass as Grad-CAM (explain_many), and differentiable like the Grad-CAM family
    both = al.explain_many(vgg16, x64[:2], ["gradcam", "xgradcam"], layers=layers[:1])
    alone = al.explain(vgg16, x64[:2], "xgradcam", layers=layers[:1])
    torch.testing.assert_close(both["xgradcam"][layers[0]], alone[layers[0]], atol=1e-6, rtol=0)
