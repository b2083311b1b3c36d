"""Disk stores: equality with in-memory kernels, refusal of mismatching stores, resume after
SIGKILL, streaming top-k and the featurize / score subcommands."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import captum_ntk as cn
from captum_ntk.apps.cli import main
from captum_ntk.engine.data.streaming import StreamingSource
from captum_ntk.kernels.matrix import build_feature_map
from captum_ntk.store import (
    FeatureStore,
    StoreMismatchError,
    featurize,
    stored_kernel_matrix,
    streaming_topk,
    write_kernel,
)

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import store_worker as worker  # noqa: E402


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3)).double()


def _options(kernel: str, seed: int = 0) -> dict:
    return {"kernel": kernel, "projection": "rademacher", "seed": seed, "layers": None}


@pytest.mark.parametrize("kernel", ["proj_pntk", "proj_trntk", "ck"])
def test_stored_kernel_equals_in_memory(tmp_path, kernel):
    model = _mlp()
    x = torch.randn(23, 5, dtype=torch.float64)
    x2 = torch.randn(7, 5, dtype=torch.float64)
    extra = {"projection_dim": 32, "seed": 0} if kernel.startswith("proj") else {}
    fmap = build_feature_map(model, kernel, **extra)
    normalize = cn.KERNELS[kernel].normalized
    for i, (a, b) in enumerate([(x, None), (x2, x)]):
        stored = stored_kernel_matrix(
            fmap,
            a,
            b,
            tmp_path / str(i),
            block_size=5,
            options=_options(kernel),
            normalize=normalize,
        )
        reference = cn.kernel_matrix(model, a, b, kernel=kernel, batch_size=5, **extra)
        torch.testing.assert_close(stored, reference, rtol=1e-12, atol=1e-12)
    sq = np.load(tmp_path / "0" / "rows" / "sq_norms.npy")
    assert sq.shape == (23,) and (sq > 0).all()


def test_kernel_matrix_store_argument(tmp_path):
    model = _mlp()
    x = torch.randn(12, 5, dtype=torch.float64)
    reference = cn.kernel_matrix(model, x, kernel="proj_pntk", projection_dim=32, batch_size=4)
    stored = cn.kernel_matrix(
        model, x, kernel="proj_pntk", projection_dim=32, batch_size=4, store=tmp_path
    )
    torch.testing.assert_close(stored, reference, rtol=1e-12, atol=1e-12)
    assert (tmp_path / "kernel.npy").exists()


def _count_features(monkeypatch, cls) -> list[int]:
    """Patches ``cls.__call__`` to record the number of examples of every call."""
    calls: list[int] = []
    original = cls.__call__

    def counted(self, inputs):
        calls.append(len(inputs))
        return original(self, inputs)

    monkeypatch.setattr(cls, "__call__", counted)
    return calls


def test_kernel_matrix_store_second_call_reads_it(tmp_path, monkeypatch):
    from captum_ntk.engine.features import ProjectedSummedGradientFeatures

    model = _mlp()  # P = 147: the default K is 32
    x, x2 = torch.randn(11, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    calls = _count_features(monkeypatch, ProjectedSummedGradientFeatures)
    common = {"kernel": "proj_pntk", "batch_size": 4, "store": tmp_path}
    first = cn.kernel_matrix(model, x2, x, **common).clone()
    assert sum(calls) > 0
    calls.clear()
    second = cn.kernel_matrix(model, x2, x, projection_dim=32, **common)  # the resolved default
    assert calls == []  # nothing recomputed: features and kernel read from the store
    assert torch.equal(first, second)
    reference = cn.kernel_matrix(model, x2, x, kernel="proj_pntk", batch_size=4)
    torch.testing.assert_close(second, reference, rtol=1e-12, atol=1e-12)
    for option, field in [
        ({"seed": 1}, "seed: stored 0, requested 1"),
        ({"projection_dim": 16}, "projection_dim: stored 32, requested 16"),
        ({"projection": "gaussian"}, "projection: stored 'rademacher', requested 'gaussian'"),
        ({"precision": "bf16"}, "precision: stored 'fp32', requested 'bf16'"),
        ({"dtype": torch.float32}, "dtype: stored 'torch.float64', requested 'torch.float32'"),
        ({"layers": ["2"]}, "layers: stored None, requested ['2']"),
    ]:
        with pytest.raises(StoreMismatchError, match=re.escape(field)):
            cn.kernel_matrix(model, x2, x, **common, **option)
    with pytest.raises(ValueError, match="proj_pntk"):
        cn.kernel_matrix(model, x, kernel="trntk", store=tmp_path / "exact")


def test_mismatching_store_is_refused_naming_fields(tmp_path):
    model = _mlp()
    x = torch.randn(10, 5, dtype=torch.float64)
    fmap = build_feature_map(model, "proj_pntk", projection_dim=32, seed=0)
    featurize(fmap, StreamingSource(x, 4), tmp_path, _options("proj_pntk"))
    other = build_feature_map(model, "proj_pntk", projection_dim=16, seed=1)
    with pytest.raises(StoreMismatchError, match="projection_dim: stored 32, requested 16") as err:
        featurize(other, StreamingSource(x, 4), tmp_path, _options("proj_pntk", seed=1))
    assert "seed: stored 0, requested 1" in str(err.value)
    # another batch size reads the store in its own layout (not part of its identity)
    reopened = featurize(fmap, StreamingSource(x, 5), tmp_path, _options("proj_pntk"))
    assert reopened.block_size == 4
    with torch.no_grad():
        model[0].weight[0, 0] += 1e-3
    changed = build_feature_map(model, "proj_pntk", projection_dim=32, seed=0)
    with pytest.raises(StoreMismatchError, match="model_fingerprint"):
        featurize(changed, StreamingSource(x, 4), tmp_path, _options("proj_pntk"))
    with torch.no_grad():
        model[0].weight[0, 0] -= 1e-3
    fmap = build_feature_map(model, "proj_pntk", projection_dim=32, seed=0)
    y = x.clone()
    y[6, 2] += 1.0
    with pytest.raises(StoreMismatchError, match="block 1 .*data_fingerprint"):
        featurize(fmap, StreamingSource(y, 4), tmp_path, _options("proj_pntk"))
    featurize(fmap, StreamingSource(x, 4), tmp_path, _options("proj_pntk"))  # same: accepted


def _run_worker(directory: Path, kill_after: int) -> int:
    cmd = [sys.executable, str(HERE / "store_worker.py"), "featurize", str(directory)]
    cmd.append(str(kill_after))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, env=env, timeout=120).returncode


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    assert _run_worker(killed, kill_after=3) == -9
    markers = sorted(os.listdir(killed / "done"))
    assert len(markers) == 3  # blocks 0..2 complete, the rest not
    with pytest.raises(ValueError, match="incomplete"):
        FeatureStore.load(killed)
    # a torn block: rows written, marker missing; resuming must overwrite it
    torn = np.load(killed / "features.npy", mmap_mode="r+")
    torn[3 * worker.BLOCK : 4 * worker.BLOCK] = 123.0
    torn.flush()
    del torn
    worker.featurize_run(str(killed), None)  # resume in this process
    worker.featurize_run(str(clean), None)  # an uninterrupted run
    for name in ("features.npy", "sq_norms.npy"):
        assert np.array_equal(np.load(killed / name), np.load(clean / name))
    a, b = FeatureStore.load(killed), FeatureStore.load(clean)
    assert a.metadata["data_fingerprint"] == b.metadata["data_fingerprint"]
    k1 = write_kernel(a, None, tmp_path / "k1", normalize=True)
    k2 = write_kernel(b, None, tmp_path / "k2", normalize=True)
    assert np.array_equal(k1, k2)


def test_streaming_topk_matches_dense_with_deterministic_ties(tmp_path):
    model = _mlp()
    gen = torch.Generator().manual_seed(4)
    train = torch.randn(30, 5, generator=gen, dtype=torch.float64)
    train[17] = train[3]  # duplicates: exactly tied scores
    train[25] = train[3]
    test = torch.cat([train[3:4], torch.randn(8, 5, generator=gen, dtype=torch.float64)])
    fmap = build_feature_map(model, "proj_pntk", projection_dim=32, seed=0)
    dense = cn.kernel_matrix(
        model, test, train, kernel="proj_pntk", projection_dim=32, batch_size=4
    )
    for block in (4, 7, 30):
        stores = [
            featurize(
                fmap, StreamingSource(d, block), tmp_path / f"{n}{block}", _options("proj_pntk")
            )
            for n, d in (("test", test), ("train", train))
        ]
        kernel = torch.from_numpy(
            np.array(write_kernel(*stores, tmp_path / f"k{block}", normalize=True))
        )
        torch.testing.assert_close(kernel, dense, rtol=1e-10, atol=1e-12)
        for largest in (True, False):
            scores, indices = streaming_topk(stores[0], stores[1], 5, largest=largest)
            order = torch.sort(kernel, dim=1, descending=largest, stable=True).indices[:, :5]
            assert torch.equal(indices, order)
            assert torch.equal(scores, kernel.gather(1, order))
        assert indices.shape == (9, 5)
    scores, top = streaming_topk(stores[0], stores[1], 3)  # one train block: exact duplicates
    assert scores[0, 0] == scores[0, 1] == scores[0, 2]
    assert top[0].tolist() == [3, 17, 25]  # tied at the top: lower index first


def test_featurize_and_score_subcommands(tmp_path, capsys):
    spec = str(HERE / "store_worker.py")
    store = tmp_path / "train"
    common = ["--model", f"{spec}:make_model", "--no-progress"]
    argv = [
        "featurize",
        *common,
        "--data",
        f"{spec}:make_data",
        "--store",
        str(store),
        "--kernel",
        "proj_pntk",
        "--projection-dim",
        "64",
        "--seed",
        "3",
        "--batch-size",
        "8",
    ]
    assert main(argv) == 0
    assert main(argv) == 0  # a finished store: every block skipped
    assert "53 examples" in capsys.readouterr().out
    out = tmp_path / "top.npz"
    score = ["score", *common, "--data", f"{spec}:make_test_data", "--store", str(store)]
    assert main([*score, "--k", "4", "--output", str(out)]) == 0
    assert main([*score, "--output", str(tmp_path / "kernel")]) == 0
    model = worker.make_model()
    x_train = worker.make_data().tensors[0]
    x_test = worker.make_test_data().tensors[0]
    dense = cn.kernel_matrix(model, x_test, x_train, kernel="proj_pntk", projection_dim=64, seed=3)
    saved = np.load(out)
    order = torch.sort(dense, dim=1, descending=True, stable=True).indices[:, :4]
    assert np.array_equal(saved["indices"], order.numpy())
    kernel = np.load(tmp_path / "kernel" / "kernel.npy")
    np.testing.assert_allclose(kernel, dense.numpy(), rtol=1e-12, atol=1e-12)
    bad = [
        "featurize",
        *common,
        "--data",
        f"{spec}:make_data",
        "--store",
        str(store),
        "--kernel",
        "proj_pntk",
        "--projection-dim",
        "32",
        "--seed",
        "3",
        "--batch-size",
        "8",
    ]
    assert main(bad) == 2
    assert "projection_dim: stored 64, requested 32" in capsys.readouterr().err


def test_exact_kernel_features_are_refused(tmp_path):
    fmap = build_feature_map(_mlp(), "trntk")
    with pytest.raises(ValueError, match="proj_pntk"):
        featurize(
            fmap,
            StreamingSource(torch.randn(4, 5, dtype=torch.float64), 2),
            tmp_path,
            _options("trntk"),
        )


def _train_set(n: int = 23):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(n, 5, generator=gen, dtype=torch.float64)
    return torch.utils.data.TensorDataset(x, torch.arange(n) % 3)


@pytest.mark.parametrize("kernel", ["proj_pntk", "proj_trntk", "ck", "embedding"])
def test_attribution_store_equals_in_memory_and_is_reused(tmp_path, monkeypatch, kernel):
    model, train = _mlp(), _train_set()
    test = (torch.randn(7, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 0]))
    cls = cn.ATTRIBUTION_CLASSES[kernel]
    memory = cls(model, train, batch_size=5)
    stored = cls(model, train, batch_size=5, store=tmp_path)
    assert (tmp_path / "metadata.json").exists() and len(os.listdir(tmp_path / "done")) == 5
    fmap_cls = type(stored.feature_map)
    calls = _count_features(monkeypatch, fmap_cls)
    again = cls(model, train, batch_size=5, store=tmp_path)
    sq = again.self_influence(score="norm")
    activations = kernel in ("ck", "embedding")  # probed on one example for the layer widths
    train_calls = [c for c in calls if c != 1] if activations else calls
    assert train_calls == []  # no training features computed: read from the store
    exact = dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sq, memory.self_influence(score="norm"), **exact)
    torch.testing.assert_close(again.influence(test), memory.influence(test), **exact)
    for proponents in (True, False):
        top, ref = (
            again.influence(test, k=4, proponents=proponents),
            memory.influence(test, k=4, proponents=proponents),
        )
        assert torch.equal(top.indices, ref.indices)
        torch.testing.assert_close(top.influence_scores, ref.influence_scores, **exact)
    calls.clear()
    train_kernel = again.compute_train_kernel()
    assert calls == []  # the train kernel from stored features only
    torch.testing.assert_close(train_kernel, memory.compute_train_kernel(), **exact)
    glm, ref_glm = again.fit_surrogate(), memory.fit_surrogate()
    torch.testing.assert_close(glm.coef_, ref_glm.coef_, **exact)
    torch.testing.assert_close(again.attribute(test[0]), memory.attribute(test[0]), **exact)
    torch.testing.assert_close(
        again.self_influence(score="surrogate"), memory.self_influence(score="surrogate"), **exact
    )


def test_attribution_store_refusals(tmp_path):
    model, train = _mlp(), _train_set()
    with pytest.raises(ValueError, match=r"TrNTKAttribution\(store=\.\.\.\).*proj_pntk"):
        cn.TrNTKAttribution(model, train, store=tmp_path / "exact")
    assert not (tmp_path / "exact").exists()
    cn.ProjPNTKAttribution(model, train, batch_size=5, store=tmp_path / "p")
    with pytest.raises(StoreMismatchError, match=re.escape("seed: stored 0, requested 2")):
        cn.ProjPNTKAttribution(model, train, batch_size=5, seed=2, store=tmp_path / "p")
    with pytest.raises(StoreMismatchError, match="projection: stored 'rademacher', requested"):
        cn.ProjPNTKAttribution(model, train, batch_size=5, projection="sjlt", store=tmp_path / "p")


def test_attribution_store_refuses_a_changed_model(tmp_path):
    """A store holds one model state: after the parameters change, calls raise (no silent
    mixing, no recomputation into the old directory); a new directory works."""
    model, train = _mlp(), _train_set()
    x = torch.randn(4, 5, dtype=torch.float64)
    attr = cn.ProjPNTKAttribution(model, train, batch_size=5, store=tmp_path / "a")
    before = attr.influence(x)
    with torch.no_grad():
        model[0].weight[0, 0] += 0.1
    for call in (lambda: attr.influence(x), lambda: attr.self_influence()):
        with pytest.raises(StoreMismatchError, match="changed since its training .*model_fing"):
            call()
    fresh = cn.ProjPNTKAttribution(model, train, batch_size=5, store=tmp_path / "b")
    reference = cn.ProjPNTKAttribution(model, train, batch_size=5)
    torch.testing.assert_close(fresh.influence(x), reference.influence(x), rtol=1e-12, atol=0)
    assert not torch.allclose(fresh.influence(x), before)
    with torch.no_grad():
        model[0].weight[0, 0] -= 0.1
    restored = cn.ProjPNTKAttribution(model, train, batch_size=5, store=tmp_path / "a")
    torch.testing.assert_close(restored.influence(x), before, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("first_form", ["tensors", "dataset"])
def test_attribution_store_is_shared_by_tensors_and_a_dataset(tmp_path, monkeypatch, first_form):
    """A store written from (x, y) in memory is reused by TensorDataset(x, y) and the other way
    round (its digests cover the inputs, whose features it holds, not the labels); other
    inputs are still refused."""
    model = _mlp()
    x, y = _train_set().tensors
    forms = {"tensors": (x, y), "dataset": torch.utils.data.TensorDataset(x, y)}
    second_form = "dataset" if first_form == "tensors" else "tensors"
    kw = {"batch_size": 5, "projection_dim": 16, "store": tmp_path}
    first = cn.ProjPNTKAttribution(model, forms[first_form], **kw)
    test = torch.randn(4, 5, dtype=torch.float64)
    expected = first.influence(test)
    fingerprint = FeatureStore.load(tmp_path).metadata["data_fingerprint"]
    calls = _count_features(monkeypatch, type(first.feature_map))
    again = cn.ProjPNTKAttribution(model, forms[second_form], **kw)
    torch.testing.assert_close(again.influence(test), expected, rtol=1e-12, atol=0)
    assert calls == [len(test)]  # the test examples only: training features read from disk
    relabelled = cn.ProjPNTKAttribution(model, (x, (y + 1) % 3), **kw)  # same features
    torch.testing.assert_close(relabelled.influence(test), expected, rtol=1e-12, atol=0)
    assert FeatureStore.load(tmp_path).metadata["data_fingerprint"] == fingerprint
    changed = x.clone()
    changed[7, 0] += 1.0
    other = {"tensors": (changed, y), "dataset": torch.utils.data.TensorDataset(changed, y)}
    with pytest.raises(StoreMismatchError, match="block 1 .*data_fingerprint"):
        cn.ProjPNTKAttribution(model, other[second_form], **kw)


def test_store_layout_does_not_follow_the_memory_derived_block_size(tmp_path):
    """Issue 17 (6): the compute block size follows the memory budget (on CUDA, half the free
    memory), and a store whose identity held it could not be resumed on a busier device."""
    from models import make_wide_mlp, mlp_inputs
    from torch.utils.data import TensorDataset

    model = make_wide_mlp()
    x, y = mlp_inputs(40, d_in=20), torch.arange(40) % 8
    data = TensorDataset(x, y)
    options = {"batch_size": 16, "projection_dim": 256, "projection": "sjlt"}
    tight = cn.ProjTrNTKAttribution(
        model, data, memory_limit=1_000_000, store=tmp_path / "s", **options
    )
    roomy = cn.ProjTrNTKAttribution(model, data, store=tmp_path / "s", **options)
    assert tight.block_size < roomy.block_size  # other compute blocks, the same store
    plain = cn.ProjTrNTKAttribution(model, data, **options)
    test = mlp_inputs(5, seed=9, d_in=20)
    torch.testing.assert_close(tight.influence(test), plain.influence(test), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(roomy.influence(test), plain.influence(test), rtol=1e-6, atol=1e-7)
    # kernel_matrix(store=) without batch_size: the layout is fixed, the compute block is not
    kw = {"kernel": "proj_trntk", "projection_dim": 256, "projection": "sjlt"}
    a = cn.kernel_matrix(model, x, store=tmp_path / "k", memory_limit=1_000_000, **kw)
    b = cn.kernel_matrix(model, x, store=tmp_path / "k", **kw)
    torch.testing.assert_close(a, b)


def test_score_takes_precision_projection_and_seed_from_the_train_store(tmp_path):
    """Issue 17 (6): the test features of `score` use the train store's options."""
    spec = str(HERE / "store_worker.py")
    store = tmp_path / "train"
    common = ["--model", f"{spec}:make_model", "--no-progress"]
    options = ["--kernel", "proj_trntk", "--projection-dim", "32", "--projection", "gaussian"]
    options += ["--seed", "5", "--precision", "bf16", "--batch-size", "8"]
    featurize = ["featurize", *common, "--data", f"{spec}:make_data", "--store", str(store)]
    assert main([*featurize, *options]) == 0
    assert FeatureStore.load(store).metadata["precision"] == "bf16"
    score = ["score", *common, "--data", f"{spec}:make_test_data", "--store", str(store)]
    assert main([*score, "--output", str(tmp_path / "kernel")]) == 0
    test_meta = FeatureStore.load(store / "test").metadata
    for field in ("precision", "projection", "seed", "projection_dim", "kernel"):
        assert test_meta[field] == FeatureStore.load(store).metadata[field], field
    model = worker.make_model()
    x_train = worker.make_data().tensors[0]
    x_test = worker.make_test_data().tensors[0]
    dense = cn.kernel_matrix(model, x_test, x_train, kernel="proj_trntk", projection_dim=32,
                             projection="gaussian", seed=5, precision="bf16")  # fmt: skip
    kernel = np.load(tmp_path / "kernel" / "kernel.npy")
    np.testing.assert_allclose(kernel, dense.numpy(), rtol=1e-5, atol=1e-6)
