"""A zoo of plain-PyTorch families against the per-example definition (issue 17, item 3).

Recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``, packed sequences, ``nn.LSTMCell``),
``nn.PReLU``, attention with sequence-first layout and separate key/value projections,
normalisation layers (instance, RMS, bias-free layer norm, BatchNorm1d in eval mode), tied and
free parameters, transposed, 3-D and circular-padded convolutions, ``nn.Bilinear``,
``nn.EmbeddingBag``, weight normalisation (parametrizations), a causal decoder layer and a
sequence-first LSTM: every
kernel with both engines equals ``tests/reference.py`` (one ``autograd.grad`` per example and
logit) in float64 to 1e-10 relative. Modules ``torch.func.vmap`` cannot differentiate are computed
by the autograd loop with one :class:`VmapFallbackWarning` naming them.
"""

from __future__ import annotations

import warnings

import pytest
import reference as ref
import torch
import torch.nn.functional as F
from models import _randomise as randomise_parameters
from torch import Tensor, nn

import captum_ntk as cn
from captum_ntk.engine.autograd_loop import VmapFallbackWarning

TOL = 1e-10
KERNELS = ["trntk0", "trntk", "entk", "pntk0"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomise(model: nn.Module, seed: int, scale: float = 0.5) -> nn.Module:
    """Seeded N(0, scale^2) float64 parameters, eval mode (tests/models.py's helper)."""
    return randomise_parameters(model.double(), seed, scale).eval()


def _tokens(n: int, seed: int, length: int = 5, vocab: int = 11) -> Tensor:
    return torch.randint(0, vocab, (n, length), generator=_gen(seed))


def _vectors(n: int, seed: int, d: int = 5) -> Tensor:
    return torch.randn(n, d, generator=_gen(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------------------
# recurrent
# ------------------------------------------------------------------------------------------------
class Recurrent(nn.Module):
    """Embedding -> a recurrent layer -> linear head on the last step (or the mean)."""

    def __init__(self, cell: type, pool: str = "last", **options) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 4)
        self.rnn = cell(4, 3, batch_first=True, **options)
        width = (options.get("proj_size") or 3) * (2 if options.get("bidirectional") else 1)
        self.head = nn.Linear(width, 3)
        self.pool = pool

    def forward(self, tokens: Tensor) -> Tensor:
        out, _ = self.rnn(self.embed(tokens))
        h = out[:, -1] if self.pool == "last" else out.mean(1)
        return self.head(h)


class Packed(nn.Module):
    """A GRU over padded sequences of different lengths through ``pack_padded_sequence``."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 4)
        self.rnn = nn.GRU(4, 3, batch_first=True)
        self.head = nn.Linear(3, 2)

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(
            self.embed(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        _, h = self.rnn(packed)
        return self.head(h[-1])


def _packed_inputs(n: int, seed: int) -> dict[str, Tensor]:
    lengths = torch.randint(1, 6, (n,), generator=_gen(seed + 100))
    return {"tokens": _tokens(n, seed), "lengths": lengths}


class Cell(nn.Module):
    """A hand-unrolled ``nn.LSTMCell`` (head registered first)."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 4)
        self.cell = nn.LSTMCell(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = c = x.new_zeros(x.shape[0], 3)
        for t in range(3):
            h, c = self.cell(x * (t + 1) / 3, (h, c))
        return self.head(h)


# ------------------------------------------------------------------------------------------------
# activations with parameters, attention, normalisation, tied and free parameters
# ------------------------------------------------------------------------------------------------
class PReLUNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 3, 2)
        self.act = nn.PReLU(3)
        self.fc = nn.Linear(12, 4)
        self.act2 = nn.PReLU()
        self.out = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.conv(x[:, None])).flatten(1)
        return self.out(self.act2(self.fc(h)))


class SeqFirstAttention(nn.Module):
    """Sequence-first MultiheadAttention with separate key/value sizes, a free query."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, 4))
        self.keys = nn.Linear(1, 3)
        self.attn = nn.MultiheadAttention(4, 2, kdim=3, vdim=2)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        seq = x.T.unsqueeze(-1)  # (T, B, 1): batch on dimension 1
        k = self.keys(seq)
        v = torch.tanh(k[..., :2])
        out, _ = self.attn(self.query.expand(1, x.shape[0], 4), k, v)
        return self.head(out[0])


class Norms(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 8)
        self.bn = nn.BatchNorm1d(8)
        self.inorm = nn.InstanceNorm1d(2, affine=True)
        self.ln = nn.LayerNorm(8, bias=False)
        self.rms = nn.RMSNorm(8) if hasattr(nn, "RMSNorm") else nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.bn(self.inp(x)))
        h = self.inorm(h.reshape(-1, 2, 4)).reshape(-1, 8)
        return self.head(self.rms(torch.tanh(self.ln(h))))


def _norms() -> nn.Module:
    model = _randomise(Norms(), 4)
    model.train()
    with torch.no_grad():
        for i in range(3):
            model(_vectors(16, 40 + i) + 0.5)
    return model.eval()


class TiedLM(nn.Module):
    """Embedding tied to the output projection, plus a free bias and temperature."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(6, 4)
        self.mix = nn.Linear(4, 4)
        self.bias = nn.Parameter(torch.zeros(6))
        self.temperature = nn.Parameter(torch.ones(()))

    def forward(self, tokens: Tensor) -> Tensor:
        h = torch.tanh(self.mix(self.embed(tokens).mean(1)))
        return (F.linear(h, self.embed.weight) + self.bias) * self.temperature


class OddLayers(nn.Module):
    """ConvTranspose2d, Conv3d, Bilinear and EmbeddingBag in one model."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(1, 2, 2, stride=2)
        self.vol = nn.Conv3d(1, 2, (2, 2, 2))
        self.bag = nn.EmbeddingBag(11, 3, mode="mean")
        self.bil = nn.Bilinear(2, 3, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, image: Tensor, tokens: Tensor) -> Tensor:
        a = torch.tanh(self.up(image[:, None])).mean(dim=(2, 3))  # (B, 2)
        v = self.vol(torch.stack([image, image.flip(-1)], 1)[:, None]).mean(dim=(2, 3, 4))
        b = self.bag(tokens)  # (B, 3)
        return self.head(torch.tanh(self.bil(torch.tanh(a + v), b)))


def _odd_inputs(n: int, seed: int) -> dict[str, Tensor]:
    image = torch.randn(n, 3, 3, generator=_gen(seed), dtype=torch.float64)
    return {"image": image, "tokens": _tokens(n, seed + 1, length=4)}


class WeightNormed(nn.Module):
    """A weight-normalised Linear (parametrizations: original0 / original1)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.utils.parametrizations.weight_norm(nn.Linear(5, 6))
        self.b = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.tanh(self.a(x)))


