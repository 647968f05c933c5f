"""Masks and uncertainties the astronomer's way: masked arrays, NDData-like inputs, units,
``errors=inf``, data-quality bitmasks and per-frame masks.

Each form is checked against the plain call it stands for (explicit boolean mask, plain
error map) and that plain call against the dense least-squares reference.
"""

import types
import warnings

import numpy as np
import pytest
import scipy.sparse
from fit_reference import close, dense_design, lstsq_fit, scene

from sparse3d import Sparse3D
from sparse3d.fit import UnconstrainedSourceWarning, fit_design

astropy = pytest.importorskip("astropy")
import astropy.units as u  # noqa: E402
from astropy.nddata import (  # noqa: E402
    CCDData,
    InverseVariance,
    NDData,
    StdDevUncertainty,
    VarianceUncertainty,
)

pytestmark = pytest.mark.filterwarnings("ignore::sparse3d.fit.UnconstrainedSourceWarning")


@pytest.fixture
def problem():
    sc = scene("basic", seed=21)
    S = Sparse3D(sc.data, sc.row, sc.col, sc.imshape, imcorner=sc.imcorner)
    A = dense_design(sc)
    H, W = sc.imshape
    rng = np.random.default_rng(0)
    err = rng.uniform(0.5, 2.0, (H, W))
    d = (A @ rng.uniform(5, 10, A.shape[1])).reshape(H, W) + rng.normal(size=(H, W)) * err
    mask = rng.random((H, W)) < 0.2
    return S, A, d, err, mask


def _same(a, b):
    close(a.weights, b.weights, rtol=1e-12)
    close(a.weights_err, b.weights_err, rtol=1e-12)
    np.testing.assert_allclose(a.chi2, b.chi2, rtol=1e-12)
    assert np.array_equal(a.n_pixels, b.n_pixels)


def test_masked_array_mask_is_honoured(problem):
    S, A, d, err, mask = problem
    ref = S.fit(d, errors=err, mask=mask)
    p, e, chi2, _, _ = lstsq_fit(A, d.ravel(), err.ravel(), mask.ravel())
    close(ref.weights, p)
    close(ref.weights_err, e)
    dm = np.ma.MaskedArray(np.where(mask, 1e30, d), mask=mask)  # masked values would wreck the fit
    _same(S.fit(dm, errors=err), ref)
    assert not np.allclose(S.fit(dm.data, errors=err).weights, ref.weights, rtol=1e-3)


def test_masked_array_mask_combines_with_mask_argument(problem):
    S, A, d, err, mask = problem
    half = np.zeros_like(mask)
    half[: mask.shape[0] // 2] = mask[: mask.shape[0] // 2]
    dm = np.ma.MaskedArray(d, mask=mask & ~half)
    _same(S.fit(dm, errors=err, mask=half), S.fit(d, errors=err, mask=mask))
    # a masked error map masks too
    em = np.ma.MaskedArray(err, mask=mask)
    _same(S.fit(d, errors=em), S.fit(d, errors=err, mask=mask))


def test_errors_inf_means_masked(problem):
    S, A, d, err, mask = problem
    e_inf = np.where(mask, np.inf, err)
    _same(S.fit(d, errors=e_inf), S.fit(d, errors=err, mask=mask))


def test_integer_mask_of_zeros_and_ones_is_a_mask(problem):
    S, A, d, err, mask = problem
    _same(S.fit(d, errors=err, mask=mask.astype(np.uint8)), S.fit(d, errors=err, mask=mask))


def test_dq_bitmask_with_bad_bits(problem):
    S, A, d, err, mask = problem
    rng = np.random.default_rng(4)
    dq = rng.integers(0, 4, d.shape) * 4  # bits 2 and 3 only: harmless flags
    dq[mask] |= rng.choice([1, 2, 3], size=int(mask.sum()))  # bits 0/1: bad
    res = S.fit(d, errors=err, dq=dq, bad_bits=0b0011)
    _same(res, S.fit(d, errors=err, mask=mask))
    # a pixel flagged with a bit that is not bad stays in
    _same(S.fit(d, errors=err, dq=dq, bad_bits=0b10000), S.fit(d, errors=err))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(mask=np.full((13, 17), 3)), "look like a data-quality bitmask: pass it as dq="),
        (dict(dq=np.zeros((13, 17), int)), "dq requires bad_bits"),
        (dict(bad_bits=1), "bad_bits requires dq"),
        (dict(dq=np.zeros((13, 17)), bad_bits=1), "dq must be an integer"),
        (dict(dq=np.zeros((13, 17), int), bad_bits=0), "bad_bits must be a positive int"),
        (dict(dq=np.zeros((13, 17), int), bad_bits=1.5), "bad_bits must be a positive int"),
    ],
)
def test_dq_and_mask_refusals(problem, kwargs, match):
    S, A, d, err, mask = problem
    with pytest.raises(ValueError, match=match):
        S.fit(d, **kwargs)


