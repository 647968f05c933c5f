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
from ._inputs import check_positions, check_source_vector, pixel_weights
from ._linearise import (
    column_norms,
    design_at,
    gauss_newton_design,
    stamp_shape_arg,
    stamp_sum,
    weighted_chi2_image,
)

#: Levenberg-Marquardt damping of a source's position columns: its first value, and the
#: factors applied after an accepted / rejected step. The damping adds ``lam * N_jj`` to
#: the diagonal of the position columns (as a Gaussian prior centred on the current
#: position), so it is scale-free.
_LAM_START, _LAM_DOWN, _LAM_UP, _LAM_MAX = 1e-3, 0.1, 10.0, 1e8
#: The damping never drops below this while iterating: it keeps the normal matrix
#: comfortably non-singular for a blend that is nearly degenerate, and shortens steps by
#: one part in a million only.
_LAM_MIN = 1e-6
_MAX_HALVINGS = 5
#: S/N thresholds of the bright-first stages (then ``min_snr``), the step (px) below which a
#: stage has settled, and the most iterations one stage may take.
_SNR_LEVELS, _SETTLED, _STAGE_ITER = (1000.0, 100.0, 30.0), 0.01, 3
#: A source whose step is blocked (it would walk onto a brighter neighbour) this many times
#: has its position held from then on: the pair is degenerate at this separation and the
#: source would otherwise keep every later iteration from converging.
_MAX_BLOCKED = 2
#: Stagnation: in the last stage, once the chi-square has dropped by less than
#: ``max(_STALL_DCHI2, _STALL_RTOL * chi2)`` over the last _STALL_ITER iterations, the fit stops
#: (converged); the few sources still stepping (they trade flux and position with a neighbour
#: along a flat valley) are flagged in ``source_converged``; at most _STALL_FRAC of the moving
#: sources may be left so.
_STALL_DCHI2, _STALL_RTOL, _STALL_ITER, _STALL_FRAC = 1.0, 1e-5, 3, 0.01


