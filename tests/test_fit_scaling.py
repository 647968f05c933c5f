"""Sparse3D.fit through the stamp kernel, extreme scales, complex input and zero frames.

References are dense NumPy: the design from :func:`sparse3d.testing.dense_reference`, the
weights from ``np.linalg.lstsq`` of the whitened system, the errors from ``np.linalg.inv`` of
the dense normal matrix -- no code shared with the fit.
"""

import numpy as np
import pytest

from sparse3d import SingularNormalMatrixError, Sparse3D
from sparse3d.fit import available_solvers, fit_design
from sparse3d.testing import dense_reference, random_scene

SOLVERS = ["qdldl", "superlu", "cholmod"]
pytestmark = pytest.mark.filterwarnings("ignore::sparse3d.UnconstrainedSourceWarning")


@pytest.fixture(params=SOLVERS)
def solver(request):
    if request.param not in available_solvers():
        pytest.skip(f"{request.param} not installed")
    return request.param


def _dense(S):
    D = dense_reference(S.data, S.row, S.col, S.imshape, S.imcorner)
    return D.reshape(-1, S.nsources).astype(np.float64)


def _reference(A, d, err=None, mask=None):
    """Weights, errors and chi2 of the weighted least-squares fit; NaN for empty columns."""
    npix, n = A.shape
    keep = np.ones(npix, bool) if mask is None else ~mask.ravel()
    sw = np.ones(npix) if err is None else 1.0 / np.ravel(err)
    cols = np.flatnonzero(np.abs(A[keep]).sum(axis=0) > 0)
    M = sw[keep, None] * A[keep][:, cols]
    w = np.full(n, np.nan)
    e = np.full(n, np.nan)
    w[cols] = np.linalg.lstsq(M, sw[keep] * np.ravel(d)[keep], rcond=None)[0]
    e[cols] = np.sqrt(np.diag(np.linalg.inv(M.T @ M)))
    r = (np.ravel(d) - A @ np.nan_to_num(w)) * sw
    return w, e, np.sum(r[keep] ** 2)


def _scene(seed, nsources=12, imcorner=(0, 0), dtype=np.float64):
    rng = np.random.default_rng(seed)
    sc = random_scene(rng, imshape=(15, 16), stamp=(4, 5), nsources=nsources, imcorner=imcorner, dtype=dtype)
    # keep the system well posed: a positive bump on every stamp
    data = np.abs(np.asarray(sc.data, dtype=np.float64)) + 0.5
    S = Sparse3D(data.astype(dtype), sc.row, sc.col, sc.imshape, sc.imcorner)
    return rng, S


