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
from functools import partial

import numpy as np
import scipy.sparse

from ..core import Sparse3D
from ._checks import (
    _check_data_finite,
    _check_design,
    _check_errors,
    _check_imshape,
    _check_mask,
    _check_prior,
    _check_real,
    _check_solver,
    _error_scale,
    _inverse_variance,
)
from .normal import NormalEquations, _design_csr
from .result import FitResult, _warn_unconstrained, _weights_err


def fit_design(
    A: Sparse3D | scipy.sparse.spmatrix | scipy.sparse.sparray,
    data: np.ndarray,
    *,
    imshape: tuple[int, int],
    errors: np.ndarray | None = None,
    prior_mu: float | np.ndarray | None = None,
    prior_sigma: float | np.ndarray | None = None,
    mask: np.ndarray | None = None,
    return_errors: bool = True,
    solver: str = "auto",
) -> FitResult:
    """Fit the weights of a sparse design matrix to an image or a frame stack.

    Solves the weighted linear least-squares problem
    ``min_w sum(((d - A w) / errors)**2) + sum(((w - prior_mu) / prior_sigma)**2)``
    over the unmasked pixels, through the normal equations
    ``(A^T C^-1 A + P) w = A^T C^-1 d + P prior_mu`` with a sparse Cholesky
    factorisation that is computed once and reused for every frame.

    Parameters
    ----------
    A : Sparse3D or scipy.sparse matrix or array, shape (H * W, n)
        Design matrix; column ``j`` is the image of source ``j`` with unit
        weight, raveled in C order. A :class:`~sparse3d.Sparse3D` (``imshape``
        must be its own) is taken as such: with regular stamps its normal
        matrix is built from the stamps directly (:func:`normal_matrix`).
        Real values only.
    data : numpy.ndarray, shape (H, W) or (H, W, k)
        One image, or a stack of ``k`` frames along the last axis (real; ``k``
        may be 0, giving ``(n, 0)`` weights).
    imshape : tuple of int
        ``(H, W)``, the shape of one image.
    errors : numpy.ndarray, optional
        Per-pixel 1-sigma uncertainties, shape ``(H, W)`` (shared by all
        frames) or the shape of ``data``; all unmasked values must be
        positive and finite.  None means unit errors (ordinary least
        squares).  The normal matrix depends on the errors, so a stack whose
        frames have *different* error maps needs one factorisation per
        distinct map (frames with identical maps are grouped); errors shared
        by all frames are the fast path, with a single factorisation.
    prior_mu : float or numpy.ndarray, optional
        Mean of the Gaussian prior on each weight, scalar or shape ``(n,)``.
        Defaults to 0 when ``prior_sigma`` is given; requires ``prior_sigma``.
    prior_sigma : float or numpy.ndarray, optional
        Standard deviation of the Gaussian prior on each weight, scalar or
        shape ``(n,)``; must be positive, ``np.inf`` meaning no prior for that
        source.  Priors also constrain sources with little or no data.
    mask : numpy.ndarray of bool, optional
        Shape ``(H, W)``; True marks pixels to *ignore* (shared by all
        frames).  Masked pixels may hold non-finite data or errors.
    return_errors : bool, optional
        If True (default) ``FitResult.weights_err`` is available; it is
        computed on first access and keeps the factorisation alive until
        then.  If False it is None and the factorisation is freed.
    solver : {"auto", "qdldl", "superlu", "cholmod"}, optional
        Sparse factorisation.  ``"auto"`` is ``"qdldl"`` (Apache-2.0, a
        runtime dependency); ``"superlu"`` is SciPy's SuperLU in symmetric
        mode; ``"cholmod"`` is CHOLMOD through the optional ``cvxopt``
        (GPL-3.0-or-later; ``pip install "sparse3d[cholmod]"``).

    Returns
    -------
    FitResult
        Weights, model, chi-square and (lazily) the weight uncertainties.

    Raises
    ------
    ValueError
        If an argument has the wrong shape or invalid values (the message
        names the argument).
    SingularNormalMatrixError
        If the normal matrix is singular although every source has data,
        e.g. two sources with identical columns and no prior.  A source
        whose Cholesky pivot is below ``PIVOT_RTOL`` (1e-10) times its
        diagonal entry of the normal matrix counts as dependent; the
        exception's ``sources`` attribute lists them.  Subclass of
        :class:`numpy.linalg.LinAlgError`.

    Warns
    -----
    UnconstrainedSourceWarning
        Once, with their number, when some sources have no unmasked pixel in
        the image and no prior; their weights and uncertainties are NaN and
        the other sources are fitted normally.

    Notes
    -----
    The uncertainties are ``sqrt(diag(N^-1))`` with ``N`` the normal matrix
    above (including the prior precision), computed exactly by supernodal
    selected inversion of the Cholesky factor -- no dense inverse is formed.
    The normal equations are scaled by powers of two before they are
    factorised (errors to near 1, every weighted column of ``A`` to a largest
    entry near 1) and the results unscaled exactly, so extreme units of the
    errors or of single stamps neither overflow nor underflow; the
    singularity test is invariant under that scaling.

    Examples
    --------
    >>> import numpy as np, scipy.sparse
    >>> A = scipy.sparse.random(16, 3, density=0.6, random_state=0, format="csr")
    >>> truth = np.array([1.0, 2.0, 3.0])
    >>> res = fit_design(A, (A @ truth).reshape(4, 4), imshape=(4, 4))
    >>> np.allclose(res.weights, truth)
    True
    """
    # ---- validate -------------------------------------------------------
    solver = _check_solver(solver)
    H, W = _check_imshape(imshape)
    npix = H * W
    n = _check_design(A, npix, imshape)

    data = np.asarray(data)
    _check_real(data, "data")
    if data.ndim not in (2, 3) or data.shape[:2] != (H, W):
        raise ValueError(f"data must have shape (H, W) = {(H, W)} or (H, W, k), got {data.shape}")
    stack = data.ndim == 3
    k = data.shape[2] if stack else 1
    D = data.reshape(npix, k)
    if D.dtype != np.float64:
        D = D.astype(np.float64)

    keep = _check_mask(mask, H, W)
    n_pixels = npix if keep is None else int(keep.sum())
    _check_data_finite(D, keep)

    E: np.ndarray | None = None
    groups = [np.arange(k)]
    if errors is not None:
        errors = np.asarray(errors)
        _check_real(errors, "errors")
        errors = errors.astype(np.float64, copy=False)
        if errors.shape == (H, W):
            E = errors.reshape(npix, 1)
        elif errors.shape == data.shape:
            E = errors.reshape(npix, k)
        else:
            raise ValueError(
                f"errors must have shape {(H, W)} or the shape of data {data.shape}, got {errors.shape}"
            )
        _check_errors(E, keep)
        if E.shape[1] == 0:  # no frames: nothing to factorise
            groups = []
        elif E.shape[1] > 1:
            groups = _frame_groups(E, keep)
            E = E[:, [int(g[0]) for g in groups]]
    err_scale = _error_scale(E, keep)
    ivar = _inverse_variance(E, keep, err_scale)  # (npix, g), 0 where masked; None: unit, no mask

    prior_prec, mu = _check_prior(prior_mu, prior_sigma, n)
    A_csr = _design_csr(A)

    # ---- one factorisation per distinct error map -----------------------
    weights = np.full((n, k), np.nan) if len(groups) != 1 else None
    chi2 = np.zeros(k)
    err_fns: list[tuple[np.ndarray, Callable[[], np.ndarray]]] = []
    unconstrained = np.zeros(n, dtype=bool)
    for gi, frames in enumerate(groups):
        ne = NormalEquations._build(
            A, A_csr, None if ivar is None else ivar[:, gi], keep, prior_prec, mu, solver, err_scale
        )
        if gi == 0:
            unconstrained = ne.unconstrained
        if len(groups) == 1:
            weights, chi2 = ne.solve(D, return_chi2=True)
        else:
            weights[:, frames], chi2[frames] = ne.solve(D[:, frames], return_chi2=True)
        if return_errors:
            err_fns.append((frames, partial(_weights_err, ne.factor, ne.free, err_scale * ne.col_scale)))
        del ne  # the weighted design matrix; the factor lives on in err_fns
    _warn_unconstrained(unconstrained, stacklevel=3)  # via Sparse3D.fit / ROISparse3D.fit

    # ---- chi-square, model --------------------------------------------
    wz = np.where(np.isnan(weights), 0.0, weights)

    def model_fn() -> np.ndarray:
        M = A_csr @ (wz if stack else wz[:, 0])
        return M.reshape(H, W, k) if stack else M.reshape(H, W)

    weights_err_fn = None
    if return_errors:
        weights_err_fn = _combine_err_fns(err_fns, n, k)

    return FitResult(
        weights=weights if stack else weights[:, 0],
        chi2=chi2 if stack else float(chi2[0]),
        n_pixels=n_pixels,
        unconstrained=unconstrained,
        solver=solver,
        n_factorizations=len(groups),
        _model_fn=model_fn,
        _weights_err_fn=weights_err_fn,
    )


