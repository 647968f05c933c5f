"""Diagnostics of a fit against dense references: residuals, per-source chi-square and pixel
counts (a Python loop over each source's pixels), flags, covariances on the normal matrix's
pattern (the dense inverse), and the tabular results."""

import sys

import numpy as np
import pytest
import scipy.sparse
from fit_reference import SCENES, close, dense_design, lstsq_fit, scene

from sparse3d import Sparse3D
from sparse3d.fit import BLEND_THRESHOLD, FitFlags, Polynomial, available_solvers, fit_design

pytestmark = pytest.mark.filterwarnings("ignore::sparse3d.fit.UnconstrainedSourceWarning")


@pytest.fixture(params=["qdldl", "superlu", "cholmod"])
def solver(request):
    if request.param not in available_solvers():
        pytest.skip("needs cvxopt")
    return request.param


def _problem(name="basic", seed=31, k=None, frame_masks=False):
    sc = scene(name, seed=seed)
    S = Sparse3D(sc.data, sc.row, sc.col, sc.imshape, imcorner=sc.imcorner)
    A = dense_design(sc)
    H, W = sc.imshape
    rng = np.random.default_rng(seed)
    err = rng.uniform(0.5, 2.0, (H, W))
    shape = (H, W) if k is None else (H, W, k)
    d = rng.normal(10, 2, shape)
    mask = rng.random(shape if frame_masks else (H, W)) < 0.2
    return S, A, d, err, mask


def _dense_source_stats(A, d, err, mask, params, Bd=None):
    """Loop over sources and their pixels: chi-square and unmasked pixel count."""
    n = A.shape[1]
    model = A @ np.nan_to_num(params[:n])
    if Bd is not None:
        model = model + Bd @ np.nan_to_num(params[n:])
    r = (d.ravel() - model) / err.ravel()
    chi2, npix = np.zeros(n), np.zeros(n, int)
    for j in range(n):
        for p in np.flatnonzero(A[:, j] != 0):
            if not mask.ravel()[p]:
                chi2[j] += r[p] ** 2
                npix[j] += 1
    return chi2, npix


