"""Translated arrays (O(1) structures sharing stored positions) against dense references.

Every translated result is compared with a *fresh* array built from shifted positions
(``row + drow``), densified by :func:`sparse3d.testing.dense_reference`. The kernels are
forced (``MIN_ELEMENTS = 0``) where a test checks the compiled paths of a jitter loop.
"""

import numpy as np
import pytest

import sparse3d
from sparse3d import _functions, _kernels
from sparse3d.testing import dense_reference, random_scene

CORNERS = [(0, 0), (-7, 12), (40_000, -3)]
OFFSETS = [(0, 1), (3, -2), (-20, 0), (1, 1), (0, 1)]  # the last one repeats (a cached structure)

needs_numba = pytest.mark.skipif(not _kernels.available(), reason="numba is not installed")


def _shifted_dense(sc, data, d):
    return dense_reference(data, sc.row + d[0], sc.col + d[1], sc.imshape, sc.imcorner)


@pytest.mark.parametrize("imcorner", CORNERS)
@pytest.mark.parametrize("nsources", [0, 1, 7])
def test_translate_then_every_operation_matches_dense(imcorner, nsources):
    rng = np.random.default_rng(nsources)
    sc = random_scene(rng, imcorner=imcorner, nsources=nsources)
    S = sc.build()
    for d in OFFSETS:
        T = S.translate(d)
        D = _shifted_dense(sc, sc.data, d)
        np.testing.assert_array_equal(T.todense(), D)
        np.testing.assert_array_equal(T.row, np.broadcast_to(sc.row, S.stamp_shape) + d[0])
        np.testing.assert_array_equal(T.col, np.broadcast_to(sc.col, S.stamp_shape) + d[1])
        assert T.nnz == np.count_nonzero(_shifted_dense(sc, np.ones_like(sc.data), d))
        w = rng.normal(size=(nsources, 3))
        np.testing.assert_allclose(T.dot(w), np.tensordot(D, w, axes=([2], [0])), atol=1e-12)
        img = rng.normal(size=sc.imshape)
        np.testing.assert_allclose(
            np.tensordot(T, img, axes=([0, 1], [0, 1])),
            np.tensordot(D, img, axes=([0, 1], [0, 1])),
            atol=1e-12,
        )
        np.testing.assert_allclose(
            T.tocsr().toarray(), D.reshape(sc.imshape[0] * sc.imshape[1], nsources), atol=0
        )
        U = S.with_data(sc.data * 2).translate(d)  # same stored positions: one structure
        np.testing.assert_allclose(
            (T * U + np.exp(T)).todense(),
            D * 2 * D + np.where(_shifted_dense(sc, np.ones_like(sc.data), d) > 0, np.exp(D), 0),
            atol=1e-12,
        )
        back = T.translate((-d[0], -d[1]))
        np.testing.assert_array_equal(back.todense(), S.todense())
        assert back._structure.equals(S._structure)


def test_arrays_on_one_structure_share_the_translated_structure():
    rng = np.random.default_rng(3)
    sc = random_scene(rng, nsources=5)
    X = sc.build()
    dX = X.with_data(sc.data + 1)
    assert X.translate((2, 1))._structure is dX.translate((2, 1))._structure
    assert X.translate((2, 1))._structure._row is X._structure._row  # no copy of positions


def test_translate_range_is_checked_without_wrapping():
    rng = np.random.default_rng(4)
    sc = random_scene(rng, nsources=3)
    S = sc.build()
    assert S._structure.row.dtype == np.int16
    with pytest.raises(ValueError, match="translated by"):
        S.translate((2**61, 0))
    far = S.translate((2**40, -(2**40)))  # beyond int16/int32: materialised in int64, exact
    assert far.nnz == 0
    np.testing.assert_array_equal(far.row, sc.row.astype(np.int64) + 2**40)
    np.testing.assert_array_equal(far.translate((-(2**40), 2**40)).todense(), S.todense())


@needs_numba
@pytest.mark.parametrize("imcorner", CORNERS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.complex128])
def test_jitter_loop_kernels_match_dense(monkeypatch, imcorner, dtype):
    monkeypatch.setattr(_kernels, "MIN_ELEMENTS", 0)
    seen = []
    orig = _functions._fast_product

    def spy(*args):
        seen.append(orig(*args))
        return seen[-1]

    monkeypatch.setattr(_functions, "_fast_product", spy)
    rng = np.random.default_rng(5)
    sc = random_scene(rng, imcorner=imcorner, nsources=9, dtype=dtype)
    S = sc.build()
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for d in OFFSETS + [(0, 0), (-100, 50)]:
        T = S.translate(d)
        D = _shifted_dense(sc, sc.data, d).astype(np.complex128)
        for w in (rng.normal(size=9).astype(dtype), rng.normal(size=(9, 4)).astype(dtype)):
            ref = np.tensordot(D, w.astype(np.complex128), axes=([2], [0]))
            got = T.dot(w)
            assert got.dtype == dtype and got.shape == ref.shape
            np.testing.assert_allclose(got, ref if np.iscomplexobj(got) else ref.real, rtol=tol, atol=tol)
    assert seen[0] == "kernel" and "sorted" in seen