# ---- NDData / CCDData and units ------------------------------------------------------------
@pytest.mark.parametrize("kind", ["std", "var", "ivar"])
def test_nddata_uncertainty_types(problem, kind):
    S, A, d, err, mask = problem
    unc = {
        "std": StdDevUncertainty(err),
        "var": VarianceUncertainty(err**2),
        "ivar": InverseVariance(1 / err**2),
    }[kind]
    nd = NDData(d, uncertainty=unc, mask=mask, unit="adu")
    res = S.fit(nd)
    ref = S.fit(d, errors=err, mask=mask)
    close(res.weights.to_value(u.adu), ref.weights, rtol=1e-12)
    close(res.weights_err.to_value(u.adu), ref.weights_err, rtol=1e-10)
    assert res.weights.unit == u.adu and res.unit == u.adu
    assert res.model.unit == u.adu and res.residuals.unit == u.adu
    np.testing.assert_allclose(res.chi2, ref.chi2, rtol=1e-10)


def test_ccddata_with_ivar_zero_masks_the_pixel(problem):
    S, A, d, err, mask = problem
    ivar = np.where(mask, 0.0, 1 / err**2)
    ccd = CCDData(d, uncertainty=InverseVariance(ivar), unit="electron")
    res = S.fit(ccd)
    ref = S.fit(d, errors=err, mask=mask)
    close(res.weights.value, ref.weights, rtol=1e-12)
    assert res.n_pixels == ref.n_pixels


def test_quantity_data_and_errors_units_agree_or_convert(problem):
    S, A, d, err, mask = problem
    ref = S.fit(d, errors=err, mask=mask)
    res = S.fit(d * u.Jy, errors=(err * 1000) * u.mJy, mask=mask)
    assert res.weights.unit == u.Jy
    close(res.weights.value, ref.weights, rtol=1e-12)
    close(res.weights_err.value, ref.weights_err, rtol=1e-12)
    plain = S.fit(d, errors=err, mask=mask)
    assert not hasattr(plain.weights, "unit")  # Quantities only when the input had units


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda d, e: dict(data=d * u.Jy, errors=e * u.s), "errors has unit s, which does not convert"),
        (lambda d, e: dict(data=d * u.Jy, errors=e), "data has unit Jy but errors is a plain array"),
        (lambda d, e: dict(data=d, errors=e * u.Jy), "errors has unit Jy but data has none"),
        (
            lambda d, e: dict(data=NDData(d, uncertainty=StdDevUncertainty(e), unit="adu"), errors=e),
            "errors given twice",
        ),
        (
            lambda d, e: dict(
                data=types.SimpleNamespace(
                    data=d,
                    mask=None,
                    unit=u.adu,
                    uncertainty=types.SimpleNamespace(array=e, uncertainty_type="std", unit=u.s),
                )
            ),
            "data.uncertainty has unit s",
        ),
        (
            lambda d, e: dict(
                data=types.SimpleNamespace(
                    data=d,
                    mask=None,
                    unit=None,
                    uncertainty=types.SimpleNamespace(array=e, uncertainty_type="mad"),
                )
            ),
            "uncertainty_type 'std', 'var' or 'ivar'",
        ),
    ],
)
def test_unit_and_uncertainty_refusals(problem, make, match):
    S, A, d, err, mask = problem
    with pytest.raises(ValueError, match=match):
        S.fit(**make(d, err))


