"""Edge cases that once gave wrong answers or crashed (issue 16), against dense NumPy references.

Every expected value comes from ``todense()``-independent constructions: the dense reference
of :func:`sparse3d.testing.dense_reference` (``np.add.at``) or arrays written out by hand.
"""

from __future__ import annotations

import fractions
import io
import pickle
import threading

import numpy as np
import pytest
import sparse

import sparse3d
from sparse3d import DenseAllocationError, Sparse3D
from sparse3d.testing import dense_reference, random_scene

GRID_R, GRID_C = np.mgrid[:3, :3]


def _grid(top, left, imshape=(10, 10), imcorner=(0, 0), data=None, dtype=float):
    top, left = np.atleast_1d(top), np.atleast_1d(left)
    row, col = GRID_R[:, :, None] + top, GRID_C[:, :, None] + left
    if data is None:
        data = np.arange(1, row.size + 1, dtype=dtype).reshape(row.shape)
    return Sparse3D(data, row, col, imshape, imcorner), (data, row, col)


# ---- repeated positions within a stamp ------------------------------------------------------
def test_repeated_pixel_in_a_stamp_is_refused_on_every_path():
    R, C = np.mgrid[:3, :3]
    row, col = R[:, :, None] + [2, 5], C[:, :, None] + [2, 5]
    Sparse3D(np.ones((3, 3, 2)), row, col, (10, 10))  # grid fast path: fine
    Sparse3D(np.ones((3, 3, 2)), row[::-1], col, (10, 10))  # not a grid, still distinct: fine
    Sparse3D(np.ones((3, 3, 2)), col, row, (10, 10))  # transposed grid: fine
    bad_row = row.copy()
    bad_row[2, 1, 1] = bad_row[0, 1, 1]  # source 1 covers (5, 6) twice
    with pytest.raises(ValueError, match=r"stamp 1 covers pixel \(5, 6\) more than once") as info:
        Sparse3D(np.ones((3, 3, 2)), bad_row, col, (10, 10))
    assert "row/col" in str(info.value)
    # also off the image (translate could bring it in), and with huge bounding boxes
    with pytest.raises(ValueError, match="more than once"):
        Sparse3D(np.ones((3, 3, 2)), bad_row - 100, col, (10, 10))
    # the general path with positions beyond int32 (small bounding boxes, int32 keys)
    Sparse3D(np.ones((3, 3, 2)), row[::-1] + 2**40, col[:, ::-1] - 2**40, (10, 10))
    srow, scol = row[::-1].astype(np.int64) + 2**40, col.astype(np.int64) - 2**40
    for a in (srow, scol):  # swap two whole positions: a permutation, still distinct
        a[0, 0, 1], a[1, 2, 1] = a[1, 2, 1], a[0, 0, 1]
    Sparse3D(np.ones((3, 3, 2)), srow, scol, (10, 10))
    with pytest.raises(ValueError, match=rf"stamp 1 covers pixel \({2**40 + 5}, {6 - 2**40}\)"):
        Sparse3D(np.ones((3, 3, 2)), bad_row[::-1] + 2**40, col - 2**40, (10, 10))
    far = row.astype(np.int64).copy()
    far[0, 0, 0] = 2**60
    Sparse3D(np.ones((3, 3, 2)), far, col, (10, 10))  # distinct, spans 2**60 x 2**60: fine
    far[2, 2, 0] = far[0, 0, 0]
    far_col = col.copy()
    far_col[2, 2, 0] = far_col[0, 0, 0]
    with pytest.raises(ValueError, match="stamp 0 covers pixel"):
        Sparse3D(np.ones((3, 3, 2)), far, far_col, (10, 10))


def test_every_stored_in_image_element_is_one_logical_element():
    # with distinct positions, f of the stored values is f of the logical array wherever
    # stamp semantics promise it (here: abs and the int8 sum dtype, once wrong with repeats)
    sc = random_scene(5, dtype=np.int8, imcorner=(2, -3))
    S = sc.build()
    dense = sc.dense()
    np.testing.assert_array_equal(abs(S).todense(), np.abs(dense))
    np.testing.assert_array_equal((S > 0).todense(), dense > 0)
    assert np.sum(S).dtype == np.sum(dense).dtype and np.sum(S) == np.sum(dense)


