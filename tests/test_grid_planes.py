"""The planes scatter of grid stamps (``_planes_kernels.planes_scatter``): a jitter loop's models
written straight into sparse3d 1.x's ``(k, H, W)`` layout, against dense NumPy references.

Kernels and lending are forced on the small scenes (``MIN_ELEMENTS = 0``, ``MIN_BYTES = 0``).
The references are ``np.add.at`` scatters (:func:`sparse3d.testing.dense_reference`) of the
stamps at the translated positions, contracted in complex128.
"""

from __future__ import annotations

import numpy as np
import pytest
from translation_cases import CORNERS, OFFSETS  # tests/ is on sys.path

from sparse3d import _functions, _kernels, _planes_kernels, _pool, legacy
from sparse3d.testing import dense_reference, random_scene

pytestmark = pytest.mark.skipif(not _kernels.available(), reason="numba is not installed")


@pytest.fixture
def planes_calls(monkeypatch, small_kernels):
    """Kernels and lending on small arrays; counts the calls of the planes scatter."""
    calls: list = []
    orig = _planes_kernels.planes_scatter

    def spy(*args):
        calls.append(args[-1].shape)
        return orig(*args)

    monkeypatch.setattr(_planes_kernels, "planes_scatter", spy)
    _pool.clear()
    yield calls
    _pool.clear()


def _dense_at(sc, d):
    return dense_reference(sc.data, sc.row + d[0], sc.col + d[1], sc.imshape, sc.imcorner)


def _planes_ref(D, w):
    """``(k, H, W)``: plane ``q`` is ``Σ_s D[:, :, s] w[s, q]`` (complex128, then moved)."""
    m = np.tensordot(D.astype(np.complex128), np.asarray(w).astype(np.complex128), axes=([2], [0]))
    return np.moveaxis(m, -1, 0) if m.ndim == 3 else m


def _check(got, ref, dtype):
    tol = 2e-5 if np.dtype(dtype) in (np.float32, np.complex64) else 1e-12
    ref = ref if np.iscomplexobj(got) else ref.real
    assert got.shape == ref.shape and got.dtype == dtype
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)


def _legacy(sc):
    full = np.broadcast_to
    return legacy.Sparse3D(
        sc.data, full(sc.row, sc.data.shape), full(sc.col, sc.data.shape), sc.imshape, sc.imcorner
    )


@pytest.mark.parametrize("imcorner", CORNERS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("nsources", [0, 1, 9])
def test_legacy_jitter_loop_matches_dense_with_1d_and_2d_weights(planes_calls, imcorner, dtype, nsources):
    rng = np.random.default_rng(nsources + 3 * len(str(imcorner)))
    sc = random_scene(rng, imshape=(23, 19), stamp=(5, 4), imcorner=imcorner, nsources=nsources, dtype=dtype)
    L = _legacy(sc)
    kept = []
    for i, d in enumerate(OFFSETS):
        L.translate(d)  # absolute: from the constructor's positions
        D = _dense_at(sc, d)
        # a translation's first product is the jitter loop's (a 2-D one again takes the planes scatter)
        for k in ((1, 2, 3, 5)[i % 4], None):
            w = rng.normal(size=(nsources,) if k is None else (nsources, k)).astype(dtype)
            got = L.dot(w)
            _check(got, _planes_ref(D, w), dtype)
            if k is not None:
                assert got.flags.c_contiguous  # (k, H, W) written in place, not a transposed view
            kept.append((got, got.copy()))
    for got, snapshot in kept:  # no later model overwrote an earlier one
        np.testing.assert_array_equal(got, snapshot)
    if nsources:
        assert planes_calls  # the family's later 2-D products took the planes scatter


@pytest.mark.parametrize("imcorner", CORNERS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128])
@pytest.mark.parametrize("order", ["C", "F"])
def test_planes_scatter_matches_dense_at_every_offset(imcorner, dtype, order):
    """Stamps sorted by top row, translated inside, over every edge and wholly off the image;
    C- and Fortran-ordered weights (1.x's ``flux[:, frames]``) give the same bits, and the
    model equals the pixel-sorted scatter's ascending-source sums to rounding."""
    rng = np.random.default_rng(7)
    sc = random_scene(rng, imshape=(21, 19), stamp=(6, 5), imcorner=imcorner, nsources=40, dtype=dtype)
    S = sc.build()
    s = S._structure
    inputs = _functions.translated._planes_inputs(S)
    H, W = S.imshape
    for d in OFFSETS:
        T = S.translate(d)
        w = rng.normal(size=(S.nsources, 3)).astype(dtype)
        out = np.full((3, H, W), np.nan, dtype=dtype)  # any content: overwritten
        got = _planes_kernels.planes_scatter(
            *inputs, np.asarray(w, order=order), T._structure.root_corner, out
        )
        assert got is out
        _check(got, _planes_ref(_dense_at(sc, d), w), dtype)
        other = np.empty_like(out)
        _planes_kernels.planes_scatter(
            *inputs, np.asarray(w, order="F" if order == "C" else "C"), T._structure.root_corner, other
        )
        np.testing.assert_array_equal(got, other)
        sorted_model = _kernels.sorted_scatter(
            s.sorted_order()[1:], _functions.sorted_values(S), T._structure.root_corner, (H, W), w, dtype
        )
        tol = 1e-5 if np.dtype(dtype) == np.float32 else 1e-13
        np.testing.assert_allclose(got, np.moveaxis(sorted_model, -1, 0), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex64, np.complex128])
