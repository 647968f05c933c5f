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

A translated structure shares the positions it came from and stores the whole-pixel
``offset`` (translate is O(1): no copy, no validation pass); everything derived reads the
stored positions against ``imcorner - offset``, and shifted ``row``/``col`` are materialised
only when asked for. Facts about the stored positions alone (their range, their
pixel-sorted order for the products of a jitter loop) are shared by all such structures.

Positions, image corners and image ends are limited to ``|value| <= 2**61`` and images to
``H * W <= 2**62`` pixels, so that every offset and flat pixel index ``r * W + c`` is exact
in int64 arithmetic; larger values are refused with a ``ValueError``.
"""

from __future__ import annotations

import threading
import weakref
from functools import cached_property

import numpy as np

from . import _kernels, _pool
from ._options import check_dense_allocation

__all__ = ["GroupedStructure", "StampStructure", "structure_from_positions"]

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


def as_position_array(a, name: str, shape: tuple[int, ...], extent: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Validate a ``row``/``col`` argument and return an owned, read-only integer array.

    Integer arrays and integer-valued float arrays are accepted; anything else (fractional,
    NaN/inf, bool, object) is rejected with an error naming ``name``. The stored type is
    :func:`position_dtype` of the values and of ``extent`` (the image's positions along
    this axis); broadcast inputs stay broadcast (:func:`owned_copy`).
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
    lo, hi = _kernels.min_max(arr) if arr.size else (0, 0)
    check_position_range(lo, hi, name)
    return owned_copy(arr, position_dtype(lo, hi, extent))


def position_dtype(lo: int, hi: int, extent: tuple[int, int] = (0, 0)) -> np.dtype:
    """Smallest safe integer type (int16, int32 or int64) for positions in ``[lo, hi]``.

    ``extent`` is the range of the image's own positions along the same axis
    (``(r0, r0 + H)``): int16 is chosen only when positions and image bounds both fit, so
    positions relative to the image fit too; int32 and int64 depend on the positions alone.
    The library computes pixel indices in int64.
    """
    a, b = min(lo, *extent), max(hi, *extent)
    if np.iinfo(np.int16).min <= a and b <= np.iinfo(np.int16).max:
        return np.dtype(np.int16)
    if np.iinfo(np.int32).min <= lo and hi <= np.iinfo(np.int32).max:
        return np.dtype(np.int32)
    return np.dtype(np.int64)


def owned_copy(arr: np.ndarray, dtype=None) -> np.ndarray:
    """A read-only copy of ``arr`` (cast to ``dtype``) that no one else can modify.

    Broadcast inputs are not expanded: only the distinct elements (the axes with a non-zero
    stride) are copied, and the copy is broadcast back to ``arr.shape`` as a read-only view
    whose owner is read-only too. Everything else becomes a C-contiguous copy.
    """
    dtype = arr.dtype if dtype is None else np.dtype(dtype)
    if arr.ndim and arr.size > 1 and 0 in arr.strides:
        index = tuple(slice(0, 1) if st == 0 else slice(None) for st in arr.strides)
        compact = _readonly(np.array(arr[index], dtype=dtype, order="C", copy=True))
        return np.broadcast_to(compact, arr.shape)  # read-only; its base is read-only
    buf = _pool.take(arr.shape, dtype) if arr.nbytes >= _pool.MIN_BYTES else None
    if buf is None:
        return _readonly(np.array(arr, dtype=dtype, order="C", copy=True))
    np.copyto(buf, arr, casting="unsafe")  # overwrites all of the pooled buffer
    return _readonly(buf)


class _Orderings:
    """Derived orderings shared by single-block and grouped structures.

    They need only the flat element space: ``block_shape`` (the values' shape), ``nelements``,
    ``pixel`` (flat pixel per element, ``H*W`` off the image), ``source_counts`` and
    ``source_major`` (in-image elements in source-major order).
    """

    grouped = False

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


class StampStructure(_Orderings):
    """Positions of every stamp pixel plus the image bounds, with cached derived indices.

    Parameters
    ----------
    row, col : numpy.ndarray
        Absolute integer pixel positions, shape ``(nr, nc, nsources)``, read-only.
    imshape : tuple of int
        ``(H, W)`` of the image.
    imcorner : tuple of int
        Absolute position of image pixel ``[0, 0]``.
    offset : tuple of int, optional
        Whole-pixel shift added to ``row``/``col`` (a translated structure shares the
        positions of the one it came from); the range of the shifted positions must have
        been checked (:meth:`translated` does).

    Notes
    -----
    Instances are immutable. Use :func:`structure_from_positions` to build one from user
    input: it validates and re-uses an existing structure built from the same arrays.
    """

    def __init__(
        self,
        row: np.ndarray,
        col: np.ndarray,
        imshape: tuple[int, int],
        imcorner: tuple[int, int],
        offset: tuple[int, int] = (0, 0),
    ):
        # ``_row``/``_col`` are the positions as validated once (shared by every translated
        # structure); ``offset`` is the whole-pixel shift added to them, so a translated
        # structure costs O(1) and shifted positions are materialised only when asked for
        self._row = row
        self._col = col
        self.offset = (int(offset[0]), int(offset[1]))
        self.imshape = imshape
        self.imcorner = imcorner
        self._equal_to: weakref.WeakSet = weakref.WeakSet()
        self._translations: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._lock = threading.Lock()
        # facts about the stored positions alone (their range, their pixel-sorted order),
        # shared with every structure over the same stored positions (translations, cutouts)
        self._shared: dict = {}

    def __del__(self):
        # positions no one else holds (no other structure, no view) go to the buffer pool
        try:
            _pool.give_back(self._row, 1)
            _pool.give_back(self._col, 1)
        except Exception:  # noqa: BLE001 - never raise from __del__
            pass

    # -- positions: stored ones plus an offset ---------------------------------------------
    @property
    def row(self) -> np.ndarray:
        """Absolute row of every stamp pixel (the stored rows shifted by ``offset``), read-only."""
        return self._row if self.offset[0] == 0 else self._shifted[0]

    @property
    def col(self) -> np.ndarray:
        """Absolute column of every stamp pixel (the stored columns shifted by ``offset``), read-only."""
        return self._col if self.offset[1] == 0 else self._shifted[1]

    @cached_property
    def _shifted(self) -> tuple[np.ndarray, np.ndarray]:
        (dr, dc), (H, W), (r0, c0) = self.offset, self.imshape, self.imcorner
        (rlo, rhi), (clo, chi) = self.position_range

        def shift(a, d, lo, hi, extent):
            if d == 0:
                return a
            return _readonly(np.add(a, d, dtype=position_dtype(lo + d, hi + d, extent)))  # exact

        return shift(self._row, dr, rlo, rhi, (r0, r0 + H)), shift(self._col, dc, clo, chi, (c0, c0 + W))

    @property
    def position_range(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """``((min, max) of the stored rows, (min, max) of the stored columns)`` as Python ints.

        Of the stored positions (without ``offset``); ``(0, 0)`` for empty stamps. One pass,
        once per set of stored positions.
        """
        rng = self._shared.get("range")
        if rng is None:
            if self._row.size == 0:
                rng = (0, 0), (0, 0)
            else:
                rng = _kernels.min_max(self._row), _kernels.min_max(self._col)
            self._shared["range"] = rng
        return rng

    def sorted_order(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(take, srow, scol, ssrc)``: every stamp element sorted by stored ``(row, col, source)``.

        ``take`` holds flat positions into C-order stamp values; ``srow``/``scol`` are the
        stored positions (their own dtype) and ``ssrc`` the source in that order. Off-image
        elements are included: a shift does not change the order, so one sort serves every
        translation (the image rows are a contiguous run of it). Computed once per set of
        stored positions (a stable sort of pixel keys, in source-major order so that one
        pixel's sources come out ascending).
        """
        with self._lock:
            got = self._shared.get("sorted")
        if got is not None:
            return got
        nr, nc, n = self.stamp_shape
        size = nr * nc * n
        flat = np.arange(size, dtype=index_dtype(size)).reshape(nr, nc, n).transpose(2, 0, 1).ravel()
        r = self._row.transpose(2, 0, 1).ravel()
        c = self._col.transpose(2, 0, 1).ravel()
        (rlo, rhi), (clo, chi) = self.position_range
        span = chi - clo + 1
        if size == 0:
            order = np.zeros(0, dtype=np.intp)
        elif (rhi - rlo + 1) * span < 2**62:
            key = np.subtract(r, rlo, dtype=np.int64)
            key *= span
            key += np.subtract(c, clo, dtype=np.int64)
            order = np.argsort(key, kind="stable")
        else:
            order = np.lexsort((c, r))  # stable: ties keep source-major order
        take = flat[order]
        got = tuple(
            _readonly(a) for a in (take, r[order], c[order], (take % max(n, 1)).astype(index_dtype(n)))
        )
        with self._lock:
            self._shared.setdefault("sorted", got)
            return self._shared["sorted"]

    def sorted_rows(self) -> tuple[np.ndarray, int] | None:
        """``(rowptr, rlo)``: stored row ``u`` is ``sorted_order()[u - rlo : u - rlo + 1]`` of rowptr.

        ``rowptr[u - rlo]`` is where stored row ``u`` starts in :meth:`sorted_order`
        (int64, ``rhi - rlo + 2`` entries). ``None`` when the rows span more than four times
        the number of stamp elements (the pointer would outgrow the order itself).
        """
        with self._lock:
            if "rows" in self._shared:
                return self._shared["rows"]
        srow = self.sorted_order()[1]
        (rlo, rhi), _ = self.position_range
        got = None
        if srow.size and rhi - rlo + 2 <= 4 * srow.size + 1024:
            bounds = np.arange(rlo, rhi + 2, dtype=np.int64)
            got = (_readonly(np.searchsorted(srow.astype(np.int64), bounds).astype(np.int64)), rlo)
        with self._lock:
            return self._shared.setdefault("rows", got)

    @property
    def root_corner(self) -> tuple[int, int]:
        """Image pixel ``[0, 0]`` in the coordinates of the stored positions: ``imcorner - offset``.

        A stamp element is inside the image exactly when its *stored* position minus this
        corner lies in ``[0, H) × [0, W)``, so products read ``_row``/``_col`` directly.
        Python ints; every difference ``stored - root_corner`` is exact in int64 (the
        translated positions and the corner are both within ``±2**61``).
        """
        return (self.imcorner[0] - self.offset[0], self.imcorner[1] - self.offset[1])

    # -- basic facts -------------------------------------------------------------------
    @property
    def stamp_shape(self) -> tuple[int, int, int]:
        """``(nr, nc, nsources)``."""
        return self._row.shape

    @property
    def block_shape(self) -> tuple[int, ...]:
        """Shape of the values block, ``(nr, nc, nsources)``."""
        return self._row.shape

    @property
    def nelements(self) -> int:
        """Number of stored stamp elements (off-image ones included)."""
        return self._row.size

    @property
    def nsources(self) -> int:
        return self._row.shape[2]

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
        (r0, c0), (H, W) = self.root_corner, self.imshape
        return _readonly(_inside(self._row, r0, r0 + H) & _inside(self._col, c0, c0 + W))

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
        (r0, c0), (H, W) = self.root_corner, self.imshape
        # int64 offsets (positions may be stored as int32 while the corner is beyond 2**31);
        # off-image elements may wrap here, but they are replaced by H*W below
        pix = np.subtract(self._row, r0, dtype=np.int64)
        pix *= W
        pix += np.subtract(self._col, c0, dtype=np.int64)
        if not self.all_in_image:
            pix[~self.in_image] = H * W
        return _readonly(pix)

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

    # -- new structures -----------------------------------------------------------------
    def with_bounds(self, imshape: tuple[int, int], imcorner: tuple[int, int]) -> StampStructure:
        """The same stamps inside other image bounds (a cutout or an enlarged canvas)."""
        return self._sibling(self._row, self._col, imshape, imcorner, self.offset)

    def _sibling(self, row, col, imshape, imcorner, offset) -> StampStructure:
        new = StampStructure(row, col, imshape, imcorner, offset)
        if row is self._row and col is self._col:
            new._shared = self._shared  # same stored positions: same range, same sorted order
        return new

    def translated(self, drow: int, dcol: int) -> StampStructure:
        """Every stamp shifted by whole pixels; the image bounds stay. O(1).

        The result shares the stored positions and adds the shift to its ``offset``. The
        shifted range is checked in Python ints from the stored positions' min and max
        (computed once per set of stored positions), so nothing wraps. Results still alive
        are re-used (weakly referenced), so arrays of one structure (a design and its
        gradients) translated by one offset share one structure and its derived indices,
        while nothing is kept alive for it.
        """
        key = (int(drow), int(dcol))
        with self._lock:
            hit = self._translations.get(key)
        if hit is not None:
            return hit
        dr, dc = self.offset[0] + key[0], self.offset[1] + key[1]
        if self._row.size:
            (rlo, rhi), (clo, chi) = self.position_range
            check_position_range(rlo + dr, rhi + dr, f"row translated by {key[0]}")
            check_position_range(clo + dc, chi + dc, f"col translated by {key[1]}")
        new = self._sibling(self._row, self._col, self.imshape, self.imcorner, (dr, dc))
        with self._lock:
            return self._translations.setdefault(key, new)

    def take_sources(self, index) -> StampStructure:
        """A structure holding only the sources selected by ``index`` (along axis 2)."""
        row = _readonly(np.ascontiguousarray(self._row[:, :, index]))
        col = _readonly(np.ascontiguousarray(self._col[:, :, index]))
        return StampStructure(row, col, self.imshape, self.imcorner, self.offset)

    # -- comparison ---------------------------------------------------------------------
    def equals(self, other: StampStructure) -> bool:
        """Whether two structures describe the same stamps in the same image bounds."""
        if other is self or other in self._equal_to:
            return True
        if other.grouped:
            return False
        if self.imshape != other.imshape or self.imcorner != other.imcorner:
            return False
        if self._row is other._row and self._col is other._col:
            same = self.offset == other.offset  # stored positions shared: only the shifts differ
        else:
            same = (
                self.stamp_shape == other.stamp_shape
                and np.array_equal(self.row, other.row)
                and np.array_equal(self.col, other.col)
            )
        if same:
            self._equal_to.add(other)
            other._equal_to.add(self)
        return same

    def __reduce__(self):
        return (structure_from_positions, (self.row, self.col, self.stamp_shape, self.imshape, self.imcorner))


GROUPED_HINT = "select one stamp group with S.groups[i] (see S.stamp_shapes)"


class GroupedStructure(_Orderings):
    """Several stamp groups (one :class:`StampStructure` each) in one image: mixed stamp sizes.

    Group ``i`` holds the sources ``sources[i]`` (ascending global source indices; together
    the groups partition ``range(nsources)``), so one group per stamp shape serves any source
    order. The values of a grouped array are **one 1-D block**: every group's C-order
    ``(nr_g, nc_g, n_g)`` values, one after the other (``element_offsets``). The derived
    indices (in-image mask, flat pixel index, source counts, CSC/CSR/COO orderings) are
    defined over that flat element space, with sources in their global order, so conversions
    and products go through the same code as a single-block structure::

        values:  [ group 0: nr0*nc0*n0 | group 1: nr1*nc1*n1 | ... ]
        sources:   sources[0] (e.g. 0, 2, 3, ...) | sources[1] (1, 4, ...) | ...

    Parameters
    ----------
    groups : sequence of StampStructure
        At least two, with equal image bounds.
    sources : sequence of int arrays, optional
        The global source index of every group's sources. Default: consecutive.
    """

    grouped = True

    def __init__(self, groups, sources=None):
        groups = tuple(groups)
        if len(groups) < 2 or any(g.grouped for g in groups):
            raise ValueError("a grouped structure holds two or more single-block structures")
        first = groups[0]
        for g in groups[1:]:
            if g.imshape != first.imshape or g.imcorner != first.imcorner:
                raise ValueError(
                    f"stamp groups must share image bounds; got imshape {first.imshape} at {first.imcorner} "
                    f"and {g.imshape} at {g.imcorner}"
                )
        n = sum(g.nsources for g in groups)
        if sources is None:
            o = np.cumsum([0] + [g.nsources for g in groups])
            sources = [np.arange(o[i], o[i + 1]) for i in range(len(groups))]
        sources = tuple(_readonly(np.asarray(x, dtype=np.int64).copy()) for x in sources)
        if [x.size for x in sources] != [g.nsources for g in groups]:
            raise ValueError("every stamp group needs the global index of each of its sources")
        cat = np.concatenate(sources)
        self.contiguous = bool(np.array_equal(cat, np.arange(n)))
        if not self.contiguous and not np.array_equal(np.sort(cat), np.arange(n)):
            raise ValueError("the groups' sources must partition range(nsources)")
        self.groups = groups
        self.sources = sources
        self.imshape = first.imshape
        self.imcorner = first.imcorner
        self._nsources = n
        self.element_offsets = tuple(int(v) for v in np.cumsum([0] + [g.nelements for g in groups]))
        self._equal_to: weakref.WeakSet = weakref.WeakSet()

    @cached_property
    def group_of(self) -> tuple[np.ndarray, np.ndarray]:
        """``(group, local)``: the group of every source and its index within the group."""
        group = np.empty(self._nsources, dtype=np.intp)
        local = np.empty(self._nsources, dtype=np.intp)
        for i, idx in enumerate(self.sources):
            group[idx] = i
            local[idx] = np.arange(idx.size)
        return _readonly(group), _readonly(local)

    def take(self, x: np.ndarray, i: int, axis: int = 0) -> np.ndarray:
        """The entries of group ``i``'s sources along ``axis`` of a per-source array ``x``."""
        if self.contiguous:
            o = self.sources[i]
            sl = slice(int(o[0]), int(o[-1]) + 1) if o.size else slice(0, 0)
            return x[(slice(None),) * (axis % x.ndim) + (sl,)]
        return np.take(x, self.sources[i], axis=axis)

    def assemble(self, parts, axis: int = 0) -> np.ndarray:
        """The per-source array whose group ``i`` entries along ``axis`` are ``parts[i]``."""
        if self.contiguous:
            return np.concatenate(parts, axis=axis)
        parts = [np.moveaxis(np.asarray(p), axis, 0) for p in parts]
        dtype = np.result_type(*parts)
        out = np.empty((self._nsources, *parts[0].shape[1:]), dtype=dtype)
        for idx, p in zip(self.sources, parts):
            out[idx] = p
        return np.moveaxis(out, 0, axis)

    # -- basic facts -------------------------------------------------------------------
    @property
    def block_shape(self) -> tuple[int]:
        """Shape of the (1-D) values block, ``(nelements,)``."""
        return (self.element_offsets[-1],)

    @property
    def nelements(self) -> int:
        return self.element_offsets[-1]

    @property
    def stamp_shapes(self) -> tuple[tuple[int, int], ...]:
        """``(nr, nc)`` of every group."""
        return tuple(g.stamp_shape[:2] for g in self.groups)

    @property
    def nsources(self) -> int:
        return self._nsources

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.imshape[0], self.imshape[1], self.nsources)

    @property
    def npixels(self) -> int:
        return self.imshape[0] * self.imshape[1]

    def _single_block(self, what: str):
        raise ValueError(
            f"{what} needs a single stamp shape, but this array has stamp groups of shapes "
            f"{list(self.stamp_shapes)}; {GROUPED_HINT}"
        )

    @property
    def stamp_shape(self):
        self._single_block("stamp_shape")

    @property
    def row(self):
        self._single_block("row")

    @property
    def col(self):
        self._single_block("col")

    def split(self, values: np.ndarray) -> list[np.ndarray]:
        """The blocks ``(nr_g, nc_g, n_g)`` of every group, as views of the 1-D ``values``."""
        eo = self.element_offsets
        return [values[eo[i] : eo[i + 1]].reshape(g.block_shape) for i, g in enumerate(self.groups)]

    def _concat(self, name: str) -> np.ndarray:
        return _readonly(np.concatenate([getattr(g, name).ravel() for g in self.groups]))

    @cached_property
    def in_image(self) -> np.ndarray:
        """Boolean ``(nelements,)``: which stored elements fall inside the image."""
        return self._concat("in_image")

    @cached_property
    def all_in_image(self) -> bool:
        return all(g.all_in_image for g in self.groups)

    @cached_property
    def nnz(self) -> int:
        return sum(g.nnz for g in self.groups)

    @cached_property
    def pixel(self) -> np.ndarray:
        """Flat pixel of every stored element (``H*W`` off the image), ``(nelements,)``."""
        return self._concat("pixel")

    @cached_property
    def source_counts(self) -> np.ndarray:
        """In-image elements per source, ``(nsources,)`` in global source order."""
        return _readonly(self.assemble([g.source_counts for g in self.groups]).astype(np.int64))

    @cached_property
    def _source_major_dest(self) -> np.ndarray | None:
        """Where each element of the groups' source-major runs goes in global source order."""
        if self.contiguous:
            return None
        starts = np.zeros(self._nsources + 1, dtype=np.int64)
        np.cumsum(self.source_counts, out=starts[1:])
        dest = []
        for idx, g in zip(self.sources, self.groups):
            counts = g.source_counts
            local_start = np.zeros(idx.size, dtype=np.int64)
            np.cumsum(counts[:-1], out=local_start[1:])
            shift = np.repeat(starts[idx] - local_start, counts)  # per element: global - local start
            dest.append(np.arange(int(counts.sum()), dtype=np.int64) + shift)
        return _readonly(np.concatenate(dest))

    def source_major(self, values: np.ndarray) -> np.ndarray:
        """In-image elements of the 1-D ``values`` in source-major order (global source order)."""
        runs = np.concatenate([g.source_major(v) for g, v in zip(self.groups, self.split(values))])
        dest = self._source_major_dest
        if dest is None:
            return runs
        out = np.empty_like(runs)
        out[dest] = runs
        return out

    # -- new structures -----------------------------------------------------------------
    def with_bounds(self, imshape: tuple[int, int], imcorner: tuple[int, int]) -> GroupedStructure:
        return GroupedStructure([g.with_bounds(imshape, imcorner) for g in self.groups], self.sources)

    def translated(self, drow: int, dcol: int) -> GroupedStructure:
        return GroupedStructure([g.translated(drow, dcol) for g in self.groups], self.sources)

    def equals(self, other) -> bool:
        if other is self or other in self._equal_to:
            return True
        same = (
            other.grouped
            and len(other.groups) == len(self.groups)
            and all(np.array_equal(a, b) for a, b in zip(self.sources, other.sources))
            and all(a.equals(b) for a, b in zip(self.groups, other.groups))
        )
        if same:
            self._equal_to.add(other)
            other._equal_to.add(self)
        return same

    def __reduce__(self):
        return (GroupedStructure, (self.groups, self.sources))


def _inside(a: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Boolean ``lo <= a < hi`` for integer ``a`` and Python-int bounds of any size (no wrap)."""
    info = np.iinfo(a.dtype)
    if lo > info.max or hi <= info.min or hi <= lo:
        return np.zeros(a.shape, dtype=bool)
    mask = np.greater_equal(a, max(lo, info.min))
    if hi <= info.max:
        mask &= a < hi
    return mask


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
        if _kernels.equal(r, cand.row) and _kernels.equal(c, cand.col):
            return cand
    (H, W), (r0, c0) = imshape, imcorner
    row = as_position_array(row, "row", stamp_shape, (r0, r0 + H))
    col = as_position_array(col, "col", stamp_shape, (c0, c0 + W))
    check_distinct(row, col)
    struct = StampStructure(row, col, imshape, imcorner)
    with _CACHE_LOCK:
        _RECENT[:] = [e for e in _RECENT if e[5]() is not None and e[:5] != key][-(_RECENT_MAX - 1) :]
        _RECENT.append((*key, weakref.ref(struct)))
    return struct