@needs_numba
def test_sorted_path_is_bit_identical_to_the_csr_product(monkeypatch):
    monkeypatch.setattr(_kernels, "MIN_ELEMENTS", 0)
    rng = np.random.default_rng(6)
    sc = random_scene(rng, imcorner=(-3, 4), nsources=30, imshape=(20, 22))
    S = sc.build()
    w = rng.normal(size=(30, 3))
    S.dot(w)  # the family's first product
    T = S.translate((1, -2))
    sorted_result = T.dot(w)  # family's second: sorted
    csr_result = np.asarray(T.tocsr() @ w).reshape(20, 22, 3)
    np.testing.assert_array_equal(sorted_result, csr_result)


@pytest.mark.parametrize("forced", [False, True])
@pytest.mark.parametrize("imcorner", CORNERS)
def test_roi_of_translated_arrays_matches_dense(monkeypatch, forced, imcorner):
    if forced:
        if not _kernels.available():
            pytest.skip("numba is not installed")
        monkeypatch.setattr(_kernels, "MIN_ELEMENTS", 0)
    rng = np.random.default_rng(7)
    sc = random_scene(rng, imcorner=imcorner, nsources=8, imshape=(15, 18))
    S = sc.build()
    r0, c0 = imcorner
    # windows inside, overlapping, and hanging over every image edge
    corners = np.array([(r0 + 2, c0 + 3), (r0 - 3, c0 + 14), (r0 + 12, c0 - 2), (r0 + 3, c0 + 4)])
    size = (5, 6)
    roi = S.roi(corners, size)
    for d in OFFSETS + [(40, 0)]:
        R = roi.translate(d)
        D = _shifted_dense(sc, sc.data, d)
        pad = np.zeros((15 + 20, 18 + 20, 8))
        pad[10:25, 10:28] = D
        ref = np.stack([pad[cr - r0 + 10 : cr - r0 + 15, cc - c0 + 10 : cc - c0 + 16] for cr, cc in corners])
        w = rng.normal(size=8)
        np.testing.assert_allclose(R.dot(w), np.tensordot(ref, w, axes=([3], [0])), atol=1e-12)
        W2 = rng.normal(size=(8, 3))
        np.testing.assert_allclose(R.dot(W2), np.tensordot(ref, W2, axes=([3], [0])), atol=1e-12)
        np.testing.assert_allclose(R.todense(), ref, atol=1e-12)


def test_legacy_jitter_loop_matches_fresh_arrays():
    rng = np.random.default_rng(9)
    sc = random_scene(rng, imcorner=(2, -1), nsources=6)
    from sparse3d import legacy

    L = legacy.Sparse3D(
        sc.data,
        np.broadcast_to(sc.row, sc.data.shape),
        np.broadcast_to(sc.col, sc.data.shape),
        sc.imshape,
        imcorner=sc.imcorner,
    )
    w = rng.normal(size=(6, 2))
    for d in OFFSETS:
        L.translate(d)
        ref = np.tensordot(_shifted_dense(sc, sc.data, d), w, axes=([2], [0])).transpose(2, 0, 1)
        np.testing.assert_allclose(L.dot(w), ref, atol=1e-12)
    assert isinstance(sparse3d.Sparse3D, type)


@needs_numba
def test_sorted_path_without_a_row_pointer_matches_dense(monkeypatch):
    # one stamp a million rows away: the rows span too much for a row pointer, so the
    # sorted product walks the image rows' run of the order and tests every column
    monkeypatch.setattr(_kernels, "MIN_ELEMENTS", 0)
    rng = np.random.default_rng(10)
    sc = random_scene(rng, imcorner=(-4, 6), nsources=6)
    row = np.broadcast_to(sc.row, sc.data.shape).copy()
    row[:, :, 0] += 1_000_000
    col = np.broadcast_to(sc.col, sc.data.shape)
    S = sparse3d.Sparse3D(sc.data, row, col, sc.imshape, sc.imcorner)
    assert S._structure.sorted_rows() is None
    w = rng.normal(size=(6, 2))
    S.dot(w)
    for d in [(1, 0), (-1_000_000, 2), (3, -4)]:
        D = dense_reference(sc.data, row + d[0], col + d[1], sc.imshape, sc.imcorner)
        np.testing.assert_allclose(S.translate(d).dot(w), np.tensordot(D, w, axes=([2], [0])), atol=1e-12)
