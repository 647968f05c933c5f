"""Positions: validation of user positions and image bounds, the int64 range limits, index
dtypes, read-only views and owned copies, and the distinct-positions check."""

from __future__ import annotations

import numpy as np

from .. import _grid_kernels, _kernels, _pool

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
    if type(value) is tuple and len(value) == 2 and type(value[0]) is int and type(value[1]) is int:
        if not positive or (value[0] > 0 and value[1] > 0):
            return value  # already a valid pair (a jitter loop's offsets): nothing to convert
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
    values = _kernels.distinct_part(arr)  # a broadcast input is checked on its distinct values
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(values).all():
            raise ValueError(f"{name} must hold finite pixel positions; found NaN or inf")
        if not (values == np.floor(values)).all():
            raise ValueError(f"{name} must hold integer pixel positions; found fractional values")
    lo, hi = _kernels.min_max(values) if arr.size else (0, 0)
    check_position_range(lo, hi, name)
    return owned_copy(arr, position_dtype(lo, hi, extent))


def validated_positions(
    row, col, shape: tuple[int, ...], extents: tuple[tuple[int, int], tuple[int, int]]
) -> tuple[np.ndarray, np.ndarray, tuple | None, bool | None]:
    """:func:`as_position_array` for ``row`` and ``col`` plus what the pass learnt about them.

    Returns ``(row, col, ranges, grid)``: the owned positions, ``((rmin, rmax), (cmin,
    cmax))`` when known, and whether every stamp is a regular grid (``row[i, j, k] ==
    row[0, 0, k] + i``, ``col[i, j, k] == col[0, 0, k] + j``; ``None`` when not tested).
    Large full signed-integer arrays whose stamps are all a grid that fits int16 are read
    once, without a copy: they are stored compactly (:func:`_grid_positions`). Other large
    full integer arrays that fit int16 are copied, ranged and grid-tested in one compiled
    pass each (:func:`sparse3d._grid_kernels.narrow`); anything else takes
    :func:`as_position_array`.
    """
    compact = _grid_positions(row, col, shape, extents)
    if compact is not None:
        return compact
    got = []
    for a, name, extent, axis in ((row, "row", extents[0], 0), (col, "col", extents[1], 1)):
        fast = _narrowed(a, name, shape, extent, axis)
        got.append(fast if fast is not None else (as_position_array(a, name, shape, extent), None, None))
    (row, rrange, rgrid), (col, crange, cgrid) = got
    ranges = (rrange, crange) if rrange is not None and crange is not None else None
    grid = None if rgrid is None or cgrid is None else rgrid and cgrid
    return row, col, ranges, grid


def full_native_ints(a, shape) -> bool:
    """Whether ``a`` is a large C-contiguous ndarray of native signed integers of exactly
    ``shape``: what the compiled grid test reads (numba available)."""
    return (
        isinstance(a, np.ndarray)
        and a.shape == shape
        and a.dtype.kind == "i"
        and a.dtype.isnative
        and a.size >= _kernels.MIN_ELEMENTS
        and a.flags.c_contiguous
        and _kernels.available()
    )


