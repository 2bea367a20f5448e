"""FGSM and PGD (no random start) against torchattacks on the same model and inputs.

Both sides take images in [0,1]; the normalization lives inside our ClassifierModel, which
torchattacks calls as its model, so neither side de-normalizes anything.
"""
from __future__ import annotations

import pytest
import torch

import advlens as al

torchattacks = pytest.importorskip("torchattacks")


@pytest.fixture(scope="module")
def batch(digits_model, digits_test):
    return digits_test.x[:16], digits_test.y[:16]


def test_fgsm_matches_torchattacks(digits_model, batch):
    x, y = batch
    ours = al.attack(digits_model, x, y, method="fgsm", eps=0.1).x_adv
    ref = torchattacks.FGSM(digits_model, eps=0.1)(x, y)
    assert (ours - ref).abs().max().item() < 1e-4


@pytest.mark.parametrize("targeted", [False, True])
def test_pgd_matches_torchattacks(digits_model, batch, targeted):
    x, y = batch
    target = (y + 1) % 10
    ours = al.attack(digits_model, x, y, method="pgd", eps=0.1, alpha=0.02, steps=10, random_start=False,
                     target=target if targeted else None).x_adv
    ta = torchattacks.PGD(digits_model, eps=0.1, alpha=0.02, steps=10, random_start=False)
    if targeted:
        ta.set_mode_targeted_by_label(quiet=True)
        ref = ta(x, target)
    else:
        ref = ta(x, y)
    assert (ours - ref).abs().max().item() < 1e-4


def test_pgd_on_vgg16_matches_torchattacks(vgg16, x64):
    """Same check on the seeds' architecture (random init), where gradients are tiny."""
    y = torch.tensor([1, 2])
    ours = al.attack(vgg16, x64, y, method="pgd", eps=4 / 255, alpha=1 / 255, steps=3, random_start=False).x_adv
    ref = torchattacks.PGD(vgg16, eps=4 / 255, alpha=1 / 255, steps=3, random_start=False)(x64, y)
    assert (ours - ref).abs().max().item() < 1e-4
