"""Tests of sparse3d.fit.fit_design against independent dense NumPy references.

The design matrices are built densely with NumPy (Gaussian stamps at random
positions) and converted with SciPy; the references solve the stacked,
weighted least-squares system with ``np.linalg.lstsq`` and invert the dense
normal matrix, so they share no code with the sparse solver.
"""

import warnings

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.linalg

from sparse3d.fit import (
    FitResult,
    SingularNormalMatrixError,
    UnconstrainedSourceWarning,
    available_solvers,
    fit_design,
)
from sparse3d.fit import factor as fit_factor
from sparse3d.fit.selinv import _close_pattern

SOLVERS = ["qdldl", "superlu", "cholmod"]


@pytest.fixture(params=SOLVERS)
def solver(request):
    if request.param not in available_solvers():
        pytest.skip(f"{request.param} solver not installed (needs cvxopt)")
    return request.param


# ---------------------------------------------------------------------------
# scenes and dense references
# ---------------------------------------------------------------------------


def dense_design(rng, imshape=(14, 17), nsources=25, sigma=1.0, half=3, margin=1.0):
    """Dense (H*W, n) design matrix of truncated Gaussian stamps."""
    H, W = imshape
    r0 = rng.uniform(-margin, H - 1 + margin, nsources)
    c0 = rng.uniform(-margin, W - 1 + margin, nsources)
    R, C = np.mgrid[:H, :W]
    dr = R[..., None] - r0
    dc = C[..., None] - c0
    A = np.exp(-0.5 * (dr**2 + dc**2) / sigma**2)
    A[(np.abs(dr) > half) | (np.abs(dc) > half)] = 0.0
    return A.reshape(H * W, nsources)


def dense_reference(A, d, err=None, mask=None, mu=None, sigma=None):
    """Weights, errors and chi2 from a dense stacked least-squares system.

    Columns with no data and no prior are dropped (NaN in the output).
    """
    npix, n = A.shape
    keep = np.ones(npix, bool) if mask is None else ~mask.ravel()
    sw = np.ones(npix) if err is None else 1.0 / err.ravel()
    sig = np.full(n, np.inf) if sigma is None else np.broadcast_to(sigma, (n,)).astype(float)
    m = np.zeros(n) if mu is None else np.broadcast_to(mu, (n,)).astype(float)
    has_prior = np.isfinite(sig)
    cols = np.flatnonzero((np.abs(A[keep]).sum(axis=0) > 0) | has_prior)
    rows = [sw[keep, None] * A[keep][:, cols]]
    rhs = [sw[keep] * d.ravel()[keep]]
    pc = cols[has_prior[cols]]
    if pc.size:
        P = np.zeros((pc.size, cols.size))
        P[np.arange(pc.size), np.searchsorted(cols, pc)] = 1.0 / sig[pc]
        rows.append(P)
        rhs.append(m[pc] / sig[pc])
    M = np.vstack(rows)
    sol = np.linalg.lstsq(M, np.concatenate(rhs), rcond=None)[0]
    w = np.full(n, np.nan)
    w[cols] = sol
    e = np.full(n, np.nan)
    e[cols] = np.sqrt(np.diag(np.linalg.inv(M.T @ M)))
    model = A @ np.nan_to_num(w)
    chi2 = np.sum((sw * (d.ravel() - model))[keep] ** 2)
    return w, e, chi2, model


