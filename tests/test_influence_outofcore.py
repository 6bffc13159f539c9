"""Out-of-core head influence: features in a memmap (or any array-like) read by chunks."""

import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

import skitl.influence._head as head_module
from skitl.influence import (
    cross_fit_head_influence,
    extract_features,
    fit_head,
    head_influence,
    predict_proba_head,
)
from skitl.influence._chunks import FeatureChunks
from skitl.utils._memmap import page_releaser as _page_releaser

ALPHA = 1e-3
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _blobs(n, d, k, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((k, d)) * 1.5
    y = rng.integers(0, k, n)
    F = np.maximum(means[y] + rng.standard_normal((n, d)), 0) + 3.0
    return F.astype(np.float32), y


def _memmap(tmp_path, F, name="F.npy", mode="r"):
    path = tmp_path / name
    np.save(path, F)
    return np.load(path, mmap_mode=mode)


def _rel(a, b):
    return np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(a))


@pytest.fixture(scope="module")
def data():
    F, y = _blobs(900, 12, 4)
    return F[:700], y[:700], F[700:], y[700:]


@pytest.mark.parametrize("device", DEVICES)
def test_memmap_equals_in_memory(tmp_path, data, device):
    F, y, Fv, yv = data
    M, Mv = _memmap(tmp_path, F), _memmap(tmp_path, Fv, "Fv.npy")
    chunked = dict(chunk_size=97, device=device)  # several chunks, a ragged last one
    W, b = fit_head(F, y, 4, alpha=ALPHA, device=device)
    W2, b2 = fit_head(M, y, 4, alpha=ALPHA, **chunked)
    assert _rel(W, W2) < 1e-10 and _rel(b, b2) < 1e-10
    np.testing.assert_allclose(predict_proba_head(Mv, W, b, **chunked),
                               predict_proba_head(Fv, W, b, device=device),
                               rtol=1e-12, atol=1e-15)
    for solver in ("cholesky", "cg"):
        for hessian in ("exact", "identity"):
            a = head_influence(F, y, Fv, yv, n_classes=4, alpha=ALPHA, solver=solver,
                               hessian=hessian, device=device)
            c = head_influence(M, y, Mv, yv, n_classes=4, alpha=ALPHA, solver=solver,
                               hessian=hessian, **chunked)
            assert _rel(a.scores, c.scores) < 1e-10, (solver, hessian)
            assert _rel(a.W, c.W) < 1e-10
    a = cross_fit_head_influence(F, y, n_classes=4, cv=3, alpha=ALPHA, random_state=0,
                                 device=device)
    c = cross_fit_head_influence(M, y, n_classes=4, cv=3, alpha=ALPHA, random_state=0,
                                 **chunked)
    for name in ("scores", "oof_proba", "oof_loss", "oof_self_influence"):
        assert _rel(getattr(a, name), getattr(c, name)) < 1e-10, name
    for (tr, va), (tr2, va2) in zip(a.folds, c.folds):
        np.testing.assert_array_equal(tr, tr2)
        np.testing.assert_array_equal(va, va2)


class _RowsOnly:
    """An array-like that can only be sliced by rows (like an h5py dataset)."""

    def __init__(self, F):
        self._F = F
        self.shape = F.shape
        self.dtype = F.dtype
        self.reads = 0

    def __len__(self):
        return len(self._F)

    def __getitem__(self, idx):
        if isinstance(idx, np.ndarray):
            assert np.all(np.diff(idx) > 0), "indices must be increasing"
        elif not isinstance(idx, slice):
            raise TypeError(f"unsupported index {idx!r}")
        self.reads += 1
        return self._F[idx].copy()


