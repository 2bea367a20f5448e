"""advlens: adversarial attacks on image classifiers, studied through their explanations.

>>> import advlens as al
>>> model = al.load_model("efficientnet_lite0")
>>> batch = al.load_images("samples")
>>> maps = al.explain(model, batch.x, method="gradcam", layers="all")
>>> res = al.attack(model, batch.x, method="pgd", eps=2 / 255, steps=10)
"""
from importlib.metadata import PackageNotFoundError, version as _version

from . import detect, metrics
from ._checks import AdvlensError
from .attacks import AttackResult, attack, list_attacks, matched_noise, scale_perturbation
from .data import ImageBatch, load_images
from .explain import explain, explain_many, list_methods
from .models import ClassifierModel, list_models, load_model, wrap

try:
    __version__ = _version("advlens")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

__all__ = [
    "AdvlensError", "AttackResult", "ClassifierModel", "ImageBatch", "attack", "detect", "explain", "explain_many",
    "list_attacks", "list_methods", "list_models", "load_images", "load_model", "matched_noise", "metrics",
    "scale_perturbation", "wrap", "__version__",
]
