"""Compiled loops for stamps on a regular grid: stamp pixel ``(i, j)`` of source ``k`` at
``(row0[k] + i, col0[k] + j)`` (the tutorial's ``R[:, :, None] + row_int`` layout).

Such a structure is described by one corner per source, so its products need no per-element
position::

    narrow    positions → int16 copy, their (min, max) and the grid test, in one pass
    grid      whether stored positions are a grid along one stamp axis
    scatter   out[r0 + i, c0 : c0 + nc, :] += values[i, :, k] * w[k, :]        (dot)
    gather    out[k, :] += Σ_j values[i, j, k] * image[r0 + i, c0 + j, :]     (projection)
    planes    out[:, r0 + i, c0 : c0 + nc] += w[k, :, None] * values[i, :, k]  (dot into (m, H, W))

The scatter (and the gather) takes the stamp block (source axis innermost) ``block`` sources at a time,
transposes them into a small buffer and adds each source's stamp rows to contiguous image
rows: its image accesses are ``nr`` short runs per source instead of ``nr · nc`` single
pixels. Sums accumulate in the result dtype (float32 stays float32), serially in source
order, so results are deterministic. Off-image stamp pixels are never read into a sum.

The planes scatter writes the model as ``m`` image planes ``(m, H, W)`` (sparse3d 1.x's
``(k, H, W)`` layout). It reads the stamps in the order of their top rows (a copy of the
values sorted once per family, so the reads stream through memory): the image rows being
summed move down the image with the stamps and are kept in a small ring of rows (in cache);
a row is zeroed there just before the first stamp lands on it, and streamed to the result
with non-temporal stores once the stamps have passed it (the result is written once and never
read into the cache). Each pixel
sums its sources in that order (top row, then source index): deterministic, and equal to the
ascending-source sums of the other products to rounding.

numba is imported when a kernel is first needed; the compiled code is cached on disk.
:func:`precompile_kernels` is this module's :func:`sparse3d.precompile` hook.
"""

from __future__ import annotations

import threading
from types import FunctionType

import numpy as np

from . import _kernels

__all__ = ["narrow", "is_grid", "scatter", "gather", "planes_scatter", "planes_order", "SCATTER_BLOCK"]

#: Sources per block of the scatter: the transposed buffer (``block × nr × nc``) stays in L2.
SCATTER_BLOCK = 128


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


def _stream16(dst, i, src, j):  # pragma: no cover - replaced by a numba intrinsic before compiling
    """``dst`` bytes ``[i*s, i*s + 16)`` = ``src``'s from ``j*s`` (``s`` the item size), written
    around the caches; ``dst``'s address there is 16-byte aligned."""


def _stream16_intrinsic():
    """``_stream16`` as a numba intrinsic: one 16-byte store with LLVM's ``!nontemporal``
    hint (``movntdq``): the line goes to memory without first being read into the cache."""
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic

    @intrinsic
    def stream16(typingctx, dst, i, src, j):
        def codegen(context, builder, sig, args):
            dty, _, sty, _ = sig.args
            vec = ir.VectorType(ir.IntType(64), 2)
            da = context.make_array(dty)(context, builder, args[0])
            sa = context.make_array(sty)(context, builder, args[2])
            dptr = cgutils.get_item_pointer(context, builder, dty, da, [args[1]], wraparound=False)
            sptr = cgutils.get_item_pointer(context, builder, sty, sa, [args[3]], wraparound=False)
            value = builder.load(builder.bitcast(sptr, vec.as_pointer()), align=1)
            store = builder.store(value, builder.bitcast(dptr, vec.as_pointer()), align=16)
            store.set_metadata("nontemporal", builder.module.add_metadata([ir.IntType(32)(1)]))
            return context.get_dummy_value()

        return types.void(dst, i, src, j), codegen

    return stream16


#: How many sources ahead the scatter prefetches the image rows of a stamp (their lines
#: are in L3 or memory: the row updates were latency-bound, 2-32 all measured ~18 % faster).
PREFETCH_AHEAD = 8


