"""Study specs, the resumable runner, and the seed-000 / seed-003 analyses on hand-made tables."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from types import SimpleNamespace

import pandas as pd
import pytest
import torch

import advlens as al
from advlens.cli import main
from advlens.studies import layer_shift, mod_vid
from advlens.studies._common import similarity_rows
from advlens.studies.layer_shift import LayerShiftSpec
from advlens.studies.mod_vid import ModVidSpec
from advlens.studies.runner import run_study
from advlens.studies.spec import PRESETS, STUDIES, load_spec

SPEC = """
study = "layer_shift"
model = "small_vgg_digits"
data = "digits"
split = "test"
strengths = [0.5, 1, 2]
explainers = ["gradcam", "layercam"]
metrics = ["cosine", "nissim"]
batch_size = 4
limit = 10
[attack]
method = "fgsm"
eps = 0.05
"""


@pytest.fixture
def spec_file(tmp_path, digits_model):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC)
    return path


def test_specs_from_presets_and_toml(spec_file):
    for name in PRESETS:
        assert load_spec(preset=name).study in STUDIES
    spec = load_spec(spec_file, limit=6)
    assert spec.limit == 6 and spec.strengths == [0.5, 1, 2] and spec.attack == {"method": "fgsm", "eps": 0.05}


@pytest.mark.parametrize("text, message", [
    ('study = "layer_shift"\nstrenghts = [1]', "unknown key 'strenghts' for a layer_shift study; did you mean 'strengths'"),
    ('study = "layer_shif"', "unknown study 'layer_shif'; did you mean 'layer_shift'"),
    ("strengths = [0, 1]", r"key 'strengths\[0\]': must be greater than 0, got 0"),
    ("strengths = []", "key 'strengths': List should have at least 1 item"),
    ('attack = {eps = 1}', "key 'attack': must be a table with a 'method' key"),
    ("study = [", "cannot parse study spec"),
    ('explain_target = "adv"', "key 'explain_target': must be 'predicted' or 'clean', got 'adv'"),
    ('limit = "two"', "key 'limit': must be a valid integer, got 'two'"),
    ("layers = 5", "key 'layers': .*got 5"),
    ('explainers = "gradcam"', "key 'explainers': must be a valid list, got 'gradcam'"),
    ("examples = -1", "key 'examples': must be greater than or equal to 0, got -1"),
    ('study = "mod_vid"', "key 'models': is required"),
    ('study = "detection"\nfit_size = "x"', "key 'fit_size': must be a valid integer, got 'x'"),
])
def test_bad_specs_fail_clearly(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(al.AdvlensError, match=message):
        load_spec(path)


def test_layer_shift_study_end_to_end_and_report_from_results_alone(tmp_path, spec_file):
    out = tmp_path / "study"
    report = run_study(load_spec(spec_file), out, progress=False)
    res = pd.read_parquet(out / "results.parquet")
    assert len(res) == 10 * 3 * 2 * 2 * 6  # images x strengths x conditions x explainers x layers
    assert res.attack_success.dtype == bool  # per image: which rows seed 000's figures count
    assert not res.duplicated(["image", "strength", "condition", "explainer", "layer"]).any()
    imgs = pd.read_parquet(out / "images.parquet")
    adv = imgs[imgs.condition == "adversarial"]
    assert (adv.linf <= adv.strength * 0.05 + 1e-6).all()
    assert imgs[(imgs.condition == "adversarial") & (imgs.strength == 2)].flipped.mean() > \
        imgs[(imgs.condition == "noise") & (imgs.strength == 2)].flipped.mean()
    assert report.is_file() and (out / "figures" / "compromise_gradcam.png").is_file()
    # rebuild from results alone
    for f in (out / "figures").iterdir():
        f.unlink()
    report.unlink()
    assert main(["report", str(out)]) == 0
    assert report.is_file() and (out / "figures" / "histogram_layercam.png").is_file()
    assert report.read_text().count("data:image/png;base64,") >= 6


def test_interrupted_study_resumes_without_lost_or_duplicated_rows(tmp_path, spec_file, monkeypatch):
    spec = load_spec(spec_file)
    clean = tmp_path / "clean"
    run_study(spec, clean, progress=False)
    real_plan = layer_shift.plan
    calls = []

    def failing_plan(s):
        units = real_plan(s)

        def boom(*shared):
            calls.append(1)
            raise KeyboardInterrupt  # killed while the second chunk runs

        units[1].run = boom
        return units

    out = tmp_path / "resumed"
    monkeypatch.setattr(layer_shift, "plan", failing_plan)
    with pytest.raises(KeyboardInterrupt):
        run_study(spec, out, progress=False)
    assert calls and len(list((out / "chunks" / "results").glob("*.parquet"))) == 1
    assert not (out / "results.parquet").exists()
    monkeypatch.setattr(layer_shift, "plan", real_plan)
    run_study(spec, out, progress=False)
    a, b = pd.read_parquet(clean / "results.parquet"), pd.read_parquet(out / "results.parquet")
    pd.testing.assert_frame_equal(a, b)


def test_killed_process_resumes(tmp_path, spec_file):
    """SIGKILL the CLI mid-run, run the same command again: the same table as an uninterrupted run."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "advlens.cli", "study", str(spec_file), "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((out / "chunks" / "results").glob("*.parquet")):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list((out / "chunks" / "results").glob("*.parquet")))
    assert 1 <= done_before
    assert subprocess.run(cmd, capture_output=True, timeout=300).returncode == 0
    ref = tmp_path / "ref"
    run_study(load_spec(spec_file), ref, progress=False)
    pd.testing.assert_frame_equal(pd.read_parquet(ref / "results.parquet"), pd.read_parquet(out / "results.parquet"))


