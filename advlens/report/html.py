"""Self-contained HTML reports: sections of text, embedded figures and tables, then parameters and versions.

The report is a single file with no external resource: figures are embedded as base64 ``data:`` URIs,
the CSS is inline, and a Content-Security-Policy forbids scripts and any network fetch. Every string that
comes from the caller (headings, text, captions, table cells, parameter names and values) is escaped by
jinja2's autoescaping. The file is written atomically.

Example:
    >>> from advlens.report import Section, write_report                        # doctest: +SKIP
    >>> write_report("out/report.html", "Layer shift", [Section("Maps", figures=["out/grid.png"])],
    ...              params={"eps": 8 / 255}, versions={"advlens": "0.1.0"})     # doctest: +SKIP
"""
from __future__ import annotations

import base64
import functools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from advlens._checks import AdvlensError
from advlens._io import atomic_write

__all__ = ["Section", "write_report"]

PathLike = str | os.PathLike[str]
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
         ".webp": "image/webp", ".svg": "image/svg+xml"}


@dataclass
class Section:
    """One section of a report.

    Args:
        heading: section title.
        text: plain text; blank lines separate paragraphs (no markup is interpreted — it is escaped).
        figures: image files to embed (PNG, JPEG, GIF, WebP or SVG), in order.
        tables: DataFrames to render, in order (floats shown to 4 significant digits).
        captions: optional captions, one per figure (also used as the images' alt text).
        table_captions: optional captions, one per table.
    """

    heading: str
    text: str = ""
    figures: list[PathLike] = field(default_factory=list)
    tables: list[pd.DataFrame] = field(default_factory=list)
    captions: list[str] | None = None
    table_captions: list[str] | None = None


def write_report(
    path: PathLike,
    title: str,
    sections: Sequence[Section],
    params: Mapping[str, Any],
    versions: Mapping[str, Any],
    *,
    max_rows: int = 500,
    generated_at: datetime | None = None,
) -> Path:
    """Write a self-contained HTML report.

    Args:
        path: output ``.html`` file; missing parent folders are created.
        title: report title (page title and top heading).
        sections: the report's sections, in order.
        params: run parameters, shown in a table at the end; nested mappings are flattened to dotted
            names (``{"attack": {"eps": 0.03}}`` → ``attack.eps``); lists are shown as JSON.
        versions: library versions (name -> version), shown in a table at the end.
        max_rows: longest table rendered in full; longer tables show their first ``max_rows`` rows and
            say how many were left out.
        generated_at: timestamp to print (default: now, UTC).

    Returns:
        The written path.

    Raises:
        AdvlensError: a figure file is missing or of an unsupported type, a caption list does not match
            its figures/tables, or an argument has the wrong type.
    """
    if not isinstance(title, str):
        raise AdvlensError(f"title must be a str, got {type(title).__name__}")
    if max_rows < 1:
        raise AdvlensError(f"max_rows must be at least 1, got {max_rows}")
    for name, mapping in (("params", params), ("versions", versions)):
        if not isinstance(mapping, Mapping):
            raise AdvlensError(f"{name} must be a mapping (dict), got {type(mapping).__name__}")
    rendered = [_section_context(i, s, max_rows) for i, s in enumerate(sections)]
    when = (generated_at or datetime.now(timezone.utc)).isoformat(timespec="seconds")
    html = _environment().get_template("report.html").render(
        title=title,
        sections=rendered,
        params=[(k, _param_value(v)) for k, v in _flatten(params)],
        versions=[(str(k), str(v)) for k, v in versions.items()],
        generated_at=when,
    )
    data = html.encode("utf-8")
    return atomic_write(path, lambda f: f.write(data))