def _check(res, ref, rtol=1e-8):
    w, e, chi2 = ref
    np.testing.assert_array_equal(np.isnan(res.weights), np.isnan(w))
    np.testing.assert_allclose(res.weights, w, rtol=rtol, atol=rtol * np.nanmax(np.abs(w)))
    np.testing.assert_allclose(res.weights_err, e, rtol=rtol)
    np.testing.assert_allclose(res.chi2, chi2, rtol=1e-7)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("imcorner", [(0, 0), (5, -9)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sparse3d_fit_matches_dense(seed, imcorner, dtype, solver):
    rng, S = _scene(seed, imcorner=imcorner, dtype=dtype)
    A = _dense(S)
    d = (A @ rng.uniform(1, 5, S.nsources) + rng.normal(0, 0.1, A.shape[0])).reshape(S.imshape)
    err = rng.uniform(0.5, 2.0, S.imshape)
    mask = rng.random(S.imshape) < 0.1
    res = fit_design(S, d, imshape=S.imshape, errors=err, mask=mask, solver=solver)
    _check(res, _reference(A, d, err, mask))
    assert np.allclose(S.fit(d, errors=err, mask=mask).weights, res.weights, equal_nan=True)


@pytest.mark.parametrize("n", [0, 1])
def test_zero_and_one_source(n, solver):
    R, C = np.mgrid[:3, :3]
    S = Sparse3D(
        np.full((3, 3, n), 2.0), R[:, :, None] + np.arange(n) + 1, C[:, :, None] + np.arange(n), (6, 6)
    )
    d = np.arange(36.0).reshape(6, 6)
    res = S.fit(d)
    assert res.weights.shape == (n,)
    if n:
        _check(res, _reference(_dense(S), d))


@pytest.mark.parametrize("scale", [1e-160, 1e160])
def test_extreme_error_scales(scale, solver):
    rng, S = _scene(7)
    A = _dense(S)
    d = (A @ rng.uniform(1, 5, S.nsources) + rng.normal(0, 0.1, A.shape[0])).reshape(S.imshape)
    err = rng.uniform(0.5, 2.0, S.imshape)
    w, e, chi2 = _reference(A, d, err)
    with np.errstate(over="ignore"):  # chi2 ~ 1e320 at 1e-160 is a true overflow
        res = fit_design(S, d, imshape=S.imshape, errors=err * scale, solver=solver)
    # same weights; errors and chi2 scale with the errors' unit (chi2 exactly representable here)
    np.testing.assert_allclose(res.weights, w, rtol=1e-8)
    np.testing.assert_allclose(res.weights_err, e * scale, rtol=1e-8)
    assert np.all(np.isfinite(res.weights_err) == np.isfinite(e))  # NaN only where unconstrained
    if scale > 1:  # chi2 ~ 1e-320 is subnormal: two significant digits only
        np.testing.assert_allclose(res.chi2, chi2 / scale / scale, rtol=2e-2, atol=0)
    # the data in the same extreme unit: the weights scale, chi2 does not
    res2 = fit_design(S, d * scale, imshape=S.imshape, errors=err * scale, solver=solver)
    np.testing.assert_allclose(res2.weights, w * scale, rtol=1e-8)
    np.testing.assert_allclose(res2.chi2, chi2, rtol=1e-7)


@pytest.mark.parametrize("tiny", [1e-150, 1e-300, 1e150])
def test_source_with_tiny_or_huge_stamp(tiny, solver):
    rng, S = _scene(8)
    A = _dense(S)
    d = (A @ rng.uniform(1, 5, S.nsources) + rng.normal(0, 0.1, A.shape[0])).reshape(S.imshape)
    w, e, chi2 = _reference(A, d)
    values = np.array(S.data)
    values[..., 4] *= tiny
    St = Sparse3D(values, S.row, S.col, S.imshape)
    for design in (St, St.tocsr()):
        res = fit_design(design, d, imshape=S.imshape, solver=solver)  # no false singularity
        expect_w, expect_e = w.copy(), e.copy()
        expect_w[4] /= tiny
        expect_e[4] /= tiny
        np.testing.assert_allclose(res.weights, expect_w, rtol=1e-8)
        np.testing.assert_allclose(res.weights_err, expect_e, rtol=1e-8)
        np.testing.assert_allclose(res.chi2, chi2, rtol=1e-7)


def test_scaled_singularity_still_detected(solver):
    _, S = _scene(9, nsources=5)
    values = np.array(S.data)
    row, col = np.array(S.row), np.array(S.col)
    row[..., 3], col[..., 3] = row[..., 1], col[..., 1]
    values[..., 3] = values[..., 1] * 1e-200  # source 3 = 1e-200 x source 1: dependent
    St = Sparse3D(values, row, col, S.imshape)
    with pytest.raises(SingularNormalMatrixError) as info:
        St.fit(np.ones(S.imshape), errors=np.full(S.imshape, 1e-160))
    assert set(info.value.sources.tolist()) & {1, 3}


@pytest.mark.parametrize("errors", ["none", "shared", "per-frame"])
def test_zero_frames(errors, solver):
    _, S = _scene(3)
    H, W = S.imshape
    err = {"none": None, "shared": np.ones((H, W)), "per-frame": np.ones((H, W, 0))}[errors]
    res = fit_design(S, np.zeros((H, W, 0)), imshape=S.imshape, errors=err, solver=solver)
    assert res.weights.shape == (S.nsources, 0)
    assert res.chi2.shape == (0,)
    assert res.model.shape == (H, W, 0)
    assert res.weights_err.shape in ((S.nsources,), (S.nsources, 0))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"data": np.ones((15, 16)) + 1j},
        {"errors": np.ones((15, 16), complex)},
        {"prior_sigma": 1 + 0j},
        {"prior_mu": np.ones(12) * 1j, "prior_sigma": 1.0},
    ],
)
def test_complex_inputs_refused(kwargs):
    _, S = _scene(2)
    kw = {"data": np.ones(S.imshape), **kwargs}
    with pytest.raises(TypeError, match="must be real"):
        fit_design(S, kw.pop("data"), imshape=S.imshape, **kw)
    with pytest.raises(TypeError, match="A must be real"):
        fit_design(S.tocsr() * 1j, np.ones(S.imshape), imshape=S.imshape)


@pytest.mark.parametrize("noise", [0.0, 1e-6, 1.0])
def test_chi2_of_bright_scenes_and_perfect_fits(noise, solver):
    # chi2 from the normal equations cancels d^T C d ~ 1e16 against 2 x^T b: it must fall
    # back to the residuals when that loses digits, and agree with them otherwise
    rng, S = _scene(4)
    A = _dense(S)
    d = A @ rng.uniform(1e7, 1e8, S.nsources) + rng.normal(0, 1, A.shape[0]) * noise
    d = d.reshape(S.imshape)
    frames = np.stack([d, d * 0.5, d + rng.normal(0, 3, S.imshape)], axis=-1)
    res = fit_design(S, frames, imshape=S.imshape, solver=solver)
    for i in range(frames.shape[2]):
        chi2 = _reference(A, frames[..., i])[2]
        np.testing.assert_allclose(
            res.chi2[i], chi2, rtol=1e-6, atol=1e-9 * np.sum(frames[..., i] ** 2) ** 0.5
        )


@pytest.mark.parametrize("prior", [False, True])
def test_chi2_of_an_ill_conditioned_fit(prior, solver):
    # two sources whose stamps differ by 1e-4: the weights are ill determined (condition
    # ~1e8), the chi-square is not, and the normal-equation form must get it right
    rng, S = _scene(6, nsources=6)
    values, row, col = np.array(S.data), np.array(S.row), np.array(S.col)
    row[..., 5], col[..., 5] = row[..., 2], col[..., 2]
    values[..., 5] = values[..., 2] * (1 + 1e-4 * rng.normal(size=values[..., 2].shape))
    S2 = Sparse3D(values, row, col, S.imshape)
    A = _dense(S2)
    d = (A @ rng.uniform(1, 5, 6) + rng.normal(0, 0.1, A.shape[0])).reshape(S.imshape)
    frames = np.stack([d, 2 * d], axis=-1)
    kw = {"prior_mu": 1.0, "prior_sigma": 10.0} if prior else {}
    res = fit_design(S2, frames, imshape=S.imshape, solver=solver, **kw)
    for i in range(2):
        r = frames[..., i].ravel() - A @ np.nan_to_num(res.weights[:, i])
        np.testing.assert_allclose(res.chi2[i], np.sum(r**2), rtol=1e-6)  # at its own weights
        if not prior:
            np.testing.assert_allclose(res.chi2[i], _reference(A, frames[..., i])[2], rtol=1e-6)
