"""ResNet-50 (He et al. 2016, v1.5 as torchvision builds it: the stride on the 3x3 convolution)
for a machine where torchvision cannot be installed beside its torch.

The CPU build of torch that CI and development install here has no matching torchvision on the
package index (PyPI's wheel fails to import beside it), so the scoring benchmark builds the same
network from torch alone: the same layers, shapes and multiply-adds (4.1 GFLOPs an image at
224x224, 25.6 M parameters with 1,000 classes), random weights as the benchmark's models have.
Where torchvision imports, the benchmark uses torchvision's own.
"""

from __future__ import annotations

import torch
from torch import nn

EXPANSION = 4
STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))
"""Each stage's bottleneck width, blocks and first block's stride."""


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, bias=False)
    return [conv, nn.BatchNorm2d(c_out)]


class Bottleneck(nn.Module):
    def __init__(self, c_in: int, width: int, stride: int) -> None:
        super().__init__()
        c_out = width * EXPANSION
        self.body = nn.Sequential(
            *_conv_bn(c_in, width, 1),
            nn.ReLU(inplace=True),
            *_conv_bn(width, width, 3, stride),
            nn.ReLU(inplace=True),
            *_conv_bn(width, c_out, 1),
        )
        same = stride == 1 and c_in == c_out
        self.shortcut = nn.Identity() if same else nn.Sequential(*_conv_bn(c_in, c_out, 1, stride))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))  # type: ignore[no-any-return]


def resnet50(num_classes: int) -> nn.Module:
    layers: list[nn.Module] = [
        *_conv_bn(3, 64, 7, 2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, padding=1),
    ]
    c_in = 64
    for width, blocks, stride in STAGES:
        for i in range(blocks):
            layers.append(Bottleneck(c_in, width, stride if i == 0 else 1))
            c_in = width * EXPANSION
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes)]
    return nn.Sequential(*layers)
