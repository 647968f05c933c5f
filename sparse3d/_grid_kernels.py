"""Compiled loops for stamps on a regular grid: stamp pixel ``(i, j)`` of source ``k`` at
``(row0[k] + i, col0[k] + j)`` (the tutorial's ``R[:, :, None] + row_int`` layout).

Such a structure is described by one corner per source, so its products need no per-element
position::

    narrow    positions → int16 copy, their (min, max) and the grid test, in one pass
    grid      whether stored positions are a grid along one stamp axis
    match     whether row and col are the grid of given corners (read-only, one pass over both)
    scatter   out[r0 + i, c0 : c0 + nc, :] += values[i, :, k] * w[k, :]        (dot)
    gather    out[k, :] += Σ_j values[i, j, k] * image[r0 + i, c0 + j, :]     (projection)

The scatter (and the gather) takes the stamp block (source axis innermost) ``block`` sources
at a time, transposes them into a small buffer (eight planes × eight sources at a time in
vector registers, :mod:`sparse3d._simd_transpose`; the scatter prefetches the next block's
values meanwhile) and adds each source's stamp rows to contiguous image rows: its image
accesses are ``nr`` short runs per source instead of ``nr · nc`` single pixels. Sums
accumulate in the result dtype (float32 stays float32), serially in source order, so results
are deterministic. Off-image stamp pixels are never read into a sum.

Above :data:`sparse3d._threads.PARALLEL_MIN_WORK` multiply-adds the scatter runs in
:func:`sparse3d._threads.threads_for` threads: the image rows are cut into contiguous bands,
:data:`BANDS_PER_THREAD` per thread, taken by whichever thread is free; a band takes, in
ascending source order, the sources whose stamps reach it and adds only their rows inside it.
Each band copies the whole block source-major (cheap in vector registers; a band's own
sources, scattered over the block, cost more to gather: measured on the tutorial's first
``L.dot(w)``, a band of half the image took 4.3 ms CPU against 4.8-5.0 ms reading its
stamps in place, float32; float64 7.2-7.4 against 6.9-7.8 ms). Every pixel still receives
its sources in ascending order from one thread: the same bits for any thread count.

The planes scatter (dot into sparse3d 1.x's ``(k, H, W)`` layout) is :mod:`sparse3d._planes_kernels`.

numba is imported when a kernel is first needed; the compiled code is cached on disk.
:func:`precompile_kernels` is this module's :func:`sparse3d.precompile` hook.
"""

from __future__ import annotations

import itertools
from types import FunctionType

import numpy as np

from . import _kernels, _pool, _threads

__all__ = ["narrow", "is_grid", "match_grid", "scatter", "gather", "SCATTER_BLOCK"]

#: Sources per block of the scatter for 8-byte values (twice as many for 4-byte ones: the
#: transposed buffer ``block × nr × nc`` holds the same bytes, ~100 KB for 10 × 10 stamps, in
#: L2). Measured on the tutorial's first ``L.dot(w)`` in one thread: float64 64-512 sources
#: 7.9, 8.0, 8.3, 8.9 ms; float32 5.5, 5.4, 5.0, 5.3 ms.
SCATTER_BLOCK = 128
#: Bands of image rows per thread of a threaded scatter (handed out by ``share``: a thread that
#: is late leaves its band to the others). One: a band gathers its sources from the whole
#: values block (they lie anywhere in it), so every band reads about all of it; measured on
#: the tutorial's first ``L.dot(w)`` in two threads, 1, 2 and 3 bands per thread took 8.5,
#: 11.9 and 15.0 ms (one thread: 10.6 ms).
BANDS_PER_THREAD = 1