def test_other_spec_in_same_folder_is_refused(tmp_path, spec_file):
    out = tmp_path / "s"
    run_study(load_spec(spec_file, limit=4), out, progress=False)
    with pytest.raises(al.AdvlensError, match="different study spec"):
        run_study(load_spec(spec_file, limit=5), out, progress=False)


def test_compromise_rule_on_a_hand_made_table():
    rows = []
    # layer L1: noise similarities 0.9, 0.8, 0.7 -> median 0.8, mean 0.8; adversarial 0.85, 0.75, 0.5
    # layer L2: noise 0.9, 0.9, 0.3 -> median 0.9, mean 0.7; adversarial 0.8, 0.95, 0.6
    for layer, noise, adv in [("L1", [0.9, 0.8, 0.7], [0.85, 0.75, 0.5]), ("L2", [0.9, 0.9, 0.3], [0.8, 0.95, 0.6])]:
        for i in range(3):
            for cond, v in (("noise", noise[i]), ("adversarial", adv[i])):
                rows.append({"image": f"i{i}", "explainer": "gradcam", "strength": 1.0, "layer": layer,
                             "layer_index": int(layer[1]), "condition": cond, "cosine": v})
    table = pd.DataFrame(rows)
    med = layer_shift.compromise_table(table, "median", count="all").set_index(["layer", "image"]).compromised
    assert med.to_dict() == {("L1", "i0"): False, ("L1", "i1"): True, ("L1", "i2"): True,
                             ("L2", "i0"): True, ("L2", "i1"): False, ("L2", "i2"): True}
    mean = layer_shift.compromise_table(table, "mean", count="all").set_index(["layer", "image"]).compromised
    assert mean[("L2", "i0")] == bool(0.8 < 0.7) and mean[("L2", "i2")] == bool(0.6 < 0.7)


