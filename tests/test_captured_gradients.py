"""Per-example gradients by capture (engine.gram.gradients) against torch.func, and in kernels."""

from __future__ import annotations

import models
import pytest
import torch
from torch import Tensor, nn

from captum_ntk.engine.data.inputs import ModelInputs
from captum_ntk.engine.gram.gradients import CapturedGradients
from captum_ntk.engine.model import ModelFunction


class HeadFirst(nn.Module):
    """Registers its head before its body; a LayerNorm and a bias-free Linear in between."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 4)
        self.norm = nn.LayerNorm(8)
        self.body = nn.Sequential(nn.Linear(5, 8, bias=False), nn.Tanh(), nn.Linear(8, 8))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(torch.tanh(self.body(x))))


class Centred(nn.Module):
    """The forward pass mixes the examples of a block (centring over the batch)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.out = nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.inp(x))
        return self.out(h - 0.5 * h.mean(dim=0, keepdim=True))


class ConvZoo(nn.Module):
    """Grouped, strided and dilated Conv2d (one without bias), Conv1d, and a Linear on 3-D input."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
        self.c2 = nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=3, bias=False)
        self.c3 = nn.Conv1d(6, 4, 2, stride=2)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.c2(torch.tanh(self.c1(x)))).flatten(2)  # (B, 6, L)
        return self.fc(torch.tanh(self.c3(h)).transpose(1, 2)).mean(1)


class PaddedEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 5, padding_idx=0)
        self.fc = nn.Linear(5, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.fc(torch.tanh(self.embed(tokens)).mean(1))


class WeightUsedOutside(nn.Module):
    """``fc1.weight`` also enters outside ``fc1``; ``plus_minus`` makes the logits sum to 0."""

    def __init__(self, plus_minus: bool = False) -> None:
        super().__init__()
        self.plus_minus = plus_minus
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 1 if plus_minus else 3)

    def forward(self, x: Tensor) -> Tensor:
        z = self.fc2(torch.tanh(self.fc1(x)) + x @ self.fc1.weight)
        return torch.cat([z, -z], dim=1) if self.plus_minus else z


def _seeded(module: nn.Module, x: Tensor) -> tuple[nn.Module, Tensor]:
    return module.double().eval(), x


def _conv_zoo() -> tuple[nn.Module, Tensor]:
    torch.manual_seed(5)
    return _seeded(ConvZoo(), torch.randn(3, 4, 7, 7, dtype=torch.float64))


def _padded_embedding() -> tuple[nn.Module, Tensor]:
    torch.manual_seed(6)
    tokens = torch.randint(0, 11, (4, 6))
    tokens[:, -2:] = 0
    return _seeded(PaddedEmbedding(), tokens)


def _head_first() -> tuple[nn.Module, Tensor]:
    torch.manual_seed(3)
    return HeadFirst().double().eval(), torch.randn(5, 5, dtype=torch.float64)


CASES = {
    "mlp": lambda: (models.make_mlp(), models.mlp_inputs(5)),
    "cnn_batchnorm": lambda: (models.make_cnn(), models.cnn_inputs(4)),
    "transformer_embedding": lambda: (models.make_transformer(), models.transformer_inputs(4)),
    "two_inputs": lambda: (models.make_two_input(), models.two_input_inputs(4)),
    "keyword_inputs": lambda: (models.make_keyword(), models.keyword_inputs(4)),
    "tied_weights": lambda: (models.make_tied(), models.mlp_inputs(4)),
    "head_registered_first": _head_first,
    "conv_zoo": _conv_zoo,
    "embedding_padding_idx": _padded_embedding,
}


def _close(actual: list[Tensor], expected: list[Tensor], tol: float = 1e-12) -> None:
    """Every piece within ``tol`` of the whole gradient's largest entry (what a projection sees)."""
    assert len(actual) == len(expected)
    scale = max(float(e.abs().max()) for e in expected)
    assert scale > 0
    for a, e in zip(actual, expected):
        assert a.shape == e.shape
        assert float((a - e).abs().max()) <= tol * scale


@pytest.mark.parametrize("case", list(CASES))
def test_captured_gradients_equal_torch_func(case: str) -> None:
    model, x = CASES[case]()
    inputs = ModelInputs.from_user(x, "x")
    function = ModelFunction(model)
    captured = CapturedGradients(function)
    c = function.num_outputs(inputs)
    _close(captured.summed_gradient(inputs), function.summed_gradient(inputs))
    _close(captured.jacobian(inputs), function.jacobian(inputs))
    part = (1, min(3, c)) if c > 1 else (0, 1)
    _close(captured.jacobian(inputs, part), function.jacobian(inputs, part))
    if case == "tied_weights":  # tied parameters cannot be split per module: torch.func
        assert captured.fallback is not None and captured.not_covered
    elif case == "transformer_embedding":  # nn.MultiheadAttention's fused in_proj: torch.func
        assert all(n.startswith("encoder.self_attn.") for n in captured.fallback.names)
        assert any(
            n.startswith("embed") for n in function.names if n not in captured.fallback.names
        )
    else:
        assert captured.fallback is None, captured.not_covered


def test_layer_selection_and_in_place_updates() -> None:
    model, x = models.make_cnn(), models.cnn_inputs(3)
    inputs = ModelInputs.from_user(x, "x")
    function = ModelFunction(model, ["conv1", "fc"])
    captured = CapturedGradients(function)
    _close(captured.jacobian(inputs), function.jacobian(inputs))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    fresh = ModelFunction(model, ["conv1", "fc"])
    _close(CapturedGradients(fresh).jacobian(inputs), fresh.jacobian(inputs))