# ---- nothing handed out can change an array ---------------------------------------------------
def _handed_out(S):
    return {"data": S.data, "row": S.row, "col": S.col, "in_image": S.in_image}


@pytest.mark.parametrize(
    "make",
    [
        lambda S: S,
        lambda S: S * 2,
        lambda S: S.with_data(np.ones(S.stamp_shape)),
        lambda S: S.astype(np.float32),
        lambda S: S[1:8, 2:9],
        lambda S: S[:, :, [1, 0]],
        lambda S: np.concatenate([S, S], axis=2),
        lambda S: S.translate((1, -1)),
        lambda S: pickle.loads(pickle.dumps(S)),
        lambda S: np.real(S.astype(complex)),
    ],
)
def test_exposed_arrays_cannot_be_made_writeable(make):
    S = make(_grid([1, 4], [2, 5])[0])
    before = S.todense()
    for name, arr in _handed_out(S).items():
        assert not arr.flags.writeable, name
        with pytest.raises(ValueError):
            arr.flags.writeable = True
        with pytest.raises(ValueError):
            arr[...] = 0
    np.testing.assert_array_equal(S.todense(), before)


def test_roi_corners_cannot_be_made_writeable():
    roi = _grid([1, 4], [2, 5])[0].roi([(0, 0), (3, 3)], (4, 4))
    with pytest.raises(ValueError):
        roi.corners.flags.writeable = True


def test_to_sparse_cannot_corrupt_the_array():
    S, (data, row, col) = _grid([1, 4], [2, 5])
    dense = dense_reference(data, row, col, (10, 10))
    coo = S.to_sparse()
    for arr in (coo.data, coo.coords):
        with pytest.raises(ValueError):
            arr[0] = 7
        with pytest.raises(ValueError):
            arr.flags.writeable = True
    coo.data = np.zeros_like(coo.data)  # rebinding the handed-out object's attributes ...
    coo.coords = coo.coords[::-1].copy()
    np.testing.assert_array_equal(S.to_sparse().todense(), dense)  # ... leaves S alone
    np.testing.assert_array_equal(S.T.todense(), dense.T)
    np.testing.assert_array_equal(np.stack(np.nonzero(S)), np.stack(np.nonzero(dense)))
    np.testing.assert_allclose(np.einsum("ijk,ijk->k", S, S).todense(), np.einsum("ijk,ijk->k", dense, dense))


def test_pickle5_out_of_band_buffers_do_not_alias():
    S, (data, row, col) = _grid([1, 4], [2, 5])
    buffers = []
    payload = pickle.dumps(S, protocol=5, buffer_callback=buffers.append)
    raw = [bytearray(b.raw()) for b in buffers]  # writable buffers owned by the caller
    back = pickle.loads(payload, buffers=raw)
    expected = dense_reference(data, row, col, (10, 10))
    for r in raw:
        r[:] = b"\xff" * len(r)  # the caller scribbles over its buffers
    np.testing.assert_array_equal(back.todense(), expected)
    with pytest.raises(ValueError):
        back.data.flags.writeable = True


# ---- reductions ---------------------------------------------------------------------------
def test_float16_mean_uses_float32_intermediates():
    S, (data, row, col) = _grid([0, 3], [0, 3], imshape=(6, 6), data=np.full((3, 3, 2), 60000, np.float16))
    dense = dense_reference(data, row, col, (6, 6))
    for axis in (None, 2, (0, 1), 0):
        got, want = np.mean(S, axis=axis), np.mean(dense, axis=axis)
        assert np.asarray(got).dtype == np.float16
        np.testing.assert_array_equal(got, want)


