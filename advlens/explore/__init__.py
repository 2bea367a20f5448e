"""``advlens explore``: an interactive explorer in the browser (live attacks, layer-by-layer maps, finished
studies) over an HTTP API (:func:`create_app`)."""
from .app import create_app

__all__ = ["create_app"]
