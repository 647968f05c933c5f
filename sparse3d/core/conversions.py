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

    def _csr_matmul(self, b: np.ndarray) -> np.ndarray:
        """``self._csr @ b`` for ``(nsources,)`` or ``(nsources, k)`` weights (the product of
        an array's repeated ``dot``).

        Large products run in bands of image rows taken by whichever thread is free
        (:func:`sparse3d._threads.share`), each band a CSR matrix over views of the cached
        matrix (:meth:`_csr_bands`); each row is the same sum in the same order as in the whole
        product, so the result is the same bits for any thread count (the tutorial's reused
        ``L.dot(w)``: 4.8-5.8 ms in two threads against SciPy's 7.5 ms).
        """
        from .. import _threads

        csr = self._csr
        threads = _threads.threads_for(csr.nnz * (1 if b.ndim == 1 else b.shape[1]))
        if threads <= 1 or csr.shape[0] < 2:
            return np.asarray(csr @ b)
        parts = _threads.share(lambda band, _: np.asarray(band @ b), self._csr_bands(threads), threads)
        return np.concatenate(parts, axis=0)

    def _csr_bands(self, parts: int) -> list:
        """:attr:`_csr` cut into ``parts`` bands of rows with about equal stored values, each a
        CSR matrix over views of the cached values and column indices (only its row pointers
        are new): the pieces of a product in threads. Cached with the matrix, per ``parts``."""
        from scipy import sparse as sp

        cache = self.__dict__.setdefault("_csr_band_cache", {})
        got = cache.get(parts)
        if got is None:
            csr = self._csr
            ptr = csr.indptr
            cuts = np.searchsorted(ptr, np.linspace(0, csr.nnz, parts + 1)[1:-1])
            edges = [0, *sorted({int(c) for c in cuts if 0 < c < csr.shape[0]}), csr.shape[0]]
            got = []
            for lo, hi in zip(edges[:-1], edges[1:]):
                p0, p1 = int(ptr[lo]), int(ptr[hi])
                # the arrays set after construction: the constructor copies a view of less
                # than half its base (scipy's prune), which would duplicate the cached matrix
                band = sp.csr_matrix((hi - lo, csr.shape[1]), dtype=csr.dtype)
                band.data, band.indices = csr.data[p0:p1], csr.indices[p0:p1]
                band.indptr = ptr[lo : hi + 1] - p0
                band.has_sorted_indices = True
                got.append(band)
            cache[parts] = got
        return got

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
