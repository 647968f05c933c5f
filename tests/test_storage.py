"""How positions and values are stored: smallest safe integer type, broadcast inputs kept compact."""

import numpy as np
import pytest

from sparse3d import Sparse3D
from sparse3d._structure import position_dtype
from sparse3d.testing import dense_reference


def _grid(n, top, left, nr=3, nc=3):
    R, C = np.mgrid[:nr, :nc]
    return R[:, :, None] + np.asarray(top), C[:, :, None] + np.asarray(left)


@pytest.mark.parametrize(
    ("lo", "hi", "extent", "expected"),
    [
        (0, 100, (0, 128), np.int16),
        (-32768, 32767, (0, 16384), np.int16),
        (0, 32768, (0, 128), np.int32),
        (0, 100, (32000, 33000), np.int32),  # the image reaches beyond int16
        (-(2**31), 5, (0, 1), np.int32),
        (0, 2**31, (0, 1), np.int64),
    ],
)
def test_position_dtype_is_the_smallest_safe_type(lo, hi, extent, expected):
    assert position_dtype(lo, hi, extent) == expected


@pytest.mark.parametrize("imcorner", [(0, 0), (32760, -32760), (-40_000, 5)])
def test_positions_near_the_int16_limits_give_exact_results(imcorner):
    rng = np.random.default_rng(0)
    n = 12
    top = rng.integers(-2, 20, n) + imcorner[0]
    left = rng.integers(-2, 20, n) + imcorner[1]
    row, col = _grid(n, top, left)
    data = rng.normal(size=(3, 3, n))
    S = Sparse3D(data, row, col, imshape=(18, 18), imcorner=imcorner)
    dense = dense_reference(data, row, col, (18, 18), imcorner)
    np.testing.assert_allclose(S.todense(), dense)
    w = rng.normal(size=n)
    np.testing.assert_allclose(S.dot(w), dense @ w, atol=1e-12)
    np.testing.assert_array_equal(S.row, row)
    # translating across the int16 limit widens the stored type instead of wrapping
    T = S.translate((40_000, -40_000))
    np.testing.assert_array_equal(T.row, row + 40_000)
    np.testing.assert_array_equal(T.col, col - 40_000)
    np.testing.assert_allclose(T.translate((-40_000, 40_000)).todense(), dense)


def test_small_positions_are_stored_as_int16():
    row, col = _grid(4, [0, 3, 6, 9], [1, 1, 1, 1])
    S = Sparse3D(np.ones((3, 3, 4)), row, col, imshape=(16, 16))
    assert S.row.dtype == np.int16 and S.col.dtype == np.int16


def test_broadcast_inputs_are_not_expanded_and_stay_independent():
    n = 50
    R, C = np.mgrid[:3, :3]
    row, col = _grid(n, np.arange(n) % 20, np.arange(n) // 20 * 4)
    base = R[:, :, None].astype(float)
    x = np.broadcast_to(base, (3, 3, n))
    X = Sparse3D(x, row, col, imshape=(24, 24))
    assert X._values.base is not None and X._values.base.size == 9  # compact copy
    assert 0 in X._values.strides
    base[:] = 99.0  # the user's array changes; X does not
    np.testing.assert_array_equal(X.data, np.broadcast_to(R[:, :, None], (3, 3, n)))
    with pytest.raises(ValueError):
        X.data[0, 0, 0] = 1.0
    dense = dense_reference(np.broadcast_to(R[:, :, None], (3, 3, n)).astype(float), row, col, (24, 24))
    np.testing.assert_allclose(
        (X - 1.0).todense(),
        np.where(dense_reference(np.ones((3, 3, n)), row, col, (24, 24)) > 0, dense - 1.0, 0.0),
    )
    np.testing.assert_allclose(X.dot(np.ones(n)), dense.sum(axis=2))
    np.testing.assert_allclose(np.tensordot(X, np.ones((24, 24)), axes=([0, 1], [0, 1])), dense.sum((0, 1)))


def test_broadcast_positions_are_not_expanded():
    R, C = np.mgrid[:2, :2]
    row = np.broadcast_to(R[:, :, None] + 3, (2, 2, 1000))  # every source on the same pixels
    col = np.broadcast_to(C[:, :, None] + 4, (2, 2, 1000))
    S = Sparse3D(np.ones((2, 2, 1000)), row, col, imshape=(8, 8))
    assert S._structure.row.base.size == 4
    img = S.dot(np.ones(1000))
    assert img[3:5, 4:6].tolist() == [[1000.0, 1000.0], [1000.0, 1000.0]] and img.sum() == 4000


def test_roi_candidate_sources_with_int16_positions_and_stamps_over_the_edge():
    R, C = np.mgrid[:3, :3]
    row = R[:, :, None] + np.array([-1, 5, 10])  # source 0 hangs over the top edge
    col = C[:, :, None] + np.array([0, 5, 12])
    S = Sparse3D(np.ones((3, 3, 3)), row, col, imshape=(16, 16))
    assert S.row.dtype == np.int16
    roi = S.roi(corners=[(0, 0), (10, 12)], size=(3, 3))
    dense = dense_reference(np.ones((3, 3, 3)), row, col, (16, 16))
    w = np.array([1.0, 2.0, 3.0])
    got = roi.dot(w)
    expected = np.stack([(dense @ w)[0:3, 0:3], (dense @ w)[10:13, 12:15]])
    np.testing.assert_allclose(np.asarray(got).reshape(expected.shape), expected)
