"""The conjugate kernel's default layer: the last nn.Linear *called*, not the last registered.

References take the classifier's input from a layer named by hand (the true head), never from the
library's choice.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import reference as ref  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

import captum_ntk as cn  # noqa: E402
from captum_ntk.engine.activation_layers import last_called_linear  # noqa: E402
from captum_ntk.engine.data.inputs import ModelInputs  # noqa: E402
from captum_ntk.engine.model import ModelFunction  # noqa: E402

TOL64 = 1e-10


class HeadFirst(nn.Module):
    """Registers its head before its body, as XLM-RoBERTa / CamemBERT classifiers do."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(8, 3)
        self.body = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh())

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


class SharedHead(nn.Module):
    """The last Linear called runs twice: its input is not one embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 5)
        self.shared = nn.Linear(5, 5)

    def forward(self, x: Tensor) -> Tensor:
        return self.shared(torch.tanh(self.shared(torch.tanh(self.fc(x)))))


class FunctionalHead(nn.Module):
    """The logits come from a matrix product, not from the last Linear called."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 8)
        self.w = nn.Parameter(torch.randn(8, 3))

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(self.fc(x)) @ self.w


def _seeded(module: nn.Module) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        for p in module.parameters():
            nn.init.normal_(p)
    return module.double().eval()


def assert_rel(actual: Tensor, expected: Tensor, tol: float = TOL64) -> None:
    error = float((actual - expected).abs().max() / expected.abs().max())
    assert error <= tol, f"relative error {error:.3g}"


def test_head_registered_before_body() -> None:
    model = _seeded(HeadFirst())
    x1 = torch.randn(4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x2 = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    function = ModelFunction(model, differentiate=False)
    assert last_called_linear(function, ModelInputs.from_user(x1)) == "head"
    expected = ref.cosine_gram(
        ref.ref_features(model, x1, ["head"], True), ref.ref_features(model, x2, ["head"], True)
    )
    assert_rel(cn.kernel_matrix(model, x1, x2, kernel="ck"), expected)
    # the attribution class uses the same default
    train = TensorDataset(x2, torch.zeros(3, dtype=torch.long))
    attribution = cn.ConjugateKernelAttribution(model, train)
    assert_rel(attribution.influence((x1, torch.zeros(4, dtype=torch.long))), expected)


@pytest.mark.parametrize(
    "model, match", [(SharedHead(), "runs 2 times"), (FunctionalHead(), "not computed from it")]
)
def test_ambiguous_default_layer_is_refused(model: nn.Module, match: str) -> None:
    x = torch.randn(3, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        cn.kernel_matrix(_seeded(model), x, kernel="ck")
    # naming the layer is the way out
    assert cn.kernel_matrix(_seeded(model), x, kernel="ck", layers=["fc"]).shape == (3, 3)


class UnusedLast(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 3)
        self.extra = nn.Linear(3, 3)  # registered last, never called

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(x)


def test_model_without_called_linear_is_refused() -> None:
    x = torch.randn(2, 5, dtype=torch.float64)
    function = ModelFunction(UnusedLast().double(), differentiate=False)
    assert last_called_linear(function, ModelInputs.from_user(x)) == "fc"
    with pytest.raises(ValueError, match="none"):
        cn.kernel_matrix(nn.Bilinear(5, 5, 2).double(), (x, x), kernel="ck")


@pytest.mark.parametrize("family", ["XLMRoberta", "Camembert"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_xlm_roberta_style_classifier(family: str, side: str) -> None:
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    config = getattr(transformers, f"{family}Config")(
        vocab_size=30,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=24,
        pad_token_id=1,
        num_labels=3,
        attn_implementation="eager",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        model = getattr(transformers, f"{family}ForSequenceClassification")(config)
    model = model.eval().double()
    # registration order puts the classifier first: the old default was an encoder layer
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert linears[-1] != "classifier.out_proj"

    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(4, 30, (n,), generator=gen) for n in (4, 9, 6)]
    width = 11
    input_ids = torch.full((3, width), 1, dtype=torch.long)
    mask = torch.zeros_like(input_ids)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        input_ids[i, span], mask[i, span] = row, 1
    batch = {"input_ids": input_ids, "attention_mask": mask}

    function = ModelFunction(model, differentiate=False)
    assert last_called_linear(function, ModelInputs.from_user(batch)) == "classifier.out_proj"
    head = torch.cat(
        [
            ref.ref_features(model, {"input_ids": r[None]}, ["classifier.out_proj"], True)
            for r in rows
        ]
    )
    assert_rel(cn.kernel_matrix(model, batch, kernel="ck"), ref.cosine_gram(head, head))
