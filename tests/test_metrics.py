"""Tests for advlens.metrics: oracles (torch, skimage, scipy), hand-computed tables, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import kendalltau
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import advlens.metrics as M
from advlens._checks import AdvlensError
from advlens.metrics import rank, similarity


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _pair(shape, seed=0, dtype=torch.float64, noise=0.3):
    g = _gen(seed)
    a = torch.rand(*shape, generator=g, dtype=dtype)
    b = (a + noise * torch.randn(*shape, generator=g, dtype=dtype)).clamp(0, 1)
    return a, b


def _sk_ssim(a: np.ndarray, b: np.ndarray, sigma: float = 1.5, **kw) -> float:
    return structural_similarity(
        a, b, gaussian_weights=True, sigma=sigma, use_sample_covariance=False, data_range=1.0, **kw
    )


# --------------------------------------------------------------------------------------------- cosine
@pytest.mark.parametrize("shape", [(5, 17, 13), (3, 3, 8, 8)])
def test_cosine_matches_torch(shape):
    a, b = _pair(shape, noise=1.0)
    b = b - 0.5  # negative values too
    ref = F.cosine_similarity(a.flatten(1), b.flatten(1), dim=1)
    torch.testing.assert_close(M.cosine(a, b), ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(M.cosine(a.float(), b.float()), ref.float(), rtol=0, atol=1e-6)


def test_cosine_hand_values_and_zero_convention():
    a = torch.tensor([[[1.0, 0.0]], [[1.0, 2.0]], [[0.0, 0.0]], [[0.0, 0.0]], [[3.0, 0.0]]])
    b = torch.tensor([[[1.0, 1.0]], [[-2.0, -4.0]], [[0.0, 0.0]], [[1.0, 0.0]], [[0.0, 0.0]]])
    out = M.cosine(a, b)
    torch.testing.assert_close(out, torch.tensor([1 / math.sqrt(2), -1.0, 1.0, 0.0, 0.0]), rtol=0, atol=1e-6)


def test_cosine_tiny_values_do_not_underflow():
    a = torch.full((1, 4, 4), 1e-30)
    assert M.cosine(a, a).item() == pytest.approx(1.0, abs=1e-6)


def test_cosine_gradient():
    a, b = _pair((2, 5, 5), noise=1.0)
    a.requires_grad_(True)
    b.requires_grad_(True)
    assert torch.autograd.gradcheck(M.cosine, (a, b))
    z = torch.zeros(2, 5, 5, dtype=torch.float64, requires_grad=True)
    M.cosine(z, b).sum().backward()
    assert torch.isfinite(z.grad).all()


# ----------------------------------------------------------------------------------------------- SSIM
def test_ssim_valid_equals_skimage_maps():
    # skimage averages the SSIM map after cropping the (win_size - 1) // 2 = 5 pixel border strip, exactly what
    # padding='valid' averages; the interior windows never touch the padding, so the values agree to rounding.
    a, b = _pair((4, 40, 48))
    ref = torch.tensor([_sk_ssim(a[i].numpy(), b[i].numpy()) for i in range(4)], dtype=torch.float64)
    torch.testing.assert_close(M.ssim(a, b, padding="valid"), ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(M.ssim(a.float(), b.float(), padding="valid"), ref.float(), rtol=0, atol=1e-6)


def test_ssim_valid_equals_skimage_images():
    a, b = _pair((2, 3, 32, 32), seed=1)
    ref = torch.tensor([_sk_ssim(a[i].numpy(), b[i].numpy(), channel_axis=0) for i in range(2)], dtype=torch.float64)
    torch.testing.assert_close(M.ssim(a, b, padding="valid"), ref, rtol=0, atol=1e-12)


def test_ssim_other_sigma_equals_skimage():
    # skimage's Gaussian window has radius int(3.5 * sigma + 0.5): 9 taps for sigma = 1.0 (our own filter path).
    a, b = _pair((3, 30, 30), seed=2)
    ref = torch.tensor([_sk_ssim(a[i].numpy(), b[i].numpy(), sigma=1.0) for i in range(3)], dtype=torch.float64)
    torch.testing.assert_close(M.ssim(a, b, window_size=9, sigma=1.0, padding="valid"), ref, rtol=0, atol=1e-12)


def test_ssim_same_padding_interior_and_border():
    # 'same' keeps the border pixels (reflect padding) in the mean; cropped to the interior its map is skimage's.
    a, b = _pair((3, 64, 64), seed=3)
    smap = similarity._ssim_map(a[:, None], b[:, None], 11, 1.5, 1.0, "same")
    ref = torch.tensor([_sk_ssim(a[i].numpy(), b[i].numpy()) for i in range(3)], dtype=torch.float64)
    torch.testing.assert_close(smap[..., 5:-5, 5:-5].mean(dim=(1, 2, 3)), ref, rtol=0, atol=1e-12)
    # The whole-map mean also averages the 5-pixel border strip (29 % of a 64x64 map), computed on reflect-padded
    # windows: measured up to 6e-3 here (up to 1e-2 on 64x64 noise, 1.7e-3 at 224x224; smooth maps up to 1e-2
    # at 224x224), so compare with skimage only through padding='valid'.
    diff = (M.ssim(a, b, padding="same") - ref).abs().max()
    assert 1e-4 < diff < 2e-2
    # Our filter path (any sigma) and kornia's (sigma = 1.5) give the same map.
    own = similarity._ssim_map(a[:, None], b[:, None], 11, 1.5 + 1e-12, 1.0, "same")
    torch.testing.assert_close(own, smap, rtol=0, atol=1e-9)


def test_ssim_identity_range_dtype_and_module():
    a, b = _pair((2, 1, 20, 20), seed=4, dtype=torch.float32)
    torch.testing.assert_close(M.ssim(a, a), torch.ones(2))
    flat = torch.zeros(1, 16, 16)
    assert M.ssim(flat, flat).item() == 1.0  # eps=0: no bias on flat images
    s = M.ssim(a, b)
    assert s.dtype == torch.float32 and s.shape == (2,) and ((s > -1) & (s < 1)).all()
    assert M.ssim(a.double(), b.double()).dtype == torch.float64
    torch.testing.assert_close(M.SSIM(window_size=7)(a, b), M.ssim(a, b, window_size=7))
    torch.testing.assert_close(M.ssim(a[:, 0], b[:, 0]), M.ssim(a, b))  # [N,H,W] = one channel


def test_ssim_data_range_scales():
    a, b = _pair((2, 24, 24), seed=5)
    torch.testing.assert_close(M.ssim(a * 255, b * 255, data_range=255.0), M.ssim(a, b), rtol=0, atol=1e-10)


def test_ssim_nissim_gradients():
    a, b = _pair((1, 12, 12), seed=6)
    a.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: M.ssim(x, b, window_size=5), (a,))
    assert torch.autograd.gradcheck(lambda x: M.nissim(x, b, window_size=5, sigma=1.0), (a,))


def test_nissim_range_and_formula():
    a, b = _pair((6, 32, 32), seed=7)
    n = M.nissim(a, b)
    torch.testing.assert_close(n, (1 - M.ssim(a, b)) / 2)
    assert ((n >= 0) & (n <= 1)).all()
    torch.testing.assert_close(M.nissim(a, a), torch.zeros(6, dtype=torch.float64))
    anti = M.nissim(a, 1 - a)  # anti-correlated maps: SSIM < 0
    assert (anti > 0.5).all() and (anti <= 1).all()
    torch.testing.assert_close(M.NISSIM()(a, b), n)


# ------------------------------------------------------------------------------------------------- L1
def test_l1_hand():
    a = torch.tensor([[[0.0, 1.0], [0.5, 0.25]], [[1.0, 1.0], [1.0, 1.0]]])
    b = torch.tensor([[[1.0, 1.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 1.0]]])
    torch.testing.assert_close(M.l1(a, b), torch.tensor([(1 + 0 + 0.5 + 0.25) / 4, 0.0]))
    torch.testing.assert_close(M.L1()(a, b), M.l1(a, b))
    x = torch.rand(2, 3, 4, 4, generator=_gen())
    torch.testing.assert_close(M.l1(x, torch.zeros_like(x)), x.flatten(1).mean(1))


# ------------------------------------------------------------------------------------------------ IoU
def test_iou_threshold_hand():
    a = torch.tensor([[[0.9, 0.8], [0.1, 0.0]], [[0.0, 0.0], [0.0, 0.0]], [[0.6, 0.0], [0.0, 0.0]]])
    b = torch.tensor([[[0.9, 0.1], [0.8, 0.0]], [[0.1, 0.2], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.7]]])
    # sample 0: {0,1} vs {0,2} -> 1/3; sample 1: both empty -> 1; sample 2: disjoint -> 0
    torch.testing.assert_close(M.iou(a, b, threshold=0.5), torch.tensor([1 / 3, 1.0, 0.0]))
    # threshold is inclusive
    torch.testing.assert_close(M.iou(a[:1], b[:1], threshold=0.8), torch.tensor([1 / 3]))


def test_iou_top_k_hand():
    a = torch.arange(10.0).view(1, 2, 5)  # top 30 % = values 9, 8, 7 -> flat idx 9, 8, 7
    b = torch.tensor([[[9.0, 8.0, 0.0, 0.0, 0.0], [0.0, 0.0, 7.0, 6.0, 5.0]]])  # idx 0, 1, 7
    torch.testing.assert_close(M.iou(a, b, top_k=0.3), torch.tensor([1 / 5]))
    torch.testing.assert_close(M.iou(a, a, top_k=0.3), torch.tensor([1.0]))
    # k = round(0.01 * 10) -> at least one pixel
    torch.testing.assert_close(M.iou(a, b, top_k=0.01), torch.tensor([0.0]))
    # ties at the cut are all kept: a constant map keeps every pixel -> IoU = |top of b| / 10
    torch.testing.assert_close(M.iou(torch.ones(1, 2, 5), b, top_k=0.3), torch.tensor([0.3]))


def test_iou_bool_masks_and_dtype():
    mask = torch.tensor([[[True, True], [False, False]]])
    m = torch.tensor([[[0.9, 0.1], [0.8, 0.2]]], dtype=torch.float64)
    out = M.iou(m, mask, top_k=0.5)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, torch.tensor([1 / 3], dtype=torch.float64))
    torch.testing.assert_close(M.iou(mask, mask), torch.tensor([1.0]))
    torch.testing.assert_close(M.iou(~mask & mask, ~mask & mask), torch.tensor([1.0]))  # both empty


# ------------------------------------------------------------------------------------------ Kendall τ
@pytest.mark.parametrize("shape,levels", [((6, 20, 20), 5), ((4, 32, 32), None), ((3, 7, 31), 3), ((2, 2, 9, 9), 4)])
def test_kendall_matches_scipy(shape, levels):
    g = _gen(11)
    if levels is None:  # continuous values, no ties
        a = torch.rand(*shape, generator=g, dtype=torch.float64)
        b = a + 0.5 * torch.rand(*shape, generator=g, dtype=torch.float64)
    else:  # few levels: many ties in both maps
        a = torch.randint(0, levels, shape, generator=g).double()
        b = (a + torch.randint(0, levels, shape, generator=g)).double()
    ref = torch.tensor([kendalltau(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic for i in range(shape[0])])
    torch.testing.assert_close(M.kendall_tau(a, b), ref.double(), rtol=0, atol=1e-12)
    out32 = M.kendall_tau(a.float(), b.float())
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32, ref.float(), rtol=0, atol=1e-6)


def test_kendall_pools_large_maps():
    a, b = _pair((3, 64, 48), seed=12)
    pa, pb = F.adaptive_avg_pool2d(a[:, None], (32, 32)), F.adaptive_avg_pool2d(b[:, None], (32, 32))
    ref = torch.tensor([kendalltau(pa[i].flatten().numpy(), pb[i].flatten().numpy()).statistic for i in range(3)])
    torch.testing.assert_close(M.kendall_tau(a, b), ref.double(), rtol=0, atol=1e-12)
    # size=None: exact on the full map
    a, b = _pair((1, 40, 40), seed=13)
    ref = kendalltau(a.flatten().numpy(), b.flatten().numpy()).statistic
    assert M.kendall_tau(a, b, size=None).item() == pytest.approx(ref, abs=1e-12)


def test_kendall_chunking_is_exact(monkeypatch):
    a = torch.randint(0, 4, (5, 16, 16), generator=_gen(14)).double()
    b = torch.randint(0, 4, (5, 16, 16), generator=_gen(15)).double()
    full = M.kendall_tau(a, b)
    monkeypatch.setattr(rank, "_PAIR_BUDGET", 1000)  # < P*P: one sample and a few rows per block
    torch.testing.assert_close(M.kendall_tau(a, b), full, rtol=0, atol=1e-15)


def test_kendall_hand_and_constant():
    a = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    torch.testing.assert_close(M.kendall_tau(a, a), torch.tensor([1.0]))
    torch.testing.assert_close(M.kendall_tau(a, -a), torch.tensor([-1.0]))
    # pairs of [1,2,3,4] vs [1,3,2,4]: 5 concordant, 1 discordant -> 4/6
    torch.testing.assert_close(M.kendall_tau(a, torch.tensor([[[1.0, 3.0, 2.0, 4.0]]])), torch.tensor([2 / 3]))
    assert torch.isnan(M.kendall_tau(torch.ones(1, 1, 4), a)).all()


# ------------------------------------------------------------------------------------- attack metrics
def test_psnr_matches_skimage():
    x, x_adv = _pair((3, 3, 16, 16), seed=16, noise=0.05)
    ref = torch.tensor([peak_signal_noise_ratio(x[i].numpy(), x_adv[i].numpy(), data_range=1.0) for i in range(3)])
    torch.testing.assert_close(M.psnr(x, x_adv), ref.double(), rtol=0, atol=1e-10)
    ref255 = peak_signal_noise_ratio(x[0].numpy() * 255, x_adv[0].numpy() * 255, data_range=255)
    assert M.psnr(x * 255, x_adv * 255, data_range=255)[0].item() == pytest.approx(ref255, abs=1e-9)


def test_psnr_hand_and_identical():
    x = torch.zeros(2, 3, 4, 4)
    out = M.psnr(x, x + torch.tensor([0.1, 0.0]).view(2, 1, 1, 1))
    assert out[0].item() == pytest.approx(20.0, abs=1e-4) and out[1].item() == math.inf


def test_noise_rate():
    x, x_adv = _pair((2, 3, 24, 24), seed=17, noise=0.1)
    torch.testing.assert_close(M.noise_rate(x, x_adv), 1 - M.ssim(x, x_adv))
    torch.testing.assert_close(M.noise_rate(x, x), torch.zeros(2, dtype=torch.float64))
    ref = 1 - np.array([_sk_ssim(x[i].numpy(), x_adv[i].numpy(), channel_axis=0) for i in range(2)])
    torch.testing.assert_close(M.noise_rate(x, x_adv, padding="valid"), torch.from_numpy(ref), rtol=0, atol=1e-12)


def test_attack_success_rate_and_confidence():
    asr = M.attack_success_rate(torch.tensor([True, False, True, True]))
    assert asr.ndim == 0 and asr.item() == 0.75
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, math.log(3.0)]])
    conf = M.misclassification_confidence(logits, torch.tensor([True, False, True]))
    assert conf[0].item() == pytest.approx(0.5) and math.isnan(conf[1].item()) and conf[2].item() == pytest.approx(0.75)
    assert torch.nanmean(conf).item() == pytest.approx(0.625)


# ------------------------------------------------------------------------------------------ aggregates
def test_mod_vid_hand():
    nis = torch.tensor([0.1, 0.2, 0.6])
    assert M.mod(nis).item() == pytest.approx(0.3)
    table = torch.tensor([[0.1, 0.0], [0.2, 0.4], [0.6, 0.2]])  # images x layers
    torch.testing.assert_close(M.mod(table), torch.tensor([0.3, 0.2]))
    torch.testing.assert_close(M.mod(table, dim=1), torch.tensor([0.05, 0.3, 0.4]))
    # MOD per eps [0, .2, .4, .6]: mean .3, squared deviations .09 .01 .01 .09 -> sqrt(.2 / 4) (population std)
    assert M.vid(torch.tensor([0.0, 0.2, 0.4, 0.6])).item() == pytest.approx(math.sqrt(0.05), abs=1e-7)
    assert M.vid(torch.tensor([0.25])).item() == 0.0
    per_layer = torch.tensor([[0.1, 0.0], [0.3, 0.0]])  # eps x layers
    torch.testing.assert_close(M.vid(per_layer), torch.tensor([0.1, 0.0]))


def test_compromised_hand():
    d_g = torch.tensor([[0.9, 0.5, 0.3], [0.7, 0.6, 0.3], [0.2, 0.8, 0.3], [0.8, 0.9, 0.9]])
    # median over 4 images (average of the middle two): [0.75, 0.70, 0.30]; mean: [0.65, 0.70, 0.45]
    torch.testing.assert_close(M.compromise_threshold(d_g), torch.tensor([0.75, 0.70, 0.30]))
    torch.testing.assert_close(M.compromise_threshold(d_g, rule="mean"), torch.tensor([0.65, 0.70, 0.45]))
    d_a = torch.tensor([[0.5, 0.8, 0.3], [0.76, 0.65, 0.4], [0.7, 0.1, 0.29]])
    expected_median = torch.tensor([[True, False, False], [False, True, False], [True, True, True]])
    expected_mean = torch.tensor([[True, False, True], [False, True, True], [False, True, True]])
    assert torch.equal(M.compromised(d_a, d_g), expected_median)  # 0.3 < 0.3 is False: strict
    assert torch.equal(M.compromised(d_a, d_g, rule="mean"), expected_mean)
    # odd count: the middle value; a different number of noise images is fine
    assert torch.equal(M.compromised(d_a, d_g[:3]), d_a < torch.tensor([0.7, 0.6, 0.3]))


# ---------------------------------------------------------------------------------------------- errors
PAIR_FUNCS = [M.cosine, M.ssim, M.nissim, M.l1, M.iou, M.kendall_tau, M.psnr, M.noise_rate]


@pytest.mark.parametrize("fn", PAIR_FUNCS)
def test_shape_mismatch_names_shapes(fn):
    with pytest.raises(AdvlensError, match=r"same shape.*\[2, 16, 16\].*\[2, 16, 15\]"):
        fn(torch.rand(2, 16, 16), torch.rand(2, 16, 15))


@pytest.mark.parametrize("fn", PAIR_FUNCS)
def test_nan_and_ndim_rejected(fn):
    a = torch.rand(2, 16, 16)
    bad = a.clone()
    bad[0, 3, 3] = float("nan")
    with pytest.raises(AdvlensError, match="NaN"):
        fn(a, bad)
    with pytest.raises(AdvlensError, match=r"\[N,H,W\].*\[16, 16\]"):
        fn(a[0], a[0])
    with pytest.raises(AdvlensError, match="torch.Tensor"):
        fn(a.numpy(), a)


def test_parameter_errors():
    a = torch.rand(2, 16, 16)
    with pytest.raises(AdvlensError, match="window_size"):
        M.ssim(a, a, window_size=10)
    with pytest.raises(AdvlensError, match=r"larger than 5x5.*\[2, 4, 4\]"):
        M.ssim(a[:, :4, :4], a[:, :4, :4], padding="same")
    with pytest.raises(AdvlensError, match=r"at least 11x11, got shape \[2, 4, 4\]"):
        M.ssim(a[:, :4, :4], a[:, :4, :4])
    with pytest.raises(AdvlensError, match="padding"):
        M.ssim(a, a, padding="zeros")
    with pytest.raises(AdvlensError, match="data_range"):
        M.psnr(a, a, data_range=0)
    with pytest.raises(AdvlensError, match="top_k"):
        M.iou(a, a, top_k=1.5)
    with pytest.raises(AdvlensError, match="size"):
        M.kendall_tau(a, a, size=0)
    with pytest.raises(AdvlensError, match="bool"):
        M.attack_success_rate(torch.tensor([1, 0]))
    with pytest.raises(AdvlensError, match=r"success must have shape \[3\]"):
        M.misclassification_confidence(torch.rand(3, 10), torch.tensor([True, False]))
    with pytest.raises(AdvlensError, match=r"\[N,D\]"):
        M.misclassification_confidence(torch.rand(3), torch.tensor([True, False, True]))
    with pytest.raises(AdvlensError, match="rule"):
        M.compromised(torch.rand(2, 3), torch.rand(4, 3), rule="mode")
    with pytest.raises(AdvlensError, match=r"number of layers.*\[2, 3\].*\[4, 2\]"):
        M.compromised(torch.rand(2, 3), torch.rand(4, 2))
    with pytest.raises(AdvlensError, match=r"\[N,L\]"):
        M.compromised(torch.rand(3), torch.rand(3))
    with pytest.raises(AdvlensError, match="NaN"):
        M.mod(torch.tensor([0.1, float("nan")]))
    with pytest.raises(AdvlensError, match="0-dim"):
        M.vid(torch.tensor(0.3))


def test_messages_are_one_line():
    with pytest.raises(AdvlensError) as info:
        M.cosine(torch.rand(2, 3, 4), torch.rand(2, 4, 3))
    assert "\n" not in str(info.value)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_outputs_match_cpu():
    a, b = _pair((3, 40, 40), seed=20, dtype=torch.float32)
    for fn in PAIR_FUNCS:
        out = fn(a.cuda(), b.cuda())
        assert out.device.type == "cuda"
        torch.testing.assert_close(out.cpu(), fn(a, b), rtol=0, atol=1e-5)
    with pytest.raises(AdvlensError, match="same device"):
        M.cosine(a, b.cuda())
