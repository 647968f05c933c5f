"""The built-in sparse Cholesky factorisation (``solver="nd"``): nested dissection, supernodal.

For a design of regular stamps the normal matrix is ordered by geometric nested dissection
(:mod:`.ordering`) and factorised by a multifrontal supernodal ``L L^T`` whose dense updates
run in BLAS (:mod:`._supernodal_kernels`). The factor is written once, directly as the
supernodal blocks that the solves and the selected inversion (:mod:`.selinv`) use.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

from .._blas import single_threaded_blas
from .factor import _NotPositiveDefinite, _small_pivots, _SupernodalFactor
from .ordering import Boxes, nested_dissection_order
from .selinv import _Supernodal


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
        rptr, rind, cptr, cind, cval = K.permute_lower(indptr, indices, data, iperm)
        parent = K.etree(rptr, rind)
        post = postorder(parent)
        if not np.array_equal(post, np.arange(n)):  # relabel in a postorder of the etree
            perm = perm[post]
            iperm[perm] = np.arange(n)
            del rptr, rind, cptr, cind, cval
            rptr, rind, cptr, cind, cval = K.permute_lower(indptr, indices, data, iperm)
            parent = K.etree(rptr, rind)
        del indptr, indices, data
        cc = K.column_counts(rptr, rind, parent)
        del rptr, rind
        sstart = K.supernodes(parent, cc)
        sptr, srows, _, stack, hmax = K.supernode_rows(sstart, cc, cptr, cind, parent)
        with single_threaded_blas():
            offsets, buf, pivots, bad = K.multifrontal(
                sstart, sptr, srows, cptr, cind, cval, np.array([stack, hmax], dtype=np.intp)
            )
        del cptr, cind, cval
        if bad >= 0:
            raise _NotPositiveDefinite()
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

    def solve(self, b: np.ndarray) -> np.ndarray:
        from ._supernodal_kernels import block_solve

        b2 = np.asarray(b, dtype=np.float64).reshape(self.n, -1)
        x = np.ascontiguousarray(b2[self.perm])
        with single_threaded_blas():  # many small products: threads only synchronise
            block_solve(*self._blocks, x)
        out = np.empty(x.shape)
        out[self.perm] = x
        return out.reshape(b.shape)
