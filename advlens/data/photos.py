"""Photo sources (bundled samples, files, folders, tables): center crops, seeded extra views, class names."""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from advlens._checks import AdvlensError, check_bool, check_choice, check_number, file_kind

from .batch import ImageBatch, stratified_split_indices, subsample_indices
from .classes import class_indices
from .io import (INTERPOLATIONS, crop_box, crop_resize, describe_suffixes, images_under, is_image_path,
                 read_image_file)

__all__ = ["PhotoItem", "PhotoRead", "photo_read", "choose_photos",
           "read_photos", "build_photo_batch", "file_items", "select_split", "unique_names", "file_reader"]

log = logging.getLogger(__name__)

#: Extra views crop a box of this fraction (side length) of the largest box with the target aspect.
VIEW_SCALE = (0.55, 1.0)
#: The fixed train/test split shared by every source: 20 % test, seed 0.
SPLIT_FRACTION, SPLIT_SEED = 0.2, 0
SKIP_HINT = "(pass skip_bad=True / --skip-bad to skip unreadable files)"


@dataclass(frozen=True)
class PhotoItem:
    """One photo, read lazily.

    Attributes:
        name: name of the image in the batch.
        load: returns the full-resolution image, float ``[3, H, W]`` in [0, 1].
        y: class index, ``-1`` if unknown.
    """

    name: str
    load: Callable[[], Tensor]
    y: int = -1


@dataclass(frozen=True)
class PhotoRead:
    """How photos become batch images (build it with :func:`photo_read`, which checks the values).

    Attributes:
        crop_pct: side of the center crop as a fraction of the largest box with the output's aspect, in (0, 1]
            (``0.875`` = torchvision's eval ``Resize(size / 0.875)`` + ``CenterCrop(size)``).
        interpolation: resize filter, ``"bilinear"`` or ``"bicubic"`` (antialiased).
        skip_bad: log and skip unreadable files instead of stopping.
    """

    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    skip_bad: bool = False


def photo_read(crop_pct: object = 1.0, interpolation: object = "bilinear", skip_bad: object = False) -> PhotoRead:
    """Check the photo options of ``load_images`` and bundle them (one-line AdvlensError naming the argument)."""
    return PhotoRead(check_number(crop_pct, "crop_pct", 0.0, 1.0),
                     str(check_choice(interpolation, "interpolation", INTERPOLATIONS)),
                     check_bool(skip_bad, "skip_bad"))


def select_split(y: Tensor | None, count: int, split: str | None, what: str) -> Tensor:
    """Indices ``[n]`` (int64) of the fixed stratified split (20 % test, seed 0) of ``range(count)`` given the
    labels ``[count]``; all for ``split=None``."""
    if split is None:
        return torch.arange(count)
    if split not in ("train", "test"):
        raise AdvlensError(f"split must be 'train', 'test' or None, got {split!r}")
    train, test = stratified_split_indices(y, count, SPLIT_FRACTION, SPLIT_SEED)
    chosen = train if split == "train" else test
    if chosen.numel() == 0:
        raise AdvlensError(f"the {split} split of {what} is empty ({count} images in all)")
    return chosen


def _view_params(n_views: int, seed: int) -> Tensor:
    """Seeded crop/flip parameters ``[n_views, 4]``: (scale, fy, fx, flip-if-<0.5)."""
    u = torch.rand(n_views, 4, generator=torch.Generator().manual_seed(int(seed)))
    u[:, 0] = VIEW_SCALE[0] + (VIEW_SCALE[1] - VIEW_SCALE[0]) * u[:, 0]
    return u


def choose_photos(items: Sequence[PhotoItem], *, n: int | None, split: str | None, seed: int, first: bool,
                  has_y: bool, what: str) -> list[PhotoItem]:
    """The photos a batch shows: the fixed split, then (``n`` below the count) the first ``n`` when ``first``,
    else a seeded random subset in the original order. Nothing is read."""
    y_all = torch.tensor([it.y for it in items], dtype=torch.int64)
    pool = select_split(y_all if has_y else None, len(items), split, what)
    if n is not None and n < pool.numel():
        pool = pool[:n] if first else subsample_indices(pool, n, seed, what)
    return [items[i] for i in pool.tolist()]