def test_mod_and_vid_on_a_hand_made_table():
    rows = []
    values = {0.01: [0.1, 0.2, 0.3, 0.4], 0.1: [0.5, 0.5, 0.7, 0.7]}  # (image, layer) grid per eps
    for eps, vals in values.items():
        for k, v in enumerate(vals):
            rows.append({"model": "m", "source": "white-box", "explainer": "gradcam", "eps": eps,
                         "image": f"i{k // 2}", "layer": f"l{k % 2}", "nissim": v})
    mod, vid = mod_vid.mod_vid_table(pd.DataFrame(rows), mod_layers="all")  # images and layers (not the paper's)
    assert mod.set_index("eps").MOD.to_dict() == pytest.approx({0.01: 0.25, 0.1: 0.6})
    assert vid.VID.iloc[0] == pytest.approx(0.175)  # population std of (0.25, 0.6)


def test_cosine_of_max_normalized_maps_on_a_toy_pair():
    """Seed 000 eq. 5 on H / max H (§ III-C) = the cosine of the raw maps; min-max scaling changes it."""
    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]], dtype=torch.float64)
    b = torch.tensor([[[4.0, 3.0], [2.0, 1.0]]], dtype=torch.float64)
    # each value as a 6x6 block (NISSIM needs 11x11 maps): the cosines below are those of the 2x2 maps
    a, b = (t.repeat_interleave(6, 1).repeat_interleave(6, 2) for t in (a, b))
    clean, other = {"gradcam": {"L": a}}, {"gradcam": {"L": b}}
    assert LayerShiftSpec().map_normalization == "max" and LayerShiftSpec().count == "successful"
    metrics = ["cosine", "nissim"]
    paper = similarity_rows(clean, other, ["i0"], metrics, layer_shift.minmax_metrics(metrics, "max"))
    # raw: (4 + 6 + 6 + 4) / 30 = 2/3, the same for a / max a and b / max b
    assert paper.cosine.iloc[0] == pytest.approx(2 / 3, abs=1e-12)
    assert al.metrics.cosine(a / a.max(), b / b.max()).item() == pytest.approx(2 / 3, abs=1e-12)
    old = similarity_rows(clean, other, ["i0"], metrics, layer_shift.minmax_metrics(metrics, "minmax"))
    # min-max: (0, 1/3, 2/3, 1) . (1, 2/3, 1/3, 0) = 4/9 over |.|^2 = 14/9 -> 2/7
    assert old.cosine.iloc[0] == pytest.approx(2 / 7, abs=1e-12)
    # NISSIM (seed 003 eq. 1) takes min-max scaled maps under both settings: unchanged
    lo_a, lo_b = (a - 1) / 3, (b - 1) / 3
    assert paper.nissim.iloc[0] == old.nissim.iloc[0] == pytest.approx(al.metrics.nissim(lo_a, lo_b).item())
    assert layer_shift.minmax_metrics(["cosine", "ssim", "iou"], "max") == ["ssim", "iou"]


def test_compromise_counts_successful_attacks_only_on_a_hand_made_table():
    """Seed 000 § IV-E: Figs. 6-7 count adversarial examples only; i3's attack failed."""
    rows = []
    noise, adv = [0.9, 0.8, 0.7, 0.1], [0.85, 0.75, 0.5, 0.2]
    for i in range(4):
        for cond, v in (("noise", noise[i]), ("adversarial", adv[i])):
            rows.append({"image": f"i{i}", "explainer": "gradcam", "strength": 1.0, "layer": "L1",
                         "layer_index": 0, "condition": cond, "cosine": v, "attack_success": i < 3})
    table = pd.DataFrame(rows)
    # successful: threshold median(0.9, 0.8, 0.7) = 0.8 -> i1 (0.75) and i2 (0.5) compromised: 2 of 3
    paper = layer_shift.compromise_table(table, "median")
    assert paper.set_index("image").compromised.to_dict() == {"i0": False, "i1": True, "i2": True}
    assert paper.threshold.iloc[0] == pytest.approx(0.8)
    p = layer_shift.compromise_probability(paper).iloc[0]
    assert p.compromise_probability == pytest.approx(2 / 3) and p.images == 3
    # all: threshold median(0.9, 0.8, 0.7, 0.1) = 0.75 -> i2, i3 compromised (0.75 < 0.75 is False): 2 of 4
    every = layer_shift.compromise_table(table, "median", count="all")
    assert every.set_index("image").compromised.to_dict() == {"i0": False, "i1": False, "i2": True, "i3": True}
    p = layer_shift.compromise_probability(every).iloc[0]
    assert p.compromise_probability == pytest.approx(0.5) and p.images == 4
    with pytest.raises(al.AdvlensError, match="attack_success"):
        layer_shift.compromise_table(table.drop(columns="attack_success"))


