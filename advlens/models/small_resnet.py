"""Small ResNet-style CNNs trained on the offline data sets (digits, lfw, shapes): the transfer source of
seed 003's black-box FGSM.

Seed 003 (Sec. 4.1) generates FGSM on one ResNet-50 and transfers it to every other network; at the
size of the offline data a ResNet-50 would not train on a CPU, so ``small_resnet_<data>`` keeps what
makes it a different architecture from ``small_vgg_<data>``: residual blocks with identity / 1×1
shortcuts (He et al.). Layout: a 16-channel 3×3 stem (conv → BatchNorm → ReLU), then three basic
blocks (two 3×3 convs with BatchNorm, the shortcut added before the final ReLU) of 32 (stride 2),
64 (stride 2) and 64 channels, global average pooling, linear. The explainable layers are the
stem's ReLU and each block's output; CAM and seed 003's MOD layer is ``block3``, the last one
(feeding global pooling). Training, caching (``$ADVLENS_HOME/models/small_resnet-v1-…``) and
registration are :mod:`advlens.models.small_vgg`'s (:func:`~advlens.models.small_vgg.train_small`),
with fewer epochs (about a minute per data set on a CPU).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .small_vgg import MEAN, STD, SmallArch, register_small, train_small
from .wrapper import ClassifierModel

__all__ = ["SmallResNet", "RESNET", "train_small_resnet"]

_STAGES = ((32, 2), (64, 2), (64, 1))  # (channels, stride) of block1, block2, block3
_STEM = 16


class BasicBlock(nn.Module):
    """ReLU(BN(conv3×3(ReLU(BN(conv3×3(x))))) + shortcut(x)): ``[N,C_in,H,W]`` → ``[N,C_out,H/s,W/s]``.

    The shortcut is the identity when shape is kept, else a strided 1×1 conv with BatchNorm.
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """ResNet-style CNN for small images ``[N,3,H,W]`` (any H, W ≥ 4) → logits ``[N,num_classes]``."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, _STEM, 3, padding=1, bias=False), nn.BatchNorm2d(_STEM), nn.ReLU())
        blocks, c_in = [], _STEM
        for c_out, stride in _STAGES:
            blocks.append(BasicBlock(c_in, c_out, stride))
            c_in = c_out
        self.block1, self.block2, self.block3 = blocks
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.block3(self.block2(self.block1(self.stem(x))))
        return self.fc(h.mean(dim=(2, 3)))


def _wrap(net: SmallResNet, data: str, labels: list[str], size: tuple[int, int]) -> ClassifierModel:
    layers = {"stem": net.stem, "block1": net.block1, "block2": net.block2, "block3": net.block3}
    return ClassifierModel(net, MEAN, STD, layers, labels, size, f"small_resnet_{data}", cam_layer="block3",
                           classifier=net.fc)


#: the small ResNet family: ``small_resnet_digits``, ``small_resnet_lfw``, ``small_resnet_shapes``
RESNET = SmallArch("small_resnet", SmallResNet, _wrap, 1, {"digits": 6, "lfw": 20, "shapes": 8})


def train_small_resnet(data: str, seed: int = 0, epochs: int | None = None, out: str | Path | None = None,
                       progress: bool = False) -> tuple[ClassifierModel, dict]:
    """Train a :class:`SmallResNet` on ``data`` deterministically and save it (safetensors); arguments and
    result as :func:`~advlens.models.small_vgg.train_small_vgg` (default epochs: digits 6, lfw 20, shapes 8)."""
    return train_small(RESNET, data, seed, epochs, out, progress)


register_small(RESNET)
