"""``NormalEquations.solve_normal``: ``N⁻¹ b`` for any right-hand side, against dense NumPy.

Used by iterative solvers on top of one factorisation (the distributed scene fit's
preconditioner); checked here with errors far from 1 and sources of very different scale, so
that the fit layer's internal scaling of ``N`` must be undone exactly.
"""

import numpy as np
import pytest
import scipy.sparse as sp

from sparse3d.fit import prepare_normal_equations


@pytest.mark.parametrize("err_unit", [1.0, 1e-90, 1e90])
@pytest.mark.parametrize("k", [None, 3])
def test_solve_normal_equals_dense_inverse(err_unit, k):
    rng = np.random.default_rng(0)
    H, W, n = 9, 8, 12
    A = sp.random(H * W, n, density=0.3, random_state=1, format="csr")
    A = sp.csr_matrix(A.multiply(np.logspace(-3, 3, n)[None, :]))  # columns of very different scale
    A[:, 5] = 0.0  # no data, no prior: unconstrained
    A.eliminate_zeros()
    errors = rng.uniform(0.5, 2.0, (H, W)) * err_unit
    mask = rng.uniform(size=(H, W)) < 0.1
    sigma = np.full(n, np.inf)
    sigma[[1, 2]] = [10.0, 0.1]  # priors on two sources (in the weights' units)
    ne = prepare_normal_equations(A, imshape=(H, W), errors=errors, mask=mask, prior_sigma=sigma)
    ivar = np.where(mask.ravel(), 0.0, 1.0 / errors.ravel() ** 2)
    P = np.where(np.isfinite(sigma), 1.0 / sigma**2, 0.0)
    Ad = A.toarray()
    N = Ad.T @ (ivar[:, None] * Ad) + np.diag(P)
    free = ne.free[:n]
    assert not free[5] and free.sum() == n - 1
    scale = np.diag(N) if k is None else np.diag(N)[:, None]
    b = rng.normal(size=(n,) if k is None else (n, k)) * scale
    x = ne.solve_normal(b)
    ref = np.zeros_like(b)
    ref[free] = np.linalg.solve(N[np.ix_(free, free)], b[free])
    np.testing.assert_allclose(x, ref, rtol=1e-8, atol=0)
    assert np.all(x[~free] == 0)
    # with b = Aᵀ C⁻¹ d it is the fit's own solve
    d = rng.normal(size=H * W)
    rhs = Ad.T @ (ivar * np.where(mask.ravel(), 0.0, d))
    np.testing.assert_allclose(ne.solve_normal(rhs)[free], ne.solve(d)[free], rtol=1e-10)
