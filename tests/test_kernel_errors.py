"""Bad inputs to ``cn.kernel_matrix`` fail loudly; degenerate inputs give 0, never NaN.

Error messages are matched loosely (key phrases, case-insensitive): the phrases relied on are
listed next to each ``pytest.raises``.
"""

from __future__ import annotations

import re

import models
import pytest
import reference as ref
import torch
from test_kernels import PROJ_DIM, _assert_unchanged, _snapshot, assert_close_rel, compute

import captum_ntk as cn

BAD_INPUT = (ValueError, RuntimeError, TypeError)


# ------------------------------------------------------------------------------------------------
# train-mode BatchNorm and active Dropout
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", ["trntk", "entk", "proj_pntk", "ck", "embedding"])
def test_batchnorm_in_train_mode_raises(kernel: str) -> None:
    model = models.make_cnn(train=True)
    x = models.cnn_inputs(4)
    before = _snapshot(model)
    with pytest.raises((ValueError, RuntimeError), match=r"(?i)batch ?norm"):
        compute(model, x, None, kernel)
    _assert_unchanged(model, before)  # running statistics untouched


@pytest.mark.parametrize("kernel", ["trntk", "entk", "proj_pntk", "ck", "embedding"])
def test_active_dropout_raises(kernel: str) -> None:
    model = models.make_dropout_mlp()
    x = models.mlp_inputs(4)
    with pytest.raises((ValueError, RuntimeError), match=r"(?i)dropout"):
        compute(model, x, None, kernel)


@pytest.mark.parametrize("kernel", ["entk", "trntk", "pntk0", "proj_trntk", "ck", "embedding"])
def test_eval_mode_flag_batchnorm(kernel: str) -> None:
    model = models.make_cnn(train=True)
    x1, x2 = models.cnn_inputs(4), models.cnn_inputs(3, seed=12)
    before = _snapshot(model)
    result = compute(model, x1, x2, kernel, eval_mode=True)
    _assert_unchanged(model, before)  # still in train mode, running stats untouched
    assert model.training and model.bn1.training
    model.eval()
    assert_close_rel(result, compute(model, x1, x2, kernel))
    assert_close_rel(result, ref.ref_kernel(model, x1, x2, kernel, projection_dim=PROJ_DIM))


@pytest.mark.parametrize("kernel", ["trntk", "pntk", "ck"])
def test_eval_mode_flag_dropout(kernel: str) -> None:
    model = models.make_dropout_mlp()
    model.fc2.eval()  # mixed flags must be restored exactly
    x1, x2 = models.mlp_inputs(4), models.mlp_inputs(3, seed=11)
    before = _snapshot(model)
    result = compute(model, x1, x2, kernel, eval_mode=True)
    _assert_unchanged(model, before)
    assert model.training and model.drop.training and not model.fc2.training
    model.eval()
    assert_close_rel(result, ref.ref_kernel(model, x1, x2, kernel))


# ------------------------------------------------------------------------------------------------
# mismatched, empty and malformed inputs
# ------------------------------------------------------------------------------------------------
def test_mismatched_per_example_shapes() -> None:
    model = models.make_mlp()
    x1 = models.mlp_inputs(4)
    x2 = torch.randn(3, 5, dtype=torch.float64)
    with pytest.raises(BAD_INPUT, match=r"(?i)shape"):
        cn.kernel_matrix(model, x1, x2, kernel="trntk")


def test_mismatched_per_example_shapes_cnn() -> None:
    model = models.make_cnn()
    x1 = models.cnn_inputs(4)
    x2 = torch.randn(3, 1, 8, 8, dtype=torch.float64)  # the model would accept it, but not the pair
    with pytest.raises(BAD_INPUT, match=r"(?i)shape"):
        cn.kernel_matrix(model, x1, x2, kernel="trntk")


