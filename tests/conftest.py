"""Shared fixtures: small random-init seed architectures and a trained small model."""
from __future__ import annotations

import os
import warnings

import pytest
import torch

import advlens as al

torch.set_num_threads(int(os.environ.get("ADVLENS_TEST_THREADS", max(1, min(2, os.cpu_count() or 1)))))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Trained models are cached once per test session, never in the user's home."""
    monkeypatch.setenv("ADVLENS_HOME", str(tmp_path_factory.getbasetemp() / "advlens-home"))


def _random(name: str) -> al.ClassifierModel:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return al.load_model(name, weights="random")


@pytest.fixture(scope="session")
def vgg16() -> al.ClassifierModel:
    """torchvision VGG-16, random init (seeded): valid for formula cross-checks."""
    return _random("vgg16")


@pytest.fixture(scope="session")
def resnet50() -> al.ClassifierModel:
    return _random("resnet50")


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory) -> al.ClassifierModel:
    """A small VGG trained on sklearn's digits (deterministic, seconds on CPU)."""
    os.environ["ADVLENS_HOME"] = str(tmp_path_factory.getbasetemp() / "advlens-home")
    return al.load_model("small_vgg_digits")


@pytest.fixture(scope="session")
def digits_test():
    return al.load_images("digits", split="test")


@pytest.fixture
def x64() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(2, 3, 64, 64, generator=g)


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory, digits_model):
    """A finished two-image layer-shift study folder (small VGG on digits, FGSM, one strength)."""
    from advlens.studies.runner import run_study
    from advlens.studies.spec import load_spec

    out = tmp_path_factory.mktemp("tiny-study") / "study"
    spec = load_spec(study="layer_shift", model="small_vgg_digits", data="digits", limit=2, strengths=[1.0],
                     attack={"method": "fgsm", "eps": 0.1}, batch_size=2)
    run_study(spec, out, progress=False)
    return out
