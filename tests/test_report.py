"""Tests for advlens.report: figures (valid PNGs, atomic saves, errors) and the self-contained HTML report
(embedding, escaping, tables, and a headless-Chromium check that every embedded image decodes)."""
from __future__ import annotations

import base64
import html as htmllib
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from browser import chromium, imgcheck, with_check
from matplotlib.figure import Figure
from PIL import Image

from advlens._checks import AdvlensError
from advlens._io import atomic_write
from advlens.report import Section, bar_plot, layer_shift_plot, map_grid, write_report

HOSTILE = "<script>alert(1)</script>"
ESCAPED = htmllib.escape(HOSTILE, quote=False)  # &lt;script&gt;alert(1)&lt;/script&gt;
LAYERS = ["conv1", "layer1.0", "layer2.0", "layer3.0"]
CONDITIONS = ["clean", "FGSM", "noise"]


# ------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def batch() -> tuple[dict[str, torch.Tensor], dict[str, dict[str, torch.Tensor]]]:
    """Images [2,3,32,32] and smooth maps [2,32,32] in [0,1] for three conditions and four layers."""
    g = torch.Generator().manual_seed(0)
    rows = {c: torch.rand(2, 3, 32, 32, generator=g) for c in CONDITIONS}
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    maps = {}
    for c in CONDITIONS:
        maps[c] = {}
        for k, layer in enumerate(LAYERS):
            centre = torch.rand(2, 2, generator=g) * 2 - 1
            d2 = (yy - centre[:, 0, None, None]) ** 2 + (xx - centre[:, 1, None, None]) ** 2
            maps[c][layer] = torch.exp(-d2 / (0.1 + 0.1 * k))
    return rows, maps


@pytest.fixture(scope="module")
def shift_df() -> pd.DataFrame:
    """Long-form per-layer cosine similarities for two conditions (rows deliberately out of order)."""
    rng = np.random.default_rng(0)
    recs = [
        {"layer": layer, "cosine": float(np.clip(base - 0.1 * i + rng.normal(0, 0.05), 0, 1)), "condition": cond,
         "image": n}
        for cond, base in (("adversarial (FGSM)", 0.9), ("noise (FGSM)", 1.0))
        for i, layer in enumerate(LAYERS)
        for n in range(6)
    ]
    return pd.DataFrame(recs).sample(frac=1.0, random_state=0)


@pytest.fixture(scope="module")
def figures(tmp_path_factory, batch, shift_df) -> list[Path]:
    """Three real figures written once for the report tests."""
    d = tmp_path_factory.mktemp("figs")
    rows, maps = batch
    table = pd.DataFrame({"attack": ["fgsm", "pgd", "fgsm", "pgd"], "eps": ["2/255", "2/255", "8/255", "8/255"],
                          "asr": [0.4, 0.7, 0.8, 1.0]})
    return [
        map_grid(d / "grid.png", rows, maps, LAYERS[:2]),
        layer_shift_plot(d / "shift.png", shift_df, layer_order=LAYERS),
        bar_plot(d / "bar.png", table, "attack", "asr", hue="eps"),
    ]


def _check_png(path: Path, min_side: int = 200, max_side: int = 5000) -> tuple[int, int]:
    """Assert ``path`` is a valid, non-blank PNG of sensible size; return its size."""
    assert path.is_file()
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        w, h = im.size
        assert min_side <= w <= max_side and min_side <= h <= max_side, (w, h)
        assert np.asarray(im.convert("L")).std() > 1.0  # something was drawn
    return w, h


def _leftovers(folder: Path) -> list[str]:
    """Temp files left in ``folder`` by an interrupted atomic write."""
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# -------------------------------------------------------------------------------------------- figures
def test_map_grid_writes_png(tmp_path, batch):
    rows, maps = batch
    out = map_grid(tmp_path / "sub" / "grid.png", rows, maps, LAYERS, index=1,
                   titles={"clean": "Egyptian cat (0.80)", "FGSM": "tabby (0.55)"}, title="Grad-CAM")
    assert out == tmp_path / "sub" / "grid.png"
    w, h = _check_png(out)
    assert w > h  # 5 columns, 3 rows
    assert _leftovers(out.parent) == []


