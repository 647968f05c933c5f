"""Interning: :func:`structure_from_positions` validates positions and returns a shared
:class:`StampStructure` when the very same position arrays were seen recently."""

from __future__ import annotations

import threading
import weakref

import numpy as np

from .. import _grid_kernels, _kernels
from .positions import (
    _as_pair,
    check_bounds,
    check_distinct,
    full_native_ints,
    validated_positions,
)
from .stamp import StampStructure

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
        if _same_positions(r, c, cand):
            return cand
    (H, W), (r0, c0) = imshape, imcorner
    row, col, ranges, grid = validated_positions(row, col, stamp_shape, ((r0, r0 + H), (c0, c0 + W)))
    if not grid:  # a grid is distinct by construction
        check_distinct(row, col)
    struct = StampStructure(row, col, imshape, imcorner)
    struct._note_validation(ranges, grid)
    with _CACHE_LOCK:
        _RECENT[:] = [e for e in _RECENT if e[5]() is not None and e[:5] != key][-(_RECENT_MAX - 1) :]
        _RECENT.append((*key, weakref.ref(struct)))
    return struct


def _same_positions(r: np.ndarray, c: np.ndarray, cand: StampStructure) -> bool:
    """Whether ``r``/``c`` (broadcast to the stamp shape) hold ``cand``'s positions.

    When ``cand`` is known to be a grid, full signed-integer inputs are compared with its
    corners in one read-only pass over both (:func:`sparse3d._grid_kernels.match_grid`):
    ``cand``'s own positions are not read, and may be stored compactly. Otherwise element
    by element.
    """
    corners = cand.known_grid_corners() if cand.offset == (0, 0) else None
    shape = cand.block_shape
    if corners is not None and full_native_ints(r, shape) and full_native_ints(c, shape):
        # the corners are stored positions: they fit the stored positions' dtype
        row0, col0 = corners[0].astype(cand._row.dtype), corners[1].astype(cand._col.dtype)
        return _grid_kernels.match_grid(r, c, row0, col0)
    return _kernels.equal(r, cand.row) and _kernels.equal(c, cand.col)
