"""Class names: the ImageNet-1k names and WordNet ids (offline), and how a data set's class names
(class folders, a table's label names) map onto a model's labels."""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from functools import lru_cache

from advlens._checks import AdvlensError

__all__ = ["WNID", "imagenet_labels", "imagenet_wnids", "check_class_names", "class_indices"]

log = logging.getLogger(__name__)

#: an ImageNet class folder name (a WordNet noun id)
WNID = re.compile(r"n\d{8}")


@lru_cache(maxsize=1)
def _imagenet_labels() -> tuple[str, ...]:
    from torchvision.models import ResNet50_Weights  # the enum's metadata is in the package: no download

    return tuple(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def imagenet_labels() -> list[str]:
    """The 1,000 ImageNet-1k class names in class-index order (``[285] == 'Egyptian cat'``), offline."""
    return list(_imagenet_labels())


@lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1,000 ImageNet-1k WordNet ids in class-index order (``[0] == 'n01440764'``), offline.

    Read from the list bundled with timm (``timm/data/_info/imagenet_synsets.txt``, line ``i`` = class ``i``),
    located without importing timm.
    """
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("timm")
    where = [Path(p) / "data" / "_info" / "imagenet_synsets.txt" for p in (spec.submodule_search_locations or [])] \
        if spec is not None else []
    found = next((p for p in where if p.is_file()), None)
    wnids = tuple(found.read_text().split()) if found is not None else ()
    if len(wnids) != 1000:
        raise AdvlensError("timm's ImageNet synset list (timm/data/_info/imagenet_synsets.txt) is missing or "
                           "does not hold 1000 ids; reinstall timm")
    return wnids


def check_class_names(labels: object) -> list[str] | None:
    """``labels`` (a model's class names) as a list of str, or None."""
    if labels is None:
        return None
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence) or not labels or not all(
            isinstance(c, str) for c in labels):
        raise AdvlensError(f"labels must be a non-empty list of class names (str) or None, got {str(labels)[:60]}")
    return list(labels)


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").casefold().split())


def _match(classes: Sequence[str], names: Sequence[str]) -> list[int | None]:
    """Index in ``names`` of each class: exact match first, else case-insensitive with ``_`` = space."""
    exact: dict[str, int] = {}
    loose: dict[str, int] = {}
    for i, nm in enumerate(names):
        exact.setdefault(nm, i)
        loose.setdefault(_norm(nm), i)
    return [exact.get(c, loose.get(_norm(c))) for c in classes]


def class_indices(classes: Sequence[str], model_labels: Sequence[str] | None,
                  where: str) -> tuple[list[int], list[str]]:
    """Class index of each class name found in the data (sorted), and the batch's ``labels``.

    In order: every name found in ``model_labels`` (see :func:`_match`) -> their indices there, labels =
    ``model_labels``; every name a WordNet id -> its ImageNet-1k index, labels = the ImageNet names; else the
    sorted order, labels = ``classes`` (logging a warning when ``model_labels`` was given).

    Args:
        classes: sorted unique class names (class folders, or names in a label column).
        model_labels: the model's class names, or None.
        where: what holds the names, for messages (``"class folders of 'data/val'"``).

    Raises:
        AdvlensError: a WordNet-id name that is not one of the 1,000 ImageNet-1k classes.
    """
    if model_labels is not None:
        found = _match(classes, model_labels)
        if all(i is not None for i in found):
            return [int(i) for i in found], list(model_labels)  # type: ignore[arg-type]
    if classes and all(WNID.fullmatch(c) for c in classes):
        index = {w: i for i, w in enumerate(imagenet_wnids())}
        unknown = [c for c in classes if c not in index]
        if unknown:
            raise AdvlensError(f"'{unknown[0]}' in the {where} looks like a WordNet id but is not one of the "
                               "1000 ImageNet-1k classes")
        if model_labels is not None and len(model_labels) != 1000:
            log.warning("the %s are ImageNet WordNet ids: using ImageNet-1k indices, but the model has %d labels",
                        where, len(model_labels))
        return [index[c] for c in classes], imagenet_labels()
    if model_labels is not None:
        missing = [c for c, i in zip(classes, found) if i is None]
        shown = ", ".join(repr(c) for c in missing[:3]) + (", …" if len(missing) > 3 else "")
        log.warning("the %s are not all among the model's labels (%d missing: %s); using their sorted order "
                    "as class indices 0..%d", where, len(missing), shown, len(classes) - 1)
    return list(range(len(classes))), list(classes)