def test_any_array_like_and_tensor(data):
    F, y, Fv, yv = data
    ref = cross_fit_head_influence(F, y, n_classes=4, cv=3, alpha=ALPHA, random_state=0)
    src = _RowsOnly(F)
    res = cross_fit_head_influence(src, y, n_classes=4, cv=3, alpha=ALPHA,
                                   random_state=0, chunk_size=128)
    assert src.reads > 3 * 6  # read by chunks, fold by fold
    assert _rel(ref.scores, res.scores) < 1e-10
    res = cross_fit_head_influence(torch.from_numpy(F), y, n_classes=4, cv=3, alpha=ALPHA,
                                   random_state=0)
    assert _rel(ref.scores, res.scores) < 1e-10
    pd = pytest.importorskip("pandas")  # rows by position, not columns by label
    res = cross_fit_head_influence(pd.DataFrame(F), y, n_classes=4, cv=3, alpha=ALPHA,
                                   random_state=0)
    assert _rel(ref.scores, res.scores) < 1e-10
    a = head_influence(F, y, Fv, yv, n_classes=4, alpha=ALPHA)
    c = head_influence(_RowsOnly(F), y, _RowsOnly(Fv), yv, n_classes=4, alpha=ALPHA,
                       chunk_size=50)
    assert _rel(a.scores, c.scores) < 1e-10


