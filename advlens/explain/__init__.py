"""Explanations: one-pass, multi-layer, differentiable maps."""
from .api import explain, explain_many, normalize_maps
from .engine import capture, forward_backward
from .methods import METHODS, Method, list_methods, method_info, register_method

__all__ = ["METHODS", "Method", "capture", "explain", "explain_many", "forward_backward", "list_methods", "method_info",
           "normalize_maps", "register_method"]
