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
    # the same evaluation through the library: the evaluations' PGD with the attack's own step, seed 0
    import torch

    import advlens as al
    from advlens.attacks.pgd import EVAL_PGD
    from advlens.studies.detection import strength_inputs

    test = al.load_images("digits", split="test", **digits_model.image_options())[:24]
    x_adv = al.attack(digits_model, test.x, None, "pgd", seed=0, eps=EVAL_PGD["eps"], steps=EVAL_PGD["steps"]).x_adv
    detector = al.detect.load(str(det), digits_model)
    rows = pd.read_parquet(out / "results.parquet")
    for (cond, s), x in strength_inputs(test.x, x_adv, [0.5, 1.0], 0).items():
        got = rows[(rows.condition == cond) & (rows.strength == s)]
        assert got.image.tolist() == test.names
        assert torch.allclose(torch.tensor(got.score.to_numpy()), detector.score(x).double(), atol=1e-6), (cond, s)


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


def test_detect_score_and_defend_eval_give_the_librarys_numbers(capsys, tmp_path, digits_model):
    """The CLI and the library agree for the same parameters: a fitted detector's scores, and a defense's
    accuracy under the plain and the adaptive attack (the attack's eps/steps read as budget_params says)."""
    import re

    import torch

    import advlens as al
    from advlens import defend, detect

    det_file = tmp_path / "bd.safetensors"
    assert main(["detect", "fit", "--model", "small_vgg_digits", "--images", "digits", "--limit", "40",
                 "--param", "copies=8", "--out", str(det_file), "--quiet"]) == 0
    assert main(["detect", "score", str(det_file), "--images", "digits", "--split", "test", "--limit", "5",
                 "--out", str(tmp_path / "s.parquet")]) == 0
    rows = pd.read_parquet(tmp_path / "s.parquet")
    det = detect.load(str(det_file), digits_model)
    train = al.load_images("digits", split="train", **digits_model.image_options())[:40]
    lib = detect.make("behavior", copies=8, seed=0).fit(digits_model, train.x)  # what `detect fit` ran
    assert det.state.keys() == lib.state.keys() and det.threshold == pytest.approx(lib.threshold, rel=1e-6)
    assert all(torch.allclose(det.state[k], lib.state[k], atol=1e-6) for k in lib.state)
    test = al.load_images("digits", split="test", **digits_model.image_options())[:5]
    assert rows.image.tolist() == test.names
    assert torch.allclose(torch.tensor(rows.score.to_numpy()), det.score(test.x).double().cpu(), atol=1e-6)
    capsys.readouterr()

    assert main(["defend", "eval", "--model", "small_vgg_digits", "--images", "digits", "--limit", "8",
                 "--defense", "median", "--attack", "fgsm", "--eps", "0.1"]) == 0
    printed = dict(re.findall(r"fgsm\s+(\w+): ([\d.]+)%", capsys.readouterr().out))
    batch = al.load_images("digits", split="test", **digits_model.image_options())[:8]
    x, y = batch.x, batch.y
    defended = defend.wrap(digits_model, "median", seed=0)
    for mode, view in (("plain", defended), ("adaptive", defended.adaptive())):
        x_adv = al.attack(view, x, y, "fgsm", eps=0.1).x_adv
        acc = float((defended.predict(x_adv) == y).float().mean())
        assert float(printed[mode]) == pytest.approx(100 * acc, abs=0.006), mode
