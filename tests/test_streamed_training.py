"""The attribution classes stream a training Dataset / DataLoader block by block, never whole.

Every result of an object built on a Dataset, a DataLoader (another batch size), a list of
examples or an IterableDataset equals the object built on the same training tensors held in
memory, while the training set is never collected and no batch larger than a block (or one
loader batch) is ever built.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import models
import pytest
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import captum_ntk as cn
from captum_ntk.attribution import training_data
from captum_ntk.attribution.state import ModelChangedWarning
from captum_ntk.attribution.training_data import PROBE_EXAMPLES
from captum_ntk.engine.data import batches
from captum_ntk.engine.data.inputs import ModelInputs
from captum_ntk.engine.data.streaming import StreamedInputs, StreamingSource, is_streamable

transformers = pytest.importorskip("transformers")

N_TRAIN, N_TEST, BLOCK, LOADER_BATCH = 23, 4, 5, 7
GLM = {"target": "labels", "alpha": 1e-2, "max_iter": 15}
CLASSES = list(cn.ATTRIBUTION_CLASSES.values())
IDS = [cls.__name__ for cls in CLASSES]

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def options(cls: type[cn.NTKAttribution]) -> dict[str, Any]:
    return {"projection_dim": 16, "seed": 3} if cls.kernel.startswith("proj_") else {}


class CountingDataset(Dataset):
    """A map-style dataset of (x_i, y_i) that records every example read."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y
        self.reads = 0

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        self.reads += 1
        return self.x[i], self.y[i]


class Stream(IterableDataset):
    """An IterableDataset of (x_i, y_i) (no len, no indexing)."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        return iter(zip(self.x, self.y))


def data_forms(x: Tensor, y: Tensor) -> dict[str, Any]:
    return {
        "dataset": CountingDataset(x, y),
        "loader": DataLoader(TensorDataset(x, y), batch_size=LOADER_BATCH),
        "examples": list(zip(x, y)),
        "iterable": Stream(x, y),
    }


@pytest.fixture
def guarded(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Refuses to collect a training Dataset / DataLoader; records the largest ModelInputs
    built (reset it after building an in-memory reference)."""
    largest = {"n": 0}
    collect = batches.collect

    def refuse(data: Any, batch_size: int, name: str = "train_dataset") -> Any:
        if name == "train_dataset" and is_streamable(data):
            raise AssertionError("the training set was collected whole")
        return collect(data, batch_size, name)

    init = ModelInputs.__init__

    def tracked(self: ModelInputs, args: tuple, kwargs: dict) -> None:
        init(self, args, kwargs)
        tensors = list(args) + list(kwargs.values())
        largest["n"] = max([largest["n"]] + [int(t.shape[0]) for t in tensors if t.dim()])

    monkeypatch.setattr(training_data, "collect", refuse)
    monkeypatch.setattr(ModelInputs, "__init__", tracked)
    return largest