def test_mismatched_dtypes() -> None:
    model = models.make_mlp()
    x1 = models.mlp_inputs(4)
    x2 = models.mlp_inputs(3, dtype=torch.float32)
    with pytest.raises(BAD_INPUT, match=r"(?i)dtype"):
        cn.kernel_matrix(model, x1, x2, kernel="trntk")


def test_mismatched_structure_positional_vs_keyword() -> None:
    # (a Tensor x and a 1-tuple (x,) are the same call, model(x), so that pair may be accepted)
    model = models.make_mlp()
    x1 = models.mlp_inputs(4)
    with pytest.raises(BAD_INPUT, match=r"(?i)structure|form|type|tuple|tensor|mapping|keyword"):
        cn.kernel_matrix(model, x1, {"x": models.mlp_inputs(3)}, kernel="trntk")


def test_tensor_and_one_tuple_are_the_same_call() -> None:
    model = models.make_mlp()
    x1, x2 = models.mlp_inputs(4), models.mlp_inputs(3, seed=11)
    assert_close_rel(
        cn.kernel_matrix(model, (x1,), x2, kernel="trntk"),
        cn.kernel_matrix(model, x1, x2, kernel="trntk"),
        1e-12,
    )


def test_mismatched_structure_mapping_keys() -> None:
    model = models.make_keyword()
    x1 = models.keyword_inputs(4)
    x2 = {"x": models.keyword_inputs(3)["x"], "other": models.keyword_inputs(3)["mask"]}
    with pytest.raises(BAD_INPUT, match=r"(?i)key|structure|mask|other"):
        cn.kernel_matrix(model, x1, x2, kernel="trntk")


def test_mismatched_tuple_length() -> None:
    model = models.make_two_input()
    x1 = models.two_input_inputs(4)
    x2 = models.two_input_inputs(3)[:1]
    with pytest.raises(BAD_INPUT, match=r"(?i)structure|number|length|positional|tensors"):
        cn.kernel_matrix(model, x1, x2, kernel="trntk")


@pytest.mark.parametrize("which", ["inputs1", "inputs2"])
def test_empty_inputs(which: str) -> None:
    model = models.make_mlp()
    x = models.mlp_inputs(4)
    x1, x2 = (x[:0], x) if which == "inputs1" else (x, x[:0])
    with pytest.raises(BAD_INPUT, match=r"(?i)empty|no examples|0 examples|zero examples|at least"):
        cn.kernel_matrix(model, x1, x2, kernel="trntk")


def test_tuple_inputs_with_different_batch_sizes() -> None:
    model = models.make_two_input()
    x, z = models.two_input_inputs(4)
    with pytest.raises(BAD_INPUT, match=r"(?i)size|examples|dimension 0|batch"):
        cn.kernel_matrix(model, (x, z[:3]), kernel="trntk")


def test_unknown_kernel_lists_valid_ones() -> None:
    model = models.make_mlp()
    with pytest.raises(ValueError, match=r"(?i)kernel") as info:
        cn.kernel_matrix(model, models.mlp_inputs(3), kernel="ntk_of_doom")
    message = str(info.value)
    for name in ref.ALL_KERNELS:
        assert name in message, f"{name!r} not listed in: {message}"


@pytest.mark.parametrize("kernel", ["trntk", "proj_trntk", "ck", "embedding"])
def test_unknown_layer_lists_valid_names(kernel: str) -> None:
    model = models.make_cnn()
    layers = ["nope"] if kernel == "ck" else ["conv1", "nope"]  # ck takes one layer
    with pytest.raises(ValueError, match=r"(?i)layer|module") as info:
        compute(model, models.cnn_inputs(3), None, kernel, layers=layers)
    message = str(info.value)
    assert "nope" in message
    assert "conv1" in message and "fc" in message, message


def test_select_parameters_unknown_layer() -> None:
    with pytest.raises(ValueError, match=r"(?i)fc1"):
        cn.select_parameters(models.make_mlp(), layers=["fc3"])