def test_prod_with_an_implicit_zero_is_zero_even_when_the_stored_product_overflows():
    S, (data, row, col) = _grid([0], [0], imshape=(4, 4), data=np.full((3, 3, 1), 1e200))
    dense = dense_reference(data, row, col, (4, 4))
    with np.errstate(all="ignore"):
        assert np.prod(S) == 0.0 == np.prod(dense[::-1])  # NumPy, zeros first: exactly 0
        np.testing.assert_array_equal(np.prod(S, axis=(0, 1)), [0.0])
        # a stored NaN/inf with an implicit zero is NaN in any order (inf * 0)
        T = S.with_data(np.where(data == data.max(), np.inf, data))
        assert np.isnan(np.prod(T))
        # no implicit zero: the overflow is NumPy's own result (inf)
        full = Sparse3D(data, row, col, (3, 3))
        assert np.prod(full) == np.prod(dense_reference(data, row, col, (3, 3))) == np.inf


@pytest.mark.parametrize("dtype", [np.uint8, np.uint32, np.int16, bool])
def test_bitwise_reduce_identity_in_the_array_dtype(dtype):
    sc = random_scene(12, dtype=np.int64, imcorner=(1, 1))
    data = (np.abs(sc.data) + 3).astype(dtype)
    S, dense = Sparse3D(data, sc.row, sc.col, sc.imshape, sc.imcorner), sc.dense(data)
    for ufunc in (np.bitwise_and, np.bitwise_or, np.bitwise_xor):
        for axis in (None, 2, (0, 1), 1):
            got, want = ufunc.reduce(S, axis=axis), ufunc.reduce(dense, axis=axis)
            assert np.asarray(got).dtype == want.dtype
            np.testing.assert_array_equal(got, want)


def test_reduce_over_no_axes_follows_numpy_dtype_rules():
    sc = random_scene(13, imcorner=(0, 2))
    S, dense = sc.build(), sc.dense()
    for ufunc in (np.logical_and, np.logical_or, np.add, np.maximum):
        got, want = ufunc.reduce(S, axis=()), ufunc.reduce(dense, axis=())
        assert isinstance(got, Sparse3D) and got.dtype == want.dtype
        np.testing.assert_array_equal(got.todense(), want)
    Si = S.astype(np.int8)
    assert np.add.reduce(Si, axis=()).dtype == np.add.reduce(sc.dense().astype(np.int8), axis=()).dtype
    with pytest.raises(TypeError):
        np.bitwise_and.reduce(dense, axis=())
    with pytest.raises(TypeError):
        np.bitwise_and.reduce(S, axis=())
    # initial: fine where it keeps implicit zeros at zero, refused where it would make them dense
    got = np.maximum.reduce(S, axis=(), initial=-np.inf)
    np.testing.assert_array_equal(got.todense(), np.maximum.reduce(dense, axis=(), initial=-np.inf))
    with pytest.raises(ValueError, match="off-stamp"):
        np.add.reduce(S, axis=(), initial=5.0)


def test_invalid_axes_raise_axis_error():
    S = random_scene(14).build()
    n = S.nsources
    calls = [
        lambda: np.tensordot(S, np.ones(n), axes=([5], [0])),
        lambda: np.tensordot(S, np.ones(n), axes=([2], [3])),
        lambda: np.concatenate([S, S], axis=5),
        lambda: np.concatenate([S, S], axis=-4),
        lambda: np.sum(S, axis=3),
        lambda: np.max(S, axis=-4),
        lambda: np.mean(S, axis=(0, 7)),
        lambda: np.add.reduce(S, axis=4),
        lambda: S.transpose(0, 1, 5),
        lambda: np.size(S, 3),
    ]
    for call in calls:
        with pytest.raises(np.exceptions.AxisError):
            call()
    dense = random_scene(14).dense()
    # NumPy's own tensordot raises IndexError here; AxisError is an IndexError (and ValueError)
    assert issubclass(np.exceptions.AxisError, IndexError)
    with pytest.raises(IndexError):
        np.tensordot(dense, np.ones(n), axes=([5], [0]))
    assert np.concatenate([S, S], axis=-1).shape == np.concatenate([dense, dense], axis=-1).shape


