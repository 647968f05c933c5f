"""Numba kernel of the geometric nested-dissection ordering (:mod:`sparse3d.fit.ordering`).

Imported lazily; compiled once and cached on disk. Plain loops only: NumPy functions such as
``np.median`` or ``np.sort`` inside a kernel cost seconds of compilation on a cold cache.
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
        # the median of cen[:m] (as np.median): Hoare's quickselect of the element h = m // 2
        h = m // 2
        lo = 0
        hi = m
        while hi - lo > 1:
            pivot = cen[(lo + hi) // 2]
            i = lo
            j = hi - 1
            while i <= j:
                while cen[i] < pivot:
                    i += 1
                while cen[j] > pivot:
                    j -= 1
                if i <= j:
                    t = cen[i]
                    cen[i] = cen[j]
                    cen[j] = t
                    i += 1
                    j -= 1
            # now cen[lo:j+1] <= pivot <= cen[i:hi] and cen[j+1:i] == pivot
            if h <= j:
                hi = j + 1
            elif h >= i:
                lo = i
            else:
                break
        med = cen[h]
        if m % 2 == 0:  # the mean of the two middle values: the largest before h, and cen[h]
            below = cen[0]
            for q in range(1, h):
                below = max(below, cen[q])
            med = (below + med) / 2.0
        cut = np.int64(np.ceil(med))
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
        for q in range(a, b):
            order[q] = tmp[q]
        sa[top] = a
        sb[top] = a + nl
        sa[top + 1] = a + nl
        sb[top + 1] = a + nl + nr
        top += 2
    return order
