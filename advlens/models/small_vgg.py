"""Small VGG-style CNNs trained on the offline data sets (digits, lfw, shapes), and the training, caching
and registration every small architecture shares (:class:`SmallArch`; ``small_resnet`` uses them too).

Architecture (Keras layer names, as in the seeds): two 16-channel convs, pool, two 32-channel
convs, pool, two 64-channel convs (each conv → BatchNorm → ReLU; the layer ``block{b}_conv{k}`` is
that ReLU's output), global average pooling, linear — so CAM applies to
``block3_conv2``. Training is deterministic for a seed and cached as safetensors under
``$ADVLENS_HOME/models`` (default ``~/.cache/advlens/models``).
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .._checks import AdvlensError, check_int, check_path, first_line, unknown_name
from .fitting import train_epochs
from .registry import register_model
from .wrapper import ClassifierModel

__all__ = ["SmallVGG", "SmallArch", "train_small", "train_small_vgg", "register_small", "advlens_home",
           "TRAINABLE_DATA"]

log = logging.getLogger(__name__)

TRAINABLE_DATA = ("digits", "lfw", "shapes")
_EPOCHS = {"digits": 15, "lfw": 40, "shapes": 20}
_N_IMAGES = {"shapes": 2500}  # procedural: generate enough to learn from (default None = the whole set)
_WIDTHS = ((1, 16, 2), (2, 32, 2), (3, 64, 2))  # (block, channels, convs)
MEAN = STD = (0.5, 0.5, 0.5)
_ARCH_VERSION = 2  # in the cache file name: a changed architecture never loads stale weights


def advlens_home() -> Path:
    """Cache folder: ``$ADVLENS_HOME`` or ``~/.cache/advlens``."""
    return Path(os.environ.get("ADVLENS_HOME", Path.home() / ".cache" / "advlens"))


class SmallVGG(nn.Module):
    """VGG-style CNN for small images ``[N,3,H,W]`` (any H, W ≥ 4) → logits ``[N,num_classes]``."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        feats: list[tuple[str, nn.Module]] = []
        c_in = 3
        for b, width, convs in _WIDTHS:
            for k in range(1, convs + 1):
                feats.append((f"block{b}_conv{k}_conv", nn.Conv2d(c_in, width, 3, padding=1, bias=False)))
                feats.append((f"block{b}_conv{k}_bn", nn.BatchNorm2d(width)))
                feats.append((f"block{b}_conv{k}", nn.ReLU(inplace=False)))
                c_in = width
            if b < len(_WIDTHS):
                feats.append((f"block{b}_pool", nn.MaxPool2d(2)))
        self.features = nn.Sequential(OrderedDict(feats))
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x).mean(dim=(2, 3)))


def _wrap(net: SmallVGG, data: str, labels: list[str], size: tuple[int, int]) -> ClassifierModel:
    layers = {n: m for n, m in net.features.named_children() if isinstance(m, nn.ReLU)}
    last = list(layers)[-1]
    return ClassifierModel(net, MEAN, STD, layers, labels, size, f"small_vgg_{data}", cam_layer=last, classifier=net.fc)


@dataclass(frozen=True)
class SmallArch:
    """A small architecture trained on the offline data sets, registered as ``{name}_{data}``.

    Attributes:
        name: registry prefix and cache file prefix (``small_vgg``, ``small_resnet``).
        build: ``build(num_classes) -> nn.Module`` taking normalized ``[N,3,H,W]``; its final
            ``nn.Linear`` is ``.fc`` (the state-dict check on loading looks for ``fc.weight``).
        wrap: ``wrap(net, data, labels, (H, W)) -> ClassifierModel`` (layers, CAM layer, name).
        version: in the cache file name, so a changed architecture never loads stale weights.
        epochs: default training epochs per data set.
    """

    name: str
    build: Callable[[int], nn.Module]
    wrap: Callable[[nn.Module, str, list[str], tuple[int, int]], ClassifierModel]
    version: int
    epochs: Mapping[str, int]


VGG = SmallArch("small_vgg", SmallVGG, _wrap, _ARCH_VERSION, _EPOCHS)


def _cache_path(data: str, seed: int, arch: SmallArch = VGG) -> Path:
    return advlens_home() / "models" / f"{arch.name}-v{arch.version}-{data}-seed{seed}.safetensors"


def train_small_vgg(
    data: str,
    seed: int = 0,
    epochs: int | None = None,
    out: str | Path | None = None,
    progress: bool = False,
) -> tuple[ClassifierModel, dict]:
    """Train a :class:`SmallVGG` on ``data`` deterministically and save it (safetensors).

    Args:
        data: ``"digits"``, ``"lfw"`` or ``"shapes"`` (train split; accuracy on the test split).
        seed: controls init and batch order; the same seed gives the same weights.
        epochs: an int ≥ 1, or None for the default per data set (digits 15, lfw 40, shapes 20).
        out: file to write (default: the cache path that :func:`load_model` looks up).
        progress: show a tqdm bar over epochs.

    Returns:
        ``(model, info)`` with ``info`` holding ``test_accuracy``, ``train_accuracy``, ``epochs``,
        ``seconds``, ``path``.

    Raises:
        AdvlensError: unknown ``data``, or ``seed``/``epochs``/``out`` of the wrong type or range.
    """
    return train_small(VGG, data, seed, epochs, out, progress)


