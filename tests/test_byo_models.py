"""Bring your own model: ``al.load_model("timm:…" | "torchvision:…" | "file.py:fn" | "pkg.mod:fn")``.

The user's network is built here directly (timm / torchvision, fixed seed), its weights saved in every
checkpoint layout users have (plain, safetensors, Lightning, DDP, ``{"model": …}``), and advlens' model
must give the very same logits. Grad-CAM at every discovered layer is checked against pytorch-grad-cam
(float64), with a hand-written ``reshape_transform`` for the ViT — not advlens' own ``TokenGrid``.
Tiny inputs (64 px) and small networks keep the file well under a minute on two cores.
"""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch.nn import functional as F

import advlens as al
from advlens.models.tokens import TokenGrid

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

SIZE = 64
CLASSES = 10
#: reference -> how the user builds the same network (num_classes=10, 64 px input)
NETS = {
    "timm:resnet10t": lambda: timm.create_model("resnet10t", num_classes=CLASSES),
    "torchvision:resnet18": lambda: torchvision.models.get_model("resnet18", weights=None, num_classes=CLASSES),
    "timm:vit_tiny_patch16_224": lambda: timm.create_model("vit_tiny_patch16_224", num_classes=CLASSES,
                                                           img_size=SIZE),
}
RESNET18_LAYERS = ["relu", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1", "layer4.0",
                   "layer4.1"]
FORMATS = ["pth", "safetensors", "lightning", "ddp", "model"]


def _load(ref: str, **kw) -> al.ClassifierModel:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return al.load_model(ref, **kw)


def _user_net(ref: str) -> torch.nn.Module:
    """The user's trained network: seeded weights, BatchNorm running statistics moved off 0/1."""
    torch.manual_seed(0)
    net = NETS[ref]()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


def _save(sd: dict[str, torch.Tensor], fmt: str, path) -> None:
    sd = {k: v.clone().contiguous() for k, v in sd.items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path))
    elif fmt == "pth":
        torch.save(sd, path)
    elif fmt == "lightning":
        torch.save({"state_dict": {"model." + k: v for k, v in sd.items()}, "epoch": 3, "global_step": 10}, path)
    elif fmt == "ddp":
        torch.save({"module." + k: v for k, v in sd.items()}, path)
    else:
        torch.save({"model": sd}, path)


def _images(n: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=list(NETS))
def trained(request, tmp_path_factory):
    """``(ref, the user's network, {format: checkpoint path})``."""
    ref = request.param
    net = _user_net(ref)
    root = tmp_path_factory.mktemp(ref.replace(":", "_"))
    paths = {}
    for fmt in FORMATS:
        paths[fmt] = root / f"weights_{fmt}.{'safetensors' if fmt == 'safetensors' else 'pth'}"
        _save(net.state_dict(), fmt, paths[fmt])
    if ref.startswith("torchvision:"):  # the suffix in any case (one architecture is enough)
        paths["SAFETENSORS"] = root / "weights_upper.SAFETENSORS"
        _save(net.state_dict(), "safetensors", paths["SAFETENSORS"])
    return ref, net, paths


def test_every_checkpoint_format_gives_the_users_logits(trained):
    ref, net, paths = trained
    x = _images()
    for fmt, path in paths.items():
        torch.manual_seed(123)  # advlens' own random init differs from the user's
        model = _load(ref, weights=str(path), num_classes=CLASSES, input_size=SIZE)
        with torch.no_grad():
            want = net((x - model.mean) / model.std)
            got = model(x)
        assert got.shape == (2, CLASSES)
        assert (got - want).abs().max().item() <= 1e-5, f"{ref} {fmt}"
    random = _load(ref, weights="random", num_classes=CLASSES, input_size=SIZE)
    with torch.no_grad():  # the check above is not trivially true
        assert (random(x) - want).abs().max().item() > 1e-3


def _vit_reshape(t: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's documented ViT reshape: drop the class token, 4×4 grid, channels first."""
    side = SIZE // 16
    return t[:, 1:, :].reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)


def test_gradcam_at_every_layer_matches_pytorch_grad_cam(trained):
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    ref, _, paths = trained
    model = _load(ref, weights=str(paths["pth"]), num_classes=CLASSES, input_size=SIZE).double()
    x = _images().double()
    target = 8  # a class whose Grad-CAM is positive somewhere at every layer of all three random networks
    ours = al.explain(model, x, "gradcam", target=target)
    assert list(ours) == list(model.layers)
    reshape = _vit_reshape if "vit" in ref else None
    for layer, module in model.layers.items():
        with GradCAM(model=model, target_layers=[module], reshape_transform=reshape) as cam:
            want = cam(input_tensor=x.clone().requires_grad_(True), targets=[ClassifierOutputTarget(target)] * len(x))
        assert ours[layer].shape == (2, SIZE, SIZE)
        if ref.startswith("timm:vit") and layer == "blocks.11":  # only the class token reaches the head
            assert ours[layer].abs().max().item() == 0.0
        else:  # a real map, not two zero maps agreeing
            assert ours[layer].amax(dim=(1, 2)).tolist() == [1.0, 1.0]
        diff = (ours[layer] - torch.from_numpy(want)).abs().max().item()
        assert diff < 1e-4, f"{ref} {layer}: max abs diff {diff:.2e}"


