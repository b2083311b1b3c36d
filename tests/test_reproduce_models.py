"""The paper's networks: output shapes, parameter counts, NTK-style init, the centred wrapper."""

from __future__ import annotations

import pytest
import torch

import captum_ntk as cn
from captum_ntk.apps.reproduce.paper_models import (
    Centered,
    PaperCNN28,
    PaperCNN32,
    PaperMLP,
    mobilenet_v2_cifar,
    resnet18_cifar,
    resnet34_cifar,
)
from captum_ntk.apps.reproduce.rows import ROWS, get_row


def _count(model):
    return sum(p.numel() for p in model.parameters())


def _linear(i, o):
    return i * o + o


def _conv(i, o):
    return 9 * i * o + o


def test_small_models_shapes_and_counts():
    mlp = PaperMLP(seed=0)
    assert mlp(torch.rand(3, 1, 28, 28)).shape == (3, 1)
    assert _count(mlp) == _linear(784, 100) + 2 * _linear(100, 100) + _linear(100, 1)
    cnn = PaperCNN28(seed=0)
    assert cnn(torch.rand(3, 1, 28, 28)).shape == (3, 1)
    convs = _conv(1, 64) + _conv(64, 32) + _conv(32, 8)
    assert _count(cnn) == convs + _linear(72, 128) + _linear(128, 64) + _linear(64, 1)
    cnn32 = PaperCNN32(seed=0)
    assert cnn32(torch.rand(3, 3, 32, 32)).shape == (3, 1)
    convs = _conv(3, 64) + _conv(64, 64) + _conv(64, 32) + _conv(32, 32) + _conv(32, 8)
    convs += _conv(8, 8)
    assert _count(cnn32) == convs + _linear(128, 128) + _linear(128, 64) + _linear(64, 1)


def test_ntk_init_is_standard_normal_and_seeded():
    a, b, c = PaperMLP(seed=3), PaperMLP(seed=3), PaperMLP(seed=4)
    assert torch.equal(a.l1.weight, b.l1.weight) and not torch.equal(a.l1.weight, c.l1.weight)
    w = a.l1.weight.detach()
    assert abs(float(w.mean())) < 0.01 and abs(float(w.std()) - 1.0) < 0.01


def test_cifar_resnets_and_mobilenet():
    x = torch.rand(2, 3, 32, 32)
    r18 = resnet18_cifar(10)
    assert _count(r18) == 11_173_962
    assert r18.conv1.kernel_size == (3, 3) and r18.conv1.stride == (1, 1)
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in r18.modules())
    assert r18.eval()(x).shape == (2, 10)
    r34 = resnet34_cifar(10)
    assert len(r34.layers) == 3 + 4 + 6 + 3 and r34.eval()(x).shape == (2, 10)
    mobile = mobilenet_v2_cifar(10)
    assert mobile.eval()(x).shape == (2, 10) and mobile.conv1.stride == (1, 1)
    assert mobile.linear.in_features == 1280


def test_centered_starts_at_zero_and_has_the_same_tangent_features():
    torch.manual_seed(0)
    net = PaperCNN28(seed=1)
    centered = Centered(PaperCNN28(seed=1))
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(centered(x), torch.zeros(4, 1))
    assert _count(centered) == _count(net)  # the frozen copy holds buffers, not parameters
    with torch.no_grad():
        for p in centered.network.parameters():
            p.add_(0.01 * torch.randn_like(p))
        for p, q in zip(net.parameters(), centered.network.parameters(), strict=True):
            p.copy_(q)
    assert not torch.equal(centered(x), torch.zeros(4, 1))
    k_net = cn.kernel_matrix(net.double(), x.double(), kernel="trntk0")
    k_centered = cn.kernel_matrix(centered.double(), x.double(), kernel="trntk0")
    torch.testing.assert_close(k_centered, k_net, rtol=1e-10, atol=0)


def test_rows_registry():
    assert get_row("MLP_MNIST2") is ROWS["mlp-mnist2"]
    assert ROWS["cnn-cifar2"].classes == (0, 1) and ROWS["resnet18-cifar10"].paper["trntk"] == 0.776
    with pytest.raises(ValueError, match="choose from"):
        get_row("vgg-imagenet")