def test_duck_typed_nddata_without_astropy_units(problem):
    S, A, d, err, mask = problem
    duck = types.SimpleNamespace(
        data=d, mask=mask, unit=None, uncertainty=types.SimpleNamespace(array=err, uncertainty_type="std")
    )
    res = S.fit(duck)
    _same(res, S.fit(d, errors=err, mask=mask))
    assert res.unit is None


def test_import_sparse3d_does_not_import_astropy():
    import subprocess
    import sys

    code = "import sys, numpy as np, sparse3d; print('astropy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- per-frame masks -----------------------------------------------------------------------
def test_per_frame_masks_one_factorisation_per_distinct_mask(problem):
    S, A, d, err, mask = problem
    H, W = d.shape
    rng = np.random.default_rng(9)
    k = 5
    D = d[:, :, None] + rng.normal(size=(H, W, k)) * err[:, :, None]
    M = rng.random((H, W, k)) < 0.15
    M[:, :, 3] = M[:, :, 1]  # frames 1 and 3 share a mask
    M[:, :, 4] = False
    res = S.fit(D, errors=err, mask=M, background="constant")
    assert res.n_factorizations == 4
    assert res.n_pixels.shape == (k,)
    Bd = np.ones((H * W, 1))
    n = A.shape[1]
    for f in range(k):
        p, e, chi2, _, _ = lstsq_fit(np.hstack([A, Bd]), D[:, :, f].ravel(), err.ravel(), M[:, :, f].ravel())
        close(res.weights[:, f], p[:n])
        close(res.weights_err[:, f], e[:n])
        close(res.background[:, f], p[n:])
        np.testing.assert_allclose(res.chi2[f], chi2, rtol=1e-9)
        assert res.n_pixels[f] == (~M[:, :, f]).sum()
    # per-frame errors = inf masks are per-frame masks too
    E = np.where(M, np.inf, err[:, :, None])
    _same(S.fit(D, errors=E, background="constant"), res)


def test_shared_mask_with_per_frame_masked_array(problem):
    S, A, d, err, mask = problem
    H, W = d.shape
    k = 3
    D = np.repeat(d[:, :, None], k, axis=2)
    M = np.zeros((H, W, k), bool)
    M[2, 3, 1] = True
    res = S.fit(np.ma.MaskedArray(D, mask=M), errors=err, mask=mask)
    for f in range(k):
        single = S.fit(D[:, :, f], errors=err, mask=mask | M[:, :, f])
        close(res.weights[:, f], single.weights, rtol=1e-12)


def test_saturation_masks_and_flags(problem):
    S, A, d, err, mask = problem
    level = np.quantile(d, 0.9)
    res = S.fit(d, errors=err, saturation=level)
    ref = S.fit(d, errors=err, mask=d >= level)
    _same(res, ref)


def test_roi_fit_reads_masked_arrays_and_refuses_background(problem):
    S, A, d, err, mask = problem
    roi = S.roi([(0, 0), (5, 6)], (6, 7))
    rng = np.random.default_rng(3)
    data = rng.normal(10, 1, (2, 6, 7))
    m = rng.random((2, 6, 7)) < 0.2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnconstrainedSourceWarning)
        a = roi.fit(np.ma.MaskedArray(data, mask=m))
        b = roi.fit(data, mask=m)
        c = roi.fit(data, errors=np.where(m, np.inf, 1.0))
    close(a.weights, b.weights, rtol=1e-12)
    close(c.weights, b.weights, rtol=1e-12)
    assert a.residuals.shape == (2, 6, 7)
    assert np.isnan(a.residuals[m]).all()
    with pytest.raises(NotImplementedError, match="ROISparse3D.fit does not support background"):
        roi.fit(data, background="constant")


