"""Conversions of an array: scipy CSC/CSR/COO, ``sparse.COO``, dense, xarray and Dask.

The sparse forms are built from the structure's cached orderings and the values; CSR and
``sparse.COO`` are cached on the instance and handed out as copies or read-only views, so
nothing done to a returned object changes the array.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from .. import _functions
from .._options import check_dense_allocation
from .._structure import index_dtype, readonly_view

if TYPE_CHECKING:  # pragma: no cover
    import scipy.sparse
    import sparse
    import xarray

    from .array import Sparse3D


class _Conversions:
    """Mixin of :class:`~sparse3d.Sparse3D`: every conversion to another array type."""

    __slots__ = ()

    def _csc_data(self) -> np.ndarray:
        return _functions.scipy_values(self._structure.source_major(self._values))

    def tocsc(self) -> scipy.sparse.csc_matrix:
        """scipy CSC matrix of shape ``(H*W, nsources)``; pixel index ``r * W + c``.

        Indices are int64 when ``H*W`` needs it; float16 values become float32 (SciPy has
        no float16 sparse matrices; the same holds for :meth:`tocsr` and :meth:`tocoo`). The
        matrix owns writable copies of its arrays, so scipy's in-place methods work on it.
        """
        from scipy import sparse as sp

        indices, indptr = self._structure.csc_indices
        # the index arrays are copied: the structure's are shared and read-only, while scipy's
        # in-place methods (eliminate_zeros, sum_duplicates, ...) must work on what we return
        return sp.csc_matrix(
            (_writable(self._csc_data()), indices.copy(), indptr.copy()),
            shape=(self._structure.npixels, self.nsources),
            copy=False,
        )

    def tocsr(self) -> scipy.sparse.csr_matrix:
        """scipy CSR matrix of shape ``(H*W, nsources)``, for linear algebra.

        Row ``r * W + c`` is image pixel ``(r, c)``; column ``k`` is source ``k``. Column
        indices are sorted within each row. The CSR ordering is computed once per structure
        and the matrix is cached; each call returns an independent copy, so in-place scipy
        methods on it (``eliminate_zeros``, ``data *= 2``, ...) never touch the cache.
        """
        return self._csr.copy()

    @cached_property
    def _csr(self) -> scipy.sparse.csr_matrix:
        from scipy import sparse as sp

        take, indices, indptr = self._structure.csr_order
        data = _functions.scipy_values(self._values.ravel()[take])
        data.flags.writeable = False  # internal cache: tocsr() hands out copies
        csr = sp.csr_matrix(
            (data, indices, indptr), shape=(self._structure.npixels, self.nsources), copy=False
        )
        csr.has_sorted_indices = True
        return csr

    def tocoo(self) -> scipy.sparse.coo_matrix:
        """scipy COO matrix of shape ``(H*W, nsources)``; nothing image-sized is allocated.

        The matrix owns writable copies of its arrays (scipy's in-place methods work).
        """
        from scipy import sparse as sp

        s = self._structure
        idt = index_dtype(s.npixels, s.nsources)
        return sp.coo_matrix(
            (_writable(self._csc_data()), (s.csc_indices[0].astype(idt), s.source_of.astype(idt))),
            shape=(s.npixels, self.nsources),
        )

    def to_sparse(self) -> sparse.COO:
        """The ``sparse.COO`` of shape ``(H, W, nsources)``, fill value 0, sorted coordinates.

        Built once and cached; every call returns a new ``sparse.COO`` object over read-only
        views of the cached coordinates and values, so neither editing its arrays nor
        rebinding its attributes can change ``S``.
        """
        import sparse

        c = self._coo
        return sparse.COO(
            readonly_view(c.coords),
            readonly_view(c.data),
            shape=c.shape,
            sorted=True,
            has_duplicates=False,
            fill_value=c.fill_value,
        )

    @property
    def coo(self) -> sparse.COO:
        """The array as a canonical ``sparse.COO`` (see :meth:`to_sparse`)."""
        return self.to_sparse()

    @cached_property
    def _coo(self) -> sparse.COO:
        import sparse

        coords = self._structure.coo_order[1]
        data = self._structure.canonical(self._values)
        data.flags.writeable = False
        return sparse.COO(
            coords, data, shape=self.shape, sorted=True, has_duplicates=False, fill_value=self.dtype.type(0)
        )

    def todense(self, force: bool = False) -> np.ndarray:
        """Dense ``(H, W, nsources)`` ndarray.

        Refuses with :class:`~sparse3d.DenseAllocationError` above ``max_dense_bytes``
        (default 2 GiB, see :func:`sparse3d.set_options`) unless ``force=True``.
        """
        nbytes = self.size * self.dtype.itemsize
        if not force:
            check_dense_allocation(nbytes, f"todense() of a {self.shape} array")
        s = self._structure
        if s.grouped:
            return s.assemble([g.todense(force=True) for g in self.groups], axis=2)
        out = np.zeros(self.shape, dtype=self.dtype)
        m = s.in_image
        r = np.subtract(s._row[m], s.root_corner[0], dtype=np.int64)
        c = np.subtract(s._col[m], s.root_corner[1], dtype=np.int64)
        k = np.broadcast_to(np.arange(self.nsources), self.stamp_shape)[m]
        np.add.at(out, (r, c, k), self._values[m])
        return out

    def to_xarray(self, *args, **kwargs) -> xarray.DataArray:
        """Labeled xarray view; see :func:`sparse3d.xarray.to_xarray`."""
        from ..xarray import to_xarray

        return to_xarray(self, *args, **kwargs)

    def to_dask(self, source_chunks="auto"):
        """Split into source chunks, one Dask graph key each; see :class:`sparse3d.dask.SourceChunked`."""
        from ..dask import to_dask

        return to_dask(self, source_chunks)

    @classmethod
    def from_xarray(cls, da: xarray.DataArray) -> Sparse3D:
        """Rebuild an array from its stamp view; see :func:`sparse3d.xarray.from_xarray`."""
        from ..xarray import from_xarray

        return from_xarray(da)


def _writable(a: np.ndarray) -> np.ndarray:
    """``a`` if it is a writable array of its own, else a copy (for handing to scipy)."""
    return a if a.flags.writeable and a.flags.owndata else a.copy()
