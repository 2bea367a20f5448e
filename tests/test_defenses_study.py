"""The defenses study and ``advlens defend train|eval`` end to end at CI size."""
from __future__ import annotations

import pandas as pd
import torch
import pytest

from advlens._checks import AdvlensError
from advlens.cli import main
from advlens.studies.defenses import accuracy_table, table1
from advlens.studies.runner import run_study
from advlens.studies.spec import load_spec


def test_defenses_study_reports_transfer_plain_and_adaptive(tmp_path, digits_model):

    spec = load_spec(preset="defenses", models=[{"model": "small_vgg_digits", "data": "digits", "split": "test"}],
                     limit=24, defenses=[{"kind": "squeeze", "bits": 3}, {"kind": "retrain-fgsm", "epochs": 1,
                                                                                "n_attack": 200}],
                     attack={"method": "fgsm+pgd", "pgd": {"steps": 5}, "sweep": [0.03], "sweep_steps": 3},
                     detectors=[{"kind": "ensemble", "interpreters": ["grad", "cam"], "n_estimators": 20, "weight": 5,
                                 "train_attack": "pgd"}],
                     fit_size=96)
    report = run_study(spec, tmp_path / "s", progress=False)
    res = pd.read_parquet(tmp_path / "s" / "results.parquet")
    acc = accuracy_table(res).set_index(["defense", "attack"])
    assert list(dict.fromkeys(res.defense)) == ["none", "squeeze(bits=3)", "retrain-fgsm(epochs=1,n_attack=200)"]
    sq = acc.loc[("squeeze(bits=3)", "pgd")]
    # bit squeezing masks the gradient: plain PGD does nothing, BPDA breaks it (measured 1.00 vs 0.83 on 24)
    assert sq.accuracy_plain == 1.0 and sq.accuracy_adaptive < sq.accuracy_plain
    assert sq.tau_adaptive < sq.tau_plain  # the plain attack only adds its random start (measured 0.90 vs 0.73)
    assert pd.isna(acc.loc[("retrain-fgsm(epochs=1,n_attack=200)", "fgsm")].get("accuracy_adaptive"))
    t1 = table1(res).set_index("defense")
    # immune = retrained on seed 001's iterative FGSM (minimal eps per image), tested on FGSM eps 0.1: measured
    # 0.52 -> 0.67 after one epoch (0.2 more with the single-step option, fgsm_form = "single")
    assert t1.loc["retrain-fgsm(epochs=1,n_attack=200)", "clear+fgsm_test"] > t1.loc["none", "clear+fgsm_test"] + 0.1
    sweep = pd.read_parquet(tmp_path / "s" / "sweep.parquet")
    assert set(sweep.defense) == {"none", "retrain-fgsm(epochs=1,n_attack=200)"} and (sweep.eps == 0.03).all()
    det = pd.read_parquet(tmp_path / "s" / "detectors.parquet").set_index("mode")
    assert det.loc["detector-aware", "flagged"] < det.loc["plain", "flagged"], det  # the adaptive attack evades
    assert det.loc["detector-aware", "fooled_and_missed"] > det.loc["plain", "fooled_and_missed"], det
    html = report.read_text()
    for text in ("Seed 001 Table 1", "Seed 004 Table VI", "accuracy_small_vgg_digits.png", "tau_small_vgg_digits.png",
                 "sweep_tau_small_vgg_digits.png", "sweep_accuracy_small_vgg_digits.png", "detector-aware"):
        assert text in html
    assert run_study(spec, tmp_path / "s", progress=False) == report  # finished units are not rerun


@pytest.mark.parametrize("defenses, message", [
    ([{"kind": "medain"}], "unknown defense 'medain'"),
    ([{"k": 3}], "must be a table with a 'kind' key"),
])
def test_defenses_study_bad_spec(defenses, message):
    with pytest.raises(AdvlensError, match=message):
        from advlens.studies.defenses import plan

        plan(load_spec(preset="defenses", defenses=defenses))


def test_defend_train_resumes_and_eval_compares_modes(capsys, tmp_path, digits_model):
    out, ckpt = tmp_path / "imm.safetensors", tmp_path / "run.ckpt"
    args = ["defend", "train", "--data", "digits", "--recipe", "retrain-fgsm", "--n-attack", "64", "--out", str(out),
            "--checkpoint", str(ckpt), "--quiet"]
    assert main([*args, "--epochs", "1"]) == 0 and out.is_file() and ckpt.is_file()
    assert main([*args, "--epochs", "2"]) == 0
    assert "resumed at epoch 1" in capsys.readouterr().out
    # the CLI is the library: the same recipe with the library's defaults gives the same weights
    from safetensors.torch import load_file

    from advlens.defend.recipes import retrain

    lib, _ = retrain(digits_model, "digits", "fgsm", epochs=2, n_attack=64)
    saved = load_file(str(out))
    assert all(torch.equal(saved[k], v) for k, v in lib.net.state_dict().items())
    assert main(["defend", "eval", "--model", "small_vgg_digits", "--weights", str(out), "--images", "digits",
                 "--limit", "16", "--defense", "squeeze", "--defense-param", "bits=3", "--steps", "5"]) == 0
    text = capsys.readouterr().out
    assert all(f"pgd {m:>8}" in text for m in ("transfer", "plain", "adaptive"))


