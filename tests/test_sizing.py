"""Sizing decisions are taken on the longest example, not on the first ones (issue 17, item 7).

* Whether all column features are kept follows the bytes actually computed: a long example late
  in the data cannot push the kept features past their share of ``memory_limit``.
* The Gram engine plans (and the Kronecker projection counts positions) on the first examples
  and the longest one.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

import captum_ntk as cn
from captum_ntk.engine.budget import FEATURE_SHARE
from captum_ntk.engine.data.inputs import ModelInputs
from captum_ntk.engine.feature_blocks import ParamBlocks
from captum_ntk.engine.features import FeatureMap, _layer_inner
from captum_ntk.engine.gram import GramFeatures
from captum_ntk.engine.model import ModelFunction
from captum_ntk.kernels import build_feature_map
from captum_ntk.kernels.assembly import FeatureCache, assemble_kernel


class GrowingFeatures(FeatureMap):
    """Features (B, T, D) with T the block's largest ``length`` (column 0): zero beyond
    position 0, so the kernel is x x^T whatever T, but later blocks hold many more bytes."""

    uses_gradients = False

    def __init__(self) -> None:  # no model: only the assembly is under test
        pass

    def __call__(self, inputs: ModelInputs) -> ParamBlocks:
        x = inputs.args[0]
        t = int(x[:, 0].max())
        out = torch.zeros(x.shape[0], t, x.shape[1], dtype=x.dtype)
        out[:, 0] = x
        return ParamBlocks([out])

    def inner(self, f1: ParamBlocks, f2: ParamBlocks) -> Tensor:
        return _layer_inner(f1.parts[0], f2.parts[0])

    def sq_norms(self, f: ParamBlocks) -> Tensor:
        return f.parts[0].pow(2).sum(dim=(1, 2))


def test_kept_columns_stay_within_their_share_when_later_blocks_grow() -> None:
    n, d = 12, 8
    x = torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[:, 0] = torch.tensor([1.0] * 9 + [400.0] * 3)  # the last block is 400 positions long
    memory_limit = 20_000 * FEATURE_SHARE
    budget = memory_limit // FEATURE_SHARE
    fmap = GrowingFeatures()
    rows = FeatureCache(fmap, ModelInputs.from_user(x[:4]), 2)
    cols = FeatureCache(fmap, ModelInputs.from_user(x), 3)
    held = []
    original = cols._hold

    def spy(start, feats):
        original(start, feats)
        held.append(cols.kept_bytes)

    cols._hold = spy
    kernel = assemble_kernel(rows, cols, normalize=False, memory_limit=memory_limit)
    # first-block extrapolation (3 x 64 bytes x 12 / 3) would have kept everything: 77 kB
    assert max(held) <= budget
    assert cols.keep is False and not cols.kept
    torch.testing.assert_close(kernel, x[:4] @ x.T, rtol=1e-12, atol=0)


def test_kept_columns_are_reused_when_they_fit() -> None:
    x = torch.randn(9, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x[:, 0] = 1.0
    fmap = GrowingFeatures()
    cols = FeatureCache(fmap, ModelInputs.from_user(x), 3)
    rows = FeatureCache(fmap, ModelInputs.from_user(x), 1)
    assemble_kernel(rows, cols, normalize=False, memory_limit=4 * 3 * 4 * 8 * FEATURE_SHARE)
    assert cols.keep and len(cols.kept) == 3


def _padded_tokens(lengths: list[int], width: int = 9) -> dict[str, Tensor]:
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    ids = torch.randint(1, 13, (len(lengths), width), generator=torch.Generator().manual_seed(2))
    return {"tokens": ids * mask, "mask": mask}


def test_plan_examples_include_the_longest() -> None:
    inputs = ModelInputs.from_user({"x": torch.zeros(7, 3), "attention_mask": torch.tensor(
        [[1, 0, 0]] * 5 + [[1, 1, 1]] + [[1, 1, 0]]
    )})  # fmt: skip
    chosen = ModelFunction.plan_examples(inputs, 4)
    assert chosen.kwargs["attention_mask"].sum(1).tolist() == [1, 1, 1, 1, 3]
    inputs = ModelInputs.from_user({"x": torch.zeros(3, 3), "attention_mask": torch.ones(3, 3)})
    assert len(ModelFunction.plan_examples(inputs, 4)) == 3


class MaskedEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(13, 6, padding_idx=0)
        self.mix = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, tokens: Tensor, attention_mask: Tensor) -> Tensor:
        m = attention_mask.unsqueeze(-1).to(torch.float64)
        h = torch.tanh(self.mix(self.embed(tokens))) * m
        return self.head(h.sum(1) / m.sum(1))


def test_gram_plan_sees_the_longest_example(monkeypatch) -> None:
    model = MaskedEncoder().double().eval()
    lengths = [1, 1, 2, 1, 1, 9, 2]
    batch = _padded_tokens(lengths)
    inputs = {"tokens": batch["tokens"], "attention_mask": batch["mask"].long()}
    seen = []
    original = GramFeatures.plan

    def spy(self, block):
        seen.append(block.kwargs["attention_mask"].sum(1).tolist())
        return original(self, block)

    monkeypatch.setattr(GramFeatures, "plan", spy)
    fmap = build_feature_map(model, "trntk0", engine="gram")
    fmap(ModelInputs.from_user(inputs))
    assert seen and 9 in seen[0]
    k = cn.kernel_matrix(model, inputs, kernel="trntk0", engine="gram", batch_size=3)
    expected = cn.kernel_matrix(model, inputs, kernel="trntk0", engine="jacobian")
    torch.testing.assert_close(k, expected, rtol=1e-10, atol=0)