# -- the loops (plain Python; compiled by numba on first use) ------------------------------
def _narrow_loop(src, dst, axis):  # pragma: no cover - runs compiled
    """``dst[...] = src`` (wrapping), and ``(min, max, grid)`` of ``src`` in the same pass.

    ``grid``: ``src[i, j, k] - src[0, 0, k]`` is ``i`` (``axis == 0``) or ``j`` (``axis == 1``)
    everywhere. ``src`` is non-empty.
    """
    nr, nc, n = src.shape
    lo = src[0, 0, 0]
    hi = lo
    grid = True
    first = src[0, 0]
    for i in range(nr):
        for j in range(nc):
            step = i if axis == 0 else j
            a = src[i, j]
            d = dst[i, j]
            ok = True
            for k in range(n):
                x = a[k]
                d[k] = x
                lo = min(lo, x)
                hi = max(hi, x)
                ok &= np.int64(x) - np.int64(first[k]) == step
            grid &= ok
    return lo, hi, grid


def _grid_loop(src, axis):  # pragma: no cover - runs compiled
    """Whether ``src[i, j, k] - src[0, 0, k]`` is ``i`` (axis 0) or ``j`` (axis 1) everywhere."""
    nr, nc, n = src.shape
    first = src[0, 0]
    for i in range(nr):
        for j in range(nc):
            step = i if axis == 0 else j
            a = src[i, j]
            ok = True
            for k in range(n):
                ok &= np.int64(a[k]) - np.int64(first[k]) == step
            if not ok:
                return False
    return True