@pytest.mark.parametrize("name", sorted(SCENES))
def test_residuals_and_per_source_chi2(name, solver):
    S, A, d, err, mask = _problem(name)
    H, W = d.shape
    res = fit_design(S.tocsc(), d, imshape=(H, W), errors=err, mask=mask, background="plane", solver=solver)
    Bd = Polynomial(1).columns((H, W)).toarray()
    p = lstsq_fit(np.hstack([A, Bd]), d.ravel(), err.ravel(), mask.ravel())[0]
    model = (np.hstack([A, Bd]) @ np.nan_to_num(p)).reshape(H, W)
    expected = np.where(mask, np.nan, d - model)
    np.testing.assert_allclose(res.residuals, expected, rtol=1e-8, atol=1e-8 * np.abs(d).max())
    chi2, npix = _dense_source_stats(A, d, err, mask, p, Bd)
    np.testing.assert_allclose(res.source_chi2, chi2, rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(res.source_npix, npix)
    assert res.source_chi2.shape == res.source_npix.shape == (A.shape[1],)


def test_per_source_stats_of_a_stack_with_per_frame_masks(solver):
    k = 3
    S, A, d, err, mask = _problem(k=k, frame_masks=True)
    H, W = d.shape[:2]
    res = S.fit(d, errors=err, mask=mask)
    assert res.source_chi2.shape == (A.shape[1], k) and res.residuals.shape == (H, W, k)
    for f in range(k):
        p = lstsq_fit(A, d[:, :, f].ravel(), err.ravel(), mask[:, :, f].ravel())[0]
        chi2, npix = _dense_source_stats(A, d[:, :, f], err, mask[:, :, f], p)
        np.testing.assert_allclose(res.source_chi2[:, f], chi2, rtol=1e-8, atol=1e-10)
        np.testing.assert_array_equal(res.source_npix[:, f], npix)
        assert np.isnan(res.residuals[:, :, f][mask[:, :, f]]).all()


def test_flags_against_a_dense_reading_of_the_scene(solver):
    S, A, d, err, mask = _problem(seed=5)
    H, W = d.shape
    n = A.shape[1]
    level = np.quantile(d, 0.95)
    sat = d >= level
    res = S.fit(d, errors=err, mask=mask, saturation=level)
    used = ~(mask | sat).ravel()
    G = A[used].T @ (A[used] / err.ravel()[used, None] ** 2)
    flags = np.zeros(n, np.uint8)
    for j in range(n):
        pix = np.flatnonzero(A[:, j] != 0)
        if not used[pix].any():
            flags[j] |= FitFlags.UNCONSTRAINED
        if (~used[pix]).any():
            flags[j] |= FitFlags.PARTLY_MASKED
        if pix.size and not used[np.argmax(A[:, j])]:
            flags[j] |= FitFlags.MASKED_CORE
        if sat.ravel()[pix].any():
            flags[j] |= FitFlags.SATURATED
        others = [i for i in range(n) if i != j and G[i, i] > 0 and G[j, j] > 0]
        if any(abs(G[i, j]) / np.sqrt(G[i, i] * G[j, j]) > BLEND_THRESHOLD for i in others):
            flags[j] |= FitFlags.BLENDED
    np.testing.assert_array_equal(res.flags, flags)
    assert res.flags.dtype == np.uint8
    # every flag occurs in this scene, so each branch above was exercised
    for f in FitFlags:
        if f is not FitFlags.UNCONSTRAINED:
            assert (res.flags & f).any(), f
    # another threshold
    ov = np.zeros(n)
    for j in range(n):
        for i in range(n):
            if i != j and G[i, i] > 0 and G[j, j] > 0:
                ov[j] = max(ov[j], abs(G[i, j]) / np.sqrt(G[i, i] * G[j, j]))
    np.testing.assert_array_equal(res.blended(0.3), ov > 0.3)


def test_unconstrained_flag():
    S, A, d, err, mask = _problem(seed=6)
    full = np.ones(d.shape, bool)
    full[0, 0] = False
    res = S.fit(d, mask=full)
    np.testing.assert_array_equal((res.flags & FitFlags.UNCONSTRAINED) != 0, res.unconstrained)
    assert res.unconstrained.any()


@pytest.mark.parametrize("background", [None, "plane", ("grid", (6, 8))])
@pytest.mark.parametrize("prior", [False, True])
def test_covariance_on_the_normal_matrix_pattern_matches_the_dense_inverse(background, prior, solver):
    S, A, d, err, mask = _problem(seed=12)
    H, W = d.shape
    kw = dict(prior_sigma=3.0) if prior else {}
    res = fit_design(
        S.tocsc(), d, imshape=(H, W), errors=err, mask=mask, background=background, solver=solver, **kw
    )
    Bd = np.zeros((H * W, 0))
    if background is not None:
        from sparse3d.fit import as_background

        Bd = as_background(background).columns((H, W)).toarray()
    M = np.hstack([A, Bd])
    m = M.shape[1]
    sig = np.full(m, np.inf)
    if prior:
        sig[: A.shape[1]] = 3.0
    _, e, _, cov, cols = lstsq_fit(M, d.ravel(), err.ravel(), mask.ravel(), sig)
    keep = ~mask.ravel()
    G = M[keep].T @ (M[keep] / err.ravel()[keep, None] ** 2)
    C = res.covariance()
    assert scipy.sparse.issparse(C) and C.shape == (m, m)
    dense = np.zeros((m, m))
    dense[np.ix_(cols, cols)] = cov
    pattern = (G != 0) | np.eye(m, dtype=bool)
    pattern &= np.isin(np.arange(m), cols)[:, None] & np.isin(np.arange(m), cols)[None, :]
    Cd = C.toarray()
    np.testing.assert_array_equal(Cd != 0, pattern)
    np.testing.assert_allclose(Cd[pattern], dense[pattern], rtol=1e-8, atol=1e-12 * np.abs(cov).max())
    np.testing.assert_allclose(np.sqrt(C.diagonal()[cols]), e[cols], rtol=1e-10)
    diag = res.covariance(neighbours=False).toarray()
    np.testing.assert_allclose(diag, np.diag(np.diag(Cd)), rtol=1e-12)
    assert (C != C.T).nnz == 0


def test_covariance_of_a_stack_with_several_normal_matrices(solver):
    k = 3
    S, A, d, err, mask = _problem(seed=13, k=k)
    E = np.random.default_rng(1).uniform(0.5, 2, d.shape)
    res = S.fit(d, errors=E, mask=mask)
    assert res.n_factorizations == k
    with pytest.raises(ValueError, match="pass frame="):
        res.covariance()
    for f in range(k):
        _, _, _, cov, cols = lstsq_fit(A, d[:, :, f].ravel(), E[:, :, f].ravel(), mask.ravel())
        Cd = res.covariance(frame=f).toarray()[np.ix_(cols, cols)]
        nz = Cd != 0
        np.testing.assert_allclose(Cd[nz], cov[nz], rtol=1e-8)
    with pytest.raises(ValueError, match="frame must be in"):
        res.covariance(frame=k)


def test_covariance_needs_the_factorisation():
    S, A, d, err, mask = _problem(seed=14)
    res = fit_design(S.tocsc(), d, imshape=d.shape, return_errors=False)
    with pytest.raises(ValueError, match="return_errors=True"):
        res.covariance()


# ---- tables --------------------------------------------------------------------------------
def test_to_xarray_and_pandas_single_image():
    S, A, d, err, mask = _problem(seed=15)
    res = S.fit(d, errors=err, mask=mask, background="plane")
    ds = res.to_xarray()
    n = A.shape[1]
    assert dict(ds.sizes) == {"source": n}
    np.testing.assert_array_equal(ds["weights"].values, res.weights)
    np.testing.assert_array_equal(ds["weights_err"].values, res.weights_err)
    np.testing.assert_array_equal(ds["source_chi2"].values, res.source_chi2)
    np.testing.assert_array_equal(ds["flags"].values, res.flags)
    assert ds.attrs["chi2"] == res.chi2 and ds.attrs["flag_BLENDED"] == 16
    df = ds.to_dataframe()
    assert len(df) == n and {"weights", "weights_err", "source_npix", "flags"} <= set(df.columns)
    bg = res.to_xarray("background")
    assert list(bg["term"].values) == ["u^0 v^0", "u^1 v^0", "u^0 v^1"]
    np.testing.assert_array_equal(bg["background"].values, res.background)
    with pytest.raises(ValueError, match="part must be"):
        res.to_xarray("everything")


def test_to_xarray_stack_has_source_and_frame_dims():
    k = 4
    S, A, d, err, mask = _problem(seed=16, k=k)
    res = S.fit(d, errors=err, mask=mask)
    ds = res.to_xarray()
    assert dict(ds.sizes) == {"source": A.shape[1], "frame": k}
    assert ds["weights"].dims == ("source", "frame") and ds["weights_err"].dims == ("source",)
    assert ds["chi2"].dims == ("frame",)
    df = ds.to_dataframe()
    assert len(df) == A.shape[1] * k
    with pytest.raises(ValueError, match="no background model"):
        res.to_xarray("background")


def test_to_table_with_units():
    u = pytest.importorskip("astropy.units")
    S, A, d, err, mask = _problem(seed=17)
    res = S.fit(d * u.adu, errors=err * u.adu, mask=mask, background="constant")
    t = res.to_table()
    assert len(t) == A.shape[1]
    assert t["weights"].unit == u.adu and t["weights_err"].unit == u.adu
    close(t["weights"].value, res.weights.value, rtol=0)
    np.testing.assert_array_equal(t["flags"], res.flags)
    assert t.meta["background"].unit == u.adu
    assert res.to_xarray().attrs["unit"] == "adu"


def test_to_table_without_astropy_is_a_clear_import_error(monkeypatch):
    S, A, d, err, mask = _problem(seed=18)
    res = S.fit(d)
    monkeypatch.setitem(sys.modules, "astropy.table", None)
    with pytest.raises(ImportError, match="needs astropy"):
        res.to_table()


def test_masked_core_is_the_brightest_pixel_only():
    stamp = np.array([[1.0, 2.0, 1.0], [2.0, 9.0, 2.0], [1.0, 2.0, 0.5]])[:, :, None]
    R, C = np.mgrid[:3, :3]
    S = Sparse3D(stamp, R[:, :, None] + 2, C[:, :, None] + 3, (8, 9))
    d = np.random.default_rng(0).normal(5, 1, (8, 9))
    core, wing = np.zeros((8, 9), bool), np.zeros((8, 9), bool)
    core[3, 4] = True
    wing[4, 5] = True  # the faintest pixel of the stamp
    assert S.fit(d, mask=core).flags[0] == FitFlags.MASKED_CORE | FitFlags.PARTLY_MASKED
    assert S.fit(d, mask=wing).flags[0] == FitFlags.PARTLY_MASKED
    assert S.fit(d).flags[0] == 0
    assert S.fit(d, saturation=d[2, 3] - 1e-9, mask=~np.isfinite(d)).flags[0] & FitFlags.SATURATED


def test_flags_and_table_of_a_stack_follow_each_frame():
    stamp = np.array([[1.0, 2.0, 1.0], [2.0, 9.0, 2.0], [1.0, 2.0, 0.5]])[:, :, None]
    R, C = np.mgrid[:3, :3]
    S = Sparse3D(np.repeat(stamp, 2, axis=2), R[:, :, None] + [2, 2], C[:, :, None] + [3, 4], (8, 9))
    d = np.random.default_rng(1).normal(5, 1, (8, 9, 3))
    M = np.zeros((8, 9, 3), bool)
    M[3, 4, 1] = True  # frame 1: source 0's core (and source 1's edge)
    res = S.fit(d, mask=M)
    assert res.flags.shape == (2, 3)
    assert res.flags[0, 1] == FitFlags.MASKED_CORE | FitFlags.PARTLY_MASKED | FitFlags.BLENDED
    assert res.flags[0, 0] == res.flags[0, 2] == FitFlags.BLENDED
    assert res.flags[1, 1] == FitFlags.PARTLY_MASKED | FitFlags.BLENDED
    np.testing.assert_array_equal(res.source_npix, [[9, 8, 9], [9, 8, 9]])
    pytest.importorskip("astropy")
    t = res.to_table()
    assert t["weights"].shape == (2, 3) and t["flags"].shape == (2, 3)
    assert t["weights_err"].shape == (2, 3)  # per-frame masks: per-frame normal matrices
