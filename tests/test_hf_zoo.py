"""A zoo of tiny random transformers sequence classifiers against the per-example definition.

Each model is built from a config (no download), in float64. Its kernels on a padded batch (right
or left padding, sentences of different lengths) must equal a naive per-example loop over the
*unpadded* sentences (``tests/reference.py``: one forward and one ``torch.autograd.grad`` per logit,
no attention mask), so a wrong mask, a padded token that leaks, or a wrong conjugate-kernel layer
shows up as a mismatch.

Tolerance: 1e-10 relative, except ModernBERT. transformers computes parts of ModernBERT's attention
in float32 even for a float64 model (the rotary embedding is applied to ``q.float()``, the softmax
takes ``dtype=torch.float32``), so padded and unpadded runs of the same sentence agree only to about
float32 rounding; ModernBERT is checked to 1e-6 (a dropped sliding window gives ~1e-4 here).
ModernBERT's sentences are longer than its local attention window (8 tokens), so its local layers'
window is exercised; both classifier poolings (``cls``, ``mean``) and an all-global variant are
covered. Decoder classifiers (GPT-2, Llama, Qwen2, Mistral with a sliding window) are checked on
their gradient kernels, pooled at the last real token, with right and left padding.
"""

from __future__ import annotations

import functools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import reference as ref  # noqa: E402
import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

transformers = pytest.importorskip("transformers")

import captum_ntk as cn  # noqa: E402
from captum_ntk.integrations.huggingface.vmap import computes_in_float32  # noqa: E402

transformers.logging.set_verbosity_error()

VOCAB = 40
FIRST_TOKEN = 4  # ids below are special (pad, cls, sep, ...) in the configs below
PROJ_DIM = 16
TOL64 = 1e-10
TOL_FLOAT32_INSIDE = 1e-6
LENGTHS1 = (5, 17, 11)  # longer than ModernBERT's window (local_attention = 8)
LENGTHS2 = (14, 3)
KERNELS = ("trntk", "pntk", "proj_trntk", "ck", "embedding")

_BERT = dict(
    hidden_size=8,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=16,
    max_position_embeddings=40,
)
_MODERNBERT = dict(
    hidden_size=16,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=16,
    max_position_embeddings=40,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    cls_token_id=1,
    sep_token_id=2,
    local_attention=8,
    global_attn_every_n_layers=3,
)


def _configs() -> dict[str, tuple[type, object, str]]:
    """name -> (model class, config, name of the classifier's last nn.Linear)."""
    T = transformers
    common = dict(vocab_size=VOCAB, num_labels=3, attn_implementation="eager")
    return {
        "bert": (T.BertForSequenceClassification, T.BertConfig(**_BERT, **common), "classifier"),
        "distilbert": (
            T.DistilBertForSequenceClassification,
            T.DistilBertConfig(
                dim=8, n_layers=2, n_heads=2, hidden_dim=16, max_position_embeddings=40, **common
            ),
            "classifier",
        ),
        "roberta": (
            T.RobertaForSequenceClassification,
            T.RobertaConfig(**_BERT, pad_token_id=1, **common),
            "classifier.out_proj",
        ),
        "albert": (
            T.AlbertForSequenceClassification,
            T.AlbertConfig(embedding_size=4, **_BERT, **common),
            "classifier",
        ),
        "electra": (
            T.ElectraForSequenceClassification,
            T.ElectraConfig(embedding_size=4, **_BERT, **common),
            "classifier.out_proj",
        ),
        "deberta_v2": (
            T.DebertaV2ForSequenceClassification,
            T.DebertaV2Config(
                **_BERT,
                relative_attention=True,
                pos_att_type=["c2p", "p2c"],
                position_buckets=8,
                **common,
            ),
            "classifier",
        ),
        "xlm_roberta": (
            T.XLMRobertaForSequenceClassification,
            T.XLMRobertaConfig(**_BERT, pad_token_id=1, **common),
            "classifier.out_proj",
        ),
        "mpnet": (
            T.MPNetForSequenceClassification,
            T.MPNetConfig(**_BERT, pad_token_id=1, **common),
            "classifier.out_proj",
        ),
        "modernbert_local_cls": (
            T.ModernBertForSequenceClassification,
            T.ModernBertConfig(**_MODERNBERT, classifier_pooling="cls", **common),
            "classifier",
        ),
        "modernbert_local_mean": (
            T.ModernBertForSequenceClassification,
            T.ModernBertConfig(**_MODERNBERT, classifier_pooling="mean", **common),
            "classifier",
        ),
        "modernbert_global": (
            T.ModernBertForSequenceClassification,
            T.ModernBertConfig(
                **{**_MODERNBERT, "global_attn_every_n_layers": 1},
                classifier_pooling="mean",
                **common,
            ),
            "classifier",
        ),
    }


