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
   columns are factorised in loops, or, for the few large fronts, by LAPACK and BLAS in
   :mod:`sparse3d.fit.supernodal`, and land directly in the flat block buffer that
   :class:`~sparse3d.fit.selinv._Supernodal` reads (the factor is written once);
3. solves over that buffer: one right-hand side (:func:`solve_one`), or any number in one
   compiled call (:func:`block_solve`).
"""

# Plain loops only: NumPy functions inside a kernel (np.dot, np.sort, array expressions) cost
# seconds of compilation each on a cold cache; the dense work of large fronts and blocks runs
# in the callers, through SciPy's LAPACK/BLAS.
from __future__ import annotations

import numpy as np
from numba import njit

from ._factor_kernels import NRELAX, ZRELAX, relaxed_merge

#: numba's on-disk cache keys a kernel on the source file that defines it, not on the files it
#: imports from: the kernels here inline ``relaxed_merge`` and freeze ``NRELAX``/``ZRELAX`` from
#: :mod:`._factor_kernels`, so a change there would leave stale cached code here. This digest of
#: those names (``tests/test_fit_compiled.py`` recomputes it) must be updated with any such change;
#: updating it edits this file, which invalidates this module's cache.
DEPENDENCY_DIGEST = "7a825d3b107a0ddf"

_I = "intp[::1]"
_F = "float64[::1]"
SIGNATURES = {
    "permute_lower": f"({_I}, {_I}, {_F}, {_I}, {_I}, {_I}, {_F})",
    "etree": f"({_I}, {_I})",
    "column_counts": f"({_I}, {_I}, {_I})",
    "supernodes": f"({_I}, {_I})",
    "supernode_rows": f"({_I}, {_I}, {_I}, {_I}, {_I})",
    # s0, the symbolic arrays, N's lower part, then the factor and the sweep's state
    "multifrontal": f"(intp, {_I}, {_I}, {_I}, {_I}, {_I}, {_F}, "
    f"{_I}, {_F}, {_F}, {_F}, {_F}, {_I}, {_I}, {_I}, {_I}, {_F}, {_I})",
    "block_solve": (
        f"({_I}, {_I}, {_I}, {_I}, {_F}, {_I}, float64[:, ::1], float64[:, ::1], intp, intp, float64[:, ::1])"
    ),
    "solve_one": f"({_I}, {_I}, {_I}, {_I}, {_F}, {_F}, boolean)",
}

# a front of fewer than this many multiply-adds (k h^2) is factorised in loops: LAPACK's and
# BLAS's calls (from Python) cost more than the arithmetic of small blocks
_LOOP_MAX_FLOPS = 1 << 18


@njit(cache=True, nogil=True)
def permute_lower(indptr, indices, data, iperm, rind, cind, cval):  # pragma: no cover - compiled
    """The lower triangle of ``N[p][:, p]`` from the lower triangle of ``N`` (CSR, ``iperm`` = p⁻¹).

    Returns ``(rptr, cptr)`` and writes ``rind`` (its strictly lower part by rows: the column
    indices of each row, unsorted) and ``cind``, ``cval`` (its lower part with the diagonal by
    columns: the row indices and values of each column, unsorted). The caller allocates them
    (``nnz(N)`` entries: NumPy maps large arrays in huge pages, numba's ``malloc`` faults in
    every 4 KiB page); empty ``cind`` and ``cval`` skip the columns (the rows alone give the
    elimination tree).
    """
    n = indptr.size - 1
    cols = cind.size > 0
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
    rfill = rptr[:n].copy()
    cfill = cptr[:n].copy()
    for i in range(n):
        pi = iperm[i]
        for p in range(indptr[i], indptr[i + 1]):
            pj = iperm[indices[p]]
            lo = min(pi, pj)
            hi = max(pi, pj)
            if cols:
                q = cfill[lo]
                cind[q] = hi
                cval[q] = data[p]
                cfill[lo] = q + 1
            if hi != lo:
                rind[rfill[hi]] = lo
                rfill[hi] += 1
    return rptr, cptr


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
            if relaxed_merge(tk, tz, te, NRELAX, ZRELAX):
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
        # sort srows[sptr[s]:q]: Shell sort (gaps 3g + 1), plain loops
        lo = sptr[s]
        gap = 1
        while 3 * gap + 1 < q - lo:
            gap = 3 * gap + 1
        while gap > 0:
            for i in range(lo + gap, q):
                x = srows[i]
                j = i
                while j - gap >= lo and srows[j - gap] > x:
                    srows[j] = srows[j - gap]
                    j -= gap
                srows[j] = x
            gap //= 3
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
def _sub_columns(front, h, j, r0, nc):  # pragma: no cover - compiled
    """``F[r, j] -= sum_{c < nc} F[j, c] F[r, c]`` for ``r0 <= r < h`` (``front[c * h + r] = F[r, c]``):
    four columns ``c`` at a time (one load and store of column ``j`` per four multiply-adds,
    ``(v0 x0 + v1 x1) + (v2 x2 + v3 x3)``), then the rest one by one; zero multipliers skipped
    (the explicit zeros of relaxed supernodes). The same operations in the same order every time."""
    dst = j * h
    c = 0
    while c + 4 <= nc:
        s0 = c * h
        s1 = s0 + h
        s2 = s1 + h
        s3 = s2 + h
        v0 = front[s0 + j]
        v1 = front[s1 + j]
        v2 = front[s2 + j]
        v3 = front[s3 + j]
        if v0 != 0.0 or v1 != 0.0 or v2 != 0.0 or v3 != 0.0:
            for r in range(r0, h):
                x = (v0 * front[s0 + r] + v1 * front[s1 + r]) + (v2 * front[s2 + r] + v3 * front[s3 + r])
                front[dst + r] -= x
        c += 4
    for t in range(c, nc):
        v = front[t * h + j]
        if v != 0.0:
            src = t * h
            for r in range(r0, h):
                front[dst + r] -= v * front[src + r]


@njit(cache=True, nogil=True)
def _partial_cholesky(front, h, k):  # pragma: no cover - compiled
    """Factorise the first ``k`` columns of the front ``F`` (``front[c * h + r] = F[r, c]``,
    ``r >= c``, lower triangle only) in place and leave its update matrix (the Schur
    complement ``F22 - L21 L21^T``) in the trailing ``h - k`` columns.

    Left-looking: each of the ``k`` pivot columns takes the updates of the columns before it,
    then every trailing column takes all ``k`` of them in one visit (:func:`_sub_columns`: the
    column stays in L1), instead of ``k`` sweeps over the whole trailing matrix. Returns -1, or
    the first column whose pivot was not positive (its value left at ``front[c * h + c]``).
    """
    for c in range(k):
        cc = c * h
        _sub_columns(front, h, c, c, c)
        d = front[cc + c]
        if not d > 0.0:
            return c
        lv = np.sqrt(d)
        inv = 1.0 / lv
        front[cc + c] = lv
        for r in range(c + 1, h):
            front[cc + r] *= inv
    for c2 in range(k, h):
        _sub_columns(front, h, c2, c2, k)
    return -1


@njit(cache=True, nogil=True)
def multifrontal(
    s0,
    sstart,
    sptr,
    srows,
    cptr,
    cind,
    cval,
    offsets,
    buf,
    pivots,
    front,
    stack,
    pos,
    pending,
    nchild,
    ctr,
    upd,
    rel,
):  # pragma: no cover - compiled
    """Multifrontal Cholesky ``L L^T`` of the permuted ``N`` (lower part by columns, ``cptr``...),
    from supernode ``s0`` on; the caller factorises the large fronts (BLAS, LAPACK).

    ``offsets`` (from :func:`block_offsets`) place supernode ``s`` (columns ``[f, e)``,
    ``k = e - f``, rows below ``R``, ``h = k + |R|``) as the ``(h, k)`` block of ``L`` in
    column-major order at ``buf[offsets[s]:offsets[s + 1]]`` (rows ``f..e-1`` then ``R``, zeros
    above the diagonal); ``pivots`` receives the pivots ``L[j, j]**2``. The state: ``front``
    (``hmax^2``), ``stack`` (the update matrices), ``pos`` (``n``), ``pending`` (supernodes whose
    update matrices are on the stack), ``nchild`` (children of every supernode), ``ctr`` (the
    stack's end and the number of pending supernodes, both 0 at the start).

    Fronts of fewer than ``_LOOP_MAX_FLOPS`` multiply-adds (``k h^2``) are factorised here in
    loops. At a larger one the kernel returns ``s`` with the front assembled in
    ``front[:h * h]`` (``T[c, r] = F[r, c]`` for ``r >= c``, row-major ``(h, h)``); the
    caller factorises its first ``k`` columns in place, leaves ``L21 L21^T`` (``m x m``,
    column-major, its lower triangle) in ``upd`` instead of updating ``F22`` (no temporary, no
    pass of its own: it is subtracted here as the update matrix is stacked) and calls again with
    ``s0 = -s - 1``: the front is then stored and the sweep goes on. Returns ``nsup`` when done, or
    ``-col - 1`` for the first column whose pivot was not positive.
    """
    nsup = sstart.size - 1
    s = s0
    resume = s0 < 0
    if resume:
        s = -s0 - 1
    while s < nsup:
        f = sstart[s]
        e = sstart[s + 1]
        k = e - f
        m = sptr[s + 1] - sptr[s]
        h = k + m
        if not resume:
            for c in range(h):  # only the lower triangle of the front is ever read
                for q in range(c * h + c, (c + 1) * h):
                    front[q] = 0.0
            for a in range(k):
                pos[f + a] = a
            for a in range(m):
                pos[srows[sptr[s] + a]] = k + a
            for j in range(f, e):
                cj = (j - f) * h
                for p in range(cptr[j], cptr[j + 1]):
                    front[cj + pos[cind[p]]] += cval[p]
            # extend-add the children's update matrices (the last nchild entries of the stack)
            top = ctr[0]
            for _ in range(nchild[s]):
                ctr[1] -= 1
                c = pending[ctr[1]]
                mc = sptr[c + 1] - sptr[c]
                top -= mc * mc
                for a in range(mc):  # the child's rows in this front, looked up once
                    rel[a] = pos[srows[sptr[c] + a]]
                for a in range(mc):
                    pa = rel[a] * h
                    base = top + a * mc
                    for b in range(a, mc):
                        front[pa + rel[b]] += stack[base + b]
            ctr[0] = top
            if k * h * h >= _LOOP_MAX_FLOPS:
                return s
            d = _partial_cholesky(front, h, k)
            if d >= 0:
                return -(f + d) - 1
            for c in range(k):
                pivots[f + c] = front[c * h + c] ** 2
        # the factor's columns, then this supernode's update matrix onto the stack
        o = offsets[s]
        for c in range(k):
            for r in range(c, h):
                buf[o + c * h + r] = front[c * h + r]
        if m:
            top = ctr[0]
            for a in range(m):
                base = top + a * m
                src = (k + a) * h + k
                if resume:  # a large front: F22 - L21 L21^T, the product from the caller
                    for b in range(a, m):
                        stack[base + b] = front[src + b] - upd[a * m + b]
                else:
                    for b in range(a, m):
                        stack[base + b] = front[src + b]
            ctr[0] = top + m * m
            pending[ctr[1]] = s
            ctr[1] += 1
        resume = False
        s += 1
    return nsup


@njit(cache=True, nogil=True)
def block_solve(sstart, sptr, srows, offsets, buf, perm, b, out, t0, t1, x):  # pragma: no cover - compiled
    """``out[:, t0:t1] = N^-1 b[:, t0:t1]`` for ``N[perm][:, perm] = L L^T`` and any number of
    right-hand sides (``b``, ``out`` ``(n, nk)``), over the blocks of :func:`multifrontal`, in
    one call: the columns' rows of ``b`` gathered into the permuted order (into ``x``
    ``(n, t1 - t0)``, the caller's private work array: a buffer already in memory, not pages
    that numba's allocator would fault in on every call), the forward sweep (``L^-1``,
    supernodes up), the backward sweep (``L^-T``, down) and the scatter back into ``out``. Each
    column is the same operations whatever ``t0`` and ``t1``: blocks of columns may run in
    parallel threads and give the same bits.

    Every update is a row of ``x`` (the ``nk`` right-hand sides, contiguous) minus a sum of
    four scaled rows, ``(v0 x0 + v1 x1) + (v2 x2 + v3 x3)``: one load and store of the updated
    row per four multiply-adds, the loop over the right-hand sides vectorised (the rows below a
    supernode: four columns of ``L`` at a time, read in order; -7% time at 50 columns). The diagonal
    blocks are solved row by row in the same way (dot-product form), so that a supernode's
    own rows need no second buffer. One right-hand side: :func:`solve_one`.
    """
    n = b.shape[0]
    nk = t1 - t0
    nsup = sstart.size - 1
    for i in range(n):
        bi = b[perm[i]]
        xi = x[i]
        for t in range(nk):
            xi[t] = bi[t0 + t]
    for s in range(nsup):
        f = sstart[s]
        k = sstart[s + 1] - f
        q = sptr[s]
        h = k + sptr[s + 1] - q
        o = offsets[s]
        for r in range(k):  # x_r = (x_r - sum_{c < r} L[r, c] x_c) / L[r, r]
            _sub_rows(x[f + r], buf, o + r, h, x, f, 0, r)
            inv = 1.0 / buf[o + r * h + r]
            xr = x[f + r]
            for t in range(nk):
                xr[t] *= inv
        # x_i -= sum_c L[i, c] x_c for the rows i below (each x_i the terms of _sub_rows, in order)
        m = h - k
        c = 0
        while c + 4 <= k:
            x0, x1, x2, x3 = x[f + c], x[f + c + 1], x[f + c + 2], x[f + c + 3]
            p = o + c * h + k
            for a in range(m):
                v0, v1, v2, v3 = buf[p + a], buf[p + h + a], buf[p + 2 * h + a], buf[p + 3 * h + a]
                y = x[srows[q + a]]
                for t in range(nk):
                    y[t] -= (v0 * x0[t] + v1 * x1[t]) + (v2 * x2[t] + v3 * x3[t])
            c += 4
        for a in range(m):
            _sub_rows(x[srows[q + a]], buf, o + k + a, h, x, f, c, k)
    for s in range(nsup - 1, -1, -1):
        f = sstart[s]
        k = sstart[s + 1] - f
        q = sptr[s]
        m = sptr[s + 1] - q
        h = k + m
        o = offsets[s]
        # x_c = (x_c - sum_i L[i, c] x_i - sum_{r > c} L[r, c] x_r) / L[c, c]: the rows i below
        # four at a time, each group read once for every column c of the supernode (the k rows
        # x_c stay in cache); each x_c gets the same terms in the same order as column by column
        a = 0
        while a + 4 <= m:
            x0 = x[srows[q + a]]
            x1 = x[srows[q + a + 1]]
            x2 = x[srows[q + a + 2]]
            x3 = x[srows[q + a + 3]]
            for c in range(k):
                p = o + c * h + k + a
                v0 = buf[p]
                v1 = buf[p + 1]
                v2 = buf[p + 2]
                v3 = buf[p + 3]
                xc = x[f + c]
                for t in range(nk):
                    xc[t] -= (v0 * x0[t] + v1 * x1[t]) + (v2 * x2[t] + v3 * x3[t])
            a += 4
        for a2 in range(a, m):
            x0 = x[srows[q + a2]]
            for c in range(k):
                v0 = buf[o + c * h + k + a2]
                xc = x[f + c]
                for t in range(nk):
                    xc[t] -= v0 * x0[t]
        for c in range(k - 1, -1, -1):
            col = o + c * h
            xc = x[f + c]
            _sub_rows(xc, buf, col, 1, x, f, c + 1, k)
            inv = 1.0 / buf[col + c]
            for t in range(nk):
                xc[t] *= inv
    for i in range(n):
        oi = out[perm[i]]
        xi = x[i]
        for t in range(nk):
            oi[t0 + t] = xi[t]


@njit(cache=True, nogil=True)
def _sub_rows(y, buf, p0, stride, x, f, c0, c1):  # pragma: no cover - compiled
    """``y -= sum_{c0 <= c < c1} buf[p0 + c * stride] * x[f + c]``, four rows of ``x`` at a time."""
    nk = y.shape[0]
    c = c0
    while c + 4 <= c1:
        p = p0 + c * stride
        v0 = buf[p]
        v1 = buf[p + stride]
        v2 = buf[p + 2 * stride]
        v3 = buf[p + 3 * stride]
        x0 = x[f + c]
        x1 = x[f + c + 1]
        x2 = x[f + c + 2]
        x3 = x[f + c + 3]
        for t in range(nk):
            y[t] -= (v0 * x0[t] + v1 * x1[t]) + (v2 * x2[t] + v3 * x3[t])
        c += 4
    for c2 in range(c, c1):
        v0 = buf[p0 + c2 * stride]
        x0 = x[f + c2]
        for t in range(nk):
            y[t] -= v0 * x0[t]


@njit(cache=True, nogil=True)
def solve_one(sstart, sptr, srows, offsets, buf, x, backward):  # pragma: no cover - compiled
    """One sweep of ``L L^T y = x`` in place for one right-hand side (``x`` 1-D, permuted order),
    all supernodes in loops: forward (``L^-1``) or ``backward`` (``L^-T``)."""
    nsup = sstart.size - 1
    if not backward:
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
        return
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
