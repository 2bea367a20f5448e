"""MASK (Fong & Vedaldi) and RTS (Dabkowski & Gal): the seed 004 interpreters of eqs. 11–13."""
from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import advlens as al
from advlens._checks import AdvlensError
from advlens.explain import rts as rts_mod
from advlens.explain.mask import blur, mask, mask_loss, optimize_mask, upsample_mask
from advlens.explain.rts import (
    classifier_features,
    load_rts,
    rts,
    rts_cache_path,
    train_rts,
)

N_IOU = 16          # test images scored against the true object masks
TOP_K = 0.15        # binarize the top 15 % of each map (the objects cover 15–17 % of the image on average)
RTS_EPOCHS, RTS_N = 12, 400  # short RTS training for the tests (320 training images)


@pytest.fixture(scope="module")
def shapes_model(tmp_path_factory) -> al.ClassifierModel:
    """Small VGG trained on shapes (cached in the session's isolated ADVLENS_HOME)."""
    os.environ["ADVLENS_HOME"] = str(tmp_path_factory.getbasetemp() / "advlens-home")
    return al.load_model("small_vgg_shapes")


@pytest.fixture(scope="module")
def shapes_test():
    b = al.load_images("shapes", split="test")
    return b.x[:N_IOU], b.y[:N_IOU], b.masks[:N_IOU]


@pytest.fixture(scope="module")
def rts_net(shapes_model, tmp_path_factory):
    """A short RTS training written to the default cache path, so :func:`rts` loads it."""
    os.environ["ADVLENS_HOME"] = str(tmp_path_factory.getbasetemp() / "advlens-home")
    return train_rts(shapes_model, "shapes", epochs=RTS_EPOCHS, n=RTS_N, progress=False)


def _baselines(gt: torch.Tensor) -> tuple[float, float]:
    """IoU of a random map and of a uniform map (which keeps every pixel: IoU = object area)."""
    r = torch.rand(gt.shape, generator=torch.Generator().manual_seed(0))
    return float(al.metrics.iou(r, gt, top_k=TOP_K).mean()), float(al.metrics.iou(torch.ones_like(r), gt).mean())


# ---------------------------------------------------------------- MASK


def test_mask_maps_finite_in_range(shapes_model, shapes_test):
    x = shapes_test[0][:4]
    m = mask(shapes_model, x, steps=20)
    assert m.shape == (4, 32, 32) and torch.isfinite(m).all()
    assert m.min() >= 0 and m.max() <= 1 and m.std() > 0
    small = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    assert optimize_mask(shapes_model, small, steps=2).shape == (4, 1, 16, 16)  # mask_size = min(28, H, W)