@pytest.mark.parametrize("shift", [0, 1])
def test_planes_scatter_rows_stream_out_at_any_alignment(dtype, shift):
    """A tall image with many stamps (the ring of summed rows wraps many times), stamps of one
    and of many rows, and a result starting ``shift`` items past an aligned address (the rows
    are written by non-temporal 64-byte stores only where aligned)."""
    rng = np.random.default_rng(2 + shift)
    for stamp, imshape in [((5, 3), (61, 13)), ((1, 4), (17, 9)), ((7, 7), (5, 30))]:
        sc = random_scene(rng, imshape=imshape, stamp=stamp, nsources=60, imcorner=(3, -4), dtype=dtype)
        S = sc.build()
        inputs = _functions.translated._planes_inputs(S)
        H, W = imshape
        for d in [(0, 0), (2, -1), (-3, 5)]:
            w = rng.normal(size=(60, 2)).astype(dtype)
            out = np.full(2 * H * W + shift, np.nan, dtype=dtype)[shift:].reshape(2, H, W)
            _planes_kernels.planes_scatter(*inputs, w, S.translate(d)._structure.root_corner, out)
            _check(out, _planes_ref(_dense_at(sc, d), w), dtype)


def test_planes_order_sorts_the_stamps_by_top_row():
    rng = np.random.default_rng(11)
    sc = random_scene(rng, imshape=(30, 20), stamp=(4, 3), nsources=25)
    S = sc.build()
    row0, col0 = S._structure.grid_corners()
    svals, srow0, scol0, source = _planes_kernels.planes_order(S._values, row0, col0)
    assert np.all(np.diff(srow0) >= 0) and sorted(source) == list(range(25))
    ties = np.diff(srow0) == 0
    assert np.all(np.diff(source)[ties] > 0)  # a stable sort: equal rows keep source order
    np.testing.assert_array_equal(svals, np.moveaxis(sc.data, 2, 0)[source])
    np.testing.assert_array_equal(scol0, col0[source])
    assert all(not a.flags.writeable for a in (svals, srow0, scol0, source))


def test_mixed_dtypes_and_zero_columns(planes_calls):
    rng = np.random.default_rng(3)
    sc = random_scene(rng, imshape=(17, 13), stamp=(3, 4), imcorner=(-2, 5), nsources=7, dtype=np.float32)
    S = sc.build()
    H, W = S.imshape
    for d in [(0, 1), (1, 1), (-2, 3)]:
        T = S.translate(d)
        for k in (3, 0):
            w = rng.normal(size=(7, k))  # float32 stamps, float64 weights: a float64 model
            target = np.full((k, H, W), np.nan)
            into = target.transpose(1, 2, 0)
            assert _functions.dot(T, w, _into=into) is into
            _check(target, _planes_ref(_dense_at(sc, d), w), np.float64)
    assert (3, H, W) in planes_calls


def test_zero_sources_and_an_empty_stamp_block():
    out = np.full((2, 4, 5), np.nan)
    empty = np.zeros((0, 3, 3))
    idx = np.zeros(0, dtype=np.int64)
    got = _planes_kernels.planes_scatter(empty, idx, idx, idx, np.zeros((0, 2)), (0, 0), out)
    assert got is out
    np.testing.assert_array_equal(out, 0)