def assert_fit_matches(res, ref, rtol=1e-8):
    w, e, chi2, model = ref
    scale = np.nanmax(np.abs(w))
    np.testing.assert_array_equal(np.isnan(res.weights), np.isnan(w))
    np.testing.assert_allclose(res.weights, w, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(res.weights_err, e, rtol=rtol)
    np.testing.assert_allclose(res.chi2, chi2, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(res.model.ravel(), model, rtol=rtol, atol=rtol * np.abs(model).max())


@pytest.fixture
def scene():
    rng = np.random.default_rng(42)
    imshape = (14, 17)
    A = dense_design(rng, imshape)
    truth = rng.uniform(1, 10, A.shape[1])
    data = (A @ truth + rng.normal(0, 0.1, A.shape[0])).reshape(imshape)
    err = rng.uniform(0.05, 0.3, imshape)
    return rng, imshape, A, data, err


# ---------------------------------------------------------------------------
# single image
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo", "csr_array"])
def test_unweighted_matches_lstsq(scene, solver, fmt):
    rng, imshape, A, data, err = scene
    As = {
        "csr": scipy.sparse.csr_matrix,
        "csc": scipy.sparse.csc_matrix,
        "coo": scipy.sparse.coo_matrix,
        "csr_array": scipy.sparse.csr_array,
    }[fmt](A)
    res = fit_design(As, data, imshape=imshape, solver=solver)
    assert isinstance(res, FitResult)
    assert res.weights.shape == (A.shape[1],)
    assert res.model.shape == imshape
    assert isinstance(res.chi2, float)
    assert res.n_unconstrained == 0 and res.n_pixels == A.shape[0]
    assert res.solver == solver and res.n_factorizations == 1
    assert_fit_matches(res, dense_reference(A, data))


def test_weighted_matches_dense(scene, solver):
    rng, imshape, A, data, err = scene
    res = fit_design(scipy.sparse.csc_matrix(A), data, imshape=imshape, errors=err, solver=solver)
    assert_fit_matches(res, dense_reference(A, data, err=err))


@pytest.mark.parametrize(
    "mu, sigma",
    [
        (None, 0.5),  # ridge towards 0
        (3.0, 2.0),  # scalars
        ("vec", "vec"),  # per source, some without prior (inf)
    ],
)
def test_priors_match_dense(scene, solver, mu, sigma):
    rng, imshape, A, data, err = scene
    n = A.shape[1]
    if mu == "vec":
        mu = rng.uniform(0, 5, n)
        sigma = rng.uniform(0.1, 3, n)
        sigma[::3] = np.inf
    res = fit_design(
        scipy.sparse.csr_matrix(A),
        data,
        imshape=imshape,
        errors=err,
        prior_mu=mu,
        prior_sigma=sigma,
        solver=solver,
    )
    assert_fit_matches(res, dense_reference(A, data, err=err, mu=mu, sigma=sigma))


def test_mask_matches_dense(scene, solver):
    rng, imshape, A, data, err = scene
    mask = rng.random(imshape) < 0.3
    data = data.copy()
    err = err.copy()
    data[mask] = np.nan  # masked pixels may hold anything
    err[mask] = -1.0
    res = fit_design(scipy.sparse.csr_matrix(A), data, imshape=imshape, errors=err, mask=mask, solver=solver)
    assert res.n_pixels == (~mask).sum()
    ref = dense_reference(A, np.where(mask, 0.0, data), err=np.where(mask, 1.0, err), mask=mask)
    assert_fit_matches(res, ref)


def test_int_data_and_duplicate_entries(scene, solver):
    rng, imshape, A, data, err = scene
    idata = np.round(data * 10).astype(np.int64)
    coo = scipy.sparse.coo_matrix(A)
    # split every entry in two duplicates: a non-canonical matrix
    half = coo.data / 2
    dup = scipy.sparse.coo_matrix(
        (np.r_[half, half], (np.r_[coo.row, coo.row], np.r_[coo.col, coo.col])), shape=A.shape
    )
    res = fit_design(dup.tocsr(), idata, imshape=imshape, solver=solver)
    assert_fit_matches(res, dense_reference(A, idata.astype(float)))


# ---------------------------------------------------------------------------
# stacks of frames
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("errors_shape", ["none", "image", "stack_identical"])
def test_stack_shared_errors(scene, solver, errors_shape):
    rng, imshape, A, data, err = scene
    k = 3
    stack = data[..., None] + rng.normal(0, 0.1, imshape + (k,))
    errors = {"none": None, "image": err, "stack_identical": np.repeat(err[..., None], k, axis=2)}[
        errors_shape
    ]
    res = fit_design(scipy.sparse.csr_matrix(A), stack, imshape=imshape, errors=errors, solver=solver)
    assert res.n_factorizations == 1
    assert res.weights.shape == (A.shape[1], k)
    assert res.model.shape == imshape + (k,)
    assert res.chi2.shape == (k,)
    assert res.weights_err.shape == (A.shape[1],)
    for i in range(k):
        ref = dense_reference(A, stack[..., i], err=None if errors is None else err)
        np.testing.assert_allclose(res.weights[:, i], ref[0], rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(res.weights_err, ref[1], rtol=1e-8)
        np.testing.assert_allclose(res.chi2[i], ref[2], rtol=1e-7)
        np.testing.assert_allclose(res.model[..., i].ravel(), ref[3], rtol=1e-8, atol=1e-8)


def test_per_frame_errors(scene, solver):
    rng, imshape, A, data, err = scene
    k = 4
    stack = data[..., None] + rng.normal(0, 0.1, imshape + (k,))
    errors = rng.uniform(0.05, 0.3, imshape + (k,))
    errors[..., 3] = errors[..., 1]  # frames 1 and 3 share a map
    mask = rng.random(imshape) < 0.1
    res = fit_design(
        scipy.sparse.csr_matrix(A),
        stack,
        imshape=imshape,
        errors=errors,
        mask=mask,
        prior_sigma=20.0,
        solver=solver,
    )
    assert res.n_factorizations == 3
    assert res.weights_err.shape == (A.shape[1], k)
    for i in range(k):
        ref = dense_reference(A, stack[..., i], err=errors[..., i], mask=mask, sigma=20.0)
        np.testing.assert_allclose(res.weights[:, i], ref[0], rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(res.weights_err[:, i], ref[1], rtol=1e-8)
        np.testing.assert_allclose(res.chi2[i], ref[2], rtol=1e-7)


def test_blocked_supernodal_solve_path(scene, monkeypatch):
    """Many right-hand sides go through the blocked supernodal solve."""
    if "cholmod" not in available_solvers():
        pytest.skip("needs cvxopt")
    rng, imshape, A, data, err = scene
    monkeypatch.setattr(fit_factor, "_CHOLMOD_MAX_DIRECT_RHS", 0)
    stack = data[..., None] + rng.normal(0, 0.1, imshape + (5,))
    res = fit_design(scipy.sparse.csr_matrix(A), stack, imshape=imshape, errors=err, solver="cholmod")
    for i in range(5):
        ref = dense_reference(A, stack[..., i], err=err)
        np.testing.assert_allclose(res.weights[:, i], ref[0], rtol=1e-8, atol=1e-8)


# ---------------------------------------------------------------------------
# unconstrained and degenerate sources
# ---------------------------------------------------------------------------


def test_empty_sources_are_nan_with_one_warning(scene, solver):
    rng, imshape, A, data, err = scene
    n = A.shape[1]
    A2 = np.hstack([A, np.zeros((A.shape[0], 2))])  # two sources off the image
    A2[:, [n, 3]] = A2[:, [3, n]]  # one empty column in the middle
    mask = np.zeros(imshape, bool)
    # a third source whose only pixels are masked
    A2 = np.hstack([A2, np.zeros((A.shape[0], 1))])
    A2[[0, 1], -1] = 1.0
    mask.ravel()[[0, 1]] = True
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        res = fit_design(
            scipy.sparse.csr_matrix(A2), data, imshape=imshape, errors=err, mask=mask, solver=solver
        )
    ours = [w for w in record if issubclass(w.category, UnconstrainedSourceWarning)]
    assert len(ours) == 1
    assert "3 of" in str(ours[0].message)
    assert res.n_unconstrained == 3
    empty = [3, n + 1, n + 2]
    assert np.all(np.isnan(res.weights[empty])) and np.all(np.isnan(res.weights_err[empty]))
    assert np.all(np.isfinite(res.model))
    assert_fit_matches(res, dense_reference(A2, data, err=err, mask=mask))


def test_prior_constrains_empty_sources(scene, solver):
    rng, imshape, A, data, err = scene
    A2 = np.hstack([A, np.zeros((A.shape[0], 1))])
    sigma = np.full(A2.shape[1], np.inf)
    sigma[-1] = 2.5
    mu = np.zeros(A2.shape[1])
    mu[-1] = 7.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnconstrainedSourceWarning)
        res = fit_design(
            scipy.sparse.csr_matrix(A2),
            data,
            imshape=imshape,
            prior_mu=mu,
            prior_sigma=sigma,
            solver=solver,
        )
    assert res.n_unconstrained == 0
    assert res.weights[-1] == pytest.approx(7.0)
    assert res.weights_err[-1] == pytest.approx(2.5)
    assert_fit_matches(res, dense_reference(A2, data, mu=mu, sigma=sigma))


def test_all_sources_unconstrained(solver):
    A = scipy.sparse.csr_matrix((20, 3))
    with pytest.warns(UnconstrainedSourceWarning, match="3 of 3"):
        res = fit_design(A, np.ones((4, 5)), imshape=(4, 5), solver=solver)
    assert np.all(np.isnan(res.weights)) and np.all(np.isnan(res.weights_err))
    np.testing.assert_array_equal(res.model, 0.0)
    assert res.chi2 == pytest.approx(20.0)


@pytest.mark.parametrize("kind", ["identical", "combination"])
def test_singular_system_raises(scene, solver, kind):
    rng, imshape, A, data, err = scene
    A2 = A.copy()
    if kind == "identical":
        A2[:, 7] = A2[:, 4]
    else:
        A2[:, 7] = 0.5 * A2[:, 4] + 2.0 * A2[:, 11]
    with pytest.raises(SingularNormalMatrixError, match="linearly dependent") as info:
        fit_design(scipy.sparse.csr_matrix(A2), data, imshape=imshape, solver=solver)
    assert isinstance(info.value, np.linalg.LinAlgError)
    assert info.value.sources.size >= 1
    assert set(info.value.sources.tolist()) <= {4, 7, 11}
    # a prior regularises the degenerate pair
    res = fit_design(scipy.sparse.csr_matrix(A2), data, imshape=imshape, prior_sigma=10.0, solver=solver)
    assert_fit_matches(res, dense_reference(A2, data, sigma=10.0), rtol=1e-6)


# ---------------------------------------------------------------------------
# uncertainties on a larger scene (many multi-column supernodes)
# ---------------------------------------------------------------------------


def test_weights_err_matches_dense_inverse_medium(solver):
    rng = np.random.default_rng(7)
    imshape = (40, 44)
    A = dense_design(rng, imshape, nsources=350, half=4)
    err = rng.uniform(0.5, 2.0, imshape)
    data = (A @ rng.uniform(1, 5, A.shape[1])).reshape(imshape) + rng.normal(0, 1, imshape)
    res = fit_design(
        scipy.sparse.csc_matrix(A), data, imshape=imshape, errors=err, prior_sigma=50.0, solver=solver
    )
    w = 1.0 / err.ravel() ** 2
    N = A.T @ (w[:, None] * A) + np.eye(A.shape[1]) / 50.0**2
    np.testing.assert_allclose(res.weights_err, np.sqrt(np.diag(np.linalg.inv(N))), rtol=1e-9)
    np.testing.assert_allclose(
        res.weights, np.linalg.solve(N, A.T @ (w * data.ravel())), rtol=1e-8, atol=1e-8
    )


def test_return_errors_false(scene, solver):
    rng, imshape, A, data, err = scene
    res = fit_design(scipy.sparse.csr_matrix(A), data, imshape=imshape, return_errors=False, solver=solver)
    assert res.weights_err is None
    assert np.all(np.isfinite(res.weights))


# ---------------------------------------------------------------------------
# equivalence with the tutorial's recipe on a medium tutorial-like scene
# ---------------------------------------------------------------------------


def tutorial_like_scene(size=256, nsources=3000, seed=0):
    rng = np.random.default_rng(seed)
    brightness = 10 ** rng.normal(0, 1.5, size=nsources)
    source_row, source_col = rng.uniform(0, size, size=(nsources, 2)).T
    R, C = np.mgrid[:10, :10] - 5
    ri, rp = np.floor(source_row).astype(int), source_row % 1
    ci, cp = np.floor(source_col).astype(int), source_col % 1
    row3d = R[:, :, None] + ri
    col3d = C[:, :, None] + ci
    vals = np.exp(-0.5 * ((R[:, :, None] - rp) ** 2 + (C[:, :, None] - cp) ** 2)) / (2 * np.pi)
    inside = (row3d >= 0) & (row3d < size) & (col3d >= 0) & (col3d < size)
    src = np.broadcast_to(np.arange(nsources), row3d.shape)
    A = scipy.sparse.csr_matrix(
        (vals[inside], (row3d[inside] * size + col3d[inside], src[inside])),
        shape=(size * size, nsources),
    )
    model = A @ brightness
    data = rng.poisson(model) + rng.normal(0, 3, size=model.shape).astype(int)
    return A, data.reshape(size, size)


def test_recipe_equivalence_medium(solver):
    A, fake_data = tutorial_like_scene()
    Lc = A.tocsr()
    recipe = scipy.sparse.linalg.spsolve(Lc.T.dot(Lc), scipy.sparse.csc_matrix(Lc.T.dot(fake_data.ravel())).T)
    res = fit_design(A.tocsc(), fake_data, imshape=fake_data.shape, solver=solver)
    np.testing.assert_allclose(res.weights, recipe, rtol=1e-8, atol=1e-8 * np.abs(recipe).max())
    assert np.max(np.abs(res.weights - recipe)) <= 1e-8 * np.max(np.abs(recipe))
    resid = fake_data.ravel() - Lc @ recipe
    assert res.chi2 == pytest.approx(resid @ resid, rel=1e-8)


def test_solvers_agree_on_medium_scene():
    if "cholmod" not in available_solvers():
        pytest.skip("needs cvxopt")
    A, data = tutorial_like_scene(size=128, nsources=800, seed=3)
    err = np.sqrt(np.abs(data) + 9.0)
    a = fit_design(A, data, imshape=data.shape, errors=err, solver="cholmod")
    b = fit_design(A, data, imshape=data.shape, errors=err, solver="superlu")
    np.testing.assert_allclose(a.weights, b.weights, rtol=1e-8, atol=1e-8 * np.abs(b.weights).max())
    np.testing.assert_allclose(a.weights_err, b.weights_err, rtol=1e-9)


# ---------------------------------------------------------------------------
# input validation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(data=np.zeros((14, 16))), "data must have shape"),
        (dict(data=np.zeros((14 * 17,))), "data must have shape"),
        (dict(data=np.zeros((14, 17, 2, 2))), "data must have shape"),
        (dict(errors=np.ones((14, 16))), "errors must have shape"),
        (dict(errors=np.ones((14, 17, 2))), "errors must have shape"),
        (dict(errors=np.zeros((14, 17))), "errors must be positive"),
        (dict(errors=-np.ones((14, 17))), "errors must be positive"),
        (dict(errors=np.full((14, 17), np.nan)), "errors must be positive"),
        (dict(prior_sigma=0.0), "prior_sigma must be > 0"),
        (dict(prior_sigma=-1.0), "prior_sigma must be > 0"),
        (dict(prior_sigma=np.nan), "prior_sigma must be > 0"),
        (dict(prior_sigma=np.ones(3)), "prior_sigma must be a scalar or have shape"),
        (dict(prior_mu=1.0), "prior_mu requires prior_sigma"),
        (dict(prior_mu=np.ones(4), prior_sigma=1.0), "prior_mu must be a scalar or have shape"),
        (dict(prior_mu=np.inf, prior_sigma=1.0), "prior_mu must be finite"),
        (dict(mask=np.zeros((14, 16), bool)), "mask must have shape"),
        (dict(mask=np.full((14, 17), 2)), "mask must be boolean"),
        (dict(mask=np.zeros((14, 17), float)), "mask must be a boolean"),
        (dict(imshape=(14, 16)), "A must have H \\* W"),
        (dict(imshape=(14,)), "imshape must be"),
        (dict(solver="lapack"), "solver must be"),
    ],
)
def test_invalid_inputs(scene, kwargs, match):
    rng, imshape, A, data, err = scene
    args = dict(data=data, imshape=imshape)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        fit_design(scipy.sparse.csr_matrix(A), **args)


def test_invalid_design_and_nonfinite_data(scene):
    rng, imshape, A, data, err = scene
    with pytest.raises(ValueError, match="A must be a Sparse3D or a 2-D scipy.sparse"):
        fit_design(A, data, imshape=imshape)
    bad = data.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match="data contains non-finite"):
        fit_design(scipy.sparse.csr_matrix(A), bad, imshape=imshape)
    mask = np.zeros(imshape, bool)
    mask[2, 3] = True
    res = fit_design(scipy.sparse.csr_matrix(A), bad, imshape=imshape, mask=mask)
    assert np.all(np.isfinite(res.weights))


