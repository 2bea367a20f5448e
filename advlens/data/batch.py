"""`ImageBatch`: images with their labels, names and optional object masks, plus seeded splits."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from advlens._checks import AdvlensError

__all__ = ["ImageBatch", "stratified_split_indices", "subsample_indices"]

Index = int | slice | Tensor | Sequence[int]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def stratified_split_indices(y: Tensor | None, n: int, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Seeded train/test split of ``range(n)``, stratified by ``y`` when given.

    Each class (``-1`` counts as a class of its own) sends ``round(test_fraction * count)`` of its members,
    chosen at random, to the test side; both sides come back sorted, so they keep the original order.

    Args:
        y: labels ``[n]`` (int64) or ``None`` for a plain random split.
        n: number of items.
        test_fraction: share of each class that goes to the test side, in (0, 1).
        seed: seed of the permutation.

    Returns:
        ``(train_idx, test_idx)``: disjoint int64 tensors whose union is ``range(n)``.
    """
    if not isinstance(test_fraction, (int, float)) or not 0.0 < float(test_fraction) < 1.0:
        raise AdvlensError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    gen = _generator(seed)
    is_test = torch.zeros(n, dtype=torch.bool)
    groups = [torch.arange(n)] if y is None else [torch.nonzero(y.cpu() == c).flatten() for c in torch.unique(y.cpu())]
    for members in groups:
        k = int(round(float(test_fraction) * members.numel()))
        chosen = members[torch.randperm(members.numel(), generator=gen)[:k]]
        is_test[chosen] = True
    return torch.nonzero(~is_test).flatten(), torch.nonzero(is_test).flatten()


def subsample_indices(available: Tensor, n: int | None, seed: int, what: str) -> Tensor:
    """Pick ``n`` of the ``available`` indices ``[M]`` at random (seeded), keeping their order → ``[n]``; all
    when ``n`` is None.

    Raises:
        AdvlensError: ``n`` larger than the number available.
    """
    if n is None or n == available.numel():
        return available
    if n > available.numel():
        raise AdvlensError(f"{what} has only {available.numel()} images; asked for n={n}")
    keep = torch.randperm(available.numel(), generator=_generator(seed))[:n]
    return available[torch.sort(keep).values]


