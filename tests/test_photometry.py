"""Scene fits (sparse3d.photometry): positions and frame jitter against independent references.

The images are made by a dense NumPy reference (each star's Gaussian evaluated on its
stamp window and scattered with ``np.add.at``), not by the PSF layer; the uncertainties are
checked against a dense ``(J^T C^-1 J)^-1`` of the same linearisation.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from sparse3d.photometry import fit_jitter, fit_positions
from sparse3d.psf import Gaussian

STAMP = (11, 11)


def dense_image(row, col, flux, imshape, imcorner=(0, 0), sigma=1.0, stamp=STAMP, derivs=False):
    """Stars on their stamps (nearest pixel +- stamp // 2), summed densely; optionally d/drow, d/dcol."""
    H, W = imshape
    out = np.zeros((H, W))
    dR = np.zeros((H, W, len(row)))
    dC = np.zeros((H, W, len(row)))
    Lk = np.zeros((H, W, len(row)))
    for k, (r, c, f) in enumerate(zip(row, col, flux)):
        r0 = int(np.floor(r + 0.5)) - stamp[0] // 2
        c0 = int(np.floor(c + 0.5)) - stamp[1] // 2
        R, C = np.mgrid[r0 : r0 + stamp[0], c0 : c0 + stamp[1]]
        g = np.exp(-((R - r) ** 2 + (C - c) ** 2) / (2 * sigma**2)) / (2 * np.pi * sigma**2)
        ii, jj = R - imcorner[0], C - imcorner[1]
        ok = (ii >= 0) & (ii < H) & (jj >= 0) & (jj < W)
        np.add.at(out, (ii[ok], jj[ok]), f * g[ok])
        np.add.at(Lk[:, :, k], (ii[ok], jj[ok]), g[ok])
        np.add.at(dR[:, :, k], (ii[ok], jj[ok]), (g * (R - r) / sigma**2)[ok])
        np.add.at(dC[:, :, k], (ii[ok], jj[ok]), (g * (C - c) / sigma**2)[ok])
    return (out, Lk, dR, dC) if derivs else out


def scene(rng, n=12, imshape=(40, 48), margin=-2.0, min_sep=3.5, fmin=300.0, fmax=3e4):
    """Stars (some hanging over the edges when margin < 0), separated by at least min_sep."""
    H, W = imshape
    rows, cols = [], []
    while len(rows) < n:
        r, c = rng.uniform(margin, H - 1 - margin), rng.uniform(margin, W - 1 - margin)
        if all(np.hypot(r - a, c - b) >= min_sep for a, b in zip(rows, cols)):
            rows.append(r)
            cols.append(c)
    flux = 10 ** rng.uniform(np.log10(fmin), np.log10(fmax), n)
    return np.array(rows), np.array(cols), flux


@pytest.mark.parametrize("imcorner", [(0, 0), (5, -7)])
def test_positions_noiseless_recovered(imcorner):
    rng = np.random.default_rng(0)
    H, W = 40, 48
    r, c, f = scene(rng)
    r, c = r + imcorner[0], c + imcorner[1]
    img = dense_image(r, c, f, (H, W), imcorner)
    r0 = r + rng.uniform(-0.3, 0.3, r.size)
    c0 = c + rng.uniform(-0.3, 0.3, r.size)
    res = fit_positions(
        Gaussian(1.0), img, r0, c0, imcorner=imcorner, errors=np.full((H, W), 1e-4), tol=1e-9, rtol=0
    )
    assert res.converged and res.moved.all()
    np.testing.assert_allclose(res.row, r, atol=1e-6)
    np.testing.assert_allclose(res.col, c, atol=1e-6)
    np.testing.assert_allclose(res.flux, f, rtol=1e-6)
    assert res.chi2_history[-1] < 1e-6 * res.chi2_history[0]
    np.testing.assert_allclose(res.model, img, atol=1e-6 * f.max())


def test_positions_errors_match_dense_inverse():
    """flux_err / row_err / col_err are sqrt(diag((J^T C^-1 J)^-1)) of the final linearisation."""
    rng = np.random.default_rng(1)
    H, W = 30, 34
    r, c, f = scene(rng, n=6, imshape=(H, W), min_sep=2.0)  # some blends
    truth = dense_image(r, c, f, (H, W))
    err = np.sqrt(truth + 4.0)
    data = truth + rng.normal(size=(H, W)) * err
    res = fit_positions(
        Gaussian(1.0), data, r + 0.1, c - 0.1, errors=err, min_snr=0.0, max_iter=50, tol=1e-9, rtol=0
    )
    assert res.moved.all()
    _, Lk, dR, dC = dense_image(res.row, res.col, res.flux, (H, W), derivs=True)
    fz = res.flux
    J = np.concatenate([Lk, dR * fz, dC * fz], axis=2).reshape(H * W, -1)
    Jw = J / err.reshape(-1, 1)
    cov = np.linalg.inv(Jw.T @ Jw)
    sig = np.sqrt(np.diag(cov))
    n = r.size
    np.testing.assert_allclose(res.flux_err, sig[:n], rtol=1e-6)
    np.testing.assert_allclose(res.row_err, sig[n : 2 * n], rtol=1e-6)
    np.testing.assert_allclose(res.col_err, sig[2 * n :], rtol=1e-6)
    # and the fit is a stationary point: the gradient J^T C^-1 (d - model) vanishes
    model = dense_image(res.row, res.col, res.flux, (H, W))
    grad = Jw.T @ ((data - model) / err).ravel()
    assert np.all(np.abs(grad) * sig < 1e-5)


@pytest.mark.parametrize("max_iter", [1, 2, 30])
def test_positions_reported_state_is_consistent_with_chi2_and_errors(max_iter):
    """The reported fluxes, sky and positions are one state: ``chi2`` is the chi-square of
    ``model`` (densely recomputed) also in a fit stopped by ``max_iter``, and every error is
    sqrt(diag) of the dense ``(J^T C^-1 J)^-1`` at that state, sky columns included (stars over
    the edges, imcorner != 0, masked pixels, default tolerances). The fluxes used to be those of
    the last, error-only solve, whose position offsets are not applied: chi2 was 13-15 % off
    the model after one iteration, and the errors 1e-5 to 1e-4 off the dense ones."""
    from sparse3d.fit.background import as_background

    rng = np.random.default_rng(31)
    H, W, imc = 26, 24, (6, -4)
    r, c, f = scene(rng, n=7, imshape=(H, W), margin=-2.0, min_sep=2.5, fmin=500.0, fmax=5e3)
    r, c = r + imc[0], c + imc[1]
    B = as_background("plane").columns((H, W)).toarray()
    err = rng.uniform(0.5, 2.0, (H, W))
    mask = rng.random((H, W)) < 0.05
    data = dense_image(r, c, f, (H, W), imc) + (B @ [3.0, 1.0, -2.0]).reshape(H, W)
    data = data + rng.normal(size=(H, W)) * err
    start_r, start_c = r + rng.uniform(-0.3, 0.3, r.size), c + rng.uniform(-0.3, 0.3, r.size)
    res = fit_positions(
        Gaussian(1.0),
        data,
        start_r,
        start_c,
        errors=err,
        mask=mask,
        imcorner=imc,
        background="plane",
        max_iter=max_iter,
    )
    assert res.moved.sum() >= 4 and res.converged == (max_iter == 30)
    w = (~mask / err**2).ravel()
    _, Lk, dR, dC = dense_image(res.row, res.col, res.flux, (H, W), imc, derivs=True)
    n, mv = r.size, np.flatnonzero(res.moved)
    model = Lk.reshape(H * W, n) @ res.flux + B @ res.background
    np.testing.assert_allclose(res.model.ravel(), model, rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(res.chi2, np.sum(w * (data.ravel() - model) ** 2), rtol=1e-10)
    assert res.chi2 == res.chi2_history[-1]
    fm = res.flux[mv]
    dRf, dCf = ((d[:, :, mv] * fm).reshape(H * W, -1) for d in (dR, dC))
    J = np.column_stack([Lk.reshape(H * W, n), dRf, dCf, B])
    sig = np.sqrt(np.diag(np.linalg.inv(J.T @ (w[:, None] * J))))
    m = mv.size
    np.testing.assert_allclose(res.flux_err, sig[:n], rtol=1e-7)
    np.testing.assert_allclose(res.row_err[mv], sig[n : n + m], rtol=1e-7)
    np.testing.assert_allclose(res.col_err[mv], sig[n + m : n + 2 * m], rtol=1e-7)
    np.testing.assert_allclose(res.background_err, sig[n + 2 * m :], rtol=1e-7)


@pytest.mark.parametrize("seed", [16, 28])
def test_positions_not_moved_means_at_start_and_moved_means_an_error(seed):
    """In a crowded scene with faint stars, a star can move in an early stage and stop later
    (its S/N falls below min_snr, or it is held after walking at a brighter neighbour). It used
    to be reported ``moved=False`` with a NaN error at a position 0.28 px (seed 16) and 0.87 px
    (seed 28) from its start. Now ``moved`` False means the start position, and every moved
    star's errors are those of the dense inverse of the final linearisation."""
    rng = np.random.default_rng(seed)
    H, W = 40, 40
    r, c, f = scene(rng, n=25, imshape=(H, W), margin=-2.0, min_sep=1.5, fmin=20.0, fmax=3e4)
    data = dense_image(r, c, f, (H, W)) + rng.normal(size=(H, W)) * 3
    r0, c0 = r + rng.uniform(-0.3, 0.3, r.size), c + rng.uniform(-0.3, 0.3, r.size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = fit_positions(Gaussian(1.0), data, r0, c0, errors=np.full((H, W), 3.0))
    assert np.array_equal(res.row[~res.moved], r0[~res.moved])
    assert np.array_equal(res.col[~res.moved], c0[~res.moved])
    assert np.isfinite(res.row_err[res.moved]).all() and np.isnan(res.row_err[~res.moved]).all()
    n, mv = r.size, np.flatnonzero(res.moved)
    _, Lk, dR, dC = dense_image(res.row, res.col, res.flux, (H, W), derivs=True)
    fm = res.flux[mv]
    J = np.column_stack([Lk.reshape(H * W, n)] + [(d[:, :, mv] * fm).reshape(H * W, -1) for d in (dR, dC)])
    sig = np.sqrt(np.diag(np.linalg.inv(J.T @ J))) * 3.0
    np.testing.assert_allclose(res.flux_err, sig[:n], rtol=1e-6)
    np.testing.assert_allclose(res.row_err[mv], sig[n : n + mv.size], rtol=1e-6)
    np.testing.assert_allclose(res.col_err[mv], sig[n + mv.size :], rtol=1e-6)


def test_positions_pulls_on_noisy_scenes():
    rng = np.random.default_rng(2)
    H, W = 40, 48
    r, c, f = scene(rng, n=14, margin=3.0, min_sep=4.0, fmin=2e3, fmax=5e4)
    truth = dense_image(r, c, f, (H, W))
    err = np.sqrt(truth + 9.0)
    pulls, fpulls = [], []
    for _ in range(25):
        data = truth + rng.normal(size=(H, W)) * err
        r0 = r + rng.uniform(-0.3, 0.3, r.size)
        c0 = c + rng.uniform(-0.3, 0.3, r.size)
        res = fit_positions(Gaussian(1.0), data, r0, c0, errors=err)
        assert res.converged
        pulls += [(res.row - r) / res.row_err, (res.col - c) / res.col_err]
        fpulls.append((res.flux - f) / res.flux_err)
    pulls = np.concatenate(pulls)
    fpulls = np.concatenate(fpulls)
    assert 0.88 < np.std(pulls) < 1.12
    assert abs(np.mean(pulls)) < 0.1
    assert 0.88 < np.std(fpulls) < 1.12


def test_positions_mask_masked_array_and_inf_errors_agree():
    rng = np.random.default_rng(3)
    H, W = 36, 36
    r, c, f = scene(rng, n=8, imshape=(H, W), margin=2.0)
    truth = dense_image(r, c, f, (H, W))
    data = truth + rng.normal(size=(H, W))
    bad = np.zeros((H, W), dtype=bool)
    bad[int(r[0]), int(c[0])] = True  # a star's core
    bad[5:8, 20:30] = True
    data[bad] = np.nan
    psf = Gaussian(1.0)
    kw = dict(tol=1e-9, rtol=0, max_iter=40)
    a = fit_positions(psf, data, r + 0.2, c - 0.2, mask=bad, **kw)
    b = fit_positions(psf, np.ma.MaskedArray(data, mask=bad), r + 0.2, c - 0.2, **kw)
    errs = np.where(bad, np.inf, 1.0)
    d = fit_positions(psf, data, r + 0.2, c - 0.2, errors=errs, **kw)
    for other in (b, d):
        np.testing.assert_allclose(other.row, a.row, atol=1e-8)
        np.testing.assert_allclose(other.flux, a.flux, rtol=1e-8)
    assert a.n_pixels == H * W - bad.sum()
    # the masked core still gives a good position: the fit used the other pixels
    assert np.hypot(a.row[0] - r[0], a.col[0] - c[0]) < 0.05


def test_positions_dq_and_nddata_like_inputs_agree_with_a_plain_mask():
    """dq/bad_bits and an NDData-like container (mask, std uncertainty) stand for the explicit mask."""
    import types

    rng = np.random.default_rng(13)
    H, W = 30, 30
    r, c, f = scene(rng, n=6, imshape=(H, W), margin=2.0)
    err = np.full((H, W), 1.5)
    data = dense_image(r, c, f, (H, W)) + rng.normal(size=(H, W)) * err
    dq = np.zeros((H, W), dtype=np.uint16)
    dq[int(r[1]), int(c[1])] = 0b100  # bad
    dq[3:6, 10:20] = 0b001  # flagged with a bit that is not bad
    dq[20, 2:9] = 0b110  # bad
    bad = (dq & 0b100) != 0
    data[bad] = np.nan
    kw = dict(tol=1e-9, rtol=0, max_iter=40)
    ref = fit_positions(Gaussian(1.0), data, r + 0.2, c - 0.1, errors=err, mask=bad, **kw)
    a = fit_positions(Gaussian(1.0), data, r + 0.2, c - 0.1, errors=err, dq=dq, bad_bits=0b100, **kw)
    nd = types.SimpleNamespace(
        data=data, mask=bad, unit=None, uncertainty=types.SimpleNamespace(array=err, uncertainty_type="std")
    )
    b = fit_positions(Gaussian(1.0), nd, r + 0.2, c - 0.1, **kw)
    assert ref.n_pixels == H * W - bad.sum()
    for other in (a, b):
        assert other.n_pixels == ref.n_pixels
        np.testing.assert_allclose(other.row, ref.row, atol=1e-9)
        np.testing.assert_allclose(other.col, ref.col, atol=1e-9)
        np.testing.assert_allclose(other.flux, ref.flux, rtol=1e-9)
        np.testing.assert_allclose(other.flux_err, ref.flux_err, rtol=1e-9)


def test_jitter_dq_per_frame_agrees_with_a_plain_mask():
    rng = np.random.default_rng(14)
    H, W, K = 28, 28, 4
    r, c, f = scene(rng, n=5, imshape=(H, W), margin=2.0)
    shifts = rng.normal(0, 0.3, size=(K, 2))
    frames = jitter_frames(rng, r, c, f, shifts, (H, W))
    dq = np.zeros((H, W, K), dtype=np.int32)
    dq[8:11, :, 1] = 2  # a bad block in frame 1 only
    dq[:, 4, 3] = 8
    mask = (dq & 0b1010) != 0
    frames[mask] = np.nan
    err = np.full((H, W), 1e-3)
    ref = fit_jitter(Gaussian(1.0), frames, r, c, errors=err, mask=mask, tol=1e-10)
    res = fit_jitter(Gaussian(1.0), frames, r, c, errors=err, dq=dq, bad_bits=0b1010, tol=1e-10)
    np.testing.assert_allclose(ref.shifts, shifts, atol=1e-6)
    np.testing.assert_allclose(res.shifts, ref.shifts, atol=1e-12)
    np.testing.assert_allclose(res.flux, ref.flux, rtol=1e-10)


def test_gauss_newton_design_reuses_structure_and_matches_dense_columns():
    """[L, f dL/drow, f dL/dcol] (moving sources only) against the dense columns, with and
    without the previous design's structure (shared only when every stamp is where it was)."""
    from sparse3d.photometry._linearise import design_at, gauss_newton_design

    rng = np.random.default_rng(15)
    H, W = 20, 24
    r, c = rng.uniform(-2, 22, size=(2, 7))  # stamps hang over the edges
    f = rng.uniform(1, 100, 7)
    geom = ((H, W), (7, 7), (3, -2))

    def dense(rr, cc, moving):
        L, dR, dC = design_at(Gaussian(1.2), rr, cc, *geom, True)
        cols = [L.todense()] + [X.todense()[..., moving] * f[moving] for X in (dR, dC)]
        return (L, dR, dC), np.concatenate(cols, axis=2)

    moving = np.array([0, 3, 5])
    parts, ref = dense(r, c, moving)
    J = gauss_newton_design(*parts, f, moving)
    np.testing.assert_allclose(J.todense(), ref, rtol=1e-14, atol=1e-300)
    # a small move that keeps every stamp: the structure is shared, values are the new ones
    parts2, ref2 = dense(np.round(r) + (r - np.round(r)) * 0.5, np.round(c) + (c - np.round(c)) * 0.5, moving)
    J2 = gauss_newton_design(*parts2, f, moving, previous=J)
    assert J2._structure is J._structure
    np.testing.assert_allclose(J2.todense(), ref2, rtol=1e-14, atol=1e-300)
    # a stamp moved by a pixel, or another moving set: a new structure, still the right columns
    r3 = r.copy()
    r3[2] += 1.0
    parts3, ref3 = dense(r3, c, moving)
    J3 = gauss_newton_design(*parts3, f, moving, previous=J)
    assert J3._structure is not J._structure
    np.testing.assert_allclose(J3.todense(), ref3, rtol=1e-14, atol=1e-300)
    parts4, ref4 = dense(r, c, moving[:2])
    J4 = gauss_newton_design(*parts4, f, moving[:2], previous=J)
    np.testing.assert_allclose(J4.todense(), ref4, rtol=1e-14, atol=1e-300)


def test_positions_fix_prior_and_faint_sources():
    rng = np.random.default_rng(4)
    H, W = 40, 48
    r, c, f = scene(rng, n=10, margin=2.0)
    f[3] = 0.0  # no star there at all: its position must not be fitted
    img = dense_image(r, c, f, (H, W)) + rng.normal(size=(H, W))
    r0 = r + 0.25
    fix = np.zeros(r.size, dtype=bool)
    fix[0] = True
    res = fit_positions(
        Gaussian(1.0), img, r0, c, fix=fix, position_prior_sigma=np.r_[1.0, np.full(9, 1e-9)] * 1.0
    )
    assert res.row[0] == r0[0] and np.isnan(res.row_err[0]) and not res.moved[0]
    assert not res.moved[3] and res.row[3] == r0[3]
    # a tight prior holds the others at their start positions
    np.testing.assert_allclose(res.row[1:], r0[1:], atol=1e-6)
    free = fit_positions(Gaussian(1.0), img, r0, c, fix=fix)
    moved = free.moved
    assert np.all(np.abs(free.row[moved] - r[moved]) < 0.05)


def test_positions_no_sources_and_no_moving():
    img = np.random.default_rng(5).normal(size=(20, 20))
    res = fit_positions(Gaussian(1.0), img, np.zeros(0), np.zeros(0))
    assert res.flux.shape == (0,) and res.converged and res.n_iter == 0
    res = fit_positions(Gaussian(1.0), img, [10.0], [10.0], fix=np.array([True]))
    assert res.n_iter == 0 and np.isnan(res.row_err[0]) and np.isfinite(res.flux_err[0])


def test_positions_does_not_mutate_inputs():
    img = dense_image([10.2], [9.7], [1e3], (20, 20))
    r0, c0 = np.array([10.0]), np.array([10.0])
    res = fit_positions(Gaussian(1.0), img, r0, c0, errors=np.full((20, 20), 1e-3), tol=1e-9, rtol=0)
    assert r0[0] == 10.0 and c0[0] == 10.0
    assert abs(res.row[0] - 10.2) < 1e-6


# ---- jitter -------------------------------------------------------------------------------
def jitter_frames(rng, r, c, f, shifts, imshape, noise=None):
    K = len(shifts)
    frames = np.empty((*imshape, K))
    for t, (sr, sc) in enumerate(shifts):
        frames[:, :, t] = dense_image(r + sr, c + sc, f, imshape)
    if noise is not None:
        frames += rng.normal(size=frames.shape) * noise[:, :, None]
    return frames


def test_jitter_noiseless_recovered():
    rng = np.random.default_rng(6)
    H, W = 40, 44
    r, c, f = scene(rng, n=10, imshape=(H, W), margin=0.0, min_sep=2.5)
    shifts = rng.normal(0, 0.3, size=(7, 2))
    frames = jitter_frames(rng, r, c, f, shifts, (H, W))
    res = fit_jitter(Gaussian(1.0), frames, r, c, errors=np.full((H, W), 1e-3), tol=1e-10)
    assert res.converged
    np.testing.assert_allclose(res.shifts, shifts, atol=1e-6)
    np.testing.assert_allclose(res.flux, np.repeat(f[:, None], 7, axis=1), rtol=1e-6)
    assert res.n_factorizations <= res.n_iter + 1


def test_jitter_matches_rebuilt_model_and_pulls():
    """Light curves equal (to noise precision) a flux fit at the true shifts; shift pulls ~ 1."""
    rng = np.random.default_rng(7)
    H, W = 40, 44
    r, c, f = scene(rng, n=14, imshape=(H, W), margin=1.0, min_sep=3.0, fmin=1e3, fmax=3e4)
    K = 30
    shifts = rng.normal(0, 0.3, size=(K, 2))
    noise = np.full((H, W), 3.0)
    frames = jitter_frames(rng, r, c, f, shifts, (H, W), noise)
    psf = Gaussian(1.0)
    res = fit_jitter(psf, frames, r, c, errors=noise)
    assert res.converged
    ref = np.empty((r.size, K))
    for t in range(K):
        ref[:, t] = (
            psf.design(r + shifts[t, 0], c + shifts[t, 1], (H, W), stamp_shape=STAMP)
            .fit(frames[:, :, t], errors=noise)
            .weights
        )
    # the difference to the truth-shift fit is far below the flux noise
    assert np.std(res.flux - ref) < 0.2 * np.median(res.flux_err)
    pulls = (res.shifts - shifts) / res.shifts_err
    assert 0.7 < np.std(pulls) < 1.35
    np.testing.assert_allclose(np.std((res.flux - f[:, None]) / res.flux_err), 1.0, atol=0.1)


@pytest.mark.parametrize(
    "seed, margin, n, imshape",
    [(17, 0.0, 8, (26, 28)), (3, -2.0, 14, (40, 44)), (5, -3.0, 30, (40, 44))],
    ids=["blends", "edge", "edge-blends"],
)
def test_jitter_flux_errors_are_the_frames_own_marginal_errors(seed, margin, n, imshape):
    """flux_err against a dense ``(J^T C^-1 J)^-1`` of ``[fluxes, shift]`` per frame: the frame's
    own flux matrix (its shift: stars over an edge keep a different part of their PSF in each
    frame) and the shift's uncertainty (they were those at a known shift: 3-15 % small). The
    flux matrix at the mean pointing, used before, was 10 %, 57 % and 209 % off in these
    three scenes."""
    rng = np.random.default_rng(seed)
    H, W = imshape
    r, c, f = scene(rng, n=n, imshape=imshape, margin=margin, min_sep=1.5, fmin=300.0, fmax=3e3)
    shifts = rng.uniform(-0.4, 0.4, size=(6, 2))
    noise = np.full(imshape, 2.0)
    frames = jitter_frames(rng, r, c, f, shifts, imshape, noise)
    res = fit_jitter(Gaussian(1.0), frames, r, c, errors=noise, tol=1e-12, max_iter=50)
    assert res.converged

    def variances(shift, flux):
        _, Lk, dR, dC = dense_image(r + shift[0], c + shift[1], flux, imshape, derivs=True)
        L = Lk.reshape(H * W, n)
        J = np.column_stack([L, dR.reshape(H * W, n) @ flux, dC.reshape(H * W, n) @ flux])
        J = J / noise.reshape(-1, 1)
        return np.diag(np.linalg.inv(J.T @ J)), np.diag(np.linalg.inv(J[:, :n].T @ J[:, :n]))

    _, at_mean = variances(res.shifts.mean(axis=0), res.flux[:, 0])
    gap, mean_gap = [], []
    for t in range(len(shifts)):
        marginal, known_shift = variances(res.shifts[t], res.flux[:, t])
        np.testing.assert_allclose(res.flux_err[:, t], np.sqrt(marginal[:n]), rtol=1e-6)
        np.testing.assert_allclose(res.shifts_err[t], np.sqrt(marginal[n:]), rtol=1e-6)
        gap.append(np.max(np.sqrt(marginal[:n] / known_shift) - 1))
        mean_gap.append(np.max(np.abs(np.sqrt(at_mean / known_shift) - 1)))
    # each scene tells the exact errors apart from an approximation: without the shift term
    # (few blended stars: a poorly known shift), or at the mean pointing (stars over an edge)
    if margin < 0:
        assert max(mean_gap) > 0.2
    else:
        assert max(gap) > 0.02


def test_jitter_per_frame_mask_and_errors():
    rng = np.random.default_rng(8)
    H, W = 32, 32
    r, c, f = scene(rng, n=6, imshape=(H, W), margin=2.0)
    K = 5
    shifts = rng.normal(0, 0.3, size=(K, 2))
    frames = jitter_frames(rng, r, c, f, shifts, (H, W))
    mask = np.zeros((H, W, K), dtype=bool)
    mask[10:14, :, 2] = True  # a bad column block in frame 2 only
    frames[mask] = np.nan
    err = np.full((H, W, K), 1e-3)
    err[:, :, 4] = 2e-3  # one frame noisier
    res = fit_jitter(Gaussian(1.0), frames, r, c, errors=err, mask=mask, tol=1e-10)
    np.testing.assert_allclose(res.shifts, shifts, atol=1e-6)
    res2 = fit_jitter(Gaussian(1.0), np.ma.MaskedArray(frames, mask), r, c, errors=err, tol=1e-10)
    np.testing.assert_allclose(res2.shifts, res.shifts, atol=1e-9)


def _jitter_scene(rng, n, imshape, K, imc, margin, jitter):
    """``n`` stars (over the edges for ``margin < 0``) in ``K`` frames jittered by ``jitter`` px
    rms on an image with corner ``imc``, per-frame noise maps: ``(r, c, f, noise, frames)``."""
    H, W = imshape
    r, c, f = scene(rng, n=n, imshape=imshape, margin=margin, min_sep=3.0, fmin=500.0, fmax=5e3)
    r, c = r + imc[0], c + imc[1]
    shifts = rng.normal(0, jitter, size=(K, 2))
    noise = rng.uniform(1.0, 2.0, (H, W, K))
    frames = (
        np.stack([dense_image(r + s[0], c + s[1], f, imshape, imcorner=imc) for s in shifts], axis=2)
        + rng.normal(size=(H, W, K)) * noise
    )
    return r, c, f, noise, frames


@pytest.mark.parametrize("how", ["mask", "inf", "dq", "masked_array"])
def test_jitter_star_without_data_in_one_frame_has_no_flux_there(how):
    """A star whose stamp is wholly masked in one frame (any way of masking) has flux NaN there,
    not the 0 or so that conjugate gradients left in its all-zero column of N_t; every other
    flux and error is the dense solve of its frame at the fitted shift (imcorner != 0)."""
    rng = np.random.default_rng(21)
    H, W, K, imc = 30, 32, 5, (4, -6)
    r, c, f, noise, frames = _jitter_scene(rng, 7, (H, W), K, imc, margin=-1.0, jitter=0.3)
    k = int(np.argmin(np.hypot(r - imc[0] - H / 2, c - imc[1] - W / 2)))  # an inner star
    bad = np.zeros((H, W, K), dtype=bool)
    ir, ic = int(np.floor(r[k] + 0.5)) - imc[0], int(np.floor(c[k] + 0.5)) - imc[1]
    bad[ir - 6 : ir + 7, ic - 6 : ic + 7, 2] = True  # its whole stamp, frame 2 only
    kw = {
        "mask": dict(data=frames, errors=noise, mask=bad),
        "inf": dict(data=frames, errors=np.where(bad, np.inf, noise)),
        "dq": dict(data=frames, errors=noise, dq=np.where(bad, 4, 1), bad_bits=4),
        "masked_array": dict(data=np.ma.MaskedArray(frames, bad), errors=noise),
    }[how]
    res = fit_jitter(Gaussian(1.0), kw.pop("data"), r, c, imcorner=imc, tol=1e-10, **kw)
    assert res.converged
    assert np.isnan(res.flux[k, 2]) and np.isnan(res.flux_err[k, 2])
    for t in range(K):
        _, Lk, dR, dC = dense_image(r + res.shifts[t, 0], c + res.shifts[t, 1], f, (H, W), imc, derivs=True)
        wt = (~bad[:, :, t] / noise[:, :, t] ** 2).ravel()
        keep = np.flatnonzero((Lk.reshape(H * W, -1) ** 2).T @ wt > 0)
        L = Lk.reshape(H * W, -1)[:, keep]
        ft = res.flux[keep, t]
        J = np.column_stack([L, dR.reshape(H * W, -1)[:, keep] @ ft, dC.reshape(H * W, -1)[:, keep] @ ft])
        cov = np.linalg.inv(J.T @ (wt[:, None] * J))
        flux = np.linalg.solve(L.T @ (wt[:, None] * L), L.T @ (wt * frames[:, :, t].ravel()))
        assert np.isfinite(res.flux[keep, t]).all()
        assert np.isnan(np.delete(res.flux[:, t], keep)).all()
        np.testing.assert_allclose(res.flux[keep, t], flux, atol=1e-6 * np.sqrt(np.diag(cov)[:-2]).min())
        np.testing.assert_allclose(res.flux_err[keep, t], np.sqrt(np.diag(cov)[:-2]), rtol=1e-6)
        np.testing.assert_allclose(res.shifts_err[t], np.sqrt(np.diag(cov)[-2:]), rtol=1e-6)


@pytest.mark.parametrize("max_iter", [0, 1, 2])
def test_jitter_errors_of_a_fit_stopped_early_are_those_of_the_reported_state(max_iter):
    """Stopped by ``max_iter`` before converging, shifts_err and flux_err are still the dense
    ``(J^T C^-1 J)^-1`` of each frame at the reported shifts and fluxes (stars over the edges,
    imcorner != 0, per-frame errors). They were those of the state before the last step: here
    0.9 % (max_iter=0: no shift term, shifts_err NaN), 15 % and 0.7 % off; 19 %, 80 % and 15 %
    in another scene."""
    rng = np.random.default_rng(27)
    H, W, K, imc = 24, 26, 4, (-3, 5)
    r, c, f, noise, frames = _jitter_scene(rng, 6, (H, W), K, imc, margin=-1.5, jitter=0.4)
    res = fit_jitter(Gaussian(1.0), frames, r, c, imcorner=imc, errors=noise, max_iter=max_iter)
    assert not res.converged and res.n_iter == max_iter
    for t in range(K):
        ft = res.flux[:, t]
        _, Lk, dR, dC = dense_image(r + res.shifts[t, 0], c + res.shifts[t, 1], ft, (H, W), imc, derivs=True)
        J = np.column_stack([Lk.reshape(H * W, -1), dR.reshape(H * W, -1) @ ft, dC.reshape(H * W, -1) @ ft])
        J = J / noise[:, :, t].reshape(-1, 1)
        sig = np.sqrt(np.diag(np.linalg.inv(J.T @ J)))
        np.testing.assert_allclose(res.flux_err[:, t], sig[:-2], rtol=1e-6)
        np.testing.assert_allclose(res.shifts_err[t], sig[-2:], rtol=1e-6)
        resid = (frames[:, :, t].ravel() - Lk.reshape(H * W, -1) @ ft) / noise[:, :, t].ravel()
        np.testing.assert_allclose(res.chi2[t], np.sum(resid**2), rtol=1e-10)


def test_jitter_star_off_the_image_in_one_frame_has_no_flux_there():
    """A star over the edge whose stamp leaves the image at one frame's shift (its nearest pixel
    moves by one) has flux and error NaN in that frame only; its flux elsewhere and the other
    stars' are those of a dense least-squares fit of each frame at the fitted shift."""
    rng = np.random.default_rng(0)
    H, W, K = 20, 22, 4
    r, c, f = np.array([8.0, 12.3, -5.45]), np.array([6.0, 15.2, 10.0]), np.array([3e3, 2e3, 1e6])
    shifts = np.array([[-0.1, 0.05], [0.3, -0.1], [0.25, 0.1], [0.3, 0.0]])  # star 2 off in frame 0
    frames = np.stack([dense_image(r + s[0], c + s[1], f, (H, W)) for s in shifts], axis=2)
    frames += rng.normal(size=frames.shape)
    res = fit_jitter(Gaussian(1.0), frames, r, c, errors=np.ones((H, W)), shifts=shifts, tol=1e-10)
    assert res.converged and np.isnan(res.flux[2, 0]) and np.isnan(res.flux_err[2, 0])
    for t in range(K):
        _, Lk, _, _ = dense_image(r + res.shifts[t, 0], c + res.shifts[t, 1], f, (H, W), derivs=True)
        L = Lk.reshape(H * W, -1)
        keep = np.flatnonzero((L**2).sum(axis=0) > 0)
        assert keep.tolist() == ([0, 1] if t == 0 else [0, 1, 2])
        flux = np.linalg.lstsq(L[:, keep], frames[:, :, t].ravel(), rcond=None)[0]
        np.testing.assert_allclose(res.flux[keep, t], flux, rtol=1e-7)


def test_jitter_wholly_masked_frame_and_no_stars():
    """A frame masked whole (a bad frame) has no shift information: its shift, shift error and
    fluxes are NaN, and the other frames come out as fitted without it (they used to raise
    numpy's LinAlgError from the singular 2 x 2 shift precision, as did a fit without stars)."""
    rng = np.random.default_rng(23)
    H, W, K = 28, 30, 5
    r, c, f = scene(rng, n=6, imshape=(H, W), margin=-1.0, min_sep=3.0, fmin=500.0, fmax=5e3)
    shifts = rng.normal(0, 0.3, size=(K, 2))
    noise = np.full((H, W), 1.5)
    frames = jitter_frames(rng, r, c, f, shifts, (H, W), noise)
    bad = np.zeros((H, W, K), dtype=bool)
    bad[:, :, 3] = True
    res = fit_jitter(Gaussian(1.0), frames, r, c, errors=noise, mask=bad, tol=1e-10)
    keep = [0, 1, 2, 4]
    ref = fit_jitter(Gaussian(1.0), frames[:, :, keep], r, c, errors=noise, tol=1e-10)
    assert res.converged and np.isnan(res.shifts[3]).all() and np.isnan(res.shifts_err[3]).all()
    assert np.isnan(res.flux[:, 3]).all() and np.isnan(res.flux_err[:, 3]).all() and res.chi2[3] == 0
    np.testing.assert_allclose(res.shifts[keep], ref.shifts, atol=1e-9)
    np.testing.assert_allclose(res.shifts_err[keep], ref.shifts_err, rtol=1e-8)
    np.testing.assert_allclose(res.flux[:, keep], ref.flux, rtol=1e-8)
    np.testing.assert_allclose(res.flux_err[:, keep], ref.flux_err, rtol=1e-8)
    assert np.all(np.abs(ref.shifts - shifts[keep]) < 5 * ref.shifts_err)
    none = fit_jitter(Gaussian(1.0), frames, np.zeros(0), np.zeros(0), errors=noise)
    assert none.flux.shape == (0, K) and np.isnan(none.shifts).all() and np.isnan(none.shifts_err).all()
    np.testing.assert_allclose(none.chi2, ((frames / noise[:, :, None]) ** 2).sum(axis=(0, 1)))


@pytest.mark.parametrize("background", ["constant", "plane"])
def test_positions_with_sky_noiseless(background):
    rng = np.random.default_rng(9)
    H, W = 40, 48
    r, c, f = scene(rng, n=10, margin=1.0)
    R, C = np.mgrid[:H, :W]
    sky = 50.0 + (0.3 * R - 0.2 * C if background == "plane" else 0.0)
    img = dense_image(r, c, f, (H, W)) + sky
    res = fit_positions(
        Gaussian(1.0),
        img,
        r + 0.2,
        c - 0.25,
        errors=np.full((H, W), 1e-4),
        background=background,
        tol=1e-9,
        rtol=0,
    )
    assert res.converged
    np.testing.assert_allclose(res.row, r, atol=1e-6)
    np.testing.assert_allclose(res.flux, f, rtol=1e-6)
    np.testing.assert_allclose(res.background_image, sky, atol=1e-6)
    np.testing.assert_allclose(res.model, img, atol=1e-5)
    assert res.background_err is not None and np.all(res.background_err > 0)


def test_positions_source_walking_onto_brighter_one_is_held():
    """A star whose every step would end within min_separation of a brighter one: its steps are
    blocked, then its position is held at the start (the fit converges instead of spending
    max_iter on it); the bright star's position and both fluxes are the least-squares optimum
    with the held star there (dense reference)."""
    from scipy.optimize import least_squares

    H, W = 24, 26
    r = np.array([11.3, 13.8])
    c = np.array([12.6, 12.7])
    f = np.array([2e4, 5000.0])
    rng = np.random.default_rng(7)
    truth = dense_image(r, c, f, (H, W))
    err = np.sqrt(truth + 4.0)
    data = truth + rng.normal(size=(H, W)) * err
    r0 = np.array([11.4, 14.4])
    c0 = np.array([12.5, 12.7])
    res = fit_positions(Gaussian(1.0), data, r0, c0, errors=err, min_snr=0.0, min_separation=3.0)
    assert res.converged and res.n_iter < 10 and res.source_converged.all()
    assert res.moved[0] and not res.moved[1]
    assert (res.row[1], res.col[1]) == (r0[1], c0[1]) and np.isnan(res.row_err[1])

    def resid(p):
        model = dense_image([p[0], r0[1]], [p[1], c0[1]], p[2:], (H, W))
        return ((data - model) / err).ravel()

    ref = least_squares(resid, [r0[0], c0[0], f[0], f[1]], xtol=1e-12, ftol=1e-12).x
    np.testing.assert_allclose([res.row[0], res.col[0]], ref[:2], atol=2e-3)
    np.testing.assert_allclose(res.flux, ref[2:], rtol=2e-3)


# ---- the targets: a small crowded scene here, the full tutorial scene when asked ----
def _check_position_targets(out, pull_range, scatter_max):
    assert out["median_abs_pos_err"] <= 0.02
    assert pull_range[0] <= out["pull_std"] <= pull_range[1]
    assert out["flux_err_ratio_reported"] <= 1.1
    assert out["flux_scatter_ratio_robust"] <= scatter_max


def test_positions_targets_small_crowded_scene():
    from benchmarks.photometry_bench import bench_positions

    out = bench_positions(imsize=128, nsources=800, seed=3)
    assert out["n_snr100"] >= 40
    _check_position_targets(out, (0.85, 1.2), 1.2)
    # converges well within max_iter = 30, at most 1 % of the moving sources left stepping
    assert out["converged"] and out["n_iter"] < 28
    assert out["n_not_converged"] <= 0.01 * out["n_moved"]
    # the flux errors are what the fit reports (blends included)
    assert 0.85 <= out["flux_pull_std_robust"] <= 1.2


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("SPARSE3D_FULL_SIZE"), reason="set SPARSE3D_FULL_SIZE=1 (minutes, ~2 GB)"
)
def test_positions_targets_tutorial_scene():
    """1024², 50,000 stars, every start off by up to 0.3 px (issue 12's target)."""
    from benchmarks.photometry_bench import bench_positions

    out = bench_positions()
    # The literal "flux scatter within 1.1x of the fit at the true positions" is below
    # the information bound on this crowded scene: the Cramer-Rao floor of the same robust
    # statistic (joint flux + position Fisher information at the truth) is ~1.15, so the fit
    # is held to that floor instead (benchmarks/README.md, "positions").
    _check_position_targets(out, (0.9, 1.2), np.inf)
    assert out["flux_scatter_over_crb_floor"] <= 1.05
    assert out["flux_scatter_ratio_robust_crb_below_1.05"] <= 1.1


def test_jitter_target_small_scene():
    from benchmarks.photometry_bench import bench_jitter

    out = bench_jitter(imsize=96, nsources=120, nframes=20, seed=4)
    assert out["converged"]
    assert out["ratio_fit_to_rebuilt"] <= 1.2
    assert out["scatter_ppt_fit_jitter"] < out["scatter_ppt_linearised_once"]


def test_positions_flux_priors_in_units():
    """A Quantity flux prior is converted to the data's unit (it was read as plain numbers:
    1000x off for mJy next to Jy data); next to plain data, or as a position prior, refused."""
    u = pytest.importorskip("astropy.units")
    from astropy.nddata import NDData

    rng = np.random.default_rng(23)
    H, W = 24, 26
    r, c, f = scene(rng, n=4, imshape=(H, W), margin=1.0, min_sep=4.0)
    err = np.full((H, W), 2.0)
    img = dense_image(r, c, f, (H, W)) + rng.normal(size=(H, W)) * err
    kw = dict(errors=err, min_snr=0.0, tol=1e-10)
    ref = fit_positions(Gaussian(1.0), img, r, c, flux_prior_sigma=f / 10, flux_prior_mu=f, **kw)
    res = fit_positions(
        Gaussian(1.0),
        NDData(img, unit=u.Jy),
        r,
        c,
        flux_prior_sigma=f / 10 * 1000 * u.mJy,
        flux_prior_mu=f * 1000 * u.mJy,
        **{**kw, "errors": err * u.Jy},
    )
    np.testing.assert_allclose(res.flux, ref.flux, rtol=1e-10)
    np.testing.assert_allclose(res.flux_err, ref.flux_err, rtol=1e-10)
    with pytest.raises(ValueError, match="flux_prior_sigma has unit Jy but the data has none"):
        fit_positions(Gaussian(1.0), img, r, c, flux_prior_sigma=f * u.Jy, **kw)
    with pytest.raises(ValueError, match="position_prior_sigma must be plain numbers"):
        fit_positions(Gaussian(1.0), img, r, c, position_prior_sigma=0.1 * u.pix, **kw)
