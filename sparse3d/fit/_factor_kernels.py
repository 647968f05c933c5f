"""Numba kernels that reshape a sparse Cholesky factor for the supernodal machinery.

Imported lazily by :mod:`sparse3d.fit.factor`; compiled once and cached on disk.

A simplicial factor (one column at a time, as ``qdldl`` produces) has thousands of tiny
*fundamental* supernodes (runs of columns with nested patterns). The supernodal solve and the
selected inversion of :mod:`sparse3d.fit.selinv` loop over supernodes in Python, so
:func:`amalgamate` merges each supernode into its parent when that adds few explicit zeros
(*relaxed supernodes*, as CHOLMOD does), after :func:`postorder` has made every subtree of
the elimination tree a contiguous range of columns.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# the relaxed-amalgamation defaults and rule live, numba-free, in .relaxed (the NumPy path uses them)
from .relaxed import NRELAX, ZRELAX  # noqa: F401 - re-exported to ._supernodal_kernels
from .relaxed import relaxed_merge as _relaxed_merge_rule

#: numba's on-disk cache keys a kernel on the file that defines it: ``amalgamate`` inlines
#: ``relaxed_merge`` from :mod:`.relaxed`, so a change there would leave stale cached code here.
#: This digest of the rule and ``NRELAX``/``ZRELAX`` (recomputed by ``tests/test_fit_compiled.py``,
#: like ``_supernodal_kernels.DEPENDENCY_DIGEST``) must follow any such change; updating it edits
#: this file, which invalidates this module's cache.
DEPENDENCY_DIGEST = "7a825d3b107a0ddf"

# the one signature of each kernel (see sparse3d._compiled): callers pass exactly these types.
# The factor's index arrays are int32, as SciPy and qdldl hand them out (casting a factor of
# 10^8 entries to intp would cost 0.4 GB per array); a factor of 2**31 entries or more, beyond
# this machine class, would compile an int64 variant on first use.
_I = "intp[::1]"
_L = "int32[::1]"
SIGNATURES = {
    "etree_parent": f"({_L}, {_L})",
    "postorder": f"({_I},)",
    "amalgamate": f"({_L}, {_L}, float64[::1], float64[::1], {_I}, float64[::1])",
    "ldlt_solve": f"({_L}, {_L}, float64[::1], float64[::1], float64[:, ::1])",
}


# inlined into amalgamate and ._supernodal_kernels.supernodes: one rule for every path
relaxed_merge = njit(cache=True, nogil=True, inline="always")(_relaxed_merge_rule)


@njit(cache=True, nogil=True)
def etree_parent(indptr, indices):  # pragma: no cover - compiled
    """Parent of every column in the elimination tree of a *strictly* lower factor (CSC, sorted)."""
    n = indptr.size - 1
    parent = np.full(n, -1, dtype=np.int64)
    for j in range(n):
        if indptr[j + 1] > indptr[j]:
            parent[j] = indices[indptr[j]]
    return parent


@njit(cache=True, nogil=True)
def postorder(parent):  # pragma: no cover - compiled
    """A postorder of the forest ``parent`` (children in increasing order, -1 for roots)."""
    n = parent.size
    head = np.full(n, -1, dtype=np.int64)
    nxt = np.full(n, -1, dtype=np.int64)
    for j in range(n - 1, -1, -1):
        p = parent[j]
        if p >= 0:
            nxt[j] = head[p]
            head[p] = j
    post = np.empty(n, dtype=np.int64)
    stack = np.empty(n, dtype=np.int64)
    k = 0
    for r in range(n):
        if parent[r] >= 0:
            continue
        top = 0
        stack[0] = r
        while top >= 0:
            j = stack[top]
            c = head[j]
            if c == -1:
                top -= 1
                post[k] = j
                k += 1
            else:
                head[j] = nxt[c]
                top += 1
                stack[top] = c
    return post


@njit(cache=True, nogil=True)
def amalgamate(indptr, indices, data, dvec, nrelax, zrelax):  # pragma: no cover - compiled
    """Relaxed supernodes of a postordered ``L D L^T``, as a padded Cholesky factor.

    ``(indptr, indices, data)`` is the *strictly* lower part of a unit lower factor ``L``
    in CSC with sorted rows and a pattern closed under its elimination tree, whose columns
    are in a postorder of that tree; ``dvec`` is ``D``. Returns CSC arrays of the Cholesky
    factor ``(L + I) sqrt(D)`` in which each merged supernode ``[f, e)`` with rows ``R``
    below it stores, in column ``c``, the rows ``c..e-1`` and ``R`` (the diagonal first;
    zeros where ``L`` had no entry).
    """
    n = indptr.size - 1
    # fundamental supernodes: column j continues j - 1 when its pattern is j - 1's without j
    starts = np.empty(n + 1, dtype=np.int64)
    ns = 0
    for j in range(n):
        cont = False
        if j > 0:
            cprev = indptr[j] - indptr[j - 1]
            if cprev > 0 and cprev == indptr[j + 1] - indptr[j] + 1 and indices[indptr[j - 1]] == j:
                cont = True
        if not cont:
            starts[ns] = j
            ns += 1
    starts[ns] = n
    # greedy merging along the chain child -> parent when the child immediately precedes it
    gstart = np.empty(ns + 1, dtype=np.int64)  # merged groups [gstart[g], gstart[g + 1])
    ng = 0
    zeros = 0  # explicit zeros of the current group
    entries = 0  # stored entries of the current group
    for s in range(ns):
        f = starts[s]
        e = starts[s + 1]
        k = e - f
        mrows = indptr[f + 1] - indptr[f] + 1 - k  # rows below the diagonal block
        own = k * (k + 1) // 2 + k * mrows
        merged = False
        if ng > 0:
            gf = gstart[ng - 1]
            last = f - 1  # last column of the previous group
            if indptr[last + 1] > indptr[last] and indices[indptr[last]] == f:
                # the previous group's parent is this supernode's first column
                gk = f - gf
                gm = indptr[gf + 1] - indptr[gf] + 1 - gk  # its rows below
                add = gk * (k + mrows - gm)  # zeros added to the group's columns
                tk = gk + k
                tz = zeros + add
                te = entries + own + add
                if relaxed_merge(tk, tz, te, nrelax, zrelax):
                    merged = True
                    zeros = tz
                    entries = te
        if not merged:
            gstart[ng] = f
            ng += 1
            zeros = 0
            entries = own
    gstart[ng] = n
    # padded Cholesky factor
    counts = np.zeros(n + 1, dtype=np.int64)
    for g in range(ng):
        f = gstart[g]
        e = gstart[g + 1]
        top = e - 1
        m = indptr[top + 1] - indptr[top]  # rows below the group = rows below its last column
        for c in range(f, e):
            counts[c + 1] = (e - c) + m
    optr = np.cumsum(counts)
    oind = np.empty(optr[n], dtype=np.int64)
    odat = np.zeros(optr[n], dtype=np.float64)
    for g in range(ng):
        f = gstart[g]
        e = gstart[g + 1]
        top = e - 1
        below = indices[indptr[top] : indptr[top + 1]]
        for c in range(f, e):
            o = optr[c]
            h = e - c
            for t in range(h):
                oind[o + t] = c + t
            for t in range(below.size):
                oind[o + h + t] = below[t]
            sd = np.sqrt(dvec[c])
            odat[o] = sd
            # scatter column c of L into the padded pattern (both sorted)
            q = o + 1
            end = optr[c + 1]
            for p in range(indptr[c], indptr[c + 1]):
                r = indices[p]
                while q < end and oind[q] != r:
                    q += 1
                if q == end:
                    raise ValueError("factor pattern is not closed under its elimination tree")
                odat[q] = data[p] * sd
    return optr, oind, odat


@njit(cache=True, nogil=True)
def ldlt_solve(indptr, indices, data, dvec, x):  # pragma: no cover - compiled
    """Solve ``(L + I) D (L + I)^T y = x`` in place; ``L`` strictly lower CSC, ``x`` ``(n, k)``."""
    n, k = x.shape
    for j in range(n):
        for p in range(indptr[j], indptr[j + 1]):
            i = indices[p]
            v = data[p]
            for t in range(k):
                x[i, t] -= v * x[j, t]
    for j in range(n):
        inv = 1.0 / dvec[j]
        for t in range(k):
            x[j, t] *= inv
    for j in range(n - 1, -1, -1):
        for p in range(indptr[j], indptr[j + 1]):
            i = indices[p]
            v = data[p]
            for t in range(k):
                x[j, t] -= v * x[i, t]
