"""Model references: a user's own network by name — ``timm:NAME``, ``torchvision:NAME``,
``path/to/file.py:factory`` or ``package.module:factory`` — built, loaded and wrapped with its layers
found automatically (:mod:`advlens.models.discover`).

Preprocessing comes from the model's own configuration: timm's ``pretrained_cfg`` (mean, std, input
size, crop_pct, interpolation) or the transforms of torchvision's weights enum (its ``resize_size`` and
``crop_size`` give ``crop_pct``); a factory gets ImageNet's mean/std at 224×224 unless told otherwise.
Weights are never downloaded: without ``weights`` the network keeps its random initialization (a
warning says so); with them they are read by :func:`~advlens.models.weights.read_state_dict` (no pickle
runs) and fitted to the network's keys.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from .._checks import AdvlensError, check_file, check_int, first_line, unknown_name
from ..data.io import INTERPOLATIONS
from .discover import find_cam, find_layers, probe_layers
from .weights import load_into, read_state_dict
from .wrapper import ClassifierModel

__all__ = ["is_reference", "load_reference", "read_labels", "REFERENCE_FORMS"]

log = logging.getLogger(__name__)

#: what a model reference may look like (for messages and docs)
REFERENCE_FORMS = "timm:NAME, torchvision:NAME, path/to/file.py:factory or package.module:factory"
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass
class _Built:
    """A network and what its configuration says about preprocessing and classes."""

    net: nn.Module
    mean: tuple[float, ...] = _IMAGENET[0]
    std: tuple[float, ...] = _IMAGENET[1]
    input_size: tuple[int, int] = (224, 224)
    crop_pct: float = 1.0
    interpolation: str = "bilinear"
    labels: list[str] = field(default_factory=list)


def is_reference(name: str) -> bool:
    """Whether ``name`` is a model reference rather than a registered name."""
    return ":" in name


def _timm(name: str, num_classes: int | None, input_size: tuple[int, int] | None) -> _Built:
    import timm

    if not timm.is_model(name):
        raise unknown_name("timm model", name, timm.list_models())
    kw = {"num_classes": num_classes} if num_classes is not None else {}
    size_kw = {"img_size": input_size} if input_size else {}
    try:
        try:  # transformers take their input size (position embeddings follow it); CNNs do not need it
            net = timm.create_model(name, pretrained=False, **kw, **size_kw)
        except TypeError:
            net = timm.create_model(name, pretrained=False, **kw)
    except Exception as e:  # an unknown pretrained tag ('resnet18.bogus'), an option the model refuses
        raise AdvlensError(f"timm cannot build {name!r} ({type(e).__name__}: {first_line(e)})") from None
    cfg = dict(getattr(net, "pretrained_cfg", {}) or {})
    size = tuple(cfg.get("input_size", (3, 224, 224))[1:])
    interp = cfg.get("interpolation", "bilinear")
    return _Built(net, tuple(cfg.get("mean", _IMAGENET[0])), tuple(cfg.get("std", _IMAGENET[1])), size,  # type: ignore[arg-type]
                  float(cfg.get("crop_pct", 1.0) or 1.0), interp if interp in INTERPOLATIONS else "bilinear")


def _torchvision(name: str, num_classes: int | None) -> _Built:
    import torchvision

    names = torchvision.models.list_models(module=torchvision.models)
    if name not in names:
        raise unknown_name("torchvision classification model", name, names)
    net = torchvision.models.get_model(name, weights=None, **({"num_classes": num_classes} if num_classes else {}))
    built = _Built(net)
    enum = list(torchvision.models.get_model_weights(name))
    if enum:  # the transforms of its (first) weights: preprocessing; nothing is downloaded
        t, meta = enum[0].transforms(), enum[0].meta
        crop, resize = t.crop_size[0], t.resize_size[0]
        built.mean, built.std, built.input_size = tuple(t.mean), tuple(t.std), (crop, crop)
        built.crop_pct = min(1.0, crop / resize)
        built.interpolation = "bicubic" if "BICUBIC" in str(t.interpolation) else "bilinear"
        built.labels = list(meta.get("categories", []))
    return built


def _factory(ref: str, num_classes: int | None) -> _Built:
    where, _, fn_name = ref.rpartition(":")
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = check_file(Path(where).expanduser(), "model factory file")
        mod_name = f"advlens_user_model_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise AdvlensError(f"cannot import model factory file {where!r}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(mod_name, None)
            raise AdvlensError(f"cannot import model factory file {where!r} ({type(e).__name__}: {first_line(e)})") from None
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:
            raise AdvlensError(f"cannot import module {where!r} of model reference {ref!r} "
                               f"({type(e).__name__}: {first_line(e)})") from None
    factory = getattr(module, fn_name, None)
    if not callable(factory):
        found = [k for k, v in vars(module).items() if callable(v) and not k.startswith("_")]
        raise unknown_name(f"factory function in {where!r}", fn_name, found)
    try:
        net = factory(num_classes=num_classes) if num_classes is not None else factory()
    except Exception as e:
        raise AdvlensError(f"model factory {ref!r} failed ({type(e).__name__}: {first_line(e)})") from None
    if not isinstance(net, nn.Module):
        raise AdvlensError(f"model factory {ref!r} returned {type(net).__name__}, not a torch.nn.Module")
    return _Built(net)


def read_labels(labels: str | Path | Sequence[str], classes: int) -> list[str]:
    """Class names from a list, a text file (one per line) or a JSON file (a list, or ``{index: name}``).

    Raises:
        AdvlensError: unreadable file, wrong JSON shape, or a count other than ``classes``.
    """
    if isinstance(labels, (str, Path)):
        path = check_file(Path(labels).expanduser(), "labels file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise AdvlensError(f"cannot read labels file {str(path)!r} ({first_line(e)})") from None
        if path.suffix.lower() == ".json":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise AdvlensError(f"labels file {str(path)!r} is not valid JSON ({first_line(e)})") from None
            if isinstance(data, dict) and all(str(k).lstrip("-").isdigit() for k in data):
                data = [data[k] for k in sorted(data, key=int)]
            if not isinstance(data, list):
                raise AdvlensError(f"labels file {str(path)!r} must hold a JSON list of names or {{index: name}}")
            names = [str(v) for v in data]
        else:
            names = [line.strip() for line in text.splitlines()]
            while names and not names[-1]:
                names.pop()
        where = f"labels file {str(path)!r}"
    else:
        names, where = [str(v) for v in labels], "labels"
    if len(names) != classes:
        raise AdvlensError(f"{where} has {len(names)} class names but the model has {classes} outputs")
    return names


def _pair(value: Sequence[float] | None, default: tuple[float, ...], name: str) -> tuple[float, ...]:
    if value is None:
        return default
    vals = tuple(float(v) for v in value)
    if len(vals) != 3:
        raise AdvlensError(f"{name} needs 3 values (R,G,B), got {list(value)}")
    return vals


def load_reference(ref: str, weights: str | None = None, *, num_classes: int | None = None,
                   labels: str | Path | Sequence[str] | None = None, mean: Sequence[float] | None = None,
                   std: Sequence[float] | None = None, input_size: int | Sequence[int] | None = None,
                   layers: str | Sequence[str] = "auto") -> ClassifierModel:
    """Build the network a reference names, load its weights and wrap it (layers found automatically).

    Args:
        ref: ``timm:NAME``, ``torchvision:NAME``, ``file.py:factory`` or ``package.module:factory``.
        weights: a state dict file (``.pth``/``.pt``/``.safetensors``, plain or inside a training
            checkpoint), ``"random"`` or None (both: random initialization).
        num_classes: output classes (default: the architecture's, 1000 for ImageNet models).
        labels: class names (list, ``.txt`` one per line, or ``.json``); default: the weights' categories,
            ImageNet's names for 1000 classes, else ``"0"``, ``"1"``, ….
        mean, std, input_size: override the preprocessing read from the model's configuration.
        layers: ``"auto"`` or module names (see :func:`~advlens.models.discover.find_layers`).

    Raises:
        AdvlensError: unknown name (close matches suggested), a factory that fails or returns no
            module, weights that do not fit (first keys named), labels of the wrong count.
    """
    kind, _, rest = ref.partition(":")
    if num_classes is not None:
        num_classes = check_int(num_classes, "num_classes", 1)
    size = None
    if input_size is not None:
        pair = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        if len(pair) != 2:
            raise AdvlensError(f"input_size must be an int or (H, W), got {input_size!r}")
        size = (check_int(pair[0], "input_size", 8), check_int(pair[1], "input_size", 8))
    if kind == "timm":
        built = _timm(rest, num_classes, size)
    elif kind == "torchvision":
        built = _torchvision(rest, num_classes)
    else:
        built = _factory(ref, num_classes)
    net = built.net
    if weights is not None and weights != "random":
        load_into(net, read_state_dict(weights), str(weights),
                  hint="" if num_classes else " (a classifier of another size? set --num-classes / num_classes)")
    else:
        log.warning("%s has random weights (pass --weights / weights= with a checkpoint for trained ones)", ref)
    net.eval()
    hw = size or built.input_size
    probe = probe_layers(net, hw)  # one probe forward serves discovery, the CAM check and the class count
    found, grids = find_layers(net, hw, layers, probe)
    head = net.get_classifier() if hasattr(net, "get_classifier") else None
    cam_layer, classifier = find_cam(net, hw, found, grids, head if isinstance(head, nn.Module) else None, probe)
    classes = classifier.out_features if classifier is not None else int(probe[1].shape[1])
    if labels is not None:
        names = read_labels(labels, classes)
    elif len(built.labels) == classes:
        names = built.labels
    elif classes == 1000:
        from ..data.builtin import imagenet_labels

        names = imagenet_labels()
    else:
        names = [str(i) for i in range(classes)]
    return ClassifierModel(net, _pair(mean, built.mean, "mean"), _pair(std, built.std, "std"), found, names, hw, ref,
                           cam_layer, classifier, grids, built.crop_pct, built.interpolation)