def results(attr: cn.NTKAttribution, test: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
    """Every training-set result of an attribution object."""
    out = {
        "influence": attr.influence(test),
        "self_kernel": attr.self_influence(),
        "self_norm": attr.self_influence(score="norm"),
        "train_kernel": attr.compute_train_kernel(),
        "logits": attr.model_logits(),
    }
    top = attr.influence(test, k=3, proponents=False)
    out["top_indices"], out["top_scores"] = top.indices, top.influence_scores
    glm = attr.fit_surrogate(**GLM)
    out["coef"], out["intercept"] = glm.coef_, glm.intercept_
    out["attribute"] = attr.attribute(test)
    ranked = attr.influence(test, k=3, rank_by="attribution")
    out["rank_indices"], out["rank_scores"] = ranked.indices, ranked.influence_scores
    out["surrogate"] = attr.self_influence(score="surrogate")
    return out


def assert_same(actual: dict[str, Tensor], expected: dict[str, Tensor], tol: float = 0.0) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        if tol == 0.0 or not value.is_floating_point():
            assert torch.equal(actual[key], value), key
        else:
            scale = max(1.0, float(value.abs().max()))
            assert float((actual[key] - value).abs().max()) <= tol * scale, key


@pytest.mark.parametrize("form", ["dataset", "loader", "examples", "iterable"])
@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_streamed_equals_in_memory(cls, form, guarded) -> None:
    model = models.make_mlp()
    x, y = models.mlp_inputs(N_TRAIN), torch.arange(N_TRAIN) % 5
    test = (models.mlp_inputs(N_TEST, seed=7), torch.arange(N_TEST) % 5)
    expected = results(cls(model, (x, y), batch_size=BLOCK, **options(cls)), test)
    guarded["n"] = 0
    data = data_forms(x, y)[form]
    attr = cls(model, data, batch_size=BLOCK, **options(cls))
    assert isinstance(attr.train_inputs, StreamedInputs)
    assert torch.equal(attr.train_labels, y) and attr.num_train == N_TRAIN
    assert_same(results(attr, test), expected)
    assert 0 < guarded["n"] <= LOADER_BATCH < N_TRAIN  # never more than a block or loader batch


def test_dataset_is_read_once_when_features_are_kept(guarded) -> None:
    """Projected training features are kept: the construction pass and one featurising pass
    read the dataset; later calls read no training example."""
    model = models.make_mlp()
    data = CountingDataset(models.mlp_inputs(N_TRAIN), torch.arange(N_TRAIN) % 5)
    attr = cn.ProjTrNTKAttribution(model, data, batch_size=BLOCK, projection_dim=16)
    assert data.reads == N_TRAIN
    test = models.mlp_inputs(N_TEST, seed=7)
    attr.influence(test)
    assert data.reads == 2 * N_TRAIN
    attr.influence(test, k=2)
    attr.compute_train_kernel()
    attr.self_influence()
    assert data.reads == 2 * N_TRAIN


def test_exact_kernel_at_the_smallest_budget_rereads_blocks(guarded) -> None:
    """Training features that do not fit are recomputed from re-read blocks: same numbers."""
    model = models.make_mlp()
    x, y = models.mlp_inputs(N_TRAIN), torch.arange(N_TRAIN) % 5
    test = models.mlp_inputs(N_TEST, seed=7)
    reference = cn.TrNTKAttribution(model, (x, y), batch_size=3)
    limit = cn.kernels.matrix.minimum_memory_limit(reference.feature_map, ModelInputs((x,), {}))
    data = CountingDataset(x, y)
    tight = cn.TrNTKAttribution(model, data, batch_size=3, memory_limit=limit)
    assert not tight._train.keep or tight._train.keep is None
    torch.testing.assert_close(tight.influence(test), reference.influence(test), rtol=1e-12, atol=0)
    torch.testing.assert_close(
        tight.compute_train_kernel(), reference.compute_train_kernel(), rtol=1e-12, atol=0
    )
    assert data.reads > 2 * N_TRAIN  # blocks were read again for each group of rows


def test_model_change_rebuilds_from_the_stream(guarded) -> None:
    model = models.make_mlp()
    x, y = models.mlp_inputs(N_TRAIN), torch.arange(N_TRAIN) % 5
    test = models.mlp_inputs(N_TEST, seed=7)
    attr = cn.PNTKAttribution(model, CountingDataset(x, y), batch_size=BLOCK)
    attr.influence(test)
    with torch.no_grad():
        model.fc1.weight.mul_(1.5)
    with pytest.warns(ModelChangedWarning):
        after = attr.influence(test)
    expected = cn.PNTKAttribution(model, (x, y), batch_size=BLOCK).influence(test)
    assert torch.equal(after, expected)


def test_store_reads_a_streamed_dataset(guarded, tmp_path) -> None:
    model = models.make_mlp()
    x, y = models.mlp_inputs(N_TRAIN), torch.arange(N_TRAIN) % 5
    test = models.mlp_inputs(N_TEST, seed=7)
    kw = {"batch_size": BLOCK, "projection_dim": 16}
    stored = cn.ProjPNTKAttribution(model, CountingDataset(x, y), store=tmp_path / "s", **kw)
    expected = cn.ProjPNTKAttribution(model, (x, y), **kw)
    torch.testing.assert_close(stored.influence(test), expected.influence(test), rtol=1e-12, atol=0)
    torch.testing.assert_close(
        stored.self_influence(score="norm"),
        expected.self_influence(score="norm"),
        rtol=1e-12,
        atol=0,
    )


def test_one_shot_iterator_is_collected() -> None:
    """A generator can be read once only: it is collected (the only way to use it)."""
    x, y = models.mlp_inputs(N_TRAIN), torch.arange(N_TRAIN) % 5
    batches_ = ((x[i : i + 4], y[i : i + 4]) for i in range(0, N_TRAIN, 4))
    assert not is_streamable(batches_)
    attr = cn.TrNTKAttribution(models.make_mlp(), batches_, batch_size=BLOCK)
    assert isinstance(attr.train_inputs, ModelInputs)
    expected = cn.TrNTKAttribution(models.make_mlp(), (x, y), batch_size=BLOCK)
    test = models.mlp_inputs(N_TEST, seed=7)
    assert torch.equal(attr.influence(test), expected.influence(test))


def test_streamed_inputs_slices_and_passes() -> None:
    x, y = models.mlp_inputs(N_TRAIN), torch.arange(N_TRAIN) % 5
    data = CountingDataset(x, y)
    inputs = StreamedInputs(StreamingSource(data, BLOCK), ModelInputs((x[:1],), {}))
    assert len(inputs) == N_TRAIN and data.reads == 0
    for start in range(0, N_TRAIN, BLOCK):  # consecutive blocks: one pass
        stop = min(start + BLOCK, N_TRAIN)
        assert torch.equal(inputs.slice(start, stop).args[0], x[start:stop])
    assert data.reads == N_TRAIN
    assert torch.equal(inputs.slice(3, 7).args[0], x[3:7])  # across two blocks
    with pytest.raises(ValueError, match="block by block"):
        inputs.slice(0, BLOCK + 1)
    with pytest.raises(IndexError):
        inputs.slice(20, 24)
    got = torch.cat([b.args[0] for _, b in inputs.blocks(7)])
    assert torch.equal(got, x)
    assert inputs.rebatched(3).block_size == 3 and inputs.rebatched(BLOCK) is inputs


# ------------------------------------------------------------------------------------------------
# text: variable lengths, padded per block
# ------------------------------------------------------------------------------------------------
VOCAB, MAX_LEN = 40, 12


@pytest.fixture(scope="module")
def bert() -> torch.nn.Module:
    """A small random BERT classifier (3 logits), float64."""
    config = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=3,
        attn_implementation="eager",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        return transformers.BertForSequenceClassification(config).eval().double()


def sentences(n: int, seed: int) -> list[Tensor]:
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, MAX_LEN + 1, (n,), generator=gen)
    return [torch.randint(1, VOCAB, (int(k),), generator=gen) for k in lengths]


