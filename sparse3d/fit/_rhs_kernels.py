"""Numba kernel of the right-hand side ``A^T U`` straight from regular stamps.

Imported lazily by :mod:`sparse3d.fit.normal`; compiled once and cached on disk. With it a fit
of one image needs no sparse design matrix at all (its CSC would hold a source-major copy of
every stamp value and an index per value: 1.2 GB at a million 10 x 10 stamps).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_I = "intp[::1]"
SIGNATURES = {
    "stamp_rhs": (
        f"(Array(float64, 3, 'C', readonly=True), {_I}, {_I}, float64[:, ::1], intp, intp, intp, intp)"
    ),
}


@njit(cache=True, nogil=True)
def stamp_rhs(values, r0, c0, U, H, W, imr, imc):  # pragma: no cover - compiled
    """``out[k, t] = sum over the in-image pixels p of stamp k of values[., ., k] * U[p, t]``.

    ``values`` ``(nr, nc, n)``: regular stamps with corners ``(r0, c0)``; ``U`` ``(H * W, m)``
    over the image whose corner is ``(imr, imc)``.
    """
    nr, nc, n = values.shape
    m = U.shape[1]
    out = np.zeros((n, m), dtype=np.float64)
    if m > 1:  # many frames: a row of U per stamp pixel, accumulated per source
        acc = np.empty(m, dtype=np.float64)
        for k in range(n):
            acc[:] = 0.0
            for a in range(nr):
                r = r0[k] + a - imr
                if r < 0 or r >= H:
                    continue
                for b in range(nc):
                    c = c0[k] + b - imc
                    if c < 0 or c >= W:
                        continue
                    v = values[a, b, k]
                    u = U[r * W + c]
                    for t in range(m):
                        acc[t] += v * u[t]
            out[k] = acc
        return out
    blk = 16  # sources read together: consecutive in values' last axis (one cache line)
    for k0 in range(0, n, blk):
        k1 = min(k0 + blk, n)
        for a in range(nr):
            for b in range(nc):  # a stamp row's pixels are adjacent in U
                for k in range(k0, k1):
                    r = r0[k] + a - imr
                    c = c0[k] + b - imc
                    if r < 0 or r >= H or c < 0 or c >= W:
                        continue
                    out[k, 0] += values[a, b, k] * U[r * W + c, 0]
    return out
