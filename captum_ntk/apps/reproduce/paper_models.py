r"""The networks of Engel et al.'s Table 1, written in plain PyTorch (no torchvision).

Small single-logit models follow the authors' released scripts
(github.com/pnnl/projection_ntk, ``scripts/smallmodeltrain``): every Linear / Conv2d weight and
bias is drawn from N(0, 1) and activations are divided by a fixed width factor (the NTK
parameterisation as written there; note the factor is the *output* width of each layer, e.g.
sqrt(100) after the 784 -> 100 layer, exactly as in those scripts)::

    mlp = PaperMLP(seed=0)                 # MNIST2: 784-100-100-100-1
    cnn = PaperCNN28(seed=0)               # MNIST2 / FMNIST2: 3 conv + avg-pool, 3 Linear
    cnn = PaperCNN32(seed=0)               # CIFAR2: 6 conv + max-pool, 3 Linear
    net = Centered(PaperCNN32(seed=0))     # f(x; theta) - f(x; theta_0), theta_0 frozen
    resnet = resnet18_cifar(num_classes=10)  # 3x3 stem, no max-pool: 11,173,962 parameters
    mobilenet = mobilenet_v2_cifar(num_classes=10)
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "Centered",
    "MobileNetV2Cifar",
    "PaperCNN28",
    "PaperCNN32",
    "PaperMLP",
    "ResNetCifar",
    "mobilenet_v2_cifar",
    "ntk_normal_init",
    "resnet18_cifar",
    "resnet34_cifar",
]


def ntk_normal_init(module: nn.Module, seed: int) -> nn.Module:
    r"""Draws every Linear / Conv2d weight and bias from N(0, 1), seeded (global RNG untouched).

    Args:
        module (nn.Module): the model.
        seed (int): seed of the draw.

    Returns:
        nn.Module: the same module.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for layer in module.modules():
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                nn.init.normal_(layer.weight)
                if layer.bias is not None:
                    nn.init.normal_(layer.bias)
    return module


class PaperMLP(nn.Module):
    r"""The MNIST2 MLP: 784 -> 100 -> 100 -> 100 -> 1, ReLU, NTK-style scaling, one logit.

    ``h1 = relu(W1 x / 10)``, ``h2 = relu(W2 h1 / 10)``, ``h3 = relu(W3 h2 / 10)``,
    ``F = W4 h3`` (biases inside the layers); 98,801 parameters.

    Args:
        width (int): hidden width. Default: 100.
        in_features (int): input size. Default: 784.
        seed (int): seed of the N(0, 1) initialisation. Default: 0.

    Shapes:
        input: (B, 1, 28, 28) or (B, 784). output: (B, 1).
    """

    def __init__(self, width: int = 100, *, in_features: int = 784, seed: int = 0) -> None:
        super().__init__()
        self.scale = 1.0 / math.sqrt(width)
        self.l1 = nn.Linear(in_features, width)
        self.l2 = nn.Linear(width, width)
        self.l3 = nn.Linear(width, width)
        self.l4 = nn.Linear(width, 1)
        ntk_normal_init(self, seed)

    def forward(self, x: Tensor) -> Tensor:
        r"""Logit (B, 1) of images (B, 1, 28, 28) or vectors (B, 784)."""
        h = F.relu(self.l1(x.flatten(1)) * self.scale)
        h = F.relu(self.l2(h) * self.scale)
        h = F.relu(self.l3(h) * self.scale)
        return self.l4(h)