def pad(ids: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
    length = max(len(t) for t in ids)
    batch = {
        "input_ids": torch.stack([torch.nn.functional.pad(t, (0, length - len(t))) for t in ids]),
        "attention_mask": torch.stack(
            [torch.nn.functional.pad(torch.ones_like(t), (0, length - len(t))) for t in ids]
        ),
    }
    if labels is not None:
        batch["labels"] = labels
    return batch


class Sentences(Dataset):
    """Token ids of variable length with labels: one example is (ids, label)."""

    def __init__(self, ids: list[Tensor], labels: Tensor) -> None:
        self.ids, self.labels = ids, labels

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.ids[i], self.labels[i]


def collate(items: list[tuple[Tensor, Tensor]]) -> dict[str, Tensor]:
    return pad([i for i, _ in items], torch.stack([label for _, label in items]))


TEXT_CLASSES = [
    (cn.TrNTKAttribution, {"layers": ["classifier", "bert.pooler"]}),
    (cn.ProjPNTKAttribution, {"projection_dim": 16}),
    (cn.ConjugateKernelAttribution, {}),
    (cn.EmbeddingKernelAttribution, {"layers": ["bert.pooler"]}),
]


@pytest.mark.parametrize("cls, kw", TEXT_CLASSES, ids=[cls.__name__ for cls, _ in TEXT_CLASSES])
def test_text_padded_per_block_equals_padded_whole(cls, kw, bert, guarded) -> None:
    ids, labels = sentences(11, seed=1), torch.arange(11) % 3
    test = pad(sentences(3, seed=2), torch.arange(3) % 3)
    expected = results(cls(bert, pad(ids, labels), batch_size=4, **kw), test)
    guarded["n"] = 0
    loader = DataLoader(Sentences(ids, labels), batch_size=3, collate_fn=collate)
    attr = cls(bert, loader, batch_size=4, **kw)
    assert isinstance(attr.train_inputs, StreamedInputs)
    assert_same(results(attr, test), expected, tol=1e-12)
    # no batch larger than a block, a loader batch or the few probe examples was built
    assert guarded["n"] <= max(4, 3, PROBE_EXAMPLES + 1) < 11


def test_text_probe_holds_the_longest_example(bert) -> None:
    """The size estimates see the longest sentence, wherever it is in the data."""
    ids, labels = sentences(11, seed=1), torch.arange(11) % 3
    ids[9] = torch.arange(1, 31) % (VOCAB - 1) + 1  # 30 tokens, in the last block
    loader = DataLoader(Sentences(ids, labels), batch_size=3, collate_fn=collate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attr = cn.ConjugateKernelAttribution(bert, loader, batch_size=4)
    probe = attr._probe
    assert probe.kwargs["input_ids"].shape[1] == 30
    assert torch.equal(probe.kwargs["input_ids"][-1], ids[9])
    assert torch.equal(probe.kwargs["input_ids"][0, : len(ids[0])], ids[0])


# ------------------------------------------------------------------------------------------------
# data that changes between reads is refused; loaders are kept as given
# ------------------------------------------------------------------------------------------------
class Shuffled(IterableDataset):
    """An IterableDataset that yields its examples in a new random order on every pass."""

    def __init__(self, x: Tensor, y: Tensor) -> None:
        self.x, self.y = x, y

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(len(self.x))
        return iter(zip(self.x[order], self.y[order]))


class Augmented(CountingDataset):
    """A map-style dataset with a random transform (noise added on every read)."""

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x, y = super().__getitem__(i)
        return x + 0.1 * torch.randn_like(x), y


REREAD = "different data for block .* second read .*deterministic"


def test_shuffling_iterable_dataset_is_refused() -> None:
    """Without the check, labels of the first pass were paired with other examples' features
    (19 of 23 rows of model_logits belonged to another label)."""
    x, y = models.mlp_inputs(N_TRAIN), torch.arange(N_TRAIN) % 5
    torch.manual_seed(0)
    attr = cn.ProjTrNTKAttribution(
        models.make_mlp(), Shuffled(x, y), batch_size=BLOCK, projection_dim=16, seed=3
    )
    for call in (attr.model_logits, attr.self_influence):
        with pytest.raises(ValueError, match=REREAD):
            call()


@pytest.mark.parametrize("store", [False, True], ids=["memory", "store"])
def test_random_transforms_are_refused(store, tmp_path) -> None:
    """A Dataset with random augmentations gives other inputs on every read: refused on the
    featurising pass (of kept features, or into a store when the object is built), not turned
    into results that change from call to call."""
    x, y = models.mlp_inputs(N_TRAIN), torch.arange(N_TRAIN) % 5
    kw = {"store": tmp_path / "s"} if store else {}
    with pytest.raises(ValueError, match=REREAD):
        attr = cn.ProjPNTKAttribution(
            models.make_mlp(), Augmented(x, y), batch_size=BLOCK, projection_dim=16, **kw
        )
        attr.influence(models.mlp_inputs(N_TEST, seed=7))


def test_random_transforms_are_refused_when_blocks_are_reread() -> None:
    """Training features that do not fit are recomputed from re-read blocks, in smaller blocks
    than the construction pass: the check holds whatever the block size."""
    model = models.make_mlp()
    x, y = models.mlp_inputs(N_TRAIN), torch.arange(N_TRAIN) % 5
    reference = cn.TrNTKAttribution(model, (x, y), batch_size=BLOCK)
    limit = cn.kernels.matrix.minimum_memory_limit(reference.feature_map, ModelInputs((x,), {}))
    attr = cn.TrNTKAttribution(model, Augmented(x, y), batch_size=BLOCK, memory_limit=limit)
    assert attr.block_size < BLOCK
    with pytest.raises(ValueError, match=REREAD):
        attr.compute_train_kernel()


def test_deterministic_data_read_in_other_blocks_passes_the_check(guarded) -> None:
    """The same data read again in smaller blocks (and seeking) matches the first pass."""
    x, y = models.mlp_inputs(N_TRAIN), torch.arange(N_TRAIN) % 5
    inputs, labels, _ = training_data.read_training_data(Stream(x, y), BLOCK, lambda inputs: None)
    assert isinstance(inputs, StreamedInputs) and torch.equal(labels, y)
    smaller = inputs.rebatched(3)
    assert torch.equal(torch.cat([b.args[0] for _, b in smaller.blocks(3)]), x)
    assert torch.equal(smaller.slice(12, 15).args[0], x[12:15])  # a jump: read from the start
    assert torch.equal(inputs.slice(7, 12).args[0], x[7:12])  # across two blocks
    inputs.source.digests[8] += 1  # as if example 8 had been different on the first pass
    with pytest.raises(ValueError, match="block 2 \\(examples 6-8\\)"):
        list(smaller.blocks(3))


def test_dataloader_over_an_iterable_dataset(guarded) -> None:
    """Its order is its own (no sampler to shuffle): accepted, equal to the tensors."""
    model = models.make_mlp()
    x, y = models.mlp_inputs(N_TRAIN), torch.arange(N_TRAIN) % 5
    test = models.mlp_inputs(N_TEST, seed=7)
    expected = cn.PNTKAttribution(model, (x, y), batch_size=BLOCK)
    loader = DataLoader(Stream(x, y), batch_size=LOADER_BATCH)
    attr = cn.PNTKAttribution(model, loader, batch_size=BLOCK)
    assert torch.equal(attr.train_labels, y)
    assert torch.equal(attr.influence(test), expected.influence(test))
    shuffled = cn.PNTKAttribution(model, DataLoader(Shuffled(x, y), batch_size=4), batch_size=4)
    with pytest.raises(ValueError, match=REREAD):
        shuffled.influence(test)
    with pytest.raises(ValueError, match="drop_last"):
        StreamingSource(DataLoader(Stream(x, y), batch_size=4, drop_last=True), BLOCK)


def test_probe_does_not_hold_a_block() -> None:
    """The probe examples are copies: a view would keep its whole block alive."""
    x, y = models.mlp_inputs(64), torch.arange(64) % 5
    attr = cn.PNTKAttribution(models.make_mlp(), CountingDataset(x, y), batch_size=64)
    probe = attr._probe.args[0]
    assert len(probe) == PROBE_EXAMPLES and torch.equal(probe, x[:PROBE_EXAMPLES])
    assert probe.untyped_storage().nbytes() == probe.numel() * probe.element_size()


WORKER_STATE = {"initialised": False}


def _init_worker(worker_id: int) -> None:
    WORKER_STATE["initialised"] = True


class WorkerOnly(CountingDataset):
    """Readable only in a DataLoader worker started by ``_init_worker``."""

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        if torch.utils.data.get_worker_info() is None or not WORKER_STATE["initialised"]:
            raise RuntimeError("read outside a worker initialised by _init_worker")
        return super().__getitem__(i)


def test_seeking_keeps_the_loader_options() -> None:
    """A jump rebuilds the loader over a subset of its dataset with the user's options."""
    x, y = models.mlp_inputs(N_TRAIN), torch.arange(N_TRAIN) % 5
    generator = torch.Generator().manual_seed(1)
    loader = DataLoader(
        WorkerOnly(x, y),
        batch_size=LOADER_BATCH,
        num_workers=1,
        worker_init_fn=_init_worker,
        timeout=60,
        generator=generator,
        persistent_workers=True,
        prefetch_factor=3,
    )
    source = StreamingSource(loader, BLOCK)
    blocks = list(source.blocks(2))  # seeks to example 10, in workers
    assert torch.equal(torch.cat([b.args[0] for _, b, _ in blocks]), x[2 * BLOCK :])
    seeked = source._seekable(2, source.num_blocks)
    assert isinstance(seeked, DataLoader) and len(seeked.dataset) == N_TRAIN - 2 * BLOCK
    for name in ("batch_size", "num_workers", "worker_init_fn", "timeout", "generator"):
        assert getattr(seeked, name) == getattr(loader, name), name
    assert seeked.persistent_workers and seeked.prefetch_factor == 3
