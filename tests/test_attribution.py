"""The Captum face (``captum_ntk.attribution``) against Captum's own invariants.

Every attribution class is checked, in float64 on small seeded models, against
:func:`captum_ntk.kernel_matrix` (its kernel), ``torch.topk`` of the full matrix (k-mode),
the kGLM's decision function (Eq. 3 attributions sum to the kGLM logits) and the data
conventions of ``captum.influence`` (Dataset / DataLoader / tuple / Mapping batches).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import models
import pytest
import torch
from captum.influence import DataInfluence
from torch import Tensor, nn
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    SubsetRandomSampler,
    TensorDataset,
)

import captum_ntk as cn
from captum_ntk.engine.data.inputs import ModelInputs
from captum_ntk.kernels.matrix import minimum_memory_limit

PROJ_DIM = 16  # < P of every model below (MLP 73, single logit 57, two-input 109)
N_TRAIN = 11  # prime: no batch size below divides it
N_TEST = 7
KERNEL_TOL = 1e-12
ATTR_TOL = 1e-6
#: kGLM options where convergence does not matter (Eq. 3 sums hold for any W, b): keeps it fast
QUICK_GLM = {"max_iter": 15, "target": "labels", "alpha": 1e-4}  # the paper's kGLM

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

CLASSES = list(cn.ATTRIBUTION_CLASSES.values())
PROJECTED = [cn.ProjTrNTKAttribution, cn.ProjPNTKAttribution]
CLASS_IDS = [cls.__name__ for cls in CLASSES]
PROJ_IDS = [cls.__name__ for cls in PROJECTED]


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def kernel_options(cls: type[cn.NTKAttribution], **overrides: Any) -> dict[str, Any]:
    """Constructor / kernel_matrix options for ``cls`` (projection settings when projected)."""
    options: dict[str, Any] = {}
    if cls.kernel.startswith("proj_"):
        options = {"projection_dim": PROJ_DIM, "seed": 3}
    options.update(overrides)
    return options


def assert_close(
    actual: Tensor, expected: Tensor, tol: float = KERNEL_TOL, allow_inf: bool = False
) -> None:
    """Equal shapes and max|A - B| <= tol * max(1, max|B|).

    With ``allow_inf`` infinite entries must coincide (same sign) and are left out.
    """
    assert actual.shape == expected.shape, (tuple(actual.shape), tuple(expected.shape))
    actual = actual.detach().to("cpu", torch.float64)
    expected = expected.detach().to("cpu", torch.float64)
    assert not actual.isnan().any(), "NaN entries"
    if allow_inf:
        inf = expected.isinf()
        assert torch.equal(actual.isinf(), inf) and torch.equal(actual[inf], expected[inf])
        actual, expected = actual[~inf], expected[~inf]
        if actual.numel() == 0:
            return
    assert torch.isfinite(actual).all(), "non-finite entries"
    scale = max(1.0, expected.abs().max().item())
    err = (actual - expected).abs().max().item()
    assert err <= tol * scale, f"max abs error {err:.3e} > {tol:.1e} * {scale:.3g}"


@dataclass
class Case:
    """A model, its labelled training set and a labelled test batch."""

    model: nn.Module
    train_x: tuple[Tensor, ...]  # positional forward arguments of the N training examples
    train_y: Tensor
    test_x: tuple[Tensor, ...]
    test_y: Tensor
    num_outputs: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dataset(self) -> TensorDataset:
        return TensorDataset(*self.train_x, self.train_y)

    @property
    def test_batch(self) -> tuple[Tensor, ...]:
        """The test set as one Captum batch (inputs..., labels)."""
        return (*self.test_x, self.test_y)

    def kernel_inputs(self, xs: tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
        return xs[0] if len(xs) == 1 else xs

    def reference(self, kernel: str, **options: Any) -> Tensor:
        """kernel_matrix(test, train)."""
        return cn.kernel_matrix(
            self.model,
            self.kernel_inputs(self.test_x),
            self.kernel_inputs(self.train_x),
            kernel=kernel,
            **options,
        )


def mlp_case() -> Case:
    """MLP 6 -> 7 -> 3 (C = 3), labels cycling over the three classes."""
    return Case(
        models.make_mlp(d_out=3),
        (models.mlp_inputs(N_TRAIN, seed=1),),
        torch.arange(N_TRAIN) % 3,
        (models.mlp_inputs(N_TEST, seed=21),),
        torch.arange(N_TEST) % 3,
        3,
    )


def single_logit_case() -> Case:
    """C = 1 model returning (B,) logits, binary labels."""
    return Case(
        models.make_single_logit(),
        (models.mlp_inputs(N_TRAIN, seed=2),),
        torch.arange(N_TRAIN) % 2,
        (models.mlp_inputs(N_TEST, seed=22),),
        torch.arange(N_TEST) % 2,
        1,
    )


def two_input_case() -> Case:
    """forward(x, z), C = 4."""
    return Case(
        models.make_two_input(),
        models.two_input_inputs(N_TRAIN, seed=4),
        torch.arange(N_TRAIN) % 4,
        models.two_input_inputs(N_TEST, seed=24),
        torch.arange(N_TEST) % 4,
        4,
    )


CASES = {"mlp": mlp_case, "single_logit": single_logit_case, "two_input": two_input_case}


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> Case:
    return CASES[request.param]()


@pytest.fixture
def mlp() -> Case:
    return mlp_case()


def make_attr(
    cls: type[cn.NTKAttribution], case: Case, data: Any = None, **overrides: Any
) -> cn.NTKAttribution:
    options = {"batch_size": 4, **kernel_options(cls), **overrides}
    return cls(case.model, case.dataset if data is None else data, **options)


class DictDataset(Dataset):
    """Hugging Face-style examples: {'x': ..., 'labels': ...} (or another label key)."""

    def __init__(self, x: Tensor, y: Tensor, label_key: str = "labels") -> None:
        self.x, self.y, self.label_key = x, y, label_key

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"x": self.x[i], self.label_key: self.y[i]}


# ------------------------------------------------------------------------------------------------
# class structure
# ------------------------------------------------------------------------------------------------
def test_registry_lists_every_class() -> None:
    expected = {
        "trntk": cn.TrNTKAttribution,
        "trntk0": cn.TrNTK0Attribution,
        "pntk": cn.PNTKAttribution,
        "pntk0": cn.PNTK0Attribution,
        "proj_trntk": cn.ProjTrNTKAttribution,
        "proj_pntk": cn.ProjPNTKAttribution,
        "ck": cn.ConjugateKernelAttribution,
        "embedding": cn.EmbeddingKernelAttribution,
    }
    assert cn.ATTRIBUTION_CLASSES == expected
    for name, cls in expected.items():
        assert cls.kernel == name
        assert name in cn.KERNELS


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_is_captum_data_influence(cls: type[cn.NTKAttribution], mlp: Case) -> None:
    assert issubclass(cls, DataInfluence)
    assert cls.get_name() == cls.__name__
    attr = make_attr(cls, mlp)
    assert isinstance(attr, DataInfluence)
    assert attr.get_name() == cls.__name__
    assert attr.model is mlp.model
    assert attr.num_train == N_TRAIN


# ------------------------------------------------------------------------------------------------
# influence: the kernel
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_influence_equals_kernel_matrix(cls: type[cn.NTKAttribution], case: Case) -> None:
    attr = make_attr(cls, case)
    scores = attr.influence(case.test_batch)
    expected = case.reference(cls.kernel, **kernel_options(cls))
    assert scores.dtype == torch.float64
    assert scores.shape == (N_TEST, N_TRAIN)
    assert_close(scores, expected)


@pytest.mark.parametrize("cls", [cn.TrNTKAttribution, cn.PNTK0Attribution, cn.ProjTrNTKAttribution])
def test_influence_with_layers(cls: type[cn.NTKAttribution], mlp: Case) -> None:
    attr = make_attr(cls, mlp, layers="fc2")
    expected = mlp.reference(cls.kernel, layers="fc2", **kernel_options(cls))
    assert_close(attr.influence(mlp.test_batch), expected)


@pytest.mark.parametrize("layers", [["fc1"], ["fc1", "fc2"]])
def test_embedding_kernel_with_layers(layers: list[str], mlp: Case) -> None:
    attr = make_attr(cn.EmbeddingKernelAttribution, mlp, layers=layers)
    assert_close(attr.influence(mlp.test_batch), mlp.reference("embedding", layers=layers))


def test_projection_options_are_passed(mlp: Case) -> None:
    options = {"projection_dim": 8, "projection": "gaussian", "seed": 7}
    attr = make_attr(cn.ProjPNTKAttribution, mlp, **options)
    scores = attr.influence(mlp.test_batch)
    assert_close(scores, mlp.reference("proj_pntk", **options))
    rademacher = mlp.reference("proj_pntk", **{**options, "projection": "rademacher"})
    assert (scores - rademacher).abs().max() > 1e-6


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_self_influence_is_train_diagonal(cls: type[cn.NTKAttribution], case: Case) -> None:
    attr = make_attr(cls, case)
    self_scores = attr.self_influence()
    assert self_scores.shape == (N_TRAIN,)
    train_kernel = attr.influence((*case.train_x, case.train_y))
    assert_close(self_scores, train_kernel.diagonal())
    # self-influence of other inputs is the diagonal of their own kernel
    x = case.kernel_inputs(case.test_x)
    own = cn.kernel_matrix(case.model, x, x, kernel=cls.kernel, **kernel_options(cls))
    assert_close(attr.self_influence(case.test_batch), own.diagonal())


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_compute_train_kernel_is_symmetric_kernel(cls: type[cn.NTKAttribution], case: Case) -> None:
    attr = make_attr(cls, case)
    x = case.kernel_inputs(case.train_x)
    expected = cn.kernel_matrix(case.model, x, kernel=cls.kernel, **kernel_options(cls))
    train_kernel = attr.compute_train_kernel()
    assert_close(train_kernel, expected)
    assert attr.compute_train_kernel() is train_kernel  # cached


# ------------------------------------------------------------------------------------------------
# k-mode (KMostInfluentialResults)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_top_k_matches_full_matrix(
    cls: type[cn.NTKAttribution], batch_size: int, mlp: Case
) -> None:
    attr = make_attr(cls, mlp, batch_size=batch_size)
    full = mlp.reference(cls.kernel, **kernel_options(cls))
    for k, proponents in [(1, True), (3, True), (N_TRAIN, True), (3, False), (N_TRAIN, False)]:
        result = attr.influence(mlp.test_batch, k=k, proponents=proponents)
        indices, scores = result  # a namedtuple, as in captum
        assert indices is result.indices and scores is result.influence_scores
        assert indices.shape == scores.shape == (N_TEST, k)
        assert indices.dtype == torch.long
        expected_scores, expected_indices = torch.topk(full, k, dim=1, largest=proponents)
        assert torch.equal(indices, expected_indices)
        assert_close(scores, expected_scores)
        ordered = scores[:, :-1] >= scores[:, 1:] if proponents else scores[:, :-1] <= scores[:, 1:]
        assert bool(ordered.all())
        # scores are the kernel values at the returned indices
        assert_close(scores, torch.gather(full, 1, indices))


@pytest.mark.parametrize(
    "cls", [cn.TrNTK0Attribution, cn.ProjPNTKAttribution, cn.ConjugateKernelAttribution]
)
def test_top_k_other_models(cls: type[cn.NTKAttribution], case: Case) -> None:
    attr = make_attr(cls, case, batch_size=3)
    full = case.reference(cls.kernel, **kernel_options(cls))
    for proponents in (True, False):
        indices, scores = attr.influence(case.test_batch, k=5, proponents=proponents)
        expected_scores, expected_indices = torch.topk(full, 5, dim=1, largest=proponents)
        assert torch.equal(indices, expected_indices)
        assert_close(scores, expected_scores)


@pytest.mark.parametrize("k", [0, -1, N_TRAIN + 1])
def test_k_out_of_range_raises(k: int, mlp: Case) -> None:
    attr = make_attr(cn.TrNTKAttribution, mlp)
    with pytest.raises(ValueError, match="k must"):
        attr.influence(mlp.test_batch, k=k)


# ------------------------------------------------------------------------------------------------
# data conventions
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_dataset_and_dataloader_agree(cls: type[cn.NTKAttribution], case: Case) -> None:
    from_dataset = make_attr(cls, case)
    loader = DataLoader(case.dataset, batch_size=3, shuffle=False)
    from_loader = make_attr(cls, case, data=loader)
    assert torch.equal(from_loader.train_labels, case.train_y)
    expected = from_dataset.influence(case.test_batch)
    assert_close(from_loader.influence(case.test_batch), expected)
    # test inputs as a DataLoader of labelled batches
    test_loader = DataLoader(TensorDataset(*case.test_batch), batch_size=2, shuffle=False)
    assert_close(from_dataset.influence(test_loader), expected)
    indices, _ = from_loader.influence(test_loader, k=2)
    assert torch.equal(indices, torch.topk(expected, 2, dim=1).indices)


def test_training_set_as_one_batch(mlp: Case) -> None:
    """A single Captum batch (x, labels) in place of a Dataset."""
    expected = make_attr(cn.TrNTKAttribution, mlp).influence(mlp.test_batch)
    attr = make_attr(cn.TrNTKAttribution, mlp, data=(*mlp.train_x, mlp.train_y))
    assert torch.equal(attr.train_labels, mlp.train_y)
    assert_close(attr.influence(mlp.test_batch), expected)


def test_shuffling_dataloader_raises(mlp: Case) -> None:
    loader = DataLoader(mlp.dataset, batch_size=4, shuffle=True)
    with pytest.raises(ValueError, match="shuffle"):
        make_attr(cn.TrNTKAttribution, mlp, data=loader)
    attr = make_attr(cn.TrNTKAttribution, mlp)
    test_loader = DataLoader(TensorDataset(*mlp.test_batch), batch_size=2, shuffle=True)
    with pytest.raises(ValueError, match="shuffle"):
        attr.influence(test_loader)


@pytest.mark.parametrize("how", ["batch_sampler", "subset_random_sampler"])
def test_other_random_samplers_raise(how: str, mlp: Case) -> None:
    ds = mlp.dataset
    if how == "batch_sampler":
        loader = DataLoader(ds, batch_sampler=BatchSampler(RandomSampler(ds), 4, False))
    else:
        loader = DataLoader(ds, sampler=SubsetRandomSampler(range(len(ds))), batch_size=4)
    with pytest.raises(ValueError, match="shuffle"):
        make_attr(cn.TrNTKAttribution, mlp, data=loader)


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_mapping_batches(cls: type[cn.NTKAttribution], mlp: Case) -> None:
    (x,), y = mlp.train_x, mlp.train_y
    (x_test,) = mlp.test_x
    attr = make_attr(cls, mlp, data=DictDataset(x, y))
    assert torch.equal(attr.train_labels, y)
    expected = mlp.reference(cls.kernel, **kernel_options(cls))
    assert_close(attr.influence({"x": x_test, "labels": mlp.test_y}), expected)
    assert_close(attr.influence({"x": x_test}), expected)
    loader = DataLoader(DictDataset(x, y), batch_size=5, shuffle=False)
    assert_close(make_attr(cls, mlp, data=loader).influence({"x": x_test}), expected)


@pytest.mark.parametrize("label_key", ["labels", "label"])
def test_mapping_batch_labels_fit_the_kglm(label_key: str, mlp: Case) -> None:
    (x,), y = mlp.train_x, mlp.train_y
    attr = make_attr(cn.PNTKAttribution, mlp, data=DictDataset(x, y, label_key))
    assert torch.equal(attr.train_labels, y)
    reference_glm = make_attr(cn.PNTKAttribution, mlp).fit_surrogate(**QUICK_GLM)
    assert_close(attr.fit_surrogate(**QUICK_GLM).coef_, reference_glm.coef_, 1e-10)
    attributions = attr.attribute({"x": mlp.test_x[0], "labels": mlp.test_y})
    assert attributions.shape == (N_TEST, 3, N_TRAIN)


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_tuple_batch_and_bare_tensor_agree(cls: type[cn.NTKAttribution], mlp: Case) -> None:
    attr = make_attr(cls, mlp)
    (x_test,) = mlp.test_x
    from_tuple = attr.influence((x_test, mlp.test_y))
    assert_close(attr.influence(x_test), from_tuple)
    assert_close(attr.influence((x_test,)), from_tuple)  # one-element tuple: inputs only
    attr.fit_surrogate(**QUICK_GLM)
    assert_close(attr.attribute(x_test), attr.attribute((x_test, mlp.test_y)))


def test_two_input_batches_need_the_label_slot() -> None:
    """Captum convention: the last tuple element is the label, so (x, z) alone is one input."""
    case = two_input_case()
    attr = make_attr(cn.TrNTKAttribution, case)
    expected = case.reference("trntk")
    assert_close(attr.influence((*case.test_x, case.test_y)), expected)
    with pytest.raises(ValueError, match="structure|labels for"):
        attr.influence(case.test_x)


def test_test_inputs_with_other_shape_raise(mlp: Case) -> None:
    attr = make_attr(cn.TrNTKAttribution, mlp)
    bad = models.mlp_inputs(3, seed=5, d_in=5)
    for method in (attr.influence, attr.attribute, attr.self_influence):
        with pytest.raises(ValueError, match="shape"):
            method(bad)
    with pytest.raises(ValueError, match="shape"):
        attr.influence(bad, k=2)


def test_test_inputs_with_other_structure_raise(mlp: Case) -> None:
    attr = make_attr(cn.TrNTKAttribution, mlp)
    (x_test,) = mlp.test_x
    with pytest.raises(ValueError):
        attr.influence({"x": x_test})


# ------------------------------------------------------------------------------------------------
# attribute (Eq. 3) and the surrogate
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_attributions_sum_to_kglm_logits(cls: type[cn.NTKAttribution], case: Case) -> None:
    attr = make_attr(cls, case)
    glm = attr.fit_surrogate(**QUICK_GLM)
    assert attr.surrogate is glm
    attributions = attr.attribute(case.test_batch)
    logits = glm.decision_function(attr.influence(case.test_batch))
    n_logits = case.num_outputs if case.num_outputs > 2 else 1  # binary kGLM: one logit
    assert attributions.shape == (N_TEST, n_logits, N_TRAIN)
    assert attributions.dtype == torch.float64
    if n_logits == 1:
        assert logits.shape == (N_TEST,)
        logits = logits[:, None]
    assert_close(attributions.sum(dim=2), logits, ATTR_TOL)
    # Eq. 3 entry by entry: W_{c,i} k(x, x_i) + b_c / N
    kernel = attr.influence(case.test_batch)
    expected = kernel[:, None, :] * glm.coef_[None] + glm.intercept_[None, :, None] / N_TRAIN
    assert_close(attributions, expected)


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_attribute_with_target(cls: type[cn.NTKAttribution], mlp: Case) -> None:
    attr = make_attr(cls, mlp)
    attr.fit_surrogate(**QUICK_GLM)
    full = attr.attribute(mlp.test_batch)
    rows = torch.arange(N_TEST)
    per_example = [2, 0, 1, 1, 2, 0, 2]
    for target in (1, torch.tensor(2), per_example, torch.tensor(per_example), mlp.test_y):
        got = attr.attribute(mlp.test_batch, target=target)
        assert got.shape == (N_TEST, N_TRAIN)
        t = torch.as_tensor(target).reshape(-1).expand(N_TEST)
        assert_close(got, full[rows, t])


def test_attribute_with_target_binary() -> None:
    case = single_logit_case()
    attr = make_attr(cn.TrNTKAttribution, case)
    attr.fit_surrogate(**QUICK_GLM)
    full = attr.attribute(case.test_batch)
    assert full.shape == (N_TEST, 1, N_TRAIN)
    assert_close(attr.attribute(case.test_batch, target=1), full[:, 0])
    assert_close(attr.attribute(case.test_batch, target=[1] * N_TEST), full[:, 0])
    # class 0 of a binary kGLM: the negated attributions (they sum to the log-odds of class 0)
    assert_close(attr.attribute(case.test_batch, target=0), -full[:, 0])
    mixed = torch.tensor([i % 2 for i in range(N_TEST)])
    expected = torch.where(mixed[:, None] == 1, full[:, 0], -full[:, 0])
    assert_close(attr.attribute(case.test_batch, target=mixed), expected)
    with pytest.raises(ValueError, match="target"):
        attr.attribute(case.test_batch, target=2)


@pytest.mark.parametrize("target", [3, -1, [0, 1, 3, 0, 0, 0, 0]])
def test_target_out_of_range_raises(target: Any, mlp: Case) -> None:
    attr = make_attr(cn.PNTKAttribution, mlp)
    attr.fit_surrogate(**QUICK_GLM)
    with pytest.raises(ValueError, match="target"):
        attr.attribute(mlp.test_batch, target=target)


def test_target_of_wrong_length_raises(mlp: Case) -> None:
    attr = make_attr(cn.PNTKAttribution, mlp)
    attr.fit_surrogate(**QUICK_GLM)
    with pytest.raises(ValueError, match="target"):
        attr.attribute(mlp.test_batch, target=[0, 1])


@pytest.mark.parametrize("cls", [cn.PNTKAttribution, cn.ConjugateKernelAttribution])
def test_attribute_fits_surrogate_on_demand(cls: type[cn.NTKAttribution], mlp: Case) -> None:
    attr = make_attr(cls, mlp)
    assert attr.surrogate is None
    attributions = attr.attribute(mlp.test_batch)
    assert isinstance(attr.surrogate, cn.KernelGLM)
    explicit = make_attr(cls, mlp)
    glm = explicit.fit_surrogate()
    assert_close(attr.surrogate.coef_, glm.coef_)
    assert_close(attributions, explicit.attribute(mlp.test_batch))
    # the fitted surrogate is reused, not refitted
    fitted = attr.surrogate
    attr.attribute(mlp.test_batch)
    assert attr.surrogate is fitted


def test_surrogate_is_kglm_on_train_kernel(mlp: Case) -> None:
    attr = make_attr(cn.TrNTKAttribution, mlp)
    glm = attr.fit_surrogate(target="labels", alpha=1e-2)
    train_kernel = attr.compute_train_kernel()
    (x,) = mlp.train_x
    assert_close(train_kernel, cn.kernel_matrix(mlp.model, x))
    expected = cn.KernelGLM(alpha=1e-2).fit(train_kernel, mlp.train_y, num_classes=3)
    assert_close(glm.coef_, expected.coef_)
    assert_close(glm.intercept_, expected.intercept_)


@pytest.mark.parametrize("unlabelled", ["tensor_dataset", "bare_tensor", "loader"])
def test_unlabelled_training_set(unlabelled: str, mlp: Case) -> None:
    (x,) = mlp.train_x
    data = {
        "tensor_dataset": TensorDataset(x),
        "bare_tensor": x,
        "loader": DataLoader(TensorDataset(x), batch_size=4),
    }[unlabelled]
    attr = make_attr(cn.PNTKAttribution, mlp, data=data)
    assert attr.train_labels is None
    # the kernel needs no labels
    assert_close(attr.influence(mlp.test_batch), mlp.reference("pntk"))
    with pytest.raises(ValueError, match="labels"):
        attr.fit_surrogate(target="labels")
    assert attr.surrogate is None
    labelled = make_attr(cn.PNTKAttribution, mlp)
    glm = attr.fit_surrogate(labels=mlp.train_y, **QUICK_GLM)
    assert_close(glm.coef_, labelled.fit_surrogate(**QUICK_GLM).coef_)
    assert_close(attr.attribute(mlp.test_batch), labelled.attribute(mlp.test_batch))
    glm = attr.fit_surrogate(labels=mlp.train_y.tolist(), **QUICK_GLM)
    assert_close(glm.coef_, labelled.surrogate.coef_)
    attr.fit_surrogate(use_model_predictions=True, **QUICK_GLM)
    assert attr.attribute(mlp.test_batch).shape == (N_TEST, 3, N_TRAIN)


def test_labels_of_wrong_length_raise(mlp: Case) -> None:
    attr = make_attr(cn.TrNTKAttribution, mlp)
    with pytest.raises(ValueError, match="labels"):
        attr.fit_surrogate(labels=mlp.train_y[:-1])


def test_batch_size_must_be_positive(mlp: Case) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        make_attr(cn.TrNTKAttribution, mlp, batch_size=0)


@pytest.mark.parametrize("form", ["float", "float_column", "bool"])
def test_binary_labels_in_other_dtypes(form: str) -> None:
    """BCE-style targets (0./1., shape (N,) or (N, 1), or bool) give the same binary kGLM."""
    case = single_logit_case()
    y = case.train_y
    labels = {"float": y.double(), "float_column": y.double()[:, None], "bool": y.bool()}[form]
    attr = make_attr(cn.PNTKAttribution, case, data=TensorDataset(*case.train_x, labels))
    glm = attr.fit_surrogate(**QUICK_GLM)
    expected = make_attr(cn.PNTKAttribution, case).fit_surrogate(**QUICK_GLM)
    assert_close(glm.coef_, expected.coef_)
    assert_close(glm.intercept_, expected.intercept_)


def test_soft_labels_raise() -> None:
    case = single_logit_case()
    soft = case.train_y.double()
    soft[:3] = 0.9  # would be read as class 0
    attr = make_attr(cn.PNTKAttribution, case, data=TensorDataset(*case.train_x, soft))
    with pytest.raises(ValueError, match="integer"):
        attr.fit_surrogate(**QUICK_GLM)


@pytest.mark.parametrize("case_name", ["mlp", "single_logit", "two_input"])
def test_fit_to_model_predictions(case_name: str) -> None:
    """Appendix I: the kGLM is fitted to the network's predicted classes."""
    case = CASES[case_name]()
    attr = make_attr(cn.ProjTrNTKAttribution, case)
    with torch.no_grad():
        logits = case.model(*case.train_x)
    predicted = (logits > 0).long() if logits.dim() == 1 else logits.argmax(dim=1)
    assert predicted.unique().numel() >= 2, "the test needs a model predicting two classes"
    assert torch.equal(attr.model_predictions(), predicted)
    assert not torch.equal(predicted, case.train_y)  # the labels would give another kGLM
    glm = attr.fit_surrogate(use_model_predictions=True, **QUICK_GLM)
    expected = make_attr(cn.ProjTrNTKAttribution, case).fit_surrogate(labels=predicted, **QUICK_GLM)
    assert_close(glm.coef_, expected.coef_)
    # a class the network never predicts gets intercept -inf (KernelGLM's convention)
    assert_close(glm.intercept_, expected.intercept_, allow_inf=True)
    n_logits = 1 if case.num_outputs == 1 else case.num_outputs
    assert glm.coef_.shape == (n_logits, N_TRAIN)
    assert torch.equal(glm.classes_, torch.arange(max(2, case.num_outputs)))
    # Eq. 3 still sums to the kGLM logits (-inf for never-predicted classes)
    attributions = attr.attribute(case.test_batch)
    logits = glm.decision_function(attr.influence(case.test_batch)).reshape(N_TEST, n_logits)
    assert_close(attributions.sum(dim=2), logits, ATTR_TOL, allow_inf=True)