@pytest.mark.parametrize("args, message", [
    (["defend", "eval", "--model", "small_vgg_digits", "--images", "digits", "--defense", "sqeeze"], "did you mean 'squeeze'"),
    (["defend", "eval", "--model", "small_vgg_digits", "--images", "digits", "--defense", "median",
      "--defense-param", "k=4"], "must be odd"),
    (["defend", "train", "--data", "digits", "--recipe", "pgd_at", "--out", "x.safetensors", "--epochs", "0"],
     "--epochs: must be an integer >= 1"),
])
def test_defend_cli_bad_input(capsys, args, message, digits_model):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_table1_is_the_clean_set_plus_the_successful_adversarial_images():
    """Seed 001 Table 1 by hand: clear+X_test = clean images ∪ successful adversarial images (2,000 + 940 in the
    paper), not the mean of clean and attacked accuracy. 4 clean images, 3 of them correct; FGSM fools the clean
    model on images 0, 1, 3."""
    from advlens.studies.signatures import accuracy_table as signatures_table

    img = ["a", "b", "c", "d"]
    T, F = True, False

    def rows(defense, kind, acc, attack, mode, correct, success):
        return pd.DataFrame({"model": "m", "defense": defense, "kind": kind, "clean_accuracy": acc, "clean_images": 4,
                             "image": img, "attack": attack, "mode": mode, "correct": correct, "adv_success": success})

    res = pd.concat([
        rows("none", "none", 0.75, "fgsm", "plain", [F, F, T, F], [T, T, F, T]),
        rows("none", "none", 0.75, "onepixel", "plain", [F, T, T, T], [T, F, F, F]),
        rows("squeeze(bits=3)", "squeeze", 0.5, "fgsm", "transfer", [T, T, T, T], [T, T, F, T]),
        rows("imm", "retrain-fgsm", 1.0, "fgsm", "transfer", [T, F, T, T], [T, T, F, T]),
        rows("imm", "retrain-fgsm", 1.0, "fgsm", "plain", [F, F, F, F], [T, T, T, T]),  # not Table 1's test set
    ], ignore_index=True)
    for r in (res, res.drop(columns=["adv_success", "clean_images"])):  # results written before the columns existed
        t1 = table1(r).set_index("defense")
        assert list(t1.index) == ["none", "imm"]
        assert t1.loc["none", "clear_images"] == 4 and t1.loc["none", "fgsm_successful"] == 3
        assert t1.loc["none", "clear+fgsm_test"] == pytest.approx(3 / 7)  # (3 + 0) / (4 + 3); the old mean gave 0.5
        assert t1.loc["none", "OP_successful"] == 1 and t1.loc["none", "clear+OP_test"] == pytest.approx(3 / 5)
        assert t1.loc["imm", "clear+fgsm_test"] == pytest.approx(6 / 7)  # (4 + 2 of a, b, d) / (4 + 3)
        assert pd.isna(t1.loc["imm", "clear+OP_test"])
    # the signatures study's 'Clear' columns, same definition (per-image rows of the clean model)
    sig = pd.concat([
        pd.DataFrame({"model": "m", "condition": "clean", "correct": [T, T, T, F], "success": F, "fgsm_eps": float("nan")}),
        pd.DataFrame({"model": "m", "condition": "fgsm", "correct": [F, F, T, F], "success": [T, T, F, T],
                      "fgsm_eps": [0.1, 0.2, float("nan"), 0.3]}),
        pd.DataFrame({"model": "m", "condition": "one-pixel", "correct": [F, T, T, T], "success": [T, F, F, F],
                      "fgsm_eps": float("nan")}),
    ], ignore_index=True)
    acc = signatures_table(sig).iloc[0]
    assert acc.images == 4 and acc.clear_test == 0.75 and acc.fgsm_test == 0.25 and acc.fgsm_successful == 3
    assert acc["clear+fgsm_test"] == pytest.approx(3 / 7) and acc["one-pixel_successful"] == 1
    assert acc["clear+one-pixel_test"] == pytest.approx(3 / 5) and acc.median_fgsm_eps == pytest.approx(0.2)