class PaperCNN28(nn.Module):
    r"""The MNIST2 / FMNIST2 CNN: three conv + average-pool stages and three Linear layers.

    ``conv(1->8w) avgpool conv(8w->4w) avgpool conv(4w->w) avgpool -> Linear(9w, 128)
    -> Linear(128, 64) -> Linear(64, 1)`` with ReLU, each activation divided by
    sqrt(out_channels * 9) (conv) or sqrt(out_features) (Linear); w = 8 gives 39,081 parameters.

    Args:
        width (int): w. Default: 8.
        seed (int): seed of the N(0, 1) initialisation. Default: 0.

    Shapes:
        input: (B, 1, 28, 28). output: (B, 1).
    """

    def __init__(self, width: int = 8, *, seed: int = 0) -> None:
        super().__init__()
        self.width = width
        self.conv1 = nn.Conv2d(1, 8 * width, 3, padding=1)
        self.conv2 = nn.Conv2d(8 * width, 4 * width, 3, padding=1)
        self.conv3 = nn.Conv2d(4 * width, width, 3, padding=1)
        self.fc1 = nn.Linear(width * 9, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 1)
        ntk_normal_init(self, seed)

    def embedding(self, x: Tensor) -> Tensor:
        r"""Input (B, 64) of the last Linear layer."""
        w = self.width
        h = x.reshape(x.shape[0], 1, 28, 28)
        for conv, channels in ((self.conv1, 8 * w), (self.conv2, 4 * w), (self.conv3, w)):
            h = F.relu(conv(h)) / math.sqrt(channels * 9)
            h = F.relu(F.avg_pool2d(h, 2))
        h = F.relu(self.fc1(h.flatten(1))) / math.sqrt(128)
        return F.relu(self.fc2(h)) / math.sqrt(64)

    def forward(self, x: Tensor) -> Tensor:
        r"""Logit (B, 1) of images (B, 1, 28, 28)."""
        return self.fc3(self.embedding(x))


class PaperCNN32(nn.Module):
    r"""The CIFAR2 CNN: three stages of two 3x3 convs and a max-pool, then three Linear layers.

    Channels 8w, 8w | 4w, 4w | w, w (w = 8), ``Linear(16w, 128) -> Linear(128, 64) ->
    Linear(64, 1)``, ReLU, activations divided by sqrt(out_channels * 9) / sqrt(out_features);
    94,161 parameters.

    Args:
        width (int): w. Default: 8.
        seed (int): seed of the N(0, 1) initialisation. Default: 0.

    Shapes:
        input: (B, 3, 32, 32). output: (B, 1).
    """

    def __init__(self, width: int = 8, *, seed: int = 0) -> None:
        super().__init__()
        widths = (8 * width, 8 * width, 4 * width, 4 * width, width, width)
        inputs = (3, *widths[:-1])
        self.convs = nn.ModuleList(
            nn.Conv2d(i, o, 3, padding=1) for i, o in zip(inputs, widths, strict=True)
        )
        self.widths = widths
        self.fc1 = nn.Linear(width * 16, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 1)
        ntk_normal_init(self, seed)

    def embedding(self, x: Tensor) -> Tensor:
        r"""Input (B, 64) of the last Linear layer."""
        h = x
        for i, (conv, channels) in enumerate(zip(self.convs, self.widths, strict=True)):
            h = F.relu(conv(h)) / math.sqrt(channels * 9)
            if i % 2 == 1:
                h = F.max_pool2d(h, 2)
        h = F.relu(self.fc1(h.flatten(1))) / math.sqrt(128)
        return F.relu(self.fc2(h)) / math.sqrt(64)

    def forward(self, x: Tensor) -> Tensor:
        r"""Logit (B, 1) of images (B, 3, 32, 32)."""
        return self.fc3(self.embedding(x))