def test_design_level_fit_accepts_the_same_forms(problem):
    S, A, d, err, mask = problem
    Asp = scipy.sparse.csr_matrix(A)
    a = fit_design(Asp, np.ma.MaskedArray(d, mask=mask), imshape=d.shape, errors=err)
    b = fit_design(Asp, d, imshape=d.shape, errors=err, mask=mask)
    _same(a, b)


def test_dask_fit_reads_errors_inf_as_masked_and_refuses_the_new_options(problem):
    da = pytest.importorskip("dask.array")
    S, A, d, err, mask = problem
    D = np.stack([d, 2 * d], axis=-1)
    lazy = S.fit(da.from_array(D, chunks=(13, 17, 1)), errors=np.where(mask, np.inf, err)).compute()
    eager = S.fit(D, errors=err, mask=mask)
    close(lazy.weights, eager.weights, rtol=1e-10)
    close(lazy.weights_err, eager.weights_err, rtol=1e-10)
    for kw in (dict(background="plane"), dict(dq=np.zeros(d.shape, int), bad_bits=1), dict(saturation=1.0)):
        with pytest.raises(NotImplementedError, match="on Dask frames does not support"):
            S.fit(da.from_array(D), **kw)
    masked = da.from_array(np.ma.MaskedArray(D, mask=np.zeros(D.shape, bool)), chunks=(13, 17, 1))
    with pytest.raises(NotImplementedError, match="masked Dask frames"):
        S.fit(masked)


def test_astropy_masked_quantity_mask_is_honoured(problem):
    from astropy.utils.masked import Masked

    S, A, d, err, mask = problem
    dm = Masked(np.where(mask, 1e30, d) * u.adu, mask=mask)
    res = S.fit(dm, errors=err * u.adu)
    ref = S.fit(d, errors=err, mask=mask)
    close(res.weights.value, ref.weights, rtol=1e-12)
    assert res.unit == u.adu


def test_duck_nddata_with_a_unit_string(problem):
    S, A, d, err, mask = problem
    duck = types.SimpleNamespace(
        data=d,
        mask=None,
        unit="adu",
        uncertainty=types.SimpleNamespace(array=err**2, uncertainty_type="var", unit="adu2"),
    )
    res = S.fit(duck)
    close(res.weights.to_value(u.adu), S.fit(d, errors=err).weights, rtol=1e-12)