def _grid_positions(row, col, shape, extents):
    """``(row, col, ranges, True)`` for grid stamps whose positions fit int16, else ``None``.

    A grid (``row[i, j, k] == row[0, 0, k] + i``, ``col[i, j, k] == col[0, 0, k] + j``, the
    tutorial's ``R[:, :, None] + row_int``) is known from its corners: after one read-only
    compiled pass over both arrays that tests it (:func:`sparse3d._grid_kernels.match_grid`,
    stopping at the first stamp planes that differ), the rows are stored as ``(nr, 1, n)``
    and the columns as ``(1, nc, n)`` int16 arrays broadcast to ``shape`` (as broadcast
    inputs are), so no ``(nr, nc, n)`` copy is written; both live in one buffer lent by
    :func:`sparse3d._pool.lend`, so a pipeline that rebuilds its arrays reuses pages already
    faulted in (~1 ms of page faults on the tutorial's 2 MB). The values are those the general path stores.
    Non-grid stamps are told apart before the full pass, on the last stamp plane of both
    arrays (1/(nr*nc) of the pass): a layout that is a grid in ``row`` only does not pay a
    full pass over ``row`` before the general path.
    """
    if 0 in shape or not (full_native_ints(row, shape) and full_native_ints(col, shape)):
        return None
    if any(position_dtype(e[0], e[0], e) != np.int16 for e in extents):
        return None
    nr, nc, _ = shape
    corners = []
    for a, extent, axis in ((row, extents[0], 0), (col, extents[1], 1)):
        first = a[0, 0]
        lo, hi = int(first.min()), int(first.max()) + shape[axis] - 1
        if position_dtype(lo, hi, extent) != np.int16:
            return None  # the general path (its checks and errors included)
        corners.append((first.astype(np.int16), (lo, hi)))  # fits, and so does first + step
    if not _grid_kernels.match_grid(row, col, corners[0][0], corners[1][0]):
        return None
    # both compact arrays in one lent buffer (_pool.lend): once the arrays built on it die,
    # the next grid's positions reuse its already-faulted pages instead of fresh ones
    n = shape[2]
    buf = _pool.lend(((nr + nc) * n,), np.int16)
    out = []
    for (first, _), axis, lo, hi in ((corners[0], 0, 0, nr * n), (corners[1], 1, nr * n, (nr + nc) * n)):
        steps = np.arange(shape[axis], dtype=np.int16).reshape((-1, 1, 1) if axis == 0 else (1, -1, 1))
        compact = buf[lo:hi].reshape((nr, 1, n) if axis == 0 else (1, nc, n))
        np.add(first[None, None, :], steps, out=compact)
        out.append(np.broadcast_to(compact, shape))
    _readonly(buf)  # its views are read-only and cannot be made writeable
    return out[0], out[1], (corners[0][1], corners[1][1]), True


def _narrowed(a, name: str, shape, extent, axis: int):
    """``(int16 positions, (min, max), grid along axis)`` in one pass, or ``None``."""
    if not isinstance(a, np.ndarray) or a.shape != shape or a.dtype.kind not in "iu":
        return None
    if position_dtype(extent[0], extent[0], extent) != np.int16:
        return None  # the image's own positions need more than int16
    if a.size < _kernels.MIN_ELEMENTS or 0 in a.strides or not a.dtype.isnative or not _kernels.available():
        return None
    buf = _pool.empty(a.shape, np.int16)
    got = _grid_kernels.narrow(a, buf, axis)  # writes all of buf, or nothing (None)
    if got is None:
        return None
    lo, hi, grid = got
    check_position_range(lo, hi, name)
    if position_dtype(lo, hi, extent) != np.int16:
        return None  # positions beyond int16: the general path (a second pass, rare)
    return _readonly(buf), (lo, hi), grid


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
        compact = _readonly(np.array(_kernels.distinct_part(arr), dtype=dtype, order="C", copy=True))
        return np.broadcast_to(compact, arr.shape)  # read-only; its base is read-only
    buf = _pool.take(arr.shape, dtype) if arr.nbytes >= _pool.MIN_BYTES else None
    if buf is None:
        return _readonly(np.array(arr, dtype=dtype, order="C", copy=True))
    np.copyto(buf, arr, casting="unsafe")  # overwrites all of the pooled buffer
    return _readonly(buf)



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
            and _constant_along(row, ca, r0)
            and _constant_along(col, ra, c0)
        ):
            return True
    return False


def _constant_along(a: np.ndarray, axis: int, first: np.ndarray) -> bool:
    """Whether ``a`` equals its first slice ``first`` along ``axis`` everywhere: at once when
    ``a`` is broadcast along that axis (stride 0, as PSF placements and ``R[:, :, None]``
    inputs are), else compared element by element."""
    return a.strides[axis] == 0 or bool((a == first).all())


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
