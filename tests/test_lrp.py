"""LRP (zennit): shapes, targets, conservation, hook and canonizer hygiene, errors, warnings."""
from __future__ import annotations

import copy
import importlib
import warnings

import pytest
import torch
from torch import nn

import advlens as al
from advlens._checks import AdvlensError
from advlens.explain.lrp import LRP_COMPOSITES, lrp

lrp_mod = importlib.import_module("advlens.explain.lrp")


def _tiny(bias: bool = False, bn: bool = False, inplace: bool = False, seed: int = 0) -> nn.Sequential:
    """conv → (BN) → ReLU → conv → ReLU → GAP → Linear; logits scaled up to a few units."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(3, 4, 3, padding=1, bias=bias)]
    layers += [nn.BatchNorm2d(4)] if bn else []
    layers += [nn.ReLU(inplace=inplace), nn.Conv2d(4, 6, 3, padding=1, bias=bias), nn.ReLU(inplace=inplace),
               nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3, bias=bias)]
    net = nn.Sequential(*layers)
    with torch.no_grad():
        net[-1].weight.mul_(20)
    return net


def _wrap(net: nn.Module, layer: str = "0") -> al.ClassifierModel:
    return al.wrap(net, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), [layer], labels=["a", "b", "c"], input_size=(16, 16))


@pytest.fixture
def x16() -> torch.Tensor:
    return torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(5))


def _hooks(net: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in net.modules()
    )


def _snapshot(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("composite", list(LRP_COMPOSITES))
def test_maps_finite_with_shape(digits_model, digits_test, composite):
    x = digits_test.x[:6]
    maps = lrp(digits_model, x, composite=composite)
    assert maps.shape == (6, 32, 32) and maps.dtype == x.dtype and maps.device == x.device
    assert torch.isfinite(maps).all() and maps.abs().sum() > 0


def test_target_none_is_prediction_and_target_honoured(digits_model, digits_test):
    x = digits_test.x[:4]
    pred = digits_model.predict(x)
    assert torch.equal(lrp(digits_model, x), lrp(digits_model, x, target=pred))
    a, b = lrp(digits_model, x, target=0), lrp(digits_model, x, target=1)
    assert ((a - b).abs().amax(dim=(1, 2)) > 1e-3 * a.abs().amax(dim=(1, 2))).all()


def test_batches_give_the_same_maps(digits_model, digits_test):
    x = digits_test.x[:5]
    # In float64 batching changes nothing; in float32 the conv summation order differs with the batch size and
    # LRP's z⁺/ε rules divide by pre-activation sums that can be ~1e-6, which amplifies it locally (measured:
    # test digit 4 alone vs in a batch differs by 1 % of the map's scale at a few pixels, 0.0 in float64).
    model64 = copy.deepcopy(digits_model).double()
    full, parts = lrp(model64, x.double()), lrp(model64, x.double(), batch_size=2)
    assert torch.allclose(parts, full, atol=1e-12, rtol=1e-9)
    full, parts = lrp(digits_model, x), lrp(digits_model, x, batch_size=2)
    assert al.metrics.cosine(parts, full).min() > 0.999


@pytest.mark.parametrize("arch", ["digits_model", "resnet50"])
def test_model_left_exactly_as_it_was(request, arch, x64, digits_test):
    """No hooks left, canonizers undone: same modules, parameters/buffers and logits bit for bit."""
    model = request.getfixturevalue(arch)
    x = digits_test.x[:2] if arch == "digits_model" else x64
    net = model.net
    state, names, hooks = _snapshot(net), [n for n, _ in net.named_modules()], _hooks(net)
    with torch.no_grad():
        before = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # known architecture: no warning, canonized logits matched
        lrp(model, x, target=3)
    assert _hooks(net) == hooks == 0
    assert [n for n, _ in net.named_modules()] == names
    assert not any("forward" in vars(m) for m in net.modules())  # no forward overrides left
    after = _snapshot(net)
    assert after.keys() == state.keys() and all(torch.equal(after[k], state[k]) for k in state)
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_hooks_and_mode_restored_after_an_error(monkeypatch, x16):
    net = _tiny(bn=True, inplace=True).train()
    state = _snapshot(net)

    def broken(*args, **kwargs):
        raise RuntimeError("backward failed")

    monkeypatch.setattr(torch.autograd, "grad", broken)  # fails inside the composite's context
    with pytest.raises(RuntimeError, match="backward failed"):
        lrp(_wrap(net), x16, target=0)
    assert _hooks(net) == 0 and net.training and net[2].inplace
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())  # BatchNorm merge undone


def test_network_without_logits():
    net = nn.Sequential(nn.Conv2d(3, 3, 3), nn.ReLU())  # returns feature maps
    model = al.wrap(net, (0.5,) * 3, (0.5,) * 3, ["0"], labels=["a", "b", "c"])
    with pytest.raises(AdvlensError, match=r"logits \[N,C\], got shape \[2, 3, 6, 6\]"):
        lrp(model, torch.rand(2, 3, 8, 8), target=0)


def test_inplace_and_train_mode_restored(x16):
    net = _tiny(bias=True, bn=True, inplace=True)
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    ref = _tiny(bias=True, bn=True, inplace=False)
    ref.load_state_dict(net.state_dict())
    net.train()
    state = _snapshot(net)
    maps = lrp(_wrap(net), x16, target=1)
    assert net.training and all(m.training for m in net.modules())
    assert net[2].inplace and net[4].inplace
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())  # no BN statistics update
    ref.eval()
    assert torch.allclose(maps, lrp(_wrap(ref), x16, target=1), atol=1e-6)


@pytest.mark.parametrize("composite", ["epsilon_plus", "epsilon_plus_flat"])
def test_conservation_on_bias_free_net(x16, composite):
    """z⁺, flat and pooling rules conserve relevance; the epsilon rule on the last layer keeps
    z_t·|z_t|/(|z_t| + ε) of the starting relevance z_t. Measured: within 5e-6 relative
    (the 1e-6 stabilizers); α2β1 does not conserve (off by ~1 %), so it is not checked."""
    model = _wrap(_tiny())
    with torch.no_grad():
        logits = model(x16)
    for t in range(3):  # includes a class with negative logits: relevance keeps the sign
        total = lrp(model, x16, target=t, composite=composite, epsilon=0.1).sum(dim=(1, 2))
        z = logits[:, t]
        expected = z * z.abs() / (z.abs() + 0.1)
        assert torch.allclose(total, expected, rtol=1e-4, atol=0), (t, total, expected)


def test_errors(digits_model, digits_test):
    x = digits_test.x[:2]
    with pytest.raises(AdvlensError, match="did you mean 'epsilon_plus_flat'"):
        lrp(digits_model, x, composite="epsilon_plus_flatt")
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(AdvlensError, match="epsilon"):
            lrp(digits_model, x, epsilon=bad)
    with pytest.raises(AdvlensError, match="batch_size"):
        lrp(digits_model, x, batch_size=0)
    with pytest.raises(AdvlensError, match="differentiable"):
        lrp(digits_model, x, create_graph=True)
    with pytest.raises(AdvlensError, match="out of range"):
        lrp(digits_model, x, target=99)
    with pytest.raises(AdvlensError):
        lrp(digits_model, x * 2)


class _Residual(nn.Module):
    """A network zennit has no canonizer for: a residual ``+`` inside forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head((torch.relu(self.bn(self.conv(x))) + x).mean(dim=(2, 3)))


