"""Factor internals against dense NumPy: relaxed supernodes (NumPy and compiled), postorder, the solves."""

import warnings

import fit_reference
import numpy as np
import pytest
import scipy.sparse

from sparse3d.fit import factor as fit_factor
from sparse3d.fit import relaxed as fit_relaxed
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


def _symbolic_ldlt(N):
    """``(L, d)`` of the dense SPD ``N``: ``L`` strictly lower CSC on the symbolic pattern of the
    factor (closed under the etree), its structural zeros kept as explicit entries."""
    n = N.shape[0]
    Ls, d = _dense_ldlt(N)
    pattern = np.linalg.cholesky(np.abs(N) + n * np.eye(n)) != 0
    rows, cols = np.nonzero(np.tril(pattern, -1))
    L = scipy.sparse.csc_matrix((Ls[rows, cols], (rows, cols)), shape=(n, n))  # zeros kept
    L.sort_indices()
    return L, d


def _numpy_supernodes(L, d):
    return fit_relaxed._numpy_relaxed_supernodes(L, d)


def _compiled_supernodes(L, d):
    post, Lsn = fit_relaxed._relaxed_supernodal_factor(L, d)
    return post, _Supernodal(Lsn)


@pytest.mark.parametrize("build", [_numpy_supernodes, _compiled_supernodes], ids=["numpy", "compiled"])
@pytest.mark.parametrize("seed", range(6))
def test_relaxed_supernodal_factor_of_any_order(seed, build):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 60)) if seed else 1
    N = _spd(rng, n, (0.0, 0.08, 0.3)[seed % 3])  # diagonal (no entries below), sparse, dense
    L, d = _symbolic_ldlt(N)
    post, sn = build(L, d)
    assert sorted(post.tolist()) == list(range(n))
    Np = N[np.ix_(post, post)]
    Lsn = np.zeros((n, n))
    for s, (f, e) in enumerate(zip(sn.starts, sn.ends)):
        Lsn[f:e, f:e] = sn.ldiag[s]
        Lsn[sn.rows[s], f:e] = sn.lbelow[s]
    np.testing.assert_allclose(Lsn @ Lsn.T, Np, rtol=1e-10, atol=1e-10 * np.abs(N).max())
    np.testing.assert_allclose(sn.inv_diag(), np.diag(np.linalg.inv(Np)), rtol=1e-9)
    b = rng.normal(size=(n, 3))
    np.testing.assert_allclose(sn.solve(b), np.linalg.solve(Np, b), rtol=1e-8, atol=1e-10)


def test_numpy_relaxed_supernodes_of_an_empty_factor():
    post, sn = fit_relaxed._numpy_relaxed_supernodes(scipy.sparse.csc_matrix((0, 0)), np.zeros(0))
    assert post.shape == (0,) and sn.inv_diag().shape == (0,) and sn.solve(np.zeros((0, 2))).shape == (0, 2)


@pytest.mark.parametrize("seed", range(8))
def test_numpy_relaxed_supernodes_equal_the_compiled_ones(seed):
    """The NumPy path merges exactly as the compiled amalgamation (one rule, one postorder)."""
    from sparse3d.fit._factor_kernels import postorder

    rng = np.random.default_rng(10 + seed)
    n = int(rng.integers(2, 150))
    N = _spd(rng, n, float(rng.uniform(0.005, 0.06)))
    perm = rng.permutation(n)  # an order that is not a postorder of the etree
    L, d = _symbolic_ldlt(N[np.ix_(perm, perm)])
    parent = np.full(n, -1, dtype=np.intp)
    has = np.diff(L.indptr) > 0
    parent[has] = L.indices[L.indptr[:-1][has]]
    assert np.array_equal(fit_relaxed._etree_postorder(L.indptr, L.indices), postorder(parent))
    post_np, sn_np = _numpy_supernodes(L, d)
    post_c, sn_c = _compiled_supernodes(L, d)
    assert np.array_equal(post_np, post_c)
    assert np.array_equal(sn_np.starts, sn_c.starts)
    for s in range(sn_c.starts.size):
        assert np.array_equal(sn_np.rows[s], sn_c.rows[s])
        np.testing.assert_allclose(sn_np.ldiag[s], sn_c.ldiag[s], rtol=1e-14, atol=0)
        np.testing.assert_allclose(sn_np.lbelow[s], sn_c.lbelow[s], rtol=1e-14, atol=0)