# ---- allclose -----------------------------------------------------------------------------
def test_allclose_across_structures_follows_numpys_isclose():
    sc = random_scene(15, imcorner=(-2, 3))
    S = sc.build()
    T = S.translate((1, 0))
    Tdense = dense_reference(sc.data, sc.row + 1, sc.col, sc.imshape, sc.imcorner)
    inf = S.with_data(np.where(sc.data != 0, np.inf, 0.0))
    inf_dense = sc.dense(np.where(sc.data != 0, np.inf, 0.0))
    for a, b, da, db in [
        (inf, T, inf_dense, Tdense),
        (T, inf, Tdense, inf_dense),
        (inf, inf, inf_dense, inf_dense),
    ]:
        assert np.allclose(a, b) == np.allclose(da, db)
    m = np.iinfo(np.int64).min
    A = Sparse3D(np.full((1, 1, 1), m), 0, 0, (2, 2))
    B = Sparse3D(np.zeros((1, 1, 1), dtype=np.int64), 1, 1, (2, 2))
    for a, b in [(A, B), (B, A), (A, A)]:
        assert np.allclose(a, b) == np.allclose(a.todense(), b.todense())
    for x in (0, 0.0, 1e-9, 1.0, np.float32(0)):
        assert np.allclose(S, x) == np.allclose(sc.dense(), x)
        assert np.allclose(x, S) == np.allclose(x, sc.dense())


def test_huge_image_allclose_and_gram_without_dense_allocations():
    R, C = np.mgrid[:3, :3]
    row, col = R[:, :, None] + [0, 100_000], C[:, :, None] + [0, 150_000]
    data = np.stack([np.ones((3, 3)), 2 * np.ones((3, 3))], axis=-1)
    S = Sparse3D(data, row, col, (200_000, 200_000))
    with sparse3d.set_options(max_dense_bytes=2**20):
        assert np.allclose(S, 0) is False
        assert np.allclose(S, 0, atol=2.0) is True
        G = np.tensordot(S, S, axes=([0, 1], [0, 1]))
        np.testing.assert_array_equal(G, [[9.0, 0.0], [0.0, 36.0]])
        with pytest.raises(DenseAllocationError):
            np.allclose(S, np.broadcast_to(0.0, S.shape))


def test_gram_over_pixels_matches_dense():
    for dtype in (np.float64, np.float32, np.int64, bool):
        a, b = random_scene(16, dtype=dtype, imcorner=(3, -4)), random_scene(17, dtype=dtype, nsources=4)
        got = np.tensordot(a.build(), b.build(), axes=([0, 1], [0, 1]))
        want = np.tensordot(a.dense(), b.dense(), axes=([0, 1], [0, 1]))
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5)
        got = np.tensordot(a.build(), b.build(), axes=([1, 0], [1, 0]))
        np.testing.assert_allclose(got, want, rtol=1e-5)


# ---- indexing -----------------------------------------------------------------------------
def test_boolean_scalar_and_separated_advanced_indices_follow_numpy():
    sc = random_scene(18, imcorner=(4, -1))
    S, dense = sc.build(), sc.dense()
    keys = [
        True,
        False,
        (slice(None), slice(None), False),
        (True, slice(2, 5)),
        (Ellipsis, True),
        (slice(None), 0, Ellipsis, [0, 2]),
        (0, Ellipsis, [0, 2]),
        ([1, 2], Ellipsis, [0, 2]),
        (slice(None), [1, 2], 0),
        (np.True_, [1, 2], 0),
    ]
    for key in keys:
        got = S[key]
        want = dense[key]
        got = got.todense() if isinstance(got, Sparse3D) else got
        assert got.shape == want.shape, key
        np.testing.assert_array_equal(got, want)


