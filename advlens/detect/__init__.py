"""Detecting adversarial inputs from explanations (seeds 002 and 004), scikit-learn style."""
from .base import Detector
from .behavior import BehaviorDeviation
from .noisecam import NoiseCAMDetector, count_clusters

__all__ = ["Detector", "BehaviorDeviation", "NoiseCAMDetector", "count_clusters"]