class CausalDecoder(nn.Module):
    """TransformerDecoderLayer with a causal mask, pooled at the last position."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 8)
        self.decoder = nn.TransformerDecoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.embed(tokens)
        mask = nn.Transformer.generate_square_subsequent_mask(h.shape[1], dtype=h.dtype)
        return self.head(self.decoder(h, h, tgt_mask=mask, tgt_is_causal=True)[:, -1])


class SeqFirstLSTM(nn.Module):
    """A sequence-first LSTM (batch on dimension 1) pooled by its last hidden state."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 4)
        self.rnn = nn.LSTM(4, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, tokens: Tensor) -> Tensor:
        _, (h, _) = self.rnn(self.embed(tokens).transpose(0, 1))
        return self.head(h[-1])


class CircularGLU(nn.Module):
    """A circular-padded Conv1d (no Gram rule), GLU and a LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(1, 4, 3, padding=1, padding_mode="circular")
        self.norm = nn.LayerNorm(10)
        self.head = nn.Linear(10, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = F.glu(self.conv(x[:, None]), dim=1).flatten(1)  # (B, 2 * 5)
        return self.head(self.norm(h))


CASES = {
    "lstm": (lambda: _randomise(Recurrent(nn.LSTM, num_layers=2, bidirectional=True), 1), _tokens),
    "gru_mean": (lambda: _randomise(Recurrent(nn.GRU, pool="mean"), 2), _tokens),
    "rnn_relu": (lambda: _randomise(Recurrent(nn.RNN, nonlinearity="relu"), 3, 0.4), _tokens),
    "lstm_proj": (lambda: _randomise(Recurrent(nn.LSTM, proj_size=2), 4), _tokens),
    "packed_gru": (lambda: _randomise(Packed(), 5), _packed_inputs),
    "lstm_cell": (lambda: _randomise(Cell(), 6), _vectors),
    "prelu": (lambda: _randomise(PReLUNet(), 7), _vectors),
    "seq_first_attention": (lambda: _randomise(SeqFirstAttention(), 8), _vectors),
    "norms": (_norms, _vectors),
    "tied_lm": (lambda: _randomise(TiedLM(), 9), lambda n, s: _tokens(n, s, vocab=6)),
    "odd_layers": (lambda: _randomise(OddLayers(), 10), _odd_inputs),
    "weight_norm": (lambda: _randomise(WeightNormed(), 15), _vectors),
    "causal_decoder": (lambda: _randomise(CausalDecoder(), 16, 0.4), _tokens),
    "seq_first_lstm": (lambda: _randomise(SeqFirstLSTM(), 17), _tokens),
    "circular_glu": (lambda: _randomise(CircularGLU(), 18), _vectors),
}

#: Families torch.func.vmap cannot differentiate (computed by the autograd loop, with a warning).
LOOPED = {"lstm", "gru_mean", "rnn_relu", "lstm_proj", "packed_gru", "prelu", "seq_first_lstm"}


def assert_rel(actual: Tensor, expected: Tensor, tol: float = TOL) -> None:
    err = float((actual - expected).abs().max() / expected.abs().max())
    assert err < tol, f"relative error {err:.3g}"


@pytest.mark.parametrize("engine", ["jacobian", "gram"])
@pytest.mark.parametrize("case", list(CASES))
def test_zoo_equals_reference(case: str, engine: str) -> None:
    make_model, make_inputs = CASES[case]
    model, x1, x2 = make_model(), make_inputs(4, 11), make_inputs(3, 12)
    for kernel in KERNELS:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            k = cn.kernel_matrix(model, x1, x2, kernel=kernel, engine=engine, batch_size=3)
        expected = ref.ref_kernel(model, x1, x2, kernel=kernel)
        assert k.shape == expected.shape
        assert_rel(k, expected)
        fallbacks = [w for w in caught if issubclass(w.category, VmapFallbackWarning)]
        assert len(fallbacks) == (case in LOOPED), [str(w.message) for w in fallbacks]


@pytest.mark.parametrize("case", ["lstm", "prelu"])
def test_fallback_warning_names_the_module(case: str) -> None:
    make_model, make_inputs = CASES[case]
    with pytest.warns(VmapFallbackWarning, match="rnn.*LSTM" if case == "lstm" else "PReLU"):
        cn.kernel_matrix(make_model(), make_inputs(2, 1), kernel="trntk0")


@pytest.mark.parametrize("case", ["lstm", "prelu", "packed_gru"])
def test_projected_kernel_and_attribution_on_looped_models(case: str) -> None:
    """proj_trntk through the loop equals the reference projection of the naive gradients."""
    make_model, make_inputs = CASES[case]
    model, x1, x2 = make_model(), make_inputs(4, 13), make_inputs(3, 14)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VmapFallbackWarning)
        k = cn.kernel_matrix(model, x1, x2, kernel="proj_trntk", projection_dim=16, seed=3)
    assert_rel(k, ref.ref_kernel(model, x1, x2, kernel="proj_trntk", projection_dim=16, seed=3))


class NoVmap(torch.autograd.Function):
    """A custom autograd function without a vmap rule (vmap raises at run time)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.tanh(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return g * (1 - torch.tanh(x) ** 2)


class CustomFunctionNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 4)
        self.fc2 = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(NoVmap.apply(self.fc1(x)))


