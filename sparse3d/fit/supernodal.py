"""The built-in sparse Cholesky factorisation (``solver="nd"``): nested dissection, supernodal.

For a design of regular stamps the normal matrix is ordered by geometric nested dissection
(:mod:`.ordering`) and factorised by a multifrontal supernodal ``L L^T`` whose dense updates
run in BLAS (:mod:`._supernodal_kernels`). The factor is written once, directly as the
supernodal blocks that the solves and the selected inversion (:mod:`.selinv`) use.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

from .. import _pool, _threads
from .._blas import single_threaded_blas
from .factor import _NotPositiveDefinite, _small_pivots, _SupernodalFactor
from .ordering import Boxes, nested_dissection_order
from .selinv import _blocks_inv_diag, _Supernodal


def _multifrontal(
    sstart: np.ndarray,
    sptr: np.ndarray,
    srows: np.ndarray,
    sparent: np.ndarray,
    cptr: np.ndarray,
    cind: np.ndarray,
    cval: np.ndarray,
    stack_size: int,
    hmax: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The numeric factorisation: :func:`._supernodal_kernels.multifrontal` runs the sweep and
    hands the large fronts back, whose first ``k`` columns are factorised here by LAPACK
    (``potrf``) and BLAS (``trsm``, ``syrk``). Returns ``(offsets, buf, pivots)``; raises
    :class:`_NotPositiveDefinite` at a pivot that is not positive."""
    from scipy.linalg import blas, lapack

    from ._supernodal_kernels import multifrontal

    nsup = sstart.size - 1
    n = int(sstart[-1])
    k = np.diff(sstart)
    offsets = np.zeros(nsup + 1, dtype=np.intp)
    np.cumsum(k * (k + np.diff(sptr)), out=offsets[1:])
    buf = np.zeros(int(offsets[-1]))
    pivots = np.zeros(n)
    front = np.empty(max(int(hmax), 1) ** 2)
    stack = np.empty(max(int(stack_size), 1))
    pos = np.empty(n, dtype=np.intp)
    pending = np.empty(nsup, dtype=np.intp)
    nchild = np.bincount(sparent[sparent >= 0], minlength=nsup).astype(np.intp)
    ctr = np.zeros(2, dtype=np.intp)
    upd = np.empty(max(int(hmax), 1) ** 2)  # a large front's L21 L21^T (syrk's output, in place)
    rel = np.empty(max(int(hmax), 1), dtype=np.intp)  # a child's rows in its parent's front
    state = (front, stack, pos, pending, nchild, ctr, upd, rel)
    args = (sstart, sptr, srows, cptr, cind, cval, offsets, buf, pivots, *state)
    s = 0
    with single_threaded_blas():
        while True:
            s = multifrontal(s, *args)
            if s < 0:
                raise _NotPositiveDefinite()
            if s == nsup:
                return offsets, buf, pivots
            f, ks = int(sstart[s]), int(k[s])
            h = ks + int(sptr[s + 1] - sptr[s])
            T = front[: h * h].reshape(h, h)  # T[c, r] = F[r, c], r >= c: the upper triangle of F
            # F11 = U^T U with U = L11^T (upper), read as T's upper triangle
            U, info = lapack.dpotrf(T[:ks, :ks], lower=0, clean=1)
            if info != 0:
                raise _NotPositiveDefinite()
            T[:ks, :ks] = U
            pivots[f : f + ks] = np.diagonal(U) ** 2
            if h > ks:
                # T[:k, k:] = F21^T; L21 = F21 U^-1 (trsm from the right on a Fortran copy of F21:
                # 1.4-1.8x faster than from the left on F21^T); the Schur complement F22 - L21 L21^T
                X = blas.dtrsm(1.0, U, np.asfortranarray(T[:ks, ks:].T), side=1, lower=0, overwrite_b=1)
                T[:ks, ks:] = X.T
                # the kernel subtracts it from F22 as it stacks the update matrix
                m = h - ks
                C = upd[: m * m].reshape(m, m, order="F")
                blas.dsyrk(1.0, X, beta=0.0, c=C, trans=0, lower=1, overwrite_c=1)
            s = -s - 1