def test_discovered_layers():
    tv = _load("torchvision:resnet18", num_classes=CLASSES, input_size=SIZE)
    assert list(tv.layers) == RESNET18_LAYERS and tv.cam_layer == "layer4.1"
    assert tv.classifier is tv.net.fc and tv.grids == {}
    assert tv.labels == [str(i) for i in range(CLASSES)]

    tm = _load("timm:resnet10t", num_classes=CLASSES, input_size=SIZE)
    assert list(tm.layers) == [f["module"] for f in tm.net.feature_info] == ["act1", "layer1", "layer2", "layer3",
                                                                              "layer4"]
    assert tm.cam_layer == "layer4" and tm.grids == {}

    vit = _load("timm:vit_tiny_patch16_224", num_classes=CLASSES, input_size=(64, 48))
    assert list(vit.layers) == [f"blocks.{i}" for i in range(12)]
    assert set(vit.grids) == set(vit.layers) and vit.cam_layer is None  # no exact CAM through a class token
    assert all(g == TokenGrid("tokens", (4, 3), 1) for g in vit.grids.values())
    assert tuple(vit.mean.flatten().tolist()) == (0.5, 0.5, 0.5) and vit.input_size == (64, 48)
    maps = al.explain(vit, torch.rand(1, 3, 64, 48), "gradcam", layers="blocks.11", target=0)
    assert maps["blocks.11"].shape == (1, 64, 48)


def test_preprocessing_from_the_models_config():
    tagged = _load("timm:resnet18.a1_in1k", num_classes=CLASSES, input_size=SIZE)  # its pretrained_cfg
    assert (tagged.crop_pct, tagged.interpolation) == (0.95, "bicubic")
    tv = _load("torchvision:resnet18", num_classes=CLASSES, mean=(0.1, 0.2, 0.3), std=(1, 2, 4))
    assert (tv.input_size, tv.crop_pct, tv.interpolation) == ((224, 224), 224 / 256, "bilinear")  # its weights enum
    assert tv.mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3]) and tv.std.flatten().tolist() == [1, 2, 4]


def test_cam_on_torchvision_resnet_is_the_formula():
    model = _load("torchvision:resnet18", num_classes=CLASSES, input_size=SIZE)
    x, target = _images(), torch.tensor([2, 7])
    got = al.explain(model, x, "cam", target=target)
    assert list(got) == ["layer4.1"]
    net = model.net
    with torch.no_grad():  # by hand: A = layer4 output, map = Σ_k W[c,k] A^k, bilinear up, min-max
        z = (x - model.mean) / model.std
        z = net.maxpool(net.relu(net.bn1(net.conv1(z))))
        A = net.layer4(net.layer3(net.layer2(net.layer1(z))))
        raw = torch.einsum("nk,nkhw->nhw", net.fc.weight[target], A)
    up = F.interpolate(raw[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0]
    lo, hi = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
    assert (got["layer4.1"] - (up - lo) / (hi - lo)).abs().max().item() < 1e-5


def test_token_grid_round_trip_and_gradient():
    out = torch.randn(2, 1 + 3 * 4, 5, requires_grad=True)
    g = TokenGrid("tokens", (3, 4), 1)
    grid = g.to_grid(out)
    assert grid.shape == (2, 5, 3, 4)
    assert grid[1, 2, 2, 3].item() == out[1, 1 + 2 * 4 + 3, 2].item()  # row 2, column 3 -> token 1 + 11
    back = g.from_grid(grid, out)
    assert torch.equal(back, out)
    w = torch.randn_like(out)
    d_grid, d_out = torch.autograd.grad((back * w).sum(), [grid, out], retain_graph=True)
    assert torch.equal(d_grid, g.to_grid(w))  # the patch tokens' gradient reaches the grid
    assert torch.equal(d_out[:, :1], w[:, :1]) and torch.equal(d_out[:, 1:], w[:, 1:])

    nhwc = TokenGrid("nhwc")
    out4 = torch.randn(2, 3, 4, 5)
    assert nhwc.to_grid(out4).shape == (2, 5, 3, 4) and nhwc.to_grid(out4)[0, 4, 2, 1] == out4[0, 2, 1, 4]
    assert torch.equal(nhwc.from_grid(nhwc.to_grid(out4), out4), out4)
    with pytest.raises(al.AdvlensError, match="tokens"):
        g.to_grid(torch.randn(2, 10, 5))


FACTORY = """
import torchvision


def build(num_classes=10):
    return torchvision.models.resnet18(num_classes=num_classes)


def not_a_module(num_classes=10):
    return 42
"""


def test_file_and_package_factories(tmp_path):
    (tmp_path / "mynet.py").write_text(FACTORY)
    net = _user_net("torchvision:resnet18")
    torch.save(net.state_dict(), tmp_path / "w.pth")
    model = _load(f"{tmp_path / 'mynet.py'}:build", weights=str(tmp_path / "w.pth"), num_classes=CLASSES,
                  input_size=SIZE)
    assert list(model.layers) == RESNET18_LAYERS and model.cam_layer == "layer4.1"
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))  # ImageNet's by default
    x = _images()
    with torch.no_grad():
        assert (model(x) - net((x - model.mean) / model.std)).abs().max().item() <= 1e-5

    pkg = _load("torchvision.models:resnet18", num_classes=CLASSES, input_size=SIZE)
    assert list(pkg.layers) == RESNET18_LAYERS and pkg.classifier.out_features == CLASSES
    assert pkg.labels == [str(i) for i in range(CLASSES)]


