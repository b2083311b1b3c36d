"""``cn.kernel_matrix`` against the naive float64 references in ``tests/reference.py``."""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import cache

import models
import pytest
import reference as ref
import torch
from torch import Tensor, nn

import captum_ntk as cn
from captum_ntk.engine.data.inputs import ModelInputs
from captum_ntk.kernels.matrix import build_feature_map, minimum_memory_limit

PROJ_DIM = 32  # < P of every small model (MLP 89, CNN 148, transformer 715)


def assert_close_rel(actual: Tensor, expected: Tensor, tol: float = 1e-10) -> None:
    """max|A - B| / max|B| <= tol (shapes must agree)."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    actual = actual.detach().to("cpu", torch.float64)
    expected = expected.detach().to("cpu", torch.float64)
    assert torch.isfinite(actual).all(), "non-finite entries in the kernel"
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    rel = err / scale if scale > 0 else err
    assert rel <= tol, f"relative error {rel:.3e} > {tol:.1e} (max abs err {err:.3e})"


# ------------------------------------------------------------------------------------------------
# the three main models and cached reference gradients
# ------------------------------------------------------------------------------------------------
CASE_BUILDERS: dict[str, Callable[[], tuple[nn.Module, Tensor, Tensor]]] = {
    "mlp": lambda: (models.make_mlp(), models.mlp_inputs(5, 1), models.mlp_inputs(3, 11)),
    "cnn": lambda: (models.make_cnn(), models.cnn_inputs(5, 2), models.cnn_inputs(3, 12)),
    "transformer": lambda: (
        models.make_transformer(),
        models.transformer_inputs(4, 3),
        models.transformer_inputs(3, 13),
    ),
}
CASES = tuple(CASE_BUILDERS)


def make_case(name: str) -> tuple[nn.Module, Tensor, Tensor]:
    return CASE_BUILDERS[name]()


@cache
def case_gradients(name: str) -> tuple[Tensor, Tensor]:
    """Reference gradients (N, C, P) of x1 and x2, in ``cn.select_parameters`` order."""
    model, x1, x2 = make_case(name)
    names = ref.library_parameters(model)
    return ref.ref_gradients(model, x1, names), ref.ref_gradients(model, x2, names)


@cache
def case_features(name: str, kernel: str) -> tuple[Tensor, Tensor]:
    model, x1, x2 = make_case(name)
    if kernel == "ck":
        layers, use_input = [ref.last_linear_name(model)], True
    else:
        layers, use_input = ref.default_embedding_layers(model, x1), False
    return (
        ref.ref_features(model, x1, layers, use_input),
        ref.ref_features(model, x2, layers, use_input),
    )


def reference_for(name: str, kernel: str, pair: str) -> Tensor:
    if kernel in ref.FEATURE_KERNELS:
        f1, f2 = case_features(name, kernel)
        return ref.cosine_gram(f1, f1 if pair == "self" else f2)
    g1, g2 = case_gradients(name)
    matrix = None
    if kernel in ref.PROJECTED_KERNELS:
        matrix = cn.projection_matrix(g1.shape[-1], PROJ_DIM, kind="rademacher", seed=0)
    return ref.kernel_from_grads(g1, g1 if pair == "self" else g2, kernel, matrix)


def compute(model: nn.Module, x1, x2, kernel: str, **kwargs) -> Tensor:
    if kernel in ref.PROJECTED_KERNELS:
        kwargs.setdefault("projection_dim", PROJ_DIM)
    return cn.kernel_matrix(model, x1, x2, kernel=kernel, **kwargs)


def smallest_memory_limit(model: nn.Module, x, kernel: str, **kwargs) -> int:
    """The smallest ``memory_limit`` ``kernel_matrix`` accepts for ``model`` on inputs like ``x``."""
    if kernel in ref.PROJECTED_KERNELS:
        kwargs.setdefault("projection_dim", PROJ_DIM)
    fmap = build_feature_map(model, kernel, **kwargs)
    return minimum_memory_limit(fmap, ModelInputs.from_user(x))


def expected_shape(kernel: str, n1: int, n2: int, c: int) -> tuple[int, ...]:
    return (n1, n2, c, c) if kernel == "entk" else (n1, n2)


def psd_check(matrix: Tensor) -> None:
    sym = (matrix + matrix.T) / 2
    eig = torch.linalg.eigvalsh(sym.to(torch.float64))
    assert eig.min().item() >= -1e-10 * eig.abs().max().item(), eig


# ------------------------------------------------------------------------------------------------
# public helpers: select_parameters, projection_matrix
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "builder", [models.make_mlp, models.make_cnn, models.make_transformer, models.make_tied]
)
def test_select_parameters_default(builder: Callable[[], nn.Module]) -> None:
    model = builder()
    first = next(iter(model.parameters()))
    first.requires_grad_(False)  # frozen parameters are not selected by default
    selected = cn.select_parameters(model)
    expected = ref.ref_select_parameters(model)
    assert list(selected) == list(expected)
    assert all(selected[n] is expected[n] for n in expected)
    assert all(p is not first for p in selected.values())


def test_select_parameters_tied_once() -> None:
    model = models.make_tied()
    selected = cn.select_parameters(model)
    assert len({id(p) for p in selected.values()}) == len(selected)
    assert sum(p.numel() for p in selected.values()) == 6 * 4 + 4 * 6 + 6


@pytest.mark.parametrize(
    "builder, layers",
    [
        (models.make_mlp, ["fc2"]),
        (models.make_cnn, ["fc", "conv1"]),
        (models.make_transformer, ["encoder.linear2", "head"]),
        (models.make_transformer, ["encoder"]),
    ],
)
def test_select_parameters_layers(builder: Callable[[], nn.Module], layers: list[str]) -> None:
    model = builder()
    selected = cn.select_parameters(model, layers=layers)
    expected = ref.ref_select_parameters(model, layers)
    assert set(selected) == set(expected)
    assert all(selected[n] is expected[n] for n in expected)


def test_projection_matrix_contents() -> None:
    rad = cn.projection_matrix(300, 40, kind="rademacher", seed=3)
    assert rad.shape == (40, 300) and rad.dtype == torch.float64
    assert set(rad.unique().tolist()) == {-1.0, 1.0}
    assert abs(rad.mean().item()) < 0.05
    gauss = cn.projection_matrix(300, 40, kind="gaussian", seed=3)
    assert gauss.shape == (40, 300)
    assert abs(gauss.mean().item()) < 0.05 and 0.9 < gauss.var().item() < 1.1
    assert torch.equal(gauss, cn.projection_matrix(300, 40, kind="gaussian", seed=3))
    assert not torch.allclose(gauss, cn.projection_matrix(300, 40, kind="gaussian", seed=4))
    assert not torch.equal(rad, cn.projection_matrix(300, 40, kind="rademacher", seed=4))
    f32 = cn.projection_matrix(300, 40, kind="rademacher", seed=3, dtype=torch.float32)
    assert f32.dtype == torch.float32 and torch.equal(f32.double(), rad)


def test_projection_matrix_leaves_global_rng_alone() -> None:
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a = cn.projection_matrix(50, 10, kind="gaussian", seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)
    assert torch.equal(a, cn.projection_matrix(50, 10, kind="gaussian", seed=0))


# ------------------------------------------------------------------------------------------------
# every kernel equals the reference
# ------------------------------------------------------------------------------------------------
MATRIX = [
    (case, kernel)
    for case in CASES
    for kernel in ref.ALL_KERNELS
    if (case, kernel) != ("transformer", "embedding")  # see test_embedding_default_skips_...
]


@pytest.mark.parametrize("pair", ["cross", "self"])
@pytest.mark.parametrize("case, kernel", MATRIX)
def test_kernel_matches_reference(case: str, kernel: str, pair: str) -> None:
    model, x1, x2 = make_case(case)
    result = compute(model, x1, None if pair == "self" else x2, kernel)
    expected = reference_for(case, kernel, pair)
    assert isinstance(result, Tensor)
    assert result.device.type == "cpu"
    assert result.dtype == torch.float64
    n2 = x1.shape[0] if pair == "self" else x2.shape[0]
    c = case_gradients(case)[0].shape[1]
    assert result.shape == expected_shape(kernel, x1.shape[0], n2, c)
    assert_close_rel(result, expected)


@pytest.mark.parametrize("case", CASES)
def test_entk_trace_equals_trntk0(case: str) -> None:
    model, x1, x2 = make_case(case)
    entk = cn.kernel_matrix(model, x1, x2, kernel="entk")
    trntk0 = cn.kernel_matrix(model, x1, x2, kernel="trntk0")
    assert_close_rel(torch.einsum("ijcc->ij", entk), trntk0, 1e-12)


@pytest.mark.parametrize("kernel", ref.ALL_KERNELS)
@pytest.mark.parametrize("case", CASES)
def test_symmetry_psd_unit_diagonal(case: str, kernel: str) -> None:
    model, x1, x2 = make_case(case)
    kwargs = {}
    if (case, kernel) == (
        "transformer",
        "embedding",
    ):  # default layers: see test_embedding_default_
        kwargs["layers"] = ref.default_embedding_layers(model, x1)
    k11 = compute(model, x1, None, kernel, **kwargs)
    k12 = compute(model, x1, x2, kernel, **kwargs)
    k21 = compute(model, x2, x1, kernel, **kwargs)
    if kernel == "entk":
        n, c = k11.shape[0], k11.shape[2]
        assert_close_rel(k11, k11.permute(1, 0, 3, 2), 1e-12)
        assert_close_rel(k21, k12.permute(1, 0, 3, 2), 1e-12)
        psd_check(k11.permute(0, 2, 1, 3).reshape(n * c, n * c))
        return
    assert_close_rel(k11, k11.T, 1e-12)
    assert_close_rel(k21, k12.T, 1e-12)
    psd_check(k11)
    if kernel in ref.NORMALISED_KERNELS:
        assert_close_rel(torch.diagonal(k11), torch.ones(k11.shape[0], dtype=k11.dtype), 1e-12)
        assert k12.abs().max().item() <= 1 + 1e-12


def test_inputs2_none_equals_inputs1() -> None:
    model, x1, _ = make_case("cnn")
    for kernel in ("entk", "trntk", "proj_pntk", "ck"):
        assert_close_rel(compute(model, x1, None, kernel), compute(model, x1, x1, kernel), 1e-12)


# ------------------------------------------------------------------------------------------------
# projected kernels converge to the exact ones
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", ["proj_trntk", "proj_pntk"])
def test_projection_converges_like_inverse_sqrt_k(kernel: str) -> None:
    model = models.make_wide_mlp(dtype=torch.float32)
    num_params = sum(p.numel() for p in cn.select_parameters(model).values())
    assert num_params > 2 * 4096
    x = models.mlp_inputs(8, seed=21, dtype=torch.float32, d_in=20)
    exact = cn.kernel_matrix(model, x, kernel=kernel.removeprefix("proj_")).double()
    residuals = {}
    for dim in (256, 1024, 4096):
        res = []
        for seed in range(4):
            approx = cn.kernel_matrix(
                model, x, kernel=kernel, projection_dim=dim, seed=seed
            ).double()
            res.append((torch.linalg.norm(approx - exact) / torch.linalg.norm(exact)).item())
        residuals[dim] = sum(res) / len(res)
    assert residuals[256] > residuals[1024] > residuals[4096], residuals
    assert residuals[256] / residuals[4096] > 2.5, residuals
    assert residuals[4096] < 0.1, residuals


# ------------------------------------------------------------------------------------------------
# batching and memory limits do not change the result
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", ["entk", "trntk0", "trntk", "pntk", "proj_trntk", "ck"])
@pytest.mark.parametrize("case", ["cnn", "transformer"])
def test_batch_size_and_memory_limit_invariance(case: str, kernel: str) -> None:
    model, x1, x2 = make_case(case)
    base = compute(model, x1, x2, kernel)
    n = x1.shape[0]
    for batch_size in (1, 3, n):
        assert_close_rel(compute(model, x1, x2, kernel, batch_size=batch_size), base, 1e-12)
    smallest = smallest_memory_limit(model, x1, kernel)
    for memory_limit in (smallest, 4 * smallest, 2**30):
        assert_close_rel(compute(model, x1, x2, kernel, memory_limit=memory_limit), base, 1e-12)
    assert_close_rel(
        compute(model, x1, x2, kernel, batch_size=1, memory_limit=smallest), base, 1e-12
    )
    with pytest.raises(ValueError, match="memory_limit >= "):
        compute(model, x1, x2, kernel, memory_limit=smallest - 1)


# ------------------------------------------------------------------------------------------------
# seeded projections
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("projection", ["rademacher", "gaussian"])
@pytest.mark.parametrize("kernel", ["proj_trntk", "proj_pntk"])
def test_projection_seeds(kernel: str, projection: str) -> None:
    model, x1, x2 = make_case("mlp")
    a = compute(model, x1, x2, kernel, projection=projection, seed=7)
    torch.manual_seed(12345)  # the global RNG must not matter
    b = compute(model, x1, x2, kernel, projection=projection, seed=7)
    c = compute(model, x1, x2, kernel, projection=projection, seed=8)
    assert torch.equal(a, b)
    assert (a - c).abs().max().item() > 1e-6
    g1, g2 = case_gradients("mlp")
    matrix = cn.projection_matrix(g1.shape[-1], PROJ_DIM, kind=projection, seed=7)
    assert_close_rel(a, ref.kernel_from_grads(g1, g2, kernel, matrix))


def test_projection_kinds_differ() -> None:
    model, x1, x2 = make_case("mlp")
    a = compute(model, x1, x2, "proj_trntk", projection="rademacher")
    b = compute(model, x1, x2, "proj_trntk", projection="gaussian")
    assert (a - b).abs().max().item() > 1e-6


# ------------------------------------------------------------------------------------------------
# input forms and output forms
# ------------------------------------------------------------------------------------------------
SOME_KERNELS = ("entk", "trntk", "pntk0", "pntk", "proj_trntk", "proj_pntk", "ck", "embedding")


@pytest.mark.parametrize("kernel", SOME_KERNELS)
def test_tuple_inputs(kernel: str) -> None:
    model = models.make_two_input()
    x1, x2 = models.two_input_inputs(4, seed=4), models.two_input_inputs(3, seed=14)
    result = compute(model, x1, x2, kernel)
    expected = ref.ref_kernel(model, x1, x2, kernel, projection_dim=PROJ_DIM)
    assert_close_rel(result, expected)


@pytest.mark.parametrize("kernel", SOME_KERNELS)
def test_keyword_mapping_inputs_with_logits_output(kernel: str) -> None:
    model = models.make_keyword()
    x1, x2 = models.keyword_inputs(4, seed=5), models.keyword_inputs(3, seed=15)
    result = compute(model, x1, x2, kernel)
    expected = ref.ref_kernel(model, x1, x2, kernel, projection_dim=PROJ_DIM)
    assert_close_rel(result, expected)
    assert_close_rel(
        compute(model, x1, None, kernel),
        ref.ref_kernel(model, x1, None, kernel, projection_dim=PROJ_DIM),
    )


@pytest.mark.parametrize("squeeze", [True, False], ids=["B", "Bx1"])
@pytest.mark.parametrize("kernel", ref.ALL_KERNELS)
def test_single_logit(kernel: str, squeeze: bool) -> None:
    model = models.make_single_logit(squeeze=squeeze)
    x1, x2 = models.mlp_inputs(4, seed=6), models.mlp_inputs(3, seed=16)
    result = compute(model, x1, x2, kernel)
    expected = ref.ref_kernel(model, x1, x2, kernel, projection_dim=PROJ_DIM)
    assert result.shape == expected_shape(kernel, 4, 3, 1)
    assert_close_rel(result, expected)


def test_single_logit_pntk_equals_trntk() -> None:
    model = models.make_single_logit()
    x1, x2 = models.mlp_inputs(4, seed=6), models.mlp_inputs(3, seed=16)
    for a, b in (("pntk0", "trntk0"), ("pntk", "trntk"), ("proj_pntk", "proj_trntk")):
        assert_close_rel(compute(model, x1, x2, a), compute(model, x1, x2, b), 1e-12)


def test_tied_weights_counted_once() -> None:
    model = models.make_tied()
    x1, x2 = models.mlp_inputs(4, seed=7), models.mlp_inputs(3, seed=17)
    for kernel in ("entk", "trntk", "pntk", "proj_trntk"):
        expected = ref.ref_kernel(
            model,
            x1,
            x2,
            kernel,
            projection_dim=PROJ_DIM,
            param_names=list(ref.ref_select_parameters(model)),
        )
        assert_close_rel(compute(model, x1, x2, kernel), expected)


def test_frozen_parameters_excluded() -> None:
    model, x1, x2 = make_case("mlp")
    model.fc1.weight.requires_grad_(False)
    names = list(ref.ref_select_parameters(model))
    assert "fc1.weight" not in names
    for kernel in ("entk", "trntk0", "pntk"):
        expected = ref.ref_kernel(model, x1, x2, kernel, param_names=names)
        assert_close_rel(compute(model, x1, x2, kernel), expected)
    assert not model.fc1.weight.requires_grad


# ------------------------------------------------------------------------------------------------
# layer selection
# ------------------------------------------------------------------------------------------------
LAYER_CASES = [("mlp", ["fc2"]), ("cnn", ["fc", "conv1"]), ("transformer", ["encoder.linear2"])]


@pytest.mark.parametrize("kernel", ["entk", "trntk0", "trntk", "pntk", "proj_trntk", "proj_pntk"])
@pytest.mark.parametrize("case, layers", LAYER_CASES)
def test_layers_selection(case: str, layers: list[str], kernel: str) -> None:
    model, x1, x2 = make_case(case)
    names = list(ref.ref_select_parameters(model, layers))
    num_params = sum(dict(model.named_parameters())[n].numel() for n in names)
    dim = min(PROJ_DIM, num_params // 2)
    result = compute(model, x1, x2, kernel, layers=layers, projection_dim=dim)
    if kernel in ref.PROJECTED_KERNELS:
        names = ref.library_parameters(model, layers)  # the projection's flattening order
    expected = ref.ref_kernel(
        model, x1, x2, kernel, layers=layers, projection_dim=dim, param_names=names
    )
    assert_close_rel(result, expected)


@pytest.mark.parametrize(
    "case, layers",
    [("mlp", ["fc1"]), ("cnn", ["fc"]), ("cnn", ["conv1"]), ("transformer", ["encoder.linear1"])],
)
def test_ck_chosen_layer(case: str, layers: list[str]) -> None:
    model, x1, x2 = make_case(case)
    result = cn.kernel_matrix(model, x1, x2, kernel="ck", layers=layers)
    assert_close_rel(result, ref.ref_kernel(model, x1, x2, "ck", layers=layers))


def test_ck_of_first_layer_is_input_cosine() -> None:
    model, x1, x2 = make_case("mlp")
    result = cn.kernel_matrix(model, x1, x2, kernel="ck", layers=["fc1"])
    assert_close_rel(
        result, torch.nn.functional.normalize(x1) @ torch.nn.functional.normalize(x2).T
    )


@pytest.mark.parametrize(
    "case, layers",
    [
        ("mlp", ["fc1"]),
        ("mlp", ["fc2", "fc1"]),
        ("cnn", ["conv1", "bn1", "pool"]),
        ("transformer", ["embed", "encoder.linear1", "encoder.norm2", "head"]),
        ("transformer", ["encoder"]),
    ],
)
def test_embedding_chosen_layers(case: str, layers: list[str]) -> None:
    model, x1, x2 = make_case(case)
    result = cn.kernel_matrix(model, x1, x2, kernel="embedding", layers=layers)
    assert_close_rel(result, ref.ref_kernel(model, x1, x2, "embedding", layers=layers))


def test_embedding_default_skips_modules_not_called() -> None:
    """Default embedding layers on a model with ``nn.MultiheadAttention``.

    ``out_proj`` is a leaf module with parameters, but MultiheadAttention uses its weights without
    calling it, so it has no output: the default (which the user did not choose) must skip it rather
    than fail, i.e. use every leaf module with parameters that the forward pass calls.
    """
    model, x1, x2 = make_case("transformer")
    expected_layers = ref.default_embedding_layers(model, x1)
    assert "encoder.self_attn.out_proj" not in expected_layers
    assert "encoder.self_attn.out_proj" in ref.default_embedding_layers(model)
    result = cn.kernel_matrix(model, x1, x2, kernel="embedding")
    assert_close_rel(result, ref.ref_kernel(model, x1, x2, "embedding", layers=expected_layers))


# ------------------------------------------------------------------------------------------------
# dtypes and side effects
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", ["entk", "trntk", "pntk0", "proj_pntk", "ck", "embedding"])
def test_float64_on_float32_model(kernel: str) -> None:
    model = models.make_cnn(dtype=torch.float32)
    x1, x2 = models.cnn_inputs(4, dtype=torch.float32), models.cnn_inputs(3, 12, torch.float32)
    result = compute(model, x1, x2, kernel, dtype=torch.float64)
    assert result.dtype == torch.float64
    expected = ref.ref_kernel(model, x1, x2, kernel, projection_dim=PROJ_DIM)
    assert_close_rel(result, expected)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    default = compute(model, x1, x2, kernel)
    assert default.dtype == torch.float32
    assert_close_rel(default, expected, 1e-4)


def _snapshot(model: nn.Module) -> dict:
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": {n: m.training for n, m in model.named_modules()},
        "dtype_device": {n: (p.dtype, p.device) for n, p in model.named_parameters()},
    }


def _assert_unchanged(model: nn.Module, before: dict) -> None:
    after = _snapshot(model)
    assert after["requires_grad"] == before["requires_grad"]
    assert after["training"] == before["training"]
    assert after["dtype_device"] == before["dtype_device"]
    assert before["state"].keys() == after["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key
    for name, param in model.named_parameters():
        assert param.grad is None, f"{name}.grad was set"
    for name, module in model.named_modules():
        assert not module._forward_hooks, f"forward hook left on {name!r}"
        assert not module._forward_pre_hooks, f"forward pre-hook left on {name!r}"
        assert not module._backward_hooks, f"backward hook left on {name!r}"


@pytest.mark.parametrize("kernel", ref.ALL_KERNELS)
def test_model_unchanged(kernel: str) -> None:
    model, x1, x2 = make_case("cnn")
    model.conv1.bias.requires_grad_(False)
    before = _snapshot(model)
    x1_copy = x1.clone()
    default_dtype = torch.get_default_dtype()
    compute(model, x1, x2, kernel)
    compute(model, x1, x2, kernel, dtype=torch.float32, layers=None)
    _assert_unchanged(model, before)
    assert torch.equal(x1, x1_copy)
    assert torch.is_grad_enabled() and torch.get_default_dtype() == default_dtype


def test_show_progress_same_result(capsys: pytest.CaptureFixture[str]) -> None:
    model, x1, x2 = make_case("mlp")
    quiet = cn.kernel_matrix(model, x1, x2, kernel="trntk")
    loud = cn.kernel_matrix(model, x1, x2, kernel="trntk", show_progress=True)
    assert torch.equal(quiet, loud)


def test_transformer_model_unchanged() -> None:
    model, x1, x2 = make_case("transformer")
    before = _snapshot(model)
    for kernel in ("trntk", "proj_pntk", "embedding"):
        compute(
            model, x1, x2, kernel, layers=["encoder.linear1"] if kernel == "embedding" else None
        )
    _assert_unchanged(model, before)


def test_result_does_not_require_grad() -> None:
    model, x1, x2 = make_case("mlp")
    result = cn.kernel_matrix(model, x1, x2, kernel="trntk")
    assert not result.requires_grad


def test_deepcopy_reference_unaffected() -> None:
    """Sanity check of the reference itself: it must not modify its model either."""
    model, x1, x2 = make_case("cnn")
    before = _snapshot(model)
    ref.ref_kernel(model, x1, x2, "trntk")
    ref.ref_kernel(copy.deepcopy(model), x1, x2, "ck")
    _assert_unchanged(model, before)


# ------------------------------------------------------------------------------------------------
# the reference's own consistency (independent of the engine's kernel code)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_reference_self_consistency(case: str) -> None:
    g1, _ = case_gradients(case)
    n, c, _ = g1.shape
    entk = ref.entk_from_grads(g1, g1)
    assert_close_rel(torch.einsum("ijcc->ij", entk), ref.trntk0_from_grads(g1, g1), 1e-13)
    psd_check(entk.permute(0, 2, 1, 3).reshape(n * c, n * c))
    for kernel in ("trntk0", "trntk", "pntk0", "pntk"):
        psd_check(ref.kernel_from_grads(g1, g1, kernel))
    # batched Jacobian through torch.func agrees with the per-example autograd loop
    model, x1, _ = make_case(case)
    names = ref.library_parameters(model)
    params = {n_: p.detach() for n_, p in model.named_parameters() if n_ in names}

    def logits(p: dict[str, Tensor]) -> Tensor:
        return torch.func.functional_call(model, p, (x1,))

    jac = torch.func.jacrev(logits)(params)
    flat = torch.cat([jac[n_].reshape(n, c, -1) for n_ in names], dim=-1)
    assert_close_rel(flat, g1, 1e-12)


# ------------------------------------------------------------------------------------------------
# CUDA
# ------------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("kernel", ref.ALL_KERNELS)
def test_cuda_matches_cpu(kernel: str) -> None:
    """device="cuda" gives the CPU float64 result (projections too: same seed, same matrix)."""
    model, x1, x2 = make_case("cnn")
    before = _snapshot(model)
    cpu = compute(model, x1, x2, kernel, seed=3)
    gpu = compute(model, x1, x2, kernel, seed=3, device="cuda")
    assert gpu.device.type == "cpu" and gpu.dtype == torch.float64
    assert_close_rel(gpu, cpu, 1e-10)
    if kernel not in ref.PROJECTED_KERNELS:
        assert_close_rel(gpu, reference_for("cnn", kernel, "cross"))
    _assert_unchanged(model, before)