def _match_loop(row, col, row0, col0, nc, p0, p1):  # pragma: no cover - runs compiled
    """Whether planes ``p0 <= p < p1`` (``p = i * nc + j``) of the ``(P, n)`` views ``row`` and
    ``col`` are ``row0 + i`` and ``col0 + j``, compared in int64 arithmetic (modulo ``2**64``).

    Two planes of each per sweep over the corners (a last odd plane is compared twice): the
    corners are loaded once for four planes, and the loop reads as fast as a plain read of
    both arrays; the xor-or vectorises, a differing pair of planes stops it.
    """
    n = row.shape[1]
    for p in range(p0, p1, 2):
        q = min(p + 1, p1 - 1)
        i0, j0, i1, j1 = np.int64(p // nc), np.int64(p % nc), np.int64(q // nc), np.int64(q % nc)
        ra, ca, rb, cb = row[p], col[p], row[q], col[q]
        diff = np.int64(0)
        for k in range(n):
            r, c = np.int64(row0[k]), np.int64(col0[k])
            diff |= ((np.int64(ra[k]) - r) ^ i0) | ((np.int64(ca[k]) - c) ^ j0)
            diff |= ((np.int64(rb[k]) - r) ^ i1) | ((np.int64(cb[k]) - c) ^ j1)
        if diff != 0:
            return False
    return True


def _prefetch(a, j):  # pragma: no cover - replaced by a numba intrinsic before compiling
    """Ask the CPU to start loading ``a[j]`` (1-D ``a``) into cache; changes no value."""


def _prefetch_intrinsic():
    """``_prefetch`` as a numba intrinsic: LLVM's ``llvm.prefetch`` (write, high locality)
    of the address of ``a[j]``; no bounds check, no load, no value changes."""
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic

    @intrinsic
    def prefetch(typingctx, a, j):
        def codegen(context, builder, sig, args):
            aryty = sig.args[0]
            ary = context.make_array(aryty)(context, builder, args[0])
            ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
            i8p = builder.bitcast(ptr, ir.IntType(8).as_pointer())
            name = "llvm.prefetch.p0" if getattr(i8p.type, "is_opaque", False) else "llvm.prefetch.p0i8"
            i32 = ir.IntType(32)
            fnty = ir.FunctionType(ir.VoidType(), [i8p.type, i32, i32, i32])
            fn = cgutils.get_or_insert_function(builder.module, fnty, name)
            builder.call(fn, [i8p, i32(1), i32(3), i32(1)])  # write, keep in all levels, data
            return context.get_dummy_value()

        return types.void(a, j), codegen

    return prefetch


#: How many sources ahead the scatter prefetches the image rows of a stamp (their lines
#: are in L3 or memory: the row updates were latency-bound, 2-32 all measured ~18 % faster).
PREFETCH_AHEAD = 8


def _inside(r, c, nr, nc, W, lo, hi):  # pragma: no cover - runs compiled
    """Whether an ``nr × nc`` stamp at ``(r, c)`` lies inside the band ``lo <= row < hi``."""
    return r >= lo and c >= 0 and r + nr <= hi and c + nc <= W


def _add_inside(t, r, c, wk, out):  # pragma: no cover - runs compiled
    """``out[r + i, c + j] += t[i, j] * wk``: one weight, a stamp inside the image (and band).

    Slices of the image rows, indexed by loop counters only: numba drops its negative-index
    wraparound test (~4x on this loop)."""
    nr, nc = t.shape
    for i in range(nr):
        o = out[r + i, c : c + nc]
        ti = t[i]
        for j in range(nc):
            o[j] += ti[j] * wk


def _add_stamp(t, r, c, w, k, out, W, lo, hi):  # pragma: no cover - runs compiled
    """``out[r + i, (c + j) * m + q] += t[i, j] * w[k, q]`` for the image rows ``lo <= r + i < hi``
    (``out``: the image as ``(H, W * m)`` rows; pixels off the image are skipped)."""
    nr, nc = t.shape
    m = w.shape[1]
    i0, i1 = max(0, lo - r), min(nr, hi - r)
    j0, j1 = max(0, -c), min(nc, W - c)
    wk = w[k]
    for i in range(i0, i1):
        o = out[r + i, (c + j0) * m : (c + j1) * m]
        ti = t[i, j0:j1]
        for j in range(j1 - j0):
            v = ti[j]
            for q in range(m):
                o[j * m + q] += v * wk[q]


def _prefetch_stamp(out, r, c, nr, nc, W, lo, hi):  # pragma: no cover - runs compiled
    """Start loading the image lines of a stamp at ``(r, c)`` inside the band (one weight)."""
    if _inside(r, c, nr, nc, W, lo, hi):
        for i in range(nr):
            line = out[r + i]
            _prefetch(line, c)  # the row's first and last pixel: its 1-2 lines
            _prefetch(line, c + nc - 1)


def _transpose8(values, p0, k0, out, b0):  # pragma: no cover - replaced before compiling
    """``out[b0 + q].flat[p0 + r] = values[plane p0 + r, k0 + q]`` for ``q, r < 8``: replaced
    by :func:`sparse3d._simd_transpose.transpose8` (a transposition in vector registers)."""
    nc = values.shape[1]
    for r in range(8):
        i, j = (p0 + r) // nc, (p0 + r) % nc
        for q in range(8):
            out[b0 + q, i, j] = values[i, j, k0 + q]


def _transpose_loop(values, k0, k1, out, o0, block):  # pragma: no cover - runs compiled
    """``out[o0 + k - k0] = values[:, :, k]`` for ``k0 <= k < k1`` (stamps source-major),
    ``block`` sources at a time (reads in memory order, writes within a cache-sized block).

    Eight planes × eight sources at a time in vector registers (:func:`_transpose8`: a loop
    would store every value with a scatter instruction); the planes and sources left over one
    value at a time."""
    nr, nc, _ = values.shape
    P = nr * nc
    p8 = P - P % 8
    for b0 in range(k0, k1, block):
        nb = min(block, k1 - b0)
        n8 = nb - nb % 8
        o = o0 + b0 - k0
        for p in range(0, p8, 8):
            for b in range(0, n8, 8):
                _transpose8(values, p, b0 + b, out, o + b)
        for p in range(p8, P):  # planes left over
            i, j = p // nc, p % nc
            src = values[i, j, b0 : b0 + nb]
            for b in range(nb):
                out[o + b, i, j] = src[b]
        for b in range(n8, nb):  # sources left over
            for p in range(p8):
                i, j = p // nc, p % nc
                out[o + b, i, j] = values[i, j, b0 + b]


def _scatter_loop(values, row0, col0, w, r0, c0, out, block, lo, hi):  # pragma: no cover - compiled
    """``out[(row0[k] - r0 + i), (col0[k] - c0 + j) * m + q] += values[i, j, k] * w[k, q]`` for
    the image rows ``lo <= row < hi``.

    ``out`` is the image as ``(H, W * m)`` rows; pixels off the image are skipped.
    """
    nr, nc, n = values.shape
    m = w.shape[1]
    W = out.shape[1] // max(m, 1)
    tmp = np.empty((block, nr, nc), dtype=out.dtype)
    P = nr * nc
    per_line = max(1, 64 // values.itemsize)
    for k0 in range(0, n, block):
        nb = min(block, n - k0)
        _transpose_loop(values, k0, k0 + nb, tmp, 0, block)
        k1 = k0 + nb  # the next block, whose values the adds below give time to arrive
        k2 = min(n, k1 + block)
        for b in range(nb):
            k = k0 + b
            for p in range(b * P // nb, (b + 1) * P // nb):  # its planes spread over the adds
                plane = values[p // nc, p % nc]
                for kv in range(k1, k2, per_line):
                    _prefetch(plane, kv)
            ka = k + PREFETCH_AHEAD  # start loading the image lines of a later stamp
            if m == 1 and ka < n:
                _prefetch_stamp(out, np.int64(row0[ka]) - r0, np.int64(col0[ka]) - c0, nr, nc, W, lo, hi)
            r = np.int64(row0[k]) - r0
            c = np.int64(col0[k]) - c0
            if m == 1 and _inside(r, c, nr, nc, W, lo, hi):  # the common case: unclipped, one weight
                _add_inside(tmp[b], r, c, w[k, 0], out)
            elif r < hi and r + nr > lo:  # clipped by the image or the band, or several weights
                _add_stamp(tmp[b], r, c, w, k, out, W, lo, hi)


def _gather_loop(values, row0, col0, image, r0, c0, out, block):  # pragma: no cover - runs compiled
    """``out[k, q] = Σ_{i, j} values[i, j, k] * image[row0[k] - r0 + i, (col0[k] - c0 + j) * m + q]``.

    ``image`` is ``(H, W * m)`` rows; pixels off the image are skipped. Each source sums
    its stamp in ``(i, j)`` order.
    """
    nr, nc, n = values.shape
    H = image.shape[0]
    m = out.shape[1]
    W = image.shape[1] // max(m, 1)
    tmp = np.empty((block, nr, nc), dtype=out.dtype)
    for k0 in range(0, n, block):
        nb = min(block, n - k0)
        _transpose_loop(values, k0, k0 + nb, tmp, 0, block)
        for b in range(nb):
            k = k0 + b
            r = np.int64(row0[k]) - r0
            c = np.int64(col0[k]) - c0
            if m == 1 and r >= 0 and c >= 0 and r + nr <= H and c + nc <= W:
                acc = out[k, 0]
                for i in range(nr):
                    g = image[r + i, c : c + nc]
                    t = tmp[b, i]
                    for j in range(nc):
                        acc += t[j] * g[j]
                out[k, 0] = acc
                continue
            i0, i1 = max(0, -r), min(nr, H - r)
            j0, j1 = max(0, -c), min(nc, W - c)
            acc_row = out[k]
            for i in range(i0, i1):
                g = image[r + i, (c + j0) * m : (c + j1) * m]
                t = tmp[b, i, j0:j1]
                for j in range(j1 - j0):
                    v = t[j]
                    for q in range(m):
                        acc_row[q] += v * g[j * m + q]


#: The first 16 hex digits of the SHA-256 of ``_simd_transpose.py`` (``\n`` line ends), whose
#: intrinsic the loops inline: numba's on-disk cache of these loops checks this file only, so a
#: change there must come with a change here (a test compares the digest with the file).
SIMD_TRANSPOSE_DIGEST = "f30ff2d8c83f139f"

#: Functions the loops call (compiled before any loop is).
_HELPERS = ("_inside", "_add_inside", "_add_stamp", "_prefetch_stamp", "_transpose_loop")
#: Loops that call none of them (compiled without loading the intrinsics).
_STANDALONE = ("_match_loop", "_narrow_loop", "_grid_loop")
#: Values of each array per item of a threaded :func:`match_grid` (whole stamp planes, an even
#: number of them): small enough for a late thread to leave little to the others.
MATCH_SPAN = 1 << 18


def _compiled(name: str):
    """The compiled loop ``name`` (registered with the array core's kernels, so
    :func:`sparse3d._kernels.loaded` knows numba is paid for)."""
    key = f"_grid_kernels.{name}"
    fn = _kernels._COMPILED.get(key)
    if fn is None:
        import numba

        if name in _STANDALONE:
            fn = _kernels._COMPILED[key] = numba.njit(cache=True, nogil=True)(globals()[name])
            return fn
        global _prefetch, _transpose8
        if isinstance(_prefetch, FunctionType):  # still the Python stub (numba freezes globals)
            try:
                _prefetch = _prefetch_intrinsic()
            except Exception:  # noqa: BLE001 - a hint only: an llvmlite without it gets a no-op
                _prefetch = numba.njit(lambda a, j: None)
        if isinstance(_transpose8, FunctionType):
            try:
                from ._simd_transpose import transpose8 as _transpose8
            except ImportError:  # pragma: no cover - an llvmlite without it: the element loop
                _transpose8 = numba.njit(inline="always")(_transpose8)
        for helper in _HELPERS:  # the loops call these compiled (numba freezes globals)
            if isinstance(globals()[helper], FunctionType):
                globals()[helper] = numba.njit(cache=True, nogil=True, inline="always")(globals()[helper])
        fn = globals()[name]
        if isinstance(fn, FunctionType):
            fn = numba.njit(cache=True, nogil=True)(fn)
        _kernels._COMPILED[key] = fn
    return fn


# -- entry points ----------------------------------------------------------------------------
def narrow(src: np.ndarray, dst: np.ndarray, axis: int) -> tuple[int, int, bool] | None:
    """Copy integer positions ``src`` into the int16 array ``dst`` and test them, in one pass.

    Returns ``(min, max, grid)`` (Python ints and a bool; see :func:`is_grid` for ``grid``),
    or ``None`` when the kernel does not apply (small, empty, non-integer or non-native
    ``src``, numba missing); ``dst`` is meaningful only when ``min`` and ``max`` fit int16.
    """
    if src.size < _kernels.MIN_ELEMENTS or src.ndim != 3 or 0 in src.strides:
        return None
    if src.dtype.kind not in "iu" or not src.dtype.isnative or not _kernels.available():
        return None
    lo, hi, grid = _compiled("_narrow_loop")(src, dst, axis)
    return int(lo), int(hi), bool(grid)


def is_grid(row: np.ndarray, col: np.ndarray) -> bool:
    """Whether ``row[i, j, k] == row[0, 0, k] + i`` and ``col[i, j, k] == col[0, 0, k] + j``.

    ``row``/``col`` are non-empty ``(nr, nc, n)`` integer arrays; one pass over the distinct
    elements of each (a compiled loop for large native arrays, vectorised NumPy otherwise).
    """
    for a, axis in ((row, 0), (col, 1)):
        a = _distinct_part(a, axis)
        if a is None:
            return False
        steps = np.arange(a.shape[axis]).reshape((-1, 1, 1) if axis == 0 else (1, -1, 1))
        if a.size >= _kernels.MIN_ELEMENTS and a.dtype.isnative and _kernels.available():
            ok = _compiled("_grid_loop")(a, axis)
        else:
            ok = bool((np.subtract(a, a[:1, :1], dtype=np.int64) == steps).all())
        if not ok:
            return False
    return True


def match_grid(row: np.ndarray, col: np.ndarray, row0: np.ndarray, col0: np.ndarray) -> bool:
    """Whether ``row[i, j, k] == row0[k] + i`` and ``col[i, j, k] == col0[k] + j`` everywhere.

    ``row``, ``col``: C-contiguous native signed-integer ``(nr, nc, n)`` arrays of one shape;
    ``row0``, ``col0``: ``n`` native signed integers each, best in the narrowest type that
    holds them (they are read once per two stamp planes). Compared in int64 arithmetic, i.e.
    modulo ``2**64``: exact when every ``row0[k] + i`` and ``col0[k] + j`` fits int64 (the
    callers bound the corners). One read-only pass over both arrays that stops at the first
    pair of stamp planes that differs; the last plane is compared first, so stamps that are
    not this grid are told apart before the full pass (a layout that is a grid in ``row``
    only included). In threads (:func:`sparse3d._kernels.elementwise_threads`) large arrays
    are read in spans of :data:`MATCH_SPAN` values (whole planes) taken by whichever thread
    is free (:func:`sparse3d._threads.share`); the answer does not depend on the split.
    """
    nr, nc, n = row.shape
    P = nr * nc
    if row.size == 0:
        return True
    view = _kernels._readonly_view
    rows, cols = view(row.reshape(P, n)), view(col.reshape(P, n))
    row0, col0 = view(np.ascontiguousarray(row0)), view(np.ascontiguousarray(col0))
    loop = _compiled("_match_loop")
    if not loop(rows, cols, row0, col0, nc, P - 1, P):
        return False
    threads = _kernels.elementwise_threads(row.size + col.size)
    per = max(2, -(-MATCH_SPAN // (2 * n)) * 2) if threads > 1 else P
    spans = [(p, min(p + per, P)) for p in range(0, P, per)]
    return all(_threads.share(lambda ab, _: loop(rows, cols, row0, col0, nc, *ab), spans, threads))


def _distinct_part(a: np.ndarray, axis: int) -> np.ndarray | None:
    """``a`` without its broadcast (stride-0) axes, which hold copies (positions stored
    compactly); ``None`` when ``a`` is constant along its grid ``axis`` (not a grid)."""
    if a.shape[axis] > 1 and a.strides[axis] == 0:
        return None
    return _kernels.distinct_part(a)


def scatter(values, row0, col0, w, root_corner, imshape, dtype) -> np.ndarray:
    """The model ``(H, W, m)`` of grid stamps: ``Σ_k values[..., k] * w[k, :]`` on the image.

    Parameters
    ----------
    values : numpy.ndarray, shape (nr, nc, n)
        Stamp values (any strides, ``nr, nc >= 1``).
    row0, col0 : numpy.ndarray of int64, shape (n,)
        Stored position of every stamp's pixel ``(0, 0)`` (see
        :meth:`~sparse3d._structure.StampStructure.grid_corners`).
    w : numpy.ndarray, shape (n, m)
        Weights; cast to ``dtype``.
    root_corner, imshape : tuple of int
        Image pixel ``[0, 0]`` in the coordinates of ``row0``/``col0``, and ``(H, W)``.
    dtype : numpy.dtype
        Result (and accumulation) dtype, one of :data:`sparse3d._kernels.KERNEL_DTYPES`.
    """
    dtype = np.dtype(dtype)
    (H, W), m = imshape, w.shape[1]
    # a buffer lent by the pool (pages already faulted in once the caller dropped the last
    # model), zeroed here: a fresh np.zeros faults in every page of the image on first write
    out = _pool.lend((H, W, m), dtype)
    rows = out.reshape(H, W * m)
    if not (values.size and m):
        rows[...] = 0
        return out
    w = np.ascontiguousarray(w, dtype=dtype)
    block = _block(values)
    r0, c0 = int(root_corner[0]), int(root_corner[1])
    threads = _threads.threads_for(values.size * m)
    edges = _threads.split(H, threads * BANDS_PER_THREAD)
    if threads <= 1 or len(edges) <= 2:
        rows[...] = 0
        _compiled("_scatter_loop")(values, row0, col0, w, r0, c0, rows, block, 0, H)
    else:  # each band zeroes its own rows
        _scatter_bands(values, row0, col0, w, r0, c0, rows, block, edges, threads)
    return out


def _block(values) -> int:
    """Sources per block of the transposed buffer (:data:`SCATTER_BLOCK` scaled to the item size)."""
    per = max(1, SCATTER_BLOCK * 8 // values.itemsize)
    return max(1, min(per, values.shape[2]))


def _scatter_bands(values, row0, col0, w, r0, c0, rows, block, edges, threads) -> None:
    """:func:`scatter` in threads, the same bits as in one: bands of image rows taken by whichever
    thread is free (:func:`sparse3d._threads.share`), each copying the whole block source-major
    and adding (in ascending source order) the rows inside it of every stamp that reaches it."""
    loop = _compiled("_scatter_loop")

    def band(edge, _):
        lo, hi = edge
        rows[lo:hi] = 0  # each band zeroes its own rows (disjoint), in its thread
        loop(values, row0, col0, w, r0, c0, rows, block, lo, hi)

    _threads.share(band, list(zip(edges[:-1], edges[1:])), threads)


def gather(values, row0, col0, image, root_corner, dtype) -> np.ndarray:
    """The projection ``(n, m)`` of grid stamps: ``Σ_{pixels} values[..., k] * image[pixel, :]``.

    ``image`` is ``(H, W, m)`` and C-contiguous; the other arguments are as for
    :func:`scatter`. Sums accumulate in ``dtype``, each source's in the same order as
    :func:`sparse3d._kernels.gather` (real values: the same bits).
    """
    dtype = np.dtype(dtype)
    H, W, m = image.shape
    n = values.shape[2]
    out = np.zeros((n, m), dtype=dtype)
    if values.size and m:
        block = _block(values)
        r0, c0 = int(root_corner[0]), int(root_corner[1])
        _compiled("_gather_loop")(values, row0, col0, image.reshape(H, W * m), r0, c0, out, block)
    return out


def precompile_kernels() -> None:
    """Compile (or load from the cache) the loops for float64/float32 values and int16/int32
    positions (the :func:`sparse3d.precompile` hook)."""
    if not _kernels.available():
        return
    for pos in (np.int16, np.int32):
        R, C = np.mgrid[:3, :3]
        row = (R[:, :, None] + np.array([1, 4])).astype(pos)
        col = (C[:, :, None] + np.array([2, 5])).astype(pos)
        _compiled("_grid_loop")(row, 0)
        for corner in (np.int16, np.int32, np.int64):  # user int64 positions, stored corners
            wide = np.ascontiguousarray(row, dtype=np.int64)
            match_grid(wide, wide, row[0, 0].astype(corner), row[0, 0].astype(corner))
        match_grid(row, row, row[0, 0], row[0, 0])
        _compiled("_narrow_loop")(row.astype(np.int64), np.empty(row.shape, np.int16), 0)
        row0, col0 = row[0, 0].astype(np.int64), col[0, 0].astype(np.int64)
        for dtype, readonly in itertools.product((np.float64, np.float32), (False, True)):
            # an array's stored values and positions are read-only: numba types (and caches)
            # those apart from writable arrays, so both are compiled
            vals, r0, c0 = (np.ones(row.shape, dtype=dtype), row0.copy(), col0.copy())
            for a in (vals, r0, c0):
                a.setflags(write=not readonly)
            w = np.ones((2, 1), dtype=dtype)
            _compiled("_scatter_loop")(vals, r0, c0, w, 0, 0, np.zeros((8, 8), dtype), 2, 0, 8)
            _compiled("_gather_loop")(vals, r0, c0, np.ones((8, 8), dtype), 0, 0, np.zeros((2, 1), dtype), 2)