def test_mod_at_the_last_conv_layer_on_a_hand_made_table():
    """Seed 003 eq. 2: one map per image at the last conv layer (l1); per-layer MOD kept apart; VID (eqs. 3-4)."""
    values = {0.01: {"l0": [0.1, 0.3], "l1": [0.2, 0.4]}, 0.1: {"l0": [0.5, 0.7], "l1": [0.6, 1.0]}}
    rows = [{"model": "m", "source": "white-box", "explainer": "gradcam", "eps": eps, "image": f"i{k}",
             "layer": layer, "layer_index": int(layer[1]), "mod_layer": "l1", "nissim": v}
            for eps, per in values.items() for layer, vals in per.items() for k, v in enumerate(vals)]
    table = pd.DataFrame(rows)
    mod, vid = mod_vid.mod_vid_table(table)
    assert mod.set_index("eps").MOD.to_dict() == pytest.approx({0.01: 0.3, 0.1: 0.8})
    assert set(mod.layer) == {"l1"} and set(mod.images) == {2}
    assert vid.VID.iloc[0] == pytest.approx(0.25)  # population std of (0.3, 0.8)
    mod_all, vid_all = mod_vid.mod_vid_table(table, "all")
    assert mod_all.set_index("eps").MOD.to_dict() == pytest.approx({0.01: 0.25, 0.1: 0.7})
    assert vid_all.VID.iloc[0] == pytest.approx(0.225)
    per = mod_vid.mod_per_layer_table(table).set_index(["eps", "layer"]).MOD
    assert per.to_dict() == pytest.approx({(0.01, "l0"): 0.2, (0.01, "l1"): 0.3, (0.1, "l0"): 0.6, (0.1, "l1"): 0.8})
    # results without 'mod_layer' (before issue 16): the deepest computed layer
    old, _ = mod_vid.mod_vid_table(table.drop(columns="mod_layer"))
    assert old.set_index("eps").MOD.to_dict() == pytest.approx({0.01: 0.3, 0.1: 0.8})
    assert ModVidSpec.model_fields["mod_layers"].default == "last"


def test_paper_layer_is_the_cam_layer_or_the_last_layer():
    model = SimpleNamespace(cam_layer="c3", layers={"c1": 0, "c2": 0, "c3": 0})
    assert mod_vid.paper_layer(model, ["c1", "c2", "c3"]) == "c3"
    assert mod_vid.paper_layer(model, ["c2", "c1"]) == "c2"  # not computed: the deepest computed one
    assert mod_vid.paper_layer(SimpleNamespace(cam_layer=None, layers={"a": 0, "b": 0}), ["a", "b"]) == "b"
    assert mod_vid.paper_layer(model, ["input"]) == "input"


def test_mod_vid_study_runs_white_box_and_transfer(tmp_path, digits_model):
    spec = load_spec(preset="seed003", limit=4, batch_size=4,
                     models=[{"model": "small_vgg_digits", "data": "digits", "split": "test",
                              "surrogate": {"model": "small_vgg_digits", "seed": 0}}])
    run_study(spec, tmp_path / "mv", progress=False)
    res = pd.read_parquet(tmp_path / "mv" / "results.parquet")
    assert set(res.source) == {"white-box", "transfer from small_vgg_digits seed 0"}
    assert len(res) == 2 * 4 * 4 * 6  # sources x eps x images x layers
    assert (res.mod_layer == res.sort_values("layer_index").layer.iloc[-1]).all()  # the CAM (last conv) layer
    # a surrogate identical to the model transfers exactly its white-box attack
    wb = res[res.source == "white-box"].nissim.to_numpy()
    tr = res[res.source != "white-box"].nissim.to_numpy()
    assert abs(wb - tr).max() < 1e-6
    imgs = pd.read_parquet(tmp_path / "mv" / "images.parquet")
    acc = imgs[imgs.source == "white-box"].groupby("eps").correct.mean()
    assert acc[0.1] <= acc[0.01]