@dataclass
class ImageBatch:
    """A batch of images with optional labels and object masks.

    Attributes:
        x: images, float32 ``[N, 3, H, W]`` in [0, 1].
        y: class indices, int64 ``[N]`` (``-1`` where an image has no label), or ``None`` for an unlabelled
            source.
        names: one name per image (``len(names) == N``), e.g. ``"chelsea"`` or ``"chelsea#1"`` for an extra view.
        masks: ground-truth object masks, bool ``[N, H, W]``, or ``None``.
        labels: class names of this source (``labels[y[i]]`` names image ``i``), or ``None``.

    Example:
        >>> import torch
        >>> b = ImageBatch(torch.zeros(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]), list("abcd"), labels=["u", "v"])
        >>> len(b[1:3]), b[torch.tensor([3])].names
        (2, ['d'])
    """

    x: Tensor
    y: Tensor | None
    names: list[str]
    masks: Tensor | None = None
    labels: list[str] | None = None

    def __post_init__(self) -> None:
        x = self.x
        if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            got = f"{x.dtype} {list(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise AdvlensError(f"ImageBatch.x must be a float tensor [N,3,H,W], got {got}")
        n, _, h, w = x.shape
        if isinstance(self.names, (str, bytes)) or not isinstance(self.names, Sequence):
            raise AdvlensError(f"ImageBatch.names must be a list of {n} str, got {type(self.names).__name__}")
        self.names = list(self.names)
        if len(self.names) != n:
            raise AdvlensError(f"ImageBatch has {n} images but {len(self.names)} names")
        if not all(isinstance(nm, str) for nm in self.names):
            bad = next(nm for nm in self.names if not isinstance(nm, str))
            raise AdvlensError(f"ImageBatch.names must be str, got {type(bad).__name__} {str(bad)[:40]!r}")
        if self.labels is not None:
            if isinstance(self.labels, (str, bytes)) or not isinstance(self.labels, Sequence) or not all(
                    isinstance(c, str) for c in self.labels):
                raise AdvlensError(f"ImageBatch.labels must be a list of class names (str) or None, "
                                   f"got {str(self.labels)[:60]}")
            self.labels = list(self.labels)
        if self.y is not None:
            self._check_y(n)
        if self.masks is not None:
            if not isinstance(self.masks, Tensor) or self.masks.shape != (n, h, w) or self.masks.dtype != torch.bool:
                got = f"{self.masks.dtype} {list(self.masks.shape)}" if isinstance(self.masks, Tensor) else \
                    type(self.masks).__name__
                raise AdvlensError(f"ImageBatch.masks must be a bool tensor [{n},{h},{w}] or None, got {got}")

    def _check_y(self, n: int) -> None:
        """``y``: int64 class indices ``[n]``, each ``-1`` (no label) or an index into ``labels``."""
        y = self.y
        if not isinstance(y, Tensor):
            raise AdvlensError(f"ImageBatch.y must be an int64 tensor [{n}] of class indices or None, "
                               f"got {type(y).__name__}")
        if y.dtype != torch.int64 or y.shape != (n,):
            hint = "; labels must be class indices (-1 = none), not scores" if y.is_floating_point() else \
                "; convert integer labels with y.long()" if not y.is_complex() and y.dtype != torch.bool else ""
            raise AdvlensError(f"ImageBatch.y must be an int64 tensor [{n}] of class indices or None, "
                               f"got {y.dtype} {list(y.shape)}{hint}")
        if n:
            lo, hi = int(y.min()), int(y.max())
            top = len(self.labels) - 1 if self.labels is not None else None
            if lo < -1 or (top is not None and hi > top):
                rng = f"[-1, {top}]" if top is not None else "≥ -1"
                raise AdvlensError(f"ImageBatch.y holds class indices in [{lo}, {hi}]; they must be {rng} "
                                   f"(-1 = no label{f', {top + 1} labels' if top is not None else ''})")

    def __len__(self) -> int:
        return self.x.shape[0]

    def __repr__(self) -> str:
        n, _, h, w = self.x.shape
        parts = [f"n={n}", f"size=({h}, {w})", f"device={self.x.device}"]
        if self.y is not None:
            parts.append(f"labelled={int((self.y >= 0).sum())}")
        if self.labels is not None:
            parts.append(f"classes={len(self.labels)}")
        if self.masks is not None:
            parts.append("masks")
        return f"ImageBatch({', '.join(parts)})"

    def to(self, device: torch.device | str) -> ImageBatch:
        """Return a copy whose tensors (``x``, ``y``, ``masks``) live on ``device``."""
        return ImageBatch(
            self.x.to(device),
            None if self.y is None else self.y.to(device),
            list(self.names),
            None if self.masks is None else self.masks.to(device),
            None if self.labels is None else list(self.labels),
        )

    def __getitem__(self, index: Index) -> ImageBatch:
        """Select images by int, slice, int64 index tensor, bool mask ``[N]`` or list of ints.

        Always returns an :class:`ImageBatch` (an int gives a batch of one).
        """
        idx = self._as_indices(index)
        dev = self.x.device
        return ImageBatch(
            self.x[idx.to(dev)],
            None if self.y is None else self.y[idx.to(self.y.device)],
            [self.names[i] for i in idx.tolist()],
            None if self.masks is None else self.masks[idx.to(self.masks.device)],
            None if self.labels is None else list(self.labels),
        )

    def _as_indices(self, index: Index) -> Tensor:
        n = len(self)
        if isinstance(index, bool):
            raise AdvlensError("ImageBatch index must be an int, slice, index tensor or bool mask, got bool")
        if isinstance(index, int):
            if not -n <= index < n:
                raise AdvlensError(f"ImageBatch index {index} is out of range for {n} images")
            return torch.tensor([index % n])
        if isinstance(index, slice):
            return torch.arange(n)[index]
        idx = torch.as_tensor(index).cpu() if not isinstance(index, Tensor) else index.cpu()
        if idx.dtype == torch.bool:
            if idx.shape != (n,):
                raise AdvlensError(f"ImageBatch bool index must have shape [{n}], got {list(idx.shape)}")
            return torch.nonzero(idx).flatten()
        if idx.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8) or idx.ndim > 1:
            raise AdvlensError(f"ImageBatch index must be a 1-D integer or bool tensor, got {idx.dtype} {list(idx.shape)}")
        idx = idx.long().flatten()
        if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
            raise AdvlensError(f"ImageBatch index out of range for {n} images")
        return idx % n if n else idx

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple[ImageBatch, ImageBatch]:
        """Split into ``(train, test)``, stratified by ``y`` when present (see :func:`stratified_split_indices`).

        Args:
            test_fraction: share of each class that goes to ``test``, in (0, 1).
            seed: seed of the split; the same seed always gives the same split.
        """
        train, test = stratified_split_indices(self.y, len(self), test_fraction, seed)
        return self[train], self[test]

    @staticmethod
    def cat(batches: Sequence[ImageBatch]) -> ImageBatch:
        """Concatenate batches of the same image size; masks/labels are kept only if all batches agree."""
        if not batches:
            raise AdvlensError("ImageBatch.cat needs at least one batch")
        sizes = {tuple(b.x.shape[2:]) for b in batches}
        if len(sizes) > 1:
            raise AdvlensError(f"ImageBatch.cat needs images of one size, got {sorted(sizes)}")
        ys = [b.y if b.y is not None else torch.full((len(b),), -1, dtype=torch.int64) for b in batches]
        has_y = any(b.y is not None for b in batches)
        has_masks = all(b.masks is not None for b in batches)
        labels = batches[0].labels if all(b.labels == batches[0].labels for b in batches) else None
        return ImageBatch(
            torch.cat([b.x for b in batches]),
            torch.cat([y.to(batches[0].x.device) for y in ys]) if has_y else None,
            [name for b in batches for name in b.names],
            torch.cat([b.masks for b in batches]) if has_masks else None,  # type: ignore[misc]
            labels,
        )
