"""Factor internals against dense NumPy: relaxed supernodes, postorder, the sparse LDL^T solve."""

import numpy as np
import pytest
import scipy.sparse

from sparse3d.fit import factor as fit_factor
from sparse3d.fit.selinv import _Supernodal


def _spd(rng, n, density):
    """A random sparse SPD matrix (dense), natural order (not postordered in general)."""
    B = (rng.random((n, n)) < density) * rng.normal(size=(n, n))
    return B @ B.T + n * 0.05 * np.eye(n)


def _dense_ldlt(N):
    C = np.linalg.cholesky(N)
    d = np.diag(C) ** 2
    L = C / np.diag(C)[None, :]
    return np.tril(L, -1), d


@pytest.mark.parametrize("seed", range(5))
def test_relaxed_supernodal_factor_of_any_order(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60))
    N = _spd(rng, n, 0.08)
    Ls, d = _dense_ldlt(N)
    # the symbolic pattern of L (closed under the etree) with structural zeros kept:
    pattern = np.linalg.cholesky(np.abs(N) + n * np.eye(n)) != 0
    rows, cols = np.nonzero(np.tril(pattern, -1))
    L = scipy.sparse.csc_matrix((Ls[rows, cols], (rows, cols)), shape=(n, n))  # zeros kept
    L.sort_indices()
    post, Lsn = fit_factor._relaxed_supernodal_factor(L, d)
    assert sorted(post.tolist()) == list(range(n))
    Np = N[np.ix_(post, post)]
    np.testing.assert_allclose((Lsn @ Lsn.T).toarray(), Np, rtol=1e-10, atol=1e-10 * np.abs(N).max())
    sn = _Supernodal(Lsn)
    np.testing.assert_allclose(sn.inv_diag(), np.diag(np.linalg.inv(Np)), rtol=1e-9)
    b = rng.normal(size=(n, 3))
    np.testing.assert_allclose(sn.solve(b), np.linalg.solve(Np, b), rtol=1e-8, atol=1e-10)


def test_amalgamation_merges_supernodes(compiled_kernels):
    rng = np.random.default_rng(3)
    n = 120
    N = _spd(rng, n, 0.03)
    fac = fit_factor._QDLDLFactor(scipy.sparse.csr_matrix(np.tril(N)))
    L, d = fac._LD
    from sparse3d.fit._factor_kernels import amalgamate, etree_parent

    none = amalgamate(L.indptr, L.indices, L.data, d, np.array([1, 1, 1]), np.array([0.0, 0.0, 0.0]))
    relaxed = amalgamate(L.indptr, L.indices, L.data, d, np.array([4, 16, 48]), np.array([0.8, 0.1, 0.05]))
    s0 = _Supernodal(scipy.sparse.csc_matrix((none[2], none[1], none[0]), shape=(n, n)))
    s1 = _Supernodal(scipy.sparse.csc_matrix((relaxed[2], relaxed[1], relaxed[0]), shape=(n, n)))
    assert s1.starts.size < s0.starts.size  # fewer, larger supernodes
    assert relaxed[0][-1] >= none[0][-1]  # with explicit zeros
    np.testing.assert_allclose(s1.inv_diag(), s0.inv_diag(), rtol=1e-10)
    assert etree_parent(L.indptr, L.indices).shape == (n,)


@pytest.mark.parametrize("k", [1, 7, 16, 41])
def test_qdldl_factor_solves_before_and_after_the_blocks(k, fit_path):
    rng = np.random.default_rng(5)
    n = 80
    N = _spd(rng, n, 0.05)
    fac = fit_factor._QDLDLFactor(scipy.sparse.csr_matrix(np.tril(N)))
    assert (fac._LD is not None) == (fit_path == "compiled")
    b = rng.normal(size=(n, k))
    np.testing.assert_allclose(fac.solve(b), np.linalg.solve(N, b), rtol=1e-8, atol=1e-10)  # compiled LDL^T
    np.testing.assert_allclose(fac.solve(b[:, 0]), np.linalg.solve(N, b[:, 0]), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(fac.inv_diag(), np.diag(np.linalg.inv(N)), rtol=1e-9)
    np.testing.assert_allclose(fac.solve(b), np.linalg.solve(N, b), rtol=1e-8, atol=1e-10)  # blocks


def test_qdldl_factor_refuses_indefinite():
    N = np.array([[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(fit_factor._NotPositiveDefinite):
        fit_factor._QDLDLFactor(scipy.sparse.csr_matrix(np.tril(N)))
