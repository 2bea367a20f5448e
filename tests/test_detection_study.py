"""The detection study (seeds 002 and 004) end to end at CI size, and its tables on hand-made scores."""
from __future__ import annotations

import pandas as pd
import pytest

import advlens as al
from advlens.studies.detection import _check_configs, blur_table, derived, detection_table, detector_label
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
    cost = pd.DataFrame({"model": ["m"], "detector": ["d"], "fit_s": [1.0], "threshold": [0.5]})
    sets = pd.DataFrame({"model": "m", "interpreters": ["grad", "cam"], "accuracy": [0.5, 0.75], "auc": [0.6, 0.8]})
    d = derived({"spec": {"study": "detection"}}, {"results": df, "images": images, "detectors": cost, "sets": sets})
    assert d["detection_rates"].equals(detection_table(df)) and d["blur_accuracy"].equals(blur_table(images))
    assert d["interpreter_sets"].detector.tolist() == ["ensemble"] * 2  # an old sets table had no detector column
    roc = d["roc_curves"]
    assert set(roc.negative) == {"clean", "noise"} and roc.auc.eq(15 / 16).all()
    assert roc[roc.negative == "clean"][["fpr", "tpr"]].iloc[-1].tolist() == [1.0, 1.0]


def test_ensemble_labels_are_unique_and_train_is_checked():
    base = {"kind": "ensemble", "interpreters": ["grad", "cam"]}
    assert detector_label(base) == "ensemble[grad+cam]" == detector_label({**base, "train": "interpretation"})
    assert detector_label({**base, "train": "attack"}) == "ensemble[grad+cam|attack]"
    assert detector_label({**base, "backbone": "efficientnet_lite0"}) == "ensemble[grad+cam|efficientnet_lite0]"
    _check_configs([base, {**base, "train": "attack"}, {"kind": "behavior"}])
    with pytest.raises(al.AdvlensError, match=r"detectors\[0\] and detectors\[1\] are both 'ensemble\[grad\+cam\]'"):
        _check_configs([base, {**base, "n_estimators": 5}])
    with pytest.raises(al.AdvlensError, match="train must be one of 'interpretation', 'attack'"):
        _check_configs([{**base, "train": "adversarial"}])
    with pytest.raises(al.AdvlensError, match="ensemble detectors only"):
        _check_configs([{"kind": "behavior", "train": "attack"}])


def test_detection_study_fits_on_train_scores_test_and_reports(tmp_path, digits_model):
    spec = load_spec(preset="seed002", limit=16, fit_size=64, strengths=[0.5, 1.0],
                     models=[{"model": "small_vgg_digits", "data": "digits", "split": "test"}],
                     detectors=[{"kind": "behavior", "copies": 8}, {"kind": "noisecam"},
                                {"kind": "ensemble", "interpreters": ["grad", "cam"], "backbone": "pixels",
                                 "n_estimators": 20, "sets": True, "attack_options": {"steps": 5}},
                                {"kind": "ensemble", "interpreters": ["grad", "cam"], "backbone": "pixels",
                                 "n_estimators": 20, "train": "attack"}])
    report = run_study(spec, tmp_path / "d", progress=False)
    res = pd.read_parquet(tmp_path / "d" / "results.parquet")
    assert len(res) == 4 * 16 * (1 + 2 * 2)  # 4 detectors x 16 images x (clean + 2 strengths x adv/noise)
    assert sorted(res.detector.unique()) == ["behavior", "ensemble[grad+cam]", "ensemble[grad+cam|attack]", "noisecam"]
    table = pd.read_parquet(tmp_path / "d" / "detection_rates.parquet")
    pd.testing.assert_frame_equal(table, detection_table(res))
    assert len(table) == 4 * 2 and table[["tpr", "tnr_clean", "auc_clean"]].stack().between(0, 1).all()
    for name in ("roc_curves", "blur_accuracy", "detector_cost", "interpreter_sets"):
        assert len(pd.read_parquet(tmp_path / "d" / f"{name}.parquet"))
    behavior = table[(table.detector == "behavior") & (table.strength == 1.0)].iloc[0]
    assert behavior.auc_clean > 0.8  # paper defaults: measured 0.97 on 16 held-out digits (PGD ε 0.031)
    sets = pd.read_parquet(tmp_path / "d" / "sets.parquet")
    assert sorted(sets.interpreters) == ["cam", "grad", "grad+cam"] and sets.accuracy.between(0, 1).all()
    assert set(sets.detector) == {"ensemble[grad+cam]"}
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
