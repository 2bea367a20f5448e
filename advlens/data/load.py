"""`load_images`: one entry point for every image source."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from advlens._checks import AdvlensError, check_int, check_memory, unknown_name

from .batch import ImageBatch
from .builtin import SAMPLE_PHOTOS, load_digits, load_lfw, load_samples
from .io import parse_size
from .classes import check_class_names
from .photos import PhotoItem, PhotoRead, build_photo_batch, file_items, photo_read
from .tables import is_table_path, table_items
from .shapes import load_shapes

__all__ = ["load_images", "list_sources", "DEFAULT_SIZES", "is_builtin", "builtin_count", "file_source",
           "check_options", "check_fits"]

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


def is_builtin(source: object) -> bool:
    """True for the name of a built-in source (:func:`list_sources`)."""
    return isinstance(source, str) and source in _SOURCES


def builtin_count(source: str, n: int | None) -> int:
    """Images a built-in source gives for ``n`` (``None``: all, or the default count for shapes)."""
    return _COUNTS[source] if n is None else n


def file_source(source: object,
                labels: Sequence[str] | None) -> tuple[list[PhotoItem], list[str] | None, bool, str]:
    """List the photos of a path source (file, folder, table, list of files) without reading them.

    Returns:
        ``(items, labels, has_y, what)``: the items, the batch's class names, whether the batch carries ``y``
        (class folders or a ``label`` column) and how messages name the source.

    Raises:
        AdvlensError: not a source name, a path or a list of paths; see :func:`~advlens.data.photos.file_items`.
    """
    if isinstance(source, str) and not Path(source).expanduser().exists() and not _looks_like_path(source):
        raise AdvlensError(f"{unknown_name('image source', source, list_sources())}, or a path to images")
    if not isinstance(source, (str, Path, list, tuple)):
        raise AdvlensError(
            f"source must be a source name, a path or a list of paths, got {type(source).__name__}"
        )
    if isinstance(source, (list, tuple)) and not all(isinstance(p, (str, Path)) for p in source):
        raise AdvlensError("a list source must hold only file paths (str or pathlib.Path)")
    if isinstance(source, (str, Path)) and is_table_path(Path(source)) and Path(source).expanduser().is_file():
        items, classes = table_items(Path(source).expanduser(), labels)
    else:
        items, classes = file_items(source, labels)
    has_y = classes is not None or any(it.y >= 0 for it in items)
    what = str(source) if isinstance(source, (str, Path)) else f"the {len(items)} files given"
    return items, classes, has_y, what


def check_fits(count: int, size: tuple[int, int]) -> None:
    """Refuse, before allocating, a batch ``[count, 3, *size]`` of float32 larger than the free memory."""
    h, w = size
    check_memory(count * 3 * h * w * 4, f"n={count} images of size {h}×{w} (float32 [N,3,H,W])",
                 "lower n or size")


def load_images(source: str | Path | Sequence[str | Path], size: int | tuple[int, int] | None = None, *,
                n: int | None = None, split: str | None = None, seed: int = 0, labels: Sequence[str] | None = None,
                crop_pct: float = 1.0, interpolation: str = "bilinear", skip_bad: bool = False) -> ImageBatch:
    """Load a batch of images from a built-in source, a file, a folder, a table or a list of files.

    Sources:
        * ``"samples"``: real photos bundled with scikit-image, scikit-learn and matplotlib (cat, espresso,
          Grace Hopper, the Summer Palace, …); ``y`` = ImageNet index where one fits, else -1; ``labels`` =
          the 1,000 ImageNet names. Default size 224×224. ``n`` > number of photos adds seeded random
          crop/flip views named ``"chelsea#1"``…; ``n`` smaller takes the first ``n`` photos.
        * ``"digits"``: scikit-learn's 1,797 real 8×8 handwritten digits, labels ``"0"``..``"9"``, 32×32.
        * ``"lfw"``: scikit-image's 100 face (y=1) + 100 non-face (y=0) 25×25 patches, 32×32.
        * ``"shapes"``: ``n`` (default 200) seeded procedural shapes with true object ``masks``, 32×32.
        * a folder (flat: ``y=None``; ImageFolder layout: subfolder = class), one image file, a list of files,
          or a ``.csv`` / ``.parquet`` table with a ``path`` column (relative to the table's folder) and an
          optional ``label`` column (int class indices, or class names). Default 224×224; ``n`` smaller than
          the count takes a seeded subset.

    Class indices of class folders (and of label names in a table): when every name is found in ``labels``
    (exactly, else ignoring case with ``_`` = space), ``y`` is its index there and ``batch.labels = labels``;
    else, when every name is an ImageNet WordNet id (``n01440764``), ``y`` is its ImageNet-1k index and
    ``batch.labels`` the ImageNet names; else ``y`` is the sorted-name index (a warning says which names were
    missing from ``labels``). Built-in sources ignore ``labels``.

    Photos (samples, files, folders, tables) are center-cropped to the aspect of ``size`` scaled by
    ``crop_pct``, then resized (antialiased) — ``crop_pct=0.875`` matches torchvision's eval
    ``Resize(size / 0.875)`` + ``CenterCrop(size)`` up to rounding. Digits and lfw are resized without
    cropping; digits, lfw and shapes ignore ``crop_pct`` and ``interpolation``.

    Args:
        source: a name from :func:`list_sources`, a path, or a list of paths.
        size: output size, an int (square) or ``(H, W)``; ``None`` = the source's default.
        n: number of images (see above); ``None`` = all (or 200 for shapes).
        split: ``"train"`` / ``"test"``: the fixed stratified 80/20 split (split seed 0, independent of
            ``seed``) of the source; ``None`` = everything.
        seed: seed for subsets, extra views and shape generation.
        labels: the model's class names, to number class folders / label names by (see above).
        crop_pct: side of the center crop as a fraction of the largest box with the aspect of ``size``, (0, 1].
        interpolation: ``"bilinear"`` or ``"bicubic"`` (antialiased, clamped to [0, 1]).
        skip_bad: log a warning for each unreadable image file and leave it out, instead of stopping (a
            skipped photo takes its extra views with it).

    Returns:
        ImageBatch with ``x`` float32 ``[N, 3, H, W]`` in [0, 1], ``y`` int64 ``[N]`` or None, ``names``,
        ``masks`` bool ``[N, H, W]`` (shapes only) and ``labels``.

    Raises:
        AdvlensError: unknown source name, missing path or one that is not a regular file or folder, no images,
            unreadable/truncated file (unless ``skip_bad``; then: none readable), bad table, bad argument, or
            a batch (``N·3·H·W·4`` bytes, estimated before anything is allocated) larger than the available
            memory.

    Example:
        >>> batch = load_images("digits", 16, n=10, split="test")
        >>> batch.x.shape, batch.labels[int(batch.y[0])] in "0123456789"
        (torch.Size([10, 3, 16, 16]), True)
    """
    n, seed, labels, read = check_options(n, seed, labels, crop_pct, interpolation, skip_bad)
    if split is not None and split not in ("train", "test"):
        raise AdvlensError(f"split must be 'train', 'test' or None, got {split!r}")
    if is_builtin(source):
        loader, default = _SOURCES[source]  # type: ignore[index]
        hw = parse_size(size, default)
        check_fits(builtin_count(source, n), hw)  # type: ignore[arg-type]
        return load_samples(hw, n, split, seed, read) if source == "samples" else loader(hw, n, split, seed)
    hw = parse_size(size, DEFAULT_SIZES["files"])
    items, classes, has_y, what = file_source(source, labels)
    check_fits(len(items) if n is None else n, hw)
    return build_photo_batch(items, hw, n=n, split=split, seed=seed, first=False, labels=classes, has_y=has_y,
                             what=what, read=read)


def check_options(n: object, seed: object, labels: object, crop_pct: object, interpolation: object,
                  skip_bad: object) -> tuple[int | None, int, list[str] | None, PhotoRead]:
    """Check the arguments shared by :func:`load_images` and :func:`~advlens.data.stream.iter_images`."""
    return (None if n is None else check_int(n, "n", 1), check_int(seed, "seed", 0), check_class_names(labels),
            photo_read(crop_pct, interpolation, skip_bad))