@dataclass(frozen=True, eq=False)
class PositionFitResult:
    """Result of :func:`fit_positions`.

    Attributes
    ----------
    row, col : numpy.ndarray
        Fitted positions, ``(nsources,)``, absolute pixel coordinates (integers are pixel
        centres). Sources whose positions were not fitted (``moved`` False) keep their start.
    row_err, col_err : numpy.ndarray
        1-sigma uncertainties of the positions: ``sqrt(diag(N^-1))`` of the last
        linearisation (undamped; the prior included). NaN where ``moved`` is False.
    flux, flux_err : numpy.ndarray
        Fluxes of the final state (the one ``chi2`` and ``model`` are of) and their 1-sigma
        uncertainties from the last linearisation (they include the flux-position covariance
        of the joint fit). NaN for unconstrained sources. (The last solve's own fluxes go with
        position offsets it does not apply.)
    moved : numpy.ndarray
        Boolean ``(nsources,)``: sources whose positions were fitted, the ones with finite
        ``row_err``: those moving at the end (not in ``fix``, flux S/N at least ``min_snr``,
        not held: a source whose step was blocked twice from walking onto a brighter
        neighbour keeps its position from then on) and every source whose position changed
        before it stopped moving (its S/N fell below ``min_snr``, or it was held).
    source_converged : numpy.ndarray
        Boolean ``(nsources,)``: the source's last step was below its tolerance (``tol``
        or ``rtol`` times its position uncertainty; True for sources that did not move).
    converged : bool
        Within ``max_iter`` iterations, every moving source converged, or the chi-square
        stagnated (dropped by less than ``max(1, 1e-5 chi2)`` over three iterations) with at
        most 1 % of the moving sources still stepping (those are False in
        ``source_converged``).
    n_iter : int
        Gauss-Newton iterations run (one sparse solve each, plus the final one for the
        uncertainties).
    chi2 : float
        Chi-square of the final state, ``sum(((data - model) / errors)**2)`` over the
        unmasked pixels (``chi2_history[-1]``).
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
    background, background_err : numpy.ndarray or None
        The sky coefficients of the ``background`` model in the final state and their 1-sigma
        uncertainties from the last linearisation (None without one).
    background_image : numpy.ndarray or None
        The fitted sky, ``(H, W)``.
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
    background: np.ndarray | None = None
    background_err: np.ndarray | None = None
    background_image: np.ndarray | None = None

    @cached_property
    def model(self) -> np.ndarray:
        """The best-fit image ``design @ flux`` plus the sky (unconstrained sources contribute nothing)."""
        model = self.design.dot(np.nan_to_num(self.flux))
        return model if self.background_image is None else model + self.background_image


def _sky(res: Any) -> np.ndarray | float:
    """The fitted background image of a fit-layer result (0.0 without a background model)."""
    img = getattr(res, "background_image", None)
    return 0.0 if img is None else np.asarray(img)


def _shadowed(r: np.ndarray, c: np.ndarray, flux: np.ndarray, min_sep: float) -> np.ndarray:
    """Boolean ``(nsources,)``: a brighter source lies within ``min_sep`` (the position is degenerate)."""
    if min_sep <= 0 or r.size < 2:
        return np.zeros(r.size, dtype=bool)
    from scipy.spatial import cKDTree

    dist, nbr = cKDTree(np.c_[r, c]).query(np.c_[r, c], k=2)
    bright = np.abs(np.nan_to_num(flux))
    return (dist[:, 1] < min_sep) & (bright[nbr[:, 1]] > bright)


def _approaching(
    r: np.ndarray,
    c: np.ndarray,
    flux: np.ndarray,
    moving: np.ndarray,
    dr: np.ndarray,
    dc: np.ndarray,
    min_sep: float,
) -> np.ndarray:
    """Boolean ``(len(moving),)``: the step ends within ``min_sep`` of a brighter source (and nearer)."""
    if min_sep <= 0 or r.size < 2:
        return np.zeros(moving.size, dtype=bool)
    from scipy.spatial import cKDTree

    r_t, c_t = r.copy(), c.copy()
    r_t[moving] += dr
    c_t[moving] += dc
    dist, nbr = cKDTree(np.c_[r_t, c_t]).query(np.c_[r_t[moving], c_t[moving]], k=2)
    after, j = dist[:, 1], nbr[:, 1]
    before = np.hypot(r[moving] - r[j], c[moving] - c[j])
    bright = np.abs(np.nan_to_num(flux))
    return (after < min_sep) & (after < before) & (bright[j] > bright[moving])


def fit_positions(
    psf: Any,
    data: np.ndarray,
    row: np.ndarray,
    col: np.ndarray,
    *,
    imshape: tuple[int, int] | None = None,
    stamp_shape: tuple[int, int] | np.ndarray = (11, 11),
    imcorner: tuple[int, int] = (0, 0),
    errors: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    dq: np.ndarray | None = None,
    bad_bits: int | None = None,
    background: Any = None,
    flux_prior_mu: float | np.ndarray | None = None,
    flux_prior_sigma: float | np.ndarray | None = None,
    position_prior_sigma: float | np.ndarray | None = None,
    fix: np.ndarray | None = None,
    min_snr: float = 5.0,
    min_separation: float = 0.5,
    max_step: float = 1.0,
    max_iter: int = 30,
    tol: float = 1e-4,
    rtol: float = 0.05,
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
    data : array_like, shape (H, W)
        The image: an array, a ``numpy.ma.MaskedArray`` (its mask is honoured, combined with
        ``mask``) or an astropy ``NDData``/``CCDData``-like object (its mask and uncertainty
        are read; fluxes come out in its unit, as plain numbers): whatever
        :func:`sparse3d.fit.check_inputs` accepts.
    row, col : numpy.ndarray, shape (nsources,)
        Start positions, absolute pixel coordinates (integers are pixel centres).
    imshape : tuple of int, optional
        ``(H, W)``; defaults to ``data.shape``.
    stamp_shape : tuple of int or numpy.ndarray
        Stamp size of every source's model, passed to ``psf.design``: one ``(nr, nc)``, or
        per source a NumPy integer array (``(nsources,)`` square sizes or ``(nsources, 2)``
        shapes, e.g. from :func:`sparse3d.psf.stamp_sizes_by_flux`: bright stars on big
        stamps, faint ones on small). The designs then hold one stamp group per shape
        (:attr:`Sparse3D.groups`) and so does ``design`` in the result.
    imcorner : tuple of int
        Absolute position of image pixel ``[0, 0]``.
    errors : numpy.ndarray, optional
        Per-pixel 1-sigma uncertainties ``(H, W)``; ``np.inf`` masks a pixel. None: unit.
    mask : numpy.ndarray of bool, optional
        ``(H, W)``, True marks pixels to ignore.
    dq : numpy.ndarray of int, optional
        Data-quality bitmask ``(H, W)``: pixels with ``dq & bad_bits != 0`` are masked.
    bad_bits : int, optional
        The bits of ``dq`` that mark bad pixels; required with ``dq``.
    background : optional
        The sky, solved jointly in every iteration: anything
        :func:`sparse3d.fit.fit_design` takes (``"constant"``, ``"plane"``,
        ``("poly", order)``, ``("grid", tile)`` or a
        :class:`~sparse3d.fit.BackgroundModel`).
    flux_prior_mu, flux_prior_sigma : float or numpy.ndarray, optional
        Gaussian prior on the fluxes, as in :meth:`Sparse3D.fit`.
    position_prior_sigma : float or numpy.ndarray, optional
        Gaussian prior (pixels) on each position, centred on its start position.
    fix : numpy.ndarray of bool, optional
        ``(nsources,)``: True holds a source's position (its flux is still fitted).
    min_snr : float
        Positions are fitted only for sources whose flux S/N, ``flux / flux_sigma`` with
        the marginal flux uncertainty of a flux-only fit at the start positions (blends
        included), is at least this: faint sources carry no position information, and
        moving them only invites degeneracies with neighbours. Brighter sources move first
        (S/N >= 1000, 100, 30, then ``min_snr``), so that a faint star does not take up the
        residual of a bright neighbour that is still off.
    min_separation : float
        A step that would bring a source closer than this (pixels) to a brighter source,
        and closer than it was, is not taken: coincident sources are degenerate and
        their fluxes would run off as a +-inf pair. The brighter source is never held
        back by a fainter one. A source already closer than this to a brighter one keeps
        its position (its flux is still fitted), and so does one whose step was blocked
        twice.
    max_step : float
        Largest position change per iteration, pixels (a longer step is shortened).
    max_iter : int
        Largest number of Gauss-Newton iterations.
    tol, rtol : float
        Convergence: every moving source's step is below ``tol`` pixels or below ``rtol``
        times its position uncertainty, whichever is larger (a faint star whose sigma is
        0.1 px need not be pinned to 1e-4 px).
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
    from ..fit import (
        SingularNormalMatrixError,
        UnconstrainedSourceWarning,
        fit_design,
        prepare_normal_equations,
    )

    pw = pixel_weights(data, errors, mask, ndim=2, dq=dq, bad_bits=bad_bits, imshape=imshape)
    D, ivar = pw.data, pw.ivar
    H, W = D.shape
    r, c = check_positions(row, col)
    r0, c0 = r.copy(), c.copy()
    n = r.size
    fps = check_source_vector(flux_prior_sigma, n, "flux_prior_sigma", positive=True, flux_of=pw.inputs)
    fpmu = check_source_vector(flux_prior_mu, n, "flux_prior_mu", flux_of=pw.inputs)
    if fpmu is not None and fps is None:
        raise ValueError("flux_prior_mu requires flux_prior_sigma")
    pps = check_source_vector(position_prior_sigma, n, "position_prior_sigma", positive=True)
    pprec = np.zeros(n) if pps is None else 1.0 / pps**2
    if fix is None:
        fix = np.zeros(n, dtype=bool)
    else:
        fix = np.asarray(fix)
        if fix.dtype != bool or fix.shape != (n,):
            raise ValueError(
                f"fix must be a boolean array of shape (nsources,) = ({n},), got {fix.dtype} {fix.shape}"
            )
    for name, v in (
        ("min_snr", min_snr),
        ("min_separation", min_separation),
        ("max_step", max_step),
        ("tol", tol),
        ("rtol", rtol),
    ):
        zero_ok = name in ("min_snr", "min_separation", "rtol")
        if not (np.isfinite(v) and v >= 0 and (zero_ok or v > 0)):
            raise ValueError(
                f"{name} must be a finite {'non-negative' if zero_ok else 'positive'} number, got {v!r}"
            )
    if int(max_iter) != max_iter or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative integer, got {max_iter!r}")
    geometry = dict(imshape=(H, W), stamp_shape=stamp_shape_arg(stamp_shape), imcorner=tuple(imcorner))
    fit_kw = dict(
        imshape=(H, W), errors=pw.fit_errors, mask=pw.fit_mask, background=background, solver=solver
    )
    D_flat = D.reshape(-1)
    flux_sigma = np.full(n, np.inf) if fps is None else fps
    flux_mu = np.zeros(n) if fpmu is None else fpmu

    def design(rr, cc, derivatives):
        return design_at(
            psf, rr, cc, geometry["imshape"], geometry["stamp_shape"], geometry["imcorner"], derivatives
        )

    # ---- start: fluxes at the start positions -------------------------------------------
    L, dR, dC = design(r, c, True)
    nL, nR, nC = column_norms(ivar, L, dR, dC)  # sum(L^2 / err^2) etc. per source
    start = fit_design(L, D, prior_mu=fpmu, prior_sigma=fps, **fit_kw)
    f = start.weights
    sky = _sky(start)
    bcoef = getattr(start, "background", None)  # the sky coefficients of the current state
    # marginal flux uncertainties at the start (blends included): a faint star inside a bright
    # one's core has a large one, however large its flux looks while the bright star is off
    flux_sigma0 = start.weights_err
    chi2_img = weighted_chi2_image(D, L.dot(np.nan_to_num(f)) + sky, ivar)
    history = [float(chi2_img.sum())]
    rejected: list[int] = []
    lam = np.full(n, _LAM_START)
    clamp = np.full(n, float(max_step))
    prev_dr, prev_dc = np.zeros(n), np.zeros(n)
    last_step = np.zeros(n)
    n_blocked = np.zeros(n, dtype=int)
    held = np.zeros(n, dtype=bool)  # positions held after _MAX_BLOCKED blocked steps
    prev_J: list[Sparse3D | None] = [None]  # the last Gauss-Newton design (its structure is reused)

    def pos_sigma(f):
        """Position uncertainty of every source alone (no blending): ``1 / sqrt(f^2 sum(dL^2 / err^2))``."""
        info = np.nan_to_num(f) ** 2 * np.minimum(nR, nC)
        with np.errstate(divide="ignore"):
            return 1.0 / np.sqrt(info)

    def who_moves(f, level):
        """Sources whose positions are fitted now: not fixed, flux S/N at least ``level``."""
        with np.errstate(invalid="ignore", divide="ignore"):
            snr = np.nan_to_num(f / flux_sigma0)
        return np.flatnonzero(~fix & ~held & (snr >= level) & ~_shadowed(r, c, f, min_separation))

    # Brightest first: a faint star next to a bright one whose position is still off
    # absorbs the bright star's residual and looks significant; it would then walk into it.
    # So the S/N threshold for moving starts high and drops by 10x whenever the moving
    # sources have settled (steps below _SETTLED px) or after _STAGE_ITER iterations.
    levels = [lv for lv in _SNR_LEVELS if lv > min_snr] + [min_snr]
    stage, stage_iter = 0, 0

    def solve(L, dR, dC, f, moving, lam, return_errors, flux_damping=_LAM_MIN, reuse=None):
        """One Gauss-Newton solve. Iterations (``return_errors`` False) return ``(x, b, sky, ne)``:
        the unknowns (fluxes, row then column offsets of ``moving``), the sky coefficients
        and image and the factorised normal equations, whose symbolic analysis the next call
        takes over through ``reuse`` when the moving set (hence the matrix pattern) is
        unchanged. The last solve returns the fit layer's result, with uncertainties."""
        J = gauss_newton_design(L, dR, dC, f, moving, previous=prev_J[0])
        prev_J[0] = J
        fm2 = np.nan_to_num(f[moving]) ** 2
        prec, mu = [], []
        for nX, off in ((nR, r0 - r), (nC, c0 - c)):
            njj = fm2 * nX[moving]
            p = lam[moving] * njj + pprec[moving]
            prec.append(p)
            with np.errstate(invalid="ignore", divide="ignore"):
                mu.append(np.where(p > 0, pprec[moving] * off[moving] / p, 0.0))
        # the fluxes are damped too (towards their current values, by flux_damping times the
        # diagonal) while iterating: a faint star that a bright one walks over makes its flux
        # column all but dependent on the bright star's position columns
        fprec_user = 1.0 / flux_sigma**2
        fprec = fprec_user + flux_damping * nL
        with np.errstate(invalid="ignore", divide="ignore"):
            fmu = np.where(
                fprec > 0, (fprec_user * flux_mu + (fprec - fprec_user) * np.nan_to_num(f)) / fprec, 0.0
            )
            sig = np.concatenate([1.0 / np.sqrt(fprec), 1.0 / np.sqrt(prec[0]), 1.0 / np.sqrt(prec[1])])
        any_prior = bool(np.any(np.isfinite(sig)))
        prior = dict(
            prior_mu=np.concatenate([fmu, mu[0], mu[1]]) if any_prior else None,
            prior_sigma=sig if any_prior else None,
        )
        if return_errors:
            return fit_design(J, D, return_errors=True, **prior, **fit_kw)
        ne = prepare_normal_equations(J, reuse=True if reuse is None else reuse, **prior, **fit_kw)
        x = ne.solve(D_flat)
        ncol = J.shape[-1]
        sky_t = 0.0 if ne.background is None else (ne.background @ x[ncol:]).reshape(H, W)
        return x[:ncol], x[ncol:], sky_t, ne

    # ---- damped Gauss-Newton -------------------------------------------------------------
    # While the moving set is unchanged the Gauss-Newton matrix keeps its pattern: each
    # factorisation then reuses the previous one's symbolic analysis, and the design reuses
    # the previous one's stamp structure while no stamp has moved by a pixel.
    n_iter = 0
    converged = False
    moving = who_moves(f, levels[stage])
    prev_ne, prev_moving = None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnconstrainedSourceWarning)  # warned once above
        while n_iter < max_iter:
            if moving.size == 0:
                if stage + 1 < len(levels):
                    stage += 1
                    moving = who_moves(f, levels[stage])
                    continue
                converged = True
                break
            n_iter += 1
            m = moving.size
            same = prev_moving is not None and np.array_equal(moving, prev_moving)
            reuse = prev_ne if same else None
            f_t, b_t, sky_t, prev_ne = solve(L, dR, dC, f, moving, lam, False, reuse=reuse)
            prev_moving = moving
            f_t, dr, dc = f_t[:n], np.nan_to_num(f_t[n : n + m]), np.nan_to_num(f_t[n + m :])
            step = np.hypot(dr, dc)
            tol_k = np.maximum(tol, rtol * pos_sigma(f)[moving])
            # per-source clamp on the step length, halved whenever the source turns back
            # (an oscillating faint star settles instead of pulling its neighbours about)
            turned = dr * prev_dr[moving] + dc * prev_dc[moving] < 0
            clamp[moving[turned]] *= 0.5
            scale = np.minimum(1.0, clamp[moving] / np.maximum(step, 1e-300))
            # no source may walk onto another one (two coincident sources are degenerate:
            # their fluxes run off to +-inf): such steps are cancelled and damped harder
            blocked = _approaching(r, c, f, moving, dr * scale, dc * scale, min_separation)
            if blocked.any():
                scale[blocked] = 0.0
                lam[moving[blocked]] = np.minimum(lam[moving[blocked]] * _LAM_UP, _LAM_MAX)
                n_blocked[moving[blocked]] += 1
                held[moving[blocked & (n_blocked[moving] >= _MAX_BLOCKED)]] = True
            # line search on the total chi-square: the whole step; if chi-square rose, the
            # steps of the sources whose chi-square over their stamp rose are withdrawn (they
            # are damped harder for the next iteration) and the others' tried again; when no
            # single source is to blame, every step is halved. The trial model comes with its
            # derivatives: an accepted trial is the next linearisation.
            alpha = 1.0
            accepted = False
            raised = np.zeros(m, dtype=bool)
            for _ in range(_MAX_HALVINGS + 2):
                r_t, c_t = r.copy(), c.copy()
                r_t[moving] += alpha * dr * scale
                c_t[moving] += alpha * dc * scale
                f_try = f + alpha * (f_t - f)
                sky_try = sky + alpha * (sky_t - sky)
                b_try = None if bcoef is None else bcoef + alpha * (b_t - bcoef)
                trial = design(r_t, c_t, True)
                chi2_t = weighted_chi2_image(D, trial[0].dot(np.nan_to_num(f_try)) + sky_try, ivar)
                if float(chi2_t.sum()) <= history[-1] * (1 + 1e-12) or np.all(alpha * step < tol_k):
                    accepted = True
                    break
                old_k = stamp_sum(L, chi2_img)[moving]
                new_raised = (stamp_sum(L, chi2_t)[moving] > old_k + np.maximum(1.0, 1e-6 * old_k)) & ~raised
                new_raised &= scale > 0
                if new_raised.any() and new_raised.sum() < m:
                    raised |= new_raised
                    scale[new_raised] = 0.0
                else:
                    raised |= new_raised
                    alpha /= 2
            if accepted:
                r, c, f, sky, bcoef = r_t, c_t, f_try, sky_try, b_try
                lam[moving] = np.maximum(lam[moving] * _LAM_DOWN, _LAM_MIN)
                prev_dr[:] = 0.0
                prev_dc[:] = 0.0
                prev_dr[moving] = alpha * dr * scale
                prev_dc[moving] = alpha * dc * scale
                L, dR, dC = trial
                chi2_img = chi2_t
                nL, nR, nC = column_norms(ivar, L, dR, dC)
            raised_idx = moving[raised]
            lam[raised_idx] = np.minimum(lam[raised_idx] * _LAM_UP / _LAM_DOWN, _LAM_MAX)
            if not accepted:
                lam[moving] = np.minimum(lam[moving] * _LAM_UP, _LAM_MAX)
            if accepted:
                # the step taken (a source's step shrinks with its clamp while it oscillates:
                # a trust region below the tolerance counts as converged)
                step = step * alpha * scale
                step[raised | blocked] = np.inf  # withdrawn: not converged this iteration
            last_step[:] = 0.0
            last_step[moving] = step / tol_k  # in units of each source's tolerance
            rejected.append(int(raised_idx.size))
            history.append(float(chi2_img.sum()))
            stage_iter += 1
            settled = accepted and np.all(step < _SETTLED)
            if stage + 1 < len(levels) and (settled or stage_iter >= _STAGE_ITER):
                stage, stage_iter = stage + 1, 0
            new_moving = who_moves(f, levels[stage])
            # converged: last stage, every step below its tolerance while (almost) undamped,
            # and no source newly above the threshold (one that drops below it stops moving)
            last_stage = stage == len(levels) - 1 and np.isin(new_moving, moving).all()
            stalled = (
                stage_iter >= _STALL_ITER
                and len(history) > _STALL_ITER
                and history[-1 - _STALL_ITER] - history[-1] < max(_STALL_DCHI2, _STALL_RTOL * history[-1])
                and np.sum(~(step < tol_k)) <= _STALL_FRAC * m
            )
            if last_stage and (
                (accepted and np.all(step < tol_k) and np.all(lam[moving] <= 1.0)) or stalled
            ):
                converged = True
                break
            moving = new_moving

        # ---- uncertainties: one undamped linearisation at the final positions ------------
        # every source whose position changed gets its error (and moved=True), also one that
        # stopped moving before the end (S/N fell below min_snr, or held): 7 of 30 crowded test
        # scenes reported such a position, up to 0.87 px from its start, as not moved, no error
        moving = np.union1d(moving, np.flatnonzero((r != r0) | (c != c0)))
        m = moving.size
        try:
            res = solve(L, dR, dC, f, moving, np.zeros(n), True, flux_damping=0.0)
        except SingularNormalMatrixError:
            # a blend so close that position and flux trade off exactly: report the
            # uncertainties of the (barely) damped system instead, and say so
            warnings.warn(
                "the undamped normal matrix at the final positions is singular (a nearly "
                "degenerate blend); position and flux uncertainties come from the system damped "
                f"by {_LAM_MIN:g} x its diagonal",
                RuntimeWarning,
                stacklevel=2,
            )
            res = solve(L, dR, dC, f, moving, np.full(n, _LAM_MIN), True)
    err = res.weights_err
    row_err = np.full(n, np.nan)
    col_err = np.full(n, np.nan)
    row_err[moving] = err[n : n + m]
    col_err[moving] = err[n + m :]
    moved = np.zeros(n, dtype=bool)
    moved[moving] = True
    src_conv = last_step < 1.0
    return PositionFitResult(
        row=r,
        col=c,
        row_err=row_err,
        col_err=col_err,
        # the state chi2 and the model are of (the last solve gives the errors, and NaN for a
        # source without data at its final position: a column of zeros has no flux)
        flux=np.where(np.isnan(res.weights[:n]), np.nan, f),
        flux_err=err[:n],
        moved=moved,
        source_converged=src_conv,
        converged=bool(converged),
        n_iter=n_iter,
        chi2=history[-1],
        chi2_history=np.asarray(history),
        n_rejected=np.asarray(rejected, dtype=int),
        n_pixels=pw.n_pixels,
        design=L,
        background=bcoef,
        background_err=getattr(res, "background_err", None) if background is not None else None,
        background_image=None if background is None else np.broadcast_to(sky, (H, W)).copy(),
    )
