"""Model registry, bundled EfficientNet-Lite0, seed architectures, weights files, small VGGs."""
from __future__ import annotations

import warnings

import pytest
import torch

import advlens as al
from advlens.models.small_vgg import train_small_vgg


def test_registry_lists_and_suggests():
    names = al.list_models()
    for n in ["efficientnet_lite0", "vgg16", "resnet50", "resnet101", "inception_v3", "xception", "small_vgg_digits"]:
        assert n in names
    assert al.list_models("small_vgg_*") == ["small_vgg_digits", "small_vgg_lfw", "small_vgg_shapes"]
    assert al.list_models("small_resnet_*") == ["small_resnet_digits", "small_resnet_lfw", "small_resnet_shapes"]
    with pytest.raises(al.AdvlensError, match="unknown model 'vgg61'; did you mean 'vgg16'"):
        al.load_model("vgg61")


@pytest.fixture(scope="module")
def lite0():
    return al.load_model("efficientnet_lite0")


def test_efficientnet_lite0_recognizes_the_bundled_photos(lite0):
    batch = al.load_images("samples", size=lite0.input_size)
    pred = dict(zip(batch.names, lite0.predict(batch.x).tolist()))
    assert 281 <= pred["chelsea"] <= 285, lite0.labels[pred["chelsea"]]  # a cat class
    assert pred["coffee"] in (967, 968), lite0.labels[pred["coffee"]]  # espresso or cup
    assert lite0.labels[285] == "Egyptian cat" and len(lite0.labels) == 1000
    assert list(lite0.layers)[0] == "stem" and list(lite0.layers)[-1] == "head" and len(lite0.layers) == 18
    assert lite0.cam_layer == "head" and lite0.input_size == (224, 224)


def test_model_takes_unit_range_input_and_normalizes_inside(lite0):
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        manual = lite0.net((x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) /
                           torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        assert torch.allclose(lite0(x), manual, atol=1e-5)


def test_seed_architectures_have_their_layers(vgg16, resnet50):
    assert len(vgg16.layers) == 13 and vgg16.layers["block4_conv1"] is vgg16.net.features[18]
    assert isinstance(vgg16.layers["block5_conv3"], torch.nn.ReLU)
    assert len(resnet50.layers) == 17 and resnet50.cam_layer == "layer4.2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        inc = al.load_model("inception_v3", weights="random")
        xc = al.load_model("xception", weights="random")
    assert inc.input_size == (299, 299) and list(inc.layers)[-1] == "Mixed_7c" and len(inc.layers) == 16
    assert len(xc.layers) == 15
    with torch.no_grad():
        assert xc(torch.rand(1, 3, 96, 96)).shape == (1, 1000)


def test_missing_weights_warn_and_random_init_is_explicit():
    with pytest.warns(UserWarning, match="random init"):
        al.load_model("resnet50")


def test_weights_file_roundtrip_and_bad_files(tmp_path, digits_model, digits_test):
    good = tmp_path / "good.pth"
    torch.save(digits_model.net.state_dict(), good)
    again = al.load_model("small_vgg_digits", weights=str(good))
    x = digits_test.x[:4]
    assert torch.equal(again.predict(x), digits_model.predict(x))

    not_dict = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_dict)
    with pytest.raises(al.AdvlensError, match="is not a state dict"):
        al.load_model("vgg16", weights=str(not_dict))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(al.AdvlensError, match="cannot read weights file"):
        al.load_model("vgg16", weights=str(garbage))
    with pytest.raises(al.AdvlensError, match="weights file not found"):
        al.load_model("vgg16", weights=str(tmp_path / "missing.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save(digits_model.net.state_dict(), wrong)
    with pytest.raises(al.AdvlensError, match="do not fit this architecture"):
        al.load_model("resnet50", weights=str(wrong))


def test_pickled_code_is_refused(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "obj": torch.nn.ReLU()}, evil)  # needs full unpickling
    with pytest.raises(al.AdvlensError, match="cannot read weights file"):
        al.load_model("vgg16", weights=str(evil))


def test_digits_model_reaches_95_percent(digits_model, digits_test):
    acc = (digits_model.predict(digits_test.x) == digits_test.y).float().mean().item()
    assert acc >= 0.95, acc
    assert digits_model.labels == [str(i) for i in range(10)] and len(digits_model.layers) == 6


def test_training_is_deterministic(tmp_path):
    a, info_a = train_small_vgg("lfw", seed=3, epochs=2, out=tmp_path / "a.safetensors")
    b, _ = train_small_vgg("lfw", seed=3, epochs=2, out=tmp_path / "b.safetensors")
    c, _ = train_small_vgg("lfw", seed=4, epochs=2, out=tmp_path / "c.safetensors")
    sa, sb, sc = (m.net.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert 0 <= info_a["test_accuracy"] <= 1 and (tmp_path / "a.safetensors").is_file()
    loaded = al.load_model("small_vgg_lfw", weights=str(tmp_path / "a.safetensors"))
    assert loaded.labels == a.labels


def test_wrap_checks_layers():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(2, 4))
    model = al.wrap(net, (0.5,) * 3, (0.5,) * 3, layers=["1"], input_size=(8, 8))
    assert model.labels == ["0", "1", "2", "3"]
    with pytest.raises(al.AdvlensError, match="unknown submodule '7'"):
        al.wrap(net, (0.5,) * 3, (0.5,) * 3, layers=["7"])
    with pytest.raises(al.AdvlensError, match="std values must be positive"):
        al.wrap(net, (0.5,) * 3, (0.0,) * 3, layers=["1"])


@pytest.mark.parametrize("data, minimum", [("lfw", 0.9), ("shapes", 0.9)])
def test_small_vggs_learn_their_data(data, minimum):
    model = al.load_model(f"small_vgg_{data}")  # trained on first use, cached in the session's ADVLENS_HOME
    test = al.load_images(data, n=2500 if data == "shapes" else None, split="test")
    acc = (model.predict(test.x) == test.y).float().mean().item()
    assert acc >= minimum, acc
