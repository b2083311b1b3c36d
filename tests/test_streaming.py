"""Block-wise reading of datasets: content, order, per-block text padding, seeking, digests."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from captum_ntk.engine.data.inputs import ModelInputs
from captum_ntk.engine.data.streaming import StreamingSource, block_digest, data_fingerprint


class CountingDataset(Dataset):
    """Records which examples were read."""

    def __init__(self, n: int) -> None:
        self.x = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
        self.y = torch.arange(n) % 4
        self.read: list[int] = []

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        self.read.append(i)
        return self.x[i], self.y[i]


def _concat(source: StreamingSource, first: int = 0, stop=None):
    starts, xs, ys = [], [], []
    for start, x, y in source.blocks(first, stop):
        starts.append(start)
        xs.append(x.args[0])
        ys.append(y)
    return starts, torch.cat(xs), torch.cat(ys)


@pytest.mark.parametrize("loader_batch", [None, 3, 7, 16])
def test_blocks_cover_the_data_in_order(loader_batch):
    data = CountingDataset(23)
    source_data = data if loader_batch is None else DataLoader(data, batch_size=loader_batch)
    source = StreamingSource(source_data, 5)
    assert len(source) == 23 and source.num_blocks == 5
    starts, x, y = _concat(source)
    assert starts == [0, 5, 10, 15, 20]
    assert torch.equal(x, data.x) and torch.equal(y, data.y)


def test_generic_iterable_is_rechunked_and_counted():
    x = torch.randn(17, 2)

    class Batches:  # a re-iterable of batches without len
        def __iter__(self):
            return iter([(x[i : i + 4], torch.zeros(len(x[i : i + 4]))) for i in range(0, 17, 4)])

    source = StreamingSource(Batches(), 6)
    assert len(source) == 17
    starts, got, _ = _concat(source)
    assert starts == [0, 6, 12] and torch.equal(got, x)


def test_seeking_reads_only_the_requested_blocks():
    data = CountingDataset(40)
    source = StreamingSource(DataLoader(data, batch_size=4), 10)
    starts, x, _ = _concat(source, 2, 3)
    assert starts == [20] and torch.equal(x, data.x[20:30])
    assert sorted(data.read) == list(range(20, 30))


def test_one_block_in_memory_at_a_time():
    data = CountingDataset(50)
    source = StreamingSource(data, 10)
    for start, _, _ in source.blocks():
        assert max(data.read) < start + 10  # nothing beyond the current block was read


def _text(lengths, pad_to):
    ids = torch.zeros(len(lengths), pad_to, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.arange(1, n + 1) + 10 * i
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.arange(len(lengths))}


def test_text_is_padded_per_block_and_digest_ignores_padding():
    batch = _text([2, 3, 7, 2], pad_to=9)
    blocks = list(StreamingSource(batch, 2).blocks())
    assert [b[1].kwargs["input_ids"].shape[1] for b in blocks] == [3, 7]
    wider = _text([2, 3, 7, 2], pad_to=12)
    wide_blocks = list(StreamingSource(wider, 2).blocks())
    for (_, a, ya), (_, b, yb) in zip(blocks, wide_blocks):
        assert block_digest(a, ya) == block_digest(b, yb)
    changed = _text([2, 3, 7, 2], pad_to=9)
    changed["input_ids"][1, 0] += 1
    assert block_digest(*list(StreamingSource(changed, 2).blocks())[0][1:]) != block_digest(
        *blocks[0][1:]
    )


def test_fingerprint_detects_order_values_and_labels():
    x, y = torch.randn(12, 3), torch.arange(12) % 3

    def fingerprint(xx, yy, block=4):
        source = StreamingSource(TensorDataset(xx, yy), block)
        return data_fingerprint([block_digest(b, lab) for _, b, lab in source.blocks()], block, 12)

    base = fingerprint(x, y)
    assert fingerprint(x.clone(), y.clone()) == base
    assert fingerprint(x[torch.arange(11, -1, -1)], y[torch.arange(11, -1, -1)]) != base
    x2 = x.clone()
    x2[5, 1] += 1e-6
    assert fingerprint(x2, y) != base
    y2 = y.clone()
    y2[0] = 2
    assert fingerprint(x, y2) != base
    digests = [block_digest(ModelInputs((x[i : i + 1],), {}), None) for i in range(2)]
    assert digests[0] != digests[1]


def test_bad_loaders_are_refused():
    data = TensorDataset(torch.randn(8, 2), torch.zeros(8))
    with pytest.raises(ValueError, match="shuffle"):
        StreamingSource(DataLoader(data, batch_size=2, shuffle=True), 4)
    with pytest.raises(ValueError, match="block_size"):
        StreamingSource(data, 0)

    class Short(TensorDataset):
        def __len__(self):
            return 10  # claims more than it yields through iteration

    class Loose:  # a dataset whose iteration yields fewer examples than its len
        def __init__(self):
            self.dataset = Short(torch.randn(8, 2), torch.zeros(8))

        def __iter__(self):
            return iter([(torch.randn(3, 2), torch.zeros(3))])

    source = StreamingSource(Loose(), 2)
    source.num_examples = 10
    with pytest.raises(ValueError, match="yielded 3 examples but has 10"):
        list(source.blocks())
