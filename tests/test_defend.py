"""Input-transform defenses: reference implementations, the DefendedModel wrapper, gradient masking vs BPDA/EOT."""
from __future__ import annotations

import io

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch
import torch.nn.functional as F
from PIL import Image

import advlens as al
from advlens._checks import AdvlensError
from advlens.defend import DefendedModel, list_defenses, wrap
from advlens.defend.transforms import blur, jpeg, jpeg_surrogate, median, noise, squeeze

SHAPES = [(7, 9), (12, 11), (16, 16)]  # odd sizes included; > the largest pad (5, blur sigma 1.5)
EPS, ALPHA, STEPS = 0.031, 0.031 / 8, 20


def _rand(shape, seed=0, dtype=torch.float32):
    return torch.rand(2, 3, *shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _per_channel(fn, x: torch.Tensor) -> np.ndarray:
    return np.stack([[fn(c) for c in im] for im in x.detach().double().numpy()])


# ---------------------------------------------------------------- transforms vs references


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [3, 5])
@pytest.mark.parametrize("requires_grad", [False, True])  # kornia takes another code path under autograd
def test_median_equals_scipy_mirror(shape, k, requires_grad):
    x = _rand(shape, seed=k)
    out = median(x.clone().requires_grad_(requires_grad), k).detach().numpy()
    ref = _per_channel(lambda c: ndi.median_filter(c, size=k, mode="mirror"), x)
    assert np.array_equal(out, ref.astype(np.float32))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sigma", [0.5, 1, 1.5])
def test_blur_equals_scipy_gaussian_truncate3(shape, sigma):
    x = _rand(shape, seed=3)
    out = blur(x, sigma).numpy()
    ref = _per_channel(lambda c: ndi.gaussian_filter(c, sigma, mode="mirror", truncate=3), x)
    assert np.abs(out - ref).max() < 1e-6  # measured ≤ 2.1e-7 (float32 vs float64)


@pytest.mark.parametrize("quality", [50, 75, 95])
def test_jpeg_equals_pil_save_and_reload(quality):
    skdata = pytest.importorskip("skimage.data")
    crop = skdata.astronaut()[:64, :96]
    images = [crop, np.ascontiguousarray(crop[::-1, ::-1])]
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255
    ref = []
    for im in images:
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        ref.append(np.asarray(Image.open(buf).convert("RGB")).transpose(2, 0, 1) / 255)
    out = jpeg(x, quality)
    assert out.shape == x.shape
    assert np.abs(out.numpy() - np.stack(ref)).max() < 1e-4  # measured 3e-8: same decoded bytes
    assert not torch.equal(out, x)


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 8])
def test_squeeze_is_xu_feature_squeezing(bits):
    x = _rand((12, 11), seed=bits)
    levels = 2**bits - 1
    ref = np.rint(x.numpy() * levels) / levels
    assert np.array_equal(squeeze(x, bits).numpy(), ref)
    ramp = torch.linspace(0, 1, 1001).view(1, 1, 1, -1).expand(1, 3, 1, -1)
    assert torch.unique(squeeze(ramp, bits)).numel() == 2**bits


def test_squeeze_8_bits_leaves_8bit_images_unchanged():
    u8 = torch.randint(0, 256, (2, 3, 9, 7), generator=torch.Generator().manual_seed(0))
    x = u8.float() / 255
    assert torch.equal(squeeze(x, 8), x)


def test_noise_is_seeded_bounded_and_has_std_sigma():
    x = _rand((16, 16), seed=1)
    a = noise(x, 0.3, generator=torch.Generator().manual_seed(0))
    b = noise(x, 0.3, generator=torch.Generator().manual_seed(0))
    c = noise(x, 0.3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1 and (a == 0).any() and (a == 1).any()  # clamped
    mid = torch.full((4, 3, 64, 64), 0.5)  # 10 sigma from the borders: no clamping
    n = noise(mid, 0.05, generator=torch.Generator().manual_seed(2)) - mid
    assert abs(n.std().item() - 0.05) < 0.05 * 0.03 and abs(n.mean().item()) < 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fn, params", [
    (median, {"k": 3}), (squeeze, {"bits": 4}), (blur, {"sigma": 1.0}), (jpeg, {"quality": 75}),
    (noise, {"sigma": 0.05}),
])
def test_transforms_keep_dtype_and_shape(fn, params, dtype):
    x = _rand((12, 11), dtype=dtype)
    out = fn(x, **params)
    assert out.dtype == dtype and out.shape == x.shape
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("fn, params", [
    (median, {"k": 4}), (median, {"k": 0}), (median, {"k": True}), (median, {"k": 3.0}),
    (squeeze, {"bits": 0}), (squeeze, {"bits": 9}), (squeeze, {"bits": True}),
    (blur, {"sigma": 0}), (blur, {"sigma": -1.0}), (blur, {"sigma": True}), (blur, {"sigma": float("nan")}),
    (jpeg, {"quality": 0}), (jpeg, {"quality": 101}), (jpeg, {"quality": True}), (jpeg, {"quality": 75.0}),
    (noise, {"sigma": 0}), (noise, {"sigma": -0.1}), (noise, {"sigma": False}),
])
def test_bad_transform_parameters_fail_clearly(fn, params):
    with pytest.raises(AdvlensError):
        fn(_rand((12, 11)), **params)