def test_seed000_preset_runs_end_to_end_on_the_default_model(tmp_path):
    """The preset itself (DLFuzz on EfficientNet-Lite0), at CI size: two photos."""
    assert main(["study", "--preset", "seed000", "--limit", "2", "--out", str(tmp_path / "s0"), "--quiet"]) == 0
    res = pd.read_parquet(tmp_path / "s0" / "results.parquet")
    assert len(res) == 2 * 5 * 2 * 18 and set(res.attack) == {"dlfuzz"}
    cov = pd.read_parquet(tmp_path / "s0" / "coverage.parquet")
    assert cov.coverage.is_monotonic_increasing and len(cov) == 2  # before and after one iteration
    assert (tmp_path / "s0" / "figures" / "coverage.png").is_file()


def test_interpreter_attack_study_tables_and_report(tmp_path, digits_model):
    """Seed 004's study at CI size: plain PGD and the three variants against Grad and CAM."""
    from advlens.studies.interpreter_attack import attack_table, transfer_table

    spec = load_spec(preset="seed004", limit=4, batch_size=4, explainers=["grad", "cam"],
                     models=[{"model": "small_vgg_digits", "data": "digits", "split": "test"}],
                     attack={"method": "advedge", "steps": 40})
    report = run_study(spec, tmp_path / "s4", progress=False)
    res = pd.read_parquet(tmp_path / "s4" / "results.parquet")
    # (plain + 3 variants x 2 attacked interpreters) x 2 evaluated interpreters x 4 images
    assert len(res) == (1 + 3 * 2) * 2 * 4
    table = attack_table(res)
    assert set(table.attack) == {"plain", "adv2", "advedge", "advedge+"} and table.success_rate.between(0, 1).all()
    assert (res.linf <= 0.031 + 1e-6).all() and (res.target != res.label).all()  # targeted, y_t != y
    transfer = transfer_table(res)
    hit = res[(res.attacked != "none") & res.success.astype(bool)].groupby(["attack", "attacked"]).ngroups
    assert set(transfer.columns) >= {"grad", "cam"} and len(transfer) == hit >= 2  # one row per (variant, g) that hit
    html = report.read_text()
    assert "Transferability" in html and (tmp_path / "s4" / "figures" / "l1_per_interpreter.png").is_file()


def test_signatures_study_umap_and_table(tmp_path, digits_model):
    """Seed 001's study at CI size: iterative FGSM + one-pixel, LRP signatures, UMAP."""
    from advlens.studies.signatures import accuracy_table

    spec = load_spec(preset="seed001", limit=12, batch_size=12,
                     models=[{"model": "small_vgg_digits", "data": "digits", "split": "test"}],
                     attack={"method": "ifgsm+onepixel", "onepixel": {"popsize": 40, "iterations": 3}})
    run_study(spec, tmp_path / "s1", progress=False)
    res = pd.read_parquet(tmp_path / "s1" / "results.parquet")
    assert len(res) == 3 * 12 and set(res.condition) == {"clean", "fgsm", "one-pixel"}
    acc = accuracy_table(res).iloc[0]
    assert acc.clear_test > 0.9 and acc.fgsm_test < 0.3  # ifgsm flips nearly every digit
    sig = pd.read_parquet(tmp_path / "s1" / "signatures.parquet")
    assert sig.filter(like="s").shape[1] >= 256 and len(sig) == 3 * 12
    assert (tmp_path / "s1" / "figures" / "umap_lrp_signatures.png").is_file()
