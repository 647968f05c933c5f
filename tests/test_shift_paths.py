"""Sparse3D.shift on both of its paths: the NumPy/BLAS one and the compiled kernel.

``MIN_ELEMENTS`` is set to 0 (kernel) or out of reach (NumPy) so that each path runs on these
small scenes. The reference is the band-limited interpolant written as an explicit sum of
``np.sinc`` terms per source, plus ``scipy.ndimage.shift`` on a smooth stamp."""

import numpy as np
import pytest

from sparse3d import Sparse3D, _kernels

PATHS = ["numpy", "kernel"]


@pytest.fixture(params=PATHS)
def path(request, monkeypatch):
    if request.param == "kernel":
        if not _kernels.available():
            pytest.skip("numba is not installed")
        monkeypatch.setattr(_kernels, "MIN_ELEMENTS", 0)
    else:
        monkeypatch.setattr(_kernels, "MIN_ELEMENTS", 10**12)
    return request.param


def _scene(n, nr=6, nc=5, dtype=np.float64, seed=1, imshape=(14, 16), imcorner=(2, -3)):
    """Random stamps, many hanging over the image edges, on an image with a non-zero corner."""
    rng = np.random.default_rng(seed)
    R, C = np.mgrid[:nr, :nc]
    r0 = rng.integers(imcorner[0] - nr + 1, imcorner[0] + imshape[0], n)
    c0 = rng.integers(imcorner[1] - nc + 1, imcorner[1] + imshape[1], n)
    v = rng.normal(size=(nr, nc, n)).astype(dtype)
    return Sparse3D(v, R[:, :, None] + r0, C[:, :, None] + c0, imshape, imcorner=imcorner)


def _reference(S, drow, dcol):
    """Explicit sinc double sum per source, with the integer part moving the stamp."""
    nr, nc, n = S.stamp_shape
    drow = np.broadcast_to(np.asarray(drow, float), (n,))
    dcol = np.broadcast_to(np.asarray(dcol, float), (n,))
    v = S.data.astype(float)
    out = np.zeros((nr, nc, n))
    wr, wc = np.floor(drow + 0.5), np.floor(dcol + 0.5)
    fr, fc = drow - wr, dcol - wc
    for k in range(n):
        for i in range(nr):
            for j in range(nc):
                for a in range(nr):
                    for b in range(nc):
                        out[i, j, k] += np.sinc(i - a - fr[k]) * np.sinc(j - b - fc[k]) * v[a, b, k]
    return out, S.row + wr.astype(int), S.col + wc.astype(int)


@pytest.mark.parametrize("per_source", [False, True])
@pytest.mark.parametrize("n", [0, 1, 7])
def test_shift_is_the_sinc_sum(path, per_source, n):
    S = _scene(n)
    rng = np.random.default_rng(n)
    if per_source:
        d = (rng.uniform(-2.6, 2.6, n), rng.uniform(-2.6, 2.6, n))
    else:
        d = (0.3, -1.45)
    out = S.shift(d)
    ref, row, col = _reference(S, *d)
    np.testing.assert_allclose(out.data, ref, rtol=0, atol=1e-12)
    assert np.array_equal(out.row, row) and np.array_equal(out.col, col)
    assert out.imshape == S.imshape and out.imcorner == S.imcorner
    assert out.dtype == np.float64


def test_float32_stays_float32(path):
    S = _scene(5, dtype=np.float32)
    out = S.shift((np.array([0.1, -0.5, 0.4, 0.0, 0.25]), -0.3))
    ref, _, _ = _reference(S, np.array([0.1, -0.5, 0.4, 0.0, 0.25]), -0.3)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.data, ref, rtol=0, atol=2e-5 * np.abs(ref).max())


def test_integer_values_give_float64(path):
    S = _scene(3)
    Si = Sparse3D(np.round(S.data * 10).astype(np.int32), S.row, S.col, S.imshape, imcorner=S.imcorner)
    out = Si.shift((0.5, 0.2))
    ref, _, _ = _reference(Si, 0.5, 0.2)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out.data, ref, rtol=0, atol=1e-11)


