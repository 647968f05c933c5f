"""The built-in factorisation (solver="nd"): nested dissection from the stamp boxes and a
multifrontal supernodal Cholesky, against dense NumPy references."""

import numpy as np
import pytest
import scipy.sparse

from sparse3d import Sparse3D
from sparse3d.fit import SingularNormalMatrixError, fit_design, normal_matrix
from sparse3d.fit.ordering import nested_dissection_order, stamp_boxes
from sparse3d.fit.supernodal import _NDFactor
from sparse3d.testing import dense_reference


def _scene(rng, n, imshape=(40, 36), imcorner=(-4, 7), stamp=(4, 5), dtype=np.float64):
    """Regular stamps spread over (and hanging off) the image; every source keeps pixels."""
    H, W = imshape
    nr, nc = stamp
    R, C = np.mgrid[:nr, :nc]
    r0 = rng.integers(imcorner[0] - nr + 1, imcorner[0] + H, n)
    c0 = rng.integers(imcorner[1] - nc + 1, imcorner[1] + W, n)
    vals = rng.uniform(0.1, 1.0, (nr, nc, n)).astype(dtype)
    return Sparse3D(vals, R[:, :, None] + r0, C[:, :, None] + c0, imshape, imcorner)


def _dense(S):
    return dense_reference(S.data, S.row, S.col, S.imshape, S.imcorner).reshape(-1, S.nsources).astype(float)


def _reference(A, d, err, keep, prec, mu):
    """Weights and their errors of ``min |(d - A w) / err|^2_keep + |(w - mu)|^2_prec``."""
    w8 = keep / err.ravel() ** 2
    N = A.T @ (w8[:, None] * A) + np.diag(prec)
    rhs = A.T @ (w8[:, None] * d.reshape(A.shape[0], -1)) + (prec * mu)[:, None]
    return np.linalg.solve(N, rhs), np.sqrt(np.diag(np.linalg.inv(N)))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("frames", [0, 3])
def test_nd_fit_matches_dense(seed, dtype, frames, compiled_kernels):
    # compiled_kernels: the stamp paths (normal matrix, right-hand side from the stamps)
    rng = np.random.default_rng(seed)
    S = _scene(rng, 150, dtype=dtype)
    A = _dense(S)
    shape = S.imshape if not frames else (*S.imshape, frames)
    d = rng.normal(size=shape)
    err = rng.uniform(0.5, 2.0, S.imshape)
    mask = rng.random(S.imshape) < 0.1
    sigma = np.where(rng.random(S.nsources) < 0.3, 3.0, np.inf)
    mu = rng.normal(size=S.nsources)
    kw = dict(imshape=S.imshape, errors=err, mask=mask, prior_mu=mu, prior_sigma=sigma)
    res = fit_design(S, d, solver="nd", **kw)
    assert res.solver == "nd"
    prec = np.where(np.isfinite(sigma), sigma**-2.0, 0.0)
    w, e = _reference(A, d, err, ~mask.ravel(), prec, mu)
    got = res.weights.reshape(S.nsources, -1)
    np.testing.assert_allclose(got, w, rtol=1e-9, atol=1e-11 * np.abs(w).max())
    np.testing.assert_allclose(res.weights_err, e, rtol=1e-9)
    ref = fit_design(S, d, solver="qdldl", **kw)
    np.testing.assert_allclose(res.chi2, ref.chi2, rtol=1e-9)