# ---- the public validator: sparse3d.fit.check_inputs -----------------------------------------
def test_check_inputs_combines_every_mask_and_validates():
    from sparse3d.fit import FitInputs, check_inputs

    rng = np.random.default_rng(5)
    H, W, K = 6, 7, 3
    d = rng.normal(size=(H, W, K))
    m_arg = np.zeros((H, W), dtype=bool)
    m_arg[0, 0] = True
    m_data = np.zeros((H, W, K), dtype=bool)
    m_data[1, 2, 1] = True
    err = np.ones((H, W))
    err[2, 3] = np.inf
    dq = np.zeros((H, W, K), dtype=np.uint8)
    dq[4, 4, 2] = 0b10
    dq[5, 5, 0] = 0b01  # not a bad bit
    d[1, 2, 1] = np.nan  # masked by the data's own mask: allowed
    inp = check_inputs(np.ma.MaskedArray(d, m_data), err, m_arg, dq=dq, bad_bits=0b10, ndim=3)
    assert isinstance(inp, FitInputs) and inp.imshape == (H, W) and inp.unit is None
    want = m_data | m_arg[:, :, None] | np.isinf(err)[:, :, None] | ((dq & 0b10) != 0)
    assert inp.mask.dtype == bool and np.array_equal(inp.mask, want)
    assert inp.data.dtype == np.float64 and np.array_equal(inp.data[~want], d[~want])
    assert np.array_equal(inp.errors, err)
    # nothing masked: mask None; a 2-D image
    plain = check_inputs(d[:, :, 0])
    assert plain.mask is None and plain.errors is None and plain.data.shape == (H, W)
    # refusals
    bad = d[:, :, 0].copy()
    bad[3, 3] = np.inf
    with pytest.raises(ValueError, match="data contains non-finite values in unmasked pixels"):
        check_inputs(bad)
    e0 = np.ones((H, W))
    e0[1, 1] = 0.0
    with pytest.raises(ValueError, match="errors must be positive and finite in unmasked pixels"):
        check_inputs(d[:, :, 0], e0)
    e0[1, 1] = np.nan
    with pytest.raises(ValueError, match="errors must be positive and finite in unmasked pixels"):
        check_inputs(d[:, :, 0], e0)
    m0 = np.zeros((H, W), dtype=bool)
    m0[1, 1] = True
    check_inputs(d[:, :, 0], e0, m0)  # a NaN error on a masked pixel is fine
    with pytest.raises(ValueError, match="errors must have shape"):
        check_inputs(d, np.ones((H, W, 2)))
    with pytest.raises(ValueError, match="data must have shape"):
        check_inputs(np.ones(5))


def test_check_inputs_nddata_with_units():
    from sparse3d.fit import check_inputs

    rng = np.random.default_rng(6)
    d = rng.uniform(1, 2, (4, 5))
    ivar = rng.uniform(1, 4, (4, 5))
    ivar[0, 1] = 0.0  # no information: masked
    nd = NDData(d * u.electron, uncertainty=InverseVariance(ivar / u.electron**2), unit=u.electron)
    inp = check_inputs(nd)
    assert inp.unit == u.electron
    np.testing.assert_allclose(inp.errors[ivar > 0], 1 / np.sqrt(ivar[ivar > 0]))
    assert inp.mask is not None and np.array_equal(inp.mask, ivar == 0)
    with pytest.raises(ValueError, match="data has unit"):
        check_inputs(d * u.electron, np.ones((4, 5)))


def test_quantity_priors_are_converted_to_the_data_unit(problem):
    """Priors in another unit of the same kind: converted, not read as plain numbers (a prior in
    mJy next to data in Jy was taken 1000x too wide and off by 1000x)."""
    S, A, d, err, mask = problem
    n = A.shape[1]
    rng = np.random.default_rng(3)
    sig = rng.uniform(0.5, 3.0, n)
    mu = rng.uniform(4.0, 8.0, n)
    p, e, chi2, _, _ = lstsq_fit(A, d.ravel(), err.ravel(), mask.ravel(), prior_sigma=sig, prior_mu=mu)
    for ps, pm in [(sig * 1000 * u.mJy, mu * 1000 * u.mJy), (sig * u.Jy, mu), (sig, mu * u.Jy)]:
        res = S.fit(d * u.Jy, errors=err * u.Jy, mask=mask, prior_sigma=ps, prior_mu=pm)
        close(res.weights.to_value(u.Jy), p)
        close(res.weights_err.to_value(u.Jy), e)
        np.testing.assert_allclose(res.chi2, chi2, rtol=1e-9)
    # the same for a background model's prior (its coefficients are in the data's unit too)
    from sparse3d.fit import Polynomial

    B = np.ones((A.shape[0], 1))
    ps_all = np.concatenate([np.full(n, np.inf), [0.5]])
    mu_all = np.concatenate([np.zeros(n), [2.0]])
    p, e, _, _, _ = lstsq_fit(np.hstack([A, B]), d.ravel(), err.ravel(), mask.ravel(), ps_all, mu_all)
    bg = Polynomial(0, prior_sigma=500 * u.mJy, prior_mu=2000 * u.mJy)
    res = S.fit(d * u.Jy, errors=err * u.Jy, mask=mask, background=bg)
    close(res.weights.to_value(u.Jy), p[:n])
    close(res.background.to_value(u.Jy), p[n:])
    close(res.background_err.to_value(u.Jy), e[n:])