def test_map_grid_accepts_grad_lowp_and_other_sizes(tmp_path, batch):
    rows, maps = batch
    x = rows["clean"].clone().requires_grad_(True)
    small = {layer: m[:, ::4, ::4].to(torch.bfloat16) for layer, m in maps["clean"].items()}  # 8x8 maps
    out = map_grid(tmp_path / "g.png", {"clean": x}, {"clean": small}, LAYERS[:1], index=-1, titles=["cat"])
    _check_png(out)


def test_figures_do_not_touch_pyplot(tmp_path, batch):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    rows, maps = batch
    map_grid(tmp_path / "g.png", rows, maps, LAYERS[:1])
    assert plt.get_fignums() == before


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"layers": ["nope"]}, "has no layer 'nope'"),
        ({"index": 5}, "index 5 is out of range"),
        ({"layers": []}, "layers is empty"),
        ({"titles": ["a"]}, "titles has 1 entries"),
    ],
)
def test_map_grid_errors_leave_nothing(tmp_path, batch, kwargs, message):
    rows, maps = batch
    args = {"layers": LAYERS[:2], **kwargs}
    with pytest.raises(AdvlensError, match=re.escape(message)):
        map_grid(tmp_path / "g.png", rows, maps, **args)
    assert list(tmp_path.iterdir()) == []


def test_map_grid_bad_inputs(tmp_path, batch):
    rows, maps = batch
    with pytest.raises(AdvlensError, match="has no condition 'clean'"):
        map_grid(tmp_path / "g.png", rows, {"FGSM": maps["FGSM"]}, LAYERS[:1])
    with pytest.raises(AdvlensError, match=r"Tensor \[N,3,H,W\]"):
        map_grid(tmp_path / "g.png", {"clean": rows["clean"][0]}, maps, LAYERS[:1])
    with pytest.raises(AdvlensError, match=r"Tensor \[N,H,W\]"):
        map_grid(tmp_path / "g.png", {"clean": rows["clean"]}, {"clean": {"conv1": torch.rand(2, 1, 32, 32)}},
                 ["conv1"])
    with pytest.raises(AdvlensError, match="unknown format 'xyz'"):
        map_grid(tmp_path / "g.xyz", rows, maps, LAYERS[:1])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("band", ["iqr", "std", "sem", None])
def test_layer_shift_plot(tmp_path, shift_df, band):
    out = layer_shift_plot(tmp_path / "shift.png", shift_df, layer_order=LAYERS, band=band, title="cosine to clean")
    _check_png(out)


def test_layer_shift_plot_single_line_and_errors(tmp_path, shift_df):
    _check_png(layer_shift_plot(tmp_path / "one.png", shift_df, hue=None))
    with pytest.raises(AdvlensError, match=r"no column\(s\) \['ssim'\]"):
        layer_shift_plot(tmp_path / "x.png", shift_df, y="ssim")
    with pytest.raises(AdvlensError, match="layer_order does not list"):
        layer_shift_plot(tmp_path / "x.png", shift_df, layer_order=LAYERS[:2])
    with pytest.raises(AdvlensError, match="unknown band"):
        layer_shift_plot(tmp_path / "x.png", shift_df, band="ci")
    with pytest.raises(AdvlensError, match="must be numeric"):
        layer_shift_plot(tmp_path / "x.png", shift_df, y="condition", hue=None)
    with pytest.raises(AdvlensError, match="empty"):
        layer_shift_plot(tmp_path / "x.png", shift_df.iloc[:0])
    assert not (tmp_path / "x.png").exists()


