"""``memory_limit`` bounds what a kernel computation allocates, measured without a GPU.

:class:`AllocationTracker` sees every tensor created by an aten operation (a
``TorchDispatchMode``, which also sees the operations ``vmap``/``jacrev`` run) and follows its
storage until it is freed. ``kernel_matrix``'s docstring promises that, with the automatic
batch size, no tensor exceeds ``memory_limit`` and the memory allocated at once stays below
2 x ``memory_limit`` beyond the model, the inputs and the returned kernel.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import models
import pytest
import reference as ref
import torch
from test_kernels import assert_close_rel
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import captum_ntk as cn
from captum_ntk.apps.models import DigitsMLP
from captum_ntk.engine.budget import MemoryBudgetError, pass_sizes
from captum_ntk.engine.data.inputs import ModelInputs
from captum_ntk.engine.model import ModelFunction
from captum_ntk.engine.projection.dense import default_projection_dim
from captum_ntk.kernels.matrix import auto_batch_size, build_feature_map, minimum_memory_limit

MiB = 1 << 20


class AllocationTracker(TorchDispatchMode):
    """Largest storage and peak live bytes of the storages created inside the mode.

    Storages of ``existing`` tensors (model, inputs) are ignored; views count once.
    """

    def __init__(self, existing: Iterable[Tensor] = ()) -> None:
        super().__init__()
        self.ignore = {t.untyped_storage().data_ptr() for t in existing}
        self.sizes: dict[int, int] = {}
        self.live = self.peak = self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                self._record(t.untyped_storage())
        return out

    def _record(self, storage: torch.UntypedStorage) -> None:
        ptr, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or ptr in self.ignore or ptr in self.sizes:
            return
        self.sizes[ptr] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        self.largest = max(self.largest, size)
        weakref.finalize(storage, self._free, ptr)

    def _free(self, ptr: int) -> None:
        self.live -= self.sizes.pop(ptr, 0)


def test_tracker_measures_live_bytes() -> None:
    with AllocationTracker() as tracker:
        a = torch.ones(1000, 1000)  # 4 MB
        b = a @ a  # 4 MB
        del a
        c = torch.ones(2000, 1000)  # 8 MB
    assert tracker.largest == 8_000_000
    assert tracker.peak == 12_000_000  # b and c; a was freed before c
    del b, c


def many_class_model() -> tuple[nn.Module, Tensor, Tensor]:
    """200 classes, P = 3480: one example's Jacobian is 2.78 MB of float32."""
    model = models.make_mlp(d_in=4, d_hidden=16, d_out=200, dtype=torch.float32)
    return (
        model,
        models.mlp_inputs(4, d_in=4, dtype=torch.float32),
        models.mlp_inputs(2, seed=5, d_in=4, dtype=torch.float32),
    )


def wide_model() -> tuple[nn.Module, Tensor, Tensor]:
    """A 4096-unit hidden layer: 256 examples' activations are 8 MB of float64."""
    model = models.make_mlp(d_in=4, d_hidden=4096, d_out=3)
    return model, models.mlp_inputs(300, d_in=4), models.mlp_inputs(20, seed=5, d_in=4)