def _scatter_loop(values, row0, col0, w, r0, c0, out, block):  # pragma: no cover - runs compiled
    """``out[(row0[k] - r0 + i), (col0[k] - c0 + j) * m + q] += values[i, j, k] * w[k, q]``.

    ``out`` is the image as ``(H, W * m)`` rows; pixels off the image are skipped.
    """
    nr, nc, n = values.shape
    H = out.shape[0]
    m = w.shape[1]
    W = out.shape[1] // max(m, 1)
    tmp = np.empty((block, nr, nc), dtype=out.dtype)
    for k0 in range(0, n, block):
        nb = min(block, n - k0)
        for i in range(nr):  # the block's stamps, source-major (reads stay in memory order)
            for j in range(nc):
                src = values[i, j, k0 : k0 + nb]
                for b in range(nb):
                    tmp[b, i, j] = src[b]
        for b in range(nb):
            k = k0 + b
            ka = k + PREFETCH_AHEAD  # start loading the image lines of a later stamp
            if m == 1 and ka < n:
                ra = np.int64(row0[ka]) - r0
                ca = np.int64(col0[ka]) - c0
                if ra >= 0 and ca >= 0 and ra + nr <= H and ca + nc <= W:
                    for i in range(nr):
                        line = out[ra + i]
                        _prefetch(line, ca)  # the row's first and last pixel: its 1-2 lines
                        _prefetch(line, ca + nc - 1)
            r = np.int64(row0[k]) - r0
            c = np.int64(col0[k]) - c0
            # slices of the image rows: every index below is a non-negative loop counter,
            # so numba drops its negative-index wraparound test (~4x on this loop)
            if m == 1 and r >= 0 and c >= 0 and r + nr <= H and c + nc <= W:
                wk = w[k, 0]  # the common case: one weight, a stamp inside the image
                for i in range(nr):
                    o = out[r + i, c : c + nc]
                    t = tmp[b, i]
                    for j in range(nc):
                        o[j] += t[j] * wk
                continue
            i0, i1 = max(0, -r), min(nr, H - r)
            j0, j1 = max(0, -c), min(nc, W - c)
            wk = w[k]
            for i in range(i0, i1):
                o = out[r + i, (c + j0) * m : (c + j1) * m]
                t = tmp[b, i, j0:j1]
                for j in range(j1 - j0):
                    v = t[j]
                    for q in range(m):
                        o[j * m + q] += v * wk[q]


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
        for i in range(nr):
            for j in range(nc):
                src = values[i, j, k0 : k0 + nb]
                for b in range(nb):
                    tmp[b, i, j] = src[b]
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


def _planes_loop(svals, srow0, scol0, source, first, last, w, r0, c0, out, ring):  # pragma: no cover
    """``out[q, srow0[t] - r0 + i, scol0[t] - c0 + j] = Σ_t svals[t, i, j] * w[source[t], q]`` (in-image).

    The stamps ``t`` are sorted by their top row ``srow0``; only ``first <= t < last`` can
    reach the image. Rows are summed in ``ring`` ``(m, nr, W)`` (image row ``y`` in ring row
    ``y % nr``; it stays in cache), zeroed there just before the first stamp lands on them;
    once the stamps have moved below a row, it is final and streamed to ``out`` ``(m, H, W)``
    with non-temporal stores (no read of ``out`` into the cache). Rows no stamp reaches are
    zeroed in ``out``.
    """
    n, nr, nc = svals.shape
    m, H, W = out.shape
    step = 16 // out.itemsize  # elements per 16-byte store
    z = 0  # rows [0, z) are started: zeroed in the ring (or already written out)
    f = 0  # rows [0, f) are written to out
    for t in range(first, last + 1):
        top = H  # after the last stamp: write out every row left
        if t < last:
            r = srow0[t] - r0
            c = scol0[t] - c0
            i0, i1 = max(0, -r), min(nr, H - r)
            j0, j1 = max(0, -c), min(nc, W - c)
            if i1 <= i0 or j1 <= j0:
                continue
            top = r + i0  # never decreases: the stamps come by top row
        while f < top:  # rows above this stamp are final
            for q in range(m):
                o = out[q, f]
                if f >= z:  # no stamp reached it
                    for x in range(W):
                        o[x] = 0
                    continue
                s = ring[q, f % nr]
                x = 0
                while x < W and (o.ctypes.data + x * out.itemsize) % 16 != 0:
                    o[x] = s[x]
                    x += 1
                while x + step <= W:
                    _stream16(o, x, s, x)
                    x += step
                while x < W:
                    o[x] = s[x]
                    x += 1
            f += 1
        if t == last:
            break
        z = max(z, f)
        while z < r + i1:
            for q in range(m):
                o = ring[q, z % nr]
                for x in range(W):
                    o[x] = 0
            z += 1
        k = source[t]
        for i in range(i0, i1):
            v = svals[t, i, j0:j1]
            y = (r + i) % nr
            for q in range(m):
                wq = w[k, q]
                o = ring[q, y, c + j0 : c + j1]
                for j in range(j1 - j0):
                    o[j] += v[j] * wq


