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

Positions within one source's stamp are distinct (checked once, when a structure is built
from user input), so every stored in-image element is exactly one logical element.
Derived index arrays (the in-image mask, the flat pixel index, the CSC/CSR orderings and
the sorted COO coordinates) are computed lazily, **once per structure**, and then shared by
every array built on it. All arrays exposed here are read-only.

Positions, image corners and image ends are limited to ``|value| <= 2**61`` and images to
``H * W <= 2**62`` pixels, so that every offset and flat pixel index ``r * W + c`` is exact
in int64 arithmetic; larger values are refused with a ``ValueError``.
"""

from __future__ import annotations

import threading
import weakref
from functools import cached_property

import numpy as np

from ._options import check_dense_allocation

__all__ = ["StampStructure", "structure_from_positions"]

_INT32_MAX = np.iinfo(np.int32).max
POSITION_LIMIT = 2**61  # |positions|, |image corners and ends|: differences stay inside int64
PIXEL_LIMIT = 2**62  # H * W: flat pixel indices r * W + c stay inside int64


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def readonly_view(a: np.ndarray) -> np.ndarray:
    """A read-only view of ``a`` for handing out.

    ``a`` must be read-only at its base (an array we own): NumPy then refuses to set
    ``writeable=True`` on the view, so the caller cannot undo the protection.
    """
    v = a.view()
    v.flags.writeable = False
    return v


def check_position_range(lo: int, hi: int, name: str) -> None:
    """Refuse positions (Python ints) outside ``±POSITION_LIMIT`` instead of wrapping them."""
    if lo < -POSITION_LIMIT or hi > POSITION_LIMIT:
        bad = lo if lo < -POSITION_LIMIT else hi
        raise ValueError(
            f"{name} holds the position {bad}, beyond the supported range |position| <= 2**61 "
            "(pixel arithmetic must stay exact in int64)"
        )


def check_bounds(imshape: tuple[int, int], imcorner: tuple[int, int]) -> None:
    """Refuse image bounds whose pixel arithmetic would overflow int64."""
    (H, W), (r0, c0) = imshape, imcorner
    if H * W > PIXEL_LIMIT:
        raise ValueError(
            f"imshape {imshape} has {H * W} pixels, above the supported 2**62 "
            "(flat pixel indices r * W + c must fit in int64)"
        )
    check_position_range(min(r0, c0), max(r0 + H, c0 + W), "imcorner + imshape")


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
    check_position_range(lo, hi, name)
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
        # int64 offsets (positions may be stored as int32 while the corner is beyond 2**31);
        # off-image elements may wrap here, but they are replaced by H*W below
        pix = np.subtract(self.row, r0, dtype=np.int64)
        pix *= W
        pix += np.subtract(self.col, c0, dtype=np.int64)
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
        nr, nc, n = self.stamp_shape
        flat_sm = self.source_major(np.arange(nr * nc * n, dtype=np.int64).reshape(nr, nc, n))
        indices, indptr = self.csc_indices
        csr = sp.csc_matrix((flat_sm, indices, indptr), shape=(self.npixels, n)).tocsr()
        idt = index_dtype(self.npixels, self.nnz, self.nsources)
        take = csr.data.astype(index_dtype(nr * nc * n))
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
            nr, nc, n = self.stamp_shape
            flat_sm = self.source_major(np.arange(nr * nc * n, dtype=np.int64).reshape(nr, nc, n))
            pix = self.csc_indices[0].astype(np.int64)
            src = self.source_of.astype(np.int64)
            order = np.lexsort((src, pix))
            pix, src, take = pix[order], src[order], flat_sm[order]
        coords = np.stack([pix // W, pix % W, src])
        return _readonly(take), _readonly(coords)

    def canonical(self, values: np.ndarray) -> np.ndarray:
        """The in-image elements of ``values`` in ``coo_order``'s sorted order, 1-D."""
        return values.ravel()[self.coo_order[0]]

    # -- new structures -----------------------------------------------------------------
    def with_bounds(self, imshape: tuple[int, int], imcorner: tuple[int, int]) -> StampStructure:
        """The same stamps inside other image bounds (a cutout or an enlarged canvas)."""
        return StampStructure(self.row, self.col, imshape, imcorner)

    def translated(self, drow: int, dcol: int) -> StampStructure:
        """Every stamp shifted by whole pixels; the image bounds stay.

        Shifted positions are checked in Python ints first, so nothing wraps.
        """

        def shift(a: np.ndarray, d: int, name: str) -> np.ndarray:
            if a.size:
                check_position_range(int(a.min()) + d, int(a.max()) + d, f"{name} translated by {d}")
            return as_position_array(np.add(a, d, dtype=np.int64), name, self.stamp_shape)

        row, col = shift(self.row, drow, "row"), shift(self.col, dcol, "col")
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
        return (structure_from_positions, (self.row, self.col, self.stamp_shape, self.imshape, self.imcorner))


