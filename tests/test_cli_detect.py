"""``advlens detect fit|score|eval`` end to end on the digits model."""
from __future__ import annotations

import pandas as pd
import pytest

from advlens.cli import main


def test_detect_fit_score_eval(capsys, tmp_path, digits_model):
    det = tmp_path / "bd.safetensors"
    assert main(["detect", "fit", "--model", "small_vgg_digits", "--images", "digits", "--limit", "120",
                 "--param", "copies=12", "--out", str(det), "--quiet"]) == 0
    assert det.is_file() and (tmp_path / "bd.safetensors.json").is_file()
    assert "fitted BehaviorDeviation" in capsys.readouterr().out
    # the model is read from the detector's metadata when --model is not given
    assert main(["detect", "score", str(det), "--images", "digits", "--split", "test", "--limit", "4",
                 "--out", str(tmp_path / "s.parquet")]) == 0
    scores = pd.read_parquet(tmp_path / "s.parquet")
    assert len(scores) == 4 and set(scores.columns) >= {"image", "score", "flagged", "pred"}
    out = tmp_path / "eval"
    assert main(["detect", "eval", str(det), "--images", "digits", "--limit", "24", "--strengths", "0.5", "1",
                 "--out", str(out), "--quiet"]) == 0
    summary = pd.read_parquet(out / "summary.parquet")
    assert list(summary.strength) == [0.5, 1.0]
    assert summary.auc_clean.iloc[1] > 0.8  # measured 1.0 on 32 held-out digits (PGD ε 0.031, 20 steps)
    assert (out / "roc.png").is_file() and (out / "eval.json").is_file()
    assert "tnr_noise" in capsys.readouterr().out


def test_ensemble_fit_takes_list_params(capsys, tmp_path, digits_model):
    det = tmp_path / "e.safetensors"
    assert main(["detect", "fit", "--model", "small_vgg_digits", "--images", "digits", "--limit", "48",
                 "--detector", "ensemble", "--param", "interpreters=grad,cam", "--param", "n_estimators=10",
                 "--out", str(det)]) == 0
    assert "interpreters=['grad', 'cam']" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["detect", "fit", "--detector", "bogus"], "unknown detector 'bogus'"),
    (["detect", "fit", "--model", "small_vgg_digits", "--images", "digits", "--param", "copis=3"], "bad parameter"),
    (["detect", "score", "missing.safetensors"], "detector file not found"),
])
def test_detect_bad_input_exits_2(capsys, tmp_path, digits_model, args, message):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
