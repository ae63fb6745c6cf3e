"""CIFAR-style ResNets in plain torch (no torchvision), registered by name.

Parameter names follow the reference code (conv1, bn1, layer1..layerN, fc) so the paper's
layer patterns ("layer3", "layer4", "fc") apply unchanged. Input normalisation lives in
the model (buffers), so a saved model is usable on raw [0, 1] images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from orchestrator.errors import UserError


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks: list[int], widths: list[int], in_channels: int, num_classes: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(1, in_channels, 1, 1))
        self.register_buffer("std", torch.ones(1, in_channels, 1, 1))
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        for i, (n, w) in enumerate(zip(blocks, widths), start=1):
            layers = []
            for j in range(n):
                layers.append(BasicBlock(in_planes, w, stride=2 if (j == 0 and i > 1) else 1))
                in_planes = w
            setattr(self, f"layer{i}", nn.Sequential(*layers))
        self.num_stages = len(blocks)
        self.fc = nn.Linear(in_planes, num_classes)

    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean.view_as(self.mean))
        self.std.copy_(std.clamp_min(1e-3).view_as(self.std))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features; x is in [0, 1]."""
        out = F.relu(self.bn1(self.conv1((x - self.mean) / self.std)))
        for i in range(1, self.num_stages + 1):
            out = getattr(self, f"layer{i}")(out)
        return torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


@dataclass(frozen=True)
class ModelInfo:
    build: Callable[[int, int, int], ResNet]  # (in_channels, num_classes, width) -> model
    default_width: int
    late_layers: tuple[str, ...]  # the paper's "last stages + fc" for this depth
    size: str  # "small" (CPU defaults) or "large"


def _widths(base: int, stages: int) -> list[int]:
    return [base * 2**i for i in range(stages)]


MODELS: dict[str, ModelInfo] = {
    "resnet18": ModelInfo(
        lambda c, k, w: ResNet([2, 2, 2, 2], _widths(w, 4), c, k), 64, ("layer3", "layer4", "fc"), "large"
    ),
    "resnet20": ModelInfo(
        lambda c, k, w: ResNet([3, 3, 3], _widths(w, 3), c, k), 16, ("layer2", "layer3", "fc"), "small"
    ),
    "resnet8": ModelInfo(
        lambda c, k, w: ResNet([1, 1, 1], _widths(w, 3), c, k), 16, ("layer2", "layer3", "fc"), "small"
    ),
}


def model_info(name: str) -> ModelInfo:
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    return MODELS[name]


def build_model(name: str, in_channels: int, num_classes: int, width: int | None = None) -> ResNet:
    info = model_info(name)
    width = width or info.default_width
    if width < 1:
        raise UserError(f"--width {width}: must be a positive integer")
    model = info.build(in_channels, num_classes, width)
    model.late_layers = info.late_layers
    return model


def late_layers(model: nn.Module) -> tuple[str, ...]:
    """The modules Scissorhands trims and projects by default: the model's ``late_layers``
    if it declares them (the built-in ResNets do), else the last third of its conv / linear
    modules in module order."""
    declared = getattr(model, "late_layers", None)
    if declared:
        return tuple(declared)
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return tuple(names[len(names) - math.ceil(len(names) / 3):])
