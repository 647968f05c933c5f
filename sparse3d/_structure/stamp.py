"""The single-shape :class:`StampStructure`: one stamp shape, positions, bounds, the in-image
mask, the flat pixel index and the sorted orders of a jitter loop."""

from __future__ import annotations

import threading
import weakref
from functools import cached_property

import numpy as np

from .. import _grid_kernels, _kernels, _pool
from ._orderings import _Orderings
from .positions import (
    _inside,
    _readonly,
    check_position_range,
    index_dtype,
    position_dtype,
)


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

    def grid_corners(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(row0, col0)`` when every stamp is a regular grid, else ``None``.

        A regular grid: stamp pixel ``(i, j)`` of source ``k`` is stored at
        ``(row0[k] + i, col0[k] + j)`` (the tutorial's ``R[:, :, None] + row_int``). The
        corners are the stored positions of pixel ``(0, 0)`` (int64, read-only; translations
        share them, their ``root_corner`` places them). Tested once per set of stored
        positions (a structure built from user input knows it from validation).
        """
        with self._lock:
            if "grid" in self._shared:
                return self._shared["grid"]
        got = None
        if self._row.size and _grid_kernels.is_grid(self._row, self._col):
            got = self._grid_from_positions()
        with self._lock:
            return self._shared.setdefault("grid", got)

    def known_grid_corners(self) -> tuple[np.ndarray, np.ndarray] | None:
        """:meth:`grid_corners` when already known (no pass over the positions), else ``None``."""
        with self._lock:
            return self._shared.get("grid")

    def _grid_from_positions(self) -> tuple[np.ndarray, np.ndarray]:
        return _readonly(self._row[0, 0].astype(np.int64)), _readonly(self._col[0, 0].astype(np.int64))

    def _note_validation(self, ranges, grid: bool | None) -> None:
        """Record what validating the positions learnt: their :attr:`position_range` and
        the grid test of :meth:`grid_corners` (``None``: not known)."""
        with self._lock:
            if ranges is not None:
                self._shared.setdefault("range", ranges)
            if grid is not None:
                corners = self._grid_from_positions() if grid and self._row.size else None
                self._shared.setdefault("grid", corners)

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
        new = self._sibling(self._row, self._col, self.imshape, self.imcorner, self.check_translation(*key))
        with self._lock:
            return self._translations.setdefault(key, new)

    def check_translation(self, drow: int, dcol: int) -> tuple[int, int]:
        """The :attr:`offset` of this structure translated by ``(drow, dcol)`` (Python ints);
        ValueError when a shifted position leaves the supported range (checked in Python ints
        from the stored positions' min and max, so nothing wraps). O(1), builds nothing."""
        dr, dc = self.offset[0] + drow, self.offset[1] + dcol
        if self._row.size:
            (rlo, rhi), (clo, chi) = self.position_range
            check_position_range(rlo + dr, rhi + dr, f"row translated by {drow}")
            check_position_range(clo + dc, chi + dc, f"col translated by {dcol}")
        return dr, dc

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
        from .interning import structure_from_positions  # interning builds on this module

        return (structure_from_positions, (self.row, self.col, self.stamp_shape, self.imshape, self.imcorner))
