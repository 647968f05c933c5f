"""Numba kernel of the geometric nested-dissection ordering (:mod:`sparse3d.fit.ordering`).

Imported lazily; compiled once and cached on disk. Plain loops only: NumPy functions such as
``np.median`` or ``np.sort`` inside a kernel cost seconds of compilation on a cold cache.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_I = "intp[::1]"
SIGNATURES = {"nested_dissection": f"({_I}, {_I}, {_I}, {_I}, intp)"}

#: a separator is thinned only when that takes at most this many box comparisons
_THIN_MAX_PAIRS = 1 << 22

#: the cut is chosen in the window between these quantiles of the centres (``_WINDOW`` and
#: ``1 - _WINDOW``): on a random field of 11 x 11 stamps the cut that the fewest boxes straddle
#: there instead of the median gives 37 % fewer factorisation flops and 21 % less fill
_WINDOW = 0.4
#: ... when the window spans at most this many positions per box (else the median is the cut)
_WINDOW_MAX_PER_BOX = 4


@njit(cache=True, nogil=True)
def nested_dissection(rlo, rhi, clo, chi, leaf):  # pragma: no cover - compiled
    """A fill-reducing order of boxes ``[rlo, rhi) x [clo, chi)`` whose overlaps couple them.

    The boxes are split recursively across the longer side of their extent, at the position
    between the 40 % and 60 % quantiles of their centres that the fewest boxes straddle
    (nearest the median among equals): boxes entirely before the cut, entirely after it, and
    the separator (boxes that straddle it, which alone couple the two halves) ordered last. Sets of at most
    ``leaf`` boxes, or that a cut cannot split, keep their input order. Returns the order
    (``order[k]`` = index of the ``k``-th box).
    """
    n = rlo.size
    order = np.arange(n)
    tmp = np.empty(n, dtype=np.intp)
    cen = np.empty(n, dtype=np.float64)
    side = np.empty(n, dtype=np.intp)  # separator thinning (_thin_separator)
    near = np.empty(n, dtype=np.intp)
    key = np.empty(n, dtype=np.intp)
    span = np.empty((n, 3), dtype=np.intp)
    diff = np.empty(_WINDOW_MAX_PER_BOX * n + 2, dtype=np.intp)  # _fewest_straddling's counts
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
        # the boxes' bounds across the cut, gathered once in segment order (key and near are
        # free until the separator's thinning): every later pass over them reads in sequence
        for q in range(a, b):
            i = order[q]
            lo = rlo[i] if by_row else clo[i]
            hi = rhi[i] if by_row else chi[i]
            key[q - a] = lo
            near[q - a] = hi
            cen[q - a] = 0.5 * (lo + hi)
        # the median of cen[:m] (as np.median)
        h = m // 2
        med = _select(cen, m, h)
        if m % 2 == 0:  # the mean of the two middle values: the largest before h, and cen[h]
            below = cen[0]
            for q in range(1, h):
                below = max(below, cen[q])
            med = (below + med) / 2.0
        cut = np.int64(np.ceil(med))
        # the cut in the window between the centres' 40 % and 60 % quantiles that the fewest
        # boxes straddle (nearest the median among equals)
        h0 = int((m - 1) * _WINDOW)
        x0 = np.int64(np.ceil(_select(cen, m, h0)))
        x1 = np.int64(np.floor(_select(cen, m, m - 1 - h0)))
        if x0 < x1 and x1 - x0 <= _WINDOW_MAX_PER_BOX * m:
            cut = _fewest_straddling(key, near, m, x0, x1, cut, diff)
        nl = 0
        nr = 0
        for t in range(m):
            if near[t] <= cut:
                nl += 1
            elif key[t] >= cut:
                nr += 1
        if nl == 0 or nr == 0:
            continue
        ql = a
        qr = a + nl
        qs = a + nl + nr
        for q in range(a, b):
            i = order[q]
            lo = key[q - a]
            hi = near[q - a]
            if hi <= cut:
                tmp[ql] = i
                ql += 1
            elif lo >= cut:
                tmp[qr] = i
                qr += 1
            else:
                tmp[qs] = i
                qs += 1
        if by_row:
            na, nb = _thin_separator(rlo, rhi, clo, chi, tmp, a, nl, nr, b, order, side, near, key, span)
        else:
            na, nb = _thin_separator(clo, chi, rlo, rhi, tmp, a, nl, nr, b, order, side, near, key, span)
        sa[top] = a
        sb[top] = a + nl + na
        sa[top + 1] = a + nl + na
        sb[top + 1] = a + nl + na + nr + nb
        top += 2
    return order


@njit(cache=True, nogil=True)
def _select(cen, m, h):  # pragma: no cover - compiled
    """The ``h``-th smallest of ``cen[:m]`` (Hoare's quickselect; reorders ``cen[:m]``)."""
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
    return cen[h]


@njit(cache=True, nogil=True)
def _fewest_straddling(lo, hi, m, x0, x1, cut, diff):  # pragma: no cover - compiled
    """The cut ``x`` in ``[x0, x1]`` that the fewest of the boxes ``[lo[t], hi[t])``, ``t < m``,
    straddle (``lo < x < hi``), the one nearest ``cut`` among equals. ``diff`` is scratch space
    of at least ``x1 - x0 + 2`` entries (straddle counts by a difference array: one pass over
    the boxes, one over the window)."""
    w = x1 - x0 + 1
    for t in range(w + 1):
        diff[t] = 0
    for t in range(m):
        s = max(lo[t] + 1, x0) - x0  # the box straddles x in [lo + 1, hi - 1]
        e = min(hi[t], x1 + 1) - x0
        if s < e:
            diff[s] += 1
            diff[e] -= 1
    best = cut
    nbest = m + 1
    run = 0
    for t in range(w):
        run += diff[t]
        x = x0 + t
        if run < nbest or (run == nbest and abs(x - cut) < abs(best - cut)):
            nbest = run
            best = x
    return best


@njit(cache=True, nogil=True)
def _sort_along(alo, ahi, olo, ohi, near, m, key, span):  # pragma: no cover - compiled
    """Sort ``near[:m]`` by the boxes' start along the cut (``key[:m]`` receives the starts,
    ``span[:m]`` their end along the cut and their start and end across it; Shell sort, plain
    loops) and return their largest extent along it. ``alo``/``ahi``: the boxes across the cut,
    ``olo``/``ohi`` along it."""
    ext = 0
    for t in range(m):
        i = near[t]
        key[t] = olo[i]
        ext = max(ext, ohi[i] - olo[i])
    gap = 1
    while 3 * gap + 1 < m:
        gap = 3 * gap + 1
    while gap > 0:
        for t in range(gap, m):
            x = key[t]
            y = near[t]
            u = t
            while u >= gap and key[u - gap] > x:
                key[u] = key[u - gap]
                near[u] = near[u - gap]
                u -= gap
            key[u] = x
            near[u] = y
        gap //= 3
    for t in range(m):  # the rest of each box beside its start, in this order: read in sequence
        i = near[t]
        span[t, 0] = ohi[i]
        span[t, 1] = alo[i]
        span[t, 2] = ahi[i]
    return ext


@njit(cache=True, nogil=True)
def _hits(alo, ahi, olo, ohi, i, m, key, span, ext):  # pragma: no cover - compiled
    """Whether box ``i`` overlaps one of the ``m`` boxes sorted by :func:`_sort_along`: only
    those starting along the cut in ``(start_i - ext, end_i)`` can."""
    lo = olo[i]
    hi = ohi[i]
    # the first t with key[t] > lo - ext (binary search)
    t0 = 0
    t1 = m
    while t0 < t1:
        mid = (t0 + t1) // 2
        if key[mid] > lo - ext:
            t1 = mid
        else:
            t0 = mid + 1
    t = t0
    while t < m and key[t] < hi:
        if lo < span[t, 0] and span[t, 1] < ahi[i] and alo[i] < span[t, 2]:
            return True
        t += 1
    return False


@njit(cache=True, nogil=True)
def _thin_separator(alo, ahi, olo, ohi, tmp, a, nl, nr, b, order, side, near, key, span):  # pragma: no cover
    """Write the split of ``tmp[a:b]`` (``nl`` boxes before the cut, ``nr`` after it, then the
    separator: the boxes that straddle it) into ``order[a:b]``, thinning the separator.

    ``alo``/``ahi`` are the boxes' bounds across the cut, ``olo``/``ohi`` along it. A
    straddling box that overlaps no box after the cut does not couple the two halves: it
    joins the first half; then one that overlaps no box of the (grown) first half joins the
    second. What is left still separates them, and is what the factor's fill grows with: on a
    random field of 10 x 10 stamps about one row in seven of the straddling band goes. Only the
    boxes near the cut can overlap the separator, so they alone are compared (skipped when
    that would cost more than ``_THIN_MAX_PAIRS`` comparisons); long separator boxes (across the
    cut more than twice the shortest) stay, untested. Returns ``(na, nb)``: the boxes
    moved to the first and to the second half. ``order[a:b]`` becomes: first half, the boxes
    moved there, second half, those moved there, the rest of the separator.
    """
    s0 = a + nl + nr
    ns = b - s0
    na = 0
    nb = 0
    if ns > 0:
        # a long box (across the cut: more than twice the shortest, e.g. a big stamp among small
        # ones) stays in the separator untested: it nearly always reaches across, and the boxes
        # near the cut are those within the short boxes' reach only (a 41 x 41 stamp among
        # 11 x 11 ones would widen that band fourfold: on issue 13's scene the ordering cost 25 %
        # more time, for an identical order)
        emin = ahi[tmp[s0]] - alo[tmp[s0]]
        for q in range(s0, b):
            emin = min(emin, ahi[tmp[q]] - alo[tmp[q]])
        slo = 0
        shi = 0
        first = True
        for q in range(s0, b):
            i = tmp[q]
            if ahi[i] - alo[i] <= 2 * emin:
                slo = alo[i] if first else min(slo, alo[i])
                shi = ahi[i] if first else max(shi, ahi[i])
                first = False
        # the boxes after the cut that can reach the separator
        m = 0
        for q in range(a + nl, s0):
            if alo[tmp[q]] < shi:
                near[m] = tmp[q]
                m += 1
        if ns * m <= _THIN_MAX_PAIRS:
            ext = _sort_along(alo, ahi, olo, ohi, near, m, key, span)
            for q in range(s0, b):
                i = tmp[q]
                short = ahi[i] - alo[i] <= 2 * emin
                side[q - s0] = -1 if short and not _hits(alo, ahi, olo, ohi, i, m, key, span, ext) else 0
            # the boxes before the cut that can reach the separator, then those moved there
            m = 0
            for q in range(a, a + nl):
                if ahi[tmp[q]] > slo:
                    near[m] = tmp[q]
                    m += 1
            for q in range(s0, b):
                if side[q - s0] == -1:
                    near[m] = tmp[q]
                    m += 1
            if ns * m <= _THIN_MAX_PAIRS:
                ext = _sort_along(alo, ahi, olo, ohi, near, m, key, span)
                for q in range(s0, b):
                    i = tmp[q]
                    if side[q - s0] != 0 or ahi[i] - alo[i] > 2 * emin:
                        continue
                    if not _hits(alo, ahi, olo, ohi, i, m, key, span, ext):
                        side[q - s0] = 1
        else:
            for q in range(ns):
                side[q] = 0
    for q in range(s0, b):
        if side[q - s0] == -1:
            na += 1
        elif side[q - s0] == 1:
            nb += 1
    w = a
    for q in range(a, a + nl):
        order[w] = tmp[q]
        w += 1
    for q in range(s0, b):
        if side[q - s0] == -1:
            order[w] = tmp[q]
            w += 1
    for q in range(a + nl, s0):
        order[w] = tmp[q]
        w += 1
    for q in range(s0, b):
        if side[q - s0] == 1:
            order[w] = tmp[q]
            w += 1
    for q in range(s0, b):
        if side[q - s0] == 0:
            order[w] = tmp[q]
            w += 1
    return na, nb
