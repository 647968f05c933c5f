"""Regions of interest against windows cut from the dense reference."""

import numpy as np
import pytest
import sparse

from sparse3d import ROISparse3D
from sparse3d.testing import random_scene


def _windows(sc, corners, size):
    """Dense reference: each window cut from the logical array, zero outside the image."""
    dense = sc.dense()
    H, W, n = dense.shape
    h, w = size
    out = np.zeros((len(corners), h, w, n), dtype=dense.dtype)
    for j, (r, c) in enumerate(corners):
        for a in range(h):
            for b in range(w):
                rr, cc = r + a - sc.imcorner[0], c + b - sc.imcorner[1]
                if 0 <= rr < H and 0 <= cc < W:
                    out[j, a, b] = dense[rr, cc]
    return out


CORNERS = [(5, -3), (9, 0), (11, 2), (28, 20), (-20, -20), (6, 1)]  # overlaps, edges, fully outside


@pytest.fixture
def case():
    sc = random_scene(60, imshape=(30, 25), nsources=25, stamp=(5, 4), imcorner=(5, -3))
    return sc, sc.build().roi(CORNERS, (6, 7)), _windows(sc, CORNERS, (6, 7))


def test_dense_and_sparse_views(case):
    sc, roi, ref = case
    assert isinstance(roi, ROISparse3D) and roi.shape == ref.shape
    np.testing.assert_allclose(roi.todense(), ref)
    assert isinstance(roi.to_sparse(), sparse.COO)
    np.testing.assert_allclose(roi.tocsr().toarray(), ref.reshape(-1, ref.shape[3]))


@pytest.mark.parametrize("k", [None, 3, 7])
def test_dot_layout(case, k):
    sc, roi, ref = case
    rng = np.random.default_rng(0)
    w = rng.normal(size=(25,) if k is None else (25, k))
    expected = np.tensordot(ref, w, axes=([3], [0]))
    got = roi.dot(w)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-12)
    np.testing.assert_allclose(roi @ w, expected, atol=1e-12)


def test_translate_and_errors(case):
    sc, roi, _ = case
    moved = roi.translate((2, -1))
    sc2 = type(sc)(sc.data, sc.row + 2, sc.col - 1, sc.imshape, sc.imcorner)
    np.testing.assert_allclose(moved.todense(), _windows(sc2, CORNERS, (6, 7)))
    with pytest.raises(ValueError, match="nsources=25"):
        roi.dot(np.ones(3))
    with pytest.raises(ValueError, match="corners"):
        sc.build().roi([1, 2, 3], (2, 2))
    with pytest.raises(ValueError, match="size"):
        sc.build().roi(CORNERS, (0, 2))
    with pytest.raises(TypeError, match="Sparse3D"):
        ROISparse3D(np.ones((2, 2, 2)), CORNERS, (2, 2))


def test_sources_missing_every_window_cost_nothing():
    sc = random_scene(61, imshape=(200, 200), nsources=400, stamp=(3, 3))
    roi = sc.build().roi([(10, 10)], (4, 4))
    assert roi.nnz <= 16 * 9  # only stamps touching the one window are mapped
    np.testing.assert_allclose(roi.todense(), _windows(sc, [(10, 10)], (4, 4)))


def test_fit_in_window_layout_equals_dense_least_squares():
    sc = random_scene(62, imshape=(40, 40), nsources=6, stamp=(4, 4), zeros=False)
    data = np.abs(sc.data) + 0.5
    sc = type(sc)(data, sc.row, sc.col, sc.imshape, sc.imcorner)
    S = sc.build()
    corners = [(int(r), int(c)) for r, c in zip(sc.row[0, 0], sc.col[0, 0])]
    roi = S.roi(corners, (4, 4))
    ref = _windows(sc, corners, (4, 4)).reshape(-1, 6)
    rng = np.random.default_rng(1)
    truth = rng.uniform(1, 5, size=(6, 2))
    frames = roi.dot(truth) + rng.normal(0, 0.01, size=(len(corners), 4, 4, 2))
    res = roi.fit(frames)
    expected = np.linalg.lstsq(ref, frames.reshape(-1, 2), rcond=None)[0]
    np.testing.assert_allclose(res.weights, expected, rtol=1e-8)
    assert res.model.shape == frames.shape
    np.testing.assert_allclose(res.model, roi.dot(res.weights))
    with pytest.raises(ValueError, match="window layout"):
        roi.fit(np.ones((2, 4, 4)))


def test_xarray_view_has_a_roi_dimension(case):
    sc, roi, ref = case
    da = roi.to_xarray()
    assert da.dims == ("roi", "roi_row", "roi_col", "source")
    np.testing.assert_array_equal(da.row.values[1], 9 + np.arange(6))
    np.testing.assert_allclose(da.data.todense(), ref)
    w = np.arange(25.0)
    import xarray as xr

    model = xr.dot(da, xr.DataArray(w, dims="source"), dim="source")
    np.testing.assert_allclose(
        model.data.todense() if hasattr(model.data, "todense") else model.values, ref @ w
    )
