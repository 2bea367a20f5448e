"""Attacks: ``attack(model, x, y, method, seed, **params) -> AttackResult``."""
from . import cw as _cw, dlfuzz as _dlfuzz, fgsm as _fgsm, onepixel as _onepixel, pgd as _pgd, stadv as _stadv  # noqa: F401  (register)
from . import interpretation as _interpretation  # noqa: F401,E402  (register adv2/advedge/advedge+)
from .base import AttackResult, attack, list_attacks, objective_grad, project_linf, register_attack
from .noise import matched_noise, scale_perturbation

__all__ = [
    "AttackResult", "attack", "list_attacks", "matched_noise", "objective_grad", "project_linf",
    "register_attack", "scale_perturbation",
]