MODELS = tuple(_configs())


@functools.cache
def zoo_model(name: str) -> tuple[nn.Module, str]:
    cls, config, head = _configs()[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sum(map(ord, name)))
        model = cls(config).eval().double()
    return model, head


def tolerance(name: str) -> float:
    return TOL_FLOAT32_INSIDE if name.startswith("modernbert") else TOL64


def sentences(lengths: tuple[int, ...], seed: int) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(FIRST_TOKEN, VOCAB, (n,), generator=gen) for n in lengths]


def padded(model: nn.Module, rows: list[Tensor], side: str) -> dict[str, Tensor]:
    """A tokenizer-style batch padded to the longest sentence + 2 on the given side."""
    pad_id = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    width = max(len(r) for r in rows) + 2
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    for i, row in enumerate(rows):
        span = slice(0, len(row)) if side == "right" else slice(width - len(row), width)
        input_ids[i, span] = row
        attention_mask[i, span] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def alone(rows: list[Tensor]) -> list[dict[str, Tensor]]:
    """Each sentence on its own: no padding, no attention mask (the definition)."""
    return [{"input_ids": row[None]} for row in rows]


@functools.cache
def loop_gradients(name: str, seed: int, lengths: tuple[int, ...]) -> Tensor:
    model, _ = zoo_model(name)
    names = ref.library_parameters(model)
    return torch.cat([ref.ref_gradients(model, x, names) for x in alone(sentences(lengths, seed))])


def loop_head_inputs(name: str, seed: int, lengths: tuple[int, ...]) -> Tensor:
    """(N, D) inputs of the classifier's last nn.Linear, named by hand (the true head)."""
    model, head = zoo_model(name)
    return torch.cat(
        [ref.ref_features(model, x, [head], True) for x in alone(sentences(lengths, seed))]
    )


def loop_embedding(
    name: str,
    rows1: list[Tensor],
    rows2: list[Tensor],
    model: nn.Module | None = None,
    layers: list[str] | None = None,
    use_input: bool = False,
) -> Tensor:
    """Cosine kernel of the outputs of every called parameterised leaf whose output is per example
    (batch dimension 1 for one sentence; MPNet's relative-position bias, (T, T, heads), is not);
    per-token outputs are compared position by position, the shorter sentence contributing zeros
    past its end. ``layers`` / ``use_input``: those layers' inputs instead (the conjugate kernel
    of a decoder, whose head reads every position)."""
    model = model if model is not None else zoo_model(name)[0]
    modules = dict(model.named_modules())
    layers = layers or ref.default_embedding_layers(model, alone(rows1)[0])

    def run(x: dict[str, Tensor]) -> dict[str, Tensor]:
        captured: dict[str, Tensor] = {}
        handles = [
            modules[layer].register_forward_hook(
                lambda _m, a, o, layer=layer, store=captured: store.__setitem__(
                    layer, (a[0] if use_input else o).detach()
                )
            )
            for layer in layers
        ]
        try:
            with torch.no_grad():
                model(**x)
        finally:
            for handle in handles:
                handle.remove()
        return captured

    layers = [layer for layer, out in run(alone(rows1)[0]).items() if out.shape[0] == 1]

    def activations(rows: list[Tensor]) -> list[list[Tensor]]:
        return [[run(x)[layer][0] for layer in layers] for x in alone(rows)]

    def dot(a: Tensor, b: Tensor) -> Tensor:
        if a.dim() >= 2:
            n = min(a.shape[0], b.shape[0])
            a, b = a[:n], b[:n]
        return (a * b).sum()

    acts1, acts2 = activations(rows1), activations(rows2)
    f64 = torch.float64
    gram = [[sum(float(dot(a, b)) for a, b in zip(r1, r2)) for r2 in acts2] for r1 in acts1]
    sq1 = [sum(float((a * a).sum()) for a in r) for r in acts1]
    sq2 = [sum(float((a * a).sum()) for a in r) for r in acts2]
    return ref.cosine_normalise(
        torch.tensor(gram, dtype=f64), torch.tensor(sq1, dtype=f64), torch.tensor(sq2, dtype=f64)
    )


