"""Models: registry, loaders and the :class:`ClassifierModel` wrapper."""
from . import imagenet, small_resnet, small_vgg  # noqa: F401  (register the builders)
from .registry import list_models, load_model, register_model
from .wrapper import ClassifierModel, wrap

__all__ = ["ClassifierModel", "list_models", "load_model", "register_model", "wrap"]
