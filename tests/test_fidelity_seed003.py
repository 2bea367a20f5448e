"""Seed 003 (Chakraborty et al.) pinned on hand-computed examples: MOD (eq. 2) at the last conv layer, VID
(eqs. 3-4), the derived tables of the mod_vid study, and the small ResNet transfer source (§ 4.1)."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch.nn import functional as F

import advlens as al
from advlens.explain.api import normalize_maps
from advlens.models.small_resnet import RESNET, train_small_resnet
from advlens.studies import mod_vid
from advlens.studies.runner import run_study
from advlens.studies.spec import load_spec

# NISSIM per (source, eps) -> layer -> [image i0, image i1]; "l1" is the last conv layer (the MOD layer)
NISSIM = {
    ("white-box", 0.01): {"l0": [0.5, 0.7], "l1": [0.1, 0.3]},
    ("white-box", 0.05): {"l0": [0.1, 0.1], "l1": [0.2, 0.6]},
    ("white-box", 0.1): {"l0": [0.3, 0.5], "l1": [0.6, 0.6]},
    ("transfer", 0.01): {"l0": [0.2, 0.2], "l1": [0.0, 0.2]},
    ("transfer", 0.05): {"l0": [0.9, 0.1], "l1": [0.3, 0.3]},
    ("transfer", 0.1): {"l0": [0.4, 0.0], "l1": [0.3, 0.5]},
}


def _toy_tables() -> dict[str, pd.DataFrame]:
    results = pd.DataFrame([
        {"model": "m", "source": src, "explainer": "gradcam", "eps": eps, "image": f"i{k}", "layer": layer,
         "layer_index": int(layer[1]), "mod_layer": "l1", "nissim": v}
        for (src, eps), per in NISSIM.items() for layer, vals in per.items() for k, v in enumerate(vals)])
    images = pd.DataFrame([
        {"model": "m", "source": "clean", "eps": 0.0, "image": "i0", "correct": True, "psnr": math.inf},
        {"model": "m", "source": "clean", "eps": 0.0, "image": "i1", "correct": True, "psnr": math.inf},
        {"model": "m", "source": "white-box", "eps": 0.1, "image": "i0", "correct": True, "psnr": 40.0},
        {"model": "m", "source": "white-box", "eps": 0.1, "image": "i1", "correct": False, "psnr": 30.0},
    ])
    return {"results": results, "images": images}


def _population_std(values: list[float]) -> float:
    """Seed 003 eqs. 3-4 in float64: m_h = sum / E, VID = sqrt(sum (v - m_h)^2 / E)."""
    m_h = math.fsum(values) / len(values)
    return math.sqrt(math.fsum((v - m_h) ** 2 for v in values) / len(values))


def test_mod_and_vid_follow_eqs_2_to_4_on_a_hand_computed_table():
    """MOD = mean NISSIM over the N images at the last conv layer (eq. 2, § 4.4); VID = population std of MOD
    across eps (eqs. 3-4); per-layer MOD, per-image NISSIM and accuracy / PSNR as derived tables."""
    tables = _toy_tables()
    out = mod_vid.derived({"spec": {"mod_layers": "last"}}, tables)
    assert set(out) == set(mod_vid.DERIVED) and not set(out) & set(tables)
    mod = out["mod"].set_index(["source", "eps"])
    # by hand, l1 only: white-box (0.1+0.3)/2, (0.2+0.6)/2, (0.6+0.6)/2; transfer (0+0.2)/2, 0.3, (0.3+0.5)/2
    want = {("white-box", 0.01): 0.2, ("white-box", 0.05): 0.4, ("white-box", 0.1): 0.6,
            ("transfer", 0.01): 0.1, ("transfer", 0.05): 0.3, ("transfer", 0.1): 0.4}
    assert mod.MOD.to_dict() == pytest.approx(want, abs=1e-12)
    assert set(mod.layer) == {"l1"} and set(mod.images) == {2}
    vid = out["vid"].set_index("source").VID
    assert vid["white-box"] == pytest.approx(math.sqrt(0.08 / 3), abs=1e-12)  # m_h = 0.4: (0.04 + 0 + 0.04) / 3
    assert vid["transfer"] == pytest.approx(_population_std([0.1, 0.3, 0.4]), abs=1e-12)
    assert vid["transfer"] != pytest.approx(pd.Series([0.1, 0.3, 0.4]).std(), abs=1e-6)  # not the sample std
    per_layer = out["mod_per_layer"].set_index(["source", "eps", "layer"]).MOD
    assert per_layer[("white-box", 0.01, "l0")] == pytest.approx(0.6) and per_layer[("transfer", 0.05, "l0")] == 0.5
    per_image = out["mod_per_image"].set_index(["source", "eps", "image"]).nissim
    assert per_image[("white-box", 0.05, "i1")] == pytest.approx(0.6) and len(per_image) == 12
    acc = out["accuracy_psnr"].set_index(["source", "eps"])
    assert acc.loc[("clean", 0.0)].accuracy == 1.0 and acc.loc[("white-box", 0.1)].accuracy == 0.5
    assert acc.loc[("white-box", 0.1)].psnr_db == pytest.approx(35.0) and math.isinf(acc.loc[("clean", 0.0)].psnr_db)
    # a spec.json from before issue 16 (no 'mod_layers'): MOD over images and every layer, as it was
    old = mod_vid.derived({"spec": {}}, tables)["mod"].set_index(["source", "eps"]).MOD
    assert old[("white-box", 0.01)] == pytest.approx((0.5 + 0.7 + 0.1 + 0.3) / 4, abs=1e-12)


def test_small_resnet_builds_trains_deterministically_and_caches(tmp_path, monkeypatch):
    """small_resnet_<data>: residual blocks, deterministic for a seed, cached under the advlens home."""
    a, info = train_small_resnet("lfw", seed=3, epochs=1, out=tmp_path / "a.safetensors")
    sa = a.net.state_dict()
    assert info["epochs"] == 1 and a.name == "small_resnet_lfw" and list(a.layers) == ["stem", "block1", "block2",
                                                                                          "block3"]
    assert isinstance(a.net.block1.shortcut, torch.nn.Sequential)  # 16 -> 32 channels: a 1x1 projection
    loaded = al.load_model("small_resnet_lfw", weights=str(tmp_path / "a.safetensors"))
    x = al.load_images("lfw", split="test", n=None).x[:3]
    assert loaded.labels == a.labels and torch.equal(loaded(x), a(x))
    monkeypatch.setenv("ADVLENS_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(RESNET.epochs, "lfw", 1)  # the first use trains (1 epoch here) and caches
    first = al.load_model("small_resnet_lfw", seed=3)
    assert (tmp_path / "home" / "models" / "small_resnet-v1-lfw-seed3.safetensors").is_file()
    assert all(torch.equal(first.net.state_dict()[k], sa[k]) for k in sa)  # the same seed: the same weights
    other = al.load_model("small_resnet_lfw", seed=4)  # another seed: other weights
    assert not all(torch.equal(other.net.state_dict()[k], sa[k]) for k in sa)


def test_gradcam_at_the_discovered_last_conv_layer_of_small_resnet():
    """Seed 003 § 4.4's layer for the ResNet is ``block3`` (feeding global pooling); Grad-CAM there equals
    ReLU(sum_k mean_ij(dS/dA^k) A^k) computed by hand in float64 from a hook on the block."""
    torch.manual_seed(0)
    model = al.load_model("small_resnet_digits", weights="random", seed=2)
    x = torch.rand(3, 3, 32, 32)
    assert mod_vid.paper_layer(model, list(model.layers)) == "block3" == model.cam_layer
    maps = al.explain(model, x, "gradcam", layers=["block3"])["block3"]
    net = model.double()
    acts = {}
    handle = net.net.block3.register_forward_hook(lambda m, i, o: acts.setdefault("A", o))
    logits = net(x.double().requires_grad_())
    handle.remove()
    A = acts["A"]
    score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
    g = torch.autograd.grad(score, A)[0]
    raw = torch.relu((g.mean(dim=(2, 3), keepdim=True) * A).sum(1))  # [3, 8, 8]
    want = normalize_maps(F.interpolate(raw[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0])
    assert maps.shape == (3, 32, 32) and torch.allclose(maps.double(), want, atol=1e-5)


def test_seed003_transfers_from_the_small_resnet_and_writes_the_derived_tables(tmp_path, digits_model):
    spec = load_spec(preset="seed003")
    for entry in spec.models:
        if entry["model"].startswith("small_vgg_"):  # § 4.1: another architecture makes the transferred FGSM
            assert entry["surrogate"] == {"model": entry["model"].replace("small_vgg_", "small_resnet_")}
    spec = load_spec(preset="seed003", limit=2, batch_size=2, strengths=[0.05, 0.1], examples=0,
                     models=[{"model": "small_vgg_digits", "data": "digits", "split": "test",
                              "surrogate": {"model": "small_resnet_digits", "weights": "random"}}])
    run_study(spec, tmp_path / "mv", progress=False)
    res = pd.read_parquet(tmp_path / "mv" / "results.parquet")
    made_by = res.groupby("source").source_model.first().to_dict()
    assert made_by == {"white-box": "small_vgg_digits",
                       "transfer from small_resnet_digits seed 0": "small_resnet_digits"}
    mod = pd.read_parquet(tmp_path / "mv" / "mod.parquet")
    want, _ = mod_vid.mod_vid_table(res)
    pd.testing.assert_frame_equal(mod, want)
    assert set(mod.layer) == {"block3_conv2"} and len(mod) == 2 * 2  # sources x eps
    for name in mod_vid.DERIVED:
        assert (tmp_path / "mv" / f"{name}.parquet").is_file()
    assert "transfer from small_resnet_digits" in (tmp_path / "mv" / "report.html").read_text()


def test_signatures_derived_tables_on_a_hand_made_table(monkeypatch):
    """Seed 001's study: Table 1 (clear+FGSM over the clean and the successful adversarial images), the LRP
    shift and the embedding come from ``derived`` (UMAP stubbed here: its coordinates are umap-learn's)."""
    from advlens.studies import signatures

    rows = []
    for k in range(4):  # 3 of 4 clean images right; FGSM succeeds on i0-i2; one-pixel on i0 only
        rows.append({"model": "m", "image": f"i{k}", "label": 0, "condition": "clean", "correct": k < 3,
                     "success": False, "lrp_cosine": 1.0, "lrp_l1": 0.0})
        rows.append({"model": "m", "image": f"i{k}", "label": 0, "condition": "fgsm", "correct": k == 3,
                     "success": k < 3, "lrp_cosine": [0.2, 0.4, 0.6, 0.9][k], "lrp_l1": 1.0,
                     "fgsm_eps": 0.01 * (k + 1)})
        rows.append({"model": "m", "image": f"i{k}", "label": 0, "condition": "one-pixel", "correct": k > 0,
                     "success": k == 0, "lrp_cosine": 0.5, "lrp_l1": 2.0})
    res = pd.DataFrame(rows)
    sig = res[["model", "image", "label", "condition", "success"]].assign(s0=0.0, s1=1.0)
    monkeypatch.setattr(signatures, "embed", lambda s, seed=0: s.assign(u0=0.0, u1=1.0))
    out = signatures.derived({"spec": {"seed": 0}}, {"results": res, "signatures": sig})
    assert set(out) == set(signatures.DERIVED)
    acc = out["accuracy"].iloc[0]
    assert acc.clear_test == 0.75 and acc.fgsm_test == 0.25 and acc["clear+fgsm_test"] == pytest.approx(3 / 7)
    assert acc["clear+one-pixel_test"] == pytest.approx(3 / 5)  # (3 + 0) / (4 + 1)
    assert acc.median_fgsm_eps == pytest.approx(0.02)  # the successful FGSM images' minimal eps 0.01, 0.02, 0.03
    shift = out["lrp_shift"].set_index(["condition", "images"])
    assert shift.loc[("fgsm", "successful")].lrp_cosine_mean == pytest.approx(0.4)  # (0.2 + 0.4 + 0.6) / 3
    assert shift.loc[("fgsm", "all")].n == 4 and shift.loc[("fgsm", "all")].lrp_cosine_mean == pytest.approx(0.525)
    assert list(out["embedding"].columns) == ["model", "image", "label", "condition", "success", "u0", "u1"]