def _frame_groups(err: np.ndarray, keep: np.ndarray | None) -> list[np.ndarray]:
    """Group the frames of an ``(npix, k)`` error stack by identical maps.

    Only unmasked pixels (``keep``) are compared.  The common case, every
    frame equal to the first, is detected in one pass over row blocks.
    """
    npix, k = err.shape
    same = np.ones(k, dtype=bool)
    chunk = max(256, (1 << 18) // max(1, k))
    for i in range(0, npix, chunk):
        block = err[i : i + chunk]
        eq = block == block[:, :1]
        if keep is not None:
            eq |= ~keep[i : i + chunk, None]
        same &= eq.all(axis=0)
        if not same.any():
            break
    if same.all():
        return [np.arange(k)]
    buckets: dict[bytes, list[int]] = {}  # content hash -> group ids
    out: list[list[int]] = []
    cols: dict[int, np.ndarray] = {}
    for i in range(k):
        col = np.array(err[:, i], dtype=np.float64)
        if keep is not None:
            col[~keep] = 1.0
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


def _combine_err_fns(
    err_fns: list[tuple[np.ndarray, Callable[[], np.ndarray]]], n: int, k: int
) -> Callable[[], np.ndarray]:
    """Merge the per-error-map uncertainty callbacks: (n,) or (n, k) result."""
    holder = list(err_fns)

    def fn() -> np.ndarray:
        if len(holder) == 1:
            out = holder[0][1]()
        else:
            out = np.empty((n, k))
            for frames, f in holder:
                out[:, frames] = f()[:, None]
        holder.clear()
        return out

    return fn