def test_nonfinite_design_rejected(scene):
    rng, imshape, A, data, err = scene
    A2 = scipy.sparse.csr_matrix(A)
    A2.data[5] = np.inf
    with pytest.raises(ValueError, match="A contains non-finite"):
        fit_design(A2, data, imshape=imshape)


# ---------------------------------------------------------------------------
# internals: supernodal solve and selected inversion on SuperLU's factor,
# whose exported pattern misses numerically-zero entries (closed by
# _close_pattern)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("factor_cls", [fit_factor._SuperLUFactor, fit_factor._QDLDLFactor])
def test_supernodal_on_factor_matches_dense(factor_cls):
    rng = np.random.default_rng(11)
    A = dense_design(rng, (30, 30), nsources=220, half=4)
    Nd = A.T @ A + 1e-3 * np.eye(A.shape[1])
    fac = factor_cls(scipy.sparse.csr_matrix(np.tril(Nd)))  # the factors take the lower triangle
    b = rng.normal(size=(A.shape[1], 3))
    np.testing.assert_allclose(fac.solve(b), np.linalg.solve(Nd, b), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(fac.inv_diag(), np.diag(np.linalg.inv(Nd)), rtol=1e-9)
    # the blocked solve of the closed factor, in the factor's order
    sn = fac._super
    assert sn.starts.size < A.shape[1]  # some supernodes have several columns
    p = fac.perm
    np.testing.assert_allclose(sn.solve(b[p]), np.linalg.solve(Nd[np.ix_(p, p)], b[p]), rtol=1e-8, atol=1e-10)


def test_close_pattern_adds_missing_entries():
    # L of a 4x4 arrow-like matrix with the fill entry (3, 1) dropped
    L = scipy.sparse.csc_matrix(
        np.array(
            [
                [2.0, 0, 0, 0],
                [1.0, 2.0, 0, 0],
                [0, 0, 2.0, 0],
                [1.0, 0, 1.0, 2.0],
            ]
        )
    )
    closed = _close_pattern(L)
    assert 3 in closed.indices[closed.indptr[1] : closed.indptr[2]]  # (3, 1) stored
    assert closed.nnz == L.nnz + 1
    np.testing.assert_array_equal(closed.toarray(), L.toarray())


def test_error_maps_differing_only_in_masked_pixels_share_a_factorization(scene, solver):
    rng, imshape, A, data, err = scene
    k = 3
    stack = data[..., None] + rng.normal(0, 0.1, imshape + (k,))
    mask = np.zeros(imshape, bool)
    mask[0, :5] = True
    errors = np.repeat(err[..., None], k, axis=2)
    errors[0, :5, 1] = np.nan
    errors[0, :5, 2] = 99.0
    res = fit_design(
        scipy.sparse.csr_matrix(A), stack, imshape=imshape, errors=errors, mask=mask, solver=solver
    )
    assert res.n_factorizations == 1
    assert res.weights_err.shape == (A.shape[1],)
    for i in range(k):
        ref = dense_reference(A, stack[..., i], err=err, mask=mask)
        np.testing.assert_allclose(res.weights[:, i], ref[0], rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(res.chi2[i], ref[2], rtol=1e-7)


def test_portable_factor_solves_like_the_original(solver):
    # the portable form is taken after the supernodal blocks exist, which may reorder the
    # factor's permutation (qdldl's relaxed supernodes): it must use the final order
    from sparse3d import Sparse3D
    from sparse3d.fit import prepare_normal_equations
    from sparse3d.testing import gaussian_scene

    g = gaussian_scene((60, 60), nsources=400, stamp_size=9, seed=5)
    r2 = (g["x3d"] - g["row_phase"]) ** 2 + (g["y3d"] - g["col_phase"]) ** 2
    S = Sparse3D(np.exp(-0.5 * r2), g["row3d"], g["col3d"], g["imshape"])
    D = np.random.default_rng(0).normal(size=(60 * 60, 3))
    ne = prepare_normal_equations(S.tocsr(), imshape=(60, 60), prior_sigma=1e3, solver=solver)
    np.testing.assert_allclose(ne.portable().solve(D), ne.solve(D), rtol=1e-8, atol=1e-8)


def test_singular_normal_matrix_names_background_coefficients():
    """A background coefficient that depends on the other parameters is named as such, not as a
    source (the factor's parameters from ``n_sources`` on are the background model's)."""
    import scipy.sparse

    from sparse3d.fit.factor import _factorize_or_raise

    # parameters 0, 1 are sources, 2 a background coefficient equal to source 1's column
    A = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0], [0.0, 2.0, 2.0], [1.0, 0.0, 0.0]])
    N = scipy.sparse.csr_matrix(np.tril(A.T @ A))
    # N's rows 1 and 2 are parameters 2 and 1 (idx), so the factor's dependent row 1 is the
    # background coefficient
    with pytest.raises(SingularNormalMatrixError, match="linearly dependent") as info:
        _factorize_or_raise(N, np.array([0, 2, 1]), "superlu", n_sources=2)
    err = info.value
    assert err.background.tolist() == [0] and err.sources.size == 0
    assert "1 background coefficient(s) [0] are linearly dependent" in str(err)
    assert "source(s)" not in str(err)
    # without n_sources every parameter is a source
    with pytest.raises(SingularNormalMatrixError) as info:
        _factorize_or_raise(N, None, "superlu")
    assert info.value.background.size == 0 and set(info.value.sources.tolist()) <= {1, 2}
