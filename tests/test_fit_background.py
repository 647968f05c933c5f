"""The background solved jointly with the fluxes, against dense ``np.linalg.lstsq`` of the same design.

The background columns are checked on their own against independent constructions
(monomials in raw pixel coordinates; SciPy's linear grid interpolator); the joint fits then
use those columns densely next to a design filled pixel by pixel (``fit_reference``).
"""

import warnings

import numpy as np
import pytest
import scipy.sparse
from fit_reference import SCENES, close, dense_design, lstsq_fit, scene
from scipy.interpolate import RegularGridInterpolator

from sparse3d import Sparse3D
from sparse3d.fit import (
    BackgroundModel,
    BilinearGrid,
    Polynomial,
    UnconstrainedSourceWarning,
    as_background,
    available_solvers,
    fit_design,
)

# scenes with stamps off the image leave sources without data: counted by the fit tests elsewhere
pytestmark = pytest.mark.filterwarnings("ignore::sparse3d.fit.UnconstrainedSourceWarning")


@pytest.fixture(params=["qdldl", "superlu", "cholmod"])
def solver(request):
    if request.param not in available_solvers():
        pytest.skip("needs cvxopt")
    return request.param


BACKGROUNDS = ["constant", "plane", ("poly", 2), ("grid", (5, 6)), BilinearGrid(tile=4)]


def _ids(b):
    return repr(b).replace(" ", "")


