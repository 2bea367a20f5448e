"""Attacks: ``attack(model, x, y, method, seed, **params) -> AttackResult``."""
from . import dlfuzz as _dlfuzz, fgsm as _fgsm, pgd as _pgd  # noqa: F401  (register)
from .base import AttackResult, attack, list_attacks, objective_grad, project_linf, register_attack
from .noise import matched_noise, scale_perturbation

__all__ = [
    "AttackResult", "attack", "list_attacks", "matched_noise", "objective_grad", "project_linf",
    "register_attack", "scale_perturbation",
]
