"""Detecting adversarial inputs from explanations (seeds 002 and 004), scikit-learn style."""
from __future__ import annotations

import json
from pathlib import Path

from .._checks import AdvlensError, check_file, check_path, unknown_name
from .base import Detector
from .behavior import BehaviorDeviation
from .ensemble import BACKBONES, EnsembleDetector, interpreter_maps
from .noisecam import NoiseCAMDetector, count_clusters

__all__ = ["Detector", "BehaviorDeviation", "NoiseCAMDetector", "EnsembleDetector", "BACKBONES", "DETECTORS",
           "count_clusters", "interpreter_maps", "load", "make"]

#: detector kinds by the name the CLI, the studies and ``path.json`` use
DETECTORS: dict[str, type[Detector]] = {
    "behavior": BehaviorDeviation, "noisecam": NoiseCAMDetector, "ensemble": EnsembleDetector}


def make(kind: str, **params) -> Detector:
    """A new, unfitted detector of ``kind`` (``behavior``, ``noisecam``, ``ensemble``) with ``params``."""
    if kind not in DETECTORS:
        raise unknown_name("detector", kind, DETECTORS)
    cls = DETECTORS[kind]
    try:
        return cls(**params)
    except TypeError as e:
        raise AdvlensError(f"bad parameter for the {kind} detector: {e}") from None


def load(path: str | Path, model) -> Detector:
    """Read any detector written by ``Detector.save`` (the kind is read from ``path.json``)."""
    path = check_path(path, "detector file")
    check_file(path, "detector file")
    meta_path = check_file(path.with_name(path.name + ".json"), "detector metadata")
    try:
        kind = json.loads(meta_path.read_text()).get("kind")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        raise AdvlensError(f"cannot read detector metadata {meta_path}") from None
    by_kind = {cls.kind: cls for cls in DETECTORS.values()}
    if not isinstance(kind, str) or kind not in by_kind:
        raise AdvlensError(f"{meta_path} names an unknown detector kind {kind!r}")
    return by_kind[kind].load(path, model)