class Centered(nn.Module):
    r"""``f(x; theta) - f(x; theta_0)``: a network minus a frozen copy of its initialisation.

    The authors train the CIFAR2 and FMNIST2 CNNs this way. The copy's parameters are stored as
    buffers, so kernels differentiate only ``theta`` and the tangent features equal those of
    the plain network; the output is centred at zero at initialisation.

    Args:
        network (nn.Module): the network at initialisation (``theta_0`` is copied now).
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        initial = copy.deepcopy(network)
        for module in initial.modules():
            for name, param in list(module.named_parameters(recurse=False)):
                delattr(module, name)
                module.register_buffer(name, param.detach().clone())
        self.initial = initial

    def forward(self, x: Tensor) -> Tensor:
        r"""``network(x) - initial(x)``."""
        return self.network(x) - self.initial(x)


# ------------------------------------------------------------------------ CIFAR ResNets
class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
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

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    r"""CIFAR-shaped ResNet: 3x3 stride-1 stem, no max-pool, four stages of basic blocks.

    Args:
        blocks (tuple of int): blocks per stage ((2, 2, 2, 2): ResNet-18, (3, 4, 6, 3): ResNet-34).
        num_classes (int): logits. Default: 10.
        seed (int): seed of PyTorch's default initialisation. Default: 0.

    Shapes:
        input: (B, 3, 32, 32). output: (B, num_classes).
    """

    def __init__(self, blocks: tuple[int, ...], num_classes: int = 10, *, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            layers, in_planes = [], 64
            for stage, count in enumerate(blocks):
                planes = 64 * 2**stage
                for i in range(count):
                    stride = 2 if stage > 0 and i == 0 else 1
                    layers.append(_BasicBlock(in_planes, planes, stride))
                    in_planes = planes
            self.layers = nn.Sequential(*layers)
            self.linear = nn.Linear(in_planes, num_classes)

    def embedding(self, x: Tensor) -> Tensor:
        r"""Globally average-pooled features (B, 512), the input of the last Linear layer."""
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        r"""Logits (B, num_classes) of images (B, 3, 32, 32)."""
        return self.linear(self.embedding(x))


def resnet18_cifar(num_classes: int = 10, *, seed: int = 0) -> ResNetCifar:
    r"""ResNet-18 for 32x32 images (11,173,962 parameters with 10 classes)."""
    return ResNetCifar((2, 2, 2, 2), num_classes, seed=seed)


def resnet34_cifar(num_classes: int = 10, *, seed: int = 0) -> ResNetCifar:
    r"""ResNet-34 for 32x32 images (21,282,122 parameters with 10 classes)."""
    return ResNetCifar((3, 4, 6, 3), num_classes, seed=seed)


# ------------------------------------------------------------------------ CIFAR MobileNetV2
class _InvertedResidual(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        planes = expansion * in_planes
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, bias=False), nn.BatchNorm2d(out_planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


#: (expansion, out_planes, num_blocks, stride); the second stage has stride 1 for 32x32 inputs.
_MOBILENET_CFG = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class MobileNetV2Cifar(nn.Module):
    r"""CIFAR-shaped MobileNetV2: stride-1 3x3 stem, stride 1 in the second stage, 1280-d head.

    Args:
        num_classes (int): logits. Default: 10.
        seed (int): seed of PyTorch's default initialisation. Default: 0.

    Shapes:
        input: (B, 3, 32, 32). output: (B, num_classes).
    """

    def __init__(self, num_classes: int = 10, *, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.conv1 = nn.Conv2d(3, 32, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(32)
            blocks, in_planes = [], 32
            for expansion, out_planes, count, stride in _MOBILENET_CFG:
                for i in range(count):
                    blocks.append(
                        _InvertedResidual(in_planes, out_planes, expansion, stride if i == 0 else 1)
                    )
                    in_planes = out_planes
            self.layers = nn.Sequential(*blocks)
            self.conv2 = nn.Conv2d(320, 1280, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(1280)
            self.linear = nn.Linear(1280, num_classes)

    def embedding(self, x: Tensor) -> Tensor:
        r"""Globally average-pooled features (B, 1280)."""
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.adaptive_avg_pool2d(out, 1).flatten(1)

    def forward(self, x: Tensor) -> Tensor:
        r"""Logits (B, num_classes) of images (B, 3, 32, 32)."""
        return self.linear(self.embedding(x))


def mobilenet_v2_cifar(num_classes: int = 10, *, seed: int = 0) -> MobileNetV2Cifar:
    r"""MobileNetV2 for 32x32 images."""
    return MobileNetV2Cifar(num_classes, seed=seed)