def patch_heavy_model() -> tuple[nn.Module, Tensor, Tensor]:
    """A 3x3 conv from 4 to 2 channels on 48 x 48 images: per example its unfolded input
    (2,304 positions x 36 values, 332 KB in float32) is 1,150 times its gradient (74 numbers)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(4, 2, 3, padding=1), nn.Tanh(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()  # fmt: skip
    return model, torch.randn(24, 4, 48, 48), torch.randn(6, 4, 48, 48)


BOUNDED = [
    # (model, kernel, options, memory_limit); the old code broke each bound for proj_trntk
    # (a 2.78 MB Jacobian per example) and ck on the wide model (blocks of 256 examples)
    ("many_class", "proj_trntk", {"projection_dim": 16}, 2 * MiB),
    ("many_class", "proj_trntk", {"projection_dim": 16}, 1 * MiB),  # matrix not cached
    ("many_class", "proj_trntk", {"projection_dim": 16, "projection": "gaussian"}, 1 * MiB),
    ("many_class", "trntk", {"engine": "jacobian"}, 12 * MiB),
    ("many_class", "entk", {"engine": "jacobian"}, 12 * MiB),
    ("many_class", "pntk", {"engine": "jacobian"}, 1 * MiB),
    ("many_class", "proj_pntk", {"projection_dim": 64}, 1 * MiB),
    ("wide", "ck", {}, 4 * MiB),
    ("wide", "embedding", {}, 4 * MiB),
    ("patch_heavy", "proj_trntk", {"projection_dim": 16, "engine": "gram"}, 2 * MiB),
    (
        "patch_heavy",
        "proj_pntk",
        {"projection_dim": 16, "projection": "sjlt", "engine": "gram"},
        2 * MiB,
    ),
    ("patch_heavy", "proj_trntk", {"projection_dim": 16, "projection": "kronecker"}, 2 * MiB),
    ("patch_heavy", "trntk", {}, 2 * MiB),
    ("text", "trntk", {}, 3 * MiB),
    ("text", "proj_pntk", {"projection_dim": 64, "engine": "gram"}, 3 * MiB),
    ("text", "proj_trntk", {"projection_dim": 64, "projection": "kronecker"}, 3 * MiB),
]


def text_model() -> tuple[nn.Module, dict, dict]:
    """A small random BERT on padded sentences of 3 to 60 tokens (the longest not first)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=3,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config).eval()
    gen = torch.Generator().manual_seed(0)

    def batch(n: int) -> dict:
        ids = torch.randint(5, 100, (n, 60), generator=gen)
        lengths = torch.randint(3, 61, (n,), generator=gen)
        lengths[n // 2] = 60
        mask = (torch.arange(60) < lengths[:, None]).long()
        return {"input_ids": ids * mask, "attention_mask": mask}

    return model, batch(24), batch(6)


CASE_MODELS = {
    "many_class": many_class_model,
    "wide": wide_model,
    "patch_heavy": patch_heavy_model,
    "text": text_model,
}


@pytest.mark.parametrize(("case", "kernel", "options", "memory_limit"), BOUNDED)
def test_memory_limit_bounds_allocations(
    case: str, kernel: str, options: dict, memory_limit: int
) -> None:
    model, x1, x2 = CASE_MODELS[case]()
    inputs = [t for x in (x1, x2) for t in (x.values() if isinstance(x, dict) else [x])]
    existing = list(model.parameters()) + list(model.buffers()) + inputs
    with AllocationTracker(existing) as tracker:
        result = cn.kernel_matrix(model, x1, x2, kernel, memory_limit=memory_limit, **options)
    output = result.numel() * result.element_size()
    assert tracker.largest <= memory_limit, (tracker.largest, memory_limit)
    assert tracker.peak <= 2 * memory_limit + output, (tracker.peak / memory_limit, output)
    # the same numbers as without a tight budget (up to float32 rounding)
    unbounded = cn.kernel_matrix(model, x1, x2, kernel, **options)
    assert_close_rel(result, unbounded, 1e-5)


def test_classes_are_chunked_and_match_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    model = models.make_mlp(d_in=3, d_hidden=5, d_out=30)  # float64, P = 200, C = 30
    x1, x2 = models.mlp_inputs(4, d_in=3), models.mlp_inputs(3, seed=7, d_in=3)
    from captum_ntk.engine.gram.gradients import CapturedGradients

    calls: list[tuple[int, tuple[int, int] | None]] = []
    for owner in (ModelFunction, CapturedGradients):  # torch.func, and the capture (proj_*)

        def recording(self, inputs, classes=None, jacobian=owner.jacobian):  # noqa: ANN001, ANN202
            calls.append((inputs.num_examples, classes))
            return jacobian(self, inputs, classes)

        monkeypatch.setattr(owner, "jacobian", recording)
    names = ref.library_parameters(model)
    g1, g2 = ref.ref_gradients(model, x1, names), ref.ref_gradients(model, x2, names)
    for kernel, options in [
        ("trntk", {"engine": "jacobian"}),
        ("entk", {"engine": "jacobian"}),
        ("proj_trntk", {"projection_dim": 50}),
        ("proj_trntk", {"projection_dim": 50, "engine": "gram"}),
    ]:
        fmap = build_feature_map(model, kernel, **options)
        limit = minimum_memory_limit(fmap, ModelInputs.from_user(x1))
        calls.clear()
        result = cn.kernel_matrix(model, x1, x2, kernel, memory_limit=limit, **options)
        # each call asked for one example and fewer than the 30 classes
        assert calls and all(n == 1 and c is not None and c[1] - c[0] < 30 for n, c in calls)
        matrix = cn.projection_matrix(200, 50, seed=0) if kernel == "proj_trntk" else None
        assert_close_rel(result, ref.kernel_from_grads(g1, g2, kernel, matrix))


def test_pass_sizes_prefer_whole_classes() -> None:
    # 100 bytes of activations, 1000-byte rows, 10 classes: one example takes 11,100 bytes
    assert pass_sizes(8, 10, 1000, 100, 4 * 11_100 * 3) == (3, 10)
    assert pass_sizes(2, 10, 1000, 100, 4 * 11_100 * 3) == (2, 10)
    assert pass_sizes(8, 10, 1000, 100, 4 * 5_000) == (1, 4)  # (5000 - 100) // 1100
    assert pass_sizes(8, 10, 1000, 100, 4) == (1, 1)


def test_too_small_memory_limit_raises_before_any_work() -> None:
    model = models.make_mlp(d_in=4, d_hidden=16, d_out=10, dtype=torch.float32)  # P = 250
    x1 = models.mlp_inputs(2, d_in=4, dtype=torch.float32)
    fmap = build_feature_map(model, "proj_trntk", projection_dim=16)
    smallest = minimum_memory_limit(fmap, ModelInputs.from_user(x1))
    # one example and one class: a gradient row (250 float32) and autograd intermediates
    assert smallest >= 4 * 250 * 4
    with pytest.raises(MemoryBudgetError, match=f"memory_limit >= {smallest:,}"):
        cn.kernel_matrix(
            model, x1, kernel="proj_trntk", projection_dim=16, memory_limit=smallest - 1
        )
    with pytest.raises(ValueError, match="too small"):
        cn.kernel_matrix(model, x1, kernel="proj_trntk", projection_dim=16, memory_limit=1)
    result = cn.kernel_matrix(
        model, x1, kernel="proj_trntk", projection_dim=16, memory_limit=smallest
    )
    assert_close_rel(
        result, cn.kernel_matrix(model, x1, kernel="proj_trntk", projection_dim=16), 1e-5
    )


def test_activation_kernel_batch_follows_activation_bytes() -> None:
    model, x1, _ = wide_model()
    inputs = ModelInputs.from_user(x1)
    fmap = build_feature_map(model, "ck", memory_limit=4 * MiB)
    # a 4096-float64 embedding and the forward pass's activations per example
    batch = auto_batch_size(fmap, inputs, 4 * MiB)
    assert 1 <= batch < 256
    assert batch * 4096 * 8 <= MiB
    assert auto_batch_size(fmap, inputs, 1 << 30) == 256


def test_projection_cache_counts_against_the_limit() -> None:
    model, x1, _ = many_class_model()
    # K x P float32 = 64 x 3480 x 4 = 890 KB: cached with a budget of 8 MB, not with 4 MB
    cached = build_feature_map(model, "proj_pntk", projection_dim=64, memory_limit=8 * MiB)
    streamed = build_feature_map(model, "proj_pntk", projection_dim=64, memory_limit=4 * MiB)
    assert cached.projection._cache is not None
    assert streamed.projection._cache is None


# ------------------------------------------------------------------------------------------------
# the default projection dimension
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("num_params", "expected"),
    [(2, 1), (7, 1), (8, 2), (89, 16), (8970, 2048), (65535, 8192), (65536, 10240), (10**8, 10240)],
)
def test_default_projection_dim_rule(num_params: int, expected: int) -> None:
    assert default_projection_dim(num_params) == expected
    assert default_projection_dim(num_params) < num_params


@pytest.mark.parametrize("kernel", ["proj_trntk", "proj_pntk"])
def test_default_projection_dim_works_on_digits_mlp(kernel: str) -> None:
    model = DigitsMLP(hidden=64, num_outputs=10, seed=0).double().eval()
    assert sum(p.numel() for p in model.parameters()) == 8970
    x = torch.randn(5, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    result = cn.kernel_matrix(model, x, kernel=kernel)
    assert torch.equal(result, cn.kernel_matrix(model, x, kernel=kernel, projection_dim=2048))
    names = ref.library_parameters(model)
    grads = ref.ref_gradients(model, x, names)
    matrix = cn.projection_matrix(8970, 2048, seed=0)
    assert_close_rel(result, ref.kernel_from_grads(grads, grads, kernel, matrix))
    with pytest.raises(ValueError, match="projection_dim"):
        cn.kernel_matrix(model, x, kernel=kernel, projection_dim=10240)