def test_bar_plot(tmp_path):
    df = pd.DataFrame({"attack": ["fgsm", "pgd", "cw"] * 4, "eps": ["2/255"] * 6 + ["8/255"] * 6,
                       "psnr": np.linspace(25, 40, 12)})
    _check_png(bar_plot(tmp_path / "grouped.png", df, "attack", "psnr", hue="eps", title="PSNR"))
    _check_png(bar_plot(tmp_path / "plain.png", df, "attack", "psnr", annotate=False))
    with pytest.raises(AdvlensError, match="no column"):
        bar_plot(tmp_path / "x.png", df, "attack", "asr")


def test_failed_save_is_atomic(tmp_path, batch, monkeypatch):
    rows, maps = batch
    target = tmp_path / "g.png"
    target.write_bytes(b"old")

    def boom(self, fname, *args, **kwargs):
        fname.write(b"\x89PNG partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        map_grid(target, rows, maps, LAYERS[:1])
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.png"]


def test_atomic_write_failure_removes_temp(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")

    def partial(f):
        f.write(b"half")
        raise OSError("interrupted")

    with pytest.raises(OSError, match="interrupted"):
        atomic_write(target, partial)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
    atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new"
    assert oct(target.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


# --------------------------------------------------------------------------------------------- report
def _report(tmp_path: Path, figures: list[Path], name: str = "report.html", **kwargs) -> Path:
    """A report with every figure, a hostile string everywhere, and two tables."""
    table = pd.DataFrame({
        "attack": ["fgsm", HOSTILE, "pgd"],
        "asr": [1 / 3, 0.123456789, float("nan")],
        "psnr": [123456.789, 31.0, 29.5],
        "n": [10, 20, 30],
    })
    by_layer = pd.DataFrame({"cosine": [0.99, 0.5]}, index=pd.Index(["conv1", "layer1.0"], name="layer"))
    sections = [
        Section(HOSTILE, text=f"First paragraph {HOSTILE}.\n\nSecond paragraph.", figures=figures[:2],
                captions=["Grad-CAM grid", HOSTILE]),
        Section("Attack success", figures=figures[2:], tables=[table, by_layer],
                table_captions=["attacks", "per layer"]),
    ]
    params = {"eps": 8 / 255, "attack": {"method": HOSTILE, "steps": 10}, "layers": LAYERS[:2]}
    return write_report(tmp_path / name, f"Layer shift {HOSTILE}", sections, params,
                        {"torch": torch.__version__, "hostile": HOSTILE}, **kwargs)


def test_report_embeds_escapes_and_renders_tables(tmp_path, figures):
    out = _report(tmp_path, figures)
    text = out.read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") == len(figures) == 3
    for f in figures:  # the exact bytes are embedded
        assert base64.b64encode(f.read_bytes()).decode() in text
    # hostile strings: title, heading, text, caption/alt, table cell, param value, version
    assert "<script" not in text.lower()
    assert text.count(ESCAPED) >= 7
    assert 'alt="&lt;script&gt;alert(1)&lt;/script&gt;"' in text
    # tables: 4 significant digits, missing values, integers, named index kept as a column
    for cell in ("0.3333", "0.1235", "1.235e+05", "—", ">20<", ">layer<", ">0.99<"):
        assert cell in text, cell
    assert "0.333333" not in text
    assert text.count("<table") == 4  # two data tables + parameters + versions
    assert ">attack.method<" in text and ">0.03137254901960784<" in text  # params flattened, exact
    assert re.search(r"Generated at <time datetime=\"\d{4}-\d\d-\d\dT", text)
    # self-contained: no external resources, scripts forbidden by CSP
    assert not re.search(r"(src|href)=\"(https?:)?//", text)
    assert "<link" not in text and "@import" not in text
    assert "script-src 'none'" in text
    assert _leftovers(tmp_path) == []


def test_report_truncates_long_tables(tmp_path):
    df = pd.DataFrame({"i": range(50), "v": np.arange(50) / 7})
    out = write_report(tmp_path / "r.html", "t", [Section("s", tables=[df])], {}, {}, max_rows=10)
    text = out.read_text()
    assert "showing the first 10 of 50 rows" in text
    assert text.count("<tr>") == 11  # header + 10 rows
    assert "No parameters recorded." in text


def test_report_missing_figure(tmp_path, figures):
    missing = tmp_path / "nowhere" / "missing.png"
    with pytest.raises(AdvlensError, match=re.escape(f"figure file not found: '{missing}'")):
        write_report(tmp_path / "r.html", "t", [Section("s", figures=[figures[0], missing])], {}, {})
    with pytest.raises(AdvlensError, match="captions has 1 entries but the section has 2 figures"):
        write_report(tmp_path / "r.html", "t", [Section("s", figures=figures[:2], captions=["a"])], {}, {})
    with pytest.raises(AdvlensError, match="must be a Section"):
        write_report(tmp_path / "r.html", "t", ["not a section"], {}, {})  # type: ignore[list-item]
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ headless chromium
def test_report_images_load_in_chromium(tmp_path, figures):
    exe = chromium()
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    report = _report(tmp_path, figures)
    bad_report = _report(tmp_path, [*figures[:2], broken], name="bad.html")

    loaded = imgcheck(exe, with_check(report, tmp_path / "check.html"), tmp_path / "profile1")
    assert loaded == (len(figures), len(figures), 4)
    # control: the check sees an image that does not decode
    assert imgcheck(exe, with_check(bad_report, tmp_path / "bad_check.html"), tmp_path / "profile2") == (2, 3, 4)
    # control: the report's own CSP blocks any script that was not explicitly allowed
    assert imgcheck(exe, with_check(report, tmp_path / "blocked.html", allow_script=False),
                     tmp_path / "profile3") is None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_map_grid_from_cuda_tensors(tmp_path, batch):
    rows, maps = batch
    rows = {c: x.cuda() for c, x in rows.items()}
    maps = {c: {k: m.cuda() for k, m in d.items()} for c, d in maps.items()}
    _check_png(map_grid(tmp_path / "g.png", rows, maps, LAYERS[:2]))


def test_wilson_interval_stays_in_the_unit_range_and_matches_the_formula():
    from advlens.report import wilson_interval

    lo, hi = wilson_interval(np.array([0, 10, 5, 0]), np.array([10, 10, 10, 0]))
    assert lo[0] == pytest.approx(0, abs=1e-12) and hi[0] == pytest.approx(0.27753, abs=1e-5)  # 0 of 10
    assert lo[1] == pytest.approx(0.72247, abs=1e-5) and hi[1] == pytest.approx(1, abs=1e-12)  # 10 of 10
    assert lo[2] == pytest.approx(0.23659, abs=1e-5) and hi[2] == pytest.approx(0.76341, abs=1e-5)  # 5 of 10
    assert np.isnan(lo[3]) and np.isnan(hi[3])  # no trials: no interval


def test_heatmap_marks_missing_cells_and_bar_plot_takes_wilson_bars(tmp_path):
    from advlens.report import heatmap_plot

    df = pd.DataFrame({"defense": ["none", "none", "median"], "group": ["clean", "pgd plain", "clean"],
                       "accuracy": [1.0, 0.0, 0.9]})
    path = heatmap_plot(tmp_path / "h.png", df, row="defense", col="group", value="accuracy")
    assert path.stat().st_size > 1000
    rates = pd.DataFrame({"attack": ["a"] * 4 + ["b"] * 4, "success": [1.0, 1, 1, 1, 0, 0, 1, 0]})
    assert bar_plot(tmp_path / "b.png", rates, x="attack", y="success", errorbars="wilson").is_file()
    with pytest.raises(AdvlensError, match="errorbars"):
        bar_plot(tmp_path / "c.png", rates, x="attack", y="success", errorbars="sd")