def test_examples_mixing_forward_falls_back_to_torch_func() -> None:
    torch.manual_seed(0)
    model = Centred().double().eval()
    x = models.mlp_inputs(4)
    function = ModelFunction(model)
    planned_on_block = CapturedGradients(function)
    one = ModelInputs.from_user(x[:1], "x")
    planned_on_block.plan(ModelInputs.from_user(x, "x"))
    assert planned_on_block.rules == [] and planned_on_block.fallback is function
    late = CapturedGradients(function)
    late.plan(one)  # one example cannot show the mixing
    assert late.rules
    block = ModelInputs.from_user(x, "x")
    _close(late.jacobian(block), function.jacobian(block))  # detected, then torch.func
    assert late.rules == [] and "depends on the other examples" in late.not_covered["out"]


@pytest.mark.parametrize("projection", ["rademacher", "sjlt"])
@pytest.mark.parametrize("kernel", ["proj_trntk", "proj_pntk"])
def test_projected_kernels_agree_between_engines(kernel: str, projection: str) -> None:
    import captum_ntk as cn
    from captum_ntk.kernels.matrix import build_feature_map

    model, x = models.make_cnn(), models.cnn_inputs(6)
    opts = dict(kernel=kernel, projection=projection, projection_dim=24, seed=5)
    assert isinstance(build_feature_map(model, engine="gram", **opts).gradients, CapturedGradients)
    assert isinstance(build_feature_map(model, **opts).gradients, ModelFunction)  # auto: torch.func
    gram = cn.kernel_matrix(model, x[:4], x[4:], engine="gram", **opts)
    func = cn.kernel_matrix(model, x[:4], x[4:], **opts)
    assert float((gram - func).abs().max()) <= 1e-12 * float(func.abs().max())


def test_hugging_face_model_whose_first_run_is_the_capture() -> None:
    """The vmap probe runs when the model's context is first entered; the capture's hooks must
    not record it (they did: every module was 'called 4 times' and nothing was covered)."""
    transformers = pytest.importorskip("transformers")
    from captum_ntk.engine.gram import GramFeatures

    config = transformers.BertConfig(
        vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=16, num_labels=3,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (3, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    inputs = ModelInputs.from_user({"input_ids": ids * mask, "attention_mask": mask}, "x")
    for make in (CapturedGradients, GramFeatures):
        torch.manual_seed(1)
        model = transformers.BertForSequenceClassification(config).eval().double()
        function = ModelFunction(model)  # a fresh model: its probe has not run yet
        mapped = make(function)
        mapped.plan(inputs)
        assert not [r for r in mapped.not_covered.values() if "times in one forward" in r]
        assert mapped.fallback is None or "word_embeddings" not in str(mapped.fallback.names)
    _close(mapped_gradients(inputs, config), ModelFunction(model).summed_gradient(inputs))
    # planned on one example, BERT's position embedding (its ids (1, T) are shared by the
    # block) looks per example; on a block it is handed to torch.func instead of failing
    late = CapturedGradients(ModelFunction(model))
    late.plan(inputs.slice(0, 1))
    _close(late.jacobian(inputs), ModelFunction(model).jacobian(inputs))
    assert "not batched" in late.not_covered["bert.embeddings.position_embeddings"]


def mapped_gradients(inputs: ModelInputs, config) -> list[Tensor]:
    import transformers

    torch.manual_seed(1)
    model = transformers.BertForSequenceClassification(config).eval().double()
    return CapturedGradients(ModelFunction(model)).summed_gradient(inputs)


@pytest.mark.parametrize("plus_minus", [False, True])
def test_weight_used_outside_its_module_is_not_captured(plus_minus: bool) -> None:
    """The plan's check must see the misuse even when the summed logits are identically 0."""
    torch.manual_seed(0)
    model = WeightUsedOutside(plus_minus).double().eval()
    inputs = ModelInputs.from_user(torch.randn(6, 4, dtype=torch.float64), "x")
    function = ModelFunction(model)
    captured = CapturedGradients(function)
    _close(captured.jacobian(inputs), function.jacobian(inputs))
    assert "fc1" in captured.not_covered and [r.name for r in captured.rules] == ["fc2"]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_plan_still_checks(dtype: torch.dtype) -> None:
    """The check's tolerance (1e4 eps) was 78 in bf16: every layer passed, fc1 52% off."""
    torch.manual_seed(0)
    model = WeightUsedOutside().to(dtype).eval()
    captured = CapturedGradients(ModelFunction(model))
    captured.plan(ModelInputs.from_user(torch.randn(5, 4).to(dtype), "x"))
    assert [r.name for r in captured.rules] == ["fc2"]


def _tiny_bert(seed: int = 1) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=40, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(seed)
    return transformers.BertForSequenceClassification(config).eval().double()


def test_captured_bytes_probe_the_longest_text_example() -> None:
    """Memory estimates probe the example with the most tokens (they probed the first)."""
    from captum_ntk.engine.gram.capture import captured_bytes

    function = ModelFunction(_tiny_bert())
    ids = torch.randint(5, 50, (3, 30), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 4:] = 0  # the first example has 4 tokens, the second 30
    mask[2, 10:] = 0
    inputs = ModelInputs.from_user({"input_ids": ids * mask, "attention_mask": mask}, "x")
    captured = CapturedGradients(function)
    captured.plan(inputs)
    longest = captured_bytes(function, captured.rules, inputs.slice(1, 2))
    assert longest > 2 * captured_bytes(function, captured.rules, inputs.slice(0, 1))
    assert captured_bytes(function, captured.rules, inputs) == longest