@pytest.mark.parametrize("kernel", ["proj_trntk", "proj_pntk"])
def test_projection_dim_not_smaller_than_p(kernel: str) -> None:
    model = models.make_mlp()  # P = 89
    x = models.mlp_inputs(3)
    for dim in (89, 500):
        with pytest.raises(ValueError, match=r"(?i)projection_dim|exact"):
            cn.kernel_matrix(model, x, kernel=kernel, projection_dim=dim)
    cn.kernel_matrix(model, x, kernel=kernel, projection_dim=88)  # P - 1 is fine


def test_unknown_projection_kind() -> None:
    model = models.make_mlp()
    with pytest.raises(ValueError, match=r"(?i)rademacher|gaussian|projection"):
        cn.kernel_matrix(
            model, models.mlp_inputs(3), kernel="proj_trntk", projection_dim=8, projection="sparse"
        )


# ------------------------------------------------------------------------------------------------
# zero-norm rows: 0, a warning, never NaN
# ------------------------------------------------------------------------------------------------
def _inputs_with_zero_row() -> tuple[torch.Tensor, torch.Tensor]:
    x1 = models.mlp_inputs(4, seed=31)
    x1[1] = 0.0
    x2 = models.mlp_inputs(3, seed=32)
    x2[2] = 0.0
    return x1, x2


def test_zero_gradient_model_is_really_zero() -> None:
    """Sanity check of the test model: every gradient and hidden feature vanishes at x = 0."""
    model = models.make_relu_gate()
    x1, _ = _inputs_with_zero_row()
    grads = ref.ref_gradients(model, x1, list(ref.ref_select_parameters(model)))
    assert grads[1].abs().max() == 0 and grads[0].abs().max() > 0
    feats = ref.ref_features(model, x1, ["fc2"], use_input=True)
    assert feats[1].abs().max() == 0 and feats[0].abs().max() > 0


@pytest.mark.parametrize("kernel", ref.NORMALISED_KERNELS)
def test_zero_norm_rows_give_zero(kernel: str) -> None:
    model = models.make_relu_gate()
    x1, x2 = _inputs_with_zero_row()
    for inputs2 in (x2, None):
        with pytest.warns(Warning):
            result = compute(model, x1, inputs2, kernel, projection_dim=16)
        assert torch.isfinite(result).all()
        assert (result[1, :] == 0).all() and (result[:, 2 if inputs2 is not None else 1] == 0).all()
        expected = ref.ref_kernel(model, x1, inputs2, kernel, projection_dim=16)
        assert_close_rel(result, expected)
        if inputs2 is None:
            diag = torch.diagonal(result)
            assert diag[1] == 0 and torch.allclose(diag[[0, 2, 3]], torch.ones(3, dtype=diag.dtype))


@pytest.mark.parametrize("kernel", ["entk", "trntk0", "pntk0"])
def test_zero_gradients_unnormalised_kernels(kernel: str) -> None:
    model = models.make_relu_gate()
    x1, x2 = _inputs_with_zero_row()
    result = compute(model, x1, x2, kernel)
    assert torch.isfinite(result).all()
    assert (result[1] == 0).all() and (result[:, 2] == 0).all()
    assert_close_rel(result, ref.ref_kernel(model, x1, x2, kernel))


# ------------------------------------------------------------------------------------------------
# non-finite gradients name the example
# ------------------------------------------------------------------------------------------------
def test_sqrt_model_has_nan_gradient_only_at_zero() -> None:
    model = models.make_sqrt_model()
    x = models.mlp_inputs(4, seed=41)
    x[2] = 0.0
    out = model(x)
    assert torch.isfinite(out).all()
    grads = ref.ref_gradients(model, x, list(ref.ref_select_parameters(model)))
    assert not torch.isfinite(grads[2]).all()
    assert torch.isfinite(grads[[0, 1, 3]]).all()


