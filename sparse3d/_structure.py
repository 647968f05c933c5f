"""The frozen stamp structure shared by every array that elementwise math produces.

A :class:`~sparse3d.Sparse3D` is *values* plus a :class:`StampStructure`. The structure is
everything that does not change under elementwise operations::

    imcorner ─►┌──────────── image (H × W) ────────────┐
               │   ┌────┐ stamp of source k           │
               │   │    │  row[:, :, k], col[:, :, k]  │
               │   └────┘  absolute pixel positions    │
               │                                  ┌────┼──┐ stamp pixels off the image are
               └──────────────────────────────────┼────┘  │ kept (translate can bring them
                                                  └───────┘ back) but are not array contents

Derived index arrays (the in-image mask, the flat pixel index, the CSC/CSR orderings and
the deduplicated COO coordinates) are computed lazily, **once per structure**, and then
shared by every array built on it. All arrays exposed here are read-only.
"""

from __future__ import annotations

import threading
import weakref
from functools import cached_property

import numpy as np

from ._options import check_dense_allocation

__all__ = ["StampStructure", "structure_from_positions"]

_INT32_MAX = np.iinfo(np.int32).max


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def index_dtype(*sizes: int) -> np.dtype:
    """Smallest of int32/int64 that can index every one of ``sizes``."""
    return np.dtype(np.int32) if max(sizes, default=0) <= _INT32_MAX else np.dtype(np.int64)


def _as_pair(value, name: str, *, positive: bool) -> tuple[int, int]:
    """Validate ``imshape``/``imcorner``-like input as a pair of Python ints."""
    what = "two positive integers" if positive else "two integers"
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be {what} (H, W); got {value!r}") from None
    if len(items) != 2:
        raise ValueError(f"{name} must be {what}; got {len(items)} values: {value!r}")
    out = []
    for v in items:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer, float, np.floating)):
            raise TypeError(f"{name} must be {what}; got {value!r}")
        if not float(v).is_integer():
            raise ValueError(f"{name} must be {what}; got non-integer {v!r} in {value!r}")
        iv = int(v)
        if positive and iv <= 0:
            raise ValueError(f"{name} must be {what}; got {value!r}")
        out.append(iv)
    return out[0], out[1]


def as_position_array(a, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """Validate a ``row``/``col`` argument and return an owned, read-only integer array.

    Integer arrays and integer-valued float arrays are accepted; anything else (fractional,
    NaN/inf, bool, object) is rejected with an error naming ``name``.
    """
    try:
        arr = np.asarray(a)
    except ValueError as exc:  # ragged nested sequences
        raise ValueError(f"{name} must be a regular (non-ragged) integer array: {exc}") from None
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise TypeError(f"{name} must hold integer pixel positions; got dtype {arr.dtype}")
    try:
        arr = np.broadcast_to(arr, shape)
    except ValueError:
        raise ValueError(
            f"{name} with shape {np.shape(a)} does not broadcast to the stamp shape {shape} of data"
        ) from None
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} must hold finite pixel positions; found NaN or inf")
        if not (arr == np.floor(arr)).all():
            raise ValueError(f"{name} must hold integer pixel positions; found fractional values")
    lo = int(arr.min()) if arr.size else 0
    hi = int(arr.max()) if arr.size else 0
    dtype = index_dtype(abs(lo), abs(hi))
    return _readonly(np.array(arr, dtype=dtype, order="C", copy=True))