# ---------------------------------------------------------------- DefendedModel


@pytest.fixture(scope="module")
def xy(digits_test):
    return digits_test.x[:64], digits_test.y[:64]


def test_wrap_shares_the_network_and_transforms_first(digits_model, xy):
    x = xy[0][:8]
    d = wrap(digits_model, "median", k=3)
    assert isinstance(d, DefendedModel) and d.base is digits_model and d.defense == "median"
    assert d.net is digits_model.net and d.layers == digits_model.layers and d.labels == digits_model.labels
    assert all(p is q for p, q in zip(d.parameters(), digits_model.parameters(), strict=True))
    assert "base" not in dict(d.named_children())
    with torch.no_grad():
        assert torch.equal(d(x), digits_model(median(x, 3)))
    assert set(list_defenses()) == {"median", "squeeze", "blur", "jpeg", "noise"}


def test_explain_sees_the_transformed_input(digits_model, xy):
    x = xy[0][:6]
    d = wrap(digits_model, "median", k=3)
    maps = al.explain(d, x, "gradcam", layers="all")
    ref = al.explain(digits_model, median(x, 3), "gradcam", layers="all")
    assert list(maps) == list(digits_model.layers) == list(ref)
    for name in maps:
        assert maps[name].shape == (6, 32, 32)
        assert torch.allclose(maps[name], ref[name], atol=1e-6), name


def test_attack_runs_on_a_defended_model(digits_model, xy):
    x, y = xy[0][:8], xy[1][:8]
    res = al.attack(wrap(digits_model, "blur", sigma=0.5), x, y, method="pgd", eps=0.05, alpha=0.01, steps=3)
    assert res.x_adv.shape == x.shape and (res.x_adv - x).abs().max() <= 0.05 + 1e-6
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1


def test_wrap_fails_clearly(digits_model):
    with pytest.raises(AdvlensError, match="unknown defense 'medain'; did you mean 'median'"):
        wrap(digits_model, "medain")
    with pytest.raises(AdvlensError, match=r"unknown parameter\(s\) \['kk'\]"):
        wrap(digits_model, "median", kk=3)
    with pytest.raises(AdvlensError, match=r"unknown parameter\(s\) \['sigma'\]"):
        wrap(digits_model, "squeeze", sigma=1.0)
    with pytest.raises(AdvlensError, match="bits"):
        wrap(digits_model, "squeeze", bits=9)  # parameters are validated at wrap time
    with pytest.raises(AdvlensError, match="already defended"):
        wrap(wrap(digits_model, "median"), "blur")


def test_adaptive_view_picks_bpda_or_eot(digits_model):
    for name in ("blur", "median"):
        d = wrap(digits_model, name)
        assert d.adaptive() is d
    for name in ("squeeze", "jpeg"):
        a = wrap(digits_model, name).adaptive()
        assert a.transform.gradient == "bpda" and a.samples == 1 and a.defense == name
    a = wrap(digits_model, "noise", sigma=0.1).adaptive()
    assert a.transform.gradient == "exact" and a.samples > 1
    assert all(p is q for p, q in zip(a.parameters(), digits_model.parameters(), strict=True))


# ---------------------------------------------------------------- gradient masking vs BPDA / EOT


def _acc(model, x, y) -> float:
    return (model.predict(x) == y).float().mean().item()


def _in_ball(x_adv, x):
    assert (x_adv - x).abs().max().item() <= EPS + 1e-6
    assert x_adv.min() >= 0 and x_adv.max() <= 1


@pytest.mark.parametrize("name, params", [("squeeze", {"bits": 3}), ("jpeg", {"quality": 75})])
def test_masked_gradient_is_beaten_by_bpda(digits_model, xy, name, params):
    x, y = xy
    d = wrap(digits_model, name, **params)
    xa = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(d(xa), y), xa)
    assert torch.count_nonzero(g) == 0  # round() / an encoder: the true gradient is masked
    a = d.adaptive()
    xa = x.clone().requires_grad_(True)
    (g_bpda,) = torch.autograd.grad(F.cross_entropy(a(xa), y), xa)
    t = d.transform(x).detach().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(F.cross_entropy(digits_model(t), y), t)
    if name == "jpeg":  # BPDA through kornia's differentiable JPEG: the loss gradient at T(x), pulled back by it
        xs = x.clone().requires_grad_(True)
        (g_ref,) = torch.autograd.grad(jpeg_surrogate(xs, 75), xs, grad_outputs=g_ref)
    assert torch.allclose(g_bpda, g_ref, atol=1e-7) and g_bpda.abs().max() > 0  # squeeze: straight-through

    clean = _acc(d, x, y)
    plain = al.attack(d, x, y, method="pgd", eps=EPS, alpha=ALPHA, steps=STEPS, seed=0)
    bpda = al.attack(a, x, y, method="pgd", eps=EPS, alpha=ALPHA, steps=STEPS, seed=0)
    for res in (plain, bpda):
        _in_ball(res.x_adv, x)
    acc_plain, acc_bpda = _acc(d, plain.x_adv, y), _acc(d, bpda.x_adv, y)
    # measured on 64 images: clean 1.00 for both; squeeze plain 1.00 → BPDA 0.16; jpeg plain 1.00 → BPDA 0.66
    # (0.92 with a straight-through backward: the differentiable-JPEG surrogate is the stronger BPDA)
    assert acc_plain >= clean - 0.05, (clean, acc_plain)
    assert acc_bpda <= acc_plain - (0.5 if name == "squeeze" else 0.2), (acc_plain, acc_bpda)


