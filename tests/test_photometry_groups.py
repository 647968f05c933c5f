"""Scene fits (sparse3d.photometry) with per-source stamp sizes: designs with several stamp groups.

References: dense NumPy images and Jacobians built star by star on each star's own stamp
(``test_photometry.dense_image``), the single-shape fit where the PSF has no light beyond
the smaller stamp (then mixed sizes must not change the answer), and a dense
``(J^T C^-1 J)^-1`` of the final linearisation.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_photometry import dense_image, scene  # noqa: I001 - tests/ is on sys.path

from sparse3d.photometry import fit_jitter, fit_positions
from sparse3d.photometry._linearise import column_norms, gauss_newton_design, stamp_sum
from sparse3d.psf import Gaussian


def _sizes(f, small, big, edge):
    """Per-source square sizes: ``big`` for fluxes above ``edge``, interleaved in catalogue order."""
    sizes = np.where(f > edge, big, small).astype(np.int64)
    assert len(set(sizes)) == 2 and not np.all(np.diff(sizes) >= 0)  # two groups, interleaved
    return sizes


def _dense_parts(r, c, sizes, imshape, imcorner, sigma):
    """Dense ``(H, W, n)`` model and derivatives, each star on its own stamp size."""
    parts = [
        dense_image([r[k]], [c[k]], [1.0], imshape, imcorner, sigma, (int(s), int(s)), derivs=True)[1:]
        for k, s in enumerate(sizes)
    ]
    return [np.concatenate([p[i] for p in parts], axis=2) for i in range(3)]


def test_linearise_helpers_on_grouped_designs_match_dense():
    rng = np.random.default_rng(30)
    H, W, corner = 20, 24, (3, -4)
    r, c, f = scene(rng, n=7, imshape=(H, W), margin=-2.0, min_sep=1.0)
    r, c = r + corner[0], c + corner[1]
    sizes = np.array([5, 9, 5, 1, 9, 9, 5])  # a group of one source
    L, d = Gaussian(1.2).design(r, c, (H, W), stamp_shape=sizes, imcorner=corner, derivatives=("row", "col"))
    assert sorted(L.stamp_shapes) == [(1, 1), (5, 5), (9, 9)]
    Lk, dR, dC = _dense_parts(r, c, sizes, (H, W), corner, 1.2)
    img = rng.uniform(0.5, 2.0, (H, W))
    np.testing.assert_allclose(stamp_sum(L, img), np.einsum("hwk,hw->k", Lk != 0, img))
    np.testing.assert_allclose(stamp_sum(L, img, power=2), np.einsum("hwk,hw->k", Lk**2, img))
    for got, ref in zip(column_norms(img, L, d["row"], d["col"]), (Lk, dR, dC)):
        np.testing.assert_allclose(got, np.einsum("hwk,hw->k", ref**2, img))
    moving = np.array([1, 3, 6])
    J = gauss_newton_design(L, d["row"], d["col"], f, moving)
    ref = np.concatenate([Lk, dR[:, :, moving] * f[moving], dC[:, :, moving] * f[moving]], axis=2)
    np.testing.assert_allclose(J.todense(), ref, atol=1e-12)


@pytest.mark.parametrize("imcorner", [(0, 0), (5, -7)])
def test_positions_mixed_sizes_equal_single_shape_when_the_psf_fits_the_small_stamp(imcorner):
    """A PSF with no light beyond 11x11 (sigma 0.7: below 1e-11 of the peak there): bright stars on
    13x13 stamps must give the single-shape fit's answer, to ~1e-10."""
    rng = np.random.default_rng(31)
    H, W = 40, 48
    r, c, f = scene(rng, n=14, margin=-2.0, min_sep=3.0, fmin=500.0, fmax=5e4)
    r, c = r + imcorner[0], c + imcorner[1]
    truth = dense_image(r, c, f, (H, W), imcorner, sigma=0.7)
    err = np.sqrt(truth + 4.0)
    data = truth + rng.normal(size=(H, W)) * err
    r0, c0 = r + rng.uniform(-0.2, 0.2, r.size), c + rng.uniform(-0.2, 0.2, r.size)
    kw = dict(imcorner=imcorner, errors=err, min_snr=0.0)
    one = fit_positions(Gaussian(0.7), data, r0, c0, **kw)
    sizes = _sizes(f, 11, 13, 5e3)
    mixed = fit_positions(Gaussian(0.7), data, r0, c0, stamp_shape=sizes, **kw)
    assert sorted(mixed.design.stamp_shapes) == [(11, 11), (13, 13)]
    assert one.converged and mixed.converged and one.n_iter == mixed.n_iter
    np.testing.assert_array_equal(mixed.moved, one.moved)
    for name in ("row", "col", "row_err", "col_err", "flux_err"):
        np.testing.assert_allclose(getattr(mixed, name), getattr(one, name), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(mixed.flux, one.flux, rtol=1e-9)
    np.testing.assert_allclose(mixed.model, one.model, atol=1e-8 * f.max())


def test_positions_mixed_sizes_errors_match_dense_inverse():
    """Broad PSF, bright stars on 15x15 and faint ones on 7x7: the errors are
    sqrt(diag((J^T C^-1 J)^-1)) of the dense Jacobian built star by star on its own stamp, and
    the result is a stationary point of the chi-square."""
    rng = np.random.default_rng(32)
    H, W, corner = 36, 40, (-3, 6)
    sigma = 1.6
    r, c, f = scene(rng, n=9, imshape=(H, W), margin=-1.0, min_sep=3.0, fmin=2e3, fmax=4e4)
    r, c = r + corner[0], c + corner[1]
    sizes = _sizes(f, 7, 15, 8e3)
    truth = sum(
        dense_image([r[k]], [c[k]], [f[k]], (H, W), corner, sigma, (int(s), int(s)))
        for k, s in enumerate(sizes)
    )
    err = np.sqrt(truth + 4.0)
    data = truth + rng.normal(size=(H, W)) * err
    res = fit_positions(
        Gaussian(sigma), data, r + 0.1, c - 0.1, stamp_shape=sizes, imcorner=corner, errors=err,
        min_snr=0.0, max_iter=50, tol=1e-9, rtol=0,
    )  # fmt: skip
    assert res.moved.all() and res.converged
    Lk, dR, dC = _dense_parts(res.row, res.col, sizes, (H, W), corner, sigma)
    J = np.concatenate([Lk, dR * res.flux, dC * res.flux], axis=2).reshape(H * W, -1)
    Jw = J / err.reshape(-1, 1)
    sig = np.sqrt(np.diag(np.linalg.inv(Jw.T @ Jw)))
    n = r.size
    np.testing.assert_allclose(res.flux_err, sig[:n], rtol=1e-6)
    np.testing.assert_allclose(res.row_err, sig[n : 2 * n], rtol=1e-6)
    np.testing.assert_allclose(res.col_err, sig[2 * n :], rtol=1e-6)
    model = Lk @ res.flux
    np.testing.assert_allclose(res.model, model, atol=1e-8 * f.max())
    grad = Jw.T @ ((data - model) / err).ravel()
    assert np.all(np.abs(grad) * sig < 1e-5)


def test_positions_bright_stars_on_big_stamps_do_at_least_as_well():
    """Broad-winged bright stars: their 21x21 stamps recover their positions at least as well
    as 7x7 stamps for everyone, and the fit's chi-square is lower."""
    rng = np.random.default_rng(33)
    H, W = 60, 64
    sigma = 2.0
    r, c, f = scene(rng, n=16, imshape=(H, W), margin=2.0, min_sep=5.0, fmin=1e3, fmax=1e5)
    truth = dense_image(r, c, f, (H, W), sigma=sigma, stamp=(31, 31))
    err = np.sqrt(truth + 9.0)
    sizes = _sizes(f, 7, 21, 1e4)
    bright = sizes == 21
    miss = {"small": [], "mixed": []}
    chi2 = {"small": [], "mixed": []}
    for _ in range(6):
        data = truth + rng.normal(size=(H, W)) * err
        r0, c0 = r + rng.uniform(-0.3, 0.3, r.size), c + rng.uniform(-0.3, 0.3, r.size)
        for name, st in (("small", (7, 7)), ("mixed", sizes)):
            res = fit_positions(Gaussian(sigma), data, r0, c0, stamp_shape=st, errors=err)
            miss[name].append(np.hypot(res.row - r, res.col - c)[bright])
            chi2[name].append(res.chi2)
    rms = {k: np.sqrt(np.mean(np.concatenate(v) ** 2)) for k, v in miss.items()}
    assert rms["mixed"] < 0.8 * rms["small"], rms  # measured: 0.020 px against 0.056 px
    assert np.all(np.array(chi2["mixed"]) < np.array(chi2["small"]))


def test_jitter_with_per_source_stamp_sizes():
    """fit_jitter with mixed stamp sizes: the single-shape answer when the PSF fits the small stamp."""
    rng = np.random.default_rng(34)
    H, W = 40, 44
    r, c, f = scene(rng, n=10, imshape=(H, W), margin=0.0, min_sep=3.0, fmin=500.0, fmax=3e4)
    shifts = rng.normal(0, 0.3, size=(6, 2))
    frames = np.stack([dense_image(r + a, c + b, f, (H, W), sigma=0.7) for a, b in shifts], axis=2)
    frames += rng.normal(size=frames.shape) * 0.5
    kw = dict(errors=np.full((H, W), 0.5), tol=1e-10)
    one = fit_jitter(Gaussian(0.7), frames, r, c, **kw)
    mixed = fit_jitter(Gaussian(0.7), frames, r, c, stamp_shape=_sizes(f, 11, 13, 5e3), **kw)
    assert one.converged and mixed.converged
    np.testing.assert_allclose(mixed.shifts, one.shifts, atol=1e-9)
    np.testing.assert_allclose(mixed.shifts_err, one.shifts_err, rtol=1e-8)
    np.testing.assert_allclose(mixed.flux, one.flux, rtol=1e-8)
    assert np.max(np.abs(mixed.shifts - shifts)) < 0.05