def train_small(
    arch: SmallArch,
    data: str,
    seed: int = 0,
    epochs: int | None = None,
    out: str | Path | None = None,
    progress: bool = False,
) -> tuple[ClassifierModel, dict]:
    """Train ``arch`` on ``data`` deterministically and save it (safetensors); see :func:`train_small_vgg`.

    Adam (lr 2e-3) under a one-cycle schedule (max 3e-3), batches of 64 in a seeded order, random
    horizontal flips except on digits; ``epochs`` None = ``arch.epochs[data]``.
    """
    from ..data import load_images

    if not isinstance(data, str) or data not in TRAINABLE_DATA:
        raise unknown_name("training data", data, TRAINABLE_DATA)
    seed = check_int(seed, "seed", 0)
    epochs = arch.epochs[data] if epochs is None else check_int(epochs, "epochs", 1)
    out = None if out is None else check_path(out, "out")
    n = _N_IMAGES.get(data)
    train, test = (load_images(data, n=n, split=s, seed=seed) for s in ("train", "test"))
    torch.manual_seed(seed)
    net = arch.build(len(train.labels))
    model = arch.wrap(net, data, list(train.labels), tuple(train.x.shape[-2:]))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=epochs * -(-len(train) // 64))
    gen = torch.Generator().manual_seed(seed)
    flips = data != "digits"

    def step(idx: torch.Tensor, epoch: int, batch: int) -> torch.Tensor:
        x = train.x[idx]
        if flips:
            x = torch.where((torch.rand(len(idx), generator=gen) < 0.5)[:, None, None, None], x.flip(-1), x)
        return F.cross_entropy(model(x), train.y[idx])

    start = time.perf_counter()
    model.train()
    train_epochs(list(net.parameters()), opt, step, len(train), 64, epochs, gen, scheduler=sched,
                 desc=f"train {arch.name} on {data}" if progress else None)
    model.eval()
    info = {
        "data": data,
        "seed": seed,
        "epochs": epochs,
        "train_accuracy": _accuracy(model, train.x, train.y),
        "test_accuracy": _accuracy(model, test.x, test.y),
        "seconds": round(time.perf_counter() - start, 2),
    }
    path = Path(out) if out else _cache_path(data, seed, arch)
    _save(net, path, {**info, "labels": list(train.labels), "input_size": list(model.input_size)})
    info["path"] = str(path)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, info


def _accuracy(model: ClassifierModel, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model.predict(x) == y).float().mean())


def _save(net: nn.Module, path: Path, meta: dict) -> None:
    """Atomic safetensors write with JSON metadata."""
    from safetensors.torch import save

    from .._io import atomic_write

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    atomic_write(path, lambda f: f.write(save(state, metadata={"advlens": json.dumps(meta)})))


def _load(path: Path, data: str, arch: SmallArch = VGG) -> ClassifierModel:
    """A trained ``arch`` network from our safetensors (with metadata) or a plain ``.pth`` state dict."""
    from .weights import load_into, read_state_dict

    state = read_state_dict(path)
    if "fc.weight" not in state or state["fc.weight"].ndim != 2:
        raise AdvlensError(f"weights {path} are not a {arch.name} state dict (no 2-D 'fc.weight')")
    classes = int(state["fc.weight"].shape[0])
    meta = _read_meta(path) if path.suffix == ".safetensors" else {}
    labels = meta.get("labels") or [str(i) for i in range(classes)]
    size = meta.get("input_size", (32, 32))
    if not (isinstance(labels, list) and len(labels) == classes and all(isinstance(x, str) for x in labels)):
        raise AdvlensError(f"weights {path}: metadata 'labels' must list {classes} class names (str), "
                           f"got {str(labels)[:80]}")
    if not (isinstance(size, (list, tuple)) and len(size) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 4 for v in size)):
        raise AdvlensError(f"weights {path}: metadata 'input_size' must be [H, W] (ints ≥ 4), got {str(size)[:80]}")
    net = arch.build(classes)
    load_into(net, state, str(path))
    return arch.wrap(net, data, labels, tuple(size))


def _read_meta(path: Path) -> dict:
    """The ``advlens`` JSON metadata of one of our safetensors files (``{}`` when there is none)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("advlens", "{}"))
    except Exception as e:  # SafetensorError, JSONDecodeError
        raise AdvlensError(f"weights {path}: unreadable metadata ({type(e).__name__}: {first_line(e, 120)})") from None
    if not isinstance(meta, dict):
        raise AdvlensError(f"weights {path}: metadata 'advlens' must be a JSON object, got {type(meta).__name__}")
    return meta


def _builder(data: str, arch: SmallArch):
    def build(weights: str | None = None, seed: int = 0) -> ClassifierModel:
        seed = check_int(seed, "seed", 0)
        if weights == "random":
            from ..data import load_images

            test = load_images(data, split="test")
            torch.manual_seed(seed)
            return arch.wrap(arch.build(len(test.labels)), data, list(test.labels), tuple(test.x.shape[-2:]))
        if weights is not None:
            return _load(Path(weights), data, arch)
        path = _cache_path(data, seed, arch)
        if path.is_file():
            return _load(path, data, arch)
        log.warning("%s_%s (seed %d) not cached yet: training it now (see `advlens train`)", arch.name, data, seed)
        return train_small(arch, data, seed=seed)[0]

    build.__doc__ = f"{arch.name} trained on {data} (trained and cached on first use)."
    return build


def register_small(arch: SmallArch) -> None:
    """Register ``{arch.name}_{data}`` for every data set of :data:`TRAINABLE_DATA`: trained with
    :func:`train_small` and cached on first use, ``weights="random"`` for an untrained one."""
    for data in TRAINABLE_DATA:
        register_model(f"{arch.name}_{data}")(_builder(data, arch))


register_small(VGG)