def test_multi_axis_masks_and_empty_lists_follow_numpy():
    sc = random_scene(19, imcorner=(0, 5))
    S, dense = sc.build(), sc.dense()
    H, W, n = dense.shape
    rng = np.random.default_rng(0)
    image_mask = rng.random((H, W)) < 0.3
    col_src_mask = rng.random((W, n)) < 0.3
    full_mask = rng.random((H, W, n)) < 0.3
    keys = [
        image_mask,
        (image_mask, 1),
        (slice(2, 6), col_src_mask),
        full_mask,
        np.zeros((H, W), bool),
        [],
        (slice(None), []),
        (slice(None), slice(None), []),
        ([], [], []),
    ]
    for key in keys:
        got = S[key]
        got = got.todense() if isinstance(got, Sparse3D) else got
        want = dense[key]
        assert got.shape == want.shape, key
        np.testing.assert_array_equal(got, want)
    with pytest.raises(IndexError):
        S[np.ones((H + 1, W), bool)]


# ---- huge coordinates ---------------------------------------------------------------------
def test_huge_coordinates_are_refused_not_wrapped():
    one = np.ones((1, 1, 1))
    bad = [
        lambda: Sparse3D(one, np.uint64(2**63), 0, (5, 5)),
        lambda: Sparse3D(one, 1e19, 0, (5, 5)),
        lambda: Sparse3D(one, 0, -(2**62), (5, 5)),
        lambda: Sparse3D(one, 0, 0, (5, 5)).translate((2**62, 0)),
        lambda: Sparse3D(one, 0, 0, (2**33, 2**33)),
        lambda: Sparse3D(one, 0, 0, (5, 5), imcorner=(2**61, 0)),
        lambda: Sparse3D(one, 0, 0, (5, 5)).roi([(2**62, 0)], (2, 2)),
        lambda: _grid([1, 4], [2, 5])[0].shift((np.array([2.0**63, 0.0]), 0)),
        lambda: _grid([1, 4], [2, 5])[0].shift((np.array([2.0**61, 0.0]), 0)),
        lambda: _grid([1, 4], [2, 5])[0].shift((2.0**62, 0)),
    ]
    for call in bad:
        with pytest.raises(ValueError, match=r"2\*\*6[12]"):
            call()


def test_large_but_supported_coordinates_are_exact():
    far = 2**60
    S, (data, row, col) = _grid([far + 1, far + 5], [-far, -far + 2], imshape=(8, 9), imcorner=(far, -far))
    dense = dense_reference(data, row - far, col + far, (8, 9))
    np.testing.assert_array_equal(S.todense(), dense)
    np.testing.assert_array_equal(S.to_sparse().todense(), dense)
    np.testing.assert_array_equal(S.dot(np.array([1.0, 10.0])), dense @ np.array([1.0, 10.0]))
    np.testing.assert_array_equal(S.tocsr().toarray(), dense.reshape(-1, 2))
    back = S.translate((-far, far)).translate((far, -far))
    np.testing.assert_array_equal(back.todense(), dense)
    # ROI windows far apart: keys would overflow int64, the mapping must still be exact
    roi = S.roi([(far + 1, -far), (far + 5, -far + 2), (-far, far)], (3, 3))
    expected = np.stack([dense[1:4, 0:3], dense[5:8, 2:5], np.zeros((3, 3, 2))])
    np.testing.assert_array_equal(roi.todense(), expected)


def test_int32_positions_with_an_image_corner_beyond_2_31():
    corner = 2**31 + 3
    row = GRID_R[:, :, None] + np.array([2**31 - 4])  # stored as int32, image starts further on
    col = GRID_C[:, :, None] + np.array([0])
    S = Sparse3D(np.ones((3, 3, 1)), row, col, (4, 4), imcorner=(corner, 0))
    assert S.row.dtype == np.int32 and S.nnz == 0
    np.testing.assert_array_equal(S.todense(), np.zeros((4, 4, 1)))
    np.testing.assert_array_equal((S * np.ones((4, 4, 1))).todense(), np.zeros((4, 4, 1)))
    np.testing.assert_array_equal(S.dot(np.ones(1)), np.zeros((4, 4)))
    T = S.translate((8, 0))  # now rows 2**31 + 4 ... 2**31 + 6: inside
    expected = np.zeros((4, 4, 1))
    expected[1:4, 0:3] = 1
    np.testing.assert_array_equal(T.todense(), expected)


