"""Safety: threads, pickling/copying, immutability, huge images without huge memory, float32."""

from __future__ import annotations

import copy
import pickle
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.sparse as sp

import sparse3d
from sparse3d import DenseAllocationError, Sparse3D, UnconstrainedSourceWarning
from sparse3d.testing import dense_reference, random_scene

MB = 1024**2


def _scene(seed=0):
    """A mid-size scene with overlaps and edge-hanging stamps."""
    return random_scene(
        seed, imshape=(120, 150), stamp=(5, 6), nsources=150, imcorner=(-3, 8)
    )


def _fresh(sc, data=None):
    """A new array on a new structure (copied positions: no structure or cache is shared)."""
    return Sparse3D(sc.data if data is None else data, sc.row.copy(), sc.col.copy(), sc.imshape, sc.imcorner)


# ---- threads ------------------------------------------------------------------------------
def _snapshot(x):
    if isinstance(x, Sparse3D):
        return ("Sparse3D", x.data.copy(), x.row.copy(), x.col.copy())
    if sp.issparse(x):
        fmt = x.format
        x = x.tocsr()
        return ("scipy" + fmt, x.data.copy(), x.indptr.copy(), x.indices.copy())
    if hasattr(x, "todense"):
        return ("COO", x.coords.copy(), x.data.copy())
    return ("ndarray", np.asarray(x).copy())


def _same(a, b):
    assert a[0] == b[0]
    for x, y in zip(a[1:], b[1:]):
        np.testing.assert_array_equal(x, y)


OPERATIONS = {
    "dot": lambda S, w, W: S.dot(w),
    "dot_k": lambda S, w, W: S.dot(W),
    "tocsr": lambda S, w, W: S.tocsr(),
    "tocsc": lambda S, w, W: S.tocsc(),
    "to_sparse": lambda S, w, W: S.to_sparse(),
    "exp": lambda S, w, W: np.exp(S),
    "mul": lambda S, w, W: S * w,
    "sum2": lambda S, w, W: np.sum(S, axis=2),
    "max01": lambda S, w, W: np.max(S, axis=(0, 1)),
    "project": lambda S, w, W: np.tensordot(S, np.ones(S.imshape), axes=([0, 1], [0, 1])),
    "cutout_dot": lambda S, w, W: S[10:60, 20:90].dot(w),
}


@pytest.mark.parametrize("rounds", [3])
def test_threads_on_a_cold_array_match_serial(rounds):
    sc = _scene(1)
    rng = np.random.default_rng(2)
    n = sc.data.shape[2]
    w = rng.normal(size=n)
    W = rng.normal(size=(n, 7))
    serial_array = _fresh(sc)
    serial = {name: _snapshot(op(serial_array, w, W)) for name, op in OPERATIONS.items()}
    names = list(OPERATIONS) * 8  # a multiple of the barrier size
    workers = 8
    for _ in range(rounds):
        S = _fresh(sc)  # cold caches: every thread races to build them
        barrier = threading.Barrier(workers)

        def run(name, S=S, barrier=barrier):
            try:
                barrier.wait(timeout=10)
            except threading.BrokenBarrierError:
                pass
            return name, _snapshot(OPERATIONS[name](S, w, W))

        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(run, names))
        for name, res in results:
            _same(res, serial[name])


# ---- pickling and copying -----------------------------------------------------------------
def test_pickle_is_exact_and_carries_no_caches():
    sc = _scene(3)
    S = _fresh(sc)
    S.tocsr(), S.to_sparse(), S.dot(np.ones(S.nsources))  # warm every cache
    blob = pickle.dumps(S)
    assert len(blob) < 1.5 * S.nbytes + 4096  # values and positions only
    U = pickle.loads(blob)
    assert "_csr" not in U.__dict__ and "coo" not in U.__dict__
    assert not {"in_image", "pixel", "csr_order", "coo_order", "csc_indices"} & set(vars(U._structure))
    for attr in ("data", "row", "col"):
        np.testing.assert_array_equal(getattr(U, attr), getattr(S, attr))
        assert getattr(U, attr).dtype == getattr(S, attr).dtype
        assert not getattr(U, attr).flags.writeable
    assert (U.imshape, U.imcorner, U.dtype) == (S.imshape, S.imcorner, S.dtype)
    np.testing.assert_array_equal(U.todense(), S.todense())
    assert (U.tocsr() != S.tocsr()).nnz == 0