# ---- the columns ---------------------------------------------------------------------------
@pytest.mark.parametrize("order", [0, 1, 2, 3])
@pytest.mark.parametrize("imshape", [(13, 17), (1, 9), (6, 1), (1, 1)])
def test_polynomial_spans_the_monomials_of_pixel_coordinates(order, imshape):
    H, W = imshape
    B = Polynomial(order).columns(imshape)
    assert B.shape == (H * W, (order + 1) * (order + 2) // 2)
    assert len(Polynomial(order).labels(imshape)) == B.shape[1]
    R, C = np.mgrid[:H, :W]
    rng = np.random.default_rng(order)
    sky = sum(
        rng.normal() * (R.ravel() * 1.0) ** i * (C.ravel() * 1.0) ** j
        for i in range(order + 1)
        for j in range(order + 1 - i)
    )
    coef = np.linalg.lstsq(B.toarray(), sky, rcond=None)[0]
    np.testing.assert_allclose(B.toarray() @ coef, sky, rtol=1e-9, atol=1e-9 * np.abs(sky).max())
    np.testing.assert_array_equal(B.toarray()[:, 0], 1.0)  # the constant term first


@pytest.mark.parametrize("tile", [(5, 6), (4, 4), (1, 1), (13, 17), (40, 3), 7])
@pytest.mark.parametrize("imshape", [(13, 17), (1, 5), (8, 1)])
def test_bilinear_grid_is_linear_interpolation_between_nodes(tile, imshape):
    model = BilinearGrid(tile=tile)
    th, tw = (tile, tile) if np.ndim(tile) == 0 else tile
    H, W = imshape
    B = model.columns(imshape)
    nr, nc = -(-(H - 1) // th) + 1, -(-(W - 1) // tw) + 1
    assert B.shape == (H * W, nr * nc) and len(model.labels(imshape)) == nr * nc
    assert B.getnnz(axis=1).max() <= 4
    np.testing.assert_allclose(np.asarray(B.sum(axis=1)).ravel(), 1.0)  # partition of unity
    rng = np.random.default_rng(1)
    nodes = rng.normal(size=(nr, nc))
    rr, cc = np.arange(nr) * th, np.arange(nc) * tw
    R, C = np.mgrid[:H, :W]
    if nr > 1 and nc > 1:
        ref = RegularGridInterpolator((rr, cc), nodes)(np.stack([R.ravel(), C.ravel()], axis=1))
    else:  # a single node row/column: interpolate along the other axis only
        ref = (
            np.array(
                [
                    np.interp(c, cc, nodes[0]) if nr == 1 else np.interp(r, rr, nodes[:, 0])
                    for r, c in zip(R.ravel(), C.ravel(), strict=True)
                ]
            )
            if nr * nc > 1
            else np.full(H * W, nodes[0, 0])
        )
    np.testing.assert_allclose(B @ nodes.ravel(), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "spec, expected",
    [
        (None, None),
        ("constant", Polynomial(0)),
        ("plane", Polynomial(1)),
        (("poly", 3), Polynomial(3)),
        (("grid", (8, 9)), BilinearGrid((8, 9))),
    ],
)
def test_as_background(spec, expected):
    got = as_background(spec)
    assert repr(got) == repr(expected)
    model = Polynomial(2)
    assert as_background(model) is model
    assert isinstance(model, BackgroundModel)


# ---- joint fits ----------------------------------------------------------------------------
def _joint_reference(A, Bd, d, err, mask, prior_sigma=None, prior_mu=None, bprior=None):
    M = np.hstack([A, Bd])
    n, nb = A.shape[1], Bd.shape[1]
    sig = np.full(n + nb, np.inf)
    mu = np.zeros(n + nb)
    if prior_sigma is not None:
        sig[:n] = prior_sigma
        mu[:n] = 0.0 if prior_mu is None else prior_mu
    if bprior is not None:
        sig[n:], mu[n:] = bprior
    return lstsq_fit(
        M, d.ravel(), None if err is None else err.ravel(), None if mask is None else mask.ravel(), sig, mu
    )


@pytest.mark.parametrize("name", sorted(SCENES))
@pytest.mark.parametrize("background", BACKGROUNDS, ids=_ids)
def test_joint_fit_matches_dense_lstsq(name, background, solver):
    sc = scene(name)
    A = dense_design(sc)
    H, W = sc.imshape
    rng = np.random.default_rng(7)
    Bd = as_background(background).columns((H, W)).toarray()
    truth = rng.uniform(1, 10, A.shape[1])
    err = rng.uniform(0.5, 2.0, (H, W))
    mask = rng.random((H, W)) < 0.15
    d = (A @ truth + Bd @ rng.normal(5, 1, Bd.shape[1])).reshape(H, W) + rng.normal(size=(H, W)) * err
    d[mask] = np.nan  # masked pixels may hold anything
    p, e, chi2, _, _ = _joint_reference(A, Bd, np.nan_to_num(d), err, mask)
    S = Sparse3D(sc.data, sc.row, sc.col, sc.imshape, imcorner=sc.imcorner)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnconstrainedSourceWarning)
        res = fit_design(
            S.tocsc(), d, imshape=(H, W), errors=err, mask=mask, background=background, solver=solver
        )
        via_S = S.fit(d, errors=err, mask=mask, background=background)
    n = A.shape[1]
    close(res.weights, p[:n])
    close(res.background, p[n:])
    close(res.weights_err, e[:n])
    close(res.background_err, e[n:])
    np.testing.assert_allclose(res.chi2, chi2, rtol=1e-8)
    sky = (Bd @ np.nan_to_num(p[n:])).reshape(H, W)
    np.testing.assert_allclose(res.background_image, sky, rtol=1e-8, atol=1e-8 * np.abs(sky).max())
    model = (A @ np.nan_to_num(p[:n])).reshape(H, W) + sky
    np.testing.assert_allclose(res.model, model, rtol=1e-8, atol=1e-8 * np.abs(model).max())
    close(via_S.weights, p[:n])
    close(via_S.background, p[n:])
    assert res.background_labels == as_background(background).labels((H, W))


@pytest.mark.parametrize("background", BACKGROUNDS, ids=_ids)
def test_stack_gets_one_background_per_frame_with_one_factorisation(background, solver):
    sc = scene("basic", seed=3)
    A = dense_design(sc)
    H, W = sc.imshape
    k = 4
    rng = np.random.default_rng(11)
    Bd = as_background(background).columns((H, W)).toarray()
    err = rng.uniform(0.5, 2.0, (H, W))
    mask = rng.random((H, W)) < 0.1
    D = np.stack(
        [
            (A @ rng.uniform(1, 10, A.shape[1]) + Bd @ rng.normal(3, 1, Bd.shape[1])).reshape(H, W)
            + rng.normal(size=(H, W)) * err
            for _ in range(k)
        ],
        axis=-1,
    )
    res = fit_design(
        scipy.sparse.csr_matrix(A),
        D,
        imshape=(H, W),
        errors=err,
        mask=mask,
        background=background,
        solver=solver,
    )
    assert res.n_factorizations == 1
    n, nb = A.shape[1], Bd.shape[1]
    assert res.weights.shape == (n, k) and res.background.shape == (nb, k)
    assert res.background_image.shape == (H, W, k) and res.model.shape == (H, W, k)
    for f in range(k):
        p, e, chi2, _, _ = _joint_reference(A, Bd, D[:, :, f], err, mask)
        close(res.weights[:, f], p[:n])
        close(res.background[:, f], p[n:])
        close(res.weights_err, e[:n])  # one normal matrix: one error vector
        close(res.background_err, e[n:])
        np.testing.assert_allclose(res.chi2[f], chi2, rtol=1e-8)


def test_stack_with_per_frame_errors_and_background(solver):
    sc = scene("corner_neg", seed=4)
    A = dense_design(sc)
    H, W = sc.imshape
    k = 3
    rng = np.random.default_rng(5)
    Bd = Polynomial(1).columns((H, W)).toarray()
    E = rng.uniform(0.5, 2.0, (H, W, k))
    E[:, :, 2] = E[:, :, 0]  # frames 0 and 2 share a map
    D = rng.normal(10, 1, (H, W, k))
    res = fit_design(
        scipy.sparse.csr_matrix(A), D, imshape=(H, W), errors=E, background="plane", solver=solver
    )
    assert res.n_factorizations == 2
    n = A.shape[1]
    assert res.weights_err.shape == (n, k) and res.background_err.shape == (3, k)
    for f in range(k):
        p, e, chi2, _, _ = _joint_reference(A, Bd, D[:, :, f], E[:, :, f], None)
        close(res.weights[:, f], p[:n])
        close(res.background[:, f], p[n:])
        close(res.weights_err[:, f], e[:n])
        close(res.background_err[:, f], e[n:])
        np.testing.assert_allclose(res.chi2[f], chi2, rtol=1e-8)


def test_source_priors_do_not_reach_the_background(solver):
    sc = scene("basic", seed=8)
    A = dense_design(sc)
    H, W = sc.imshape
    rng = np.random.default_rng(2)
    d = rng.normal(20, 3, (H, W))
    Bd = Polynomial(2).columns((H, W)).toarray()
    mu = rng.uniform(0, 5, A.shape[1])
    res = fit_design(
        scipy.sparse.csr_matrix(A),
        d,
        imshape=(H, W),
        prior_mu=mu,
        prior_sigma=0.7,
        background=("poly", 2),
        solver=solver,
    )
    p, e, _, _, _ = _joint_reference(A, Bd, d, None, None, prior_sigma=0.7, prior_mu=mu)
    n = A.shape[1]
    close(res.weights, p[:n])
    close(res.background, p[n:])
    close(np.concatenate([res.weights_err, res.background_err]), e)


def test_background_prior_when_asked(solver):
    sc = scene("basic", seed=9)
    A = dense_design(sc)
    H, W = sc.imshape
    rng = np.random.default_rng(3)
    d = rng.normal(20, 3, (H, W))
    Bd = Polynomial(1).columns((H, W)).toarray()
    bsig, bmu = np.array([np.inf, 0.5, 0.5]), np.array([0.0, 1.0, -1.0])
    model = Polynomial(1, prior_sigma=bsig, prior_mu=bmu)
    res = fit_design(scipy.sparse.csr_matrix(A), d, imshape=(H, W), background=model, solver=solver)
    p, e, _, _, _ = _joint_reference(A, Bd, d, None, None, bprior=(bsig, bmu))
    n = A.shape[1]
    close(res.background, p[n:])
    close(res.background_err, e[n:])
    close(res.weights, p[:n])


def test_grid_node_without_data_is_nan_unless_it_has_a_prior(solver):
    H, W = 12, 12
    A = scipy.sparse.csr_matrix((H * W, 0))
    mask = np.zeros((H, W), bool)
    mask[:, 8:] = True  # the last node column (col 8 .. 11 with tile 4 -> nodes at 0, 4, 8, 12)
    mask[:, 5:] = True
    d = np.full((H, W), 2.0)
    res = fit_design(A, d, imshape=(H, W), mask=mask, background=BilinearGrid(4), solver=solver)
    nodes = res.background.reshape(4, 4)
    assert np.isnan(nodes[:, 3]).all() and np.isfinite(nodes[:, :2]).all()
    with_prior = fit_design(
        A,
        d,
        imshape=(H, W),
        mask=mask,
        solver=solver,
        background=BilinearGrid(4, prior_sigma=10.0, prior_mu=2.0),
    )
    assert np.isfinite(with_prior.background).all()
    np.testing.assert_allclose(with_prior.background_image, 2.0, rtol=1e-9)


def test_zero_sources_fit_only_the_background(solver):
    H, W = 9, 11
    A = scipy.sparse.csr_matrix((H * W, 0))
    R, C = np.mgrid[:H, :W]
    sky = 3.0 + 0.5 * R - 0.25 * C
    res = fit_design(A, sky, imshape=(H, W), background="plane", solver=solver)
    assert res.weights.shape == (0,)
    np.testing.assert_allclose(res.background_image, sky, rtol=1e-10)
    np.testing.assert_allclose(res.model, sky, rtol=1e-10)
    assert res.chi2 < 1e-18


def test_float32_and_integer_data_with_background(solver):
    sc = scene("float32", seed=2)
    A = dense_design(sc)
    H, W = sc.imshape
    d = np.random.default_rng(0).integers(0, 50, (H, W))
    res_i = fit_design(scipy.sparse.csr_matrix(A), d, imshape=(H, W), background="constant", solver=solver)
    res_f = fit_design(
        scipy.sparse.csr_matrix(A), d.astype(np.float32), imshape=(H, W), background="constant", solver=solver
    )
    p = _joint_reference(A, Polynomial(0).columns((H, W)).toarray(), d.astype(float), None, None)[0]
    close(res_i.background, p[-1:])
    close(res_f.weights, p[:-1])


def test_prepare_normal_equations_with_background_solves_weights_then_sky(solver):
    from sparse3d.fit import prepare_normal_equations

    sc = scene("basic", seed=5)
    A = dense_design(sc)
    H, W = sc.imshape
    rng = np.random.default_rng(6)
    err = rng.uniform(0.5, 2.0, (H, W))
    D = rng.normal(10, 2, (H * W, 3))
    ne = prepare_normal_equations(
        scipy.sparse.csr_matrix(A), imshape=(H, W), errors=err, background="plane", solver=solver
    )
    assert ne.n_params == A.shape[1] + 3
    got = ne.solve(D)
    Bd = Polynomial(1).columns((H, W)).toarray()
    for f in range(3):
        p = _joint_reference(A, Bd, D[:, f], err, None)[0]
        close(got[:, f], p)
        np.testing.assert_allclose(
            ne.chi2(D[:, f : f + 1], got[:, f : f + 1]),
            _joint_reference(A, Bd, D[:, f], err, None)[2],
            rtol=1e-9,
        )
