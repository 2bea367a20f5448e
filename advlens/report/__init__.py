"""Figures (matplotlib, pyplot-free) and self-contained HTML reports for advlens studies."""
from __future__ import annotations

from advlens.report.figures import bar_plot, heatmap_plot, layer_shift_plot, map_grid, wilson_interval
from advlens.report.html import Section, write_report

__all__ = ["map_grid", "layer_shift_plot", "bar_plot", "heatmap_plot", "wilson_interval", "write_report", "Section"]
