"""Frame jitter: one common sub-pixel shift per frame, fitted with every star's flux in every frame.

The model of frame ``t`` is ``sum_k f_kt PSF(x - r_k - dr_t, y - c_k - dc_t)``: known star
positions, a pointing offset per frame, free fluxes (light curves). :func:`fit_jitter`
solves it by Gauss-Newton per frame with the model **rebuilt** at the current shifts every
iteration, so the fixed point is the least-squares fit itself (a model linearised once
around the mean pointing leaves a second-order error that dominates the light-curve
scatter for jitter of a few tenths of a pixel).

One factorisation per iteration
-------------------------------
Each frame's Gauss-Newton system is bordered::

    [ N_t   B_t ] [ f  ]   [ L_t^T C^-1 d_t ]        N_t = L_t^T C^-1 L_t   (n x n, sparse)
    [ B_t^T G_t ] [ ds ] = [ g_t^T C^-1 d_t ]        g_t = [dL_t/drow f_t, dL_t/dcol f_t]

with ``L_t`` the PSF model at frame ``t``'s shift and ``g_t`` the two images of the shift
derivative. It is solved by the Schur complement on the 2 shift unknowns, which needs
``N_t^-1`` applied to three right-hand sides. ``N_t`` differs between frames only through
the sub-pixel sampling phase, so instead of factorising it per frame we factorise
``N_bar`` (the model at the mean shift, :func:`sparse3d.fit.prepare_normal_equations`)
once per iteration and use it as the preconditioner of conjugate gradients on the exact
``N_t`` -- run for all frames and right-hand sides at once, so the preconditioner is one
blocked triangular solve with ``3 * nframes`` columns per CG step. CG converges in a few
steps (``N_bar^-1 N_t`` is close to the identity); the result is the exact Gauss-Newton
step, unlike using ``N_bar`` in place of ``N_t`` (a bordered solve at the mean pointing),
whose fixed point is biased by the mismatch.

Measured (``benchmarks/photometry_bench.py jitter``: 256², 500 stars, 100 frames, 0.3 px rms):
light-curve scatter 1.001x that of a flux fit at the true shifts, in 5 iterations with 10 CG
steps each. The error map is shared by all frames and is not shift-invariant (bright stars
move across their own noise), so each frame's preconditioner is rescaled by
``sqrt(diag(N_bar) / diag(N_t))``: without it CG took 35-55 steps. The bordered solve with
``N_bar`` in place of ``N_t`` did not converge in 30 iterations (shift errors 0.025 px,
scatter 3.6x). With only hundreds of stars a factorisation is cheap, and factorising every
frame is faster there (fit_jitter 6.3 s against 1.0 s for one flux fit per frame at known
shifts, same run); the single factorisation is meant for scenes where the factorisation
dominates (many crowded stars), which has not been measured yet.

Uncertainties
-------------
``shifts_err`` comes from each frame's Schur complement at the last linearisation, the fluxes
marginalised. That is at the reported state: when the fit stops without converging (``max_iter``)
it is linearised once more there (the errors of the state before the last step were up to 80 %
off after one iteration). ``flux_err`` is the flux part of the same frame's inverse: ``diag(N_t^-1)`` from
one factorisation and selected inversion of the frame's own flux matrix (at the end, one per
frame: 0.7 s of a 6 s fit of tutorial 7's 1,500 stars in 50 frames) plus the shift term. The
matrix at the mean pointing is no stand-in there: a star near an edge keeps a different part
of its PSF in every frame.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse

from ._inputs import check_positions, fit_maps, pixel_weights
from ._linearise import column_norms, design_at, stamp_shape_arg

_MAX_HALVINGS = 6


@dataclass(frozen=True, eq=False)
class JitterFitResult:
    """Result of :func:`fit_jitter`.

    Attributes
    ----------
    shifts : numpy.ndarray
        ``(nframes, 2)``: the fitted ``(drow, dcol)`` of every frame, pixels; star ``k`` is
        at ``(row[k] + drow, col[k] + dcol)`` in that frame. NaN (and NaN errors) for a frame
        whose shift no star constrains (the frame wholly masked, or no stars).
    shifts_err : numpy.ndarray
        ``(nframes, 2)``: their 1-sigma uncertainties (the fluxes marginalised: the
        inverse of the Schur complement of the last linearisation, at the reported state or,
        when converged, within ``tol`` of it).
    flux : numpy.ndarray
        ``(nsources, nframes)``: every star's flux in every frame (light curves); NaN for
        stars without data at the mean pointing, and in a frame where the star has no data
        (its stamp wholly masked in that frame, or off the image at that frame's shift).
    flux_err : numpy.ndarray
        ``(nsources, nframes)``: 1-sigma flux uncertainties, marginalised over the frame's
        shift (as ``shifts_err`` is over the fluxes): ``diag(N_t^-1)`` of the frame's own flux
        normal matrix (its weights, its shift; one factorisation and selected inversion per
        frame) plus the variance the shift's uncertainty adds through the flux-shift
        correlation (the Schur complement), both at the last linearisation: the diagonal of
        the inverse of the frame's whole ``[fluxes, shift]`` normal matrix. Without the shift
        term a frame of 8 stars had errors 3–15 % too small; ``diag(N^-1)`` at the mean
        pointing instead of the frame's was 10 % to 2x off for stars near an edge.
    chi2 : numpy.ndarray
        ``(nframes,)`` chi-square of every frame at the fitted shifts and fluxes.
    chi2_history : numpy.ndarray
        ``(n_iter + 1, nframes)``: per frame, at the start (fluxes fitted at the start
        shifts) and after every iteration.
    converged : bool
        Every frame's last shift step was below ``tol``.
    n_iter : int
        Gauss-Newton iterations.
    n_factorizations : int
        Sparse factorisations of the fit: one at the start (reused by the first iteration),
        then one per iteration, and one for the errors at the reported state when the fit did
        not converge. (``flux_err`` takes one more per frame, at the end.)
    cg_iterations : numpy.ndarray
        Conjugate-gradient steps of each solve (the start, every iteration, and the errors at
        the reported state when the fit did not converge).
    """

    shifts: np.ndarray
    shifts_err: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    chi2: np.ndarray
    chi2_history: np.ndarray
    converged: bool
    n_iter: int
    n_factorizations: int
    cg_iterations: np.ndarray


class _Frames:
    """The PSF model of every frame at its shift: CSR designs (free sources) and derivative images."""

    def __init__(self, psf, row, col, shifts, geometry, free, derivatives, flux=None):
        self.L = []
        self.g = []  # (npix, 2) per frame: dL/drow f, dL/dcol f
        for t, (sr, sc) in enumerate(shifts):
            L, dR, dC = design_at(psf, row + sr, col + sc, *geometry, derivatives)
            csr = L.tocsr()
            self.L.append(csr if free.all() else csr[:, free])
            if derivatives and flux is not None:
                ft = np.nan_to_num(flux[:, t])
                self.g.append(np.stack([dR.dot(ft).ravel(), dC.dot(ft).ravel()], axis=1))


def _known_shift_variances(
    frames: _Frames, w, imshape: tuple[int, int], solver: str
) -> tuple[np.ndarray, np.ndarray]:
    """``diag(N_t^-1)`` of every frame's flux normal matrix at its last linearisation, with the
    frame's own weights, and whether the star has data in the frame (a pixel of non-zero weight
    and model: a positive diagonal of ``N_t``): two ``(nfree, nframes)`` arrays (the variance
    is NaN where the star has no data).

    One factorisation and selected inversion per frame. The matrix at the mean pointing is no
    stand-in: a star near an edge keeps a different part of its PSF in every frame (its
    ``diag(N^-1)`` moved by 10 % to 2x in the tests), and a blend changes with the sampling.
    """
    from ..fit import UnconstrainedSourceWarning, prepare_normal_equations

    shape = (frames.L[0].shape[1] if frames.L else 0, len(frames.L))
    var, has_data = np.empty(shape), np.empty(shape, dtype=bool)
    for t, Lt in enumerate(frames.L):
        errors, mask = fit_maps(np.asarray(w(t)).reshape(imshape))
        with warnings.catch_warnings():  # a star off the image in this frame: NaN, as documented
            warnings.simplefilter("ignore", UnconstrainedSourceWarning)
            ne = prepare_normal_equations(Lt, imshape=imshape, errors=errors, mask=mask, solver=solver)
            var[:, t] = ne.weights_err() ** 2
        has_data[:, t] = ne.free
    return var, has_data


def _constrains_shift(S: np.ndarray) -> bool:
    """Whether a frame's ``2 x 2`` shift precision (Schur complement) ``S`` is positive definite."""
    tr = S[0, 0] + S[1, 1]
    det = S[0, 0] * S[1, 1] - S[0, 1] * S[1, 0]
    return bool(np.isfinite(det) and tr > 0 and det > 1e-12 * tr * tr)


