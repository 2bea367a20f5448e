"""`advlens demo` end to end on EfficientNet-Lite0 and three bundled photos, report opened in Chromium."""
from __future__ import annotations

import json

import pandas as pd
from browser import chromium, imgcheck, with_check

from advlens.cli import main


def test_demo_writes_results_figures_and_a_report_that_renders(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--limit", "3", "--out", str(out), "--quiet"]) == 0
    df = pd.read_parquet(out / "results.parquet")
    # 3 images x 2 attacks x (adversarial, noise) x 3 methods x 18 layers
    assert len(df) == 3 * 2 * 2 * 3 * 18
    assert df[["cosine", "nissim"]].notna().all().all() and df.cosine.between(-1e-6, 1 + 1e-6).all()
    attacks = pd.read_parquet(out / "attacks.parquet")
    assert set(attacks.attack) == {"fgsm", "pgd"} and (attacks.linf <= 2 / 255 + 1e-6).all()
    assert attacks[attacks.attack == "pgd"].success.mean() >= 2 / 3
    # seed 000's observation holds here too: adversarial maps move more than matched noise
    med = df.groupby("condition").cosine.median()
    assert med["adversarial"] < med["noise"]
    spec = json.loads((out / "spec.json").read_text())
    assert spec["versions"]["torch"] and spec["spec"]["study"] == "demo" and spec["spec"]["seed"] == 0
    summary = pd.read_parquet(out / "attack_summary.parquet")  # every report number is a table
    assert summary.set_index("attack").images.to_dict() == {"fgsm": 3, "pgd": 3}
    assert summary.success_rate.tolist() == attacks.groupby("attack", sort=False).success.mean().tolist()
    figures = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "shift_gradcam.png" in figures and any(f.startswith("grid_") for f in figures)
    html = (out / "report.html").read_text()
    assert html.count("data:image/") == len(figures) and len(html) < 2_500_000  # big grids embed as thumbnails
    assert not list(tmp_path.glob(".demo*"))  # no temp folders left
    before = (out / "results.parquet").read_bytes()
    assert main(["demo", "--limit", "3", "--out", str(out), "--quiet"]) == 0  # a rerun resumes: nothing recomputed
    assert (out / "results.parquet").read_bytes() == before
    assert main(["report", str(out)]) == 0  # the demo is a study: `advlens report` rebuilds it

    exe = chromium()
    loaded, total, tables = imgcheck(exe, with_check(out / "report.html", tmp_path / "check.html"), tmp_path / "prof")
    assert loaded == total == len(figures) and tables >= 4
