"""Regions of interest: the model evaluated only inside small windows of a big image.

Space missions (Kepler/TESS target pixel files, Pandora) download only small regions of a
detector. :class:`ROISparse3D` takes a :class:`~sparse3d.Sparse3D` of the whole scene plus
the corners of ``nrois`` windows of one size ``(h, w)``::

    ┌──────────────────── image ─────────────────────┐
    │  ┌──┐ roi 0          ┌──┐ roi 1                │   dot(w)  → (nrois, h, w)
    │  └──┘     ┌────┐     └──┘                      │   fit(d)  ← (nrois, h, w[, k])
    │           │stamp│  stamps touching no window    │
    │           └────┘   cost nothing                │
    └────────────────────────────────────────────────┘

Windows may overlap each other; window pixels outside the parent image are zero (the
parent array has no content there).
"""

from __future__ import annotations

import dataclasses
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from . import _functions
from ._functions import scatter_sum, scipy_values
from ._options import check_dense_allocation
from ._structure import _as_pair, check_position_range, index_dtype, readonly_view
from ._structure.positions import _readonly

if TYPE_CHECKING:  # pragma: no cover
    import scipy.sparse
    import xarray as xr

    from .core import Sparse3D
    from .fit import FitResult

__all__ = ["ROISparse3D"]


