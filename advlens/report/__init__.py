"""Figures (matplotlib, pyplot-free) and self-contained HTML reports for advlens studies."""
from __future__ import annotations

from advlens.report.charts import bar_plot, heatmap_plot, wilson_interval
from advlens.report.figures import layer_shift_plot, map_grid
from advlens.report.html import Section, write_report

__all__ = ["map_grid", "layer_shift_plot", "bar_plot", "heatmap_plot", "wilson_interval", "write_report", "Section"]
