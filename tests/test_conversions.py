"""scipy and pydata/sparse conversions against hand-built references."""

import numpy as np
import pytest
import scipy.sparse as sp
import sparse

from sparse3d import Sparse3D
from sparse3d.testing import random_scene


def _reference_matrix(sc):
    H, W = sc.imshape
    return sc.dense().reshape(H * W, -1)


@pytest.mark.parametrize("method", ["tocsr", "tocsc", "tocoo"])
def test_scipy_matrices_equal_the_dense_reshape(scene, method):
    S = scene.build()
    m = getattr(S, method)()
    assert m.format == method[2:]
    assert m.shape == (scene.imshape[0] * scene.imshape[1], scene.data.shape[2])
    assert m.dtype == scene.data.dtype
    np.testing.assert_array_equal(m.toarray(), _reference_matrix(scene))


def test_csr_sorted_indices():
    sc = random_scene(40, imcorner=(-1, -1))
    S = sc.build()
    csr = S.tocsr()
    assert csr.has_sorted_indices
    csr.check_format(full_check=True)
    np.testing.assert_allclose(csr.toarray(), _reference_matrix(sc))
    # cached inside, but every call hands out an independent matrix: mutating it leaks nowhere
    csr.data *= 10
    np.testing.assert_allclose(S.tocsr().toarray(), _reference_matrix(sc))
    assert S._structure.csr_order is S._structure.csr_order  # the ordering is computed once


@pytest.mark.parametrize("method", ["tocsr", "tocsc", "tocoo"])
def test_scipy_in_place_methods_work_on_returned_matrices(method):
    sc = random_scene(44)  # explicit zeros: real work to do
    S = sc.build()
    for op in ("sum_duplicates", "eliminate_zeros", "sort_indices"):
        m = getattr(S, method)()
        if hasattr(m, op):
            getattr(m, op)()
        np.testing.assert_allclose(m.toarray(), _reference_matrix(sc))
    np.testing.assert_allclose(getattr(S, method)().toarray(), _reference_matrix(sc))


def test_to_sparse_is_canonical_coo(scene):
    S = scene.build()
    coo = S.to_sparse()
    assert isinstance(coo, sparse.COO) and coo.shape == S.shape and coo.fill_value == 0
    np.testing.assert_array_equal(coo.todense(), scene.dense())
    # cached: a new object each call (it cannot corrupt S) over the same read-only arrays
    again = S.to_sparse()
    assert again is not coo and (coo.nnz == 0 or np.shares_memory(again.coords, coo.coords))


def test_to_sparse_is_sorted_and_unique():
    sc = random_scene(41)
    coo = sc.build().to_sparse()
    flat = np.ravel_multi_index(coo.coords, coo.shape)
    assert np.all(np.diff(flat) > 0)  # sorted, unique
    np.testing.assert_allclose(coo.todense(), sc.dense())


def test_tutorial_fit_recipe_runs_on_tocsr():
    sc = random_scene(42, imshape=(20, 20), stamp=(4, 4), nsources=8, zeros=False)
    data = np.abs(sc.data) + 0.5
    S = Sparse3D(data, sc.row, sc.col, sc.imshape)
    keep = S.tocsr().getnnz(axis=0) > 0
    S = S[:, :, keep]
    w = np.arange(1, S.nsources + 1, dtype=float)
    image = S.dot(w)
    Lc = S.tocsr()
    fit = sp.linalg.spsolve(Lc.T.dot(Lc), sp.csc_matrix(Lc.T.dot(image.ravel())).T)
    np.testing.assert_allclose(fit, w, rtol=1e-8)


def test_float32_conversions_stay_float32():
    S = random_scene(43, dtype=np.float32).build()
    assert S.tocsr().dtype == np.float32 and S.to_sparse().dtype == np.float32
    assert S.dot(np.ones(S.nsources, dtype=np.float32)).dtype == np.float32


def test_float32_dot_accumulates_accurately():
    rng = np.random.default_rng(0)
    n = 100_000
    R, C = np.mgrid[:3, :3]
    row = R[:, :, None] + rng.integers(0, 30, n)
    col = C[:, :, None] + rng.integers(0, 30, n)
    data = rng.uniform(0, 1, size=(3, 3, n)).astype(np.float32)
    S = Sparse3D(data, row, col, imshape=(32, 32))
    w = rng.uniform(0, 1, n).astype(np.float32)
    ref = Sparse3D(data.astype(np.float64), row, col, imshape=(32, 32)).dot(w.astype(np.float64))
    got = S.dot(w)
    assert got.dtype == np.float32
    # float32 accumulates in float32, as NumPy's float32 matmul does; ~880 stamps overlap
    # every pixel here, so a serial float32 sum is within ~1e-6 (NumPy's blocked sum: 3e-7)
    np.testing.assert_allclose(got, ref, rtol=4e-6)
