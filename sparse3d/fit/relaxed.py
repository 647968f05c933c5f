"""Relaxed supernodes: the amalgamation rule and its NumPy implementation for small factors.

A simplicial factor (one column at a time, as ``qdldl`` produces) has many tiny *fundamental*
supernodes (runs of columns with nested patterns). The blocked solves and the selected
inversion of :mod:`.selinv` loop over supernodes in Python, so each supernode is merged into
its parent when that adds few explicit zeros (*relaxed supernodes*, as CHOLMOD does), after a
postorder of the elimination tree has made every subtree a contiguous range of columns.

:func:`relaxed_merge` is the one definition of the rule: plain Python here for the NumPy path
(:func:`_numpy_relaxed_supernodes`, small factors: no numba import), compiled and inlined by
:mod:`._factor_kernels` into its ``amalgamate`` (large qdldl factors) and into
:mod:`._supernodal_kernels` (``solver="nd"``). numba's cache does not see edits here: changing
the rule or the defaults means updating ``DEPENDENCY_DIGEST`` in both kernel modules (the value
``tests/test_fit_compiled.py`` prints), which invalidates their cached code.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse

from .selinv import _Supernodal

# CHOLMOD's relaxed-amalgamation defaults: a merged supernode of at most NRELAX[i] columns
# may hold a fraction of explicit zeros below ZRELAX[i]; up to NRELAX[0] columns always merge.
NRELAX = (4, 16, 48)
ZRELAX = (0.8, 0.1, 0.05)


def relaxed_merge(ncols: int, zeros: int, entries: int, nrelax: Any, zrelax: Any) -> bool:
    """The relaxed-amalgamation rule: whether a merged supernode of ``ncols`` columns holding
    ``zeros`` explicit zeros among ``entries`` stored entries stays merged (always up to
    ``nrelax[0]`` columns; up to ``nrelax[i + 1]`` columns with a zero fraction below
    ``zrelax[i]``; beyond, below ``zrelax[2]``).

    The one place of the rule: plain Python for the NumPy path (:func:`_relaxed_groups`),
    compiled and inlined by :mod:`._factor_kernels` into :func:`._factor_kernels.amalgamate`
    and :func:`._supernodal_kernels.supernodes`.
    """
    if ncols <= nrelax[0]:
        return True
    frac = zeros / entries
    if ncols <= nrelax[1]:
        return frac < zrelax[0]
    if ncols <= nrelax[2]:
        return frac < zrelax[1]
    return frac < zrelax[2]


def _etree_postorder(indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """A postorder of the elimination tree of a strictly lower factor (CSC, sorted), NumPy/SciPy only.

    The same order as the compiled :func:`._factor_kernels.postorder` (children in increasing
    order): the reverse of a depth-first preorder that visits the children in decreasing
    order, from a virtual root above the forest's roots (SciPy's ``depth_first_order``).
    """
    from scipy.sparse.csgraph import depth_first_order

    n = indptr.size - 1
    has = indptr[1:] > indptr[:-1]
    parent = np.full(n, n, dtype=np.intp)  # n: the virtual root
    parent[has] = indices[indptr[:-1][has]]
    child = np.lexsort((-np.arange(n), parent))  # by parent, children decreasing
    gptr = np.zeros(n + 2, dtype=np.intp)
    np.cumsum(np.bincount(parent, minlength=n + 1), out=gptr[1:])
    tree = scipy.sparse.csr_matrix((np.ones(n), child, gptr), shape=(n + 1, n + 1))
    pre = depth_first_order(tree, n, directed=True, return_predecessors=False)
    return np.ascontiguousarray(pre[:0:-1], dtype=np.intp)


def _relaxed_groups(
    indptr: np.ndarray, indices: np.ndarray, nrelax: tuple = NRELAX, zrelax: tuple = ZRELAX
) -> np.ndarray:
    """The relaxed supernodes of a postordered strictly lower factor (CSC, sorted, closed
    pattern), NumPy only: their first columns and ``n``, shape ``(ngroups + 1,)``.

    The fundamental supernodes (runs of columns whose pattern is the previous one's without
    it) are merged greedily along the chain child -> parent, by :func:`relaxed_merge`, exactly
    as :func:`._factor_kernels.amalgamate` merges them (the same counts of explicit zeros).
    """
    n = indptr.size - 1
    cnt = np.diff(indptr)
    nz = cnt > 0
    first = np.full(n, -1, dtype=np.int64)  # each column's parent (first row below it), -1: a root
    first[nz] = indices[indptr[:-1][nz]]
    cont = np.zeros(n, dtype=bool)
    cont[1:] = nz[:-1] & (cnt[:-1] == cnt[1:] + 1) & (first[:-1] == np.arange(1, n))
    starts = np.flatnonzero(~cont)
    k = np.diff(np.append(starts, n))
    mrows = cnt[starts] + 1 - k  # rows below each fundamental supernode's diagonal block
    own = (k * (k + 1) // 2 + k * mrows).tolist()
    # whether the column before each supernode has it as its parent (a chain link)
    linked = np.zeros(starts.size, dtype=bool)
    linked[1:] = first[starts[1:] - 1] == starts[1:]
    gstart = []
    zeros = entries = gf = gh = 0  # the current group's first column and its height (cnt + 1)
    for f, ks, ms, o, link in zip(starts.tolist(), k.tolist(), mrows.tolist(), own, linked.tolist()):
        if link:
            gk = f - gf
            add = gk * (ks + ms - (gh - gk))  # zeros added to the group's columns
            if relaxed_merge(gk + ks, zeros + add, entries + o + add, nrelax, zrelax):
                zeros += add
                entries += o + add
                continue
        gstart.append(f)
        gf, gh, zeros, entries = f, ks + ms, 0, o
    gstart.append(n)
    return np.array(gstart, dtype=np.int64)


def _numpy_relaxed_supernodes(
    L: scipy.sparse.csc_matrix, D: np.ndarray, nrelax: tuple = NRELAX, zrelax: tuple = ZRELAX
) -> tuple[np.ndarray, _Supernodal]:
    """The Cholesky factor ``(L + I) sqrt(D)`` of a unit ``L D L^T`` as relaxed supernodal blocks,
    NumPy/SciPy only (the small-problem twin of :func:`_relaxed_supernodal_factor`, which needs numba).

    ``L`` is strictly lower (CSC, sorted, pattern closed under its elimination tree). Returns
    ``(post, sup)``: ``sup`` holds the factor of ``N[post][:, post]``, its columns in the
    postorder ``post`` of the elimination tree, merged into relaxed supernodes
    (:func:`_relaxed_groups`) whose dense blocks are written directly, explicit zeros
    included, so that the Python loops of :mod:`.selinv` run over few, larger blocks.
    """
    n = L.shape[0]
    indptr = L.indptr.astype(np.int64)
    indices = L.indices.astype(np.int64)
    data = np.asarray(L.data, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    post = _etree_postorder(indptr, indices)
    if not np.array_equal(post, np.arange(n)):
        ipost = np.empty(n, dtype=np.int64)
        ipost[post] = np.arange(n)
        Lp = scipy.sparse.csc_matrix((data, ipost[indices], indptr), shape=(n, n))[:, post]
        Lp.sort_indices()
        indptr, indices, data, D = Lp.indptr.astype(np.int64), Lp.indices.astype(np.int64), Lp.data, D[post]
    gstart = _relaxed_groups(indptr, indices, nrelax, zrelax)
    f, e = gstart[:-1], gstart[1:]
    k = e - f
    below_ptr = np.stack([indptr[e - 1], indptr[e]])  # rows below a group: those of its last column
    m = below_ptr[1] - below_ptr[0]
    h = k + m
    offsets = np.zeros(f.size + 1, dtype=np.int64)
    np.cumsum(h * k, out=offsets[1:])
    group = np.repeat(np.arange(f.size), k)  # of every column
    local = np.arange(n) - f[group]
    col0 = offsets[:-1][group] + local * h[group]  # where each column's block column starts
    buf = np.zeros(int(offsets[-1]))
    sd = np.sqrt(D)
    buf[col0 + local] = sd
    cnt = np.diff(indptr)
    col = np.repeat(np.arange(n), cnt)
    g = group[col]
    inside = indices < e[g]  # in the group's diagonal block
    row_in_block = indices - f[g]
    # rows below the group: the rank of the row among the group's rows below (both sorted)
    rows = [indices[a:b] for a, b in zip(below_ptr[0].tolist(), below_ptr[1].tolist())]
    below_start = np.zeros(f.size + 1, dtype=np.int64)
    np.cumsum(m, out=below_start[1:])
    # sorted: by group, then row
    keys = np.repeat(np.arange(f.size) * n, m) + np.concatenate([np.zeros(0, dtype=np.int64), *rows])
    out = ~inside
    gout = g[out]
    key = gout * n + indices[out]
    pos = np.searchsorted(keys, key)
    if pos.size and (pos.max() >= keys.size or np.any(keys[pos] != key)):
        raise RuntimeError("internal error: factor pattern is not closed under its elimination tree")
    row_in_block[out] = k[gout] + pos - below_start[gout]
    buf[col0[col] + row_in_block] = data * sd[col]
    return post, _Supernodal.from_blocks(gstart, offsets, buf, rows)


def _relaxed_supernodal_factor(L: scipy.sparse.csc_matrix, D: np.ndarray) -> tuple[np.ndarray, Any]:
    """The Cholesky factor ``(L + I) sqrt(D)`` of a unit ``L D L^T``, ready for :class:`_Supernodal`.

    ``L`` is strictly lower (CSC, sorted, closed pattern). Returns ``(post, Lsn)``: ``Lsn``
    is the factor of ``N[post][:, post]`` (in the factor's own order), its columns in a
    postorder ``post`` of the elimination tree and amalgamated into relaxed supernodes with
    explicit zeros (see :mod:`._factor_kernels`).
    """
    from ._factor_kernels import NRELAX, ZRELAX, amalgamate, etree_parent, postorder

    n = L.shape[0]
    indptr, indices = _factor_index(L.indptr, L.nnz), _factor_index(L.indices, L.nnz)
    data = np.ascontiguousarray(L.data, dtype=np.float64)
    post = postorder(etree_parent(indptr, indices))
    if not np.array_equal(post, np.arange(n)):  # AMD's orders are usually postordered already
        ipost = np.empty(n, dtype=np.intp)
        ipost[post] = np.arange(n)
        Lp = scipy.sparse.csc_matrix((data, ipost[indices], indptr), shape=(n, n))[:, post]
        Lp.sort_indices()
        indptr, indices = _factor_index(Lp.indptr, Lp.nnz), _factor_index(Lp.indices, Lp.nnz)
        data, D = Lp.data, np.ascontiguousarray(D[post])
        del Lp
    optr, oind, odat = amalgamate(
        indptr, indices, data, D, np.array(NRELAX, dtype=np.intp), np.array(ZRELAX, dtype=np.float64)
    )
    return post, scipy.sparse.csc_matrix((odat, oind, optr), shape=(n, n))


def _factor_index(a: np.ndarray, nnz: int) -> np.ndarray:
    """A factor's index array as the compiled kernels take it: int32 (intp from 2**31 entries)."""
    return np.ascontiguousarray(a, dtype=np.int32 if nnz < 2**31 - 1 else np.intp)
