"""LRP against zennit used by hand, and against the rules written out in plain torch.

zennit side: the composite, canonizers and ``zennit.attribution.Gradient`` built here directly on
``model.net`` with the normalized input ``(x − mean) / std`` and the output relevance "target
logit, one-hot". Our small VGG pools with a functional ``mean``; the hand-built reference runs the
same modules as an ``nn.Sequential`` with an ``AdaptiveAvgPool2d`` module (which is what our
canonizer does), so that part is checked too. Both maps are min–max normalized before comparing.

Plain-torch side: a tiny bias-free conv→ReLU→conv→ReLU→GAP→Linear network where every rule (flat,
z⁺, epsilon, the proportional pooling rule) is written as explicit messages between units with
``unfold``/``fold`` — no zennit, no autograd — to guard against using zennit wrongly on both sides.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from zennit.attribution import Gradient
from zennit.canonizers import SequentialMergeBatchNorm
from zennit.composites import EpsilonAlpha2Beta1Flat, EpsilonPlus, EpsilonPlusFlat
from zennit.torchvision import ResNetCanonizer, VGGCanonizer

import advlens as al
from advlens.explain.api import normalize_maps
from advlens.explain.lrp import lrp

TOL = 1e-4
COMPOSITES = {
    "epsilon_plus_flat": EpsilonPlusFlat,
    "epsilon_alpha2_beta1_flat": EpsilonAlpha2Beta1Flat,
    "epsilon_plus": EpsilonPlus,
}


def _zennit_by_hand(net: nn.Module, model: al.ClassifierModel, x: torch.Tensor, target: torch.Tensor,
                    composite: str, canonizers: list) -> torch.Tensor:
    """Relevance ``[N,H,W]`` with zennit's own Gradient attributor on ``net`` (normalized input)."""
    xn = (x - model.mean) / model.std
    comp = COMPOSITES[composite](epsilon=0.1, canonizers=canonizers)

    def start(out: torch.Tensor) -> torch.Tensor:  # target logit, one-hot
        return F.one_hot(target, out.shape[1]).to(out) * out.detach()

    with Gradient(model=net, composite=comp) as attributor:
        _, rel = attributor(xn, start)
    return rel.sum(1)


def _max_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return (normalize_maps(ours) - normalize_maps(ref)).abs().max().item()


@pytest.mark.parametrize("composite", list(COMPOSITES))
def test_small_vgg_matches_zennit(digits_model, digits_test, composite):
    x = digits_test.x[:8]
    target = digits_model.predict(x)
    net = digits_model.net
    seq = nn.Sequential(net.features, nn.AdaptiveAvgPool2d(1), nn.Flatten(), net.fc)  # same modules
    ref = _zennit_by_hand(seq, digits_model, x, target, composite, [SequentialMergeBatchNorm()])
    ours = lrp(digits_model, x, composite=composite)
    diff = _max_diff(ours, ref)
    assert diff < TOL, f"small VGG {composite}: max abs diff {diff:.2e}"


@pytest.mark.parametrize("arch,canonizer", [("vgg16", VGGCanonizer), ("resnet50", ResNetCanonizer)])
def test_torchvision_matches_zennit(request, x64, arch, canonizer):
    model = request.getfixturevalue(arch)
    target = torch.tensor([7, 401])
    ref = _zennit_by_hand(model.net, model, x64, target, "epsilon_plus_flat", [canonizer()])
    ours = lrp(model, x64, target=target)
    diff = _max_diff(ours, ref)
    assert diff < TOL, f"{arch}: max abs diff {diff:.2e}"


# --------------------------------------------------------------------------- rules by hand
def _stab(z: torch.Tensor, eps: float) -> torch.Tensor:
    """z + eps·sign(z), with sign(0) = +1 (zennit's stabilizer convention)."""
    return z + eps * torch.where(z >= 0, 1.0, -1.0)