def reference_kernel(name: str, kernel: str) -> Tensor:
    if kernel == "ck":
        return ref.cosine_gram(
            loop_head_inputs(name, 0, LENGTHS1), loop_head_inputs(name, 1, LENGTHS2)
        )
    if kernel == "embedding":
        return loop_embedding(name, sentences(LENGTHS1, 0), sentences(LENGTHS2, 1))
    g1, g2 = loop_gradients(name, 0, LENGTHS1), loop_gradients(name, 1, LENGTHS2)
    matrix = None
    if kernel.startswith("proj_"):
        matrix = cn.projection_matrix(g1.shape[-1], PROJ_DIM, seed=0, dtype=torch.float64)
    return ref.kernel_from_grads(g1, g2, kernel, matrix)


def assert_rel(actual: Tensor, expected: Tensor, tol: float) -> None:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    error = float((actual - expected).abs().max() / expected.abs().max())
    assert error <= tol, f"relative error {error:.3g} > {tol:g}"


# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("name", MODELS)
def test_kernels_equal_unpadded_loop(name: str, side: str) -> None:
    model, _ = zoo_model(name)
    batch1 = padded(model, sentences(LENGTHS1, 0), side)
    batch2 = padded(model, sentences(LENGTHS2, 1), "left" if side == "right" else "right")
    for kernel in KERNELS:
        options = {"projection_dim": PROJ_DIM} if kernel.startswith("proj_") else {}
        result = cn.kernel_matrix(model, batch1, batch2, kernel=kernel, batch_size=2, **options)
        assert result.dtype == torch.float64
        try:
            assert_rel(result, reference_kernel(name, kernel), tolerance(name))
        except AssertionError as err:
            raise AssertionError(f"{kernel}: {err}") from None


def test_modernbert_sentences_exceed_the_window() -> None:
    """The ModernBERT cases really exercise the local window (else the test could not fail)."""
    model, _ = zoo_model("modernbert_local_cls")
    assert "sliding_attention" in model.config.layer_types
    assert max(LENGTHS1) > model.config.sliding_window + 1
    assert max(LENGTHS2) > model.config.sliding_window + 1


_DECODER = dict(
    vocab_size=VOCAB,
    hidden_size=8,
    intermediate_size=16,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    max_position_embeddings=40,
    pad_token_id=0,
    num_labels=3,
    attn_implementation="eager",
)


def _decoder_configs() -> dict[str, tuple[type, object]]:
    """Tiny random decoder classifiers: GPT-2 (Conv1D, learned positions), Llama, Qwen2 and
    Mistral (rotary, grouped-query attention; Mistral with a sliding window shorter than the
    longest sentence)."""
    T = transformers
    configs = {
        "gpt2": (
            T.GPT2ForSequenceClassification,
            T.GPT2Config(
                vocab_size=VOCAB,
                n_positions=40,
                n_embd=8,
                n_layer=2,
                n_head=2,
                pad_token_id=0,
                num_labels=3,
                attn_implementation="eager",
            ),
        ),  # fmt: skip
        "gpt2_pad_is_eos": (
            T.GPT2ForSequenceClassification,
            T.GPT2Config(
                vocab_size=VOCAB,
                n_positions=40,
                n_embd=8,
                n_layer=2,
                n_head=2,
                pad_token_id=2,
                eos_token_id=2,
                bos_token_id=2,
                num_labels=3,
                attn_implementation="eager",
            ),
        ),  # fmt: skip
        "llama": (T.LlamaForSequenceClassification, T.LlamaConfig(**_DECODER)),
        "qwen2_mixed_window": (
            T.Qwen2ForSequenceClassification,
            T.Qwen2Config(
                **{**_DECODER, "num_hidden_layers": 3},
                use_sliding_window=True,
                sliding_window=4,
                max_window_layers=1,
            ),
        ),  # fmt: skip
        "gemma": (
            getattr(T, "GemmaForSequenceClassification", None),
            getattr(T, "GemmaConfig", dict)(**_DECODER, head_dim=4),
        ),
        "qwen2": (T.Qwen2ForSequenceClassification, T.Qwen2Config(**_DECODER)),
        "mistral": (
            T.MistralForSequenceClassification,
            T.MistralConfig(**_DECODER, sliding_window=6),
        ),
    }
    return {k: v for k, v in configs.items() if v[0] is not None}


