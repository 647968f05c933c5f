"""Numba kernels of the built-in sparse Cholesky factorisation (``solver="nd"``).

Imported lazily by :mod:`sparse3d.fit.supernodal`; compiled once and cached on disk.

Given a fill-reducing ordering (:mod:`sparse3d.fit.ordering`), the factorisation runs in
three compiled steps, all on the lower triangle of ``N`` (CSR, as the fit assembles it):

1. symbolic: the permuted matrix (:func:`permute_lower`), its elimination tree
   (:func:`etree`), the column counts of ``L`` by row subtrees (:func:`column_counts`),
   relaxed supernodes (:func:`supernodes`, the amalgamation rule of
   :mod:`._factor_kernels`) and their row structures (:func:`supernode_rows`);
2. numeric: a multifrontal ``L L^T`` (:func:`multifrontal`): every supernode's frontal
   matrix is assembled from ``N`` and its children's update matrices (a stack), its
   columns are factorised in panels whose trailing updates are dense products (BLAS
   through ``np.dot``), and its columns land directly in the flat block buffer that
   :class:`~sparse3d.fit.selinv._Supernodal` reads (the factor is written once);
3. solves over that buffer for any number of right-hand sides (:func:`block_solve`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._factor_kernels import NRELAX, ZRELAX

_I = "intp[::1]"
_F = "float64[::1]"
SIGNATURES = {
    "permute_lower": f"({_I}, {_I}, {_F}, {_I})",
    "etree": f"({_I}, {_I})",
    "column_counts": f"({_I}, {_I}, {_I})",
    "supernodes": f"({_I}, {_I})",
    "supernode_rows": f"({_I}, {_I}, {_I}, {_I}, {_I})",
    "multifrontal": f"({_I}, {_I}, {_I}, {_I}, {_I}, {_F}, {_I})",
    "block_solve": f"({_I}, {_I}, {_I}, {_I}, {_F}, float64[:, ::1])",
}

# a front of fewer than this many multiply-adds (k h^2) is factorised in loops: np.dot's calls
# and allocations cost more than the arithmetic of small blocks
_LOOP_MAX_FLOPS = 1 << 20
# panel width of the partial factorisation of a front
_PANEL = 64
# column blocks of a trailing update: only the blocks on and below the diagonal are formed
_GEMM_BLOCK = 96


@njit(cache=True, nogil=True)
def permute_lower(indptr, indices, data, iperm):  # pragma: no cover - compiled
    """The lower triangle of ``N[p][:, p]`` from the lower triangle of ``N`` (CSR, ``iperm`` = p⁻¹).

    Returns ``(rptr, rind, cptr, cind, cval)``: its strictly lower part by rows (column
    indices of each row, unsorted) and its lower part with the diagonal by columns (row
    indices and values of each column, unsorted).
    """
    n = indptr.size - 1
    rcount = np.zeros(n + 1, dtype=np.intp)
    ccount = np.zeros(n + 1, dtype=np.intp)
    for i in range(n):
        pi = iperm[i]
        for p in range(indptr[i], indptr[i + 1]):
            pj = iperm[indices[p]]
            lo = min(pi, pj)
            hi = max(pi, pj)
            ccount[lo + 1] += 1
            if hi != lo:
                rcount[hi + 1] += 1
    rptr = np.cumsum(rcount)
    cptr = np.cumsum(ccount)
    rind = np.empty(rptr[n], dtype=np.intp)
    cind = np.empty(cptr[n], dtype=np.intp)
    cval = np.empty(cptr[n], dtype=np.float64)
    rfill = rptr[:n].copy()
    cfill = cptr[:n].copy()
    for i in range(n):
        pi = iperm[i]
        for p in range(indptr[i], indptr[i + 1]):
            pj = iperm[indices[p]]
            lo = min(pi, pj)
            hi = max(pi, pj)
            q = cfill[lo]
            cind[q] = hi
            cval[q] = data[p]
            cfill[lo] = q + 1
            if hi != lo:
                rind[rfill[hi]] = lo
                rfill[hi] += 1
    return rptr, rind, cptr, cind, cval


@njit(cache=True, nogil=True)
def etree(rptr, rind):  # pragma: no cover - compiled
    """Elimination tree (parent of every column, -1 for roots) of a matrix given by the
    strictly lower part of its rows (Liu's algorithm with path compression)."""
    n = rptr.size - 1
    parent = np.full(n, -1, dtype=np.intp)
    ancestor = np.full(n, -1, dtype=np.intp)
    for k in range(n):
        for p in range(rptr[k], rptr[k + 1]):
            i = rind[p]
            while i != -1 and i < k:
                nxt = ancestor[i]
                ancestor[i] = k
                if nxt == -1:
                    parent[i] = k
                i = nxt
    return parent


@njit(cache=True, nogil=True)
def column_counts(rptr, rind, parent):  # pragma: no cover - compiled
    """Entries below the diagonal of every column of ``L`` (the row subtrees of the etree)."""
    n = rptr.size - 1
    cc = np.zeros(n, dtype=np.intp)
    mark = np.full(n, -1, dtype=np.intp)
    for i in range(n):
        mark[i] = i
        for p in range(rptr[i], rptr[i + 1]):
            k = rind[p]
            while mark[k] != i:
                mark[k] = i
                cc[k] += 1
                k = parent[k]
    return cc


@njit(cache=True, nogil=True)
def supernodes(parent, cc):  # pragma: no cover - compiled
    """Relaxed supernodes of a postordered etree: their first columns (``nsup + 1`` bounds).

    Fundamental supernodes (column ``j`` continues ``j - 1`` when ``j`` is its parent and its
    pattern is ``j - 1``'s without ``j``) are merged into their parent supernode by the rule
    of :func:`._factor_kernels.amalgamate` (``NRELAX``, ``ZRELAX``).
    """
    n = parent.size
    starts = np.empty(n + 1, dtype=np.intp)
    ns = 0
    for j in range(n):
        if not (j > 0 and parent[j - 1] == j and cc[j - 1] == cc[j] + 1):
            starts[ns] = j
            ns += 1
    starts[ns] = n
    gstart = np.empty(ns + 1, dtype=np.intp)
    ng = 0
    zeros = 0
    entries = 0
    for s in range(ns):
        f = starts[s]
        e = starts[s + 1]
        k = e - f
        mrows = cc[e - 1]
        own = k * (k + 1) // 2 + k * mrows
        merged = False
        if ng > 0 and parent[f - 1] == f:
            gk = f - gstart[ng - 1]
            gm = cc[f - 1]  # rows below the previous group (those of its last column)
            add = gk * (k + mrows - gm)
            tk = gk + k
            tz = zeros + add
            te = entries + own + add
            frac = tz / te
            ok = tk <= NRELAX[0]
            if not ok:
                if tk <= NRELAX[1]:
                    ok = frac < ZRELAX[0]
                elif tk <= NRELAX[2]:
                    ok = frac < ZRELAX[1]
                else:
                    ok = frac < ZRELAX[2]
            if ok:
                merged = True
                zeros = tz
                entries = te
        if not merged:
            gstart[ng] = f
            ng += 1
            zeros = 0
            entries = own
    gstart[ng] = n
    return gstart[: ng + 1].copy()


@njit(cache=True, nogil=True)
def supernode_rows(sstart, cc, cptr, cind, parent):  # pragma: no cover - compiled
    """Rows below every supernode (sorted), its parent supernode and the multifrontal stack size.

    Returns ``(sptr, srows, sparent, stack_size, hmax)``. The rows of a supernode
    ``[f, e)`` are those ``>= e`` of ``N``'s columns ``f..e-1`` and of its children's rows;
    there are ``cc[e - 1]`` of them.
    """
    n = parent.size
    nsup = sstart.size - 1
    sup_of_col = np.empty(n, dtype=np.intp)
    sptr = np.zeros(nsup + 1, dtype=np.intp)
    for s in range(nsup):
        for j in range(sstart[s], sstart[s + 1]):
            sup_of_col[j] = s
        sptr[s + 1] = sptr[s] + cc[sstart[s + 1] - 1]
    srows = np.empty(sptr[nsup], dtype=np.intp)
    sparent = np.full(nsup, -1, dtype=np.intp)
    mark = np.full(n, -1, dtype=np.intp)
    head = np.full(nsup, -1, dtype=np.intp)  # children lists
    nxt = np.full(nsup, -1, dtype=np.intp)
    for s in range(nsup):
        f = sstart[s]
        e = sstart[s + 1]
        q = sptr[s]
        for j in range(f, e):
            for p in range(cptr[j], cptr[j + 1]):
                i = cind[p]
                if i >= e and mark[i] != s:
                    mark[i] = s
                    srows[q] = i
                    q += 1
        c = head[s]
        while c != -1:
            for p in range(sptr[c], sptr[c + 1]):
                i = srows[p]
                if i >= e and mark[i] != s:
                    mark[i] = s
                    srows[q] = i
                    q += 1
            c = nxt[c]
        if q != sptr[s + 1]:
            raise ValueError("internal error: supernode row count differs from the column count")
        srows[sptr[s] : q] = np.sort(srows[sptr[s] : q])
        if q > sptr[s]:
            ps = sup_of_col[srows[sptr[s]]]
            sparent[s] = ps
            nxt[s] = head[ps]
            head[ps] = s
    # the stack of update matrices, in this (postorder) order, and the largest front
    stack = 0
    peak = 0
    hmax = 0
    nchild = np.zeros(nsup, dtype=np.intp)
    for s in range(nsup):
        m = sptr[s + 1] - sptr[s]
        k = sstart[s + 1] - sstart[s]
        hmax = max(hmax, k + m)
        # children are popped before the parent's update is pushed
        c = head[s]
        while c != -1:
            mc = sptr[c + 1] - sptr[c]
            stack -= mc * mc
            c = nxt[c]
        stack += m * m
        peak = max(peak, stack)
        if sparent[s] >= 0:
            nchild[sparent[s]] += 1
    return sptr, srows, sparent, peak, hmax


@njit(cache=True, nogil=True)
def multifrontal(sstart, sptr, srows, cptr, cind, cval, sizes):  # pragma: no cover - compiled
    """Multifrontal Cholesky ``L L^T`` of the permuted ``N`` (lower part by columns, ``cptr``...).

    ``sizes = (stack_size, hmax)`` from :func:`supernode_rows`. Returns ``(offsets, buf,
    pivots, bad)``: supernode ``s`` (columns ``[f, e)``, ``k = e - f``, rows below ``R``,
    ``h = k + |R|``) is the ``(h, k)`` block of ``L`` in column-major order at
    ``buf[offsets[s]:offsets[s + 1]]`` (rows ``f..e-1`` then ``R``, zeros above the
    diagonal); ``pivots`` the pivots ``L[j, j]**2``; ``bad`` -1, or the first column whose
    pivot was not positive (the factorisation stopped there).
    """
    nsup = sstart.size - 1
    n = sstart[nsup]
    stack_size = sizes[0]
    hmax = sizes[1]
    offsets = np.zeros(nsup + 1, dtype=np.intp)
    for s in range(nsup):
        k = sstart[s + 1] - sstart[s]
        offsets[s + 1] = offsets[s] + k * (k + sptr[s + 1] - sptr[s])
    buf = np.zeros(offsets[nsup], dtype=np.float64)
    pivots = np.zeros(n, dtype=np.float64)
    pos = np.empty(n, dtype=np.intp)
    front = np.empty(hmax * hmax, dtype=np.float64)
    stack = np.empty(max(stack_size, 1), dtype=np.float64)
    top = 0  # end of the stack
    # children of each supernode, to pop from the stack in reverse push order
    sparent = np.full(nsup, -1, dtype=np.intp)
    nchild = np.zeros(nsup, dtype=np.intp)
    for s in range(nsup):
        if sptr[s + 1] > sptr[s]:
            r = srows[sptr[s]]
            # supernode of column r: binary search in sstart
            lo = 0
            hi = nsup
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if sstart[mid] <= r:
                    lo = mid
                else:
                    hi = mid
            sparent[s] = lo
            nchild[lo] += 1
    pending = np.empty(nsup, dtype=np.intp)  # supernodes whose updates are on the stack
    npend = 0
    for s in range(nsup):
        f = sstart[s]
        e = sstart[s + 1]
        k = e - f
        m = sptr[s + 1] - sptr[s]
        h = k + m
        T = front[: h * h].reshape(h, h)  # T[c, r] = F[r, c] for r >= c
        T[:, :] = 0.0
        for a in range(k):
            pos[f + a] = a
        for a in range(m):
            pos[srows[sptr[s] + a]] = k + a
        for j in range(f, e):
            cj = j - f
            for p in range(cptr[j], cptr[j + 1]):
                T[cj, pos[cind[p]]] += cval[p]
        # extend-add the children's update matrices (the last nchild entries of the stack)
        for _ in range(nchild[s]):
            npend -= 1
            c = pending[npend]
            mc = sptr[c + 1] - sptr[c]
            top -= mc * mc
            for a in range(mc):
                pa = pos[srows[sptr[c] + a]]
                base = top + a * mc
                for b in range(a, mc):
                    T[pa, pos[srows[sptr[c] + b]]] += stack[base + b]
        # partial factorisation of the first k columns
        bad = _partial_cholesky(T, k, h, pivots, f)
        if bad >= 0:
            return offsets, buf, pivots, bad
        # the factor's columns, then this supernode's update matrix onto the stack
        o = offsets[s]
        for c in range(k):
            for r in range(c, h):
                buf[o + c * h + r] = T[c, r]
        if m:
            for a in range(m):
                base = top + a * m
                for b in range(a, m):
                    stack[base + b] = T[k + a, k + b]
            top += m * m
            pending[npend] = s
            npend += 1
    return offsets, buf, pivots, -1


@njit(cache=True, nogil=True)
def _partial_cholesky(T, k, h, pivots, f):  # pragma: no cover - compiled
    """Factorise the first ``k`` columns of the front ``F`` (``T[c, r] = F[r, c]``, ``r >= c``)
    in place and leave the Schur complement in ``T[k:, k:]``.

    Small fronts run in loops (right-looking, column by column). Large ones go in panels of
    ``_PANEL`` columns: the panel's diagonal block is factorised and inverted in loops, the
    rows below it are ``L21^T = L11^-1 F21^T`` and the trailing update ``L21 L21^T`` (the
    blocks on and below the diagonal), both dense products in BLAS. Records the pivots
    ``L[j, j]**2`` at ``pivots[f + j]``; returns -1, or the column ``f + j`` of the first
    pivot that is not positive.
    """
    if k * h * h < _LOOP_MAX_FLOPS:
        for c in range(k):
            d = T[c, c]
            pivots[f + c] = d
            if not d > 0.0:
                return f + c
            lv = np.sqrt(d)
            inv = 1.0 / lv
            T[c, c] = lv
            for r in range(c + 1, h):
                T[c, r] *= inv
            for c2 in range(c + 1, h):
                v = T[c, c2]
                if v != 0.0:
                    for r in range(c2, h):
                        T[c2, r] -= v * T[c, r]
        return -1
    linv = np.empty((_PANEL, _PANEL), dtype=np.float64)
    for p0 in range(0, k, _PANEL):
        p1 = min(p0 + _PANEL, k)
        bw = p1 - p0
        # the diagonal block: Cholesky, then its inverse (lower), in loops
        for c in range(p0, p1):
            d = T[c, c]
            pivots[f + c] = d
            if not d > 0.0:
                return f + c
            lv = np.sqrt(d)
            inv = 1.0 / lv
            T[c, c] = lv
            for r in range(c + 1, p1):
                T[c, r] *= inv
            for c2 in range(c + 1, p1):
                v = T[c, c2]
                if v != 0.0:
                    for r in range(c2, p1):
                        T[c2, r] -= v * T[c, r]
        Li = linv[:bw, :bw]
        Li[:, :] = 0.0
        for j in range(bw):  # column j of L11^-1: forward substitution with e_j
            Li[j, j] = 1.0 / T[p0 + j, p0 + j]
            for r in range(j + 1, bw):
                acc = 0.0
                for q in range(j, r):
                    acc += T[p0 + q, p0 + r] * Li[q, j]  # L11[r, q] = T[q, r]
                Li[r, j] = -acc / T[p0 + r, p0 + r]
        w = h - p1
        if w == 0:
            continue
        # rows below the panel: T[p0:p1, p1:] holds F21^T; L21^T = L11^-1 F21^T
        X = np.ascontiguousarray(T[p0:p1, p1:h])
        Y = np.dot(np.ascontiguousarray(Li), X)
        T[p0:p1, p1:h] = Y
        # trailing update, the lower triangle of Q Q^T (Q = L21, (w, bw)) in column blocks:
        # G_j = Q[j:j+nb] Q[j:]^T, both operands contiguous
        Q = np.ascontiguousarray(Y.T)
        for j0 in range(0, w, _GEMM_BLOCK):
            j1 = min(j0 + _GEMM_BLOCK, w)
            G = np.dot(Q[j0:j1], Q[j0:].T)
            for a in range(j1 - j0):
                for r in range(a, w - j0):
                    T[p1 + j0 + a, p1 + j0 + r] -= G[a, r]
    return -1


@njit(cache=True, nogil=True)
def block_solve(sstart, sptr, srows, offsets, buf, x):  # pragma: no cover - compiled
    """Solve ``L L^T y = x`` in place (``x`` ``(n, k)``, permuted order) with the blocks of
    :func:`multifrontal`.

    One right-hand side runs in loops; several go supernode by supernode, the products with
    the rows below each diagonal block in BLAS when they are large enough to pay.
    """
    if x.shape[1] == 1:
        _block_solve_one(sstart, sptr, srows, offsets, buf, x[:, 0])
        return
    nsup = sstart.size - 1
    nk = x.shape[1]
    for s in range(nsup):
        f = sstart[s]
        k = sstart[s + 1] - f
        q = sptr[s]
        m = sptr[s + 1] - q
        h = k + m
        o = offsets[s]
        _diag_forward(buf, o, h, k, x, f, nk)
        if m == 0:
            continue
        if k * m * nk < _LOOP_MAX_FLOPS // 64:
            for c in range(k):
                col = o + c * h
                for a in range(m):
                    v = buf[col + k + a]
                    i = srows[q + a]
                    for t in range(nk):
                        x[i, t] -= v * x[f + c, t]
        else:
            Bt = np.ascontiguousarray(buf[o : o + k * h].reshape(k, h)[:, k:])  # L_below^T, (k, m)
            U = np.dot(Bt.T, x[f : f + k])
            for a in range(m):
                i = srows[q + a]
                for t in range(nk):
                    x[i, t] -= U[a, t]
    for s in range(nsup - 1, -1, -1):
        f = sstart[s]
        k = sstart[s + 1] - f
        q = sptr[s]
        m = sptr[s + 1] - q
        h = k + m
        o = offsets[s]
        if m:
            if k * m * nk < _LOOP_MAX_FLOPS // 64:
                for c in range(k):
                    col = o + c * h
                    for a in range(m):
                        v = buf[col + k + a]
                        i = srows[q + a]
                        for t in range(nk):
                            x[f + c, t] -= v * x[i, t]
            else:
                Bt = np.ascontiguousarray(buf[o : o + k * h].reshape(k, h)[:, k:])
                Xr = np.empty((m, nk), dtype=np.float64)
                for a in range(m):
                    Xr[a, :] = x[srows[q + a], :]
                x[f : f + k] -= np.dot(Bt, Xr)
        _diag_backward(buf, o, h, k, x, f, nk)


@njit(cache=True, nogil=True)
def _diag_forward(buf, o, h, k, x, f, nk):  # pragma: no cover - compiled
    """``x[f:f+k] = L_ss^-1 x[f:f+k]`` for the diagonal block at ``buf[o:]`` (column-major, height h)."""
    for c in range(k):
        col = o + c * h
        inv = 1.0 / buf[col + c]
        for t in range(nk):
            x[f + c, t] *= inv
        for r in range(c + 1, k):
            v = buf[col + r]
            for t in range(nk):
                x[f + r, t] -= v * x[f + c, t]


@njit(cache=True, nogil=True)
def _diag_backward(buf, o, h, k, x, f, nk):  # pragma: no cover - compiled
    """``x[f:f+k] = L_ss^-T x[f:f+k]``."""
    for c in range(k - 1, -1, -1):
        col = o + c * h
        for r in range(c + 1, k):
            v = buf[col + r]
            for t in range(nk):
                x[f + c, t] -= v * x[f + r, t]
        inv = 1.0 / buf[col + c]
        for t in range(nk):
            x[f + c, t] *= inv


@njit(cache=True, nogil=True)
def _block_solve_one(sstart, sptr, srows, offsets, buf, x):  # pragma: no cover - compiled
    """:func:`block_solve` for one right-hand side (``x`` 1-D)."""
    nsup = sstart.size - 1
    for s in range(nsup):
        f = sstart[s]
        k = sstart[s + 1] - f
        q = sptr[s]
        m = sptr[s + 1] - q
        h = k + m
        o = offsets[s]
        for c in range(k):
            col = o + c * h
            xc = x[f + c] / buf[col + c]
            x[f + c] = xc
            for r in range(c + 1, k):
                x[f + r] -= buf[col + r] * xc
            for a in range(m):
                x[srows[q + a]] -= buf[col + k + a] * xc
    for s in range(nsup - 1, -1, -1):
        f = sstart[s]
        k = sstart[s + 1] - f
        q = sptr[s]
        m = sptr[s + 1] - q
        h = k + m
        o = offsets[s]
        for c in range(k - 1, -1, -1):
            col = o + c * h
            acc = x[f + c]
            for a in range(m):
                acc -= buf[col + k + a] * x[srows[q + a]]
            for r in range(c + 1, k):
                acc -= buf[col + r] * x[f + r]
            x[f + c] = acc / buf[col + c]
