"""Study mode: browse a finished study or demo folder — filter its results, plot a per-layer curve, open
an image's maps (recomputed with the study's own model, images and attack, then cached), serve its files.

Nothing in the folder is written: the maps are kept in memory only.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from .._checks import AdvlensError
from ..studies._common import entries, load_entry
from ..studies.runner import read_tables
from ..studies.spec import load_spec
from .session import ApiError

__all__ = ["StudyFolder", "FILTERS"]

#: result columns the page filters on (those a study's table has)
FILTERS = ("image", "strength", "condition", "explainer", "layer")


def _json_value(v: Any) -> Any:
    """A cell as JSON: NaN/inf -> None, numpy scalars -> Python."""
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)


class StudyFolder:
    """A finished study folder (``spec.json`` + ``results.parquet``), read once.

    Raises:
        AdvlensError: not a finished study folder (one line naming what is missing).
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.dir = Path(run_dir).expanduser().resolve()
        if not self.dir.is_dir():
            raise AdvlensError(f"RUN_DIR {run_dir} is not a folder (give a study or demo output folder)")
        self.meta, tables, _ = read_tables(self.dir)
        self.results: pd.DataFrame = tables["results"]
        self.spec = load_spec(**{k: v for k, v in self.meta["spec"].items() if v is not None})
        self._batches: dict[str, Any] = {}

    def summary(self) -> dict[str, Any]:
        df = self.results
        filters = {c: [_json_value(v) for v in sorted(df[c].dropna().unique().tolist(), key=str)]
                   for c in FILTERS if c in df.columns}
        return {"study": self.spec.study, "dir": self.dir.name, "spec": {k: _json_value(v) if not isinstance(v, (dict, list))
                                                                          else v for k, v in self.spec.to_dict().items()},
                "filters": filters, "layer_order": self.layer_order(), "rows": int(len(df))}

    def layer_order(self) -> list[str]:
        df = self.results
        if "layer" not in df.columns:
            return []
        if "layer_index" in df.columns:
            return [str(n) for n in df.sort_values("layer_index").layer.drop_duplicates()]
        return [str(n) for n in df.layer.drop_duplicates()]

    def select(self, filters: dict[str, Any]) -> pd.DataFrame:
        """Rows whose columns equal every given filter (numbers compared as numbers)."""
        df = self.results
        for col, value in filters.items():
            if value is None or col not in df.columns:
                continue
            if pd.api.types.is_numeric_dtype(df[col]):
                try:
                    df = df[df[col] == float(value)]
                except (TypeError, ValueError):
                    raise ApiError(400, f"filter {col}={value!r} must be a number") from None
            else:
                df = df[df[col].astype(str) == str(value)]
        return df

    def rows(self, filters: dict[str, Any], limit: int) -> dict[str, Any]:
        df = self.select(filters)
        head = df.head(limit)
        return {"columns": list(head.columns), "total": int(len(df)),
                "rows": [[_json_value(v) for v in row] for row in head.itertuples(index=False, name=None)]}

    def curve(self, metric: str, filters: dict[str, Any]) -> dict[str, Any]:
        """Mean ``metric`` per layer (forward order) for each condition of the selected rows."""
        df = self.select(filters)
        if metric not in df.columns or "layer" not in df.columns:
            raise ApiError(400, f"this study has no per-layer column {metric!r}")
        order = self.layer_order()
        series = {}
        for cond, part in (df.groupby("condition") if "condition" in df.columns else [("all", df)]):
            means = part.groupby("layer")[metric].mean()
            series[str(cond)] = [_json_value(means.get(n, float("nan"))) for n in order]
        return {"layers": order, "series": series, "metric": metric}

    def image(self, name: str):
        """``(model, x [1,3,H,W])`` of the study image ``name``, from the study's own entries."""
        for i, entry in enumerate(entries(self.spec)):
            if i not in self._batches:
                self._batches[i] = load_entry(entry, self.spec)
            model, batch = self._batches[i]
            if name in batch.names:
                j = batch.names.index(name)
                return model, batch.x[j:j + 1].to(model.device)
        raise ApiError(404, f"image {name!r} is not among the study's images")

    def file(self, rel: str) -> Path:
        """A file inside the folder (403 for anything outside it, 404 when missing)."""
        path = (self.dir / rel).resolve()
        if path != self.dir and self.dir not in path.parents:
            raise ApiError(403, f"{rel!r} is outside the study folder")
        if not path.is_file():
            raise ApiError(404, f"no file {rel!r} in the study folder")
        return path
