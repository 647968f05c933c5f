"""Right-hand sides ``A^T C^-1 D`` and ``D^T C^-1 D`` of a fit straight from regular stamps.

The Python side of :mod:`._rhs_kernels` (imported lazily: these functions run only on the
compiled path, where numba is loaded anyway): the order in which the sources are visited
(with many frames an image sweep, stamp rows by column, so that a frame stack is read from
memory once, in order), and the weights and mask passed through without a weighted copy of
the frames.
"""

from __future__ import annotations

import numpy as np


def _stamp_rhs(
    stamps: tuple, U: np.ndarray, ivar: np.ndarray | None = None, keep: np.ndarray | None = None
) -> np.ndarray:
    """``A^T (ivar U)`` (``U`` ``(npix,)`` or ``(npix, k)``) from the regular stamps ``stamps``.

    ``ivar`` ``(npix,)`` (None: unit weights); ``keep`` ``(npix,)`` (None: every pixel), the
    masked pixels of ``U`` ignored whatever they hold.
    """
    from ._rhs_kernels import stamp_rhs

    values, r0, c0, (H, W), (imr, imc) = stamps
    U2 = np.ascontiguousarray(np.asarray(U, dtype=np.float64).reshape(U.shape[0], -1))
    m = U2.shape[1]
    order = np.empty(0, dtype=np.intp)
    if m >= _RHS_ORDER_MIN_FRAMES:
        order = np.argsort(c0, kind="stable").astype(np.intp, copy=False)
    ivar = np.empty(0) if ivar is None else np.ascontiguousarray(ivar, dtype=np.float64)
    keep = np.empty(0, dtype=bool) if keep is None else np.ascontiguousarray(keep, dtype=bool)
    out = stamp_rhs(values, r0, c0, U2, H, W, imr, imc, order, ivar, keep)
    return out[:, 0] if U.ndim == 1 else out


#: From this many frames on, :func:`_stamp_rhs` sweeps the image row by row (stamp rows sorted
#: by column; below it, the sources in storage order: the frames of a few bytes per pixel stay
#: in cache anyway). Measured on the tutorial scene (50,000 random 10 x 10 stamps on 1024^2).
_RHS_ORDER_MIN_FRAMES = 5


def _stamp_square_sum(
    D: np.ndarray, ivar: np.ndarray | None, keep: np.ndarray | None, scale: float
) -> np.ndarray:
    """``sum_p ivar_p (scale D_p)**2`` per column of the C-contiguous float64 ``D`` ``(npix, k)``,
    masked pixels skipped: one compiled pass, no temporaries."""
    from ._rhs_kernels import weighted_square_sum

    ivar = np.empty(0) if ivar is None else np.ascontiguousarray(ivar, dtype=np.float64)
    keep = np.empty(0, dtype=bool) if keep is None else np.ascontiguousarray(keep, dtype=bool)
    return weighted_square_sum(D, ivar, keep, scale)


def _kept_all_finite(D: np.ndarray, keep: np.ndarray | None) -> bool:
    """Whether the kept entries of the C-contiguous float64 ``D`` ``(npix, k)`` are all finite
    (``keep`` None, ``(npix, 1)`` or ``(npix, k)``): one compiled pass, no temporaries."""
    from ._rhs_kernels import kept_all_finite

    keep = np.empty((0, 0), dtype=bool) if keep is None else np.ascontiguousarray(keep, dtype=bool)
    return bool(kept_all_finite(D, keep))
