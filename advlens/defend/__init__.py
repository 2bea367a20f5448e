"""Defenses (seeds 001, 002, 004): input transforms as model wrappers with adaptive (BPDA/EOT) views,
robust training recipes, and a detector-aware adaptive attack."""
from .detector_attack import detector_attack, differentiable_score
from .model import DefendedModel, list_defenses, wrap
from .recipes import adversarial_train, retrain, save_model
from .transforms import TRANSFORMS

__all__ = ["DefendedModel", "TRANSFORMS", "adversarial_train", "detector_attack", "differentiable_score",
           "list_defenses", "retrain", "save_model", "wrap"]
