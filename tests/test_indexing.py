"""Indexing with NumPy's shape rules against the dense reference."""

import numpy as np
import pytest

from sparse3d import Sparse3D
from sparse3d.testing import assert_equal_dense, random_scene

KEYS = [
    (slice(None),),
    (Ellipsis,),
    (slice(2, 9), slice(3, 11)),
    (slice(-5, None), slice(None, 4), slice(None)),
    (Ellipsis, slice(1, 4)),
    (slice(None), slice(None), slice(1, None, 2)),
    (slice(None), slice(None), [0, 2, 2]),
    (slice(None), slice(None), np.array([True, False, True, True, False, True])),
    (slice(1, 12), Ellipsis, np.array([4, 0])),
]


@pytest.mark.parametrize("key", KEYS, ids=str)
@pytest.mark.parametrize("imcorner", [(0, 0), (-6, 20)])
def test_cutouts_and_source_selection_stay_sparse3d(key, imcorner):
    sc = random_scene(30, imcorner=imcorner)
    S, dense = sc.build(), sc.dense()
    result = S[key]
    assert isinstance(result, Sparse3D)
    assert_equal_dense(result, dense[key])


def test_cutout_updates_bounds_and_keeps_stamps():
    sc = random_scene(31, imcorner=(10, 20))
    S = sc.build()
    cut = S[2:9, 3:11]
    assert cut.imshape == (7, 8) and cut.imcorner == (12, 23)
    assert cut.stamp_shape == S.stamp_shape
    np.testing.assert_array_equal(cut.data, S.data)
    # an off-image stamp pixel of the cutout comes back when translated in
    back = cut.translate((0, 0))
    assert back.nnz == cut.nnz


@pytest.mark.parametrize(
    "key",
    [
        (slice(None), slice(None), 2),
        (slice(None), slice(None), -1),
        (slice(2, 9), slice(None), 0),
        (3,),
        (3, 4),
        (3, 4, 1),
        (slice(None, None, 2),),
        (slice(None), slice(None, None, -1)),
        (slice(5, 5),),
        (slice(2, 9, 3), [1, 1, 4], slice(None)),
        ([0, 3], [2, 5], [1, 4]),
        (slice(None), [[0, 1], [2, 3]], 1),
        (slice(None, None, -2), slice(3, 1, -1), np.array([True, False, True, True, False, True])),
        (-1, slice(None), [0, -1]),
        (slice(None), slice(None), np.array([[0, 1], [2, 3]])),
    ],
    ids=str,
)
def test_other_keys_give_dense_arrays_with_numpy_shapes(key):
    sc = random_scene(32, imcorner=(-3, 2))
    S, dense = sc.build(), sc.dense()
    result = S[key]
    expected = dense[key]
    assert isinstance(result, (np.ndarray, np.generic))  # NumPy scalar for S[r, c, k]
    assert result.shape == expected.shape and result.dtype == expected.dtype
    np.testing.assert_array_equal(result, expected)


def test_single_source_returns_its_dense_image():
    sc = random_scene(33)
    S = sc.build()
    img = S[:, :, 1]
    assert isinstance(img, np.ndarray) and img.shape == sc.imshape
    np.testing.assert_array_equal(img, sc.dense()[:, :, 1])


def test_index_errors():
    S = random_scene(34).build()
    with pytest.raises(IndexError, match="out of bounds"):
        S[:, :, 6]
    with pytest.raises(IndexError, match="too many"):
        S[0, 0, 0, 0]
    with pytest.raises(IndexError, match="boolean"):
        S[:, :, np.array([True, False])]
    with pytest.raises(IndexError):
        S[:, :, np.array([0.5])]
    with pytest.raises(IndexError):
        S[:, :, [0, 99]]
    with pytest.raises(IndexError, match="newaxis"):
        S[None]
    with pytest.raises(IndexError, match="out of bounds"):
        S[13]