def test_one_axis_and_whole_pixels(path):
    S = _scene(4)
    for d in [(0.0, 0.3), (-0.2, 0.0), (0.0, 2.0), (np.array([0.0, 0.0, 0.0, 0.0]), 0.4)]:
        ref, row, _ = _reference(S, *d)
        out = S.shift(d)
        np.testing.assert_allclose(out.data, ref, rtol=0, atol=1e-12)
        assert np.array_equal(out.row, row)
    # integer part only: the values are untouched (bit for bit), the stamps move
    out = S.shift((np.array([1.0, -2.0, 0.0, 3.0]), -1.0))
    assert np.array_equal(out.data, S.data)
    assert np.array_equal(out.row - S.row, np.broadcast_to([1, -2, 0, 3], S.row.shape))


def test_paths_agree_with_scipy_on_a_smooth_stamp(path):
    ndimage = pytest.importorskip("scipy.ndimage")
    R, C = np.mgrid[:21, :21]
    g = np.exp(-((R - 10.2) ** 2 + (C - 9.7) ** 2) / (2 * 2.0**2))
    S = Sparse3D(np.stack([g, 2 * g], axis=-1), R[:, :, None] + [0, 5], C[:, :, None] + [0, -4], (30, 30))
    out = S.shift((np.array([0.4, -0.25]), np.array([-0.3, 0.45])))
    for k, d in enumerate([(0.4, -0.3), (-0.25, 0.45)]):
        ref = ndimage.shift(S.data[:, :, k], d, order=5, mode="grid-constant")
        assert np.abs(out.data[:, :, k] - ref).max() <= 2e-3 * S.data[:, :, k].max()


def test_kernel_and_numpy_paths_agree(monkeypatch):
    if not _kernels.available():
        pytest.skip("numba is not installed")
    S = _scene(40, nr=9, nc=11, seed=5)
    rng = np.random.default_rng(2)
    for d in [(0.37, -0.12), (rng.uniform(-1, 1, 40), rng.uniform(-1, 1, 40))]:
        monkeypatch.setattr(_kernels, "MIN_ELEMENTS", 10**12)
        a = S.shift(d)
        monkeypatch.setattr(_kernels, "MIN_ELEMENTS", 0)
        b = S.shift(d)
        np.testing.assert_allclose(a.data, b.data, rtol=0, atol=1e-12)
        assert np.array_equal(a.row, b.row) and np.array_equal(a.col, b.col)


def test_pooled_output_is_fully_overwritten(monkeypatch):
    """A pooled buffer full of garbage must not show through the kernel's result."""
    if not _kernels.available():
        pytest.skip("numba is not installed")
    from sparse3d import _pool

    monkeypatch.setattr(_kernels, "MIN_ELEMENTS", 0)
    monkeypatch.setattr(_pool, "MIN_BYTES", 0)
    S = _scene(6)
    ref = S.shift((0.2, 0.3)).data.copy()
    taken = []
    real_take = _pool.take

    def take(shape, dtype):
        buf = np.full(shape, np.nan, dtype=dtype)
        taken.append(buf)
        return buf

    monkeypatch.setattr(_pool, "take", take)
    out = S.shift((0.2, 0.3))
    assert taken and np.shares_memory(out.data, taken[0])
    np.testing.assert_array_equal(out.data, ref)
    monkeypatch.setattr(_pool, "take", real_take)


