"""Seed 004's edge map E(x) (Sec. IV-B): skimage's Sobel of the channel-mean image, as the authors compute it."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage import filters
from skimage.transform import resize

import advlens as al
from advlens.attacks import edge_map
from advlens.attacks.interpretation import edge_weights


def _skimage(x: torch.Tensor) -> np.ndarray:
    """The reference: ``skimage.filters.sobel`` of each image's channel mean, ``[N,1,H,W]``."""
    return np.stack([filters.sobel(xi.mean(0).numpy())[None] for xi in x])


def _chelsea(size=(48, 64)) -> torch.Tensor:
    img = resize(skdata.chelsea(), size, anti_aliasing=True)  # [H,W,3] float64 in [0,1]
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_edge_map_equals_skimage_sobel(dtype):
    g = torch.Generator().manual_seed(0)
    cases = [torch.rand(3, 3, 17, 23, generator=g, dtype=torch.float64), _chelsea(), torch.rand(1, 3, 1, 5, dtype=torch.float64)]
    for x in cases:
        x = x.to(dtype)
        e = edge_map(x)
        ref = _skimage(x)
        assert e.shape == (x.shape[0], 1, *x.shape[-2:]) and e.dtype == dtype
        assert ref.dtype == x.numpy().dtype  # skimage keeps float32 as float32
        np.testing.assert_allclose(e.numpy(), ref, rtol=0, atol=1e-5)
        # the border rows / columns (scipy "reflect" = edge replication for a 3-tap kernel) match too
        np.testing.assert_allclose(e.numpy()[..., 0, :], ref[..., 0, :], rtol=0, atol=1e-5)
        np.testing.assert_allclose(e.numpy()[..., :, -1], ref[..., :, -1], rtol=0, atol=1e-5)
    assert (_skimage(_chelsea())[..., 0, :] > 0).any()  # skimage computes (does not zero) the frame


def test_edge_map_scale_and_mean_of_channels():
    x = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    x[..., 4:] = 1.0  # a unit vertical step: E = sqrt((1² + 0²) / 2) = 1/√2 on the two columns beside it
    e = edge_map(x)[0, 0]
    assert torch.allclose(e[:, 3:5], torch.full((8, 2), 2 ** -0.5, dtype=torch.float64)) and e[:, :3].abs().max() == 0
    # the magnitude of the channel mean, not the mean of per-channel magnitudes: opposite steps cancel
    y = torch.zeros(1, 3, 8, 8)
    y[:, 0, :, 4:], y[:, 1, :, :4] = 1.0, 1.0
    assert edge_map(y).abs().max() < 1e-7
    with pytest.raises(al.AdvlensError, match="N,C,H,W"):
        edge_map(torch.zeros(3, 8, 8))


def test_advedge_weights_are_the_edge_map(digits_model, digits_test):
    """AdvEdge's N_w is edge_map(x); AdvEdge⁺'s is 1[edge_map(x) > φ]: one PGD step moves each pixel by α·E."""
    x, y = digits_test.x[:4], digits_test.y[:4]
    t = (y + 1) % 10
    e = edge_map(x)
    assert torch.equal(edge_weights(x), e) and torch.equal(edge_weights(x, phi=0.1), (e > 0.1).float())
    alpha = 4 / 255
    res = al.attack(digits_model, x, y, "advedge", target=t, interpreter="cam", steps=1, alpha=alpha, eps=1.0)
    delta = (res.x_adv - x).abs()
    step = (alpha * e).expand_as(x)
    assert (delta <= step + 1e-6).all()
    free = (x >= step) & (x <= 1 - step) & (step > 1e-4)  # not clipped to [0,1]
    moved = delta[free] > 0
    assert moved.float().mean() > 0.5 and torch.allclose(delta[free][moved], step[free][moved], atol=1e-6)
    res = al.attack(digits_model, x, y, "advedge+", target=t, interpreter="cam", steps=1, alpha=alpha, eps=1.0,
                    phi=0.1)
    assert (res.x_adv - x)[(e <= 0.1).expand_as(x)].abs().max() == 0
