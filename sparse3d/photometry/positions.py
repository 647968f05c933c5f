"""Fluxes and sub-pixel positions of every source, by damped Gauss-Newton on sparse normal equations.

:func:`fit_positions` refines the positions of a scene the way :meth:`Sparse3D.fit
<sparse3d.Sparse3D.fit>` fits its fluxes: same ``errors``/``mask``/prior arguments, same
sparse normal equations (it calls :func:`sparse3d.fit.fit_design`), one solve per
iteration for all sources together, blends included.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from ..core import Sparse3D
from ._inputs import check_imshape, check_positions, check_source_vector, pixel_weights
from ._linearise import design_at, gauss_newton_design, stamp_sum, weighted_chi2_image

#: Levenberg-Marquardt damping of a source's position columns: its first value, and the
#: factors applied after an accepted / rejected step. The damping adds ``lam * N_jj`` to
#: the diagonal of the position columns (as a Gaussian prior centred on the current
#: position), so it is scale-free.
_LAM_START, _LAM_DOWN, _LAM_UP, _LAM_MAX = 1e-3, 0.1, 10.0, 1e8


@dataclass(frozen=True, eq=False)
class PositionFitResult:
    """Result of :func:`fit_positions`.

    Attributes
    ----------
    row, col : numpy.ndarray
        Fitted positions, ``(nsources,)``, absolute pixel coordinates (integers are pixel
        centres). Sources whose positions were held (``moved`` False) keep their start.
    row_err, col_err : numpy.ndarray
        1-sigma uncertainties of the positions: ``sqrt(diag(N^-1))`` of the last
        linearisation (undamped; the prior included). NaN where the position was held.
    flux, flux_err : numpy.ndarray
        Fluxes and their 1-sigma uncertainties from the same solve (they include the
        flux-position covariance of the joint fit). NaN for unconstrained sources.
    moved : numpy.ndarray
        Boolean ``(nsources,)``: sources whose positions were fitted (not in ``fix``, flux
        S/N at the start at least ``min_snr``).
    source_converged : numpy.ndarray
        Boolean ``(nsources,)``: the source's last proposed step was below ``tol``
        (True for sources that did not move).
    converged : bool
        Every moving source converged within ``max_iter`` iterations.
    n_iter : int
        Gauss-Newton iterations run (one sparse solve each, plus the final one for the
        uncertainties).
    chi2 : float
        Chi-square of the final state, ``sum(((data - model) / errors)**2)`` over the
        unmasked pixels.
    chi2_history : numpy.ndarray
        Chi-square at the start (fluxes fitted at the start positions) and after every
        iteration, ``(n_iter + 1,)``.
    n_rejected : numpy.ndarray
        Per iteration, how many sources' steps were rejected (their chi-square over
        their stamp went up) and damped harder.
    n_pixels : int
        Unmasked pixels used.
    design : Sparse3D
        The PSF model at the fitted positions (unit flux per source).
    """

    row: np.ndarray
    col: np.ndarray
    row_err: np.ndarray
    col_err: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    moved: np.ndarray
    source_converged: np.ndarray
    converged: bool
    n_iter: int
    chi2: float
    chi2_history: np.ndarray
    n_rejected: np.ndarray
    n_pixels: int
    design: Sparse3D

    @cached_property
    def model(self) -> np.ndarray:
        """The best-fit image ``design @ flux`` (unconstrained sources contribute nothing)."""
        return self.design.dot(np.nan_to_num(self.flux))


def fit_positions(
    psf: Any,
    data: np.ndarray,
    row: np.ndarray,
    col: np.ndarray,
    *,
    imshape: tuple[int, int] | None = None,
    stamp_shape: tuple[int, int] = (11, 11),
    imcorner: tuple[int, int] = (0, 0),
    errors: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    background: Any = None,
    flux_prior_mu: float | np.ndarray | None = None,
    flux_prior_sigma: float | np.ndarray | None = None,
    position_prior_sigma: float | np.ndarray | None = None,
    fix: np.ndarray | None = None,
    min_snr: float = 5.0,
    max_step: float = 1.0,
    max_iter: int = 20,
    tol: float = 1e-4,
    solver: str = "auto",
) -> PositionFitResult:
    """Fit the fluxes and sub-pixel positions of every source in an image.

    Damped Gauss-Newton: around the current positions the model is linearised as
    ``L f' + (f dL/drow) dr + (f dL/dcol) dc`` (:mod:`sparse3d.photometry._linearise`);
    one weighted sparse least-squares solve (:func:`sparse3d.fit.fit_design`) gives new
    fluxes and position offsets for all sources together; the model is re-evaluated at the
    new positions and each source's step is accepted when its chi-square over its stamp
    does not increase. Steps are damped per source, Levenberg-Marquardt style: a
    rejected step multiplies the source's damping by 10, an accepted one divides it by
    10, so a wandering faint star does not hold back the others.

    Parameters
    ----------
    psf : PSF model
        Anything with the :mod:`sparse3d.psf` method
        ``design(row, col, imshape, stamp_shape=..., imcorner=..., derivatives=("row", "col"))``,
        e.g. ``sparse3d.psf.Gaussian(sigma=1.0)``.
    data : numpy.ndarray or numpy.ma.MaskedArray, shape (H, W)
        The image. A masked array's mask is honoured (combined with ``mask``).
    row, col : numpy.ndarray, shape (nsources,)
        Start positions, absolute pixel coordinates (integers are pixel centres).
    imshape : tuple of int, optional
        ``(H, W)``; defaults to ``data.shape``.
    stamp_shape : tuple of int
        Stamp size of every source's model, passed to ``psf.design``.
    imcorner : tuple of int
        Absolute position of image pixel ``[0, 0]``.
    errors : numpy.ndarray, optional
        Per-pixel 1-sigma uncertainties ``(H, W)``; ``np.inf`` masks a pixel. None: unit.
    mask : numpy.ndarray of bool, optional
        ``(H, W)``, True marks pixels to ignore.
    background : None
        Reserved for the joint sky terms of the fit layer (issue 12, section 1); only None
        is accepted until they land.
    flux_prior_mu, flux_prior_sigma : float or numpy.ndarray, optional
        Gaussian prior on the fluxes, as in :meth:`Sparse3D.fit`.
    position_prior_sigma : float or numpy.ndarray, optional
        Gaussian prior (pixels) on each position, centred on its start position.
    fix : numpy.ndarray of bool, optional
        ``(nsources,)``: True holds a source's position (its flux is still fitted).
    min_snr : float
        Positions are fitted only for sources whose flux S/N at the start,
        ``flux * sqrt(sum(L**2 / errors**2))``, is at least this (faint sources carry no
        position information; moving them only invites degeneracies with neighbours).
    max_step : float
        Largest position change per iteration, pixels (a longer step is shortened).
    max_iter : int
        Largest number of Gauss-Newton iterations.
    tol : float
        Convergence: every moving source's proposed step is below ``tol`` pixels.
    solver : str
        Sparse solver, as in :func:`sparse3d.fit.fit_design`.

    Returns
    -------
    PositionFitResult
        Positions, fluxes and their 1-sigma errors, chi-square per iteration,
        convergence flags.

    Raises
    ------
    ValueError
        When an argument has the wrong shape or value (the message names it).

    Notes
    -----
    The uncertainties come from one last, undamped linearisation at the final positions:
    ``sqrt(diag(N^-1))`` of ``N = J^T C^-1 J + P`` with ``J = [L, f dL/drow, f dL/dcol]``,
    by selected inversion (no dense inverse).

    Examples
    --------
    >>> import numpy as np
    >>> from sparse3d.photometry import fit_positions
    >>> from sparse3d.psf import Gaussian                                      # doctest: +SKIP
    >>> res = fit_positions(Gaussian(1.0), image, row0, col0, errors=err)     # doctest: +SKIP
    """
    from ..fit import UnconstrainedSourceWarning, fit_design

    if background is not None:
        raise ValueError(
            "background= is not supported by fit_positions yet (it will pass through to the fit "
            "layer's joint sky terms); subtract the sky first or pass background=None"
        )
    pw = pixel_weights(data, errors, mask, ndim=2)
    D, ivar = pw.data, pw.ivar
    H, W = check_imshape(imshape, D)
    r, c = check_positions(row, col)
    r0, c0 = r.copy(), c.copy()
    n = r.size
    fps = check_source_vector(flux_prior_sigma, n, "flux_prior_sigma", positive=True)
    fpmu = check_source_vector(flux_prior_mu, n, "flux_prior_mu")
    if fpmu is not None and fps is None:
        raise ValueError("flux_prior_mu requires flux_prior_sigma")
    pps = check_source_vector(position_prior_sigma, n, "position_prior_sigma", positive=True)
    pprec = np.zeros(n) if pps is None else 1.0 / pps**2
    if fix is None:
        fix = np.zeros(n, dtype=bool)
    else:
        fix = np.asarray(fix)
        if fix.dtype != bool or fix.shape != (n,):
            raise ValueError(f"fix must be a boolean array of shape (nsources,) = ({n},), got {fix.dtype} {fix.shape}")
    for name, v in (("min_snr", min_snr), ("max_step", max_step), ("tol", tol)):
        if not (np.isfinite(v) and v >= 0 and (name == "min_snr" or v > 0)):
            raise ValueError(f"{name} must be a finite {'non-negative' if name == 'min_snr' else 'positive'} "
                             f"number, got {v!r}")
    if int(max_iter) != max_iter or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative integer, got {max_iter!r}")
    geometry = dict(imshape=(H, W), stamp_shape=tuple(stamp_shape), imcorner=tuple(imcorner))
    fit_kw = dict(imshape=(H, W), errors=pw.fit_errors, mask=pw.fit_mask, solver=solver)
    flux_sigma = np.full(n, np.inf) if fps is None else fps
    flux_mu = np.zeros(n) if fpmu is None else fpmu

    def design(rr, cc, derivatives):
        return design_at(psf, rr, cc, geometry["imshape"], geometry["stamp_shape"], geometry["imcorner"],
                         derivatives)

    # ---- start: fluxes at the start positions -------------------------------------------
    L, dR, dC = design(r, c, True)
    f = fit_design(L.tocsc(), D, prior_mu=fpmu, prior_sigma=fps, return_errors=False, **fit_kw).weights
    chi2_img = weighted_chi2_image(D, L.dot(np.nan_to_num(f)), ivar)
    history = [float(chi2_img.sum())]
    rejected: list[int] = []
    lam = np.full(n, _LAM_START)
    last_step = np.zeros(n)

    def who_moves(L, f):
        """Sources whose positions are fitted now: not fixed, flux S/N at least ``min_snr``."""
        snr = np.nan_to_num(f) * np.sqrt(stamp_sum(L, ivar, power=2))
        return np.flatnonzero(~fix & (snr >= min_snr))

    def solve(L, dR, dC, f, moving, lam, return_errors):
        J = gauss_newton_design(L, dR, dC, f, moving)
        fm2 = np.nan_to_num(f[moving]) ** 2
        prec, mu = [], []
        for dX, off in ((dR, r0 - r), (dC, c0 - c)):
            njj = fm2 * stamp_sum(dX, ivar, power=2)[moving]
            p = lam[moving] * njj + pprec[moving]
            prec.append(p)
            with np.errstate(invalid="ignore", divide="ignore"):
                mu.append(np.where(p > 0, pprec[moving] * off[moving] / p, 0.0))
        with np.errstate(divide="ignore"):
            sig = np.concatenate([flux_sigma, 1.0 / np.sqrt(prec[0]), 1.0 / np.sqrt(prec[1])])
        any_prior = bool(np.any(np.isfinite(sig)))
        return fit_design(
            J, D,
            prior_mu=np.concatenate([flux_mu, mu[0], mu[1]]) if any_prior else None,
            prior_sigma=sig if any_prior else None,
            return_errors=return_errors, **fit_kw,
        )

    # ---- damped Gauss-Newton -------------------------------------------------------------
    n_iter = 0
    converged = False
    moving = who_moves(L, f)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnconstrainedSourceWarning)  # warned once above
        while n_iter < max_iter:
            if moving.size == 0:
                converged = True
                break
            n_iter += 1
            m = moving.size
            sol = solve(L, dR, dC, f, moving, lam, False).weights
            f_t = sol[:n]
            dr = np.nan_to_num(sol[n : n + m])
            dc = np.nan_to_num(sol[n + m :])
            step = np.hypot(dr, dc)
            scale = np.minimum(1.0, max_step / np.maximum(step, 1e-300))
            r_t, c_t = r.copy(), c.copy()
            r_t[moving] += dr * scale
            c_t[moving] += dc * scale
            L_t, _, _ = design(r_t, c_t, False)
            chi2_t = weighted_chi2_image(D, L_t.dot(np.nan_to_num(f_t)), ivar)
            # a step that lowers the total chi-square is taken whole; otherwise each moving
            # source's chi-square over its current stamp decides for that source (steps below
            # tol are always taken: at convergence the comparison is rounding noise)
            total_t = float(chi2_t.sum())
            if total_t <= history[-1] * (1 + 1e-12):
                acc = np.ones(m, dtype=bool)
            else:
                old_k = stamp_sum(L, chi2_img)[moving]
                new_k = stamp_sum(L, chi2_t)[moving]
                acc = (new_k <= old_k * (1 + 1e-12)) | (step < tol)
            back = moving[~acc]
            f_back = f[back]
            f = f_t.copy()
            f[back] = f_back
            go = moving[acc]
            r[go], c[go] = r_t[go], c_t[go]
            lam[go] *= _LAM_DOWN
            lam[back] = np.minimum(lam[back] * _LAM_UP, _LAM_MAX)
            last_step[:] = 0.0
            last_step[moving] = step
            rejected.append(int(back.size))
            L, dR, dC = design(r, c, True)
            chi2_img = weighted_chi2_image(D, L.dot(np.nan_to_num(f)), ivar)
            history.append(float(chi2_img.sum()))
            new_moving = who_moves(L, f)
            # converged: every step below tol while (almost) undamped, same sources moving
            if np.all(step < tol) and np.all(lam[moving] <= 1.0) and np.array_equal(new_moving, moving):
                converged = True
                break
            moving = new_moving

        # ---- uncertainties: one undamped linearisation at the final positions ------------
        m = moving.size
        res = solve(L, dR, dC, f, moving, np.zeros(n), True)
    err = res.weights_err
    row_err = np.full(n, np.nan)
    col_err = np.full(n, np.nan)
    row_err[moving] = err[n : n + m]
    col_err[moving] = err[n + m :]
    src_conv = last_step < tol
    moved = np.zeros(n, dtype=bool)
    moved[moving] = True
    return PositionFitResult(
        row=r, col=c, row_err=row_err, col_err=col_err,
        flux=res.weights[:n], flux_err=err[:n],
        moved=moved, source_converged=src_conv, converged=bool(converged), n_iter=n_iter,
        chi2=history[-1], chi2_history=np.asarray(history), n_rejected=np.asarray(rejected, dtype=int),
        n_pixels=pw.n_pixels, design=L,
    )