@pytest.mark.parametrize("kernel", ["entk", "trntk0", "trntk", "pntk", "proj_trntk", "proj_pntk"])
@pytest.mark.parametrize("where", ["inputs1", "inputs2"])
def test_non_finite_gradient_names_example(kernel: str, where: str) -> None:
    model = models.make_sqrt_model()  # P = 22
    bad = models.mlp_inputs(4, seed=41)
    bad[2] = 0.0
    good = models.mlp_inputs(3, seed=42)
    x1, x2 = (bad, good) if where == "inputs1" else (good, bad)
    if where == "inputs2":
        x2 = torch.cat([good, bad])  # example 5 of inputs2 is the bad one
    with pytest.raises((ValueError, RuntimeError), match=r"(?i)finite|nan|inf") as info:
        compute(model, x1, x2, kernel, projection_dim=8)
    index = "2" if where == "inputs1" else "5"
    assert re.search(rf"\b{index}\b", str(info.value)), str(info.value)


def test_batchnorm_without_running_stats_is_refused() -> None:
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 3),
        torch.nn.BatchNorm1d(3, track_running_stats=False),
        torch.nn.Linear(3, 2),
    ).eval()
    with pytest.raises(RuntimeError, match="running statistics"):
        cn.kernel_matrix(model, torch.randn(5, 4), kernel="trntk")
    with pytest.raises(RuntimeError, match="running statistics"):
        cn.kernel_matrix(model, torch.randn(5, 4), kernel="ck", eval_mode=True)


def test_meta_device_model_is_refused() -> None:
    model = torch.nn.Linear(5, 3, device="meta")
    with pytest.raises(ValueError, match="meta"):
        cn.kernel_matrix(model, torch.randn(4, 5))


def test_keyword_integer_inputs_without_mask_must_match_in_length() -> None:
    class Bag(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.EmbeddingBag(10, 4)
            self.fc = torch.nn.Linear(4, 2)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.fc(self.emb(ids))

    model = Bag().double()
    with pytest.raises(ValueError, match="shape"):
        cn.kernel_matrix(
            model, {"ids": torch.randint(0, 10, (3, 3))}, {"ids": torch.randint(0, 10, (2, 5))}
        )


def test_symmetric_kernel_is_exactly_symmetric() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, 3))
    x = torch.randn(11, 6)
    for kernel in ("trntk0", "pntk", "ck"):
        k = cn.kernel_matrix(model, x, kernel=kernel, batch_size=4)
        assert torch.equal(k, k.T)
    e = cn.kernel_matrix(model, x, kernel="entk", batch_size=4)
    assert torch.equal(e, e.permute(1, 0, 3, 2))


def test_half_precision_projection_accumulates_in_float32() -> None:
    from captum_ntk.engine.projection.dense import RandomProjection, projection_matrix

    torch.manual_seed(0)
    g = torch.randn(4, 200_000)
    proj = RandomProjection(200_000, 512, seed=1, dtype=torch.bfloat16, cache_bytes=0)
    got = proj(g.bfloat16()).double()
    ref = g.bfloat16().double() @ projection_matrix(200_000, 512, seed=1).T / 512**0.5
    assert float((got - ref).norm() / ref.norm()) < 5e-3


def test_registry_carries_what_the_engines_need():
    """Issue 17 (8): the Gram engine's kernels and the summed-gradient flag come from the
    registry (one declaration per kernel), not from literal name lists."""
    from captum_ntk.kernels.matrix import GRAM_KERNELS
    from captum_ntk.kernels.registry import KERNELS

    assert GRAM_KERNELS == ("entk", "trntk", "trntk0", "pntk", "pntk0")
    assert {n for n, s in KERNELS.items() if s.summed} == {"pntk", "pntk0", "proj_pntk"}
    assert not any(s.exact_gradients for s in KERNELS.values() if s.projected)
