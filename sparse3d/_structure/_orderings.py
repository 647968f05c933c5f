"""The derived orderings (source of each element, CSC/CSR/COO orders, canonical values) shared by
the single-block and the grouped structure."""

from __future__ import annotations

from functools import cached_property

import numpy as np

from .._options import check_dense_allocation
from .positions import (
    _readonly,
    index_dtype,
)


class _Orderings:
    """Derived orderings shared by single-block and grouped structures.

    They need only the bounds (``imshape``, ``nsources``) and the flat element space:
    ``block_shape`` (the values' shape), ``nelements``, ``pixel`` (flat pixel per element,
    ``H*W`` off the image), ``source_counts`` and ``source_major`` (in-image elements in
    source-major order).
    """

    grouped = False

    @property
    def shape(self) -> tuple[int, int, int]:
        """Logical shape ``(H, W, nsources)``."""
        return (self.imshape[0], self.imshape[1], self.nsources)

    @property
    def npixels(self) -> int:
        return self.imshape[0] * self.imshape[1]

    @cached_property
    def source_of(self) -> np.ndarray:
        """Source index of every in-image element, in source-major (CSC) order."""
        counts = self.source_counts
        return _readonly(np.repeat(np.arange(self.nsources, dtype=index_dtype(self.nsources)), counts))

    @cached_property
    def csc_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, indptr)`` of the CSC matrix ``(H*W, nsources)``."""
        idt = index_dtype(self.npixels, self.nnz)
        indices = self.source_major(self.pixel).astype(idt)
        indptr = np.zeros(self.nsources + 1, dtype=idt)
        np.cumsum(self.source_counts, out=indptr[1:])
        return _readonly(indices), _readonly(indptr)

    @cached_property
    def csr_order(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(take, indices, indptr)`` of the CSR matrix ``(H*W, nsources)``.

        ``take`` holds flat positions into C-order stamp values, ordered by pixel and then by
        source (so column indices are sorted within each row). The
        permutation comes from scipy's linear-time CSC→CSR conversion, not from a sort.
        """
        from scipy import sparse as sp

        check_dense_allocation(
            (self.npixels + 1) * 8, f"the CSR row pointer of an image with {self.npixels} pixels"
        )
        n, nel = self.nsources, self.nelements
        flat_sm = self.source_major(np.arange(nel, dtype=np.int64).reshape(self.block_shape))
        indices, indptr = self.csc_indices
        csr = sp.csc_matrix((flat_sm, indices, indptr), shape=(self.npixels, n)).tocsr()
        idt = index_dtype(self.npixels, self.nnz, self.nsources)
        take = csr.data.astype(index_dtype(nel))
        return _readonly(take), _readonly(csr.indices.astype(idt)), _readonly(csr.indptr.astype(idt))

    @cached_property
    def coo_order(self) -> tuple[np.ndarray, np.ndarray]:
        """``(take, coords)`` for the canonical ``sparse.COO``.

        In-image elements sorted by ``(row, col, source)`` (each is one logical element:
        positions within a stamp are distinct). ``take`` lists flat positions into the stamp
        values; ``coords`` is ``(3, nnz)`` int64. On images too large for a CSR row pointer
        this sorts instead, so that nothing image-sized is ever allocated.
        """
        W = self.imshape[1]
        if self.npixels <= 4 * max(self.nnz, 1):
            take, src, indptr = self.csr_order
            pix = np.repeat(np.arange(self.npixels, dtype=np.int64), np.diff(indptr))
            src = src.astype(np.int64)
        else:
            flat_sm = self.source_major(np.arange(self.nelements, dtype=np.int64).reshape(self.block_shape))
            pix = self.csc_indices[0].astype(np.int64)
            src = self.source_of.astype(np.int64)
            order = np.lexsort((src, pix))
            pix, src, take = pix[order], src[order], flat_sm[order]
        coords = np.stack([pix // W, pix % W, src])
        return _readonly(take), _readonly(coords)

    def canonical(self, values: np.ndarray) -> np.ndarray:
        """The in-image elements of ``values`` in ``coo_order``'s sorted order, 1-D."""
        return values.ravel()[self.coo_order[0]]
