"""The chi-square of a fit from its normal equations (:class:`~.normal.NormalEquations`).

From the normal equations themselves, ``d^T C^-1 d - x^T b`` (no product with ``A``), and,
where that difference cancels (a near-perfect fit: errors far below the signal), exactly from
the residuals: by the weighted, scaled stamps a fit keeps (:func:`.rhs._cells_residual`: the
weighted data it made for its right-hand sides, minus the model, in place, each image row's
square summed as the stamps leave it: one pass over the stamps, no model image), else by the
array's own stamps or the design matrix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..core import Sparse3D
from .diagnostics import _chi2
from .rhs import (
    _cells_residual,
    _square_sum_block,
    _stamp_model,
    _stamp_square_sum,
    _weighted_data,
    _weighted_square_sum,
)

if TYPE_CHECKING:
    from .normal import NormalEquations

#: :meth:`NormalEquations.chi2` of at most this many frames takes the model from the stamps
#: (a ``dot`` per frame); more share the design matrix, built once
_STAMP_CHI2_FRAMES = 8


def chi2_from_normal(
    ne: NormalEquations, D: np.ndarray, x: np.ndarray, b: np.ndarray, U: np.ndarray | None = None
) -> np.ndarray:
    """:meth:`NormalEquations._chi2_from_normal`; ``U`` the weighted data of ``D`` that the fit made
    for its right-hand sides (:func:`.rhs._weighted_data`), if kept: a recomputation then
    subtracts the model from it in place (``U`` is consumed)."""
    if ne._idx is not None:  # unconstrained parameters: no data, weight 0 here
        full = np.zeros((ne.n_params, x.shape[1]))
        full[ne._idx] = x
        x = full
    # in units of the errors (divided by err_scale): no overflow or underflow for
    # data and errors in the same extreme unit
    s = ne.err_scale
    xs, bs = (x, b) if s == 1.0 else (x / s, b / s)
    dCd = None if ne._ahead is None else ne._ahead.take("square_sum", D)  # made meanwhile
    if dCd is None and ne._stamps is not None and D.dtype == np.float64 and D.flags.c_contiguous:
        # numba is loaded: one pass, by image rows (the sums of the many-frame sweep, the same bits)
        dCd = _stamp_square_sum(D, ne.ivar, ne.keep, 1.0 / s, block=_square_sum_block(ne._stamps[0][0]))
    elif dCd is None:
        dCd = _weighted_square_sum(D, ne.ivar, ne.keep, 1.0 / s)
    with np.errstate(invalid="ignore"):  # inf - inf: a chi-square beyond float range
        chi2 = dCd - np.einsum("ij,ij->j", xs, bs)
        if ne.prior_rhs is not None:
            pr = ne.prior_rhs / s
            chi2 += pr @ xs - np.einsum("i,ij,ij->j", ne._prior_prec, xs, xs)
    # where the difference cancels more than nine digits (a perfect fit, errors far
    # below the noise) recompute it from the residuals
    bad = ~(chi2 > 1e-9 * dCd)
    if np.any(bad):
        cols = np.flatnonzero(bad)
        w = x[:, cols] * ne.col_scale[:, None]
        if U is not None and ne._cells is not None and D.shape[1] <= _STAMP_CHI2_FRAMES:
            Ub = U if cols.size == U.shape[1] else np.ascontiguousarray(U[:, cols])
            chi2[cols] = stamp_chi2(ne, D[:, cols], w, Ub)
        else:
            chi2[cols] = ne.chi2(D[:, cols], w)
    return chi2


def chi2(ne: NormalEquations, D: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """:meth:`NormalEquations.chi2`."""
    wz = np.where(np.isnan(weights), 0.0, weights)
    # no design matrix yet (a background model has made it: its block needs it)
    stamps = ne._stamps if isinstance(ne._design, Sparse3D) and ne.background is None else None
    if stamps is not None and D.shape[1] <= _STAMP_CHI2_FRAMES:
        return stamp_chi2(ne, D, wz)
    ivar = None if ne.ivar is None else ne.ivar[:, None]
    return _chi2(ne.design, wz, D, ivar, None, ne.keep, ne.background, ne.err_scale)


def stamp_chi2(ne: NormalEquations, D: np.ndarray, wz: np.ndarray, U: np.ndarray | None = None) -> np.ndarray:
    """:meth:`NormalEquations.chi2` with the model from the stamps, the
    weighted residuals summed in one pass: no design matrix, not the array's ``dot`` (its second
    call caches a CSR matrix on the caller's array). The weighted stamps kept by a fit, all frames
    at once: the scaled solutions ``w / c`` (exact) subtracted from the weighted data in place
    (``U``, consumed, when the caller has it; else made here), the squares summed in the same
    pass; else the array's own stamps
    (:func:`.rhs._stamp_model`), frame by frame."""
    n = ne.n_sources
    s = 1.0 / ne.err_scale
    if ne._cells is not None:
        R = _weighted_data(D, ne.ivar, ne.keep) if U is None else U
        return _cells_residual(ne._cells, wz[:n] / ne.col_scale[:n, None], R, s)
    out = np.empty(D.shape[1])
    for t in range(D.shape[1]):
        model = _stamp_model(ne._stamps, wz[:n, t])
        d = np.ascontiguousarray(D[:, t : t + 1], dtype=np.float64)
        out[t] = _stamp_square_sum(d, ne.ivar, ne.keep, s, model)[0]
    return out