class _Float64Sizes(TorchDispatchMode):
    """Record the largest float64 tensor any torch op creates."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
                self.largest = max(self.largest, t.numel())
        return out


def test_memmap_never_materialised_in_float64(tmp_path, monkeypatch):
    # d = 64: an n x d float64 copy (512 bytes a sample) stands well above
    # what the engine legitimately keeps per sample (n x k probabilities,
    # fold indices, scores: about 130 bytes). Buffers of fixed size (the
    # preconditioner's row sample, the dense Hessian build's blocks of rows)
    # are shrunk so that they stay small against n x d at a test's n.
    monkeypatch.setattr(head_module, "_PRECOND_ROWS", 1024)
    n, d, k = 12_000, 64, 3
    F, y = _blobs(n, d, k, seed=1)
    M = _memmap(tmp_path, F)
    Mv = _memmap(tmp_path, F[:2000], "Fv.npy")
    del F
    nd = n * d
    calls = {  # head_influence fits the head too
        "head": lambda: head_influence(M, y, Mv, y[:2000], n_classes=k, alpha=ALPHA,
                                       chunk_size=800),
        "cross-fit": lambda: cross_fit_head_influence(M, y, n_classes=k, cv=3,
                                                      alpha=ALPHA, random_state=0,
                                                      chunk_size=800),
    }
    for name, call in calls.items():
        tracemalloc.start()
        try:
            with _Float64Sizes() as sizes:
                call()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert sizes.largest < nd / 4, (name, sizes.largest, nd)  # torch tensors
        assert peak < nd * 8 / 2, (name, peak, nd * 8)  # numpy arrays


class _PerSampleAllocations(TorchDispatchMode):
    """Record the shape of every new matrix (not a view) with ``rows`` rows or more.

    Vectors of one value per sample (weights, self-influence), also held as an
    ``(n, 1)`` column, are not counted.
    """

    def __init__(self, rows):
        super().__init__()
        self.rows = rows
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out  # a view, or an op returning one of its inputs
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if (isinstance(t, torch.Tensor) and t.ndim >= 2 and t.shape[0] >= self.rows
                    and t[0].numel() > 1):
                self.shapes.append(tuple(t.shape))
        return out


def test_one_probability_buffer_per_call(tmp_path, monkeypatch):
    # No other per-sample matrix (one-hot labels, residuals, logits, a second
    # probability array for the fit, per-fold copies) is ever whole: each is
    # formed chunk by chunk. Chunks (1000 rows), the preconditioner's row sample
    # (512) and the dense build's row blocks stay below the 5000 rows that
    # count as "per sample" here; the smallest fold has 6,667.
    monkeypatch.setattr(head_module, "_PRECOND_ROWS", 512)
    n, m, d, k = 20_000, 1_000, 16, 3
    F, y = _blobs(n + m, d, k, seed=2)
    M = _memmap(tmp_path, F[:n])
    Mv = _memmap(tmp_path, F[n:], "Fv.npy")
    del F
    for solver in ("cg", "cholesky"):
        with _PerSampleAllocations(5000) as rec:
            head_influence(M, y[:n], Mv, y[n:], n_classes=k, alpha=ALPHA, solver=solver,
                           chunk_size=1000)
        assert rec.shapes == [(n + m, k)], solver
    tracemalloc.start()
    try:
        with _PerSampleAllocations(5000) as rec:
            res = cross_fit_head_influence(M, y[:n], n_classes=k, cv=3, alpha=ALPHA,
                                           random_state=0, chunk_size=1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert rec.shapes == [(n, k)]  # one buffer for all three folds
    # numpy: the outputs (oof_proba, scores, oof_loss, oof_self_influence,
    # validation weights, fold_of: 8k + 33 bytes a sample) and one fold's
    # indices, labels and scores at a time.
    outputs = res.oof_proba.nbytes + 4 * 8 * n + res.fold_of.nbytes
    assert peak < outputs + 6 * 8 * n, (peak, outputs)


def test_auto_chunks():
    F = np.zeros((50, 4), np.float32)
    assert FeatureChunks(F).single  # a small in-memory array is one chunk
    big = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (10**7, 512), (0, 0))
    ch = FeatureChunks(big)  # its float64 copy would exceed 1 GiB: chunked
    assert not ch.single and ch.chunk_size * 512 <= 2**17  # about 1 MiB of float64
    with pytest.raises(ValueError, match="chunk_size"):
        FeatureChunks(F, chunk_size=0)


def test_pages_released_only_for_shared_mappings(tmp_path, data):
    F, y, Fv, yv = data
    assert _page_releaser(_memmap(tmp_path, F)) is not None
    assert _page_releaser(F) is None
    # A copy-on-write memmap keeps the caller's unsaved edits: they are read,
    # never dropped by releasing pages.
    C = _memmap(tmp_path, F, "c.npy", mode="c")
    assert _page_releaser(C) is None
    C[:50] = C[50:100]
    edited = F.copy()
    edited[:50] = F[50:100]
    a = head_influence(edited, y, Fv, yv, n_classes=4, alpha=ALPHA)
    c = head_influence(C, y, Fv, yv, n_classes=4, alpha=ALPHA, chunk_size=64)
    assert _rel(a.scores, c.scores) < 1e-10
    # A shared mapping read (and released) chunk by chunk is read correctly twice.
    M = _memmap(tmp_path, F, "m.npy")
    ch = FeatureChunks(M, chunk_size=33)
    for _ in range(2):
        np.testing.assert_array_equal(torch.cat([X for _, X in ch]).numpy(),
                                      F.astype(np.float64))


def test_subset_pass_releases_every_row_it_spans(tmp_path, data):
    # The rows of a fold are not contiguous, so chunks do not start on page
    # windows: reading one chunk maps pages of the previous one again (the
    # kernel's fault-around). Each release therefore starts at the previous
    # chunk's first row, and a pass leaves no row between its first and last
    # one unreleased.
    F = data[0]
    ch = FeatureChunks(_memmap(tmp_path, F), chunk_size=16)
    rows = np.flatnonzero(np.arange(len(F)) % 3 != 1)
    sub = ch.subset(rows)
    released = []
    sub._release = lambda lo, hi: released.append((lo, hi))
    got = torch.cat([X for _, X in sub])
    np.testing.assert_array_equal(got.numpy(), F[rows].astype(np.float64))
    for (_, hi), (lo2, _) in zip(released, released[1:]):
        assert lo2 <= hi  # adjacent or overlapping: no gap left mapped
    starts = rows[::16]
    assert [lo for lo, _ in released] == [starts[0]] + list(starts[:-1])
    assert released[-1][1] == rows[-1] + 1


def test_validation_releases_the_rows_it_checked(tmp_path, monkeypatch):
    # The public path checks a memmap for NaN chunk by chunk; without releasing
    # what it read, a 1 GB feature file stayed mapped (resident) after fit's
    # validation.
    import skitl.utils._validation as validation

    F = np.ones((300_000, 8), np.float32)  # 2.4 M values: several check blocks
    M = _memmap(tmp_path, F, "big.npy")
    released = []
    real = validation.page_releaser

    def recording(X):
        release = real(X)
        assert release is not None
        return lambda lo, hi: (released.append((lo, hi)), release(lo, hi))

    monkeypatch.setattr(validation, "page_releaser", recording)
    assert validation.check_X(M, name="X") is M  # checked, returned as is
    assert len(released) > 1 and released[0][0] == 0 and released[-1][1] == len(F)
    for (_, hi), (lo2, _) in zip(released, released[1:]):
        assert lo2 == hi


def test_nonfinite_memmap_is_named(tmp_path, data):
    F, y, Fv, yv = data
    bad = F.copy()
    bad[650, 3] = np.nan
    with pytest.raises(ValueError, match="F_train contains NaN"):
        head_influence(_memmap(tmp_path, bad), y, Fv, yv, n_classes=4, alpha=ALPHA,
                       chunk_size=100)


class _Net(nn.Module):
    def __init__(self, bad=False):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(12, 8), nn.ReLU())
        self.fc = nn.Linear(8, 4)
        self.bad = bad

    def forward(self, x):
        h = self.body(x)
        if self.bad:
            h = h / 0.0
        return self.fc(h)


def test_extract_features_to_disk(tmp_path, data):
    F, y, _, _ = data
    torch.manual_seed(0)
    net = _Net()
    ref = extract_features(net, F, layer="fc", batch_size=64)
    out = extract_features(net, F, layer="fc", batch_size=64, out=tmp_path)
    assert isinstance(out, np.memmap) and out.dtype == np.float32
    assert out.shape == ref.shape and str(tmp_path) in out.filename
    np.testing.assert_array_equal(np.asarray(out), ref)
    # the file is a regular .npy file the caller can reopen
    np.testing.assert_array_equal(np.load(out.filename), ref)
    path = tmp_path / "named.npy"
    out2 = extract_features(net, torch.utils.data.TensorDataset(torch.from_numpy(F)),
                            layer="fc", batch_size=100, out=path)
    assert out2.filename == str(path)
    np.testing.assert_allclose(np.asarray(out2), ref, rtol=1e-6)
    # features on disk feed the engine directly
    a = fit_head(ref, y, 4, alpha=ALPHA)
    c = fit_head(out2, y, 4, alpha=ALPHA)
    assert _rel(a[0], c[0]) < 1e-6
    with pytest.raises(ValueError, match="directory or a path ending in '.npy'"):
        extract_features(net, F, layer="fc", out=tmp_path / "features.bin")
    with pytest.raises(ValueError, match="does not exist"):
        extract_features(net, F, layer="fc", out=tmp_path / "nope" / "f.npy")
    # a failed pass leaves no file behind
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match="NaN or infinite features"):
        extract_features(_Net(bad=True), F, layer="fc", out=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# -- the public path: a memmap or an h5py dataset through the selector ------------


def test_selector_keeps_a_memmap_and_an_h5py_dataset_out_of_core(tmp_path, monkeypatch):
    """Validation checks an on-disk table by chunks and hands it on as it is: the
    engine reads the same memmap (no in-memory copy), with the scores of the
    in-memory array."""
    import skitl.influence._api as api
    from skitl import InfluenceSampleSelector

    F, y = _blobs(3000, 12, 4, seed=5)
    Fv, yv = _blobs(400, 12, 4, seed=6)
    M = _memmap(tmp_path, F.astype(np.float32))
    seen = []
    original = api._features

    def spying(net, head_name, X, *args, **kwargs):
        out = original(net, head_name, X, *args, **kwargs)
        seen.append(type(out))
        return out

    monkeypatch.setattr(api, "_features", spying)
    on_disk = InfluenceSampleSelector(random_state=0).fit(M, y, X_val=Fv, y_val=yv)
    assert seen[0] is np.memmap
    in_memory = InfluenceSampleSelector(random_state=0).fit(np.asarray(M), y, X_val=Fv,
                                                            y_val=yv)
    np.testing.assert_allclose(on_disk.scores_, in_memory.scores_, rtol=1e-8,
                               atol=1e-14)
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "F.h5", "w") as fh:
        fh.create_dataset("F", data=F.astype(np.float32))
    with h5py.File(tmp_path / "F.h5", "r") as fh:
        from_h5 = InfluenceSampleSelector(random_state=0).fit(fh["F"], y, X_val=Fv,
                                                              y_val=yv)
        assert seen[-2].__name__ == "Dataset"  # the training features, then X_val
    np.testing.assert_allclose(from_h5.scores_, in_memory.scores_, rtol=1e-8, atol=1e-14)
    bad = np.lib.format.open_memmap(tmp_path / "bad.npy", mode="w+", dtype=np.float32,
                                    shape=F.shape)
    bad[:] = F
    bad[2000, 3] = np.nan
    with pytest.raises(ValueError, match="Input X contains NaN"):
        InfluenceSampleSelector().fit(bad, y, X_val=Fv, y_val=yv)
