"""Streaming: read a large image source chunk by chunk, so a 50,000-image folder never sits in memory at once."""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from advlens._checks import AdvlensError, check_int

from .batch import ImageBatch
from .io import parse_size
from .load import (DEFAULT_SIZES, check_fits, builtin_count, check_options, file_source, is_builtin,
                   load_images)
from .photos import PhotoItem, PhotoRead, choose_photos, read_photos

__all__ = ["iter_images", "count_images"]


def count_images(source: str | Path | Sequence[str | Path]) -> int:
    """Number of images ``source`` holds (``load_images(source)`` with ``n=None``), without reading any image.

    Built-in sources give their fixed count (200 for ``"shapes"``); files, folders and tables are listed
    (a table's rows are checked to exist).

    Example:
        >>> count_images("digits")
        1797
    """
    if is_builtin(source):
        return builtin_count(source, None)  # type: ignore[arg-type]
    return len(file_source(source, None)[0])


def iter_images(source: str | Path | Sequence[str | Path], size: int | tuple[int, int] | None = None, *,
                chunk_size: int = 256, n: int | None = None, seed: int = 0, labels: Sequence[str] | None = None,
                crop_pct: float = 1.0, interpolation: str = "bilinear",
                skip_bad: bool = False) -> Iterator[ImageBatch]:
    """Yield the images of ``source`` as :class:`ImageBatch` chunks of at most ``chunk_size`` images.

    Files, folders and tables are listed once (no image read) and each chunk reads only its own files; the
    chunks, concatenated, equal ``load_images(source, size, n=n, seed=seed, …)`` (same names, ``x``, ``y``,
    ``labels``). Chunks hold ``chunk_size`` images except the last, and fewer where ``skip_bad`` skipped
    files (a chunk left empty is not yielded). Built-in sources, and ``n`` above a folder's count (extra
    views), are loaded whole by :func:`load_images` and yielded in slices. Arguments are checked, and the
    source listed, when ``iter_images`` is called, before the first chunk is asked for.

    Args:
        source, size, n, seed, labels, crop_pct, interpolation, skip_bad: as for :func:`load_images`.
        chunk_size: the most images per chunk (≥ 1).

    Yields:
        ImageBatch with ``x`` float32 ``[<=chunk_size, 3, H, W]`` in [0, 1].

    Raises:
        AdvlensError: as :func:`load_images`; with ``skip_bad``, every file unreadable (at the end).

    Example:
        >>> sum(len(chunk) for chunk in iter_images("digits", 8, chunk_size=500))
        1797
    """
    chunk_size = check_int(chunk_size, "chunk_size", 1)
    n, seed, labels, read = check_options(n, seed, labels, crop_pct, interpolation, skip_bad)
    kwargs = dict(n=n, seed=seed, crop_pct=read.crop_pct, interpolation=read.interpolation, skip_bad=read.skip_bad)
    if is_builtin(source):
        return _slices(load_images(source, size, **kwargs), chunk_size)  # type: ignore[arg-type]
    hw = parse_size(size, DEFAULT_SIZES["files"])
    items, classes, has_y, what = file_source(source, labels)
    if n is not None and n > len(items):  # extra views of a photo are spread over the whole batch
        return _slices(load_images(source, size, labels=labels, **kwargs), chunk_size)  # type: ignore[arg-type]
    chosen = choose_photos(items, n=n, split=None, seed=seed, first=False, has_y=has_y, what=what)
    check_fits(min(chunk_size, len(chosen)), hw)
    return _chunks(chosen, hw, read, chunk_size, classes, has_y, what)


def _slices(batch: ImageBatch, chunk_size: int) -> Iterator[ImageBatch]:
    for start in range(0, len(batch), chunk_size):
        yield batch[start:start + chunk_size]


def _chunks(items: list[PhotoItem], size: tuple[int, int], read: PhotoRead, chunk_size: int,
            labels: list[str] | None, has_y: bool, what: str) -> Iterator[ImageBatch]:
    yielded = 0
    for start in range(0, len(items), chunk_size):
        chunk = read_photos(items[start:start + chunk_size], size, read, labels=labels, has_y=has_y)
        if len(chunk):
            yielded += len(chunk)
            yield chunk
    if not yielded:
        raise AdvlensError(f"no readable images in {what}: all {len(items)} were skipped as unreadable")
