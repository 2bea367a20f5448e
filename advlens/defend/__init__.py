"""Defenses: input transforms as model wrappers, adaptive (BPDA/EOT) views, robust training."""
from .model import DefendedModel, list_defenses, wrap
from .transforms import TRANSFORMS

__all__ = ["DefendedModel", "TRANSFORMS", "list_defenses", "wrap"]
