"""NormalEquations: Sparse3D designs, reuse of the symbolic analysis, solve_rhs -- against dense NumPy."""

import numpy as np
import pytest

from sparse3d import Sparse3D
from sparse3d.fit import fit_design, prepare_normal_equations
from sparse3d.testing import dense_reference


def _scene(rng, n=20, imshape=(24, 22), imcorner=(2, -3)):
    R, C = np.mgrid[:4, :4]
    r0 = rng.integers(imcorner[0] - 2, imcorner[0] + imshape[0] - 2, n)
    c0 = rng.integers(imcorner[1] - 2, imcorner[1] + imshape[1] - 2, n)
    return Sparse3D(
        rng.uniform(0.1, 1.0, (4, 4, n)), R[:, :, None] + r0, C[:, :, None] + c0, imshape, imcorner
    )


def _dense(S):
    return dense_reference(S.data, S.row, S.col, S.imshape, S.imcorner).reshape(-1, S.nsources)


def _dense_normal(S, errors, prior_sigma=None):
    A = _dense(S) / errors.reshape(-1, 1)
    N = A.T @ A
    if prior_sigma is not None:
        N += np.diag(1.0 / np.broadcast_to(prior_sigma, (S.nsources,)) ** 2)
    return N


@pytest.mark.parametrize("seed", range(3))
def test_sparse3d_design_matches_lstsq(seed, fit_path):
    rng = np.random.default_rng(seed)
    S = _scene(rng)
    errors = rng.uniform(0.5, 2.0, S.imshape)
    img = rng.normal(size=S.imshape)
    res = fit_design(S, img, imshape=S.imshape, errors=errors)
    A = _dense(S) / errors.reshape(-1, 1)
    w = np.linalg.lstsq(A, img.ravel() / errors.ravel(), rcond=None)[0]
    np.testing.assert_allclose(res.weights, w, rtol=1e-8, atol=1e-10 * np.abs(w).max())
    np.testing.assert_allclose(res.weights_err, np.sqrt(np.diag(np.linalg.inv(A.T @ A))), rtol=1e-8)


@pytest.mark.parametrize("units", [1.0, 1e-150, 1e150])
def test_solve_rhs_is_the_inverse_normal_matrix(units, fit_path):
    rng = np.random.default_rng(7)
    S = _scene(rng)
    errors = rng.uniform(0.5, 2.0, S.imshape) * units
    ne = prepare_normal_equations(S, imshape=S.imshape, errors=errors, prior_sigma=3.0 * np.ones(20) * units)
    N = _dense_normal(S, errors, 3.0 * units)
    b = rng.normal(size=(20, 3)) / units**2
    np.testing.assert_allclose(ne.solve_rhs(b), np.linalg.solve(N, b), rtol=1e-8)
    np.testing.assert_allclose(ne.solve_rhs(b[:, 0]), np.linalg.solve(N, b[:, 0]), rtol=1e-8)


def test_solve_rhs_with_unconstrained_sources():
    rng = np.random.default_rng(8)
    S = _scene(rng, n=6)
    R, C = np.mgrid[:4, :4]
    off = Sparse3D(np.ones((4, 4, 1)), R[:, :, None] + 500, C[:, :, None], S.imshape, S.imcorner)
    S2 = Sparse3D(
        np.concatenate([S.data, off.data], axis=2),
        np.concatenate([S.row, off.row], axis=2),
        np.concatenate([S.col, off.col], axis=2),
        S.imshape,
        S.imcorner,
    )
    ne = prepare_normal_equations(S2, imshape=S.imshape)
    N = _dense_normal(S, np.ones(S.imshape))
    b = rng.normal(size=7)
    x = ne.solve_rhs(b)
    assert np.isnan(x[6])
    np.testing.assert_array_equal(ne.solve_normal(b), np.where(np.isnan(x), 0.0, x))  # the same, 0-filled
    np.testing.assert_allclose(x[:6], np.linalg.solve(N, b[:6]), rtol=1e-9)
    np.testing.assert_allclose(ne.solve_rhs(b[:6]), np.linalg.solve(N, b[:6]), rtol=1e-9)


def test_reuse_refactorises_on_the_same_pattern(fit_path):
    rng = np.random.default_rng(9)
    S = _scene(rng)
    e1 = rng.uniform(0.5, 2.0, S.imshape)
    ne1 = prepare_normal_equations(S, imshape=S.imshape, errors=e1, reuse=True)
    assert not ne1.factor.reused_symbolic
    # the same stamps, other values and errors: the same pattern, a different matrix
    S2 = Sparse3D(S.data * rng.uniform(0.5, 2.0, S.data.shape), S.row, S.col, S.imshape, S.imcorner)
    e2 = rng.uniform(0.5, 2.0, S.imshape)
    ne2 = prepare_normal_equations(S2, imshape=S.imshape, errors=e2, reuse=ne1)
    assert ne2.factor.reused_symbolic
    b = rng.normal(size=20)
    np.testing.assert_allclose(ne2.solve_rhs(b), np.linalg.solve(_dense_normal(S2, e2), b), rtol=1e-8)
    np.testing.assert_allclose(ne1.solve_rhs(b), np.linalg.solve(_dense_normal(S, e1), b), rtol=1e-8)
    N2 = np.linalg.inv(_dense_normal(S2, e2))
    np.testing.assert_allclose(ne2.weights_err(), np.sqrt(np.diag(N2)), rtol=1e-8)
    # a different pattern (one source moved far): factorised afresh, still right
    row3 = S.row.copy()
    row3[:, :, 0] += 40
    S3 = Sparse3D(S.data, row3, S.col, S.imshape, S.imcorner)
    ne3 = prepare_normal_equations(S3, imshape=S.imshape, errors=e2, reuse=ne2)
    assert not ne3.factor.reused_symbolic
    x = ne3.solve_rhs(b)
    keep = ~np.isnan(x)
    N3 = _dense_normal(S3, e2)[np.ix_(keep, keep)]
    np.testing.assert_allclose(x[keep], np.linalg.solve(N3, b[keep]), rtol=1e-8)
