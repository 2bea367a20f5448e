"""The detection study (seeds 002 and 004) end to end at CI size, and its tables on hand-made scores."""
from __future__ import annotations

import pandas as pd
import pytest

import advlens as al
from advlens.studies.detection import blur_table, detection_table
from advlens.studies.runner import run_study
from advlens.studies.spec import load_spec


def test_detection_table_on_hand_made_scores():
    rows = [("clean", 0.0, s, s > 0.5) for s in (0.1, 0.2, 0.6, 0.3)]
    rows += [("adversarial", 1.0, s, s > 0.5) for s in (0.9, 0.8, 0.4, 0.7)]
    rows += [("noise", 1.0, s, s > 0.5) for s in (0.1, 0.1, 0.2, 0.55)]
    df = pd.DataFrame(rows, columns=["condition", "strength", "score", "flagged"]).assign(model="m", detector="d")
    t = detection_table(df).iloc[0]
    assert (t.tpr, t.tnr_clean, t.tnr_noise) == (0.75, 0.75, 0.75)
    assert t.accuracy == pytest.approx(9 / 12)
    # one of the 16 (negative, positive) pairs is misordered in each: 0.6 and 0.55 outrank the adversarial 0.4
    assert t.auc_clean == pytest.approx(15 / 16) and t.auc_noise == pytest.approx(15 / 16)
    images = pd.DataFrame({"model": "m", "condition": ["clean"] * 4, "strength": 0.0, "label": [0, 1, 2, 3],
                           "pred": [0, 1, 2, 0], "pred_blur": [0, 1, 1, 1]})
    b = blur_table(images).iloc[0]
    assert (b.accuracy, b.accuracy_blur) == (0.75, 0.5)


def test_detection_study_fits_on_train_scores_test_and_reports(tmp_path, digits_model):
    spec = load_spec(preset="seed002", limit=16, fit_size=64, strengths=[0.5, 1.0],
                     models=[{"model": "small_vgg_digits", "data": "digits", "split": "test"}],
                     detectors=[{"kind": "behavior", "copies": 8}, {"kind": "noisecam"},
                                {"kind": "ensemble", "interpreters": ["grad", "cam"], "backbone": "pixels",
                                 "n_estimators": 20, "sets": True}])
    report = run_study(spec, tmp_path / "d", progress=False)
    res = pd.read_parquet(tmp_path / "d" / "results.parquet")
    assert len(res) == 3 * 16 * (1 + 2 * 2)  # 3 detectors x 16 images x (clean + 2 strengths x adv/noise)
    table = detection_table(res)
    assert len(table) == 3 * 2 and table[["tpr", "tnr_clean", "auc_clean"]].stack().between(0, 1).all()
    behavior = table[(table.detector == "behavior") & (table.strength == 1.0)].iloc[0]
    assert behavior.auc_clean > 0.8  # measured 0.98 on 24 held-out digits (PGD ε 0.031)
    sets = pd.read_parquet(tmp_path / "d" / "sets.parquet")
    assert sorted(sets.interpreters) == ["cam", "grad", "grad+cam"] and sets.accuracy.between(0, 1).all()
    cost = pd.read_parquet(tmp_path / "d" / "detectors.parquet")
    assert (cost.fit_images == 64).all() and (cost.images_per_s > 0).all()
    html = report.read_text()
    assert "Detection vs strength" in html and "Interpreter sets" in html and "Gaussian-blur" in html
    for name in ("strength_small_vgg_digits.png", "roc_small_vgg_digits.png", "blur_accuracy.png", "ensemble_sets.png"):
        assert (tmp_path / "d" / "figures" / name).is_file()


def test_detection_study_refuses_to_score_what_it_could_fit_on(tmp_path):
    spec = load_spec(preset="seed002", models=[{"model": "small_vgg_digits", "data": "digits"}])
    with pytest.raises(al.AdvlensError, match="split 'test'"):
        run_study(spec, tmp_path / "x", progress=False)
    with pytest.raises(al.AdvlensError, match="'kind' key"):
        load_spec(preset="seed002", detectors=[{"copies": 3}])
    spec = load_spec(preset="seed002", detectors=[{"kind": "behaviour"}])
    with pytest.raises(al.AdvlensError, match="unknown detector"):
        run_study(spec, tmp_path / "y", progress=False)
