"""Small deterministic test models for the kernel tests.

Every ``make_*`` factory seeds its own generator, so a model (and its inputs) is the same on every call.
Models are built in float64 unless ``dtype`` says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

DTYPE = torch.float64


def _seed(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomise(model: nn.Module, seed: int, scale: float = 0.5) -> nn.Module:
    """Overwrite every floating parameter with seeded N(0, scale^2) values (not only init)."""
    gen = _seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=gen, dtype=param.dtype) * scale)
    return model


# --------------------------------------------------------------------------------------------------
# MLP 6 -> 7 -> 5 (tanh)
# --------------------------------------------------------------------------------------------------
class MLP(nn.Module):
    def __init__(self, d_in: int = 6, d_hidden: int = 7, d_out: int = 5) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(d_hidden, d_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def make_mlp(
    seed: int = 0, dtype: torch.dtype = DTYPE, d_in: int = 6, d_hidden: int = 7, d_out: int = 5
) -> MLP:
    model = MLP(d_in, d_hidden, d_out)
    _randomise(model, seed)
    return model.to(dtype).eval()


def mlp_inputs(n: int, seed: int = 1, dtype: torch.dtype = DTYPE, d_in: int = 6) -> Tensor:
    return torch.randn(n, d_in, generator=_seed(seed), dtype=dtype)


def make_wide_mlp(seed: int = 0, dtype: torch.dtype = DTYPE) -> MLP:
    """An MLP with P = 20 * 300 + 300 + 300 * 8 + 8 = 8708 parameters (comfortably > 4096)."""
    model = MLP(20, 300, 8)
    _randomise(model, seed, scale=0.3)
    return model.to(dtype).eval()


# --------------------------------------------------------------------------------------------------
# MLP with dropout (for the "active dropout" error)
# --------------------------------------------------------------------------------------------------
class DropoutMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 7)
        self.drop = nn.Dropout(p=0.5)
        self.fc2 = nn.Linear(7, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(torch.tanh(self.fc1(x))))


def make_dropout_mlp(seed: int = 0, dtype: torch.dtype = DTYPE) -> DropoutMLP:
    model = DropoutMLP()
    _randomise(model, seed)
    return model.to(dtype).train()


# --------------------------------------------------------------------------------------------------
# CNN: Conv2d + BatchNorm2d (eval, non-trivial running stats) + ReLU + MaxPool + Linear, C = 4
# --------------------------------------------------------------------------------------------------
class CNN(nn.Module):
    def __init__(self, channels: int = 3, n_classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(channels * 3 * 3, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.pool(self.relu(self.bn1(self.conv1(x))))
        return self.fc(h.flatten(1))


def cnn_inputs(n: int, seed: int = 2, dtype: torch.dtype = DTYPE) -> Tensor:
    return torch.randn(n, 1, 6, 6, generator=_seed(seed), dtype=dtype)


def make_cnn(seed: int = 0, dtype: torch.dtype = DTYPE, train: bool = False) -> CNN:
    """The CNN with BatchNorm running statistics made non-trivial by a few train-mode forwards.

    Returned in eval mode unless ``train`` (then BatchNorm is in train mode: an error case).
    """
    model = CNN()
    _randomise(model, seed)
    model = model.to(dtype)
    # the affine BN parameters should be near (1, 0) so that the network is not degenerate
    with torch.no_grad():
        model.bn1.weight.add_(1.0)
    model.train()
    gen = _seed(seed + 100)
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, 6, 6, generator=gen, dtype=dtype) * 2.0 + 0.7)
    assert not torch.allclose(model.bn1.running_mean, torch.zeros_like(model.bn1.running_mean))
    assert not torch.allclose(model.bn1.running_var, torch.ones_like(model.bn1.running_var))
    return model.train(train)


# --------------------------------------------------------------------------------------------------
# Transformer encoder: Embedding + TransformerEncoderLayer (d_model 8, 2 heads) + mean pool + Linear
# --------------------------------------------------------------------------------------------------
VOCAB = 11
SEQ_LEN = 4


class TinyTransformer(nn.Module):
    def __init__(self, vocab: int = VOCAB, d_model: int = 8, n_classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.encoder = nn.TransformerEncoderLayer(
            d_model=d_model, nhead=2, dim_feedforward=16, dropout=0.0, batch_first=True
        )
        self.head = nn.Linear(d_model, n_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.encoder(self.embed(tokens))
        return self.head(h.mean(dim=1))


def make_transformer(seed: int = 0, dtype: torch.dtype = DTYPE) -> TinyTransformer:
    model = TinyTransformer()
    _randomise(model, seed, scale=0.4)
    with torch.no_grad():
        for norm in (model.encoder.norm1, model.encoder.norm2):
            norm.weight.add_(1.0)
    return model.to(dtype).eval()


def transformer_inputs(n: int, seed: int = 3) -> Tensor:
    return torch.randint(0, VOCAB, (n, SEQ_LEN), generator=_seed(seed))


# --------------------------------------------------------------------------------------------------
# C = 1 model (one logit, shape (B,) or (B, 1))
# --------------------------------------------------------------------------------------------------
class SingleLogit(nn.Module):
    def __init__(self, squeeze: bool = True) -> None:
        super().__init__()
        self.squeeze = squeeze
        self.fc1 = nn.Linear(6, 7)
        self.fc2 = nn.Linear(7, 1)

    def forward(self, x: Tensor) -> Tensor:
        out = self.fc2(torch.tanh(self.fc1(x)))
        return out.squeeze(-1) if self.squeeze else out


def make_single_logit(
    seed: int = 0, dtype: torch.dtype = DTYPE, squeeze: bool = True
) -> SingleLogit:
    model = SingleLogit(squeeze)
    _randomise(model, seed)
    return model.to(dtype).eval()


# --------------------------------------------------------------------------------------------------
# Two positional inputs: forward(x, z)
# --------------------------------------------------------------------------------------------------
class TwoInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc_x = nn.Linear(6, 7)
        self.fc_z = nn.Linear(3, 7)
        self.out = nn.Linear(7, 4)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        return self.out(torch.tanh(self.fc_x(x) + self.fc_z(z)))


def make_two_input(seed: int = 0, dtype: torch.dtype = DTYPE) -> TwoInput:
    model = TwoInput()
    _randomise(model, seed)
    return model.to(dtype).eval()


def two_input_inputs(n: int, seed: int = 4, dtype: torch.dtype = DTYPE) -> tuple[Tensor, Tensor]:
    gen = _seed(seed)
    return (
        torch.randn(n, 6, generator=gen, dtype=dtype),
        torch.randn(n, 3, generator=gen, dtype=dtype),
    )


# --------------------------------------------------------------------------------------------------
# Keyword inputs: forward(*, x, mask) returning an object with .logits (Hugging Face style)
# --------------------------------------------------------------------------------------------------
@dataclass
class LogitsOutput:
    logits: Tensor


class KeywordModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 7)
        self.fc2 = nn.Linear(7, 3)

    def forward(self, *, x: Tensor, mask: Tensor) -> LogitsOutput:
        h = torch.tanh(self.fc1(x * mask.to(x.dtype)))
        return LogitsOutput(logits=self.fc2(h))


def make_keyword(seed: int = 0, dtype: torch.dtype = DTYPE) -> KeywordModel:
    model = KeywordModel()
    _randomise(model, seed)
    return model.to(dtype).eval()


def keyword_inputs(n: int, seed: int = 5, dtype: torch.dtype = DTYPE) -> dict[str, Tensor]:
    gen = _seed(seed)
    x = torch.randn(n, 6, generator=gen, dtype=dtype)
    mask = torch.rand(n, 6, generator=gen) > 0.3
    return {"x": x, "mask": mask}


# --------------------------------------------------------------------------------------------------
# Tied weights: an encoder/decoder pair sharing one weight matrix
# --------------------------------------------------------------------------------------------------
class TiedModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(6, 4, bias=False)
        self.mid = nn.Linear(4, 6)
        self.dec = nn.Linear(6, 4, bias=False)
        self.dec.weight = self.enc.weight  # tied: one parameter in named_parameters()

    def forward(self, x: Tensor) -> Tensor:
        return self.dec(torch.tanh(self.mid(torch.tanh(self.enc(x)))))


def make_tied(seed: int = 0, dtype: torch.dtype = DTYPE) -> TiedModel:
    model = TiedModel()
    _randomise(model, seed)
    return model.to(dtype).eval()


# --------------------------------------------------------------------------------------------------
# Error / edge-case models
# --------------------------------------------------------------------------------------------------
class ReluGate(nn.Module):
    """Bias-free ReLU network: at x = 0 every gradient and every hidden feature is exactly 0."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 7, bias=False)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(7, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.relu(self.fc1(x)))


def make_relu_gate(seed: int = 0, dtype: torch.dtype = DTYPE) -> ReluGate:
    model = ReluGate()
    _randomise(model, seed)
    return model.to(dtype).eval()


class SqrtModel(nn.Module):
    """Finite outputs everywhere, but d/ds sqrt(s * |x|_1) is 0/0 = NaN for an all-zero input x."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.s = nn.Parameter(torch.tensor(1.5))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x) + torch.sqrt(self.s * x.abs().sum(dim=-1, keepdim=True))


def make_sqrt_model(seed: int = 0, dtype: torch.dtype = DTYPE) -> SqrtModel:
    model = SqrtModel()
    gen = _seed(seed)
    with torch.no_grad():
        model.fc.weight.copy_(torch.randn(3, 6, generator=gen))
        model.fc.bias.copy_(torch.randn(3, generator=gen))
    return model.to(dtype).eval()