# ---- xarray NaN-aware operations ------------------------------------------------------------
def test_xarray_nan_aware_operations_match_the_dense_dataarray():
    xr = pytest.importorskip("xarray")
    sc = random_scene(20, imcorner=(2, 3))
    data = np.where(sc.data > 1.2, np.nan, sc.data)
    S = Sparse3D(data, sc.row, sc.col, sc.imshape, sc.imcorner)
    da = S.to_xarray()
    dd = xr.DataArray(sc.dense(data), dims=da.dims, coords=da.coords)

    def dense(x):
        x = x.data
        return x.todense() if hasattr(x, "todense") else np.asarray(x)

    checks = [
        lambda x: x.count(),
        lambda x: x.count("source"),
        lambda x: x.notnull().sum(),
        lambda x: x.isnull().sum(),
        lambda x: x.fillna(0).sum("source"),
        lambda x: x.fillna(2.5).sum(),
        lambda x: x.where(x > 0, 0).sum(),
        lambda x: x.mean(),
        lambda x: x.sum("source"),
    ]
    for f in checks:
        np.testing.assert_allclose(dense(f(da)), dense(f(dd)), rtol=1e-12)
    with pytest.raises(ValueError, match="NaN"):
        da.where(da > 0).mean()


# ---- construction and conversions -----------------------------------------------------------
def test_big_endian_values_become_native():
    sc = random_scene(21, imcorner=(1, -2))
    S = Sparse3D(sc.data.astype(">f8"), sc.row, sc.col, sc.imshape, sc.imcorner)
    assert S.dtype == np.float64 and S.dtype.isnative
    dense = sc.dense()
    np.testing.assert_array_equal(S.tocsr().toarray(), dense.reshape(-1, dense.shape[2]))
    np.testing.assert_array_equal(S.tocoo().toarray(), dense.reshape(-1, dense.shape[2]))
    np.testing.assert_allclose(np.mean(S, axis=2), dense.mean(axis=2))
    assert S.astype(">i4").dtype == np.int32
    w = np.arange(S.nsources, dtype=float)
    roi = S.roi([(1, -2), (4, 0)], (3, 4))
    np.testing.assert_allclose(roi.dot(w), [dense[0:3, 0:4] @ w, dense[3:6, 2:6] @ w])


def test_float16_scipy_conversions_are_float32():
    sc = random_scene(22, dtype=np.float16)
    S, dense = sc.build(), sc.dense().astype(np.float32)
    flat = dense.reshape(-1, dense.shape[2])
    for m in (S.tocsr(), S.tocsc(), S.tocoo()):
        assert m.dtype == np.float32
        np.testing.assert_array_equal(m.toarray(), flat)
    w = np.ones(S.nsources, dtype=np.float16)
    roi = S.roi([(0, 0)], (4, 4))
    assert roi.tocsc().dtype == np.float32
    np.testing.assert_allclose(roi.dot(w)[0], dense[:4, :4].sum(axis=2), rtol=1e-3)
    np.testing.assert_allclose(
        S.dot(np.ones((S.nsources, 6), np.float16))[..., 0], dense.sum(axis=2), rtol=1e-3
    )


def test_longdouble_is_refused_everywhere():
    sc = random_scene(23)
    with pytest.raises(TypeError, match="long double"):
        Sparse3D(sc.data.astype(np.longdouble), sc.row, sc.col, sc.imshape)
    S = sc.build()
    with pytest.raises(TypeError, match="long double"):
        S.astype(np.longdouble)
    with pytest.raises(TypeError, match="long double"):
        S + np.longdouble(1)


def test_scipy_matrices_are_writable_for_one_source_and_one_pixel_stamps():
    for S in (
        _grid([1], [2])[0],
        Sparse3D(np.ones((1, 1, 1)), 0, 0, (2, 2)),
        Sparse3D(np.ones((1, 1, 3)), 0, [[[0, 1, 2]]], (2, 3)),
    ):
        for m in (S.tocsc(), S.tocoo(), S.tocsr()):
            assert m.data.flags.writeable
            before = m.toarray()
            m.data *= 2
            np.testing.assert_array_equal(m.toarray(), 2 * before)
            m.eliminate_zeros()
        np.testing.assert_array_equal(S.tocsc().toarray(), S.todense().reshape(-1, S.nsources))


