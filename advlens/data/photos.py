"""Photo sources (bundled samples, files, folders): center crops, seeded extra views, folder layouts."""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from advlens._checks import AdvlensError, file_kind

from .batch import ImageBatch, stratified_split_indices, subsample_indices
from .io import crop_box, crop_resize, describe_suffixes, images_under, is_image_path, read_image_file

__all__ = ["PhotoItem", "build_photo_batch", "file_items", "select_split"]

log = logging.getLogger(__name__)

#: Extra views crop a box of this fraction (side length) of the largest box with the target aspect.
VIEW_SCALE = (0.55, 1.0)
#: The fixed train/test split shared by every source: 20 % test, seed 0.
SPLIT_FRACTION, SPLIT_SEED = 0.2, 0


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


def select_split(y: Tensor | None, count: int, split: str | None, what: str) -> Tensor:
    """Indices of the fixed stratified split (20 % test, seed 0) of ``range(count)``; all for ``split=None``."""
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


def build_photo_batch(items: Sequence[PhotoItem], size: tuple[int, int], *, n: int | None, split: str | None,
                      seed: int, first: bool, labels: list[str] | None, has_y: bool, what: str) -> ImageBatch:
    """Read, center-crop and resize photos; add seeded random crop/flip views when ``n`` exceeds the count.

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

    Returns:
        ImageBatch with ``x`` float32 ``[n, 3, *size]`` in [0, 1].
    """
    y_all = torch.tensor([it.y for it in items], dtype=torch.int64)
    pool = select_split(y_all if has_y else None, len(items), split, what)
    if n is not None and n < pool.numel():
        pool = pool[:n] if first else subsample_indices(pool, n, seed, what)
    chosen = [items[i] for i in pool.tolist()]
    count = len(chosen)
    total = count if n is None else n
    params = _view_params(total - count, seed)
    x = torch.empty(total, 3, *size)
    names: list[str] = [""] * total
    y = torch.empty(total, dtype=torch.int64)
    for i, item in enumerate(chosen):
        img = item.load()
        x[i] = crop_resize(img, size)
        names[i], y[i] = item.name, item.y
        for j in range(i + count, total, count):  # extra views of this photo
            scale, fy, fx, flip = params[j - count].tolist()
            box = crop_box(img.shape[-2], img.shape[-1], size, scale, fy, fx)
            x[j] = crop_resize(img, size, box, flip=flip < 0.5)
            names[j], y[j] = f"{item.name}#{j // count}", item.y
    return ImageBatch(x, y if has_y else None, names, None, labels)


def _unique_names(paths: Sequence[Path], root: Path | None) -> list[str]:
    """Names from file stems (relative paths under ``root`` without suffix); full paths where stems repeat."""
    stems = [p.relative_to(root).with_suffix("").as_posix() if root else p.stem for p in paths]
    repeated = {s for s in stems if stems.count(s) > 1}
    return [str(p) if s in repeated else s for s, p in zip(stems, paths)]


def _reader(path: Path) -> Callable[[], Tensor]:
    return lambda: read_image_file(path)


def file_items(source: str | Path | Sequence[str | Path]) -> tuple[list[PhotoItem], list[str] | None]:
    """Photo items for a file, a folder (flat, or ImageFolder layout: one subfolder per class), or a list.

    Returns:
        ``(items, labels)``; ``labels`` is the sorted class-folder names for an ImageFolder layout, else None.

    Raises:
        AdvlensError: missing path, a folder in a list, something that is neither a regular file nor a folder
            (a FIFO, a device such as ``/dev/zero``, a socket: checked with ``stat``, never opened), or no
            image files found.
    """
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        kind = file_kind(path)
        if kind == "missing":
            raise AdvlensError(f"no such file or folder: '{source}'")
        if kind == "a regular file":
            return [PhotoItem(path.stem, _reader(path))], None
        if kind != "a folder":
            raise AdvlensError(f"'{source}' is {kind}, not an image file or a folder of images")
        return _folder_items(path)
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
    return [PhotoItem(nm, _reader(p)) for nm, p in zip(_unique_names(paths, None), paths)], None


def _folder_items(folder: Path) -> tuple[list[PhotoItem], list[str] | None]:
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = [(d.name, images_under(d, recursive=True)) for d in subdirs]
    per_class = [(c, files) for c, files in per_class if files]
    if per_class:  # ImageFolder layout: subfolder name = class, labels sorted
        loose = [p for p in folder.iterdir() if is_image_path(p)]
        if loose:
            log.warning("ignoring %d image(s) directly in %s: it has class subfolders", len(loose), folder)
        labels = [c for c, _ in per_class]
        paths = [p for _, files in per_class for p in files]
        ys = [k for k, (_, files) in enumerate(per_class) for _ in files]
        names = _unique_names(paths, folder)
        return [PhotoItem(nm, _reader(p), k) for nm, p, k in zip(names, paths, ys)], labels
    paths = images_under(folder, recursive=False)
    if not paths:
        raise AdvlensError(f"no images found in '{folder}' (looked for {describe_suffixes()})")
    return [PhotoItem(nm, _reader(p)) for nm, p in zip(_unique_names(paths, folder), paths)], None
