"""Table sources: a ``.csv`` or ``.parquet`` file listing image paths, with optional class labels.

Columns: ``path`` (required; relative paths are relative to the table's folder) and ``label`` (optional:
class indices as ints, or class names as strings). Read with pandas; no image is opened while listing.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from advlens._checks import AdvlensError, file_kind, first_line

from .classes import class_indices
from .photos import PhotoItem, file_reader, unique_names

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["TABLE_SUFFIXES", "is_table_path", "table_items"]

#: File endings read as tables of image paths.
TABLE_SUFFIXES = (".csv", ".parquet")


def is_table_path(path: Path) -> bool:
    """True for a path ending in one of :data:`TABLE_SUFFIXES` (any case)."""
    return path.suffix.lower() in TABLE_SUFFIXES


def _read_table(table: Path) -> pd.DataFrame:
    """The table as a DataFrame (pandas imported here, only when a table is used)."""
    import pandas as pd

    try:
        if table.suffix.lower() == ".csv":
            return pd.read_csv(table, dtype={"path": str}, keep_default_na=True)
        return pd.read_parquet(table)
    except pd.errors.EmptyDataError:
        raise AdvlensError(f"table '{table}' is empty: expected a header with a 'path' column") from None
    except Exception as exc:  # pandas/pyarrow raise ParserError, ArrowInvalid, OSError, UnicodeDecodeError…
        raise AdvlensError(f"cannot read table '{table}': {first_line(exc)}") from None


def _is_missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or (isinstance(value, str) and
                                                                             not value.strip())


def _paths(table: Path, values: list[object]) -> list[Path]:
    """Resolve the ``path`` column (relative to the table's folder); every row must name a regular file."""
    out = []
    for row, value in enumerate(values, 1):
        if _is_missing(value) or not isinstance(value, str):
            raise AdvlensError(f"table '{table}' row {row}: column 'path' must hold a file path, got {value!r}")
        p = Path(value).expanduser()
        p = p if p.is_absolute() else table.parent / p
        kind = file_kind(p)
        if kind != "a regular file":
            what = "no such file" if kind == "missing" else f"{kind}, not an image file:"
            raise AdvlensError(f"table '{table}' row {row}: {what} '{value}' (column 'path')")
        out.append(p)
    return out


def _int_labels(table: Path, column: pd.Series,
                model_labels: Sequence[str] | None) -> tuple[list[int], list[str] | None]:
    """Class indices from a numeric ``label`` column (empty cells: -1); labels = ``model_labels``."""
    values = column.to_numpy(dtype=np.float64, na_value=np.nan)
    top = None if model_labels is None else len(model_labels) - 1
    ys = []
    for row, v in enumerate(values.tolist(), 1):
        if np.isnan(v):
            ys.append(-1)
            continue
        if v != int(v) or v < -1 or (top is not None and v > top):
            allowed = "an int ≥ -1" if top is None else f"an int in [-1, {top}] (the model has {top + 1} labels)"
            raise AdvlensError(f"table '{table}' row {row}: column 'label' must hold {allowed}, got {v:g}")
        ys.append(int(v))
    return ys, None if model_labels is None else list(model_labels)


def _name_labels(table: Path, values: list[object],
                 model_labels: Sequence[str] | None) -> tuple[list[int], list[str] | None]:
    """Class indices from a ``label`` column of class names (empty cells: -1), see :func:`class_indices`."""
    names = [None if _is_missing(v) else str(v).strip() for v in values]
    classes = sorted({nm for nm in names if nm is not None})
    if not classes:
        return [-1] * len(names), None
    index, labels = class_indices(classes, model_labels, f"label names of table '{table}'")
    lookup = dict(zip(classes, index))
    return [-1 if nm is None else lookup[nm] for nm in names], labels


def table_items(table: Path, labels: Sequence[str] | None = None) -> tuple[list[PhotoItem], list[str] | None]:
    """Photo items listed by a ``.csv`` / ``.parquet`` table (checks that each file exists; reads none).

    Args:
        table: the table file, with a ``path`` column and an optional ``label`` column.
        labels: the model's class names: int labels must index them; string labels are mapped to them by name
            (else sorted unique names, with a warning; ImageNet WordNet ids map to ImageNet-1k indices).

    Returns:
        ``(items, labels)`` as :func:`~advlens.data.photos.file_items`: names are the paths relative to the
        table's folder without suffix (file stems where some lie outside it); ``y`` from ``label`` (``-1``
        where empty); ``labels`` the class names, or None (no ``label`` column, or ints without ``labels``).

    Raises:
        AdvlensError: unreadable or empty table, no ``path`` column, a row whose file is missing or whose
            label is not a valid class index (rows are numbered from 1, header not counted).
    """
    frame = _read_table(table)
    if "path" not in frame.columns:
        found = ", ".join(repr(str(c)) for c in list(frame.columns)[:8]) or "none"
        raise AdvlensError(f"table '{table}' has no 'path' column (columns: {found})")
    if len(frame) == 0:
        raise AdvlensError(f"table '{table}' is empty: its 'path' column has no rows")
    paths = _paths(table, frame["path"].tolist())
    ys, batch_labels = [-1] * len(paths), None
    if "label" in frame.columns:
        import pandas as pd

        column = frame["label"]
        if pd.api.types.is_bool_dtype(column):
            raise AdvlensError(f"table '{table}': column 'label' must hold class indices (int) or class names "
                               "(str), got booleans")
        if pd.api.types.is_numeric_dtype(column):
            ys, batch_labels = _int_labels(table, column, labels)
        else:
            ys, batch_labels = _name_labels(table, column.tolist(), labels)
    root = table.parent
    inside = all(p.is_relative_to(root) for p in paths)
    names = unique_names(paths, root if inside else None)
    return [PhotoItem(nm, file_reader(p), y) for nm, p, y in zip(names, paths, ys)], batch_labels
