"""Grid positions stored from their corners: the read-only construction pass and the
interning check against a grid's corners (:func:`sparse3d._grid_kernels.match_grid`), against
dense NumPy references.

``MIN_ELEMENTS`` is lowered to 0 so that the compiled paths run on these small scenes.
"""

import numpy as np
import pytest

from sparse3d import Sparse3D, _grid_kernels, _kernels
from sparse3d.testing import dense_reference

pytestmark = pytest.mark.skipif(not _kernels.available(), reason="numba is not installed")


@pytest.fixture(autouse=True)
def kernels_always(monkeypatch):
    monkeypatch.setattr(_kernels, "MIN_ELEMENTS", 0)


def _grid(rng, n, stamp=(4, 3), imshape=(11, 13), imcorner=(0, 0), dtype=np.int64):
    """Grid positions whose stamps hang over every edge of the image."""
    nr, nc = stamp
    top = rng.integers(-nr, imshape[0] + 1, n) + imcorner[0]
    left = rng.integers(-nc, imshape[1] + 1, n) + imcorner[1]
    R, C = np.mgrid[:nr, :nc]
    return (R[:, :, None] + top).astype(dtype), (C[:, :, None] + left).astype(dtype)


def _stored_compactly(S) -> bool:
    s = S._structure
    return 0 in s._row.strides and 0 in s._col.strides


