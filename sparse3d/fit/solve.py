"""The driver: :func:`fit_design` fits a design matrix to one image or a frame stack.

It validates the inputs (:mod:`._checks`), groups the frames by identical error maps,
builds and factorises one :class:`~sparse3d.fit.NormalEquations` per distinct map
(:mod:`.normal`, :mod:`.factor`), solves every frame of a group with that factor and returns
a :class:`~sparse3d.fit.FitResult` (:mod:`.result`) whose model and weight uncertainties
are computed on first access.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse

from .. import _pool
from ..core import Sparse3D
from ._checks import (
    _check_data_finite,
    _check_design,
    _check_errors,
    _check_imshape,
    _check_mask,
    _check_prior,
    _check_solver,
    _error_scale,
    _inverse_variance,
)
from ._inputs import _read_inputs
from .assemble import _design_matrix, _regular_stamps
from .background import as_background
from .diagnostics import _FitContext, _Group
from .normal import _CELLS_MAX_FRAMES, NormalEquations, _fit_design
from .result import FitResult, _warn_unconstrained, _weights_err
from .rhs import _Ahead, _kept_all_finite


def fit_design(
    A: Sparse3D | scipy.sparse.spmatrix | scipy.sparse.sparray,
    data: Any,
    *,
    imshape: tuple[int, int],
    errors: Any = None,
    prior_mu: float | np.ndarray | None = None,
    prior_sigma: float | np.ndarray | None = None,
    mask: np.ndarray | None = None,
    background: Any = None,
    dq: np.ndarray | None = None,
    bad_bits: int | None = None,
    saturation: float | None = None,
    return_errors: bool = True,
    solver: str = "auto",
) -> FitResult:
    """Fit the weights of a sparse design matrix (and a background) to an image or a frame stack.

    Solves the weighted linear least-squares problem
    ``min sum(((d - A w - B b) / errors)**2) + sum(((w - prior_mu) / prior_sigma)**2)``
    over the unmasked pixels, through the normal equations of the joint design ``[A, B]``
    (``B``: the columns of the background model, if any), with a sparse Cholesky
    factorisation that is computed once per distinct error map and mask and reused for
    every frame.

    Parameters
    ----------
    A : Sparse3D or scipy.sparse matrix or array, shape (H * W, n)
        Design matrix; column ``j`` is the image of source ``j`` with unit
        weight, raveled in C order.
    data : array_like, shape (H, W) or (H, W, k)
        One image, or a stack of ``k`` frames along the last axis.  Also accepted: a
        ``numpy.ma.MaskedArray`` (its mask is honoured, combined with ``mask``), an
        astropy ``Quantity`` (the weights then carry its unit), and an astropy
        ``NDData``/``CCDData``-like object (duck-typed: ``.data``, ``.mask``,
        ``.uncertainty`` of type ``"std"``, ``"var"`` or ``"ivar"``, ``.unit``).
    imshape : tuple of int
        ``(H, W)``, the shape of one image.
    errors : array_like, optional
        Per-pixel 1-sigma uncertainties, shape ``(H, W)`` (shared by all
        frames) or the shape of ``data``; positive, and finite or ``np.inf``
        (``np.inf`` masks the pixel).  A ``Quantity`` when the data has a unit (it is
        converted to the data's unit; a plain array next to unit data is refused).  None
        means unit errors (ordinary least squares).  A stack whose frames have different
        error maps needs one factorisation per distinct map (frames with identical maps
        are grouped); errors shared by all frames are the fast path.
    prior_mu : float or numpy.ndarray, optional
        Mean of the Gaussian prior on each weight, scalar or shape ``(n,)``.
        Defaults to 0 when ``prior_sigma`` is given; requires ``prior_sigma``.  Priors are
        in the data's unit: with ``Quantity`` data, plain numbers or Quantities (converted;
        a Quantity prior next to plain data is refused).
    prior_sigma : float or numpy.ndarray, optional
        Standard deviation of the Gaussian prior on each weight, scalar or
        shape ``(n,)``; must be positive, ``np.inf`` meaning no prior for that
        source.  Priors also constrain sources with little or no data.  The
        background coefficients get no prior unless their model has one.
    mask : numpy.ndarray of bool, optional
        Shape ``(H, W)`` (shared by all frames) or ``(H, W, k)`` (per frame: one
        factorisation per distinct mask); True marks pixels to *ignore*.  Masked pixels
        may hold non-finite data or errors.  Integers are accepted only as 0/1: a
        data-quality bitmask goes to ``dq``.
    background : optional
        The sky, solved jointly with the weights: None (default), ``"constant"``,
        ``"plane"``, ``("poly", order)``, ``("grid", tile)`` or a
        :class:`~sparse3d.fit.BackgroundModel` (:class:`~sparse3d.fit.Polynomial`,
        :class:`~sparse3d.fit.BilinearGrid`).  A stack gets one background per frame.
    dq : numpy.ndarray of int, optional
        Data-quality bitmask, shape ``(H, W)`` or that of ``data``; pixels with
        ``dq & bad_bits != 0`` are masked.  Requires ``bad_bits``.
    bad_bits : int, optional
        The bits of ``dq`` that mark bad pixels (e.g. ``0b1010``).
    saturation : float, optional
        Saturation level: pixels with ``data >= saturation`` are masked, and the sources
        touching them flagged ``SATURATED``.
    return_errors : bool, optional
        If True (default) ``weights_err``, ``background_err`` and :meth:`FitResult.covariance`
        are available; they are computed on first access and keep the factorisation
        alive.  If False they are None and the factorisation is freed.
    solver : {"auto", "nd", "qdldl", "superlu", "cholmod"}, optional
        Sparse solver.  ``"auto"`` uses the built-in ``"nd"`` (nested dissection from the
        stamp positions, supernodal Cholesky) for a large design of regular stamps, else
        ``"qdldl"`` (AMD ordering); ``"superlu"`` is SciPy's; ``"cholmod"`` needs the
        optional, GPL-licensed ``cvxopt``.

    Returns
    -------
    FitResult
        Weights, background, chi-square and (lazily) the model, residuals, uncertainties,
        per-source chi-square, flags and covariances.

    Raises
    ------
    ValueError
        If an argument has the wrong shape, invalid values, or is ambiguous (the message
        names the argument), and when the units of data and errors disagree.
    SingularNormalMatrixError
        If the normal matrix is singular although every parameter has data,
        e.g. two sources with identical columns and no prior.  A parameter
        whose Cholesky pivot is below ``PIVOT_RTOL`` (1e-10) times its
        diagonal entry of the normal matrix counts as dependent; the
        exception's ``sources`` attribute lists them (indices ``>= n`` are
        background coefficients).  Subclass of :class:`numpy.linalg.LinAlgError`.

    Warns
    -----
    UnconstrainedSourceWarning
        Once, with their number, when some sources have no unmasked pixel in
        the image and no prior; their weights and uncertainties are NaN and
        the other sources are fitted normally.

    Notes
    -----
    The uncertainties are ``sqrt(diag(N^-1))`` with ``N`` the normal matrix
    above (including the prior precision and the background block), computed
    exactly by supernodal selected inversion of the Cholesky factor -- no
    dense inverse is formed.

    Examples
    --------
    >>> import numpy as np, scipy.sparse
    >>> A = scipy.sparse.random(16, 3, density=0.6, random_state=0, format="csr")
    >>> truth = np.array([1.0, 2.0, 3.0])
    >>> res = fit_design(A, (A @ truth).reshape(4, 4) + 5.0, imshape=(4, 4), background="constant")
    >>> np.allclose(res.weights, truth), np.allclose(res.background, [5.0])
    (True, True)
    """
    # ---- validate -------------------------------------------------------
    solver = _check_solver(solver)
    if not isinstance(return_errors, (bool, np.bool_)):  # "no" or 0.0 would read as a choice
        raise TypeError(f"return_errors must be True or False, got {return_errors!r}")
    H, W = _check_imshape(imshape)
    npix = H * W
    n = _check_design(A, npix, imshape)

    inputs = _read_inputs(data, errors, mask, dq, bad_bits)
    data, errors = inputs.data, inputs.errors
    if data.ndim not in (2, 3) or data.shape[:2] != (H, W):
        raise ValueError(f"data must have shape (H, W) = {(H, W)} or (H, W, k), got {data.shape}")
    stack = data.ndim == 3
    k = data.shape[2] if stack else 1
    D = data.reshape(npix, k)
    if D.dtype != np.float64:
        D = D.astype(np.float64)

    E: np.ndarray | None = None
    if errors is not None:
        if errors.shape == (H, W):
            E = errors.reshape(npix, 1)
        elif errors.shape == data.shape:
            E = errors.reshape(npix, k)
        else:
            raise ValueError(
                f"errors must have shape {(H, W)} or the shape of data {data.shape}, got {errors.shape}"
            )

    keep = _check_mask(inputs.mask, H, W, k if stack else None)  # (npix, 1 or k); None: all pixels
    saturated = None
    if saturation is not None:
        level = _check_saturation(saturation)
        with np.errstate(invalid="ignore"):
            sat = D >= level
        if sat.any():
            saturated = sat
            keep = ~sat if keep is None else keep & ~sat
    per_frame_mask = keep is not None and keep.shape[1] > 1
    n_pixels: int | np.ndarray = npix if keep is None else int(keep[:, 0].sum())
    if per_frame_mask:
        n_pixels = keep.sum(axis=0)
    # a large Sparse3D of regular stamps stays one (right-hand sides from the stamps); its
    # sparse matrix is made only if the model or a diagnostic asks for it
    A_fit = _fit_design(A)
    stamps = _regular_stamps(A_fit)
    # many frames (one error map and mask): non-finite kept data makes its frame's chi-square
    # non-finite (its square sum, made by the fit anyway, in the worker of the right-hand sides
    # or in one compiled pass), so the explicit check of the data (a pass over the whole stack)
    # runs only then, after the solve; any error raised before it (errors, prior, factorisation)
    # waits for the check, so that non-finite data raises the same error first, before any
    # result or warning
    pending = k > _CELLS_MAX_FRAMES

    def check_data() -> None:
        nonlocal pending
        pending = False
        if not (isinstance(A_fit, Sparse3D) and D.flags.c_contiguous and _kept_all_finite(D, keep)):
            _check_data_finite(D, keep)  # (numba is loaded on the stamp path: one compiled pass)

    if not pending:
        check_data()
    try:
        if E is not None:
            _check_errors(E, keep)
        # (npix, g) scaled inverse variances (err_scale / errors)**2, 0 where masked, one column per
        # distinct map and mask; None: unit errors, no mask
        err_scale = _error_scale(E, keep)
        ivar = _inverse_variance(E, keep, err_scale)
        groups = [] if (ivar is not None and ivar.shape[1] == 0) else [np.arange(k)]  # no frames
        if ivar is not None and ivar.shape[1] > 1:
            groups = _frame_groups(ivar)
            ivar = ivar[:, [int(g[0]) for g in groups]]
        col_of_frame = None
        if len(groups) > 1:
            col_of_frame = np.empty(k, dtype=np.intp)
            for gi, frames in enumerate(groups):
                col_of_frame[frames] = gi

        bg = as_background(background)
        B = None if bg is None else bg.columns((H, W))
        prior_prec, mu = _check_prior(prior_mu, prior_sigma, n, unit=inputs.unit)
        if B is not None:
            bprec, bmu = bg.prior(B.shape[1], inputs.unit)
            prior_prec, mu = np.concatenate([prior_prec, bprec]), np.concatenate([mu, bmu])
        made: list = []

        def design_matrix() -> Any:
            if not made:
                made.append(_design_matrix(A_fit) if isinstance(A_fit, Sparse3D) else A_fit)
            return made[0]

        m = n if B is None else n + B.shape[1]

        # ---- one factorisation per distinct error map and mask --------------
        params = np.full((m, k), np.nan) if len(groups) != 1 else None
        chi2 = np.zeros(k)
        fit_groups: list[_Group] = []
        unconstrained = np.zeros(n, dtype=bool)
        used = solver
        for gi, frames in enumerate(groups):
            keep_g = None
            if keep is not None:
                keep_g = keep[:, int(frames[0])] if per_frame_mask else keep[:, 0]
            ivar_g = None if ivar is None else ivar[:, gi]
            # a few frames: the weighted stamps of the normal matrix are kept for their right-hand
            # sides (and a recomputed chi-square), then dropped; many frames: their right-hand sides
            # and square sums in a worker thread meanwhile (the choice by frame count alone: the same
            # bits whatever the machine's load)
            few = len(frames) <= _CELLS_MAX_FRAMES
            if pending and len(groups) > 1:
                check_data()  # before several factorisations
            ahead = (
                _Ahead.start(stamps, D, ivar_g, keep_g, err_scale) if len(groups) == 1 and not few else None
            )
            ne = NormalEquations._build(
                A, A_fit, ivar_g, keep_g, prior_prec, mu, solver, err_scale, B, keep_cells=few
            )
            ne._ahead = ahead
            unconstrained |= ne.unconstrained
            used = ne.solver  # "auto" resolved by the first factorisation
            if len(groups) == 1:
                params, chi2 = ne.solve(D, return_chi2=True)
            else:
                params[:, frames], chi2[frames] = ne.solve(D[:, frames], return_chi2=True)
            ne._cells = None
            factor = ne.factor if return_errors else None
            fit_groups.append(_Group(frames, ne.gram, ne.free, factor, err_scale * ne.col_scale))
            del ne  # the weighted design matrix; the factor lives on in fit_groups
        if pending and not np.isfinite(chi2).all():
            check_data()  # non-finite data, or a chi-square beyond float range
    except Exception:
        if pending:
            check_data()
        raise
    _warn_unconstrained(unconstrained, stacklevel=3)  # via Sparse3D.fit / ROISparse3D.fit

    # ---- model, diagnostics (chi-square came with the solution) ---------
    wz = _zero_nan(params)
    context = _FitContext(
        design_matrix, B, D, (H, W), stack, ivar, col_of_frame, keep, saturated, fit_groups, wz, err_scale
    )

    def model_fn() -> np.ndarray:
        M = design_matrix() @ (wz[:n] if stack else wz[:n, 0])
        if B is not None:
            M += B @ (wz[n:] if stack else wz[n:, 0])
        return M.reshape(H, W, k) if stack else M.reshape(H, W)

    weights_err_fn = None
    if return_errors:
        weights_err_fn = _errors_fn(fit_groups, m, k)

    def one(x: np.ndarray) -> np.ndarray:
        return x if stack else x[:, 0]

    result = FitResult(
        weights=one(params[:n]),
        chi2=chi2 if stack else float(chi2[0]),
        n_pixels=n_pixels,
        unconstrained=unconstrained,
        solver=used,
        n_factorizations=len(groups),
        _model_fn=model_fn,
        _weights_err_fn=weights_err_fn,
        background=None if B is None else one(params[n:]),
        background_model=bg,
        _context=context,
    )
    return result._with_unit(inputs.unit)


def _zero_nan(params: np.ndarray) -> np.ndarray:
    """``params`` with its NaN (unconstrained parameters) as 0: the weights of the lazy model and
    diagnostics, in a buffer lent by the pool (a many-frame fit's ``(m, k)``: after a dropped
    result, pages already in memory; -4.6 ms of 10 at 100 frames on the tutorial scene)."""
    wz = _pool.lend(params.shape, np.float64)
    np.copyto(wz, params)
    nan = np.isnan(params)
    if nan.any():
        wz[nan] = 0.0
    return wz


def _check_saturation(saturation: Any) -> float:
    if hasattr(saturation, "unit"):
        raise ValueError("saturation must be a plain number in the data's unit, not a Quantity")
    try:
        level = float(saturation)
    except (TypeError, ValueError):
        raise ValueError(f"saturation must be a real number, got {saturation!r}") from None
    if np.isnan(level):
        raise ValueError("saturation must not be NaN")
    return level


def _frame_groups(ivar: np.ndarray) -> list[np.ndarray]:
    """Group the frames of an ``(npix, k)`` inverse-variance stack by identical columns.

    The columns are 0 on masked pixels, so frames group by error map *and* mask.  The
    common case, every frame equal to the first, is detected in one pass over row blocks.
    """
    npix, k = ivar.shape
    same = np.ones(k, dtype=bool)
    chunk = max(256, (1 << 18) // max(1, k))
    for i in range(0, npix, chunk):
        block = ivar[i : i + chunk]
        same &= (block == block[:, :1]).all(axis=0)
        if not same.any():
            break
    if same.all():
        return [np.arange(k)]
    buckets: dict[bytes, list[int]] = {}  # content hash -> group ids
    out: list[list[int]] = []
    cols: dict[int, np.ndarray] = {}
    for i in range(k):
        col = np.ascontiguousarray(ivar[:, i], dtype=np.float64)
        key = hashlib.blake2b(col.view(np.uint8), digest_size=16).digest()
        for g in buckets.get(key, []):
            if np.array_equal(col, cols[g]):
                out[g].append(i)
                break
        else:
            buckets.setdefault(key, []).append(len(out))
            cols[len(out)] = col
            out.append([i])
    return [np.asarray(g, dtype=np.intp) for g in out]


def _errors_fn(groups: list[_Group], m: int, k: int) -> Callable[[], np.ndarray]:
    """The parameters' uncertainties on demand: ``(m,)``, or ``(m, k)`` for several groups."""

    def fn() -> np.ndarray:
        if len(groups) == 1:
            return _weights_err(groups[0].factor, groups[0].free, groups[0].scale)
        out = np.empty((m, k))
        for g in groups:
            out[:, g.frames] = _weights_err(g.factor, g.free, g.scale)[:, None]
        return out

    return fn