def test_single_logit_network_gives_binary_kglm() -> None:
    case = single_logit_case()
    attr = make_attr(cn.PNTKAttribution, case)
    glm = attr.fit_surrogate()
    assert glm.coef_.shape == (1, N_TRAIN)
    assert glm.intercept_.shape == (1,)
    assert glm.decision_function(attr.influence(case.test_batch)).shape == (N_TEST,)
    assert attr.attribute(case.test_batch).shape == (N_TEST, 1, N_TRAIN)
    # also with (B, 1) logits
    model = models.make_single_logit(squeeze=False)
    attr = cn.PNTKAttribution(model, case.dataset, batch_size=4)
    assert attr.fit_surrogate(use_model_predictions=True).coef_.shape == (1, N_TRAIN)


# ------------------------------------------------------------------------------------------------
# projected classes
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", PROJECTED, ids=PROJ_IDS)
def test_intermediate_quantities_give_influence(cls: type[cn.NTKAttribution], case: Case) -> None:
    attr = make_attr(cls, case)
    test_features = attr.compute_intermediate_quantities(case.test_batch)
    train_features = attr.compute_intermediate_quantities(case.dataset[:])
    width = PROJ_DIM * case.num_outputs if cls.kernel == "proj_trntk" else PROJ_DIM
    assert test_features.shape == (N_TEST, width)
    assert train_features.shape == (N_TRAIN, width)
    assert_close(test_features @ train_features.T, attr.influence(case.test_batch))
    # unnormalised features: cosine-normalised products give the same kernel
    raw_test = attr.compute_intermediate_quantities(case.test_batch, normalize=False)
    raw_train = attr.compute_intermediate_quantities(case.dataset[:], normalize=False)
    cosine = (raw_test @ raw_train.T) / (
        raw_test.norm(dim=1)[:, None] * raw_train.norm(dim=1)[None, :]
    )
    assert_close(cosine, attr.influence(case.test_batch))