def test_dot_with_zero_columns_and_zero_sources():
    sc = random_scene(24, imcorner=(3, 3))
    S, dense = sc.build(), sc.dense()
    for w in (np.ones((S.nsources, 0)), np.ones((S.nsources, 0), dtype=int)):
        got, want = S.dot(w), np.dot(dense, w)
        assert got.shape == want.shape and got.dtype == want.dtype
    Z = Sparse3D(np.ones((2, 2, 0)), 0, 0, (3, 4))
    zeros = np.zeros((3, 4, 0))
    for operand in (np.ones((3, 4, 0)), np.ones((3, 4, 1)), np.ones((1, 1, 0)), 2.0):
        got = (Z + operand).todense()
        assert got.shape == (zeros + operand).shape == (3, 4, 0)
    assert np.sum(Z, axis=2).shape == (3, 4) and Z.dot(np.ones(0)).shape == (3, 4)


def test_stack_of_mismatched_arrays_is_a_clear_error():
    S = random_scene(25).build()
    with pytest.raises(ValueError, match="same shape"):
        np.stack([S, S[:, :, :2]])
    np.testing.assert_array_equal(np.stack([S, S], axis=1).todense(), np.stack([S.todense()] * 2, axis=1))


def test_non_numpy_numbers_are_refused_up_front():
    S = random_scene(26).build()
    for x in (fractions.Fraction(1, 3), __import__("decimal").Decimal("0.5")):
        with pytest.raises(TypeError, match=type(x).__name__):
            S + x
        with pytest.raises(TypeError, match=type(x).__name__):
            np.multiply(x, S)
    np.testing.assert_allclose((S + float(fractions.Fraction(1, 3))).data, S.data + 1 / 3)


# ---- documented behaviour -------------------------------------------------------------------
def test_nan_weights_and_images_stay_on_the_stamps():
    # documented: off-stamp entries are structural zeros (as in scipy.sparse), NaN does not spread
    sc = random_scene(27, imcorner=(0, 0))
    S = sc.build()
    w = np.arange(1.0, S.nsources + 1)
    w[1] = np.nan
    got = S.dot(w)
    # the pixels source 1's stamp covers, from its positions (explicit zeros included: 0 * nan)
    covered = dense_reference(np.ones(sc.data.shape), sc.row, sc.col, sc.imshape)[:, :, 1] > 0
    np.testing.assert_array_equal(np.isnan(got), covered)
    np.testing.assert_allclose(got.ravel(), S.tocsr() @ w)
    image = np.ones(S.imshape)
    image[0, 0] = np.nan
    proj = np.tensordot(S, image, axes=([0, 1], [0, 1]))
    on_00 = dense_reference(np.ones(sc.data.shape), sc.row, sc.col, sc.imshape)[0, 0] > 0
    np.testing.assert_array_equal(np.isnan(proj), on_00)


def test_options_reach_other_threads():
    S = random_scene(28).build()
    seen = {}

    def worker():
        seen["limit"] = sparse3d.get_options()["max_dense_bytes"]
        try:
            S.todense()
        except DenseAllocationError:
            seen["refused"] = True

    with sparse3d.set_options(max_dense_bytes=10):
        t = threading.Thread(target=worker)
        t.start()
        t.join()
    assert seen == {"limit": 10, "refused": True}
    assert sparse3d.get_options()["max_dense_bytes"] == 2 * 1024**3


def test_pickle_round_trip_still_exact():
    sc = random_scene(29, imcorner=(-3, 2))
    S = sc.build()
    buf = io.BytesIO()
    pickle.dump(S, buf)
    back = pickle.loads(buf.getvalue())
    np.testing.assert_array_equal(back.todense(), sc.dense())
    assert isinstance(back.to_sparse(), sparse.COO)
