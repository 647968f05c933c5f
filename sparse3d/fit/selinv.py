"""Supernodal Cholesky machinery: blocked triangular solves and selected inversion.

:class:`_Supernodal` holds a lower Cholesky factor ``L`` as dense supernodal blocks, solves
``L L^T x = b`` for many right-hand sides at once and computes ``diag((L L^T)^-1)`` exactly
(the block form of Takahashi's recurrences) without forming the inverse.
:func:`_close_pattern` repairs factors whose explicit zeros were dropped.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg
import scipy.sparse
from scipy.linalg import lapack

from .._blas import single_threaded_blas


def _close_pattern(L: scipy.sparse.csc_matrix) -> scipy.sparse.csc_matrix:
    """Extend the pattern of a lower factor so it is closed under its etree.

    A Cholesky factor from which numerically zero entries were dropped (as
    SciPy does when it exports SuperLU's factor) may violate the property
    ``struct(L[:, j]) \\ {j}  ⊆  struct(L[:, parent(j)])`` that the selected
    inversion relies on.  This adds the missing entries as explicit zeros.
    """
    n = L.shape[0]
    L = scipy.sparse.csc_matrix(L)
    L.sort_indices()
    ptr, ind, dat = L.indptr, L.indices, L.data
    pending: dict[int, list[np.ndarray]] = {}
    out_rows: list[np.ndarray] = []
    out_vals: list[np.ndarray] = []
    counts = np.empty(n, dtype=np.int64)
    for j in range(n):
        rows = ind[ptr[j] : ptr[j + 1]]
        vals = dat[ptr[j] : ptr[j + 1]]
        extra = pending.pop(j, None)
        if extra is not None:
            merged = np.unique(np.concatenate([rows, *extra]))
            if merged.size != rows.size:
                new_vals = np.zeros(merged.size)
                new_vals[np.searchsorted(merged, rows)] = vals
                rows, vals = merged, new_vals
        if rows.size > 1:
            pending.setdefault(int(rows[1]), []).append(rows[2:])
        out_rows.append(rows)
        out_vals.append(vals)
        counts[j] = rows.size
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return scipy.sparse.csc_matrix((np.concatenate(out_vals), np.concatenate(out_rows), indptr), shape=(n, n))


def _tri_inverse(block: np.ndarray) -> np.ndarray:
    """The inverse of a lower-triangular block (zeros above its diagonal)."""
    if block.shape[0] == 1:
        return 1.0 / block
    # the strict upper part of the input is zero, so is the output's
    linv, info = lapack.dtrtri(block, lower=1)
    if info != 0:
        raise RuntimeError("internal error: singular diagonal block")
    return linv


def _tri_solve(block: np.ndarray, x: np.ndarray, transpose: bool) -> np.ndarray:
    """``block^-1 x`` (``block^-T x`` with ``transpose``) for a lower-triangular block."""
    trans = 1 if transpose else 0
    return scipy.linalg.solve_triangular(block, x, lower=True, trans=trans, check_finite=False)


class _Supernodal:
    """Dense-block view of a lower Cholesky factor ``L`` (``N = L L^T``).

    ``L`` must be CSC with sorted row indices, the diagonal first in every
    column, and a pattern closed under the elimination tree (true for a
    symbolic Cholesky pattern; see :func:`_close_pattern`).  Consecutive
    columns with nested patterns form a supernode ``s`` whose columns
    ``starts[s]:ends[s]`` share the rows ``rows[s]`` below the diagonal block;
    its entries are stored as a dense ``(ns + m, ns)`` block.
    """

    def __init__(self, L: scipy.sparse.csc_matrix) -> None:
        n = L.shape[0]
        ptr = L.indptr.astype(np.int64)
        ind, dat = L.indices, L.data
        cnt = np.diff(ptr)
        if n and (np.any(cnt == 0) or np.any(ind[ptr[:-1]] != np.arange(n))):
            raise RuntimeError("internal error: factor has a missing diagonal")
        # Column j + 1 continues the supernode of column j when its pattern is
        # the pattern of column j without j.
        cont = np.zeros(n, dtype=bool)
        if n > 1:
            second = ind[np.minimum(ptr[:-2] + 1, ind.size - 1)]
            cont[1:] = (cnt[:-1] > 1) & (cnt[:-1] == cnt[1:] + 1) & (second == np.arange(1, n))
        starts = np.flatnonzero(~cont)
        ends = np.append(starts[1:], n)
        ns = ends - starts
        height = cnt[starts]  # ns + m
        # Copy L into one flat buffer holding the (ns + m, ns) blocks one after
        # the other, each in column-major order: the entries of a column are
        # then contiguous, starting at its diagonal.
        offsets = np.zeros(starts.size + 1, dtype=np.int64)
        np.cumsum(height * ns, out=offsets[1:])
        local_col = np.arange(n) - np.repeat(starts, ns)
        col_start = np.repeat(offsets[:-1], ns) + local_col * (np.repeat(height, ns) + 1)
        dest = np.repeat(col_start - ptr[:-1], cnt)
        dest += np.arange(ind.size)
        buf = np.zeros(int(offsets[-1]))
        buf[dest] = dat
        del dest
        rows = [ind[ptr[f] + k : ptr[f + 1]].copy() for f, k in zip(starts.tolist(), ns.tolist())]
        self._init_blocks(n, starts, offsets, buf, rows)

    @classmethod
    def from_blocks(
        cls,
        starts: np.ndarray,
        offsets: np.ndarray,
        buf: np.ndarray,
        rows: list[np.ndarray],
        invert: bool = True,
    ) -> _Supernodal:
        """The factor from its blocks: supernode ``s`` has columns ``starts[s]:starts[s + 1]``
        (``starts`` has ``nsup + 1`` entries), the rows ``rows[s]`` below them, and its
        ``(k + m, k)`` block in column-major order at ``buf[offsets[s]:offsets[s + 1]]``
        (zeros above the diagonal). ``invert=False`` keeps no inverse diagonal blocks (as
        much memory as ``sum k^2``, 0.4 GB at a million sources): the selected inversion
        inverts each once as it goes, and solves use triangular solves."""
        self = cls.__new__(cls)
        self._init_blocks(int(starts[-1]), np.asarray(starts[:-1]), offsets, buf, rows, invert)
        return self

    def _init_blocks(
        self,
        n: int,
        starts: np.ndarray,
        offsets: np.ndarray,
        buf: np.ndarray,
        rows: list[np.ndarray],
        invert: bool = True,
    ) -> None:
        ends = np.append(starts[1:], n)
        ns = ends - starts
        m = np.array([r.size for r in rows], dtype=np.int64)
        self.n = n
        self.starts = starts
        self.ends = ends
        ks = ns.tolist()
        hs, os_ = (ns + m).tolist(), offsets.tolist()
        blocks = [buf[o : o + h * k].reshape(k, h).T for k, h, o in zip(ks, hs, os_)]
        self.rows: list[np.ndarray] = list(rows)  # rows below the diagonal block
        self.ldiag: list[np.ndarray] = [b[:k] for b, k in zip(blocks, ks)]  # the diagonal block (lower)
        self.lbelow: list[np.ndarray] = [b[k:] for b, k in zip(blocks, ks)]  # block of L below the diagonal
        # inverse of the diagonal block, or None where it is computed when needed (``invert``)
        with single_threaded_blas():
            self.linv: list[np.ndarray | None] = [
                _tri_inverse(d) if invert or k == 1 else None for d, k in zip(self.ldiag, ks)
            ]
        # the parent supernode: the one holding the first row below
        first = np.array([r[0] if r.size else 0 for r in rows], dtype=np.int64)
        sup_of_col = np.repeat(np.arange(starts.size), ns)
        self.parent = np.where(m > 0, sup_of_col[first], -1).astype(np.int64)

    def solve(self, b: np.ndarray) -> np.ndarray:
        """Solve ``L L^T x = b`` (``b`` in the factor's permuted order)."""
        x = np.array(b, dtype=np.float64, order="C", copy=True)
        with single_threaded_blas():
            self._solve_inplace(x)
        return x

    def _solve_inplace(self, x: np.ndarray) -> None:
        for s in range(self.starts.size):
            f, e = self.starts[s], self.ends[s]
            linv = self.linv[s]
            xs = linv @ x[f:e] if linv is not None else _tri_solve(self.ldiag[s], x[f:e], False)
            x[f:e] = xs
            if self.rows[s].size:
                r = self.rows[s]
                x[r] -= self.lbelow[s] @ xs
        for s in range(self.starts.size - 1, -1, -1):
            f, e = self.starts[s], self.ends[s]
            xs = x[f:e]
            if self.rows[s].size:
                xs = xs - self.lbelow[s].T @ x[self.rows[s]]
            linv = self.linv[s]
            x[f:e] = linv.T @ xs if linv is not None else _tri_solve(self.ldiag[s], xs, True)

    def inv_diag(self) -> np.ndarray:
        """Return ``diag((L L^T)^-1)`` by supernodal selected inversion.

        With ``Z = (L L^T)^-1`` and, for a supernode ``s`` with diagonal block
        ``L_ss`` and off-diagonal rows ``R``, ``U = L_Rs L_ss^-1``::

            Z_Rs = -Z_RR U
            Z_ss = L_ss^-T L_ss^-1 + U^T Z_RR U

        ``Z_RR`` only involves rows of the parent supernode's front, so the
        supernodes are processed from the root down, keeping each front
        ``Z[F, F]`` (``F`` = columns and rows of the supernode) until all of
        its children are done.  Cost is about that of the factorisation.
        """
        with single_threaded_blas():
            return self._inv_diag()

    def inv_entries(self, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Entries ``Z[i, j]`` of ``Z = (L L^T)^-1`` on the factor's pattern (permuted indices).

        The same sweep as :meth:`inv_diag`: every front ``Z[F, F]`` holds the entries of
        the inverse on the pattern of its columns.  Returns ``(values, found)``: pairs
        outside the pattern of ``L + L^T`` are not computed (``found`` False, value 0).
        """
        lo = np.minimum(i, j).astype(np.int64)
        hi = np.maximum(i, j).astype(np.int64)
        with single_threaded_blas():
            values, found = np.zeros(lo.size), np.zeros(lo.size, dtype=bool)
            self._inv_diag((lo, hi, values, found))
        return values, found

    def _front_positions(self) -> list[np.ndarray]:
        """For every supernode, the positions of its rows below in its parent's front
        ``F = [columns of the parent, rows below the parent]`` (computed once, vectorised).

        Raises RuntimeError if the factor's pattern is not closed (a row missing from the
        parent's front)."""
        rel = getattr(self, "_rel", None)
        if rel is not None:
            return rel
        nsup, n = self.starts.size, self.n
        m = np.array([r.size for r in self.rows], dtype=np.int64)
        allrows = np.concatenate([np.zeros(0, dtype=np.int64), *self.rows]).astype(np.int64)
        owner = np.repeat(np.arange(nsup), m)
        p = self.parent[owner]
        pos = allrows - self.starts[p]  # inside the parent's diagonal block
        below = allrows >= self.ends[p]
        if below.any():
            rstart = np.zeros(nsup + 1, dtype=np.int64)
            np.cumsum(m, out=rstart[1:])
            keys = owner * n + allrows  # sorted: by supernode, then row
            query = p[below] * n + allrows[below]
            at = np.searchsorted(keys, query)
            if at.max() >= keys.size or np.any(keys[at] != query):
                raise RuntimeError("internal error: factor pattern is not closed")
            pb = p[below]
            pos[below] = (self.ends[pb] - self.starts[pb]) + at - rstart[pb]
        bounds = np.zeros(nsup + 1, dtype=np.int64)
        np.cumsum(m, out=bounds[1:])
        bl = bounds.tolist()
        rel = [pos[a:b] for a, b in zip(bl[:-1], bl[1:])]
        self._rel = rel
        return rel

    def _inv_diag(self, pairs: tuple | None = None) -> np.ndarray:
        nsup = self.starts.size
        if pairs is not None:  # group the requested (row >= col) pairs by the column's supernode
            lo, hi, values, found = pairs
            sup_of_col = np.repeat(np.arange(nsup), self.ends - self.starts)
            order = np.argsort(sup_of_col[lo], kind="stable")
            bounds = np.searchsorted(sup_of_col[lo][order], np.arange(nsup + 1))
        rel = self._front_positions()
        diag = np.empty(self.n)
        nchild = np.bincount(self.parent[self.parent >= 0], minlength=nsup).tolist()
        parent = self.parent.tolist()
        starts, ends = self.starts.tolist(), self.ends.tolist()
        fronts: dict[int, np.ndarray] = {}
        for s in range(nsup - 1, -1, -1):
            f, e = starts[s], ends[s]
            ns = e - f
            linv = self.linv[s]
            if linv is None:
                linv = _tri_inverse(self.ldiag[s])
            rows = self.rows[s]
            m = rows.size
            zss = linv.T @ linv
            if m:
                p = parent[s]
                idx = rel[s]
                zrr = fronts[p].take(idx, 0).take(idx, 1)
                u = self.lbelow[s] @ linv
                zrs = zrr @ u
                zrs *= -1.0
                zss -= u.T @ zrs
                nchild[p] -= 1
                if nchild[p] == 0:
                    del fronts[p]
            diag[f:e] = zss.diagonal()
            if pairs is not None and bounds[s + 1] > bounds[s]:
                req = order[bounds[s] : bounds[s + 1]]
                c, r = lo[req] - f, hi[req]
                inside = r < e
                values[req[inside]] = zss[r[inside] - f, c[inside]]
                found[req[inside]] = True
                out = req[~inside]
                if out.size and m:
                    pos = np.minimum(np.searchsorted(rows, r[~inside]), m - 1)
                    hit = rows[pos] == r[~inside]
                    values[out[hit]] = zrs[pos[hit], c[~inside][hit]]
                    found[out[hit]] = True
            if nchild[s]:  # the front Z[F, F], F = [columns of s, rows below s], for its children
                front = np.empty((ns + m, ns + m))
                front[:ns, :ns] = zss
                if m:
                    front[ns:, :ns] = zrs
                    front[:ns, ns:] = zrs.T
                    front[ns:, ns:] = zrr
                fronts[s] = front
        return diag


def _inv_entries(sup: _Supernodal, perm: np.ndarray, solve: Any, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """``N^-1[i, j]`` from the supernodal factor of ``N[perm][:, perm]``.

    Pairs on the factor's pattern come from the selected inversion; the rare pairs of
    ``N``'s pattern that a factor dropped (an entry that cancelled to exactly 0) are read
    from solves with the unit vectors of their columns.
    """
    iperm = np.empty_like(perm)
    iperm[perm] = np.arange(perm.size)
    values, found = sup.inv_entries(iperm[np.asarray(i)], iperm[np.asarray(j)])
    if not found.all():
        miss = np.flatnonzero(~found)
        cols, inv = np.unique(np.asarray(j)[miss], return_inverse=True)
        E = np.zeros((perm.size, cols.size))
        E[cols, np.arange(cols.size)] = 1.0
        Z = solve(E)
        values[miss] = Z[np.asarray(i)[miss], inv]
    return values


def _blocks_inv_diag(
    sstart: np.ndarray, sptr: np.ndarray, srows: np.ndarray, offsets: np.ndarray, buf: np.ndarray
) -> np.ndarray:
    """``diag((L L^T)^-1)`` for ``L`` in the flat block layout of the built-in factorisation
    (:func:`._supernodal_kernels.multifrontal`): the sweep of :meth:`_Supernodal.inv_diag`
    compiled (:func:`._selinv_kernels.selinv_diag`), its large supernodes in BLAS here."""
    from ._selinv_kernels import selinv_diag

    nsup = sstart.size - 1
    k = np.diff(sstart)
    m = np.diff(sptr)
    h = k + m
    sparent = np.full(nsup, -1, dtype=np.intp)
    has = m > 0
    sparent[has] = np.searchsorted(sstart, srows[sptr[:-1][has]], side="right") - 1
    nleft = np.bincount(sparent[has], minlength=nsup).astype(np.intp)
    # the stack holds the fronts (h^2) of the ancestors of the current supernode that have children
    own = np.where(nleft > 0, h * h, 0).tolist()
    path = [0] * nsup
    par = sparent.tolist()
    for s in range(nsup - 1, -1, -1):
        path[s] = own[s] + (path[par[s]] if par[s] >= 0 else 0)
    kmax = int(k.max(initial=1))
    mmax = int(m.max(initial=1))
    fstack = np.empty(max(max(path, default=0), 1))
    fstart = np.zeros(nsup, dtype=np.intp)
    ids = np.empty(nsup, dtype=np.intp)
    ctr = np.zeros(2, dtype=np.intp)
    wpos = np.empty(mmax, dtype=np.intp)
    wl = np.empty(kmax * kmax)
    wu = np.empty(mmax * kmax)
    wzrr = np.empty(mmax * mmax)
    wzrs = np.empty(mmax * kmax)
    wzss = np.empty(kmax * kmax)
    diag = np.empty(int(sstart[-1]))
    state = (fstack, fstart, ids, ctr, wpos, wl, wu, wzrr, wzrs, wzss, diag)
    s = nsup - 1
    with single_threaded_blas():
        while True:
            s = selinv_diag(s, sstart, sptr, srows, offsets, buf, sparent, nleft, *state)
            if s < 0:
                return diag
            ks, ms, o = int(k[s]), int(m[s]), int(offsets[s])
            Bt = buf[o : o + ks * (ks + ms)].reshape(ks, ks + ms)  # (L_ss | L_Rs)^T
            linv = _tri_inverse(np.ascontiguousarray(Bt[:, :ks].T))
            zss = linv.T @ linv
            if ms:
                u = Bt[:, ks:].T @ linv
                zrs = -(wzrr[: ms * ms].reshape(ms, ms) @ u)
                zss -= u.T @ zrs
                wzrs[: ms * ks] = zrs.T.ravel()
            wzss[: ks * ks] = zss.ravel()
            s = -s - 1