def test_deepcopy_and_copy():
    S = _fresh(_scene(4))
    D = copy.deepcopy(S)
    assert D is not S and D.data is not S.data
    np.testing.assert_array_equal(D.data, S.data)
    np.testing.assert_array_equal(D.todense(), S.todense())
    assert not D.data.flags.writeable
    C = copy.copy(S)
    np.testing.assert_array_equal(C.todense(), S.todense())
    assert D + S is not None  # deep copies keep a structure equal to the original's


def test_hash_raises_and_eq_is_elementwise():
    S = _fresh(_scene(5))
    with pytest.raises(TypeError):
        hash(S)
    with pytest.raises(TypeError):
        {S}  # noqa: B018
    E = S == S
    assert isinstance(E, Sparse3D) and E.dtype == bool
    np.testing.assert_array_equal(E.data, S.data == S.data)
    N = S != 0
    assert isinstance(N, Sparse3D)


# ---- immutability ---------------------------------------------------------------------------
def test_arrays_are_immutable():
    sc = _scene(6)
    S = _fresh(sc)
    before = {a: np.array(getattr(S, a)) for a in ("data", "row", "col", "in_image")}
    shape, corner = S.imshape, S.imcorner
    for attr in before:
        arr = getattr(S, attr)
        assert not arr.flags.writeable, attr
        with pytest.raises(ValueError):
            arr[(0,) * arr.ndim] = arr[(0,) * arr.ndim]
    for attr in ("data", "row", "col", "in_image", "imshape", "imcorner", "shape", "dtype"):
        with pytest.raises(AttributeError):
            setattr(S, attr, None)
    # every public method leaves the array as it was
    w = np.ones(S.nsources)
    S.astype(np.float32), S.copy(), S.translate((3, -2)), S.with_data(np.zeros(S.stamp_shape))
    S.dot(w), S @ w, S.sum(), S.sum(axis=2), S.mean(axis=0), S.max(), S.min(axis=(0, 1))
    S.tocsc(), S.tocsr(), S.tocoo(), S.to_sparse(), S.todense(), S.transpose(2, 0, 1), S.T
    S[5:20, 5:30], S[:, :, :10], S[:, :, 3], np.exp(S), np.clip(S, 0, 1), np.where(S > 0, S, 0)
    T = S
    T += 1
    T *= 2
    assert T is not S
    for attr, value in before.items():
        np.testing.assert_array_equal(getattr(S, attr), value)
    assert (S.imshape, S.imcorner) == (shape, corner)
    np.testing.assert_array_equal(
        S.todense(), dense_reference(sc.data, sc.row, sc.col, sc.imshape, sc.imcorner)
    )


def test_input_arrays_are_copied():
    sc = _scene(7)
    data, row = sc.data.copy(), sc.row.copy()
    S = Sparse3D(data, row, sc.col, sc.imshape, sc.imcorner)
    expected = S.todense()
    data[...] = 99
    row[...] += 1
    np.testing.assert_array_equal(S.todense(), expected)


