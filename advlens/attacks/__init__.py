"""Attacks: ``attack(model, x, y, method, seed, **params) -> AttackResult``."""
from . import (  # noqa: F401  (register the attacks)
    cw as _cw,
    dlfuzz as _dlfuzz,
    fgsm as _fgsm,
    interpretation as _interpretation,
    onepixel as _onepixel,
    pgd as _pgd,
    stadv as _stadv,
)
from .base import AttackInfo, AttackResult, attack, attack_info, budget_params, list_attacks, objective_grad, project_linf, register_attack
from .interpretation import edge_map
from .noise import matched_noise, scale_perturbation

__all__ = [
    "AttackInfo", "AttackResult", "attack", "attack_info", "budget_params", "edge_map", "list_attacks", "matched_noise", "objective_grad", "project_linf",
    "register_attack", "scale_perturbation",
]
