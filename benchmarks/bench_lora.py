"""A LoRA-adapted decoder classifier: the kernel over the adapters, three ways, on the CPU.

A random Llama-shaped decoder (``--hidden`` wide, ``--layers`` deep, grouped-query attention)
wrapped by ``peft.get_peft_model`` with rank-``--rank`` LoRA on ``q_proj`` and ``v_proj``; N
sentences of ``--tokens`` tokens (a few padded shorter). Each way runs in its own subprocess, so
its peak resident memory (``ru_maxrss``) is its own:

* ``captum_ntk exact``: ``cn.kernel_matrix(model, batch, kernel="trntk")``, the default parameter
  selection (the adapters and the head), default engine;
* ``captum_ntk proj``: ``kernel="proj_trntk"`` with K = ``--projection-dim``;
* ``plain torch.func``: ``vmap(jacrev)`` of the logits with respect to the trainable parameters
  over all N padded examples at once (masks prepared as the library does), then the contraction.

Prints tokens/s, examples/s and peak RSS per way, and the relative difference of the exact
kernels. Usage::

    python benchmarks/bench_lora.py
    python benchmarks/bench_lora.py --n 64 --tokens 32 --hidden 64 --layers 2
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import subprocess
import sys
import time

import torch


def build(args: argparse.Namespace):
    import peft
    import transformers

    transformers.logging.set_verbosity_error()
    config = transformers.LlamaConfig(
        vocab_size=1000, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
        num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2 * args.tokens, pad_token_id=0, num_labels=4,
        attn_implementation="eager",
    )  # fmt: skip
    torch.manual_seed(0)
    base = transformers.LlamaForSequenceClassification(config).eval()
    lora = peft.LoraConfig(task_type="SEQ_CLS", r=args.rank, lora_alpha=2 * args.rank,
                           lora_dropout=0.0, target_modules=["q_proj", "v_proj"])  # fmt: skip
    model = peft.get_peft_model(base, lora).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 1000, (args.n, args.tokens), generator=gen)
    mask = torch.ones_like(ids)
    mask[: args.n // 4, args.tokens // 2 :] = 0  # a quarter padded to half length
    return model, {"input_ids": ids * mask, "attention_mask": mask}


def run_way(way: str, args: argparse.Namespace) -> dict:
    import captum_ntk as cn

    torch.set_num_threads(args.threads)
    model, batch = build(args)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    start = time.perf_counter()
    if way == "exact":
        kernel = cn.kernel_matrix(model, batch, kernel="trntk")
    elif way == "proj":
        kernel = cn.kernel_matrix(model, batch, kernel="proj_trntk",
                                  projection_dim=args.projection_dim)  # fmt: skip
    else:
        kernel = plain_torch_func(model, batch)
    seconds = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    torch.save(kernel, f"/tmp/bench_lora_{way}.pt")
    return {"way": way, "seconds": seconds, "peak_rss_mb": rss, "trainable": trainable}


def plain_torch_func(model, batch) -> torch.Tensor:
    """vmap(jacrev) over every example at once, then the trace kernel, cosine-normalised."""
    from torch.func import functional_call, jacrev, vmap

    from captum_ntk.integrations import huggingface as hf

    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    inner = next(m for m in model.modules() if hf.is_hf_model(m))
    prepared = hf.prepare_inputs(inner, hf.trim_padding(batch))

    def logits(p, example):
        example = {k: v.unsqueeze(0) for k, v in example.items()}
        return functional_call(model, {**frozen, **p}, (), example).logits[0]

    with hf.vmap_safe(inner):
        jac = vmap(jacrev(logits), in_dims=(None, 0))(params, prepared)
    flat = torch.cat([j.reshape(j.shape[0], j.shape[1], -1) for j in jac.values()], dim=2)
    flat = flat.reshape(flat.shape[0], -1)
    gram = flat @ flat.T
    norms = gram.diagonal().sqrt()
    return gram / norms[:, None] / norms[None, :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--projection-dim", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--way", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.way is not None:
        print(json.dumps(run_way(args.way, args)))
        return
    print(f"{datetime.date.today()}  {platform.machine()} CPU, torch {torch.__version__}, "
          f"{args.threads} thread(s); N={args.n}, {args.tokens} tokens, hidden {args.hidden}, "
          f"{args.layers} layers, LoRA rank {args.rank} on q_proj/v_proj")  # fmt: skip
    rows = []
    for way in ("exact", "proj", "plain"):
        cmd = [sys.executable, __file__, "--way", way] + [
            f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "way"
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    tokens = args.n * args.tokens
    names = {"exact": "captum_ntk exact trNTK", "proj": f"captum_ntk proj-trNTK K={args.projection_dim}",
             "plain": "plain torch.func (vmap(jacrev), all at once)"}  # fmt: skip
    print(f"trainable parameters (adapters + head): {rows[0]['trainable']}")
    print(f"{'way':<46} {'seconds':>8} {'tokens/s':>10} {'examples/s':>11} {'peak RSS MB':>12}")
    for r in rows:
        print(f"{names[r['way']]:<46} {r['seconds']:>8.2f} {tokens / r['seconds']:>10.0f} "
              f"{args.n / r['seconds']:>11.1f} {r['peak_rss_mb']:>12.0f}")  # fmt: skip
    exact, plain = torch.load("/tmp/bench_lora_exact.pt"), torch.load("/tmp/bench_lora_plain.pt")
    diff = float((exact.double() - plain.double()).abs().max() / plain.double().abs().max())
    print(f"exact vs plain torch.func kernel: max relative difference {diff:.2e} (float32)")


if __name__ == "__main__":
    main()