def _pcg(apply_N, precond, B, tol, maxiter):
    """Preconditioned conjugate gradients on many independent right-hand sides at once.

    ``apply_N(X)`` and ``precond(R)`` act column by column on ``(n, m)`` blocks (column
    ``j`` may have its own matrix: each frame has its own ``N_t``). Returns the solutions
    and the number of steps.
    """
    X = np.zeros_like(B)
    R = B.copy()
    Z = precond(R)
    P = Z.copy()
    rz = np.einsum("ij,ij->j", R, Z)
    bnorm = np.linalg.norm(B, axis=0)
    bnorm[bnorm == 0] = 1.0
    steps = 0
    for steps in range(1, maxiter + 1):  # noqa: B007 - reported
        Q = apply_N(P)
        pq = np.einsum("ij,ij->j", P, Q)
        with np.errstate(invalid="ignore", divide="ignore"):
            alpha = np.where(pq > 0, rz / pq, 0.0)
        X += alpha * P
        R -= alpha * Q
        if np.all(np.linalg.norm(R, axis=0) <= tol * bnorm):
            break
        Z = precond(R)
        rz_new = np.einsum("ij,ij->j", R, Z)
        with np.errstate(invalid="ignore", divide="ignore"):
            beta = np.where(rz > 0, rz_new / rz, 0.0)
        P = Z + beta * P
        rz = rz_new
    return X, steps


