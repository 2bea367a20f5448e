"""`load_images`: one entry point for every image source."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from advlens._checks import AdvlensError, check_int, check_memory, unknown_name

from .batch import ImageBatch
from .builtin import SAMPLE_PHOTOS, load_digits, load_lfw, load_samples
from .io import parse_size
from .photos import build_photo_batch, file_items
from .shapes import load_shapes

__all__ = ["load_images", "list_sources", "DEFAULT_SIZES"]

_Loader = Callable[[tuple[int, int], "int | None", "str | None", int], ImageBatch]

#: source name -> (loader, default (H, W))
_SOURCES: dict[str, tuple[_Loader, tuple[int, int]]] = {
    "samples": (load_samples, (224, 224)),
    "digits": (load_digits, (32, 32)),
    "lfw": (load_lfw, (32, 32)),
    "shapes": (load_shapes, (32, 32)),
}
#: images in each built-in source when ``n`` is None (shapes: its default count)
_COUNTS = {"samples": len(SAMPLE_PHOTOS), "digits": 1797, "lfw": 200, "shapes": 200}
#: default output size per source; files and folders use ``"files"``.
DEFAULT_SIZES: dict[str, tuple[int, int]] = {name: s for name, (_, s) in _SOURCES.items()} | {"files": (224, 224)}


def list_sources() -> list[str]:
    """Names of the built-in image sources (a path to a file or folder, or a list of files, also works)."""
    return list(_SOURCES)


def _looks_like_path(text: str) -> bool:
    return any(sep in text for sep in ("/", "\\")) or text.startswith((".", "~")) or bool(Path(text).suffix)


def _check_fits(count: int, size: tuple[int, int]) -> None:
    """Refuse, before allocating, a batch ``[count, 3, *size]`` of float32 larger than the free memory."""
    h, w = size
    check_memory(count * 3 * h * w * 4, f"n={count} images of size {h}×{w} (float32 [N,3,H,W])",
                 "lower n or size")


def load_images(source: str | Path | Sequence[str | Path], size: int | tuple[int, int] | None = None, *,
                n: int | None = None, split: str | None = None, seed: int = 0) -> ImageBatch:
    """Load a batch of images from a built-in source, a file, a folder or a list of files.

    Sources:
        * ``"samples"``: real photos bundled with scikit-image, scikit-learn and matplotlib (cat, espresso,
          Grace Hopper, the Summer Palace, …); ``y`` = ImageNet index where one fits, else -1; ``labels`` =
          the 1,000 ImageNet names. Default size 224×224. ``n`` > number of photos adds seeded random
          crop/flip views named ``"chelsea#1"``…; ``n`` smaller takes the first ``n`` photos.
        * ``"digits"``: scikit-learn's 1,797 real 8×8 handwritten digits, labels ``"0"``..``"9"``, 32×32.
        * ``"lfw"``: scikit-image's 100 face (y=1) + 100 non-face (y=0) 25×25 patches, 32×32.
        * ``"shapes"``: ``n`` (default 200) seeded procedural shapes with true object ``masks``, 32×32.
        * a folder (flat: ``y=None``; ImageFolder layout: subfolder = class, ``labels`` sorted), one image
          file, or a list of files. Default 224×224; ``n`` smaller than the count takes a seeded subset.

    Photos are center-cropped to the aspect of ``size`` then resized (bilinear, antialiased); digits and lfw
    are resized without cropping.

    Args:
        source: a name from :func:`list_sources`, a path, or a list of paths.
        size: output size, an int (square) or ``(H, W)``; ``None`` = the source's default.
        n: number of images (see above); ``None`` = all (or 200 for shapes).
        split: ``"train"`` / ``"test"``: the fixed stratified 80/20 split (split seed 0, independent of
            ``seed``) of the source; ``None`` = everything.
        seed: seed for subsets, extra views and shape generation.

    Returns:
        ImageBatch with ``x`` float32 ``[N, 3, H, W]`` in [0, 1], ``y`` int64 ``[N]`` or None, ``names``,
        ``masks`` bool ``[N, H, W]`` (shapes only) and ``labels``.

    Raises:
        AdvlensError: unknown source name, missing path or one that is not a regular file or folder, no images,
            unreadable/truncated file, bad argument, or a batch (``N·3·H·W·4`` bytes, estimated before anything
            is allocated) larger than the available memory.

    Example:
        >>> batch = load_images("digits", 16, n=10, split="test")
        >>> batch.x.shape, batch.labels[int(batch.y[0])] in "0123456789"
        (torch.Size([10, 3, 16, 16]), True)
    """
    if n is not None:
        n = check_int(n, "n", 1)
    seed = check_int(seed, "seed", 0)
    if split is not None and split not in ("train", "test"):
        raise AdvlensError(f"split must be 'train', 'test' or None, got {split!r}")
    if isinstance(source, str) and source in _SOURCES:
        loader, default = _SOURCES[source]
        hw = parse_size(size, default)
        _check_fits(_COUNTS[source] if n is None else n, hw)
        return loader(hw, n, split, seed)
    if isinstance(source, str) and not Path(source).expanduser().exists() and not _looks_like_path(source):
        raise AdvlensError(f"{unknown_name('image source', source, list_sources())}, or a path to images")
    if not isinstance(source, (str, Path, list, tuple)):
        raise AdvlensError(
            f"source must be a source name, a path or a list of paths, got {type(source).__name__}"
        )
    if isinstance(source, (list, tuple)) and not all(isinstance(p, (str, Path)) for p in source):
        raise AdvlensError("a list source must hold only file paths (str or pathlib.Path)")
    hw = parse_size(size, DEFAULT_SIZES["files"])
    items, labels = file_items(source)
    what = str(source) if isinstance(source, (str, Path)) else f"the {len(items)} files given"
    _check_fits(len(items) if n is None else n, hw)
    return build_photo_batch(items, hw, n=n, split=split, seed=seed,
                             first=False, labels=labels, has_y=labels is not None, what=what)