# -------------------------------------------------------------------------------------------
# The compiled tiles: every tiling case, runs of sources, float32, one axis, grouped arrays
# -------------------------------------------------------------------------------------------
def _dense_reference(S, drow, dcol):
    """Per source, ``Ar @ stamp @ Ac.T`` with ``Ar[i, a] = sinc(i - a - frow)`` built here from
    ``np.sinc``; the whole part (nearest integer, ties up) moves the stamp."""
    nr, nc, n = S.stamp_shape
    drow = np.broadcast_to(np.asarray(drow, float), (n,))
    dcol = np.broadcast_to(np.asarray(dcol, float), (n,))
    wr, wc = np.floor(drow + 0.5), np.floor(dcol + 0.5)
    fr, fc = drow - wr, dcol - wc
    ir, ic = np.arange(nr), np.arange(nc)
    Ar = np.sinc(ir[None, :, None] - ir[None, None, :] - fr[:, None, None])  # (n, nr, nr)
    Ac = np.sinc(ic[None, :, None] - ic[None, None, :] - fc[:, None, None])  # (n, nc, nc)
    v = np.moveaxis(S.data.astype(float), 2, 0)  # (n, nr, nc)
    out = np.moveaxis(Ar @ v @ np.swapaxes(Ac, 1, 2), 0, 2)
    return out, S.row + wr.astype(int), S.col + wc.astype(int)


@pytest.fixture
def short_runs(monkeypatch):
    """Runs of 16 sources in the kernels: several full runs and a partial last one."""
    if _kernels.available():
        monkeypatch.setattr("sparse3d._shift_kernels.SHIFT_BUFFER_BYTES", 1)


# stamp sides 1-3 (no tiles), 4 and 8 (4-tiles), 5 and 10 (5-tiles), and sides whose last
# output group / input tile overlaps the previous one (6, 7, 9, 11, 13, 14)
SHAPES = [(1, 1), (2, 3), (3, 4), (4, 5), (7, 8), (9, 10), (10, 10), (11, 13), (6, 14)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("per_source", [False, True])
def test_every_tiling_matches_the_dense_reference(path, short_runs, shape, per_source):
    n = 37  # 16 + 16 + 5 sources: two full runs and a partial one
    S = _scene(n, *shape, seed=sum(shape))
    rng = np.random.default_rng(n + shape[0])
    d = (rng.uniform(-2.6, 2.6, n), rng.uniform(-2.6, 2.6, n)) if per_source else (1.3, -0.45)
    out = S.shift(d)
    ref, row, col = _dense_reference(S, *d)
    np.testing.assert_allclose(out.data, ref, rtol=0, atol=1e-12 * max(1, np.abs(ref).max()))
    assert np.array_equal(out.row, row) and np.array_equal(out.col, col)
    assert out.imshape == S.imshape and out.imcorner == S.imcorner


@pytest.mark.parametrize("shape", [(10, 10), (8, 11), (3, 5)])
@pytest.mark.parametrize("d", [(0.3, -0.2), (0.0, 0.41), (-0.5, 0.0), "per_source", "rows_per_source"])
def test_tiles_float32_and_one_axis(path, short_runs, shape, d):
    n = 21
    S = _scene(n, *shape, dtype=np.float32, seed=7)
    rng = np.random.default_rng(3)
    if d == "per_source":
        d = (rng.uniform(-0.5, 0.5, n), rng.uniform(-0.5, 0.5, n))
    elif d == "rows_per_source":  # per-source rows, one column shift for all
        d = (rng.uniform(-1.5, 1.5, n), 0.25)
    out = S.shift(d)
    ref, row, col = _dense_reference(S, *d)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.data, ref, rtol=0, atol=3e-6 * np.abs(ref).max())
    assert np.array_equal(out.row, row) and np.array_equal(out.col, col)