@pytest.mark.parametrize("cls", PROJECTED, ids=PROJ_IDS)
def test_projection_seed(cls: type[cn.NTKAttribution], case: Case) -> None:
    results = [
        make_attr(cls, case, batch_size=b, seed=5).influence(case.test_batch) for b in (1, 3, 4, 64)
    ]
    for other in results[1:]:
        assert_close(other, results[0], 1e-13)
    features = [
        make_attr(cls, case, batch_size=b, seed=5).compute_intermediate_quantities(case.test_batch)
        for b in (1, 4)
    ]
    assert_close(features[1], features[0], 1e-13)
    other_seed = make_attr(cls, case, seed=6).influence(case.test_batch)
    assert (other_seed - results[0]).abs().max() > 1e-6


# ------------------------------------------------------------------------------------------------
# training features are computed once (when they fit the memory limit)
# ------------------------------------------------------------------------------------------------
class FeatureCalls:
    """Counts the examples passed to one feature map (``FeatureMap.__call__``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.monkeypatch = monkeypatch
        self.examples = 0

    def install(self, fmap: Any) -> None:
        # dunder lookup goes through the type, so patch the class (monkeypatch undoes it)
        original = type(fmap).__call__
        counter = self

        def counting(self: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
            if self is fmap:
                counter.examples += len(inputs)
            return original(self, inputs, *args, **kwargs)

        self.monkeypatch.setattr(type(fmap), "__call__", counting)


@pytest.fixture
def feature_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[FeatureCalls]:
    yield FeatureCalls(monkeypatch)


@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_train_features_are_reused(
    cls: type[cn.NTKAttribution], mlp: Case, feature_calls: FeatureCalls
) -> None:
    attr = make_attr(cls, mlp, batch_size=3)
    feature_calls.install(attr.feature_map)
    first = attr.influence(mlp.test_batch)
    assert feature_calls.examples == N_TEST + N_TRAIN
    feature_calls.examples = 0
    other_test = models.mlp_inputs(5, seed=99)
    second = attr.influence(other_test)
    assert feature_calls.examples == 5, "training features were recomputed"
    feature_calls.examples = 0
    attr.influence(mlp.test_batch, k=3)
    attr.self_influence()
    attr.fit_surrogate(**QUICK_GLM)
    attr.attribute(mlp.test_batch)
    assert feature_calls.examples == 2 * N_TEST, "training features were recomputed"

    # the smallest memory limit recomputes blocks but gives the same numbers
    limit = minimum_memory_limit(attr.feature_map, ModelInputs(mlp.train_x, {}))
    tight = make_attr(cls, mlp, batch_size=3, memory_limit=limit)
    assert_close(tight.influence(mlp.test_batch), first)
    assert_close(tight.influence(other_test), second)
    assert_close(tight.self_influence(), attr.self_influence())
    assert_close(tight.compute_train_kernel(), attr.compute_train_kernel())
    indices, scores = tight.influence(mlp.test_batch, k=4, proponents=False)
    expected_scores, expected_indices = torch.topk(first, 4, dim=1, largest=False)
    assert torch.equal(indices, expected_indices)
    assert_close(scores, expected_scores)
    tight.fit_surrogate(**QUICK_GLM)
    assert_close(tight.attribute(mlp.test_batch), attr.attribute(mlp.test_batch), ATTR_TOL)


# ------------------------------------------------------------------------------------------------
# models in train mode
# ------------------------------------------------------------------------------------------------
def test_train_mode_dropout_needs_eval_mode(mlp: Case) -> None:
    model = models.make_dropout_mlp()
    x = models.mlp_inputs(N_TRAIN, seed=1)
    data = TensorDataset(x, torch.arange(N_TRAIN) % 5)
    with pytest.raises(RuntimeError, match="train mode"):
        cn.TrNTKAttribution(model, data, batch_size=4)
    attr = cn.TrNTKAttribution(model, data, batch_size=4, eval_mode=True)
    scores = attr.influence(mlp.test_x[0])
    assert model.training and model.drop.training  # flags restored
    expected = cn.kernel_matrix(model, mlp.test_x[0], x, eval_mode=True)
    assert_close(scores, expected)
    assert model.training


def test_top_k_ties_go_to_the_lower_index_whatever_the_batch_size() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2)
    ).double()
    base = torch.randn(5, 3, dtype=torch.float64)
    x = torch.cat([base, base])  # every training point twice: ties everywhere
    y = torch.tensor([0, 1, 0, 1, 0] * 2)
    test = torch.randn(4, 3, dtype=torch.float64)
    results = []
    for bs in (1, 2, 3, 10):
        attr = cn.TrNTKAttribution(model, TensorDataset(x, y), batch_size=bs)
        results.append(attr.influence(test, k=4).indices)
    for r in results[1:]:
        assert torch.equal(r, results[0])
    # of each tied pair, the lower index comes first
    assert bool((results[0][:, 0] < 5).all())


# ------------------------------------------------------------------------------------------------
# self-influence scores
# ------------------------------------------------------------------------------------------------
SURROGATE_GLM = {"target": "labels", "alpha": 1e-2}


@pytest.mark.parametrize(
    "cls, raw", [(cn.TrNTKAttribution, "trntk0"), (cn.PNTKAttribution, "pntk0")]
)
def test_self_influence_norm_is_unnormalised_diagonal(
    cls: type[cn.NTKAttribution], raw: str, case: Case
) -> None:
    attr = make_attr(cls, case)
    expected = cn.kernel_matrix(case.model, case.kernel_inputs(case.train_x), kernel=raw)
    assert_close(attr.self_influence(score="norm"), expected.diagonal())
    assert torch.equal(attr.self_influence(), torch.ones(N_TRAIN, dtype=torch.float64))


@pytest.mark.parametrize("case_name", ["mlp", "single_logit"])
def test_surrogate_self_scores_match_attribute(case_name: str) -> None:
    case = CASES[case_name]()
    attr = make_attr(cn.TrNTKAttribution, case)
    attr.fit_surrogate(**SURROGATE_GLM)
    full = attr.attribute(case.dataset)  # (N, L, N), brute force over the training set
    if full.shape[1] == 1:  # binary kGLM: class 0 gets the negated attributions
        full = torch.cat([-full, full], dim=1)
    y = case.train_y
    i = torch.arange(N_TRAIN)
    assert_close(attr.self_influence(score="self_attribution"), full[i, y, i], 1e-10)
    rest = full.sum(dim=2) - full[i, :, i]  # (N, L): sum over j != i
    own = rest[i, y]
    other = rest.scatter(1, y[:, None], -torch.inf).amax(dim=1)
    assert_close(attr.self_influence(score="surrogate"), other - own, 1e-10)


def test_surrogate_self_influence_flags_mislabelled_digits() -> None:
    from captum_ntk.apps.datasets import load_digits_tensors
    from captum_ntk.apps.models import DigitsMLP, train_classifier

    x, y, _, _ = load_digits_tensors(train_size=300, test_size=100, seed=0)
    gen = torch.Generator().manual_seed(0)
    flipped = torch.randperm(len(y), generator=gen)[: len(y) // 20]  # 5% of the labels
    noisy = y.clone()
    noisy[flipped] = (y[flipped] + torch.randint(1, 10, (len(flipped),), generator=gen)) % 10
    model = train_classifier(DigitsMLP(hidden=32, seed=0), x, noisy, epochs=30).double()
    attr = cn.TrNTKAttribution(model, TensorDataset(x.double(), noisy), batch_size=100)

    def mean_rank(score: Tensor) -> float:  # 0 = ranked first, 1 = ranked last
        ranks = torch.empty(len(score))
        ranks[score.argsort(descending=True, stable=True)] = torch.arange(len(score)).float()
        return (ranks[flipped].mean() / len(score)).item()

    kernel_diagonal = attr.self_influence()
    assert torch.equal(kernel_diagonal, torch.ones_like(kernel_diagonal))  # no information
    for alpha in (1e-1, 1e-2, 1e-4):  # strongly to weakly regularised kGLMs
        attr.fit_surrogate(target="labels", alpha=alpha)
        assert mean_rank(attr.self_influence(score="surrogate")) < 0.25, alpha


def test_self_influence_argument_errors(mlp: Case) -> None:
    attr = make_attr(cn.TrNTKAttribution, mlp)
    with pytest.raises(ValueError, match="score must be one of"):
        attr.self_influence(score="loss")
    with pytest.raises(ValueError, match="training examples only"):
        attr.self_influence(mlp.test_batch, score="surrogate")
    with pytest.raises(ValueError, match=r"shape \(11,\)"):
        attr.self_influence(score="surrogate", labels=torch.zeros(N_TRAIN, 3))
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        attr.self_influence(score="self_attribution", labels=torch.full((N_TRAIN,), 3))
    with pytest.raises(ValueError, match="score='surrogate'"):
        attr.self_influence(labels=mlp.train_y)
    unlabelled = make_attr(cn.TrNTKAttribution, mlp, data=mlp.train_x[0])
    with pytest.raises(ValueError, match="pass labels="):
        unlabelled.self_influence(score="surrogate")


# ------------------------------------------------------------------------------------------------
# label-aware ranking: influence(rank_by="attribution")
# ------------------------------------------------------------------------------------------------
def brute_force_attribution(attr: cn.NTKAttribution, case: Case, labelled: bool) -> Tensor:
    """A(x, x_i)^{c(x)} from attribute(): c = the label, or the argmax of the summed logits."""
    full = attr.attribute(case.test_batch)  # (n, L, N)
    if full.shape[1] == 1:
        full = torch.cat([-full, full], dim=1)
    classes = case.test_y if labelled else full.sum(dim=2).argmax(dim=1)
    return full[torch.arange(len(classes)), classes]


@pytest.mark.parametrize("labelled", [True, False], ids=["labels", "predicted"])
@pytest.mark.parametrize("cls", [cn.TrNTKAttribution, cn.ProjPNTKAttribution], ids=str)
def test_rank_by_attribution_matches_brute_force(
    cls: type[cn.NTKAttribution], case: Case, labelled: bool
) -> None:
    attr = make_attr(cls, case, batch_size=3)
    attr.fit_surrogate(**SURROGATE_GLM)
    expected = brute_force_attribution(attr, case, labelled)
    inputs = case.test_batch if labelled else case.kernel_inputs(case.test_x)
    if not labelled and len(case.test_x) > 1:
        pytest.skip("a multi-input batch without labels reads its last input as labels")
    assert_close(attr.influence(inputs, rank_by="attribution"), expected, 1e-10)
    for proponents in (True, False):
        for k in (1, 4, N_TRAIN):
            top = attr.influence(inputs, k=k, proponents=proponents, rank_by="attribution")
            scores, indices = torch.topk(expected, k, dim=1, largest=proponents)
            assert torch.equal(top.indices, indices)
            assert_close(top.influence_scores, scores, 1e-10)


def test_rank_by_attribution_is_memory_bounded_and_blocksize_free(mlp: Case) -> None:
    attr = make_attr(cn.TrNTKAttribution, mlp, batch_size=4)
    glm = attr.fit_surrogate(**SURROGATE_GLM)
    limit = minimum_memory_limit(attr.feature_map, ModelInputs(mlp.train_x, {}))
    tight = make_attr(cn.TrNTKAttribution, mlp, batch_size=2, memory_limit=limit)
    tight.surrogate = glm
    for proponents in (True, False):
        a = attr.influence(mlp.test_batch, k=5, proponents=proponents, rank_by="attribution")
        b = tight.influence(mlp.test_batch, k=5, proponents=proponents, rank_by="attribution")
        assert torch.equal(a.indices, b.indices)
        assert_close(a.influence_scores, b.influence_scores, 1e-10)


def test_influence_argument_errors(mlp: Case) -> None:
    attr = make_attr(cn.TrNTKAttribution, mlp)
    for k in (0, -1, N_TRAIN + 1):
        with pytest.raises(ValueError, match=rf"k must lie in \[1, {N_TRAIN}\]"):
            attr.influence(mlp.test_batch, k=k)
    for k in (2.5, True, "3"):
        with pytest.raises(TypeError, match="k must be an int"):
            attr.influence(mlp.test_batch, k=k)
    with pytest.raises(ValueError, match="rank_by must be one of"):
        attr.influence(mlp.test_batch, rank_by="loss")
    with pytest.raises(TypeError, match="proponents must be True or False"):
        attr.influence(mlp.test_batch, k=2, proponents="yes")
    attr.fit_surrogate(**SURROGATE_GLM)
    (x,) = mlp.test_x
    one_hot = torch.nn.functional.one_hot(mlp.test_y, 3)
    with pytest.raises(ValueError, match="21 labels for 7 examples"):
        attr.influence((x, one_hot), k=2, rank_by="attribution")
    with pytest.raises(ValueError, match=r"must lie in \[0, 3\)"):
        attr.influence((x, mlp.test_y + 3), k=2, rank_by="attribution")
    with pytest.raises(ValueError, match="integer class indices"):
        attr.influence((x, mlp.test_y + 0.5), rank_by="attribution")


# ---------------------------------------------------------------- projection options


def _projection_setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double()  # P = 147
    gen = torch.Generator().manual_seed(2)
    train = TensorDataset(torch.randn(N_TRAIN, 5, generator=gen, dtype=torch.float64))
    test = torch.randn(N_TEST, 5, generator=gen, dtype=torch.float64)
    return model, train, test


def test_projection_dim_defaults_to_the_rule_for_p():
    """No projection_dim: K = 2 ** floor(log2(147 / 4)) = 32 (below the 10240 cap)."""
    model, train, test = _projection_setup()
    for cls, kernel in (
        (cn.ProjPNTKAttribution, "proj_pntk"),
        (cn.ProjTrNTKAttribution, "proj_trntk"),
    ):
        attr = cls(model, train, batch_size=4)
        assert attr.feature_map.projection.projection_dim == 32
        expected = cn.kernel_matrix(model, test, train.tensors[0], kernel=kernel, projection_dim=32)
        torch.testing.assert_close(attr.influence(test), expected, rtol=KERNEL_TOL, atol=0)


@pytest.mark.parametrize(
    "options",
    [
        {"projection": "sjlt"},
        {"projection": "gaussian", "seed": 3},
        {"projection": "kronecker", "projection_dim": 16},
        {"precision": "bf16", "projection_dim": 16},
    ],
)
def test_projection_kind_and_precision_pass_through(options):
    model, train, test = _projection_setup()
    attr = cn.ProjPNTKAttribution(model, train, batch_size=4, **options)
    expected = cn.kernel_matrix(model, test, train.tensors[0], kernel="proj_pntk", **options)
    default = cn.kernel_matrix(model, test, train.tensors[0], kernel="proj_pntk")
    torch.testing.assert_close(attr.influence(test), expected, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(expected, default)  # the option changed the kernel


def test_engine_passes_through_to_exact_kernels():
    model, train, test = _projection_setup()
    with pytest.raises(ValueError, match="engine='gram'"):
        cn.EmbeddingKernelAttribution(model, train, engine="gram")
    # projected kernels: engine="gram" takes per-example gradients from the capture
    func = cn.ProjPNTKAttribution(model, train, batch_size=4, projection_dim=16)
    captured = cn.ProjPNTKAttribution(model, train, batch_size=4, projection_dim=16, engine="gram")
    torch.testing.assert_close(
        func.influence(test), captured.influence(test), rtol=1e-10, atol=1e-12
    )
    jac = cn.TrNTKAttribution(model, train, batch_size=4, engine="jacobian")
    gram = cn.TrNTKAttribution(model, train, batch_size=4, engine="gram")
    torch.testing.assert_close(jac.influence(test), gram.influence(test), rtol=1e-10, atol=1e-12)


def test_two_logit_network_gets_one_attribution_row_per_logit() -> None:
    """Issue 17 (5): target='labels' on a 2-logit network fits a one-logit binary kGLM; its
    attributions still have one row per network logit (the equivalent softmax rows)."""
    model = models.make_mlp(d_out=2)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(30, 6, generator=generator, dtype=torch.float64)
    y = torch.arange(30) % 2
    xt = torch.randn(5, 6, generator=generator, dtype=torch.float64)
    attr = cn.TrNTKAttribution(model, TensorDataset(x, y), batch_size=8)
    glm = attr.fit_surrogate(target="labels", alpha=1e-2)
    assert glm.coef_.shape == (1, 30)  # sklearn's binary layout
    full = attr.attribute(xt)
    assert full.shape == (5, 2, 30)
    probs = torch.softmax(full.sum(dim=2), dim=1)
    assert_close(probs, glm.predict_proba(attr.influence(xt)))
    assert_close(full[:, 0], -full[:, 1])
    assert_close(attr.attribute(xt, target=1), full[:, 1])
    assert_close(attr.attribute(xt, target=[0, 1, 0, 1, 1]), full[torch.arange(5), [0, 1, 0, 1, 1]])
    # the default (logits) target already has two rows
    attr.fit_surrogate(alpha=1e-2)
    assert attr.attribute(xt).shape == (5, 2, 30)
