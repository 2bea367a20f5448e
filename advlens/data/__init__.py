"""Image sources: bundled photos, digits, LFW faces, procedural shapes with masks, files and folders.

Everything works offline: the images ship inside installed packages (scikit-image, scikit-learn,
matplotlib) or are generated. Every loader returns an :class:`ImageBatch` with ``x`` float32
``[N, 3, H, W]`` in [0, 1].
"""
from .batch import ImageBatch
from .builtin import imagenet_labels
from .io import save_images
from .load import list_sources, load_images

__all__ = ["ImageBatch", "imagenet_labels", "list_sources", "load_images", "save_images"]