def _load(item: PhotoItem, skip_bad: bool) -> Tensor | None:
    """Read one photo; an unreadable one stops with the hint to skip it, or is logged and gives None."""
    try:
        return item.load()
    except AdvlensError as exc:
        if not skip_bad:
            raise AdvlensError(f"{exc} {SKIP_HINT}") from None
        log.warning("skipping unreadable image %r: %s", item.name, exc)
        return None


def read_photos(items: Sequence[PhotoItem], size: tuple[int, int], read: PhotoRead = PhotoRead(), *,
                views: int = 0, seed: int = 0, labels: list[str] | None, has_y: bool) -> ImageBatch:
    """Read ``items`` one at a time, center-crop (``read.crop_pct``) and resize them; add seeded views.

    Args:
        items: the photos, in order.
        size: output ``(H, W)``.
        read: crop fraction, resize filter, and whether unreadable files are skipped.
        views: extra random crop/flip views ``"name#k"`` after the photos (view ``j`` shows photo
            ``j mod len(items)``; views of a skipped photo are dropped with it).
        seed: seed of the views.
        labels: class names for the batch.
        has_y: whether the batch carries ``y``.

    Returns:
        ImageBatch with ``x`` float32 ``[M, 3, *size]`` in [0, 1], ``M = len(items) + views`` less what was
        skipped (possibly 0).
    """
    count = len(items)
    total = count + views
    params = _view_params(views, seed)
    x = torch.empty(total, 3, *size)
    names: list[str] = [""] * total
    y = torch.full((total,), -1, dtype=torch.int64)
    keep = torch.ones(total, dtype=torch.bool)
    for i, item in enumerate(items):
        img = _load(item, read.skip_bad)
        if img is None:
            keep[i::count] = False
            continue
        h, w = img.shape[-2:]
        x[i] = crop_resize(img, size, crop_box(h, w, size, read.crop_pct), mode=read.interpolation)
        names[i], y[i] = item.name, item.y
        for j in range(i + count, total, count):  # extra views of this photo
            scale, fy, fx, flip = params[j - count].tolist()
            x[j] = crop_resize(img, size, crop_box(h, w, size, scale, fy, fx), flip=flip < 0.5,
                               mode=read.interpolation)
            names[j], y[j] = f"{item.name}#{j // count}", item.y
    batch = ImageBatch(x, y if has_y else None, names, None, labels)
    return batch if bool(keep.all()) else batch[keep]


def build_photo_batch(items: Sequence[PhotoItem], size: tuple[int, int], *, n: int | None, split: str | None,
                      seed: int, first: bool, labels: list[str] | None, has_y: bool, what: str,
                      read: PhotoRead = PhotoRead()) -> ImageBatch:
    """Pick photos (:func:`choose_photos`) and read them (:func:`read_photos`), with extra views when ``n``
    exceeds the count.

    Args:
        items: the photos, in order.
        size: output ``(H, W)``.
        n: number of images wanted (``None``: one per photo). Fewer than the photos: the first ``n`` when
            ``first``, else a seeded random subset (order kept). More: every photo once, then extra views
            ``"name#k"`` (view ``j`` of ``n`` shows photo ``j mod count``).
        split: ``"train"``/``"test"`` picks the fixed stratified split of the photos first; ``None`` keeps all.
        seed: seed of the subset and of the extra views.
        first: how to pick fewer than all photos (see ``n``).
        labels: class names for the batch.
        has_y: whether the batch carries ``y`` (``False`` for unlabelled sources).
        what: name of the source, for messages.
        read: crop fraction, resize filter and handling of unreadable files.

    Returns:
        ImageBatch with ``x`` float32 ``[n, 3, *size]`` in [0, 1] (fewer when ``read.skip_bad`` skipped files).

    Raises:
        AdvlensError: an unreadable file (unless skipped), or every file skipped.
    """
    chosen = choose_photos(items, n=n, split=split, seed=seed, first=first, has_y=has_y, what=what)
    views = 0 if n is None else max(0, n - len(chosen))
    batch = read_photos(chosen, size, read, views=views, seed=seed, labels=labels, has_y=has_y)
    if len(batch) == 0:
        raise AdvlensError(f"no readable images in {what}: all {len(chosen)} were skipped as unreadable")
    return batch


