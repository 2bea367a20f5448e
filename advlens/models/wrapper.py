"""`ClassifierModel`: a classifier that takes [0,1] images and knows its explainable layers."""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from .._checks import AdvlensError, unknown_name
from ..data.io import INTERPOLATIONS
from .tokens import TokenGrid

__all__ = ["ClassifierModel", "wrap", "PRECISIONS", "COMPILE_MODES"]

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
#: ``torch.compile`` modes accepted by :meth:`ClassifierModel.set_compile` (inductor's modes)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


class ClassifierModel(nn.Module):
    """An image classifier with normalization inside and named explainable layers.

    ``model(x)`` takes ``x`` float ``[N,3,H,W]`` in [0,1] and returns logits ``[N,C]``; the
    ImageNet-style ``(x - mean) / std`` happens inside, so attacks and explainers never
    de-normalize anything.

    Attributes:
        net: the wrapped network (expects normalized input).
        layers: ``{name: module}`` of the explainable layers in forward order; a map of a layer
            is computed from that module's output.
        labels: class names, ``len(labels) == C``.
        input_size: ``(H, W)`` the network was trained at.
        name: registry name.
        cam_layer: name of the layer feeding global-average-pooling + ``classifier`` (CAM), or None.
        classifier: the final ``nn.Linear`` after global pooling (CAM weights), or None.
        grids: ``{layer name: TokenGrid}`` for layers whose output is transformer tokens or NHWC
            (reshaped to ``[N, C, h, w]`` before any map is made); empty for CNNs.
        crop_pct, interpolation: the network's eval preprocessing — photos are center-cropped to
            ``crop_pct`` of the largest box of the input's aspect, then resized (``"bilinear"`` or
            ``"bicubic"``) to ``input_size`` (torchvision's ``Resize(size / crop_pct)`` + ``CenterCrop``).
    """

    def __init__(
        self,
        net: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        layers: Mapping[str, nn.Module],
        labels: Sequence[str],
        input_size: tuple[int, int],
        name: str,
        cam_layer: str | None = None,
        classifier: nn.Linear | None = None,
        grids: Mapping[str, TokenGrid] | None = None,
        crop_pct: float = 1.0,
        interpolation: str = "bilinear",
    ) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3:
            raise AdvlensError(f"mean and std need 3 values (RGB), got {list(mean)} and {list(std)}")
        if any(s <= 0 for s in std):
            raise AdvlensError(f"std values must be positive, got {list(std)}")
        if not layers:
            raise AdvlensError("a model needs at least one explainable layer")
        owned = {id(m) for m in net.modules()}
        for layer_name, module in layers.items():
            if not isinstance(module, nn.Module) or id(module) not in owned:
                raise AdvlensError(f"layer {layer_name!r} is not a submodule of the network")
        if cam_layer is not None and cam_layer not in layers:
            raise unknown_name("CAM layer", cam_layer, layers)
        for layer_name in grids or {}:
            if layer_name not in layers:
                raise unknown_name("layer with a token grid", layer_name, layers)
        if not (isinstance(crop_pct, (int, float)) and 0.0 < crop_pct <= 1.0):
            raise AdvlensError(f"crop_pct must be a number in (0, 1], got {crop_pct!r}")
        if interpolation not in INTERPOLATIONS:
            raise unknown_name("interpolation", interpolation, INTERPOLATIONS)
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.layers: dict[str, nn.Module] = dict(layers)  # plain dict: modules stay owned by net
        self.labels = list(labels)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.name = name
        self.cam_layer = cam_layer
        self.classifier = classifier
        self.grids: dict[str, TokenGrid] = dict(grids or {})
        self.crop_pct, self.interpolation = float(crop_pct), interpolation
        self.precision = "fp32"
        self.channels_last = False
        self.compile_options: dict[str, str] | None = None

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def set_precision(self, precision: str = "fp32", channels_last: bool = False) -> ClassifierModel:
        """Run the network in ``"bf16"`` autocast (or ``"fp32"``) and/or channels_last memory format.

        Logits, activations and gradients handed to explainers and attacks stay float32 (the engine
        casts them), so every method works unchanged; bf16 maps and attack decisions agree with fp32
        within the tolerances the tests state. Returns ``self``.
        """
        if precision not in PRECISIONS:
            raise unknown_name("precision", precision, PRECISIONS)
        self.precision, self.channels_last = precision, bool(channels_last)
        self.net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        if precision == "bf16" and self.device.type == "cpu" and not _cpu_has_bf16():
            log.warning("bf16 on a CPU without native bf16 (AVX512-BF16/AMX) runs 18-25x slower than fp32; "
                        "use fp32 here, bf16 on a GPU")
        return self

    def set_compile(self, mode: str | None = "default", backend: str = "inductor") -> ClassifierModel:
        """Run hook-free forwards (attacks, predictions, detectors' logits) through ``torch.compile``.

        Forwards during which any module of the network carries a hook (every explanation: the
        engine's capture, zennit's LRP rules, DLFuzz's coverage) run the eager network, so maps and
        gradients with respect to layers are unchanged. The compiled network is built on the first
        forward and not pickled (a copy sent to a Ray worker compiles its own). ``mode=None`` turns
        it off. ``mode`` is one of :data:`COMPILE_MODES` (used with the ``inductor`` backend only).
        Returns ``self``.
        """
        if mode is not None and mode not in COMPILE_MODES:
            raise unknown_name("compile mode", mode, COMPILE_MODES)
        self.compile_options = None if mode is None else {"mode": mode, "backend": backend}
        self.__dict__.pop("_compiled", None)
        return self

    def _runner(self) -> nn.Module:
        """The network to call: its compiled version when compiling is on and no module is hooked."""
        if self.compile_options is None or _hooked(self.net):
            return self.net
        compiled = self.__dict__.get("_compiled")
        if compiled is None:  # kept out of _modules: no duplicate state_dict keys, not pickled
            opts = self.compile_options
            kw = {"mode": opts["mode"]} if opts["backend"] == "inductor" else {}
            compiled = self.__dict__["_compiled"] = torch.compile(self.net, backend=opts["backend"], **kw)
        return compiled

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_compiled", None)
        return state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[N,C]`` (float32) of images ``x`` ``[N,3,H,W]`` in [0,1]."""
        z = (x - self.mean) / self.std
        if self.channels_last:
            z = z.contiguous(memory_format=torch.channels_last)
        net = self._runner()
        if self.precision == "bf16":
            with torch.autocast(device_type=z.device.type, dtype=torch.bfloat16):
                return net(z).float()
        return net(z)

    def predict(self, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Predicted class indices ``[N]`` (no gradients, batched)."""
        with torch.no_grad():
            return torch.cat([self(x[i : i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])

    def resolve_layers(self, layers: str | Sequence[str]) -> list[str]:
        """Turn ``"all"``, one name or a list of names into a list of known layer names.

        Raises:
            AdvlensError: unknown layer name (with the closest valid names).
        """
        if isinstance(layers, str):
            layers = list(self.layers) if layers == "all" else [layers]
        names = list(layers)
        if not names:
            raise AdvlensError("no layers requested")
        for n in names:
            if n not in self.layers:
                raise unknown_name(f"layer of {self.name}", n, self.layers)
        return names

    def image_options(self) -> dict[str, object]:
        """Keyword arguments of :func:`advlens.data.load_images` that match this model: its input size,
        eval crop and interpolation, and its class names (folders named after them map by name)."""
        return {"size": self.input_size, "crop_pct": self.crop_pct, "interpolation": self.interpolation,
                "labels": self.labels}

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_size={self.input_size}, layers={len(self.layers)}, classes={len(self.labels)}"


def _cpu_has_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (False when the check itself is missing)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _hooked(net: nn.Module) -> bool:
    """Whether any module of ``net`` (or the global registry) carries a forward/backward hook."""
    g = nn.modules.module
    if g._global_forward_hooks or g._global_forward_pre_hooks or g._global_backward_hooks or g._global_backward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
               for m in net.modules())


def wrap(
    module: nn.Module,
    mean: Sequence[float],
    std: Sequence[float],
    layers: str | Sequence[str] | Mapping[str, nn.Module] = "auto",
    labels: Sequence[str] | None = None,
    input_size: tuple[int, int] = (224, 224),
    name: str = "custom",
    cam_layer: str | None = None,
    classifier: str | nn.Linear | None = None,
) -> ClassifierModel:
    """Wrap a user's ``nn.Module`` (that expects normalized input) as a :class:`ClassifierModel`.

    Args:
        module: the network; called as ``module((x - mean) / std)``.
        mean, std: per-channel normalization of the network's training data.
        layers: ``"auto"`` (every stage/block, found from one probe forward at ``input_size``:
            :func:`advlens.models.discover.find_layers`), submodule names in forward order (as in
            ``module.named_modules()``) or a mapping ``{display name: submodule}``. Transformer layers
            (tokens ``[N, T, C]`` or NHWC) are reshaped to ``[N, C, h, w]`` for the maps.
        labels: class names (default: ``"0"``, ``"1"``, … found from one forward at ``input_size``).
        cam_layer, classifier: for CAM, the layer feeding global pooling and the name of (or the)
            final linear layer (with ``layers="auto"`` both are found when CAM is exact).

    Example:
        >>> net = torchvision.models.resnet18()
        >>> model = wrap(net, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), ["layer3", "layer4"])
        >>> auto = wrap(net, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # layers="auto"
        >>> list(auto.layers)[:3] == ["relu", "layer1.0", "layer1.1"], auto.cam_layer
        (True, 'layer4.1')
    """
    from .discover import find_cam, find_layers, probe_layers

    named = dict(module.named_modules())
    grids: dict[str, TokenGrid] = {}
    if isinstance(classifier, str):
        if classifier not in named or not isinstance(named[classifier], nn.Linear):
            raise AdvlensError(f"classifier {classifier!r} is not an nn.Linear submodule")
        classifier = named[classifier]
    if isinstance(layers, Mapping):
        layer_map = dict(layers)
    elif isinstance(layers, str) and layers == "auto":
        probe = probe_layers(module, input_size)  # one forward finds the layers and checks CAM
        layer_map, grids = find_layers(module, input_size, "auto", probe)
        if cam_layer is None:
            cam_layer, found = find_cam(module, input_size, layer_map, grids, classifier, probe)
            classifier = classifier or found
    else:
        names = [layers] if isinstance(layers, str) else list(layers)
        for n in names:
            if n not in named or n == "":
                raise unknown_name("submodule", n, [k for k in named if k])
        try:  # token layouts of the named layers (a network that cannot take input_size keeps none)
            layer_map, grids = find_layers(module, input_size, names)
        except AdvlensError:
            layer_map = {n: named[n] for n in names}
    if labels is None:
        labels = [str(i) for i in range(_count_classes(module, classifier, input_size))]
    return ClassifierModel(module, mean, std, layer_map, labels, input_size, name, cam_layer, classifier, grids)


def _count_classes(module: nn.Module, classifier: nn.Linear | None, input_size: tuple[int, int]) -> int:
    """Number of outputs: the classifier's width, else one probe forward in eval mode (mode restored)."""
    if classifier is not None:
        return classifier.out_features
    ref = next(iter(module.parameters()), None)
    probe = torch.zeros(1, 3, *input_size, device=ref.device if ref is not None else None)
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            return int(module(probe).shape[-1])
    finally:
        module.train(was_training)