def fit_jitter(
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
    shifts: np.ndarray | None = None,
    max_iter: int = 20,
    tol: float = 1e-5,
    cg_tol: float = 1e-10,
    cg_maxiter: int = 100,
    solver: str = "auto",
) -> JitterFitResult:
    """Fit one common ``(drow, dcol)`` per frame of a stack, with every star's flux in every frame.

    Parameters
    ----------
    psf : PSF model
        Anything with the :mod:`sparse3d.psf` ``design(..., derivatives=("row", "col"))``.
    data : array_like, shape (H, W, nframes)
        The frames, stacked along the last axis (the layout ``S.dot(lightcurves)`` gives): an
        array, a masked array or an ``NDData``-like object, as :func:`sparse3d.fit.check_inputs`
        accepts (fluxes come out in its unit, as plain numbers).
    row, col : numpy.ndarray, shape (nsources,)
        Star positions at zero shift (absolute pixels; integers are pixel centres).
    imshape, stamp_shape, imcorner
        As in :func:`fit_positions`.
    errors : numpy.ndarray, optional
        1-sigma uncertainties, ``(H, W)`` or the shape of ``data``; ``np.inf`` masks.
    mask : numpy.ndarray of bool, optional
        ``(H, W)`` or the shape of ``data``; True marks pixels to ignore.
    dq : numpy.ndarray of int, optional
        Data-quality bitmask, ``(H, W)`` or the shape of ``data``: pixels with
        ``dq & bad_bits != 0`` are masked.
    bad_bits : int, optional
        The bits of ``dq`` that mark bad pixels; required with ``dq``.
    shifts : numpy.ndarray, optional
        ``(nframes, 2)`` start shifts; zeros by default. Gauss-Newton on a PSF of width
        ``sigma`` converges from anywhere within about ``sigma`` of the truth.
    max_iter : int
        Largest number of Gauss-Newton iterations.
    tol : float
        Convergence: every frame's shift step below ``tol`` pixels.
    cg_tol, cg_maxiter : float, int
        Relative residual and step limit of the preconditioned conjugate gradients.
    solver : str
        Sparse solver of the preconditioner, as in :func:`sparse3d.fit.fit_design`.

    Returns
    -------
    JitterFitResult

    Raises
    ------
    ValueError
        When an argument has the wrong shape or value (the message names it).
    """
    from ..fit import prepare_normal_equations

    pw = pixel_weights(data, errors, mask, ndim=3, dq=dq, bad_bits=bad_bits, imshape=imshape)
    D = pw.data
    H, W = D.shape[:2]
    K = D.shape[2]
    r, c = check_positions(row, col)
    n = r.size
    if shifts is None:
        s = np.zeros((K, 2))
    else:
        s = np.array(shifts, dtype=np.float64)
        if s.shape != (K, 2) or not np.all(np.isfinite(s)):
            raise ValueError(f"shifts must be finite with shape (nframes, 2) = ({K}, 2), got shape {s.shape}")
    if int(max_iter) != max_iter or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative integer, got {max_iter!r}")
    for name, v in (("tol", tol), ("cg_tol", cg_tol)):
        if not (np.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a finite positive number, got {v!r}")
    geometry = ((H, W), stamp_shape_arg(stamp_shape), tuple(imcorner))
    npix = H * W
    Dm = D.reshape(npix, K)
    ivar = pw.ivar.reshape(npix, -1)  # (npix, 1) shared, or (npix, K)

    def w(t):
        return ivar[:, 0] if ivar.shape[1] == 1 else ivar[:, t]

    n_fact = 0
    cg_steps: list[int] = []

    def factorise(shift):
        nonlocal n_fact
        L, _, _ = design_at(psf, r + shift[0], c + shift[1], *geometry, False)
        ne = prepare_normal_equations(
            L, imshape=(H, W), errors=pw.fit_errors, mask=pw.fit_mask, solver=solver
        )
        n_fact += 1
        # diag(N_bar) on the free sources, for the per-frame diagonal rescaling below
        ne_diag = column_norms(
            np.where(pw.fit_mask, 0.0, pw.fit_errors**-2.0)
            if pw.fit_mask is not None
            else pw.fit_errors**-2.0,
            L,
        )[0]
        return ne, ne_diag[ne.free[:n]]

    def flux_solver(frames, ne):
        """``N_t^-1`` on ``per`` columns per frame, by PCG preconditioned by ``N_bar``.

        The ``N_t`` are formed once (sparse, ``n x n`` each) and applied as one
        block-diagonal product to all frames' columns. The preconditioner of frame ``t`` is
        ``S_t N_bar^-1 S_t`` with ``S_t = sqrt(diag(N_bar) / diag(N_t))``: each star's own
        weight changes most from frame to frame (it moves across the error map), and the
        rescaling takes that out at no cost.
        """
        ne, nbar_diag = ne
        Nts = [(Lt.T @ scipy.sparse.diags(w(t)) @ Lt) for t, Lt in enumerate(frames.L)]
        with np.errstate(divide="ignore", invalid="ignore"):
            scale = np.stack([np.sqrt(nbar_diag / Nt.diagonal()) for Nt in Nts], axis=1)  # (nf, K)
        scale[~np.isfinite(scale)] = 1.0
        Nblk = scipy.sparse.block_diag(Nts, format="csr")

        def solve(B, per):
            def apply_N(X):
                Xs = X.reshape(nf, K, per).transpose(1, 0, 2).reshape(K * nf, per)
                return (Nblk @ Xs).reshape(K, nf, per).transpose(1, 0, 2).reshape(nf, K * per)

            sc = np.repeat(scale, per, axis=1)  # column j of B belongs to frame j // per

            def precond(R):
                # S_t N_bar^-1 S_t on the free sources (solve_rhs takes and returns original units)
                return sc * ne.solve_rhs(sc * R)

            X, steps = _pcg(apply_N, precond, B, cg_tol, cg_maxiter)
            cg_steps.append(steps)
            return X

        return solve

    def frame_chi2(frames, F):
        out = np.empty(K)
        for t, Lt in enumerate(frames.L):
            res = Dm[:, t] - Lt @ F[:, t]
            out[t] = np.sum(w(t) * res * res)
        return out

    # ---- start: fluxes at the start shifts --------------------------------------------
    ne = factorise(s.mean(axis=0))
    free = ne[0].free[:n]
    nf = int(free.sum())
    frames = _Frames(psf, r, c, s, geometry, free, False)
    B = np.stack([Lt.T @ (w(t) * Dm[:, t]) for t, Lt in enumerate(frames.L)], axis=1)
    F = flux_solver(frames, ne)(B, 1)  # (nfree, K)
    chi2 = frame_chi2(frames, F)
    history = [chi2]
    shifts_err = np.full((K, 2), np.nan)
    lost = np.zeros(K, dtype=bool)  # frames whose shift no star constrains
    # per frame, what the shift's uncertainty adds to each flux variance: diag(X12 S^-1 X12^T)
    # (the Schur complement; fluxes and shift are correlated: without it the flux errors are
    # those at a known shift, several per cent too small for a frame of few stars)
    shift_var = np.zeros((nf, K))
    converged = False
    n_iter = 0

    def full_flux(F):
        out = np.full((n, K), np.nan)
        out[free] = F
        return out

    def linearise(ne):
        """One Gauss-Newton linearisation of every frame at ``(s, F)`` with the factorisation
        ``ne`` at the mean pointing: ``(frames, ds, Fn)``, the designs, the shift steps and the
        new fluxes; sets ``shifts_err``, ``shift_var`` and ``lost`` of that state."""
        frames = _Frames(psf, r, c, s, geometry, free, True, full_flux(F))
        # three right-hand sides per frame: L^T C^-1 [d, g_row, g_col]
        B = np.empty((nf, 3 * K))
        Gm = np.empty((K, 2, 2))
        h = np.empty((K, 2))
        for t, Lt in enumerate(frames.L):
            wt = w(t)
            gt = frames.g[t]
            B[:, 3 * t] = Lt.T @ (wt * Dm[:, t])
            B[:, 3 * t + 1 : 3 * t + 3] = Lt.T @ (wt[:, None] * gt)
            Gm[t] = gt.T @ (wt[:, None] * gt)
            h[t] = gt.T @ (wt * Dm[:, t])
        X = flux_solver(frames, ne)(B, 3)
        ds = np.empty((K, 2))
        Fn = np.empty((nf, K))
        for t in range(K):
            X0, X12 = X[:, 3 * t], X[:, 3 * t + 1 : 3 * t + 3]
            Bt = B[:, 3 * t + 1 : 3 * t + 3]
            S = Gm[t] - Bt.T @ X12  # Schur complement of N_t: the shifts' precision
            lost[t] = not _constrains_shift(S)
            if lost[t]:
                # no star gives this frame's shift any information (the frame wholly masked,
                # no stars): the shift is unconstrained, NaN in the result, and held here
                ds[t] = 0.0
                Fn[:, t] = X0
                shifts_err[t] = np.nan
                shift_var[:, t] = 0.0
                continue
            Sinv = np.linalg.inv(S)
            ds[t] = Sinv @ (h[t] - Bt.T @ X0)
            Fn[:, t] = X0 - X12 @ ds[t]
            shifts_err[t] = np.sqrt(np.diag(Sinv))
            shift_var[:, t] = np.einsum("ij,jk,ik->i", X12, Sinv, X12)
        return frames, ds, Fn

    while n_iter < max_iter:
        n_iter += 1
        if n_iter > 1:
            ne = factorise(s.mean(axis=0))
        frames, ds, Fn = linearise(ne)
        # accept per frame when its chi-square does not rise; otherwise halve the step
        alpha = np.ones(K)
        pending = np.arange(K)
        new_s = s.copy()
        new_F = F.copy()
        new_chi2 = chi2.copy()
        for _ in range(_MAX_HALVINGS + 1):
            trial_s = s[pending] + alpha[pending, None] * ds[pending]
            trial_F = F[:, pending] + alpha[pending] * (Fn[:, pending] - F[:, pending])
            tf = _Frames(psf, r, c, trial_s, geometry, free, False)
            c2 = np.empty(pending.size)
            for i, (t, Lt) in enumerate(zip(pending, tf.L)):
                res = Dm[:, t] - Lt @ trial_F[:, i]
                c2[i] = np.sum(w(t) * res * res)
            ok = c2 <= chi2[pending] * (1 + 1e-12) + 1e-300
            new_s[pending[ok]] = trial_s[ok]
            new_F[:, pending[ok]] = trial_F[:, ok]
            new_chi2[pending[ok]] = c2[ok]
            pending = pending[~ok]
            if pending.size == 0:
                break
            alpha[pending] /= 2
        step = np.hypot(ds[:, 0], ds[:, 1])
        s, F, chi2 = new_s, new_F, new_chi2
        history.append(chi2)
        if np.all(step < tol):
            converged = True
            break

    if not converged:
        # the errors describe the reported state: linearised once more at it unless the last
        # step was below tol (after one iteration they were up to 80 % off a dense inverse at
        # the reported shifts; with max_iter=0, shifts_err was NaN and flux_err had no shift term)
        frames = linearise(factorise(s.mean(axis=0)))[0]
    known, has_data = _known_shift_variances(frames, w, (H, W), solver)
    flux_err = np.full((n, K), np.nan)
    flux_err[free] = np.sqrt(known + shift_var)
    # a star without data in a frame (its stamp wholly masked there, or off the image at that
    # shift) has no flux there: NaN, not the arbitrary value its column of N_t (all zeros) lets
    # conjugate gradients leave in it
    flux = full_flux(F)
    flux[free] = np.where(has_data, flux[free], np.nan)
    return JitterFitResult(
        shifts=np.where(lost[:, None], np.nan, s),
        shifts_err=shifts_err,
        flux=flux,
        flux_err=flux_err,
        chi2=chi2,
        chi2_history=np.asarray(history),
        converged=converged,
        n_iter=n_iter,
        n_factorizations=n_fact,
        cg_iterations=np.asarray(cg_steps, dtype=int),
    )
