"""Your own model and data from the command line: a torchvision checkpoint (Lightning-style) and an
ImageFolder of your own photos through ``advlens layers/explain/attack/study/report``; the CLI gives the
library's results; bad models, checkpoints and folders stop with one line, exit 2, nothing written."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image

import advlens as al
from advlens.cli import main

REF = "torchvision:resnet18"
CLASSES = ["cat", "dog", "fish"]
LABELS = ["fish", "cat", "dog"]  # the model's order differs from the folders' sorted order
OPTS = ["--num-classes", "3", "--input-size", "64"]


@pytest.fixture(scope="module")
def user_files(tmp_path_factory):
    """A Lightning-style checkpoint of a 3-class resnet18, a labels file and a 3-class ImageFolder."""
    root = tmp_path_factory.mktemp("byo")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=3)
    ckpt = root / "model.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in net.state_dict().items()}, "epoch": 4}, ckpt)
    labels = root / "labels.json"
    labels.write_text(json.dumps(LABELS))
    rng = np.random.default_rng(0)
    for c in CLASSES:
        (root / "photos" / c).mkdir(parents=True)
        for i in range(2):
            arr = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / "photos" / c / f"{c}{i}.png")
    return {"root": root, "ckpt": ckpt, "labels": labels, "photos": root / "photos", "net": net}


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _model(f):
    return al.load_model(REF, weights=str(f["ckpt"]), num_classes=3, input_size=64, labels=str(f["labels"]))


def test_loaded_checkpoint_gives_the_users_logits(user_files):
    model = _model(user_files)
    x = torch.rand(2, 3, 64, 64)
    ref = user_files["net"].eval()((x - model.mean) / model.std)
    assert (model(x) - ref).abs().max() <= 1e-5
    assert model.labels == LABELS and model.crop_pct == 224 / 256


def test_layers_command_lists_the_discovered_layers(capsys, user_files):
    code, out, _ = run(capsys, "layers", REF, *OPTS)
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()[1:]]
    assert names == ["relu", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1", "layer4.0",
                     "layer4.1"]
    assert "CAM layer" in out.splitlines()[-1] and "512×2×2" in out.splitlines()[-1]


def test_explain_on_a_folder_equals_the_library(capsys, tmp_path, user_files):
    from safetensors.torch import load_file

    out = tmp_path / "exp"
    code, _, err = run(capsys, "explain", "--model", REF, "--weights", user_files["ckpt"], *OPTS, "--labels",
                       user_files["labels"], "--images", user_files["photos"], "--out", out)
    assert code == 0, err
    saved = load_file(str(out / "maps.safetensors"))
    model = _model(user_files)
    batch = al.load_images(user_files["photos"], **model.image_options())
    maps = al.explain(model, batch.x, "gradcam")
    assert torch.equal(saved["images"], batch.x)
    assert set(saved) == {*model.layers, "images"}
    for layer, m in maps.items():
        assert torch.allclose(saved[layer], m, atol=1e-6), layer


def test_attack_maps_class_folders_to_the_models_labels(capsys, tmp_path, user_files):
    out = tmp_path / "att"
    code, _, err = run(capsys, "attack", "--model", REF, "--weights", user_files["ckpt"], *OPTS, "--labels",
                       user_files["labels"], "--images", user_files["photos"], "--method", "fgsm", "--eps", "0.05",
                       "--use-labels", "--out", out, "--quiet")
    assert code == 0, err
    rows = pd.read_parquet(out / "results.parquet")
    assert rows.label.tolist() == [n.split("/")[0] for n in rows.image]  # folder name = the model's label name
    model = _model(user_files)
    batch = al.load_images(user_files["photos"], **model.image_options())
    assert batch.labels == LABELS and batch.y.tolist() == [LABELS.index(c) for c in CLASSES for _ in range(2)]
    res = al.attack(model, batch.x, batch.y, "fgsm", eps=0.05)
    assert rows.adv_pred.tolist() == [model.labels[int(i)] for i in res.pred]


def test_study_and_report_on_your_own_model(capsys, tmp_path, user_files):
    spec = tmp_path / "mine.toml"
    spec.write_text(f"""study = "layer_shift"
model = "{REF}"
weights = "{user_files['ckpt'].as_posix()}"
data = "{user_files['photos'].as_posix()}"
strengths = [1.0]
layers = ["layer2.0", "layer4.1"]
metrics = ["cosine"]
coverage_layers = "explained"
attack = {{method = "fgsm", eps = 0.05}}