class _NDFactor(_SupernodalFactor):
    """``N[p][:, p] = L L^T``: nested-dissection order ``p``, multifrontal supernodal ``L``."""

    name = "nd"

    def __init__(self, N: scipy.sparse.csr_matrix, boxes: Boxes) -> None:
        from . import _supernodal_kernels as K
        from ._factor_kernels import postorder

        n = N.shape[0]
        self.n = n
        indptr = np.ascontiguousarray(N.indptr, dtype=np.intp)
        indices = np.ascontiguousarray(N.indices, dtype=np.intp)
        data = np.ascontiguousarray(N.data, dtype=np.float64)
        perm = nested_dissection_order(boxes, n)
        iperm = np.empty(n, dtype=np.intp)
        iperm[perm] = np.arange(n)
        nnz = indices.size  # an upper bound of the strictly lower entries
        rind = np.empty(nnz, dtype=np.intp)
        cind = np.empty(nnz, dtype=np.intp)
        cval = np.empty(nnz)
        # the rows alone for the elimination tree; relabelled in a postorder of it (an equivalent
        # ordering: the same fill, the tree relabelled), then the rows and columns once
        rptr, _ = K.permute_lower(indptr, indices, data, iperm, rind, cind[:0], cval[:0])
        parent = K.etree(rptr, rind)
        post = postorder(parent)
        if not np.array_equal(post, np.arange(n)):
            perm = perm[post]
            iperm[perm] = np.arange(n)
            ipost = np.empty(n, dtype=np.intp)
            ipost[post] = np.arange(n)
            above = parent[post]  # the old parents, at the new positions
            parent = np.where(above >= 0, ipost[np.maximum(above, 0)], -1)
        rptr, cptr = K.permute_lower(indptr, indices, data, iperm, rind, cind, cval)
        del indptr, indices, data
        cc = K.column_counts(rptr, rind, parent)
        del rptr, rind
        sstart = K.supernodes(parent, cc)
        sptr, srows, sparent, stack, hmax = K.supernode_rows(sstart, cc, cptr, cind, parent)
        offsets, buf, pivots = _multifrontal(sstart, sptr, srows, sparent, cptr, cind, cval, stack, hmax)
        del cptr, cind, cval
        small = _small_pivots(pivots, N.diagonal()[perm])
        if small.size:
            raise _NotPositiveDefinite(perm[small])
        self.perm = perm
        self._blocks = (sstart, sptr, srows, offsets, buf)
        self._super = None

    @property
    def nnz(self) -> int:
        """Entries of the supernodal factor (explicit zeros of relaxed supernodes included,
        the zeros above each diagonal block not)."""
        sstart, sptr = self._blocks[0], self._blocks[1]
        k = np.diff(sstart)
        return int(np.sum(k * (k + 1) // 2 + k * np.diff(sptr)))

    def _supernodal(self) -> _Supernodal:
        if self._super is None:
            sstart, sptr, srows, offsets, buf = self._blocks
            rows = np.split(srows, sptr[1:-1])
            self._super = _Supernodal.from_blocks(sstart, offsets, buf, rows, invert=False)
        return self._super

    def inv_diag(self) -> np.ndarray:
        """Return ``diag(N^-1)`` by the compiled selected inversion over the factor's blocks."""
        d = np.empty(self.n)
        d[self.perm] = _blocks_inv_diag(*self._blocks)
        return d

    def solve(self, b: np.ndarray) -> np.ndarray:
        """``N^-1 b`` for ``b`` ``(n,)`` or ``(n, k)``: every compiled sweep in one call."""
        from ._supernodal_kernels import block_solve, solve_one

        b2 = np.ascontiguousarray(np.asarray(b, dtype=np.float64).reshape(self.n, -1))
        # many columns: lent by the pool, a dropped result's pages (fresh pages cost their faults:
        # up to ~6 us per 4 KiB page on a VM, 60 ms for 100 frames of 50,000 weights)
        out = _pool.lend(b2.shape, np.float64)
        if b2.shape[1] == 1:
            x = b2[self.perm, 0]
            for backward in (False, True):
                solve_one(*self._blocks, x, backward)
            out[self.perm, 0] = x
        else:  # blocks of columns in threads (cut at multiples of 8 columns: few shared cache lines)
            nk = b2.shape[1]
            edges = _threads.split(nk, _threads.threads_for(2 * self._blocks[4].size * nk), align=8)
            args = (*self._blocks, self.perm, b2, out)
            # each block's permuted work array lent by the pool: after the first fit, pages already
            # in memory (a fresh (n, nk) array costs its page faults: 4.5 ms of a 100-frame solve)
            work = [_pool.lend((self.n, t1 - t0), np.float64) for t0, t1 in zip(edges[:-1], edges[1:])]
            blocks = [(*args, t0, t1, w) for t0, t1, w in zip(edges[:-1], edges[1:], work)]
            _threads.run(block_solve, blocks)
            del work, blocks
        return out.reshape(b.shape)
