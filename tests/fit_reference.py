"""Dense NumPy references for the fit tests: designs built pixel by pixel, stacked least squares.

Nothing here calls sparse3d's fit: the designs are filled with Python loops from the stamp
arrays, and the solutions come from ``np.linalg.lstsq`` of the stacked, weighted system and
``np.linalg.inv`` of its dense normal matrix.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sparse3d.testing import random_scene

# small scenes: stamps hanging over every edge, image corners, float32, 0 and 1 sources
SCENES = {
    "basic": dict(),
    "corner_neg": dict(imcorner=(-7, 4)),
    "corner_pos": dict(imcorner=(100, 250)),
    "float32": dict(dtype=np.float32),
    "one_source": dict(nsources=1),
    "zero_sources": dict(nsources=0),
}


def scene(name: str, seed: int = 0):
    """A random scene (see :func:`sparse3d.testing.random_scene`) with positive stamps."""
    kw = {"imshape": (13, 17), "stamp": (3, 4), "nsources": 6, **SCENES[name]}
    sc = random_scene(np.random.default_rng(seed), **kw)
    return dataclasses.replace(sc, data=(np.abs(sc.data) + 0.1).astype(sc.data.dtype))


def dense_design(sc) -> np.ndarray:
    """``(H * W, n)`` design of a scene, pixel by pixel (off-image stamp pixels dropped)."""
    H, W = sc.imshape
    r0, c0 = sc.imcorner
    nr, nc, n = sc.data.shape
    A = np.zeros((H * W, n))
    for k in range(n):
        for i in range(nr):
            for j in range(nc):
                r, c = sc.row[i, j, k] - r0, sc.col[i, j, k] - c0
                if 0 <= r < H and 0 <= c < W:
                    A[r * W + c, k] += float(sc.data[i, j, k])
    return A


def lstsq_fit(M, d, err=None, mask=None, prior_sigma=None, prior_mu=None):
    """Stacked weighted least squares of one image: ``(params, errors, chi2, cov, cols)``.

    ``M`` ``(npix, m)``; ``d``, ``err``, ``mask`` ``(npix,)``; priors ``(m,)`` with ``inf``
    for none. Columns without data and prior are dropped (NaN); ``cov`` is the inverse of
    the dense normal matrix over the kept columns ``cols``.
    """
    npix, m = M.shape
    keep = np.ones(npix, bool) if mask is None else ~np.asarray(mask, bool)
    sw = np.ones(npix) if err is None else 1.0 / np.asarray(err, float)
    sig = np.full(m, np.inf) if prior_sigma is None else np.asarray(prior_sigma, float)
    mu = np.zeros(m) if prior_mu is None else np.asarray(prior_mu, float)
    has_prior = np.isfinite(sig)
    cols = np.flatnonzero((np.abs(M[keep]).sum(axis=0) > 0) | has_prior)
    rows = [sw[keep, None] * M[keep][:, cols]]
    rhs = [sw[keep] * d[keep]]
    pc = cols[has_prior[cols]]
    if pc.size:
        P = np.zeros((pc.size, cols.size))
        P[np.arange(pc.size), np.searchsorted(cols, pc)] = 1.0 / sig[pc]
        rows.append(P)
        rhs.append(mu[pc] / sig[pc])
    X = np.vstack(rows)
    sol = np.linalg.lstsq(X, np.concatenate(rhs), rcond=None)[0] if cols.size else np.zeros(0)
    p = np.full(m, np.nan)
    p[cols] = sol
    cov = np.linalg.inv(X.T @ X) if cols.size else np.zeros((0, 0))
    e = np.full(m, np.nan)
    e[cols] = np.sqrt(np.diag(cov))
    r = (d - M @ np.nan_to_num(p)) * sw
    chi2 = float(np.sum(r[keep] ** 2))
    return p, e, chi2, cov, cols


def fit_options(rng, options: str, imshape, n: int) -> tuple[dict, dict]:
    """``(kw, ref)``: the fit keyword arguments of ``options`` ("plain", "errors", "mask" or
    "priors") on an ``imshape`` image of ``n`` sources, and their :func:`lstsq_fit` counterparts."""
    H, W = imshape
    kw, ref = {}, {}
    if options == "errors":
        err = rng.uniform(0.5, 1.5, size=(H, W))
        kw["errors"], ref["err"] = err, err.ravel()
    elif options == "mask":
        mask = rng.random((H, W)) < 0.2
        kw["mask"], ref["mask"] = mask, mask.ravel()
    elif options == "priors":
        kw["prior_mu"], kw["prior_sigma"] = np.ones(n), np.full(n, 0.5)
        ref["prior_mu"], ref["prior_sigma"] = np.ones(n), np.full(n, 0.5)
    return kw, ref


def close(a, b, rtol=1e-8):
    """NaN-aware allclose with an absolute floor relative to the largest value."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    scale = np.nanmax(np.abs(b)) if np.isfinite(b).any() else 1.0
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(scale, 1e-300), equal_nan=True)
