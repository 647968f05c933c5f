"""``sparse3d.fit.normal_matrix`` against a dense NumPy ``A^T diag(ivar) A``.

The dense design comes from :func:`sparse3d.testing.dense_reference` (stamps summed onto a
dense ``(H, W, n)`` array), so it shares no code with the stamp kernel or SciPy's product.
"""

import numpy as np
import pytest
import scipy.sparse

from sparse3d import Sparse3D
from sparse3d.fit.assemble import _regular_corners, _scaled_normal_matrix, normal_matrix
from sparse3d.testing import dense_reference, random_scene


def _dense(S):
    D = dense_reference(S.data, S.row, S.col, S.imshape, S.imcorner)
    return D.reshape(-1, S.nsources).astype(np.float64)


def _lower_reference(A, ivar):
    G = A.T @ (A if ivar is None else ivar[:, None] * A)
    return np.tril(G)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("imcorner", [(0, 0), (-7, 12)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.int16])
@pytest.mark.parametrize("weighted", [False, True])
def test_stamp_kernel_matches_dense(seed, imcorner, dtype, weighted, compiled_kernels):
    rng = np.random.default_rng(seed)
    sc = random_scene(
        rng, imshape=(13, 17), stamp=(3, 4), nsources=int(rng.integers(1, 40)), imcorner=imcorner, dtype=dtype
    )
    S = Sparse3D(sc.data, sc.row, sc.col, sc.imshape, sc.imcorner)
    assert _regular_corners(S) is not None  # the kernel path is the one tested
    A = _dense(S)
    ivar = None
    if weighted:
        ivar = rng.uniform(0.1, 3.0, A.shape[0])
        ivar[rng.random(A.shape[0]) < 0.2] = 0.0  # masked pixels
    ref = _lower_reference(A, ivar)
    for design in (S, S.tocsr(), S.tocsc()):
        N = normal_matrix(design, ivar)
        assert isinstance(N, scipy.sparse.csr_matrix) and N.shape == (S.nsources,) * 2
        assert N.has_sorted_indices
        assert scipy.sparse.triu(N, k=1).nnz == 0
        np.testing.assert_allclose(N.toarray(), ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())


def test_irregular_stamps_take_the_general_path():
    sc = random_scene(3, nsources=9)
    # rows of each stamp in reverse order: not a regular rectangle (repeated positions are refused)
    S = Sparse3D(sc.data, sc.row[::-1], sc.col, sc.imshape)
    assert _regular_corners(S) is None
    A = _dense(S)
    np.testing.assert_allclose(normal_matrix(S).toarray(), _lower_reference(A, None), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n", [0, 1])
def test_zero_and_one_source(n, fit_path):
    R, C = np.mgrid[:3, :3]
    S = Sparse3D(np.ones((3, 3, n)), R[:, :, None] + np.arange(n), C[:, :, None] + 0 * np.arange(n), (5, 5))
    N = normal_matrix(S)
    assert N.shape == (n, n)
    np.testing.assert_allclose(N.toarray(), np.full((n, n), 9.0))


def test_source_entirely_off_the_image(fit_path):
    R, C = np.mgrid[:2, :2]
    S = Sparse3D(
        np.ones((2, 2, 2)), R[:, :, None] + np.array([0, 50]), C[:, :, None] + np.array([0, 50]), (4, 4)
    )
    N = normal_matrix(S)
    np.testing.assert_array_equal(N.toarray(), [[4.0, 0.0], [0.0, 0.0]])


@pytest.mark.parametrize("scale", [1e-200, 1e200])
def test_column_scale_keeps_tiny_and_huge_stamps_representable(scale, fit_path):
    sc = random_scene(5, nsources=10, zeros=False)
    data = np.array(sc.data)
    data[..., 3] *= scale
    S = Sparse3D(data, sc.row, sc.col, sc.imshape)
    for design in (S, S.tocsr()):
        Ns, c = _scaled_normal_matrix(design, None)
        assert np.all(np.isfinite(Ns.data))
        diag = Ns.diagonal()
        assert np.all((diag > 0.1) | (diag == 0))  # no underflow to 0, no overflow
        assert np.all(np.log2(c) == np.round(np.log2(c)))  # powers of two
        # diag(c) A^T A diag(c), with column 3 of A multiplied by scale (folded into c first)
        ref = _lower_reference(_dense(Sparse3D(sc.data, sc.row, sc.col, sc.imshape)), None)
        d = c.copy()
        d[3] *= scale
        ref = ref * d[:, None] * d[None, :]
        np.testing.assert_allclose(Ns.toarray(), ref, rtol=1e-12, atol=1e-12 * np.abs(ref).max())


def test_sources_spread_beyond_an_int64_grid_take_the_general_path(compiled_kernels):
    R, C = np.mgrid[:2, :2]
    row = R[:, :, None] + np.array([0, 2**40, 1])
    col = C[:, :, None] + np.array([0, 2**40, 1])
    S = Sparse3D(np.ones((2, 2, 3)), row, col, (4, 4))
    ref = np.tril(_dense(S).T @ _dense(S))
    np.testing.assert_allclose(normal_matrix(S).toarray(), ref)


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "csc_array"])
def test_general_path_formats_and_masked_overlaps(fmt, fit_path):
    """The SciPy path from any format equals the dense product, and two stamps that overlap only
    on masked pixels are not coupled (no stored entry, not even a zero)."""
    R, C = np.mgrid[:2, :2]
    # sources 0 and 1 share pixel (1, 1) only; source 2 overlaps source 1 on unmasked pixels
    row = R[:, :, None] + np.array([0, 1, 2])
    col = C[:, :, None] + np.array([0, 1, 1])
    rng = np.random.default_rng(2)
    S = Sparse3D(rng.uniform(1, 2, (2, 2, 3)), row, col, (5, 4))
    ivar = rng.uniform(0.5, 2.0, 20)
    ivar[1 * 4 + 1] = 0.0  # the shared pixel is masked
    M = S.tocsc()
    design = {"csr": M.tocsr(), "csc": M, "coo": M.tocoo(), "csc_array": scipy.sparse.csc_array(M)}[fmt]
    N = normal_matrix(design, ivar)
    ref = _lower_reference(_dense(S), ivar)
    np.testing.assert_allclose(N.toarray(), ref, rtol=1e-13, atol=0)
    assert ref[1, 0] == 0.0 and ref[2, 1] != 0.0
    coords = {(int(i), int(j)) for i, j in zip(*N.tocoo().coords)}
    assert (1, 0) not in coords and (2, 1) in coords