def test_numpy_relaxed_supernodes_merge_and_stay_exact():
    """Fewer, larger blocks than the fundamental supernodes, with the same inverse diagonal."""
    rng = np.random.default_rng(3)
    n = 200
    N = _spd(rng, n, 0.02)
    L, d = _symbolic_ldlt(N)
    post0, none = fit_relaxed._numpy_relaxed_supernodes(L, d, (1, 1, 1), (0.0, 0.0, 0.0))
    post1, relaxed = fit_relaxed._numpy_relaxed_supernodes(L, d)
    assert relaxed.starts.size < none.starts.size / 2
    assert np.array_equal(post0, post1)
    ref = np.diag(np.linalg.inv(N[np.ix_(post1, post1)]))
    np.testing.assert_allclose(relaxed.inv_diag(), ref, rtol=1e-10)
    np.testing.assert_allclose(none.inv_diag(), ref, rtol=1e-10)


def test_amalgamation_merges_supernodes(compiled_kernels):
    rng = np.random.default_rng(3)
    n = 120
    N = _spd(rng, n, 0.03)
    fac = fit_factor._QDLDLFactor(scipy.sparse.csr_matrix(np.tril(N)))
    L, d, _ = fac._LD
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
    assert fac._super is None  # no blocks before they are needed
    assert (fac._F is not None) == (fit_path == "numpy")  # small: qdldl's own solve
    b = rng.normal(size=(n, k))
    np.testing.assert_allclose(fac.solve(b), np.linalg.solve(N, b), rtol=1e-8, atol=1e-10)  # compiled LDL^T
    np.testing.assert_allclose(fac.solve(b[:, 0]), np.linalg.solve(N, b[:, 0]), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(fac.inv_diag(), np.diag(np.linalg.inv(N)), rtol=1e-9)
    np.testing.assert_allclose(fac.solve(b), np.linalg.solve(N, b), rtol=1e-8, atol=1e-10)  # blocks


@pytest.mark.parametrize("k", [1, 33])
def test_qdldl_factor_handing_over_its_symbolic_analysis_keeps_solving(k, fit_path):
    """The next factor refactorises qdldl's object in place: the one that handed it over still
    solves its own matrix (small: it kept that object for its solves)."""
    rng = np.random.default_rng(8)
    n = 90
    N1 = _spd(rng, n, 0.05)
    N2 = N1 + np.diag(rng.uniform(1, 3, n))  # same pattern, other values
    f1 = fit_factor._QDLDLFactor(scipy.sparse.csr_matrix(np.tril(N1)), keep_symbolic=True)
    b = rng.normal(size=(n, k))
    np.testing.assert_allclose(f1.solve(b), np.linalg.solve(N1, b), rtol=1e-10, atol=1e-12)
    f2 = fit_factor._QDLDLFactor(scipy.sparse.csr_matrix(np.tril(N2)), reuse=f1, keep_symbolic=True)
    assert f2.reused_symbolic
    for N, f in ((N1, f1), (N2, f2)):
        np.testing.assert_allclose(f.solve(b), np.linalg.solve(N, b), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(f.inv_diag(), np.diag(np.linalg.inv(N)), rtol=1e-10)
        np.testing.assert_allclose(f.solve(b), np.linalg.solve(N, b), rtol=1e-10, atol=1e-12)
        p = f.portable()
        np.testing.assert_allclose(p.solve(b), np.linalg.solve(N, b), rtol=1e-10, atol=1e-12)


def test_qdldl_factor_refuses_indefinite():
    N = np.array([[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(fit_factor._NotPositiveDefinite):
        fit_factor._QDLDLFactor(scipy.sparse.csr_matrix(np.tril(N)))


def test_selected_inversion_refuses_a_pattern_that_is_not_closed():
    # L of a 4x4 arrow-like matrix with the fill entry (3, 1) dropped: row 3 of column 0 is not
    # in the front of column 0's parent
    L = scipy.sparse.csc_matrix(
        np.array([[2.0, 0, 0, 0], [1.0, 2.0, 0, 0], [0, 0, 2.0, 0], [1.0, 0, 1.0, 2.0]])
    )
    with pytest.raises(RuntimeError, match="not closed"):
        _Supernodal(L).inv_diag()


@pytest.mark.parametrize("seed", range(3))
def test_qdldl_selected_inverse_on_the_pattern_matches_dense(seed, fit_path):
    rng = np.random.default_rng(30 + seed)
    n = 70
    N = _spd(rng, n, 0.04)
    fac = fit_factor._QDLDLFactor(scipy.sparse.csr_matrix(np.tril(N)))
    i, j = np.nonzero(np.tril(N))
    Z = np.linalg.inv(N)
    np.testing.assert_allclose(fac.inv_entries(i, j), Z[i, j], rtol=1e-10, atol=1e-12 * np.abs(Z).max())
    np.testing.assert_allclose(fac.inv_entries(j, i), Z[i, j], rtol=1e-10, atol=1e-12 * np.abs(Z).max())
    np.testing.assert_allclose(fac.inv_diag(), np.diag(Z), rtol=1e-10)


@pytest.mark.parametrize("name", sorted(fit_reference.SCENES))
def test_small_sparse3d_fit_takes_the_lean_numpy_path_and_matches_dense(name, monkeypatch, fit_path):
    """A small design with solver="auto": qdldl, no stamp boxes (no nested dissection to feed),
    no pixel-major CSR of the array; the result equal to dense least squares with a mask,
    errors, stamps over the edges, image corners, float32, 0 and 1 sources."""
    import sparse3d.fit.normal as fit_normal

    sc = fit_reference.scene(name, seed=3)
    S = sc.build()
    H, W = sc.imshape
    rng = np.random.default_rng(4)
    img = rng.normal(size=sc.imshape) + 5.0
    err = rng.uniform(0.5, 2.0, sc.imshape)
    mask = rng.random(sc.imshape) < 0.1
    if fit_path == "numpy":

        def refuse(*args, **kwargs):
            raise AssertionError("stamp boxes computed for a small auto fit")

        monkeypatch.setattr(fit_normal, "stamp_boxes", refuse)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sources hanging off the image or fully masked
        res = S.fit(img, errors=err, mask=mask)
    if fit_path == "numpy":
        assert "_csr" not in S.__dict__  # the fit used the design's CSC only
        assert res.solver == "qdldl"
    M = fit_reference.dense_design(sc)
    p, e, chi2, cov, cols = fit_reference.lstsq_fit(M, img.ravel(), err.ravel(), mask.ravel())
    fit_reference.close(res.weights, p, rtol=1e-9)
    fit_reference.close(res.weights_err, e, rtol=1e-9)
    np.testing.assert_allclose(res.chi2, chi2, rtol=1e-9, atol=1e-12)


def test_qdldl_factor_builds_its_blocks_once_under_threads(fit_path):
    """Threads asking for errors and solves at once: one set of blocks, every answer exact."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(12)
    n = 150
    N = _spd(rng, n, 0.03)
    b = rng.normal(size=(n, 40))  # more columns than qdldl's direct solve takes: the blocks
    Z = np.linalg.inv(N)
    for _ in range(3):
        fac = fit_factor._QDLDLFactor(scipy.sparse.csr_matrix(np.tril(N)))
        calls = [(fac.inv_diag,), (fac.solve, b), (fac.solve, b[:, 0])] * 4
        with ThreadPoolExecutor(4) as pool:
            out = [f.result() for f in [pool.submit(*call) for call in calls]]
        for i, got in enumerate(out):
            want = (np.diag(Z), Z @ b, Z @ b[:, 0])[i % 3]
            np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