def _compiled(name: str):
    """The compiled loop ``name`` (registered with the array core's kernels, so
    :func:`sparse3d._kernels.loaded` knows numba is paid for)."""
    key = f"_grid_kernels.{name}"
    fn = _kernels._COMPILED.get(key)
    if fn is None:
        import numba

        global _prefetch, _stream16
        if isinstance(_prefetch, FunctionType):  # still the Python stub (numba freezes globals)
            try:
                _prefetch = _prefetch_intrinsic()
            except Exception:  # noqa: BLE001 - a hint only: an llvmlite without it gets a no-op
                _prefetch = numba.njit(lambda a, j: None)
        if isinstance(_stream16, FunctionType):
            try:
                _stream16 = _stream16_intrinsic()
            except Exception:  # noqa: BLE001 - an llvmlite without it: plain 16-byte copies
                _stream16 = numba.njit(_copy16)
        fn = numba.njit(cache=True, nogil=True)(globals()[name])
        _kernels._COMPILED[key] = fn
    return fn


def _copy16(dst, i, src, j):  # pragma: no cover - runs compiled (the fallback of _stream16)
    for e in range(16 // dst.itemsize):
        dst[i + e] = src[j + e]


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


def _distinct_part(a: np.ndarray, axis: int) -> np.ndarray | None:
    """``a`` without its broadcast (stride-0) axes, which hold copies (positions stored
    compactly); ``None`` when ``a`` is constant along its grid ``axis`` (not a grid)."""
    index = []
    for ax, (size, stride) in enumerate(zip(a.shape, a.strides)):
        if stride == 0 and size > 1:
            if ax == axis:
                return None
            index.append(slice(0, 1))
        else:
            index.append(slice(None))
    return a[tuple(index)]


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
    out = np.zeros((H, W, m), dtype=dtype)
    if values.size and m:
        w = np.ascontiguousarray(w, dtype=dtype)
        block = max(1, min(SCATTER_BLOCK, values.shape[2]))
        r0, c0 = int(root_corner[0]), int(root_corner[1])
        _compiled("_scatter_loop")(values, row0, col0, w, r0, c0, out.reshape(H, W * m), block)
    return out


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
        block = max(1, min(SCATTER_BLOCK, n))
        r0, c0 = int(root_corner[0]), int(root_corner[1])
        _compiled("_gather_loop")(values, row0, col0, image.reshape(H, W * m), r0, c0, out, block)
    return out


def planes_order(values, row0, col0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The inputs of :func:`planes_scatter` for grid stamps: ``(svals, srow0, scol0, source)``.

    ``source`` sorts the stamps by their top row ``row0`` (a stable sort: equal rows keep
    source order); ``svals`` ``(n, nr, nc)`` are the stamp values in that order, source-major
    and C-contiguous; ``srow0``/``scol0`` the corners in that order. Built once for an array
    and its translations (which share values and stored corners). Read-only.
    """
    source = np.argsort(row0, kind="stable")
    svals = np.ascontiguousarray(np.moveaxis(values, 2, 0)[source])
    got = (svals, np.ascontiguousarray(row0[source]), np.ascontiguousarray(col0[source]), source)
    for a in got:  # shared by a family: read-only (and typed so by numba, as precompiled)
        a.flags.writeable = False
    return got


def planes_scatter(svals, srow0, scol0, source, w, root_corner, out) -> np.ndarray:
    """Overwrite ``out`` ``(m, H, W)`` with the model of grid stamps: plane ``q`` is
    ``Σ_k values[..., k] * w[k, q]`` on the image.

    Parameters
    ----------
    svals, srow0, scol0, source : numpy.ndarray
        The stamps sorted by top row, from :func:`planes_order`: values ``(n, nr, nc)``,
        corners ``(n,)`` (stored positions of every stamp's pixel ``(0, 0)``, int64) and the
        source index of each.
    w : numpy.ndarray, shape (nsources, m)
        Weights, indexed by source; cast to ``out.dtype`` (C- or Fortran-contiguous weights
        of that dtype are read in place: the loop is compiled for both orders).
    root_corner : tuple of int
        Image pixel ``[0, 0]`` in the coordinates of the corners.
    out : numpy.ndarray, shape (m, H, W)
        C-contiguous, of a :data:`sparse3d._kernels.KERNEL_DTYPES` dtype; any content.

    Sums accumulate in ``out.dtype``; each pixel sums its stamps in the order of
    :func:`planes_order` (top row, then source), so results are deterministic; they equal
    the ascending-source sums of :func:`sparse3d._kernels.sorted_scatter` to rounding.
    Stamp pixels off the image are never read into a sum.
    """
    m, H, W = out.shape
    if svals.size == 0 or m == 0 or H == 0 or W == 0:
        out[...] = 0
        return out
    if w.dtype != out.dtype or not (w.flags.c_contiguous or w.flags.f_contiguous):
        w = np.ascontiguousarray(w, dtype=out.dtype)  # a column slice (1.x's flux[:, frames]) stays as is
    r0, c0 = int(root_corner[0]), int(root_corner[1])
    nr = svals.shape[1]
    first = int(np.searchsorted(srow0, r0 - nr + 1))  # stamps wholly above the image: skipped
    last = int(np.searchsorted(srow0, r0 + H))  # ... and wholly below it
    ring = _ring((m, nr, W), out.dtype)
    _compiled("_planes_loop")(svals, srow0, scol0, source, first, last, w, r0, c0, out, ring)
    return out


_RINGS = threading.local()


def _ring(shape: tuple[int, int, int], dtype) -> np.ndarray:
    """This thread's scratch rows for :func:`planes_scatter` (kept: a new one per product
    would fault in its pages every time)."""
    key = (shape, np.dtype(dtype))
    got = getattr(_RINGS, "ring", None)
    if got is None or got[0] != key:
        got = (key, np.empty(shape, dtype))
        _RINGS.ring = got  # one per thread, the last shape used
    return got[1]


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
        _compiled("_narrow_loop")(row.astype(np.int64), np.empty(row.shape, np.int16), 0)
        row0, col0 = row[0, 0].astype(np.int64), col[0, 0].astype(np.int64)
        for dtype in (np.float64, np.float32):
            vals = np.ones(row.shape, dtype=dtype)
            w = np.ones((2, 1), dtype=dtype)
            _compiled("_scatter_loop")(vals, row0, col0, w, 0, 0, np.zeros((8, 8), dtype), 2)
            _compiled("_gather_loop")(
                vals, row0, col0, np.ones((8, 8), dtype), 0, 0, np.zeros((2, 1), dtype), 2
            )
            inputs = planes_order(vals, row0, col0)
            for wl in (w, np.asfortranarray(np.ones((2, 3), dtype=dtype))):  # C and F weights
                planes_scatter(*inputs, wl, (0, 0), np.empty((wl.shape[1], 8, 8), dtype))