def test_unlisted_vmap_failure_falls_back_with_vmaps_error() -> None:
    model, x1, x2 = _randomise(CustomFunctionNet(), 12), _vectors(4, 1), _vectors(3, 2)
    with pytest.warns(VmapFallbackWarning, match="vmap raised"):
        k = cn.kernel_matrix(model, x1, x2, kernel="trntk", engine="jacobian")
    assert_rel(k, ref.ref_kernel(model, x1, x2, kernel="trntk"))


def test_one_example_batches_and_in_place_update_through_the_loop() -> None:
    model, x = _randomise(Recurrent(nn.LSTM), 14), _tokens(3, 15)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VmapFallbackWarning)
        k1 = cn.kernel_matrix(model, x, kernel="trntk", batch_size=1)
        assert_rel(k1, ref.ref_kernel(model, x, kernel="trntk"))
        with torch.no_grad():
            model.head.weight.mul_(2.0)
        k2 = cn.kernel_matrix(model, x, kernel="trntk", batch_size=1)
    assert_rel(k2, ref.ref_kernel(model, x, kernel="trntk"))


class OutOfMemoryNet(nn.Module):
    """Raises torch's out-of-memory error in its forward pass (a stand-in for a real OOM)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        if torch._C._functorch.is_functorch_wrapped_tensor(x):  # under vmap / jacrev
            raise torch.OutOfMemoryError("simulated: out of memory")
        return self.fc(x)


def test_out_of_memory_under_vmap_is_raised_not_looped() -> None:
    """An out-of-memory error is a budget problem, not a module vmap cannot differentiate: it
    propagates, with no fallback to the (slower) autograd loop."""
    model, x = _randomise(OutOfMemoryNet(), 13), _vectors(3, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", VmapFallbackWarning)
        with pytest.raises(torch.OutOfMemoryError, match="simulated"):
            cn.kernel_matrix(model, x, kernel="trntk0", engine="jacobian")