def test_nd_with_background_and_unconstrained_sources(compiled_kernels):
    rng = np.random.default_rng(3)
    S = _scene(rng, 120)
    d = rng.normal(size=S.imshape)
    mask = np.zeros(S.imshape, bool)
    mask[:10] = True  # some sources see only masked pixels: unconstrained
    with pytest.warns(Warning):
        ref = fit_design(S, d, imshape=S.imshape, mask=mask, background="plane", solver="superlu")
    with pytest.warns(Warning):
        res = fit_design(S, d, imshape=S.imshape, mask=mask, background="plane", solver="nd")
    assert res.solver == "nd"
    assert res.n_unconstrained > 0
    np.testing.assert_array_equal(np.isnan(res.weights), np.isnan(ref.weights))
    np.testing.assert_allclose(res.weights, ref.weights, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(res.weights_err, ref.weights_err, rtol=1e-9)
    np.testing.assert_allclose(res.background, ref.background, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("n", [0, 1])
def test_nd_zero_and_one_source(n):
    rng = np.random.default_rng(0)
    S = _scene(rng, n)
    d = rng.normal(size=S.imshape)
    res = fit_design(S, d, imshape=S.imshape, solver="nd")
    if n:
        w, e = _reference(_dense(S), d, np.ones(S.imshape), np.ones(d.size, bool), np.zeros(1), np.zeros(1))
        np.testing.assert_allclose(res.weights, w[:, 0], rtol=1e-12)
        np.testing.assert_allclose(res.weights_err, e, rtol=1e-12)
    else:
        assert res.weights.shape == (0,)


def test_nd_without_geometry_falls_back_to_qdldl():
    rng = np.random.default_rng(1)
    S = _scene(rng, 30)
    res = fit_design(S.tocsr(), rng.normal(size=S.imshape), imshape=S.imshape, solver="nd")
    assert res.solver == "qdldl"


def test_nd_names_dependent_sources():
    rng = np.random.default_rng(2)
    S = _scene(rng, 40)
    data = np.concatenate([S.data, S.data[:, :, 5:6]], axis=2)
    row = np.concatenate([S.row, S.row[:, :, 5:6]], axis=2)
    col = np.concatenate([S.col, S.col[:, :, 5:6]], axis=2)
    S2 = Sparse3D(data, row, col, S.imshape, S.imcorner)
    with pytest.raises(SingularNormalMatrixError) as info:
        fit_design(S2, rng.normal(size=S.imshape), imshape=S.imshape, solver="nd")
    assert set(info.value.sources.tolist()) <= {5, 40} and info.value.sources.size >= 1


@pytest.mark.parametrize("layout", ["random", "one_corner", "line", "grid"])
def test_nd_factor_on_awkward_geometries(layout):
    # clusters that no cut splits, a line (one long axis), a dense regular grid
    rng = np.random.default_rng(4)
    n = 300
    if layout == "random":
        r0, c0 = rng.integers(0, 60, n), rng.integers(0, 60, n)
    elif layout == "one_corner":
        r0, c0 = np.full(n, 5) + rng.integers(0, 2, n), np.full(n, 9)
    elif layout == "line":
        r0, c0 = np.zeros(n, int), np.arange(n) // 2
    else:
        r0, c0 = np.divmod(np.arange(n), 20)
        r0, c0 = 2 * r0, 2 * c0
    R, C = np.mgrid[:5, :5]
    S = Sparse3D(rng.uniform(0.1, 1, (5, 5, n)), R[:, :, None] + r0, C[:, :, None] + c0, (80, 400))
    G = normal_matrix(S, None)
    G = (G + scipy.sparse.diags(np.full(n, 0.1 * G.diagonal().max()), format="csr")).tocsr()
    full = (G + G.T - scipy.sparse.diags(G.diagonal())).toarray()
    F = _NDFactor(G, stamp_boxes(S, None))
    assert np.array_equal(np.sort(F.perm), np.arange(n))
    b = rng.normal(size=(n, 2))
    ref = np.linalg.solve(full, b)
    np.testing.assert_allclose(F.solve(b), ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())
    inv = np.linalg.inv(full)
    np.testing.assert_allclose(F.inv_diag(), np.diag(inv), rtol=1e-9)
    low = G.tocoo()
    np.testing.assert_allclose(F.inv_entries(low.row, low.col), inv[low.row, low.col], rtol=1e-8, atol=1e-12)
    P = F.portable()
    np.testing.assert_allclose(P.solve(b), ref, rtol=1e-9, atol=1e-12 * np.abs(ref).max())


def _fill(overlap, order):
    """Entries of the Cholesky factor of an SPD matrix with the pattern ``overlap`` in ``order``."""
    M = np.where(overlap, 1.0, 0.0)[np.ix_(order, order)]
    M += np.eye(M.shape[0]) * M.shape[0]
    return int(np.count_nonzero(np.abs(np.linalg.cholesky(M)) > 1e-300))


def test_nested_dissection_order_reduces_fill():
    rng = np.random.default_rng(5)
    n = 2000  # on 200 x 200 pixels, 10 x 10 stamps: ~20 neighbours each
    r0, c0 = rng.integers(0, 200, n), rng.integers(0, 200, n)
    boxes = tuple(np.ascontiguousarray(b, dtype=np.intp) for b in (r0, r0 + 10, c0, c0 + 10))
    perm = nested_dissection_order(boxes, n + 2)
    assert np.array_equal(np.sort(perm), np.arange(n + 2))
    assert list(perm[-2:]) == [n, n + 1]  # parameters without a box come last
    rlo, rhi, clo, chi = boxes
    overlap = (
        (rlo[:, None] < rhi[None, :])
        & (rlo[None, :] < rhi[:, None])
        & (clo[:, None] < chi[None, :])
        & (clo[None, :] < chi[:, None])
    )
    nd = _fill(overlap, perm[:n])
    given = _fill(overlap, np.arange(n))  # random positions: no locality
    by_row = _fill(overlap, np.lexsort((c0, r0)))  # a banded order
    assert nd < 0.2 * given and nd < 0.8 * by_row  # measured: 0.11x and 0.72x


@pytest.mark.parametrize("seed", range(4))
def test_cut_with_fewest_straddling_boxes(seed):
    """The window's cut: the fewest boxes straddle it (dense count over every position), and
    it is the one nearest the median cut among equals."""
    from sparse3d.fit._ordering_kernels import _fewest_straddling

    rng = np.random.default_rng(seed)
    n = 300
    size = rng.choice([1, 3, 11, 41], n)
    lo = rng.integers(-20, 200, n).astype(np.intp)
    hi = (lo + size).astype(np.intp)
    m = 250  # the kernel reads the first m boxes only
    x0, x1, med = 60, 140, 101
    diff = np.empty(x1 - x0 + 2, dtype=np.intp)
    cut = _fewest_straddling(lo, hi, m, x0, x1, med, diff)
    xs = np.arange(x0, x1 + 1)
    count = ((lo[:m][None, :] < xs[:, None]) & (xs[:, None] < hi[:m][None, :])).sum(axis=1)
    best = xs[count == count.min()]
    assert cut == best[np.argmin(np.abs(best - med))]


@pytest.mark.parametrize(
    "case",
    ["coincident", "far_apart", "mixed_sizes", "single_pixels"],
)
def test_nested_dissection_order_is_a_permutation(case):
    """Scenes where the cut window is empty (every centre equal), too wide (boxes far apart: the
    median is the cut) or mixes box sizes: still a permutation, the boxeless parameters last."""
    rng = np.random.default_rng(3)
    n = 500
    if case == "coincident":
        r0 = c0 = np.full(n, 7)
        size = np.full(n, 5)
    elif case == "far_apart":
        r0, c0 = rng.integers(-(10**9), 10**9, n), rng.integers(-(10**9), 10**9, n)
        size = np.full(n, 11)
    elif case == "mixed_sizes":
        r0, c0 = rng.integers(-30, 300, n), rng.integers(-30, 300, n)
        size = rng.choice([11, 41], n, p=[0.9, 0.1])
    else:
        r0, c0 = rng.integers(0, 40, n), rng.integers(0, 40, n)
        size = np.ones(n, dtype=int)
    boxes = tuple(np.ascontiguousarray(b, dtype=np.intp) for b in (r0, r0 + size, c0, c0 + size))
    perm = nested_dissection_order(boxes, n + 3)
    assert np.array_equal(np.sort(perm), np.arange(n + 3))
    assert list(perm[-3:]) == [n, n + 1, n + 2]
    if case == "mixed_sizes":  # fewer factor entries than the given (random) or a banded order
        ov = _overlaps(boxes)
        nd = _fill(ov, perm[:n])
        assert nd < 0.7 * _fill(ov, np.arange(n)) and nd < 0.7 * _fill(ov, np.lexsort((c0, r0)))  # 0.50, 0.48


def _random_cut(rng, n, h, w, span, cut, by_row):
    """``n`` random boxes ``h x w`` in ``[-5, span)``, and the sources wholly before, wholly
    after and straddling a cut at ``cut`` across rows (``by_row``) or columns."""
    r0, c0 = rng.integers(-5, span, n), rng.integers(-5, span, n)
    boxes = tuple(np.ascontiguousarray(b, dtype=np.intp) for b in (r0, r0 + h, c0, c0 + w))
    lo, hi = (boxes[0], boxes[1]) if by_row else (boxes[2], boxes[3])
    straddle = np.flatnonzero((hi > cut) & (lo < cut))
    return boxes, np.flatnonzero(hi <= cut), np.flatnonzero(lo >= cut), straddle


def _thin(boxes, first, second, sep, by_row):
    """``_thin_separator`` on a cut: the new order and how many moved to each half."""
    from sparse3d.fit._ordering_kernels import _thin_separator

    n = boxes[0].size
    tmp = np.concatenate([first, second, sep]).astype(np.intp)
    order = np.empty(n, dtype=np.intp)
    work = [np.empty(n, dtype=np.intp) for _ in range(3)] + [np.empty((n, 3), dtype=np.intp)]
    axes = boxes if by_row else (boxes[2], boxes[3], boxes[0], boxes[1])  # across the cut, then along it
    na, nb = _thin_separator(*axes, tmp, 0, first.size, second.size, n, order, *work)
    return order, na, nb


def _overlaps(boxes):
    rlo, rhi, clo, chi = boxes
    return (
        (rlo[:, None] < rhi[None, :])
        & (rlo[None, :] < rhi[:, None])
        & (clo[:, None] < chi[None, :])
        & (clo[None, :] < chi[:, None])
    )


@pytest.mark.parametrize("by_row", [True, False])
@pytest.mark.parametrize("sizes", [(10,), (11, 41), (1, 3)])
def test_thinned_separator_still_separates(by_row, sizes):
    """The separator of a cut, thinned: the two grown halves share no pixel (checked against a
    dense overlap table), only straddling boxes moved, and the separator got smaller."""
    rng = np.random.default_rng(len(sizes) + 7 * by_row)
    n = 600
    side = rng.choice(sizes, n)
    boxes, first, second, sep = _random_cut(rng, n, side, side, 120, 60, by_row)
    order, na, nb = _thin(boxes, first, second, sep, by_row)
    assert np.array_equal(np.sort(order), np.arange(n))
    A = order[: first.size + na]
    B = order[first.size + na : first.size + na + second.size + nb]
    S = order[first.size + na + second.size + nb :]
    assert set(A) >= set(first) and set(B) >= set(second) and set(S) <= set(sep)
    assert not _overlaps(boxes)[np.ix_(A, B)].any()
    assert na + nb > 0 and S.size < sep.size


@pytest.mark.parametrize("by_row", [True, False])
@pytest.mark.parametrize("sizes", [(10,), (11, 41), (1, 100), (2, 5, 40)])
def test_thinned_separator_moves_exactly_the_isolated_boxes(by_row, sizes):
    """Which separator boxes move, against a dense overlap table: of the short ones (across the
    cut at most twice the shortest separator box; the long ones stay), to the first half exactly
    those that overlap no box after the cut; then to the second exactly those left that overlap no
    box of the grown first half; mixed sizes (41 x 41 among 11 x 11, 1 x 100) and every
    orientation."""
    rng = np.random.default_rng(len(sizes) + 11 * by_row)
    n = 700
    h, w = rng.choice(sizes, n), rng.choice(sizes, n)
    boxes, first, second, sep = _random_cut(rng, n, h, w, 150, 70, by_row)
    ov = _overlaps(boxes)
    across = (boxes[1] - boxes[0]) if by_row else (boxes[3] - boxes[2])
    short = sep[across[sep] <= 2 * across[sep].min()]
    assert sizes != (11, 41) or short.size < sep.size  # 41 x 41 among 11 x 11: long ones stay untested
    to_first = short[~ov[np.ix_(short, second)].any(axis=1)]
    rest = np.setdiff1d(short, to_first)
    grown = np.concatenate([first, to_first])
    to_second = rest[~ov[np.ix_(rest, grown)].any(axis=1)]
    order, na, nb = _thin(boxes, first, second, sep, by_row)
    k = first.size
    assert set(order[k : k + na]) == set(to_first) and na == to_first.size
    k += na + second.size
    assert set(order[k : k + nb]) == set(to_second) and nb == to_second.size


def test_nd_large_fronts_match_dense():
    # a scene dense enough that the top separators' fronts take the panel/BLAS path
    # (k h^2 above _supernodal_kernels._LOOP_MAX_FLOPS: LAPACK and BLAS), one and several right-hand sides
    from sparse3d.fit import _supernodal_kernels as K

    rng = np.random.default_rng(8)
    n, size = 2500, 160
    r0, c0 = rng.integers(0, size, n), rng.integers(0, size, n)
    R, C = np.mgrid[:10, :10]
    S = Sparse3D(rng.uniform(0.1, 1, (10, 10, n)), R[:, :, None] + r0, C[:, :, None] + c0, (size, size))
    G = normal_matrix(S, None)
    G = (G + scipy.sparse.diags(np.full(n, 0.05 * G.diagonal().max()), format="csr")).tocsr()
    F = _NDFactor(G, stamp_boxes(S, None))
    sstart, sptr = F._blocks[0], F._blocks[1]
    k = np.diff(sstart)
    assert np.any(k * (k + np.diff(sptr)) ** 2 >= K._LOOP_MAX_FLOPS)
    assert np.any(k > 64)  # a large diagonal block (LAPACK)
    full = (G + G.T - scipy.sparse.diags(G.diagonal())).toarray()
    for b in (rng.normal(size=n), rng.normal(size=(n, 3))):
        ref = np.linalg.solve(full, b)
        np.testing.assert_allclose(F.solve(b), ref, rtol=1e-10, atol=1e-12 * np.abs(ref).max())
    np.testing.assert_allclose(F.inv_diag(), np.diag(np.linalg.inv(full)), rtol=1e-10)


@pytest.mark.parametrize("nk", [0, 2, 5, 17])
def test_nd_solve_of_many_right_hand_sides_matches_dense(nk, compiled_kernels):
    # the one-call multi-right-hand-side solve (every supernode in loops, four rows per update,
    # the remainders of 2, 5 and 17 columns, supernodes of fewer than four columns or rows)
    # against the dense solve; each column equals the one-right-hand-side solve, b is not
    # modified and may be a Fortran-ordered array
    rng = np.random.default_rng(14)
    n, size = 700, 90
    r0, c0 = rng.integers(-5, size, n), rng.integers(-5, size, n)
    R, C = np.mgrid[:7, :6]
    S = Sparse3D(rng.uniform(0.1, 1, (7, 6, n)), R[:, :, None] + r0, C[:, :, None] + c0, (size, size))
    G = normal_matrix(S, None)
    G = (G + scipy.sparse.diags(np.full(n, 0.05 * G.diagonal().max()), format="csr")).tocsr()
    F = _NDFactor(G, stamp_boxes(S, None))
    k = np.diff(F._blocks[0])
    assert k.max() >= 8 and np.any(k < 4)
    full = (G + G.T - scipy.sparse.diags(G.diagonal())).toarray()
    b = np.asfortranarray(rng.normal(size=(n, nk)))
    b0 = b.copy()
    got = F.solve(b)
    np.testing.assert_array_equal(b, b0)
    assert got.shape == (n, nk)
    ref = np.linalg.solve(full, b) if nk else np.zeros((n, 0))
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12 * max(np.abs(ref).max(initial=0), 1))
    for j in range(nk):
        np.testing.assert_allclose(got[:, j], F.solve(b[:, j].copy()), rtol=1e-12, atol=1e-14)


def test_stamp_right_hand_side_refuses_nonfinite_stamps(compiled_kernels):
    # with the right-hand side from the stamps no sparse matrix checks the values: the normal
    # matrix does
    rng = np.random.default_rng(9)
    S = _scene(rng, 50)
    vals = S.data.copy()
    inside = np.flatnonzero(
        (S.row[1, 1] >= S.imcorner[0])
        & (S.row[1, 1] < S.imcorner[0] + S.imshape[0])
        & (S.col[1, 1] >= S.imcorner[1])
        & (S.col[1, 1] < S.imcorner[1] + S.imshape[1])
    )
    vals[1, 1, inside[0]] = np.nan
    S2 = Sparse3D(vals, S.row, S.col, S.imshape, S.imcorner)
    with pytest.raises(ValueError, match="non-finite"):
        fit_design(S2, rng.normal(size=S.imshape), imshape=S.imshape)


def test_stamp_right_hand_side_model_and_residuals(compiled_kernels):
    rng = np.random.default_rng(10)
    S = _scene(rng, 80)
    A = _dense(S)
    d = rng.normal(size=S.imshape)
    res = fit_design(S, d, imshape=S.imshape, errors=np.full(S.imshape, 0.7))
    np.testing.assert_allclose(res.model.ravel(), A @ res.weights, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res.residuals.ravel(), d.ravel() - A @ res.weights, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res.chi2, np.sum(((d.ravel() - A @ res.weights) / 0.7) ** 2), rtol=1e-9)


def test_nd_kernels_compile_one_signature(compiled_kernels):
    # precompile() compiles the signatures the nd path calls: a fit with one and several frames
    # and weights_err (loops and BLAS supernodes) adds no second specialisation of any kernel
    import importlib

    import sparse3d

    sparse3d.precompile()
    rng = np.random.default_rng(9)
    n, size = 1500, 120
    r0, c0 = rng.integers(0, size, n), rng.integers(0, size, n)
    R, C = np.mgrid[:10, :10]
    S = Sparse3D(rng.uniform(0.1, 1, (10, 10, n)), R[:, :, None] + r0, C[:, :, None] + c0, (size, size))
    prior = dict(prior_mu=np.zeros(n), prior_sigma=np.ones(n))
    for d in (rng.normal(size=(size, size)), rng.normal(size=(size, size, 40))):
        res = fit_design(S, d, imshape=S.imshape, solver="nd", **prior)
        assert res.solver == "nd" and np.all(res.weights_err > 0)
    for name in ("_ordering_kernels", "_supernodal_kernels", "_selinv_kernels"):
        module = importlib.import_module(f"sparse3d.fit.{name}")
        for kernel in module.SIGNATURES:
            assert len(getattr(module, kernel).signatures) == 1, (name, kernel)


@pytest.mark.parametrize("n", [0, 1, 2, 200])
@pytest.mark.parametrize("imcorner", [(-4, 7), (3, -2)])
def test_stamp_right_hand_side_many_frames(n, imcorner, compiled_kernels):
    # A^T U from the stamps (storage order for a few frames, an image sweep by stamp rows for
    # many; stamps over every edge) against the dense product; each source's sums the same
    # bits whatever the number of frames
    from sparse3d.fit import rhs

    rng = np.random.default_rng(11 + n)
    S = _scene(rng, n, imcorner=imcorner, stamp=(5, 3))
    A = _dense(S) if n else np.zeros((np.prod(S.imshape), 0))
    values = np.ascontiguousarray(S.data, dtype=np.float64)
    values.flags.writeable = False  # the kernel's one compiled signature
    r0, c0 = (np.ascontiguousarray(x[0, 0], dtype=np.intp) for x in (S.row, S.col))
    stamps = (values, r0, c0, S.imshape, S.imcorner)
    U = rng.normal(size=(A.shape[0], 100))
    full = rhs._stamp_rhs(stamps, U)
    np.testing.assert_allclose(full, A.T @ U, rtol=1e-12, atol=1e-12)
    one = rhs._stamp_rhs(stamps, U[:, 7])
    assert one.shape == (n,)
    np.testing.assert_array_equal(one, full[:, 7])
    for m in (1, 3, rhs._RHS_ORDER_MIN_FRAMES - 1, rhs._RHS_ORDER_MIN_FRAMES, 33):
        np.testing.assert_array_equal(rhs._stamp_rhs(stamps, U[:, -m:]), full[:, -m:])
    # weights and mask inside the kernel: the bits of the product with a weighted, zeroed copy
    ivar = rng.uniform(0.5, 2.0, A.shape[0])
    keep = rng.random(A.shape[0]) > 0.2
    Uw = np.where(keep[:, None], ivar[:, None] * U, 0.0)
    U[~keep, 4] = np.nan  # masked pixels may hold anything
    for m in (1, 3, 7, 100):
        got = rhs._stamp_rhs(stamps, U[:, :m], ivar, keep)
        np.testing.assert_array_equal(got, rhs._stamp_rhs(stamps, Uw[:, :m]))
        np.testing.assert_allclose(got, A.T @ Uw[:, :m], rtol=1e-12, atol=1e-12)
    # float32 frames: summed in float64 (the product of their float64 values)
    U32 = U[:, 10:17].astype(np.float32)
    np.testing.assert_allclose(
        rhs._stamp_rhs(stamps, U32), A.T @ U32.astype(np.float64), rtol=1e-12, atol=1e-12
    )
    masked_only = rhs._stamp_rhs(stamps, U, None, keep)[:, 4]
    np.testing.assert_array_equal(masked_only, rhs._stamp_rhs(stamps, np.where(keep, U[:, 4], 0.0)))


def test_stamp_right_hand_side_fit_of_many_frames(compiled_kernels):
    # 33 and 100 frames through the whole fit (errors, mask, float32 stamps): the strip path
    rng = np.random.default_rng(12)
    S = _scene(rng, 120, dtype=np.float32)
    A = _dense(S)
    err = rng.uniform(0.5, 2.0, S.imshape)
    mask = rng.random(S.imshape) < 0.1
    for k in (33, 100):
        d = rng.normal(size=(*S.imshape, k))
        d[mask] = np.nan  # masked pixels may hold anything
        res = fit_design(S, d, imshape=S.imshape, errors=err, mask=mask, solver="nd")
        d0 = np.where(mask[:, :, None], 0.0, d)
        w, _ = _reference(A, d0, err, ~mask.ravel(), np.zeros(S.nsources), 0.0)
        np.testing.assert_allclose(res.weights, w, rtol=1e-9, atol=1e-11 * np.abs(w).max())
        single = fit_design(S, d[:, :, 5], imshape=S.imshape, errors=err, mask=mask, solver="nd")
        np.testing.assert_allclose(res.weights[:, 5], single.weights, rtol=1e-12, atol=1e-14)


def test_fit_of_many_frames_per_frame_masks_float32_matches_lstsq(compiled_kernels):
    # 13 float32 frames given as a transposed (k, H, W) stack, a mask per frame (two distinct
    # masks: two factorisations, each solving 5 or 8 frames: the image sweep of the right-hand
    # side), stamps over the image edges, a non-zero imcorner: every frame against
    # np.linalg.lstsq on its kept pixels
    rng = np.random.default_rng(15)
    S = _scene(rng, 90, imcorner=(5, -3))
    A = _dense(S)
    H, W = S.imshape
    k = 13
    stack = rng.normal(size=(k, H, W)).astype(np.float32)
    frames = stack.transpose(1, 2, 0)  # (H, W, k), not contiguous
    m1 = rng.random((H, W)) < 0.1
    m2 = rng.random((H, W)) < 0.2
    mask = np.stack([m1 if j % 3 else m2 for j in range(k)], axis=2)
    d = np.where(mask, np.float32(np.nan), frames)  # masked pixels may hold anything
    res = fit_design(S, d, imshape=S.imshape, mask=mask, solver="nd", errors=np.full((H, W), 0.5))
    assert res.n_factorizations == 2 and res.weights.shape == (S.nsources, k)
    for j in range(k):
        kept = ~mask[:, :, j].ravel()
        w, *_ = np.linalg.lstsq(A[kept], frames[:, :, j].ravel()[kept].astype(float), rcond=None)
        np.testing.assert_allclose(res.weights[:, j], w, rtol=1e-8, atol=1e-10 * np.abs(w).max())
        r = frames[:, :, j].ravel()[kept] - A[kept] @ w
        np.testing.assert_allclose(res.chi2[j], np.sum((r / 0.5) ** 2), rtol=1e-8)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_weighted_square_sum_kernel(weighted, masked, monkeypatch):
    # d^T C^-1 d per frame in one compiled pass (the chi-square of a fit from the stamps);
    # masked pixels skipped whatever they hold; more pixels than one block of the kernel; the
    # same bits in 1, 2 and 3 threads (ranges of blocks)
    import sparse3d
    from sparse3d import _threads
    from sparse3d.fit.rhs import _stamp_square_sum

    rng = np.random.default_rng(13)
    D = rng.normal(size=(9000, 7))
    ivar = rng.uniform(0.5, 2.0, 9000) if weighted else np.empty(0)
    keep = rng.random(9000) > 0.2 if masked else np.empty(0, dtype=bool)
    if masked:
        D[~keep, 3] = np.nan
    w = ivar if weighted else np.ones(9000)
    k = keep if masked else np.ones(9000, dtype=bool)
    ref = ((0.25 * D[k]) ** 2 * w[k, None]).sum(axis=0)
    got = _stamp_square_sum(D, ivar if weighted else None, keep if masked else None, 0.25)
    np.testing.assert_allclose(got, ref, rtol=1e-13)
    monkeypatch.setattr(_threads, "PARALLEL_MIN_WORK", 0)
    for nt in (1, 2, 3):
        with sparse3d.set_options(num_threads=nt):
            again = _stamp_square_sum(D, ivar if weighted else None, keep if masked else None, 0.25)
            np.testing.assert_array_equal(again, got)
            # the exact order: a running sum per block of 4096 pixels, then over the blocks
            blocks = [np.cumsum((0.25 * D[i : i + 4096, 0]) ** 2)[-1] for i in range(0, 9000, 4096)]
            one = _stamp_square_sum(np.ascontiguousarray(D[:, :1]), None, None, 0.25)
            np.testing.assert_array_equal(one, np.cumsum(blocks)[-1:])


@pytest.mark.parametrize("keep_kind", ["none", "shared", "per_frame"])
def test_kept_all_finite_kernel(keep_kind, compiled_kernels):
    # the fit's data check on the stamp path: one compiled pass over more rows than a block,
    # against np.isfinite on the kept entries; NaN, inf and -inf, kept or masked
    from sparse3d.fit.rhs import _kept_all_finite

    rng = np.random.default_rng(16)
    D = rng.normal(size=(9000, 6))
    keep = {
        "none": None,
        "shared": rng.random((9000, 1)) > 0.3,
        "per_frame": rng.random((9000, 6)) > 0.3,
    }[keep_kind]
    full = np.ones(D.shape, bool) if keep is None else np.broadcast_to(keep, D.shape)
    assert _kept_all_finite(D, keep)
    assert _kept_all_finite(D[:0], keep if keep is None else keep[:0])
    for bad in (np.nan, np.inf, -np.inf):
        for where in (full, ~full):
            idx = np.argwhere(where)
            if idx.size == 0:
                continue
            p, t = idx[rng.integers(len(idx))]
            D2 = D.copy()
            D2[p, t] = bad
            assert _kept_all_finite(D2, keep) == bool(np.isfinite(D2)[full].all())


def test_stamp_path_refuses_nonfinite_unmasked_data(compiled_kernels):
    # the compiled check of the stamp path raises the shared message; masked NaN pass
    rng = np.random.default_rng(17)
    S = _scene(rng, 60)
    for shape in (S.imshape, (*S.imshape, 6)):
        d = rng.normal(size=shape)
        d[3, 4] = np.nan
        with pytest.raises(ValueError, match="data contains non-finite values in unmasked pixels"):
            fit_design(S, d, imshape=S.imshape, solver="nd")
        mask = np.zeros(S.imshape, bool)
        mask[3, 4] = True
        assert np.all(np.isfinite(fit_design(S, d, imshape=S.imshape, mask=mask, solver="nd").weights))
