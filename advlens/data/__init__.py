"""Image sources: bundled photos, digits, LFW faces, procedural shapes with masks, files, folders and tables.

Everything works offline: the images ship inside installed packages (scikit-image, scikit-learn,
matplotlib) or are generated. Every loader returns an :class:`ImageBatch` with ``x`` float32
``[N, 3, H, W]`` in [0, 1]; :func:`iter_images` yields a large source in chunks.
"""
from .batch import ImageBatch
from .builtin import imagenet_labels
from .io import save_images
from .load import list_sources, load_images
from .stream import count_images, iter_images

__all__ = ["ImageBatch", "count_images", "imagenet_labels", "iter_images", "list_sources", "load_images",
           "save_images"]