@functools.cache
def decoder_model(name: str) -> nn.Module:
    cls, config = _decoder_configs()[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(sum(map(ord, name)))
        return cls(config).eval().double()


DECODER_KERNELS = ("trntk", "pntk", "proj_trntk")

#: Llama, Qwen2 and Mistral take the attention softmax in float32 (``softmax(..., dtype=float32)``
#: in their eager attention) even for a float64 model; a padded run sums over more (masked, zero)
#: keys than the unpadded one, so the two agree to float32 rounding of the attention weights,
#: about 1e-8 relative on these kernels (measured: 1e-10 to 1e-8). GPT-2 is float64 throughout.
TOL_FLOAT32_SOFTMAX = 2e-8
#: the same rounding on the per-token activation kernels (measured up to 2.8e-8 on Llama)
TOL_FLOAT32_SOFTMAX_ACTIVATIONS = 5e-8


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize(
    "name",
    ["gpt2", "gpt2_pad_is_eos", "llama", "qwen2", "qwen2_mixed_window", "mistral", "gemma"],
)
def test_decoder_kernels_equal_unpadded_loop(name: str, side: str) -> None:
    """Causal decoders pooled at the last real token: padded batches (either side) give the
    kernels of the unpadded sentences, one at a time (also with GPT-2's habit of padding with
    its end-of-sequence token, which the sentences then end with)."""
    if name not in _decoder_configs():
        pytest.skip(f"this transformers has no {name}")
    model = decoder_model(name)
    rows1, rows2 = sentences(LENGTHS1, 0), sentences(LENGTHS2, 1)
    if name == "gpt2_pad_is_eos":  # sentences that end with the eos token, which is also pad
        eos = model.config.eos_token_id
        rows1 = [torch.cat([r, torch.tensor([eos])]) for r in rows1]
    batch1 = padded(model, rows1, side)
    batch2 = padded(model, rows2, "left" if side == "right" else "right")
    names = ref.library_parameters(model)
    g1 = torch.cat([ref.ref_gradients(model, x, names) for x in alone(rows1)])
    g2 = torch.cat([ref.ref_gradients(model, x, names) for x in alone(rows2)])
    for kernel in DECODER_KERNELS:
        options = {"projection_dim": PROJ_DIM} if kernel.startswith("proj_") else {}
        matrix = None
        if kernel.startswith("proj_"):
            matrix = cn.projection_matrix(g1.shape[-1], PROJ_DIM, seed=0, dtype=torch.float64)
        result = cn.kernel_matrix(model, batch1, batch2, kernel=kernel, batch_size=2, **options)
        try:
            tol = TOL_FLOAT32_SOFTMAX if computes_in_float32(model) else TOL64
            assert_rel(result, ref.kernel_from_grads(g1, g2, kernel, matrix), tol)
        except AssertionError as err:
            raise AssertionError(f"{kernel}: {err}") from None


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_decoder_activation_kernels_equal_unpadded_loop(name: str) -> None:
    """ck over the head's input (a decoder applies its head at every position before pooling, so
    the default refuses and names ``layers=``) and the embedding kernel, per token with padding
    zeroed, equal the unpadded sentences'."""
    model = decoder_model(name)
    rows1, rows2 = sentences(LENGTHS1, 0), sentences(LENGTHS2, 1)
    batch1, batch2 = padded(model, rows1, "left"), padded(model, rows2, "right")
    tol = TOL_FLOAT32_SOFTMAX_ACTIVATIONS if computes_in_float32(model) else TOL64
    with pytest.raises(ValueError, match="layers="):
        cn.kernel_matrix(model, batch1, batch2, kernel="ck")
    ck = cn.kernel_matrix(model, batch1, batch2, kernel="ck", layers=["score"], batch_size=2)
    assert_rel(ck, loop_embedding(name, rows1, rows2, model, ["score"], use_input=True), tol)
    emb = cn.kernel_matrix(model, batch1, batch2, kernel="embedding", batch_size=2)
    assert_rel(emb, loop_embedding(name, rows1, rows2, model), tol)


def test_gpt2_is_float64_throughout() -> None:
    """The strict tolerance really applies to GPT-2 (else the looser one would hide a bug)."""
    assert not computes_in_float32(decoder_model("gpt2"))


def test_mistral_sentences_exceed_its_window() -> None:
    if "mistral" not in _decoder_configs():
        pytest.skip("this transformers has no Mistral")
    assert max(LENGTHS1) > decoder_model("mistral").config.sliding_window + 1
    mixed = decoder_model("qwen2_mixed_window").config  # one mask per layer type
    assert set(mixed.layer_types) == {"full_attention", "sliding_attention"}
    assert max(LENGTHS1) > mixed.sliding_window + 1