def test_mask_batched_equals_one_by_one(shapes_model, shapes_test):
    x, y = shapes_test[0][:3], shapes_test[1][:3]
    together = mask(shapes_model, x, y, steps=15)
    alone = torch.cat([mask(shapes_model, x[i : i + 1], y[i : i + 1], steps=15) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=0)


def test_mask_optimisation_lowers_objective(shapes_model, shapes_test):
    x, y = shapes_test[0][:4], shapes_test[1][:4]
    m0 = optimize_mask(shapes_model, x, y, steps=0)
    m1 = optimize_mask(shapes_model, x, y, steps=40, m0=m0)
    with torch.no_grad():
        before = mask_loss(shapes_model, m0, x, y, blur(x))
        after = mask_loss(shapes_model, m1, x, y, blur(x))
    assert (after < before).all(), (before, after)
    assert m1.min() >= 0 and m1.max() <= 1


def test_mask_loss_one_step_differentiable_in_x(shapes_model, shapes_test):
    """Seed 004 eq. 13: the map after one gradient step of ℓ_map carries a gradient to x."""
    x = shapes_test[0][:2].clone().requires_grad_(True)
    y = shapes_test[1][:2]
    m = optimize_mask(shapes_model, x, y, steps=5).requires_grad_(True)
    loss = mask_loss(shapes_model, m, x, y, blur(x)).sum()
    (g,) = torch.autograd.grad(loss, m, create_graph=True)
    stepped = upsample_mask(m - (1 / 255) * g, (32, 32))
    (gx,) = torch.autograd.grad(stepped.square().sum(), x)
    assert torch.isfinite(gx).all() and gx.abs().sum() > 0


def test_mask_localizes_shapes_better_than_chance(shapes_model, shapes_test):
    # Measured (16 test images, top 15 %): MASK 150 steps 0.27 (500 steps 0.29); random map 0.075; uniform
    # map 0.168; a centred Gaussian blob 0.31 — on 32×32 shapes MASK beats chance clearly, not the centre prior.
    x, y, gt = shapes_test
    m = mask(shapes_model, x, y, steps=150)
    iou = float(al.metrics.iou(m, gt, top_k=TOP_K).mean())
    chance, uniform = _baselines(gt)
    assert iou > chance + 0.12 and iou > uniform + 0.05, (iou, chance, uniform)


# ---------------------------------------------------------------- RTS


def test_rts_training_is_deterministic(shapes_model, tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    for out in (a, b):
        train_rts(shapes_model, "shapes", seed=3, epochs=1, n=80, out=out, progress=False)
    sa, sb = load_file(str(a)), load_file(str(b))
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    train_rts(shapes_model, "shapes", seed=4, epochs=1, n=80, out=a, progress=False)
    assert not torch.equal(load_file(str(a))["head.weight"], sb["head.weight"])


def test_rts_cache_round_trip(shapes_model, shapes_test, rts_net):
    x, y = shapes_test[0][:8], shapes_test[1][:8]
    path = rts_cache_path(shapes_model.name, "shapes", 0)
    assert path.is_file()
    direct = upsample_mask(rts_net(x, classifier_features(shapes_model, x), y), (32, 32))[:, 0]
    rts_mod._LOADED.clear()
    cached = rts(shapes_model, x, y)
    torch.testing.assert_close(cached, direct, atol=0, rtol=0)
    loaded, meta = load_rts(path)
    assert meta["epochs"] == RTS_EPOCHS and meta["model"] == "small_vgg_shapes"
    torch.testing.assert_close(loaded(x, classifier_features(shapes_model, x), y), rts_net(x, classifier_features(shapes_model, x), y), atol=0, rtol=0)
    assert cached.min() >= 0 and cached.max() <= 1 and cached.shape == (8, 32, 32)
    pred = rts(shapes_model, x)  # target=None: the predicted class
    torch.testing.assert_close(pred, rts(shapes_model, x, shapes_model(x).argmax(1)))


def test_rts_differentiable_wrt_x(shapes_model, shapes_test, rts_net):
    x = shapes_test[0][:4].clone().requires_grad_(True)
    m = rts(shapes_model, x, shapes_test[1][:4])
    (g,) = torch.autograd.grad(m.square().sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_rts_localizes_shapes_better_than_chance(shapes_model, shapes_test, rts_net):
    # Measured (16 test images, top 15 %, 12 epochs on 320 images): RTS 0.50 (default training, 3 epochs
    # on 2,000 images: 0.48); random map 0.075; uniform map 0.168; centred Gaussian blob 0.31.
    x, y, gt = shapes_test
    with torch.no_grad():
        m = rts(shapes_model, x, y)
    iou = float(al.metrics.iou(m, gt, top_k=TOP_K).mean())
    chance, uniform = _baselines(gt)
    assert iou > chance + 0.25 and iou > uniform + 0.2, (iou, chance, uniform)


def test_rts_class_selector_matters(shapes_model, shapes_test, rts_net):
    # Measured: mean mask 0.22 for the true class vs 0.03 for another class (trained with fake classes);
    # mean |difference| 0.20.
    x, y, _ = shapes_test
    with torch.no_grad():
        true, other = rts(shapes_model, x, y), rts(shapes_model, x, (y + 1) % 5)
    assert (true - other).abs().mean() > 0.08
    assert true.mean() > 2 * other.mean()


def test_rts_errors(shapes_model, shapes_test):
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
    custom = al.wrap(net, (0.5,) * 3, (0.5,) * 3, ["1"], input_size=(32, 32))
    with pytest.raises(AdvlensError, match="data="):
        rts(custom, shapes_test[0][:1])
    with pytest.raises(AdvlensError, match="unknown image source"):
        train_rts(custom, "no_such_data", progress=False)
    with pytest.raises(AdvlensError, match="classes"):
        train_rts(shapes_model, "lfw", progress=False)  # 2 classes, the model has 5