def unique_names(paths: Sequence[Path], root: Path | None) -> list[str]:
    """Names from file stems (relative paths under ``root`` without suffix); full paths where stems repeat."""
    stems = [p.relative_to(root).with_suffix("").as_posix() if root else p.stem for p in paths]
    repeated = {s for s, k in Counter(stems).items() if k > 1}  # Counter: linear even for 50,000 files
    return [str(p) if s in repeated else s for s, p in zip(stems, paths)]


def file_reader(path: Path) -> Callable[[], Tensor]:
    """A loader reading ``path`` when called (:func:`~advlens.data.io.read_image_file`)."""
    return lambda: read_image_file(path)


def file_items(source: str | Path | Sequence[str | Path],
               labels: Sequence[str] | None = None) -> tuple[list[PhotoItem], list[str] | None]:
    """Photo items for a file, a folder (flat, or ImageFolder layout: one subfolder per class), a list of
    files, or a ``.csv`` / ``.parquet`` table of paths (:func:`advlens.data.tables.table_items`). No image is read.

    Args:
        source: the path(s).
        labels: the model's class names; class folders (or label names) are mapped to them by name
            (:func:`class_indices`).

    Returns:
        ``(items, labels)``; ``labels`` is the batch's class names for an ImageFolder layout or a labelled
        table, else None.

    Raises:
        AdvlensError: missing path, a folder in a list, something that is neither a regular file nor a folder
            (a FIFO, a device such as ``/dev/zero``, a socket: checked with ``stat``, never opened), no
            image files found, or a bad table.
    """
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        kind = file_kind(path)
        if kind == "missing":
            raise AdvlensError(f"no such file or folder: '{source}'")
        if kind == "a regular file":
            return [PhotoItem(path.stem, file_reader(path))], None
        if kind != "a folder":
            raise AdvlensError(f"'{source}' is {kind}, not an image file or a folder of images")
        return _folder_items(path, labels)
    paths = [Path(p).expanduser() for p in source]
    if not paths:
        raise AdvlensError("no images given: the list of image paths is empty")
    for p in paths:
        kind = file_kind(p)
        if kind == "missing":
            raise AdvlensError(f"no such image file: '{p}'")
        if kind == "a folder":
            raise AdvlensError(f"expected image files in the list, got folder '{p}' (pass a folder on its own)")
        if kind != "a regular file":
            raise AdvlensError(f"'{p}' in the list of images is {kind}, not an image file")
    return [PhotoItem(nm, file_reader(p)) for nm, p in zip(unique_names(paths, None), paths)], None


def _folder_items(folder: Path, model_labels: Sequence[str] | None) -> tuple[list[PhotoItem], list[str] | None]:
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = [(d.name, images_under(d, recursive=True)) for d in subdirs]
    per_class = [(c, files) for c, files in per_class if files]
    if per_class:  # ImageFolder layout: subfolder name = class
        loose = [p for p in folder.iterdir() if is_image_path(p)]
        if loose:
            log.warning("ignoring %d image(s) directly in %s: it has class subfolders", len(loose), folder)
        index, labels = class_indices([c for c, _ in per_class], model_labels, f"class folders of '{folder}'")
        paths = [p for _, files in per_class for p in files]
        ys = [index[k] for k, (_, files) in enumerate(per_class) for _ in files]
        names = unique_names(paths, folder)
        return [PhotoItem(nm, file_reader(p), k) for nm, p, k in zip(names, paths, ys)], labels
    paths = images_under(folder, recursive=False)
    if not paths:
        raise AdvlensError(f"no images found in '{folder}' (looked for {describe_suffixes()})")
    return [PhotoItem(nm, file_reader(p)) for nm, p in zip(unique_names(paths, folder), paths)], None