def test_eot_beats_plain_pgd_against_random_noise(digits_model, xy):
    x, y = xy[0][:32], xy[1][:32]  # EOT with 8 draws costs 8 forwards per step: keep the batch small
    d = wrap(digits_model, "noise", sigma=0.1)
    plain = al.attack(d, x, y, method="pgd", eps=EPS, alpha=ALPHA, steps=STEPS, seed=0)
    eot = al.attack(d.adaptive(8), x, y, method="pgd", eps=EPS, alpha=ALPHA, steps=STEPS, seed=0)
    for res in (plain, eot):
        _in_ball(res.x_adv, x)

    def acc(x_adv):  # the defended model's accuracy, averaged over 4 noise draws
        out = []
        for seed in range(4):
            d.transform.reseed(seed)
            out.append(_acc(d, x_adv, y))
        return sum(out) / len(out)

    # measured on four disjoint 32-image batches: plain 0.39–0.58 → EOT 0.13–0.18 (clean 0.93–0.99)
    acc_plain, acc_eot = acc(plain.x_adv), acc(eot.x_adv)
    assert acc_eot < acc_plain - 0.1, (acc_plain, acc_eot)


# ---------------------------------------------------------------- EOT forward


def test_eot_forward_is_the_mean_log_softmax_over_draws(digits_model, xy):
    x, k, sigma = xy[0][:5], 3, 0.1
    a = wrap(digits_model, "noise", seed=7, sigma=sigma).adaptive(samples=k)
    assert a.samples == k
    a.transform.reseed()
    with torch.no_grad():
        out = a(x)
        gen = torch.Generator().manual_seed(a.transform.seed)
        draws = noise(x.repeat(k, 1, 1, 1), sigma, generator=gen).chunk(k)
        ref = torch.stack([digits_model(t).log_softmax(1) for t in draws]).mean(0)
        assert not torch.equal(draws[0], draws[1])
    assert out.shape == (5, len(digits_model.labels))
    assert torch.allclose(out, ref, atol=1e-5)
    assert torch.allclose(out.softmax(1).sum(1), torch.ones(5), atol=1e-6)
    assert (out <= 0).all()
    a.transform.reseed()
    with torch.no_grad():
        assert torch.equal(a(x), out)  # same seed, same draws


def test_large_kernels_fit_the_model_size_and_tiny_images_fail_clearly(digits_model):
    assert wrap(digits_model, "blur", sigma=2.4).transform.params["sigma"] == 2.4  # validated at 32x32, not 8x8
    assert wrap(digits_model, "median", k=17).transform.params["k"] == 17
    with pytest.raises(AdvlensError, match="too small"):
        blur(_rand((2, 3, 6, 5)), 1.5)
    with pytest.raises(AdvlensError, match="too small"):
        median(_rand((1, 3, 4, 4)), 9)


def test_the_eot_view_refuses_explanations(digits_model, xy):
    x, _ = xy
    with pytest.raises(AdvlensError, match="EOT view"):
        al.explain(wrap(digits_model, "noise").adaptive(3), x[:4], "gradcam")


def test_a_study_and_a_detector_run_against_a_defended_model(tmp_path, digits_model, xy):
    import pandas as pd

    from advlens.detect import BehaviorDeviation
    from advlens.studies.runner import run_study
    from advlens.studies.spec import load_spec

    x, _ = xy
    det = BehaviorDeviation(copies=4).fit(wrap(digits_model, "median", k=3), x[:40])
    assert torch.isfinite(det.score(x[:4])).all()
    entry = {"model": "small_vgg_digits", "data": "digits", "split": "test", "defense": {"kind": "squeeze", "bits": 3}}
    spec = load_spec(preset="seed003", limit=4, batch_size=4, strengths=[0.1], models=[entry])
    run_study(spec, tmp_path / "mv", progress=False)
    imgs = pd.read_parquet(tmp_path / "mv" / "images.parquet")
    assert imgs.correct.all()  # FGSM's gradient through bit squeezing is zero: the masked defense looks perfect
    with pytest.raises(AdvlensError, match=r"key 'models\[0\].defense': must be a table with a 'kind' key"):
        run_study(load_spec(preset="seed003", models=[{**entry, "defense": {"bits": 3}}]), tmp_path / "x", progress=False)