# ---- scale: huge images, small memory ---------------------------------------------------------
def _few_stamps(H, W, n=5, stamp=7):
    R, C = np.mgrid[:stamp, :stamp]
    rng = np.random.default_rng(8)
    tops = np.concatenate([[H // 2, H - 3, -2], rng.integers(0, H - stamp, n - 3)])
    lefts = np.concatenate([[W // 2, W - 3, -2], rng.integers(0, W - stamp, n - 3)])
    data = rng.uniform(0.5, 1.5, size=(stamp, stamp, n))
    return Sparse3D(data, R[:, :, None] + tops, C[:, :, None] + lefts, (H, W)), tops, lefts


@pytest.mark.parametrize("side", [60_000, 200_000])
def test_huge_image_without_image_sized_allocations(side):
    S0, tops, lefts = _few_stamps(side, side)
    tracemalloc.start()
    try:
        S, _, _ = _few_stamps(side, side)  # fresh structure: nothing cached
        n = S.nsources
        csc = S.tocsc()
        coo = S.tocoo()
        cube = S.to_sparse()
        assert csc.shape == coo.shape == (side * side, n)
        assert cube.shape == (side, side, n)
        r, c = int(tops[0]), int(lefts[0])
        cut = S[r - 10 : r + 20, c - 10 : c + 20]
        assert isinstance(cut, Sparse3D) and cut.imshape == (30, 30)
        model = cut.dot(np.ones(n))
        proj = np.tensordot(cut, np.ones((30, 30)), axes=([0, 1], [0, 1]))
        T = S.translate((-(side // 2), -(side // 2)))
        Tcut = T[:40, :40]
        model_t = Tcut.dot(np.ones(n))
        with pytest.warns(UnconstrainedSourceWarning):  # sources off the cutout have no data
            fit = cut.fit(model)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * MB, f"peak {peak / MB:.1f} MB"
    # values: the cutout holds the whole stamp of source 0 (and nothing image-sized)
    np.testing.assert_allclose(model.sum(), S.data[:, :, 0].sum(), rtol=1e-12)
    np.testing.assert_allclose(proj[0], S.data[:, :, 0].sum(), rtol=1e-12)
    np.testing.assert_allclose(model_t.sum(), S.data[:, :, 0].sum(), rtol=1e-12)
    np.testing.assert_allclose(fit.weights[0], 1.0, rtol=1e-10)  # the fit on a cutout recovers w
    assert fit.n_unconstrained == np.count_nonzero(np.isnan(fit.weights)) >= n - 3
    assert csc.nnz == coo.nnz == cube.nnz == S.nnz
    np.testing.assert_allclose(cube.data.sum(), S.data[S.in_image].sum())
    # the whole huge image refuses, stating the memory needed
    for call in (lambda: S.dot(np.ones(n)), S.tocsr, S.todense):
        with pytest.raises(DenseAllocationError, match=r"would allocate [\d.]+ (GiB|TiB)"):
            call()


# ---- float32 ------------------------------------------------------------------------------
def test_float32_stays_float32():
    sc = random_scene(9, dtype=np.float32)
    S = sc.build()
    w = np.ones(S.nsources, dtype=np.float32)
    f32 = np.dtype(np.float32)
    results = [
        S + 1.5,
        S * np.float32(2),
        np.exp(S),
        S * w,
        np.clip(S, -1, 1),
        S.translate((1, 2)),
        S[2:8, 3:9],
        S[:, :, :3],
        S.astype(np.float32),
        np.concatenate([S, S], axis=2),
    ]
    for r in results:
        assert r.dtype == f32
    for r in (
        S.dot(w),
        S.dot(np.ones((S.nsources, 6), np.float32)),
        S @ w,
        np.sum(S),
        np.sum(S, axis=2),
        np.mean(S, axis=(0, 1)),
        np.max(S, axis=2),
        np.tensordot(S, np.ones(S.imshape, np.float32), axes=([0, 1], [0, 1])),
        S.todense(),
        S.to_sparse(),
        S.tocsr(),
        S.tocsc(),
        S.tocoo(),
    ):
        assert r.dtype == f32, type(r)


def test_float32_dot_accumulates_accurately():
    # 1M stamp elements (40 000 sources x 5 x 5) in a 1000 x 1000 image: many stamps per pixel
    rng = np.random.default_rng(10)
    n, s, H = 40_000, 5, 1000
    R, C = np.mgrid[:s, :s]
    top = rng.integers(-2, H - 2, n)
    left = rng.integers(-2, H - 2, n)
    data = rng.uniform(0, 1, size=(s, s, n)).astype(np.float32)
    w = (10 ** rng.uniform(-1, 3, n)).astype(np.float32)
    S = Sparse3D(data, R[:, :, None] + top, C[:, :, None] + left, (H, H))
    assert S.data.size == 1_000_000
    got = S.dot(w)
    assert got.dtype == np.float32
    ref = Sparse3D(data.astype(np.float64), S.row, S.col, (H, H)).dot(w.astype(np.float64))
    scale = np.abs(ref).max()
    np.testing.assert_allclose(got, ref, rtol=2e-6, atol=2e-6 * scale)
    total = np.sum(S, dtype=np.float64)
    np.testing.assert_allclose(np.sum(S), total, rtol=1e-5)


def test_dense_allocation_limit_is_process_wide_and_restored():
    S, _, _ = _few_stamps(2000, 2000)
    S.dot(np.ones(S.nsources))
    with sparse3d.set_options(max_dense_bytes=1000):
        with pytest.raises(DenseAllocationError):
            S.dot(np.ones(S.nsources))
        with ThreadPoolExecutor(1) as pool:  # the limit reaches other threads (Dask's, pools)
            with pytest.raises(DenseAllocationError):
                pool.submit(lambda: S.dot(np.ones(S.nsources))).result()
        dask = pytest.importorskip("dask")
        lazy = dask.delayed(lambda: S.dot(np.ones(S.nsources)))()
        with pytest.raises(DenseAllocationError):
            lazy.compute(scheduler="threads")
    assert sparse3d.get_options()["max_dense_bytes"] == 2 * 1024**3
    assert S.dot(np.ones(S.nsources)).shape == (2000, 2000)
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(lambda: S.dot(np.ones(S.nsources)).shape).result() == (2000, 2000)