@pytest.mark.parametrize("imcorner", [(0, 0), (-6, 9), (3, -20)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("pos_dtype", [np.int64, np.int32, np.int16])
@pytest.mark.parametrize("n", [0, 1, 9])
def test_grid_positions_are_stored_compactly_and_give_the_dense_results(imcorner, dtype, pos_dtype, n):
    rng = np.random.default_rng(3)
    imshape = (11, 13)
    row, col = _grid(rng, n, imshape=imshape, imcorner=imcorner, dtype=pos_dtype)
    data = rng.uniform(-2, 2, size=row.shape).astype(dtype)
    S = Sparse3D(data, row, col, imshape=imshape, imcorner=imcorner)
    assert _stored_compactly(S) or n == 0
    np.testing.assert_array_equal(S.row, row)
    np.testing.assert_array_equal(S.col, col)
    assert not S.row.flags.writeable and not S.col.flags.writeable
    with pytest.raises(ValueError):
        S.row.flags.writeable = True
    s = S._structure
    if n:
        assert s.position_range == ((int(row.min()), int(row.max())), (int(col.min()), int(col.max())))
        r0, c0 = s.grid_corners()
        np.testing.assert_array_equal(r0, row[0, 0])
        np.testing.assert_array_equal(c0, col[0, 0])
    dense = dense_reference(data.astype(np.float64), row, col, imshape, imcorner)
    np.testing.assert_allclose(S.todense(), dense, rtol=1e-6, atol=1e-6)
    inside = (row >= imcorner[0]) & (row < imcorner[0] + imshape[0])
    inside &= (col >= imcorner[1]) & (col < imcorner[1] + imshape[1])
    np.testing.assert_array_equal(S.in_image, inside)
    w = rng.normal(size=n).astype(dtype)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(S.dot(w), np.tensordot(dense, w.astype(np.float64), axes=([2], [0])),
                               rtol=tol, atol=tol)
    # a translated array and its positions
    T = S.translate((2, -3))
    np.testing.assert_array_equal(T.row, row + 2)
    np.testing.assert_array_equal(T.col, col - 3)
    # the tutorial expression on compact positions
    L = np.exp(-0.5 * (S**2 + S)) * 2.0
    ref = np.where(dense != 0, np.exp(-0.5 * (dense**2 + dense)) * 2.0, 0.0)
    np.testing.assert_allclose(L.todense(), ref, rtol=tol, atol=tol)


def test_non_grid_and_wide_positions_take_the_general_path():
    rng = np.random.default_rng(5)
    row, col = _grid(rng, 6)
    data = rng.normal(size=row.shape)
    flipped = Sparse3D(data, row[::-1].copy(), col, imshape=(11, 13))  # rows descend: no grid
    assert not _stored_compactly(flipped) and flipped._structure.grid_corners() is None
    np.testing.assert_array_equal(flipped.row, row[::-1])
    bad = row.copy()
    bad[3, 2, 4] += 1  # one pixel off the grid, in the last stamp plane
    S = Sparse3D(data, bad, col, imshape=(11, 13))
    assert not _stored_compactly(S) and S._structure.grid_corners() is None
    np.testing.assert_array_equal(S.row, bad)
    inner = row.copy()
    inner[1, 1, 2] += 20  # off the grid inside a stamp: found by the full pass, not the last plane
    S = Sparse3D(data, inner, col, imshape=(11, 13))
    assert not _stored_compactly(S) and S._structure.grid_corners() is None
    np.testing.assert_array_equal(S.row, inner)
    cflip = Sparse3D(data, row, col[:, ::-1].copy(), imshape=(11, 13))  # a grid in row only
    assert not _stored_compactly(cflip) and cflip._structure.grid_corners() is None
    np.testing.assert_array_equal(cflip.col, col[:, ::-1])
    np.testing.assert_array_equal(cflip.row, row)
    far = Sparse3D(data, row + 40_000, col, imshape=(11, 13), imcorner=(40_000, 0))  # beyond int16
    assert not _stored_compactly(far) and far._structure.grid_corners() is not None
    np.testing.assert_array_equal(far.row, row + 40_000)
    huge = row + 2**61 - 100  # int64 arithmetic stays exact; the range check still refuses
    with pytest.raises(ValueError, match="beyond the supported range"):
        Sparse3D(data, huge + 200, col, imshape=(11, 13))


@pytest.mark.parametrize("where", [(0, 0, 2), (0, 1, 0), (3, 2, 5), (1, 0, 3)])
@pytest.mark.parametrize("axis", ["row", "col"])
@pytest.mark.parametrize("imcorner", [(0, 0), (40_000, -5)])  # int16 (compact) and int32 positions
def test_interning_compares_with_the_grid_corners(where, axis, imcorner):
    rng = np.random.default_rng(9)
    row, col = _grid(rng, 6, imcorner=imcorner)
    data = rng.normal(size=row.shape)
    X = Sparse3D(data, row, col, imshape=(11, 13), imcorner=imcorner)
    assert X._structure.grid_corners() is not None  # int32 positions: tested here, then known
    Y = Sparse3D(data * 2, row, col, imshape=(11, 13), imcorner=imcorner)
    assert Y._structure is X._structure and X._structure.known_grid_corners() is not None
    assert _stored_compactly(X) == (imcorner == (0, 0))
    before = row.copy(), col.copy()
    changed = row if axis == "row" else col
    changed[where] += 20  # the same objects, other contents: a new structure
    Z = Sparse3D(data, row, col, imshape=(11, 13), imcorner=imcorner)
    assert Z._structure is not X._structure
    np.testing.assert_array_equal(Z.row, row)
    np.testing.assert_array_equal(Z.col, col)
    np.testing.assert_array_equal(X.row, before[0])  # X kept the positions it was built from
    np.testing.assert_array_equal(X.col, before[1])
    ref = dense_reference(data, row, col, (11, 13), imcorner)
    np.testing.assert_allclose(Z.todense(), ref)


def test_interning_of_a_grid_rebuilt_as_a_whole_new_grid():
    """Every corner moved by one: still a grid, but not the same one."""
    rng = np.random.default_rng(2)
    row, col = _grid(rng, 5)
    X = Sparse3D(np.ones(row.shape), row, col, imshape=(11, 13))
    row += 1
    Y = Sparse3D(np.ones(row.shape), row, col, imshape=(11, 13))
    assert Y._structure is not X._structure and _stored_compactly(Y)
    np.testing.assert_array_equal(Y.row, row)
    np.testing.assert_array_equal(X.row, row - 1)


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.int64])
@pytest.mark.parametrize("first_dtype", [np.int16, np.int32, np.int64])
def test_match_grid_matches_a_numpy_rule(dtype, first_dtype):
    rng = np.random.default_rng(11)
    for trial in range(40):
        nr, nc, n = rng.integers(1, 5), rng.integers(1, 5), rng.integers(1, 40)
        r0, c0 = rng.integers(-1000, 1000, n), rng.integers(-1000, 1000, n)
        R = np.arange(nr).reshape(-1, 1, 1) + r0
        C = np.arange(nc).reshape(1, -1, 1) + c0
        row = np.broadcast_to(R, (nr, nc, n)).astype(dtype)
        col = np.broadcast_to(C, (nr, nc, n)).astype(dtype)
        if trial % 2:
            a = row if trial % 4 == 1 else col
            a[tuple(rng.integers(0, s) for s in a.shape)] += int(rng.choice([-1, 1, 7]))
        if trial % 8 == 6:  # a transposed grid (rows vary along the columns): not this grid
            row = np.ascontiguousarray(np.broadcast_to(C - c0 + r0, (nr, nc, n)), dtype=dtype)
        expect = bool((row.astype(np.int64) == R).all() and (col.astype(np.int64) == C).all())
        got = _grid_kernels.match_grid(row, col, r0.astype(first_dtype), c0.astype(first_dtype))
        assert got == expect