def test_off_image_nan_never_reaches_the_model(planes_calls):
    rng = np.random.default_rng(5)
    sc = random_scene(rng, imshape=(12, 10), stamp=(4, 4), nsources=8)
    data = sc.data.copy()
    D0 = _dense_at(sc, (0, 0))
    L = _legacy(sc)
    H, W = sc.imshape
    off = (sc.row + 0 < 0) | (sc.row >= H) | (sc.col < 0) | (sc.col >= W)
    assert off.any()
    data[np.broadcast_to(off, data.shape)] = np.nan  # NaN only where the stamps leave the image
    L = _legacy(type(sc)(data, sc.row, sc.col, sc.imshape, sc.imcorner))
    L.translate((1, 0))
    L.dot(rng.normal(size=(8, 2)))  # the family's first product (the grid scatter)
    L.reset()
    w = rng.normal(size=(8, 2))
    got = L.dot(w)  # its second: the planes scatter
    assert planes_calls
    _check(got, _planes_ref(D0, w), np.float64)


def test_non_grid_stamps_keep_the_sorted_scatter(planes_calls):
    rng = np.random.default_rng(9)
    perm = rng.permutation(12).reshape(3, 4)
    top = rng.integers(-3, 10, size=5)
    left = rng.integers(-4, 12, size=5)
    row = (perm // 4)[:, :, None] + top  # every stamp's pixels shuffled: not a grid
    col = (perm % 4)[:, :, None] + left
    data = rng.normal(size=row.shape)
    L = legacy.Sparse3D(data, row, col, (9, 11))
    assert L.to_v2()._structure.grid_corners() is None
    for d in [(0, 1), (1, 1), (2, -1), (-1, 0)]:
        L.translate(d)
        w = rng.normal(size=(5, 3))
        ref = _planes_ref(dense_reference(data, row + d[0], col + d[1], (9, 11)), w)
        _check(L.dot(w), ref, np.float64)
    assert not planes_calls


@pytest.mark.parametrize("dtype", [np.int16, np.bool_, np.complex64])
def test_integer_bool_and_complex_stamps(planes_calls, dtype):
    rng = np.random.default_rng(1)
    sc = random_scene(rng, imshape=(15, 12), stamp=(3, 4), nsources=7, dtype=dtype, imcorner=(3, -2))
    L = _legacy(sc)
    for d in [(1, 1), (0, -2), (3, 3), (-4, 14)]:
        L.translate(d)
        w = rng.normal(size=(7, 2))
        got = L.dot(w)
        _check(got, _planes_ref(_dense_at(sc, d), w), np.result_type(dtype, np.float64))
    assert len(planes_calls) == 3  # every translation after the family's first product


def _planes_serial(values, top, left, w, H, W):
    """``(m, H, W)``: every stamp times ``w[k, :]`` added in the planes order (top row, then
    source index), ``image += values * w`` as NumPy rounds it (margins hold off-image pixels)."""
    nr, nc, n = values.shape
    ref = np.zeros((w.shape[1], H + 2 * nr, W + 2 * nc), dtype=np.result_type(values, w))
    for k in np.argsort(top, kind="stable"):
        ref[:, top[k] + nr : top[k] + 2 * nr, left[k] + nc : left[k] + 2 * nc] += (
            values[None, :, :, k] * w[k, :, None, None]
        )
    return ref[:, nr : nr + H, nc : nc + W]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("imcorner", [(0, 0), (-7, 12)])
def test_planes_scatter_in_threads_gives_the_same_bits_for_any_thread_count(monkeypatch, dtype, imcorner):
    """Bands of image rows handed out to the threads, each summed in its thread's ring: stamps
    over every edge and across the bands; the bits equal the serial sum in the planes order
    whatever the count (also more threads and bands than rows), and the stamps of a band are
    prefetched up to its end."""
    import sparse3d
    from sparse3d import Sparse3D, _threads

    monkeypatch.setattr(_threads, "PARALLEL_MIN_WORK", 0)
    monkeypatch.setattr(_planes_kernels, "SERIAL_BELOW", 0)
    bands: list = []
    orig = _threads.share

    def spy(fn, items, threads, *args):
        bands.append((len(items), threads))
        return orig(fn, items, threads, *args)

    monkeypatch.setattr(_threads, "share", spy)
    rng = np.random.default_rng(21)
    for H, W, nr, nc, n in [(41, 23, 5, 4, 90), (3, 30, 6, 3, 25), (60, 9, 1, 9, 70)]:
        top = rng.integers(-nr + 1, H, size=n)
        left = rng.integers(-nc + 1, W, size=n)
        R, C = np.mgrid[:nr, :nc]
        values = rng.normal(size=(nr, nc, n)).astype(dtype)
        S = Sparse3D(
            values,
            R[:, :, None] + top + imcorner[0],
            C[:, :, None] + left + imcorner[1],
            (H, W),
            imcorner=imcorner,
        )
        inputs = _functions.translated._planes_inputs(S)
        w = rng.normal(size=(n, 3)).astype(dtype)
        ref = _planes_serial(values, top, left, w, H, W)
        for threads in (1, 2, 3, 7):
            bands.clear()
            out = np.full((3, H, W), np.nan, dtype=dtype)
            with sparse3d.set_options(num_threads=threads):
                _planes_kernels.planes_scatter(*inputs, w, S._structure.root_corner, out)
            pieces = min(threads * _planes_kernels.BANDS_PER_THREAD, H)
            assert bands == ([] if threads == 1 else [(pieces, threads)])
            np.testing.assert_array_equal(out, ref)


def test_repeated_2d_products_of_one_array_take_the_planes_scatter(planes_calls):
    """Products of one array without a translation in between (1.x code calling ``dot`` twice):
    the planes scatter again, with no CSR matrix built; still the dense model."""
    rng = np.random.default_rng(8)
    sc = random_scene(rng, imshape=(19, 16), stamp=(4, 5), imcorner=(2, -3), nsources=11)
    L = _legacy(sc)
    L.translate((1, -2))
    D = _dense_at(sc, (1, -2))
    for i in range(4):
        w = rng.normal(size=(11, 1 + i))
        _check(L.dot(w), _planes_ref(D, w), np.float64)
    assert len(planes_calls) == 3  # all but the family's first product
    assert "_csr" not in L._cur.__dict__
    w = rng.normal(size=11)  # a 1-D product keeps the CSR path (an (H, W) image, not planes)
    _check(L.dot(w), _planes_ref(D, w), np.float64)
    assert len(planes_calls) == 3


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("nc", [8, 9, 15, 16, 17, 31, 33])
def test_planes_scatter_stamp_rows_of_one_two_and_more_vectors(dtype, nc):
    """Stamp rows of one, two (loaded once for every plane) and more 64-byte vectors (8 float64,
    16 float32), clipped at both image edges to any width, into 1 and 4 planes (C- and
    Fortran-ordered weights); float32 stamps with float64 weights take the scalar loops. Bits
    equal the serial sum in the planes order."""
    from sparse3d import Sparse3D

    rng = np.random.default_rng(nc)
    H, W, nr, n = 14, 41, 3, 40
    top = rng.integers(-nr + 1, H, size=n)
    left = rng.integers(-nc + 1, W, size=n)
    R, C = np.mgrid[:nr, :nc]
    values = rng.normal(size=(nr, nc, n)).astype(dtype)
    S = Sparse3D(values, R[:, :, None] + top, C[:, :, None] + left, (H, W))
    inputs = _functions.translated._planes_inputs(S)
    for m, wdtype, order in [(1, dtype, "C"), (4, dtype, "F"), (3, np.float64, "C")]:
        w = np.asarray(rng.normal(size=(n, m)).astype(wdtype), order=order)
        out = np.full((m, H, W), np.nan, dtype=np.result_type(dtype, wdtype))
        _planes_kernels.planes_scatter(*inputs, w, S._structure.root_corner, out)
        np.testing.assert_array_equal(out, _planes_serial(values, top, left, w, H, W))


@pytest.mark.parametrize("n", [0, 1, 2, 7, 64])
def test_the_loops_bisection_is_searchsorted(n):
    _planes_kernels._compiled("_planes_loop")  # the helper as the loop runs it (compiled)
    rng = np.random.default_rng(n)
    a = np.sort(rng.integers(-5, 5, size=n)).astype(np.int64)
    for v in range(-8, 9):
        assert _planes_kernels._first_at_least(a, v) == np.searchsorted(a, v)