def test_unknown_architecture_warns_once(monkeypatch, x16):
    monkeypatch.setattr(lrp_mod, "_WARNED", set())
    model = _wrap(_Residual().eval(), "conv")
    with pytest.warns(UserWarning, match="approximate"):
        maps = lrp(model, x16)
    assert torch.isfinite(maps).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lrp(model, x16)  # second call: silent


def test_efficientnet_lite0_merges_batchnormact(monkeypatch):
    """timm's BatchNormAct2d is merged into its conv (logits unchanged → no fallback warning)."""
    monkeypatch.setattr(lrp_mod, "_WARNED", set())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = al.load_model("efficientnet_lite0", weights="random")
    canonizers, why = lrp_mod.lrp_canonizers(model.net)
    assert why is not None and "approximate" in why
    merged = canonizers[0].apply(model.net)
    for instance in merged:
        instance.remove()
    assert len(merged) == 49  # every BatchNormAct2d of Lite0 follows its conv
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning) as record:
        maps = lrp(model, x)
    messages = [str(w.message) for w in record]
    assert any("approximate" in m for m in messages) and not any("differ" in m for m in messages)
    assert maps.shape == (1, 64, 64) and torch.isfinite(maps).all()


class _BnFirst(nn.Module):
    """Registers conv before bn but applies bn first: a leaf-order BatchNorm merge would be wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Linear(3, 3)
        with torch.no_grad():
            self.bn.running_mean.fill_(0.3)
            self.bn.running_var.fill_(2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(self.bn(x))).mean(dim=(2, 3)))


def test_canonizer_that_changes_outputs_is_dropped(monkeypatch, x16):
    monkeypatch.setattr(lrp_mod, "_WARNED", set())
    torch.manual_seed(0)
    net = _BnFirst().eval()
    model = _wrap(net, "conv")
    with pytest.warns(UserWarning) as record:
        maps = lrp(model, x16, target=0)
    assert any("without canonizers" in str(w.message) for w in record)
    monkeypatch.setattr(lrp_mod, "lrp_canonizers", lambda net: ([], None))
    assert torch.allclose(maps, lrp(model, x16, target=0), atol=1e-6)