def _error(ref: str, **kw) -> str:
    with pytest.raises(al.AdvlensError) as info:
        _load(ref, **kw)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


def _mark(path: str) -> None:  # what the malicious pickle below would call
    with open(path, "w") as f:
        f.write("ran")


class _Payload:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (_mark, (self.path,))


def test_errors(tmp_path):
    (tmp_path / "mynet.py").write_text(FACTORY)
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=CLASSES).state_dict(), tmp_path / "w10.pth")

    msg = _error("torchvision:resnet18", weights=str(tmp_path / "w10.pth"), input_size=SIZE)
    assert "fc.weight" in msg and "[10, 512]" in msg and "[1000, 512]" in msg and "num_classes" in msg
    msg = _error("timm:resnet181", num_classes=CLASSES)
    assert "did you mean 'resnet18'" in msg
    msg = _error("timm:resnet10t.bogus_tag", num_classes=CLASSES)  # timm's RuntimeError, as one line
    assert "timm cannot build 'resnet10t.bogus_tag'" in msg and "bogus_tag" in msg.split("(", 1)[1]
    msg = _error("torchvision:resnet19", num_classes=CLASSES)
    assert "torchvision" in msg and "'resnet18'" in msg
    msg = _error(f"{tmp_path / 'mynet.py'}:not_a_module", num_classes=CLASSES)
    assert "returned int, not a torch.nn.Module" in msg
    msg = _error(f"{tmp_path / 'missing.py'}:build")
    assert "missing.py" in msg
    msg = _error(f"{tmp_path / 'mynet.py'}:buld")
    assert "'buld'" in msg and "did you mean 'build'" in msg

    flag = tmp_path / "pickle_ran"
    torch.save({"conv.weight": torch.zeros(1), "extra": _Payload(str(flag))}, tmp_path / "code.pth")
    msg = _error("torchvision:resnet18", weights=str(tmp_path / "code.pth"), num_classes=CLASSES)
    assert "pickled Python objects" in msg and "_mark" in msg
    assert not flag.exists()  # refused without running it

    (tmp_path / "nine.txt").write_text("\n".join(f"c{i}" for i in range(9)) + "\n")
    msg = _error("torchvision:resnet18", num_classes=CLASSES, input_size=SIZE, labels=str(tmp_path / "nine.txt"))
    assert "nine.txt" in msg and "9 class names" in msg and "10 outputs" in msg


def test_labels_from_files(tmp_path):
    names = [f"class {i}" for i in range(12)]
    (tmp_path / "labels.txt").write_text("\n".join(names) + "\n\n")
    (tmp_path / "labels.json").write_text(json.dumps({str(i): names[i] for i in reversed(range(12))}))
    for file in ("labels.txt", "labels.json"):
        model = _load("torchvision:resnet18", num_classes=12, input_size=SIZE, labels=str(tmp_path / file))
        assert model.labels == names, file  # the JSON's {"11": …, "10": …, …, "0": …} sorted by number


def test_a_defended_transformer_keeps_its_token_grids_and_preprocessing():
    """A user's ViT behind a defense still gets [N,C,h,w] maps and its own eval crop (issue 18 × defenses)."""
    from advlens import defend

    model = _load("timm:vit_tiny_patch16_224", num_classes=CLASSES, input_size=SIZE)
    defended = defend.wrap(model, "median", k=3)
    assert defended.grids == model.grids and defended.image_options() == model.image_options()
    maps = al.explain(defended, _images(), "gradcam", layers=["blocks.3"])
    assert maps["blocks.3"].shape == (2, SIZE, SIZE) and bool(maps["blocks.3"].abs().sum() > 0)
