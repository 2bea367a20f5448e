"""Explanations: one-pass, multi-layer, differentiable maps."""
from .api import LAYER_METHODS, explain, explain_many, list_methods, normalize_maps
from .engine import capture, forward_backward

__all__ = ["LAYER_METHODS", "capture", "explain", "explain_many", "forward_backward", "list_methods", "normalize_maps"]