class StampStructure:
    """Positions of every stamp pixel plus the image bounds, with cached derived indices.

    Parameters
    ----------
    row, col : numpy.ndarray
        Absolute integer pixel positions, shape ``(nr, nc, nsources)``, read-only.
    imshape : tuple of int
        ``(H, W)`` of the image.
    imcorner : tuple of int
        Absolute position of image pixel ``[0, 0]``.

    Notes
    -----
    Instances are immutable. Use :func:`structure_from_positions` to build one from user
    input: it validates and re-uses an existing structure built from the same arrays.
    """

    def __init__(self, row: np.ndarray, col: np.ndarray, imshape: tuple[int, int], imcorner: tuple[int, int]):
        self.row = row
        self.col = col
        self.imshape = imshape
        self.imcorner = imcorner
        self._equal_to: weakref.WeakSet = weakref.WeakSet()

    # -- basic facts -------------------------------------------------------------------
    @property
    def stamp_shape(self) -> tuple[int, int, int]:
        """``(nr, nc, nsources)``."""
        return self.row.shape

    @property
    def nsources(self) -> int:
        return self.row.shape[2]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Logical shape ``(H, W, nsources)``."""
        return (self.imshape[0], self.imshape[1], self.nsources)

    @property
    def npixels(self) -> int:
        return self.imshape[0] * self.imshape[1]

    @cached_property
    def in_image(self) -> np.ndarray:
        """Boolean ``(nr, nc, nsources)``: which stamp pixels fall inside the image."""
        (r0, c0), (H, W) = self.imcorner, self.imshape
        mask = np.greater_equal(self.row, r0)
        mask &= self.row < r0 + H
        mask &= self.col >= c0
        mask &= self.col < c0 + W
        return _readonly(mask)

    @cached_property
    def all_in_image(self) -> bool:
        return bool(self.in_image.all())

    @cached_property
    def nnz(self) -> int:
        """Number of stored in-image stamp elements."""
        return int(np.count_nonzero(self.in_image))

    @cached_property
    def pixel(self) -> np.ndarray:
        """Flat row-major image pixel of every stamp element, ``H*W`` where off the image.

        ``intp``, shape ``(nr, nc, nsources)``. The extra bin ``H*W`` lets scatter/gather
        operations (``np.bincount``, ``take``) run without a boolean mask.
        """
        (r0, c0), (H, W) = self.imcorner, self.imshape
        pix = np.multiply(self.row, W, dtype=np.intp)
        pix += self.col
        offset = r0 * W + c0
        if offset:
            pix -= offset
        if not self.all_in_image:
            pix[~self.in_image] = H * W
        return _readonly(pix)

    @cached_property
    def source_of(self) -> np.ndarray:
        """Source index of every in-image element, in source-major (CSC) order."""
        counts = self.source_counts
        return _readonly(np.repeat(np.arange(self.nsources, dtype=index_dtype(self.nsources)), counts))

    @cached_property
    def source_counts(self) -> np.ndarray:
        """Number of in-image stamp elements per source, ``(nsources,)``."""
        return _readonly(np.count_nonzero(self.in_image, axis=(0, 1)).astype(np.int64))

    # -- compressed orderings ------------------------------------------------------------
    @cached_property
    def csc_take(self) -> np.ndarray | None:
        """Flat positions (into C-order stamp values) of in-image elements, source-major.

        ``None`` when every element is in the image: then the source-major order is simply
        the transpose of the stamp block.
        """
        if self.all_in_image:
            return None
        nr, nc, n = self.stamp_shape
        flat = np.arange(nr * nc * n, dtype=index_dtype(nr * nc * n)).reshape(nr, nc, n)
        return _readonly(flat.transpose(2, 0, 1)[self.in_image.transpose(2, 0, 1)])

    def source_major(self, values: np.ndarray) -> np.ndarray:
        """In-image ``values`` gathered in source-major (CSC) order, 1-D."""
        if self.csc_take is None:
            return values.transpose(2, 0, 1).ravel()
        return values.ravel()[self.csc_take]

    @cached_property
    def csc_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """``(indices, indptr)`` of the CSC matrix ``(H*W, nsources)`` (duplicates kept)."""
        idt = index_dtype(self.npixels, self.nnz)
        indices = self.source_major(self.pixel).astype(idt)
        indptr = np.zeros(self.nsources + 1, dtype=idt)
        np.cumsum(self.source_counts, out=indptr[1:])
        return _readonly(indices), _readonly(indptr)

    @cached_property
    def csr_order(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(take, indices, indptr)`` of the CSR matrix ``(H*W, nsources)``.

        ``take`` holds flat positions into C-order stamp values, ordered by pixel and then by
        source (so column indices are sorted within each row). Duplicates are kept. The
        permutation comes from scipy's linear-time CSC→CSR conversion, not from a sort.
        """
        from scipy import sparse as sp

        check_dense_allocation(
            (self.npixels + 1) * 8, f"the CSR row pointer of an image with {self.npixels} pixels"
        )
        nr, nc, n = self.stamp_shape
        flat_sm = self.source_major(np.arange(nr * nc * n, dtype=np.int64).reshape(nr, nc, n))
        indices, indptr = self.csc_indices
        csr = sp.csc_matrix((flat_sm, indices, indptr), shape=(self.npixels, n)).tocsr()
        idt = index_dtype(self.npixels, self.nnz, self.nsources)
        take = csr.data.astype(index_dtype(nr * nc * n))
        return _readonly(take), _readonly(csr.indices.astype(idt)), _readonly(csr.indptr.astype(idt))

    @cached_property
    def coo_order(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(take, coords, group_starts)`` for the canonical ``sparse.COO``.

        Elements are sorted by ``(row, col, source)``. ``take`` lists flat positions into the
        stamp values; ``group_starts`` is ``None`` when no (pixel, source) pair repeats,
        otherwise the start of each run of duplicates, to be summed with ``np.add.reduceat``.
        On images too large for a CSR row pointer this sorts instead, so that nothing
        image-sized is ever allocated.
        """
        W = self.imshape[1]
        if self.npixels <= 4 * max(self.nnz, 1):
            take, src, indptr = self.csr_order
            pix = np.repeat(np.arange(self.npixels, dtype=np.int64), np.diff(indptr))
            src = src.astype(np.int64)
        else:
            nr, nc, n = self.stamp_shape
            flat_sm = self.source_major(np.arange(nr * nc * n, dtype=np.int64).reshape(nr, nc, n))
            pix = self.csc_indices[0].astype(np.int64)
            src = self.source_of.astype(np.int64)
            order = np.lexsort((src, pix))
            pix, src, take = pix[order], src[order], flat_sm[order]
        starts = None
        if pix.size > 1:
            new = np.empty(pix.size, dtype=bool)
            new[0] = True
            np.not_equal(pix[1:], pix[:-1], out=new[1:])
            new[1:] |= src[1:] != src[:-1]
            if not new.all():
                starts = np.flatnonzero(new)
                pix, src = pix[starts], src[starts]
        coords = np.stack([pix // W, pix % W, src])
        return _readonly(take), _readonly(coords), None if starts is None else _readonly(starts)

    @property
    def has_duplicates(self) -> bool:
        """Whether some source's stamp covers the same in-image pixel more than once."""
        return self.coo_order[2] is not None

    def canonical(self, values: np.ndarray) -> np.ndarray:
        """The logical non-implicit elements of ``values``, in ``coo_order``'s sorted order.

        In-image elements only, one per (pixel, source): duplicates are summed in
        ``values.dtype`` (NumPy would promote a bool ``add.reduceat`` to int64).
        """
        take, _, starts = self.coo_order
        data = values.ravel()[take]
        if starts is not None and data.size:
            data = np.add.reduceat(data, starts, dtype=data.dtype)
        return data

    # -- new structures -----------------------------------------------------------------
    def with_bounds(self, imshape: tuple[int, int], imcorner: tuple[int, int]) -> StampStructure:
        """The same stamps inside other image bounds (a cutout or an enlarged canvas)."""
        return StampStructure(self.row, self.col, imshape, imcorner)

    def translated(self, drow: int, dcol: int) -> StampStructure:
        """Every stamp shifted by whole pixels; the image bounds stay."""
        row = as_position_array(self.row.astype(np.int64) + drow, "row", self.stamp_shape)
        col = as_position_array(self.col.astype(np.int64) + dcol, "col", self.stamp_shape)
        return StampStructure(row, col, self.imshape, self.imcorner)

    def take_sources(self, index) -> StampStructure:
        """A structure holding only the sources selected by ``index`` (along axis 2)."""
        row = _readonly(np.ascontiguousarray(self.row[:, :, index]))
        col = _readonly(np.ascontiguousarray(self.col[:, :, index]))
        return StampStructure(row, col, self.imshape, self.imcorner)

    # -- comparison ---------------------------------------------------------------------
    def equals(self, other: StampStructure) -> bool:
        """Whether two structures describe the same stamps in the same image bounds."""
        if other is self or other in self._equal_to:
            return True
        same = (
            self.imshape == other.imshape
            and self.imcorner == other.imcorner
            and self.row.shape == other.row.shape
            and np.array_equal(self.row, other.row)
            and np.array_equal(self.col, other.col)
        )
        if same:
            self._equal_to.add(other)
            other._equal_to.add(self)
        return same

    def __reduce__(self):
        return (StampStructure, (self.row, self.col, self.imshape, self.imcorner))


# -- interning: arrays built from the very same position arrays share one structure ---------
_CACHE_LOCK = threading.Lock()
_RECENT: list[tuple[int, int, tuple, tuple, tuple, weakref.ref]] = []
_RECENT_MAX = 16


def structure_from_positions(row, col, stamp_shape, imshape, imcorner) -> StampStructure:
    """Validate positions and bounds and return a (possibly shared) :class:`StampStructure`.

    When the same ``row``/``col`` objects were used for a recent structure with the same
    bounds, and their contents still match, that structure is returned, so that arrays
    built separately (the tutorial's ``X`` and ``Y``) combine without any comparison cost.
    """
    imshape = _as_pair(imshape, "imshape", positive=True)
    imcorner = _as_pair(imcorner, "imcorner", positive=False)
    stamp_shape = tuple(stamp_shape)
    key = (id(row), id(col), imshape, imcorner, stamp_shape)
    with _CACHE_LOCK:
        candidates = [entry[5]() for entry in _RECENT if entry[:5] == key]
    for cand in candidates:
        if cand is None:
            continue
        try:
            r = np.broadcast_to(np.asarray(row), stamp_shape)
            c = np.broadcast_to(np.asarray(col), stamp_shape)
        except ValueError:
            break
        if np.array_equal(r, cand.row) and np.array_equal(c, cand.col):
            return cand
    struct = StampStructure(
        as_position_array(row, "row", stamp_shape),
        as_position_array(col, "col", stamp_shape),
        imshape,
        imcorner,
    )
    with _CACHE_LOCK:
        _RECENT[:] = [e for e in _RECENT if e[5]() is not None and e[:5] != key][-(_RECENT_MAX - 1) :]
        _RECENT.append((*key, weakref.ref(struct)))
    return struct
