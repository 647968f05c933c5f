"""Numba kernel of the geometric nested-dissection ordering (:mod:`sparse3d.fit.ordering`).

Imported lazily; compiled once and cached on disk.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_I = "intp[::1]"
SIGNATURES = {"nested_dissection": f"({_I}, {_I}, {_I}, {_I}, intp)"}


@njit(cache=True, nogil=True)
def nested_dissection(rlo, rhi, clo, chi, leaf):  # pragma: no cover - compiled
    """A fill-reducing order of boxes ``[rlo, rhi) x [clo, chi)`` whose overlaps couple them.

    The boxes are split recursively at the median centre along the longer side of their
    extent: boxes entirely before the cut, entirely after it, and the separator (boxes
    that straddle it, which alone couple the two halves) ordered last. Sets of at most
    ``leaf`` boxes, or that a cut cannot split, keep their input order. Returns the order
    (``order[k]`` = index of the ``k``-th box).
    """
    n = rlo.size
    order = np.arange(n)
    tmp = np.empty(n, dtype=np.intp)
    cen = np.empty(n, dtype=np.float64)
    # work stack of segments [a, b) of ``order`` still to split
    sa = np.empty(2 * n + 2, dtype=np.intp)
    sb = np.empty(2 * n + 2, dtype=np.intp)
    top = 0
    if n > 0:
        sa[0] = 0
        sb[0] = n
        top = 1
    while top > 0:
        top -= 1
        a = sa[top]
        b = sb[top]
        m = b - a
        if m <= leaf:
            continue
        r0 = rlo[order[a]]
        r1 = rhi[order[a]]
        c0 = clo[order[a]]
        c1 = chi[order[a]]
        for q in range(a, b):
            i = order[q]
            r0 = min(r0, rlo[i])
            r1 = max(r1, rhi[i])
            c0 = min(c0, clo[i])
            c1 = max(c1, chi[i])
        by_row = (r1 - r0) >= (c1 - c0)
        for q in range(a, b):
            i = order[q]
            if by_row:
                cen[q - a] = 0.5 * (rlo[i] + rhi[i])
            else:
                cen[q - a] = 0.5 * (clo[i] + chi[i])
        cut = np.int64(np.ceil(np.median(cen[:m])))
        nl = 0
        nr = 0
        for q in range(a, b):
            i = order[q]
            lo = rlo[i] if by_row else clo[i]
            hi = rhi[i] if by_row else chi[i]
            if hi <= cut:
                nl += 1
            elif lo >= cut:
                nr += 1
        if nl == 0 or nr == 0:
            continue
        ql = a
        qr = a + nl
        qs = a + nl + nr
        for q in range(a, b):
            i = order[q]
            lo = rlo[i] if by_row else clo[i]
            hi = rhi[i] if by_row else chi[i]
            if hi <= cut:
                tmp[ql] = i
                ql += 1
            elif lo >= cut:
                tmp[qr] = i
                qr += 1
            else:
                tmp[qs] = i
                qs += 1
        order[a:b] = tmp[a:b]
        sa[top] = a
        sb[top] = a + nl
        sa[top + 1] = a + nl
        sb[top + 1] = a + nl + nr
        top += 2
    return order