def test_quantity_priors_of_an_roi_fit_are_converted(problem):
    S, A, d, err, mask = problem
    roi = S.roi([(0, 0), (5, 6)], (5, 7))
    win = np.stack([d[0:5, 0:7], d[5:10, 6:13]])
    ref = roi.fit(win, prior_sigma=2.0, prior_mu=3.0)
    res = roi.fit(win * u.Jy, prior_sigma=2000 * u.mJy, prior_mu=3000 * u.mJy)
    close(res.weights.to_value(u.Jy), ref.weights, rtol=1e-12)
    with pytest.raises(ValueError, match="prior_sigma has unit mJy but the data has none"):
        roi.fit(win, prior_sigma=2000 * u.mJy)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(prior_sigma=1 * u.Jy), ValueError, "prior_sigma has unit Jy but the data has none"),
        (dict(prior_sigma=1.0, prior_mu=1 * u.Jy), ValueError, "prior_mu has unit Jy but the data has none"),
        (dict(dq=np.zeros((3, 3), int), bad_bits=1), ValueError, r"dq must have shape \(H, W\)"),
        (dict(errors=np.full((3, 3), np.inf)), ValueError, r"errors must have shape \(H, W\)"),
        (dict(errors=np.ones((3, 3), bool)), TypeError, "errors must hold real numbers"),
    ],
)
def test_refusals_name_the_argument(problem, kwargs, error, match):
    """Each of these named another argument (``mask``), was silently accepted (a Quantity prior
    next to plain data; boolean errors read as 1) or failed inside the fit."""
    S, A, d, err, mask = problem
    with pytest.raises(error, match=match):
        S.fit(d, **kwargs)


def test_prior_unit_mismatch_is_refused(problem):
    S, A, d, err, mask = problem
    with pytest.raises(ValueError, match="prior_sigma has unit m, which does not convert to the unit Jy"):
        S.fit(d * u.Jy, errors=err * u.Jy, prior_sigma=1 * u.m)


def test_nddata_mask_of_the_wrong_shape_is_named(problem):
    S, A, d, err, mask = problem
    nd = types.SimpleNamespace(data=d, mask=np.zeros((2, 2), bool), unit=None, uncertainty=None)
    with pytest.raises(ValueError, match=r"data.mask must have shape \(H, W\)"):
        S.fit(nd)
    # also beside a mask= of the right shape (each mask keeps the name of its own argument)
    with pytest.raises(ValueError, match=r"data.mask must have shape \(H, W\)"):
        S.fit(nd, mask=np.zeros(d.shape, bool))


def test_fit_without_qdldl_falls_back_to_superlu(problem, monkeypatch):
    """qdldl missing (a partial install): ``"auto"`` uses SciPy's SuperLU with the same answer
    as the dense reference; asking for ``"qdldl"`` names the package to install."""
    import sys

    from sparse3d.fit import available_solvers

    S, A, d, err, mask = problem
    monkeypatch.setitem(sys.modules, "qdldl", None)  # `import qdldl` raises ImportError
    assert "qdldl" not in available_solvers()
    sig = np.full(A.shape[1], 50.0)
    p, e, chi2, _, _ = lstsq_fit(A, d.ravel(), err.ravel(), mask.ravel(), prior_sigma=sig)
    res = fit_design(S, d, imshape=d.shape, errors=err, mask=mask, prior_sigma=50.0)
    assert res.solver == "superlu"
    close(res.weights, p)
    close(res.weights_err, e)
    np.testing.assert_allclose(res.chi2, chi2, rtol=1e-9)
    with pytest.raises(ValueError, match="needs the package qdldl"):
        fit_design(S, d, imshape=d.shape, solver="qdldl")
