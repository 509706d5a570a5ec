"""A small CIFAR-style ResNet (He et al., 2016, "Deep Residual Learning", §4.2) for 28×28 images.

``ResNet-(6n+2)``: a 3×3 stem convolution, three stages of ``n`` basic
blocks with ``w``, ``2w``, ``4w`` channels (the first block of stages 2 and
3 has stride 2: 28 → 14 → 7 pixels), global average pooling and a linear
classifier. A basic block is ::

    y = ReLU( BN(conv3×3( ReLU(BN(conv3×3(x))) )) + shortcut(x) )

with ``shortcut = identity`` when shapes agree, else a strided 1×1
convolution followed by BatchNorm (the paper's option B). Convolutions have
no bias (BatchNorm follows each); every activation is its own out-of-place
``nn.ReLU`` module so that hooks see every use. ``n = 1`` gives ResNet-8.

Initialisation: convolutions ``kaiming_normal_(mode="fan_out")`` (as
torchvision), BatchNorm ``γ = 1, β = 0``, the classifier torch's default.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["BasicBlock", "ResNet", "resnet8"]


def _conv_bn(c_in: int, c_out: int, kernel: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(c_out)]


class BasicBlock(nn.Module):
    """Two 3×3 conv–BN layers with a residual connection (see the module docstring).

    Args:
        c_in: Input channels.
        c_out: Output channels.
        stride: Stride of the first convolution and of the shortcut.

    Example:
        >>> import torch
        >>> BasicBlock(4, 8, stride=2)(torch.zeros(2, 4, 28, 28)).shape
        torch.Size([2, 8, 14, 14])
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(c_in, c_out, 3, stride)
        self.relu1 = nn.ReLU()
        self.conv2, self.bn2 = _conv_bn(c_out, c_out, 3, 1)
        self.shortcut = (nn.Sequential(*_conv_bn(c_in, c_out, 1, stride))
                         if stride != 1 or c_in != c_out else nn.Identity())
        self.relu2 = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        """``ReLU(BN(conv(ReLU(BN(conv(x))))) + shortcut(x))``."""
        h = self.relu1(self.bn1(self.conv1(x)))
        return self.relu2(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNet(nn.Module):
    """Stem, three stages of :class:`BasicBlock`, global average pooling, linear classifier.

    Args:
        in_channels: Image channels (1 for MNIST).
        classes: Output logits.
        width: Channels of the first stage (``w``; then ``2w``, ``4w``).
        blocks: Basic blocks per stage (``n``).

    Example:
        >>> import torch
        >>> net = ResNet(1, 10, width=4, blocks=1)
        >>> net(torch.zeros(3, 1, 28, 28)).shape
        torch.Size([3, 10])
    """

    def __init__(self, in_channels: int = 1, classes: int = 10, *, width: int = 16,
                 blocks: int = 1) -> None:
        super().__init__()
        if width < 1 or blocks < 1:
            raise ValueError(f"width and blocks must be >= 1, got width={width}, blocks={blocks}")
        conv, bn = _conv_bn(in_channels, width, 3, 1)
        self.stem = nn.Sequential(conv, bn, nn.ReLU())
        stages: list[nn.Module] = []
        c = width
        for i, c_out in enumerate((width, 2 * width, 4 * width)):
            for j in range(blocks):
                stages.append(BasicBlock(c, c_out, stride=2 if i > 0 and j == 0 else 1))
                c = c_out
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, classes)`` of images ``(B, C, H, W)``."""
        return self.fc(self.flatten(self.pool(self.stages(self.stem(x)))))


def resnet8(in_channels: int = 1, classes: int = 10, width: int = 16) -> ResNet:
    """ResNet-8 (one basic block per stage): 7 convolutions (+2 shortcut 1×1) and a linear layer.

    With ``width = 16``: 77,754 parameters for 1×28×28 inputs and 10 classes.

    Example:
        >>> sum(p.numel() for p in resnet8().parameters())
        77754
    """
    return ResNet(in_channels, classes, width=width, blocks=1)