@functools.lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    """The jinja2 environment: package templates, autoescaping always on, undefined names are errors."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader("advlens.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _section_context(i: int, section: Section, max_rows: int) -> dict[str, Any]:
    """Validate one section and turn it into plain template data."""
    if not isinstance(section, Section):
        raise AdvlensError(f"sections[{i}] must be a Section, got {type(section).__name__}")
    figures, tables = list(section.figures), list(section.tables)
    captions = _captions(section.captions, len(figures), f"sections[{i}].captions", "figures")
    table_captions = _captions(section.table_captions, len(tables), f"sections[{i}].table_captions", "tables")
    return {
        "anchor": f"section-{i + 1}",
        "heading": str(section.heading),
        "paragraphs": [p.strip() for p in str(section.text).split("\n\n") if p.strip()],
        "figures": [
            {"src": _data_uri(fig), "alt": cap or f"{section.heading}: {Path(fig).name}", "caption": cap}
            for fig, cap in zip(figures, captions)
        ],
        "tables": [_table(t, cap, max_rows, f"sections[{i}].tables[{j}]")
                   for j, (t, cap) in enumerate(zip(tables, table_captions))],
    }


def _captions(captions: Sequence[str] | None, n: int, name: str, what: str) -> list[str]:
    """Captions as a list of ``n`` strings ('' where none was given)."""
    if captions is None:
        return [""] * n
    captions = [str(c) for c in captions]
    if len(captions) != n:
        raise AdvlensError(f"{name} has {len(captions)} entries but the section has {n} {what}")
    return captions


def _data_uri(figure: PathLike) -> str:
    """Read an image file into a base64 ``data:`` URI."""
    path = Path(figure)
    if not path.is_file():
        raise AdvlensError(f"figure file not found: {str(path)!r}")
    mime = _MIME.get(path.suffix.lower())
    if mime is None:
        raise AdvlensError(f"figure {str(path)!r} has unsupported type {path.suffix!r}; use one of {sorted(_MIME)}")
    data = path.read_bytes()
    if not data:
        raise AdvlensError(f"figure file is empty: {str(path)!r}")
    if len(data) > THUMBNAIL_BYTES and mime in ("image/png", "image/jpeg"):
        mime, data = "image/jpeg", _thumbnail(data)
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


#: figures larger than this are embedded as a JPEG thumbnail (the full-size file stays in figures/)
THUMBNAIL_BYTES = 300_000


def _thumbnail(data: bytes, max_side: int = 1400, quality: int = 85) -> bytes:
    """``data`` (PNG/JPEG bytes) as a JPEG at most ``max_side`` pixels wide or high: reports stay small."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def _table(df: object, caption: str, max_rows: int, name: str) -> dict[str, Any]:
    """A DataFrame as template data: header, formatted cells, numeric-column flags, truncation note."""
    if isinstance(df, pd.Series):
        df = df.to_frame()
    if not isinstance(df, pd.DataFrame):
        raise AdvlensError(f"{name} must be a pandas DataFrame, got {type(df).__name__}")
    idx = df.index
    if not (isinstance(idx, pd.RangeIndex) and idx.name is None and idx.start == 0 and idx.step == 1):
        df = df.reset_index()
    if isinstance(df.columns, pd.MultiIndex):
        columns = [" / ".join(str(p) for p in c if str(p)) for c in df.columns]
    else:
        columns = [str(c) for c in df.columns]
    numeric = [pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t) for t in df.dtypes]
    shown = df.iloc[:max_rows]
    rows = [[_cell(v) for v in row] for row in shown.itertuples(index=False, name=None)]
    note = f"showing the first {max_rows} of {len(df)} rows" if len(df) > max_rows else ""
    return {"caption": caption, "columns": columns, "numeric": numeric, "rows": rows, "note": note}


def _cell(v: Any) -> str:
    """Format one table cell: floats to 4 significant digits, missing values as an em dash."""
    if v is None or (pd.api.types.is_scalar(v) and pd.isna(v)):
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.4g}"
    if hasattr(v, "ndim") and getattr(v, "ndim", 1) == 0 and hasattr(v, "item"):  # 0-d tensor/array
        return _cell(v.item())
    return str(v)


def _flatten(mapping: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Flatten nested mappings to ``(dotted.name, value)`` pairs, keeping insertion order."""
    out: list[tuple[str, Any]] = []
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.extend(_flatten(value, name + "."))
        else:
            out.append((name, value))
    return out


def _param_value(v: Any) -> str:
    """Show a parameter exactly (floats unrounded); lists and tuples as JSON."""
    if isinstance(v, (list, tuple, Mapping)):
        return json.dumps(v, default=str, ensure_ascii=False)
    return str(v)