def _conv_messages(a: torch.Tensor, w: torch.Tensor, r_out: torch.Tensor, rule: str) -> torch.Tensor:
    """Relevance of a 3×3 / padding-1 conv's input ``a`` ``[N,C,H,W]`` from ``r_out`` ``[N,O,H,W]``.

    Unit ``i`` (a patch element) receives ``Σ_j c_ij / Σ_i' c_i'j · R_j`` from output ``j`` with
    contributions ``c_ij = a_i w_ij`` restricted to positive ones (z⁺: ``a⁺w⁺ + a⁻w⁻``) or
    ``c_ij = 1`` (flat rule); messages to the same pixel from overlapping patches are summed by fold.
    """
    h, wd = a.shape[2:]
    patches = F.unfold(a, 3, padding=1)  # [N, C·9, L]
    wm = w.flatten(1)  # [O, C·9]
    rj = r_out.flatten(2)  # [N, O, L]
    if rule == "flat":  # inputs and weights all 1 (padding still reads 0)
        valid = F.unfold(torch.ones_like(a), 3, padding=1)  # [N, C·9, L]: 1 inside the image
        denom = valid.sum(1, keepdim=True).expand_as(rj)  # Σ_i 1·1 for every output j
        msg = valid * (rj / _stab(denom, 1e-6)).sum(1, keepdim=True)
    else:
        pos, neg = patches.clamp(min=0), patches.clamp(max=0)
        wp, wn = wm.clamp(min=0), wm.clamp(max=0)
        denom = torch.einsum("nil,oi->nol", pos, wp) + torch.einsum("nil,oi->nol", neg, wn)
        s = rj / _stab(denom, 1e-6)
        msg = pos * torch.einsum("oi,nol->nil", wp, s) + neg * torch.einsum("oi,nol->nil", wn, s)
    return F.fold(msg, (h, wd), 3, padding=1)


def _lrp_by_hand(net: nn.Sequential, xn: torch.Tensor, target: torch.Tensor, eps: float, first: str) -> torch.Tensor:
    """Relevance ``[N,H,W]`` of ``net`` = conv, ReLU, conv, ReLU, GAP, Flatten, Linear (no biases)."""
    c1, c2, fc = net[0].weight, net[2].weight, net[6].weight
    a1 = F.conv2d(xn, c1, padding=1).clamp(min=0)
    a2 = F.conv2d(a1, c2, padding=1).clamp(min=0)
    g = a2.mean(dim=(2, 3))  # [N,K]
    z = g @ fc.T  # [N,C]
    r_z = torch.zeros_like(z)
    r_z[torch.arange(len(z)), target] = z[torch.arange(len(z)), target]
    r_g = g * ((r_z / _stab(z, eps)) @ fc)  # epsilon rule
    hw = a2.shape[2] * a2.shape[3]
    r_a2 = a2 / hw * (r_g / _stab(g, 1e-6))[:, :, None, None]  # pooling: share ∝ contribution a/HW
    r_a1 = _conv_messages(a1, c2, r_a2, "zplus")  # ReLU passes relevance on unchanged
    r_x = _conv_messages(xn, c1, r_a1, first)
    return r_x.sum(1)


def tiny_bias_free_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3, bias=False),
    )


@pytest.mark.parametrize("composite,first", [("epsilon_plus_flat", "flat"), ("epsilon_plus", "zplus")])
def test_rules_written_out_in_plain_torch(composite, first):
    net = tiny_bias_free_net()
    model = al.wrap(net, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), ["1", "3"], labels=["a", "b", "c"], input_size=(10, 12))
    x = torch.rand(3, 3, 10, 12, generator=torch.Generator().manual_seed(2))
    target = torch.tensor([0, 2, 1])
    ref = _lrp_by_hand(net, (x - model.mean) / model.std, target, 0.1, first)
    ours = lrp(model, x, target=target, composite=composite)
    raw = (ours - ref).abs().max().item() / ref.abs().max().item()
    assert raw < 1e-5, f"{composite}: raw relative diff {raw:.2e}"
    assert _max_diff(ours, ref) < TOL