# -- distinct positions within each stamp ---------------------------------------------------
def _strictly_monotone(a: np.ndarray, axis: int) -> bool:
    """Whether ``a`` (``(nr, nc, n)``) is strictly increasing or decreasing along ``axis`` (per source)."""
    d = np.diff(a, axis=axis)
    return bool(((d > 0).all(axis=axis) | (d < 0).all(axis=axis)).all())


def _is_grid(row: np.ndarray, col: np.ndarray) -> bool:
    """Whether every stamp is a grid (the tutorial's layout): distinct by construction.

    Row varies along one stamp axis only, strictly monotonically, and col along the other
    (plain, flipped and transposed grids). Vectorised comparisons, no sort.
    """
    for ra, ca in ((0, 1), (1, 0)):
        r0 = row[:, :1] if ca == 1 else row[:1]
        c0 = col[:1] if ra == 0 else col[:, :1]
        if (
            _strictly_monotone(r0, ra)
            and _strictly_monotone(c0, ca)
            and (row == r0).all()
            and (col == c0).all()
        ):
            return True
    return False


def check_distinct(row: np.ndarray, col: np.ndarray) -> None:
    """Refuse stamps that cover one pixel more than once (``ValueError`` naming row/col).

    Grid stamps pass a vectorised test; otherwise every source's positions are numbered
    within the source's bounding box and sorted per source.
    """
    nr, nc, n = row.shape
    if nr * nc <= 1 or n == 0 or _is_grid(row, col):
        return
    rmin, cmin = row.min(axis=(0, 1)).astype(np.int64), col.min(axis=(0, 1)).astype(np.int64)
    rspan = row.max(axis=(0, 1)).astype(np.int64) - rmin + 1
    cspan = col.max(axis=(0, 1)).astype(np.int64) - cmin + 1
    boxes = float((rspan.astype(float) * cspan).max())
    if boxes < 2.0**62:
        # flat position within each source's bounding box, in place (int32 when it fits:
        # positions beyond int32 wrap, but consistently modulo 2**32, and the true key is
        # below 2**31, so the result is exact)
        kd = np.int32 if boxes < 2.0**31 else np.int64
        key = np.subtract(row, rmin.astype(kd), dtype=kd)
        key *= cspan.astype(kd)
        key += np.subtract(col, cmin.astype(kd), dtype=kd)
        key = np.ascontiguousarray(key.reshape(nr * nc, n).T)
        key.sort(axis=1)
        dup_sources = np.flatnonzero((key[:, 1:] == key[:, :-1]).any(axis=1))
    else:  # bounding boxes too large to number: sort the (row, col) pairs of every source
        src = np.broadcast_to(np.arange(n), row.shape).ravel()
        r, c = row.ravel(), col.ravel()
        order = np.lexsort((c, r, src))
        r, c, src = r[order], c[order], src[order]
        same = (r[1:] == r[:-1]) & (c[1:] == c[:-1]) & (src[1:] == src[:-1])
        dup_sources = np.unique(src[1:][same])
    if dup_sources.size:
        k = int(dup_sources[0])
        pairs = np.stack([row[:, :, k].ravel(), col[:, :, k].ravel()], axis=1)
        uniq, counts = np.unique(pairs, axis=0, return_counts=True)
        r, c = (int(v) for v in uniq[np.argmax(counts > 1)])
        raise ValueError(
            f"row/col: stamp {k} covers pixel ({r}, {c}) more than once; positions within one "
            f"source's stamp must be distinct ({dup_sources.size} source(s) affected)"
        )


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
    check_bounds(imshape, imcorner)
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
    row = as_position_array(row, "row", stamp_shape)
    col = as_position_array(col, "col", stamp_shape)
    check_distinct(row, col)
    struct = StampStructure(row, col, imshape, imcorner)
    with _CACHE_LOCK:
        _RECENT[:] = [e for e in _RECENT if e[5]() is not None and e[:5] != key][-(_RECENT_MAX - 1) :]
        _RECENT.append((*key, weakref.ref(struct)))
    return struct
