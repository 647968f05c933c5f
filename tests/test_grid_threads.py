"""The grid scatter of ``dot`` in threads (bands of image rows): the same bits for any thread
count, and bit for bit the serial sum ``image[stamp] += values * w`` in source order (a dense
NumPy reference with a margin for the off-image pixels).

``MIN_ELEMENTS`` and ``PARALLEL_MIN_WORK`` are lowered to 0 so that small scenes take the
compiled, threaded path.
"""

import numpy as np
import pytest

import sparse3d
from sparse3d import Sparse3D, _grid_kernels, _kernels, _threads

pytestmark = pytest.mark.skipif(not _kernels.available(), reason="numba is not installed")


@pytest.fixture(autouse=True)
def threads_always(monkeypatch):
    monkeypatch.setattr(_kernels, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(_threads, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(_grid_kernels, "SCATTER_BLOCK", 4)  # several blocks per band


def _scene(rng, n, dtype, imcorner, H=23, W=17, nr=5, nc=4):
    """Grid stamps over every edge of an ``(H, W)`` image with corner ``imcorner``; the dense
    reference is built separately from the corners."""
    top = rng.integers(-nr + 1, H, size=n)
    left = rng.integers(-nc + 1, W, size=n)
    R, C = np.mgrid[:nr, :nc]
    values = rng.normal(size=(nr, nc, n)).astype(dtype)
    row = R[:, :, None] + top + imcorner[0]
    col = C[:, :, None] + left + imcorner[1]
    S = Sparse3D(values, row, col, (H, W), imcorner=imcorner)
    return S, values, top, left


def _reference(values, top, left, w, H, W):
    """``Σ_k`` stamp ``k`` times ``w[k, :]``, added in source order (``w``: ``(n, m)``)."""
    nr, nc, n = values.shape
    m = w.shape[1]
    ref = np.zeros((H + 2 * nr, W + 2 * nc, m), dtype=values.dtype)  # margins hold off-image pixels
    for k in range(n):
        ref[top[k] + nr : top[k] + 2 * nr, left[k] + nc : left[k] + 2 * nc] += values[:, :, k, None] * w[k]
    return ref[nr : nr + H, nc : nc + W]


def _dot(S, w, threads, monkeypatch):
    """``S.dot(w)`` with ``threads`` threads, on a fresh copy of ``S`` (a first product: the
    scatter; later products of one array use its cached CSR matrix); the band counts run
    (bands are taken by whichever thread is free: which thread ran which is not fixed)."""
    S = Sparse3D(S._values, S._structure._row, S._structure._col, S.imshape, imcorner=S.imcorner)
    calls = []
    orig = _grid_kernels._scatter_bands

    def spy(*args):
        calls.append(len(args[-2]) - 1)  # the bands (edges - 1)
        return orig(*args)

    monkeypatch.setattr(_grid_kernels, "_scatter_bands", spy)
    with sparse3d.set_options(num_threads=threads):
        got = S.dot(w)
    return got, calls


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("imcorner", [(0, 0), (-7, 12), (40_000, -3)])
@pytest.mark.parametrize("m", [None, 1, 3])
@pytest.mark.parametrize("n", [0, 1, 2, 150])
def test_threaded_grid_dot_is_the_serial_sum(monkeypatch, dtype, imcorner, m, n):
    rng = np.random.default_rng(n + 10 * (m or 0))
    S, values, top, left = _scene(rng, n, dtype, imcorner)
    assert n == 0 or S._structure.grid_corners() is not None  # no stamps: nothing to scatter
    w = rng.normal(size=n if m is None else (n, m)).astype(dtype)
    ref = _reference(values, top, left, w.reshape(n, m or 1), *S.imshape)
    if m is None:
        ref = ref[:, :, 0]
    results = {}
    for threads in (1, 2, 3):
        got, calls = _dot(S, w, threads, monkeypatch)
        assert got.dtype == np.dtype(dtype) and got.shape == ref.shape
        per = _grid_kernels.BANDS_PER_THREAD
        assert calls == ([per * threads] if threads > 1 and n else [])  # the bands ran
        np.testing.assert_array_equal(got, ref)
        results[threads] = got
    assert all(np.array_equal(results[1], r) for r in results.values())


@pytest.mark.parametrize("H", [1, 2, 3])
def test_more_threads_than_image_rows(monkeypatch, H):
    """Bands never empty: as many as there are rows at most, and stamps taller than a band."""
    rng = np.random.default_rng(H)
    S, values, top, left = _scene(rng, 40, np.float64, (3, -2), H=H, W=9, nr=4, nc=3)
    w = rng.normal(size=40)
    got, calls = _dot(S, w, 4, monkeypatch)
    assert calls == ([min(4 * _grid_kernels.BANDS_PER_THREAD, H)] if H > 1 else [])
    np.testing.assert_array_equal(got, _reference(values, top, left, w[:, None], H, 9)[:, :, 0])


def test_threads_follow_the_work_threshold(monkeypatch):
    """Below ``PARALLEL_MIN_WORK`` multiply-adds the scatter stays in the calling thread."""
    rng = np.random.default_rng(1)
    S, *_ = _scene(rng, 30, np.float64, (0, 0))
    monkeypatch.setattr(_threads, "PARALLEL_MIN_WORK", S._values.size + 1)
    assert _dot(S, np.ones(30), 2, monkeypatch)[1] == []
    monkeypatch.setattr(_threads, "PARALLEL_MIN_WORK", S._values.size)
    assert _dot(S, np.ones(30), 2, monkeypatch)[1] == [2 * _grid_kernels.BANDS_PER_THREAD]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("m", [None, 1, 3])
@pytest.mark.parametrize("n", [1, 2, 150])
def test_repeated_dot_cached_csr_in_row_bands(dtype, m, n):
    """From the second product on, an array's products use its cached CSR matrix; large ones
    run in bands of image rows (one CSR band per thread over views of the cached arrays): the
    same bits for any thread count, equal to the dense model and to SciPy's product."""
    rng = np.random.default_rng(n + 7 * (m or 0))
    S, values, top, left = _scene(rng, n, dtype, (-7, 12))
    w = rng.normal(size=n if m is None else (n, m)).astype(dtype)
    ref = _reference(values, top, left, w.reshape(n, m or 1), *S.imshape)
    results = {}
    for threads in (1, 2, 3):
        with sparse3d.set_options(num_threads=threads):
            S.dot(w)  # the first product: the scatter; the CSR matrix is built at the second
            got = S.dot(w)
        results[threads] = got
        if threads > 1:
            assert threads in S.__dict__["_csr_band_cache"]  # the banded product ran
            bands = S.__dict__["_csr_band_cache"][threads]
            assert sum(b.shape[0] for b in bands) == S.imshape[0] * S.imshape[1]
            assert all(np.shares_memory(b.data, S._csr.data) for b in bands if b.nnz)
        rtol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(got, ref if m else ref[:, :, 0], rtol=rtol)
    expected = np.asarray(S._csr @ w).reshape(results[1].shape)
    assert all(np.array_equal(r, expected) for r in results.values())