[model_options]
num_classes = 3
input_size = 64
labels = "{user_files['labels'].as_posix()}"
""")
    out = tmp_path / "study"
    code, _, err = run(capsys, "study", spec, "--out", out, "--quiet")
    assert code == 0, err
    rows = pd.read_parquet(out / "results.parquet")
    assert set(rows.layer) == {"layer2.0", "layer4.1"} and rows.image.nunique() == 6
    code, _, err = run(capsys, "report", out)
    assert code == 0 and (out / "report.html").is_file(), err


@pytest.mark.parametrize("case", ["mismatched checkpoint", "unknown timm name", "unknown torchvision name",
                                  "factory returns no module", "folder without images", "unreadable image"])
def test_bad_model_or_data_is_one_line_exit_2_nothing_written(capsys, tmp_path, user_files, case):
    empty = tmp_path / "empty"
    empty.mkdir()
    factory = tmp_path / "factory.py"
    factory.write_text("def build():\n    return 'not a network'\n")
    bad = tmp_path / "bad"
    (bad / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(bad / "cat" / "ok.png")
    (bad / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    model, images, extra, expect = {
        "mismatched checkpoint": (REF, user_files["photos"], ["--weights", user_files["ckpt"], "--num-classes", "5"],
                                  "fc.weight has shape [3, 512], expected [5, 512]"),
        "unknown timm name": ("timm:resnet181", user_files["photos"], [], "did you mean 'resnet18'"),
        "unknown torchvision name": ("torchvision:resnet19", user_files["photos"], [], "did you mean 'resnet18'"),
        "factory returns no module": (f"{factory}:build", user_files["photos"], [], "returned str, not a torch.nn.Module"),
        "folder without images": (REF, empty, OPTS[:2], "no images found"),
        "unreadable image": (REF, bad, OPTS, "--skip-bad"),
    }[case]
    out = tmp_path / "out"
    code, _, err = run(capsys, "explain", "--model", model, *extra, "--images", images, "--out", out)
    assert code == 2 and expect in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_skip_bad_skips_the_unreadable_file_by_name(capsys, tmp_path, caplog):
    bad = tmp_path / "bad"
    (bad / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(bad / "cat" / "ok.png")
    (bad / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "out"
    with caplog.at_level("WARNING"):
        code, _, err = run(capsys, "explain", "--model", REF, *OPTS, "--images", bad, "--skip-bad", "--out", out)
    assert code == 0, err
    assert "broken" in caplog.text
    from safetensors.torch import load_file

    assert load_file(str(out / "maps.safetensors"))["images"].shape[0] == 1


def test_attack_streams_a_folder_chunk_by_chunk_with_the_librarys_result(capsys, tmp_path, user_files, monkeypatch):
    """Chunks of 2 images (one in memory at a time) give the one-batch library result; file names stay unique
    across chunks; seed 004's random targets are per image, so chunking does not change them."""
    import advlens.cli._args as cli_args
    from advlens._rng import random_other_class

    monkeypatch.setattr(cli_args, "STREAM_CHUNK", 2)
    out = tmp_path / "att"
    code, _, err = run(capsys, "attack", "--model", REF, "--weights", user_files["ckpt"], *OPTS, "--images",
                       user_files["photos"], "--method", "pgd", "--eps", "0.03", "--steps", "2", "--target", "random",
                       "--out", out, "--quiet")
    assert code == 0, err
    rows = pd.read_parquet(out / "results.parquet")
    model = al.load_model(REF, weights=str(user_files["ckpt"]), num_classes=3, input_size=64)
    batch = al.load_images(user_files["photos"], **model.image_options())
    target = random_other_class(batch.x, model.predict(batch.x), 3, 0)
    res = al.attack(model, batch.x, None, "pgd", eps=0.03, steps=2, target=target)
    assert rows.image.tolist() == batch.names and len(set(rows.file)) == 6
    assert rows.adv_pred.tolist() == [model.labels[int(i)] for i in res.pred]
    assert rows.success.tolist() == res.success.tolist()


def test_a_detector_remembers_the_users_model(capsys, tmp_path, user_files):
    """``detect fit`` on a user model records its reference, checkpoint and options in the detector's
    ``.json``; ``detect score`` then needs no model flags and gives the library's scores."""
    det = tmp_path / "det.safetensors"
    code, _, err = run(capsys, "detect", "fit", "--model", REF, "--weights", user_files["ckpt"], *OPTS, "--labels",
                       user_files["labels"], "--images", user_files["photos"], "--split", "all", "--detector",
                       "behavior", "--param", "copies=4", "--out", det)
    assert code == 0, err
    source = json.loads((tmp_path / "det.safetensors.json").read_text())["model_source"]
    assert source == {"model": REF, "weights": str(user_files["ckpt"].resolve()),
                      "model_options": {"num_classes": 3, "labels": str(user_files["labels"].resolve()),
                                        "input_size": 64}}
    scores = tmp_path / "scores.parquet"
    code, _, err = run(capsys, "detect", "score", det, "--images", user_files["photos"], "--split", "all",
                       "--out", scores)
    assert code == 0, err
    model = _model(user_files)
    batch = al.load_images(user_files["photos"], **model.image_options())
    expected = al.detect.load(str(det), model).score(batch.x)
    got = pd.read_parquet(scores)
    assert list(got.image) == batch.names
    assert np.allclose(got.score.to_numpy(), expected.double().numpy(), rtol=1e-6, atol=1e-9)
