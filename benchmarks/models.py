"""The three benchmark model families, with seeded random inputs of the right shape.

- ``mlp``: the MNIST-shaped MLP 784-512-512-10 (P = 669,706), inputs (N, 784).
- ``resnet``: the CIFAR-shaped ResNet-18 of ``captum_ntk.apps.reproduce.paper_models``
  (P = 11,173,962), inputs (N, 3, 32, 32).
- ``minilm``: a BERT sequence classifier with all-MiniLM-L6-v2's configuration (vocabulary
  30,522, 6 layers, hidden 384, 12 heads, intermediate 1536; random weights, 2 labels;
  P = 22,713,986), inputs ``{"input_ids", "attention_mask", "token_type_ids"}`` of 32 tokens,
  each sequence a random length in [8, 32] padded with the [PAD] id 0 and mask 0.

Every model is in eval mode, float32, on the CPU (move it with ``.to(device)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

MODEL_NAMES = ("mlp", "resnet", "minilm")
#: tokens per MiniLM sequence (padded)
SEQ_LEN = 32


def mlp(*widths: int) -> nn.Sequential:
    r"""A ReLU MLP over flattened inputs.

    Args:
        *widths (int): layer widths, input first, e.g. ``mlp(784, 512, 512, 10)``.

    Returns:
        nn.Sequential: Flatten, then Linear / ReLU pairs (no ReLU after the last Linear).
    """
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(nn.Flatten(), *layers)


@dataclass
class BenchModel:
    """A model with its name and a generator of N seeded random inputs."""

    name: str
    model: nn.Module
    title: str

    @property
    def num_params(self) -> int:
        """P: the number of trainable parameters."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def inputs(self, n: int, device: torch.device | str = "cpu") -> Any:
        r"""N seeded random inputs (the global RNG is untouched).

        Args:
            n (int): number of examples.
            device (torch.device or str): where the tensors go.

        Returns:
            Tensor or dict[str, Tensor]: a Tensor (mlp: (N, 784), resnet: (N, 3, 32, 32)) or,
            for minilm, keyword inputs of shape (N, 32).
        """
        gen = torch.Generator().manual_seed(1234)
        if self.name == "mlp":
            return torch.randn(n, 784, generator=gen).to(device)
        if self.name == "resnet":
            return torch.randn(n, 3, 32, 32, generator=gen).to(device)
        return _token_inputs(n, self.model.config.vocab_size, gen, device)


def _token_inputs(
    n: int, vocab: int, gen: torch.Generator, device: torch.device | str
) -> dict[str, Tensor]:
    """Random token ids ([CLS] first, [SEP] last, then [PAD] = 0) with their attention masks."""
    lengths = torch.randint(8, SEQ_LEN + 1, (n,), generator=gen)
    lengths[0] = SEQ_LEN  # at least one full-length sequence: every block is 32 tokens wide
    ids = torch.randint(1000, vocab, (n, SEQ_LEN), generator=gen)
    mask = (torch.arange(SEQ_LEN) < lengths[:, None]).long()
    ids[:, 0] = 101
    ids[torch.arange(n), lengths - 1] = 102
    ids = ids * mask
    out = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    return {k: v.to(device) for k, v in out.items()}


def minilm_classifier(seed: int = 0) -> nn.Module:
    r"""A random-weight BERT classifier with all-MiniLM-L6-v2's configuration and 2 labels.

    Args:
        seed (int): seed of the weights (the global RNG is untouched).

    Returns:
        nn.Module: ``transformers.BertForSequenceClassification`` in eval mode.
    """
    import transformers

    transformers.logging.set_verbosity_error()
    config = transformers.BertConfig(
        vocab_size=30522,
        hidden_size=384,
        num_hidden_layers=6,
        num_attention_heads=12,
        intermediate_size=1536,
        max_position_embeddings=512,
        num_labels=2,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return transformers.BertForSequenceClassification(config).eval()


def build_model(name: str) -> BenchModel:
    r"""One of the benchmark models, seeded.

    Args:
        name (str): "mlp", "resnet" or "minilm".

    Returns:
        BenchModel: the model (eval mode, float32, CPU) and its input generator.
    """
    if name == "mlp":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = mlp(784, 512, 512, 10).eval()
        return BenchModel(name, net, "MLP 784-512-512-10")
    if name == "resnet":
        from captum_ntk.apps.reproduce.paper_models import resnet18_cifar

        return BenchModel(name, resnet18_cifar(seed=0).eval(), "ResNet-18 CIFAR 3x32x32")
    if name == "minilm":
        return BenchModel(
            name, minilm_classifier(), f"MiniLM-sized BERT (random weights), {SEQ_LEN} tokens"
        )
    raise ValueError(f"Unknown model {name!r}; choose from {MODEL_NAMES}.")