def _as_corners(corners) -> np.ndarray:
    arr = np.asarray(corners)
    if arr.ndim == 1 and arr.shape == (2,):
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.shape[0] == 0:
        raise ValueError(f"corners must be a non-empty list of (row, col) pairs; got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not (np.isfinite(arr).all() and (arr == np.floor(arr)).all()):
            raise ValueError("corners must hold integer pixel positions")
    elif arr.dtype.kind not in "iu":
        raise TypeError(f"corners must hold integer pixel positions; got dtype {arr.dtype}")
    if arr.size:
        check_position_range(int(arr.min()), int(arr.max()), "corners")
    out = arr.astype(np.int64)
    out.flags.writeable = False
    return out


def _ranks(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` replaced by their ranks among the distinct values of both (order kept)."""
    u = np.unique(np.concatenate([a.ravel(), b.ravel()]))
    return np.searchsorted(u, a), np.searchsorted(u, b)


class ROISparse3D:
    """A :class:`~sparse3d.Sparse3D` seen only through ``nrois`` windows of one size.

    Parameters
    ----------
    array : Sparse3D
        The scene.
    corners : array_like of int, shape (nrois, 2)
        Absolute ``(row, col)`` of every window's pixel ``[0, 0]``.
    size : tuple of int
        ``(h, w)`` of every window.

    Notes
    -----
    The mapping from stamp elements to window pixels is computed once, from the stamps'
    bounding boxes first (sources whose stamp misses every window are skipped) and then by
    a sorted search of pixel keys; it never allocates anything image-sized.

    Examples
    --------
    >>> import numpy as np
    >>> from sparse3d import Sparse3D
    >>> R, C = np.mgrid[:3, :3]
    >>> S = Sparse3D(np.ones((3, 3, 2)), R[:, :, None] + [10, 50], C[:, :, None] + [10, 50], (100, 100))
    >>> roi = S.roi([(9, 9), (49, 49)], size=(5, 5))
    >>> roi.dot(np.array([1.0, 2.0])).sum(axis=(1, 2))
    array([ 9., 18.])
    """

    def __init__(self, array: Sparse3D, corners, size):
        from .core import Sparse3D

        if not isinstance(array, Sparse3D):
            raise TypeError(f"array must be a Sparse3D; got {type(array).__name__}")
        self.array = array
        self._corners = _as_corners(corners)
        self.size = _as_pair(size, "size", positive=True)

    @cached_property
    def _mapping(self) -> tuple[np.ndarray, ...]:
        # built on first use: products of translated arrays read the windows through the
        # structure's pixel-sorted order instead (see dot), so translate stays O(1)
        if self.array._structure.grouped:
            return self._grouped_map()
        return self._map()

    def _grouped_map(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(elements, pixels, sources)`` of a grouped array: every group mapped alone.

        Elements index the flat values of the array; sources go through the groups' maps.
        """
        s = self.array._structure
        maps = [ROISparse3D(g, self._corners, self.size) for g in self.array.groups]
        eo = s.element_offsets
        elements = _readonly(np.concatenate([m._elements + eo[i] for i, m in enumerate(maps)]))
        pixels = np.concatenate([m._pixels for m in maps])
        sources = np.concatenate([idx[m._sources()] for m, idx in zip(maps, s.sources)])
        return elements, pixels, sources

    @property
    def _elements(self) -> np.ndarray:
        return self._mapping[0]

    @property
    def _pixels(self) -> np.ndarray:
        return self._mapping[1]

    # -- facts --------------------------------------------------------------------------
    @property
    def corners(self) -> np.ndarray:
        """Absolute ``(row, col)`` of every window's pixel ``[0, 0]``, ``(nrois, 2)``, read-only."""
        return readonly_view(self._corners)

    @property
    def nrois(self) -> int:
        return self.corners.shape[0]

    @property
    def nsources(self) -> int:
        return self.array.nsources

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(nrois, h, w, nsources)``."""
        return (self.nrois, *self.size, self.nsources)

    @property
    def npixels(self) -> int:
        return self.nrois * self.size[0] * self.size[1]

    @property
    def nnz(self) -> int:
        """Stored elements that fall inside some window (counted once per window)."""
        return int(self._elements.size)

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    def __repr__(self) -> str:
        return f"<{self.nrois} ROIs of {self.size} over {self.array!r}>"

    # -- the mapping ----------------------------------------------------------------------
    def _map(self) -> tuple[np.ndarray, np.ndarray]:
        """``(elements, pixels)``: flat stamp positions and the window pixel each lands on."""
        S = self.array
        s = S._structure
        h, w = self.size
        nr, nc, n = S.stamp_shape
        if S.nnz == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        inside = s.in_image
        big = np.int64(np.iinfo(np.int64).max)  # an int64 sentinel: positions may exceed int32
        row = np.where(inside, s.row, big)
        col = np.where(inside, s.col, big)
        rmin, cmin = row.min(axis=(0, 1)), col.min(axis=(0, 1))
        row = np.where(inside, s.row, -big)
        col = np.where(inside, s.col, -big)  # (a Python-int sentinel would be cast to int32)
        rmax, cmax = row.max(axis=(0, 1)), col.max(axis=(0, 1))
        # sources whose in-image bounding box meets some window, in blocks of windows
        hit = np.zeros(n, dtype=bool)
        cr, cc = self._corners[:, 0], self._corners[:, 1]
        step = max(1, 2_000_000 // max(n, 1))
        for a in range(0, self.nrois, step):
            b = slice(a, a + step)
            meets = (
                (rmin[:, None] < cr[None, b] + h)
                & (rmax[:, None] >= cr[None, b])
                & (cmin[:, None] < cc[None, b] + w)
                & (cmax[:, None] >= cc[None, b])
            )
            hit |= meets.any(axis=1)
        sources = np.flatnonzero(hit)
        if sources.size == 0:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        flat = np.arange(nr * nc * n, dtype=np.int64).reshape(nr, nc, n)[:, :, sources]
        keep = inside[:, :, sources]
        elements = flat[keep]
        er = s.row.ravel()[elements].astype(np.int64)
        ec = s.col.ravel()[elements].astype(np.int64)
        # window pixel keys, sorted, and a sorted search for every candidate element
        R, C = np.mgrid[:h, :w]
        wr, wc = cr[:, None, None] + R, cc[:, None, None] + C
        lo_r, lo_c = min(int(er.min()), int(cr.min())), min(int(ec.min()), int(cc.min()))
        span_r = max(int(er.max()), int(cr.max()) + h) - lo_r + 1
        span = max(int(ec.max()), int(cc.max()) + w) - lo_c + 1
        if span_r * span >= 2**62:  # keys would overflow int64: number the rows/cols used instead
            er, wr = _ranks(er, wr)
            ec, wc = _ranks(ec, wc)
            lo_r = lo_c = 0
            span = int(max(ec.max(), wc.max())) + 1
        keys = ((wr - lo_r) * span + (wc - lo_c)).ravel()
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        ekeys = (er - lo_r) * span + (ec - lo_c)
        left = np.searchsorted(keys, ekeys, side="left")
        right = np.searchsorted(keys, ekeys, side="right")
        counts = right - left
        elements = np.repeat(elements, counts)
        starts = np.repeat(left, counts)
        within = np.arange(elements.size) - np.repeat(np.cumsum(counts) - counts, counts)
        pixels = order[starts + within]
        for a in (elements, pixels):
            a.flags.writeable = False
        return elements, pixels.astype(np.int64)

    def _sources(self) -> np.ndarray:
        if self.array._structure.grouped:
            return self._mapping[2]
        return self._elements % max(self.nsources, 1)

    def _values(self) -> np.ndarray:
        """The stored values of the mapped elements."""
        return self.array._values.ravel()[self._elements]

    # -- products and conversions -----------------------------------------------------------
    def dot(self, weights) -> np.ndarray:
        """Model inside the windows.

        ``weights (nsources,)`` gives ``(nrois, h, w)``; ``(nsources, k)`` gives
        ``(nrois, h, w, k)``.
        """
        from ._functions import _as_weights

        w = _as_weights(weights, "ROISparse3D.dot")
        n = self.nsources
        if w.ndim not in (1, 2) or w.shape[0] != n:
            raise ValueError(f"weights must be (nsources,) or (nsources, k) with nsources={n}; got {w.shape}")
        dtype = np.result_type(self.dtype, w.dtype)
        if (
            not self.array._structure.grouped
            and _functions.products._fast_product(self.array, dtype, w.dtype) is not None
        ):
            from . import _kernels

            k = 1 if w.ndim == 1 else w.shape[1]
            check_dense_allocation(self.npixels * k * dtype.itemsize, f"a model of {self.nrois} windows")
            s = self.array._structure
            order = s.sorted_order()[1:]
            out = _kernels.roi_scatter(
                order,
                _functions.sorted_values(self.array),
                s.offset,
                s.imcorner,
                s.imshape,
                self._corners,
                self.size,
                w.reshape(n, -1),
                dtype,
            )
            return out[..., 0] if w.ndim == 1 else out
        vals = self._values()
        src = self._sources()
        shape = (self.nrois, *self.size)
        if w.ndim == 1:
            return scatter_sum(
                self._pixels, vals * w[src], self.npixels, dtype, what=f"a model of shape {shape}"
            ).reshape(shape)
        k = w.shape[1]
        check_dense_allocation(self.npixels * k * dtype.itemsize, f"a model of shape {(*shape, k)}")
        out = np.asarray(self.tocsr() @ w).astype(dtype, copy=False)
        return out.reshape((*shape, k))

    def __matmul__(self, weights) -> np.ndarray:
        return self.dot(weights)

    def tocsc(self) -> scipy.sparse.csc_matrix:
        """Design matrix ``(nrois * h * w, nsources)``.

        Row ``(j * h + r) * w + c`` is pixel ``(r, c)`` of window ``j``.
        """
        from scipy import sparse as sp

        idt = index_dtype(self.npixels, self.nsources)
        vals = scipy_values(self._values())
        coo = sp.coo_matrix(
            (vals, (self._pixels.astype(idt), self._sources().astype(idt))),
            shape=(self.npixels, self.nsources),
        )
        return coo.tocsc()

    def tocsr(self) -> scipy.sparse.csr_matrix:
        """The design matrix of :meth:`tocsc` in CSR form."""
        return self.tocsc().tocsr()

    def to_sparse(self):
        """``sparse.COO`` of shape ``(nrois, h, w, nsources)`` (duplicates summed)."""
        import sparse

        h, w = self.size
        coo = self.tocsc().tocoo()
        coo.sum_duplicates()
        j, rest = np.divmod(coo.row, h * w)
        r, c = np.divmod(rest, w)
        return sparse.COO(
            np.stack([j, r, c, coo.col]), coo.data, shape=self.shape, fill_value=self.dtype.type(0)
        )

    def todense(self) -> np.ndarray:
        """Dense ``(nrois, h, w, nsources)``, refused above ``max_dense_bytes``."""
        check_dense_allocation(
            int(np.prod(self.shape)) * self.dtype.itemsize, f"todense() of a {self.shape} ROI"
        )
        return self.to_sparse().todense()

    # -- geometry -------------------------------------------------------------------------------
    def translate(self, position: tuple[int, int]) -> ROISparse3D:
        """The scene's stamps shifted by ``(drow, dcol)``; the windows stay where they are."""
        return ROISparse3D(self.array.translate(position), self.corners, self.size)

    # -- fitting and views ------------------------------------------------------------------------
    def fit(
        self,
        data,
        errors=None,
        prior_mu=None,
        prior_sigma=None,
        mask=None,
        *,
        background=None,
        dq=None,
        bad_bits=None,
        saturation=None,
    ) -> FitResult:
        """Fit every source's weight to data given in the window layout.

        Parameters
        ----------
        data : array_like, shape (nrois, h, w) or (nrois, h, w, k)
            The windows' pixels (``k`` frames along the last axis); a masked array, a
            ``Quantity`` or an NDData-like object is read as in :meth:`Sparse3D.fit`.
        errors, mask, dq : numpy.ndarray, optional
            Same layout as ``data`` (or without the frame axis, shared by every frame);
            ``errors=np.inf`` masks a pixel; ``dq`` needs ``bad_bits``.
        prior_mu, prior_sigma, bad_bits, saturation
            As in :meth:`Sparse3D.fit`.
        background : None
            Not supported: the windows do not form one image on which a sky model is
            defined (NotImplementedError); fit a constant per window as extra sources.

        Returns
        -------
        FitResult
            As :meth:`Sparse3D.fit`, with ``model`` and ``residuals`` in the window layout.
            Sources whose stamps miss every window are unconstrained (NaN) unless they
            have a prior.
        """
        from .fit import fit_design
        from .fit._checks import _in_unit
        from .fit._inputs import _read_inputs

        if background is not None:
            raise NotImplementedError(
                "ROISparse3D.fit does not support background: the windows do not form one image; "
                "add a window of ones per ROI as extra sources, or fit the full image with Sparse3D.fit"
            )
        h, w = self.size
        shape = (self.nrois, h, w)
        inputs = _read_inputs(data, errors, mask, dq, bad_bits)

        def flat(x, name):
            if x is None:
                return None
            x = np.asarray(x)
            if x.shape[:3] != shape or x.ndim not in (3, 4):
                raise ValueError(f"{name} must have the window layout {shape}[+ (k,)]; got {x.shape}")
            return x.reshape((self.nrois * h, w, *x.shape[3:]))

        d = flat(inputs.data, "data")
        res = fit_design(
            self.tocsc(),
            d,
            imshape=(self.nrois * h, w),
            errors=flat(inputs.errors, "errors"),
            prior_mu=_in_unit(prior_mu, inputs.unit, "prior_mu"),  # the unit is dropped with the data's
            prior_sigma=_in_unit(prior_sigma, inputs.unit, "prior_sigma"),
            mask=flat(inputs.mask, "mask"),
            saturation=saturation,
        )
        inner = res._model_fn

        def layout(x):
            return x.reshape((*shape, *x.shape[2:]))

        res = dataclasses.replace(res, _model_fn=lambda: layout(inner()), _reshape=layout)
        return res._with_unit(inputs.unit)

    def to_xarray(self, sources=None, name: str | None = None) -> xr.DataArray:
        """Labeled view ``(roi, roi_row, roi_col, source)`` backed by a ``sparse.COO``.

        Coordinates ``row``/``col`` give the absolute pixel of every window pixel.
        """
        import xarray as xr

        from .xarray import _source_labels

        h, w = self.size
        coords = {
            "roi": np.arange(self.nrois),
            "row": (("roi", "roi_row"), self.corners[:, :1] + np.arange(h)),
            "col": (("roi", "roi_col"), self.corners[:, 1:] + np.arange(w)),
            "source": _source_labels(self.array, sources),
        }
        return xr.DataArray(
            self.to_sparse(), dims=("roi", "roi_row", "roi_col", "source"), coords=coords, name=name
        )