@pytest.mark.parametrize("sigma,stamp", [(1.0, (10, 10)), (1.0, (11, 13)), (1.5, (15, 15))])
def test_tiles_meet_the_documented_error_bound(path, sigma, stamp):
    """σ ≥ 1 px, |δ| ≤ 0.5 px: within 1e-2 of the peak of the re-evaluated Gaussian (1e-3 at 1.5 px)."""
    from sparse3d.psf import Gaussian

    def gauss(dr, dc):
        return np.exp(-(dr**2 + dc**2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)

    rng = np.random.default_rng(5)
    n = 60
    rows, cols = rng.uniform(-3, 35, n), rng.uniform(-3, 35, n)
    L = Gaussian(sigma).design(rows, cols, (32, 32), stamp, imcorner=(1, -2))
    peak = 1 / (2 * np.pi * sigma**2)
    bound = 1e-2 if sigma < 1.5 else 1e-3
    for d in [(0.5, -0.5), (0.3, -0.45), (rng.uniform(-0.5, 0.5, n), rng.uniform(-0.5, 0.5, n))]:
        S = L.shift(d)
        ref = gauss(S.row - (rows + d[0]), S.col - (cols + d[1]))
        assert np.abs(S.data - ref).max() <= bound * peak


def test_grouped_arrays_shift_group_by_group_on_the_kernel(path, short_runs):
    A = _scene(20, 6, 5, seed=8)
    B = _scene(17, 10, 10, seed=9)
    G = np.concatenate([A, B], axis=2)
    assert G._structure.grouped
    rng = np.random.default_rng(4)
    for d in [(0.3, -0.7), (rng.uniform(-1, 1, 37), rng.uniform(-1, 1, 37))]:
        expected = []
        for S, part in ((A, slice(0, 20)), (B, slice(20, 37))):
            dp = [x if np.ndim(x) == 0 else x[part] for x in d]
            ref, row, col = _dense_reference(S, *dp)
            expected.append(Sparse3D(ref, row, col, S.imshape, imcorner=S.imcorner).todense())
        np.testing.assert_allclose(G.shift(d).todense(), np.concatenate(expected, axis=2), rtol=0, atol=1e-12)


@pytest.mark.parametrize("d", [(0.2, 0.3), (0.0, 0.3), (0.2, 0.0), "per_source"])
def test_pooled_output_is_fully_overwritten_on_every_kernel(monkeypatch, d):
    """NaN-filled pooled buffers must not show through, whichever passes run."""
    if not _kernels.available():
        pytest.skip("numba is not installed")
    from sparse3d import _pool

    monkeypatch.setattr(_kernels, "MIN_ELEMENTS", 0)
    monkeypatch.setattr("sparse3d._shift_kernels.SHIFT_BUFFER_BYTES", 1)
    monkeypatch.setattr(_pool, "MIN_BYTES", 0)
    S = _scene(23, 9, 7)
    if d == "per_source":
        rng = np.random.default_rng(1)
        d = (rng.uniform(-0.5, 0.5, 23), rng.uniform(-0.5, 0.5, 23))
    ref, _, _ = _dense_reference(S, *d)
    taken = []

    def take(shape, dtype):
        taken.append(np.full(shape, np.nan, dtype=dtype))
        return taken[-1]

    monkeypatch.setattr(_pool, "take", take)
    out = S.shift(d)
    assert taken and np.shares_memory(out.data, taken[0])
    np.testing.assert_allclose(out.data, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("per_source", [False, True])
def test_a_source_result_does_not_depend_on_its_neighbours(path, short_runs, per_source):
    """Deterministic: the same source gives the same bits in any subset (run and vector
    boundaries fall elsewhere)."""
    n = 53
    S = _scene(n, 10, 9, seed=12)
    rng = np.random.default_rng(6)
    d = (rng.uniform(-0.5, 0.5, n), rng.uniform(-0.5, 0.5, n)) if per_source else (0.3, -0.2)
    full = S.shift(d).data
    for lo, hi in [(3, 40), (17, 53), (5, 12)]:  # subsets of >= 2 sources (1 would be a shared shift)
        sub = Sparse3D(S.data[:, :, lo:hi], S.row[:, :, lo:hi], S.col[:, :, lo:hi], S.imshape, S.imcorner)
        part = tuple(x if np.ndim(x) == 0 else x[lo:hi] for x in d)
        assert np.array_equal(sub.shift(part).data, full[:, :, lo:hi])
