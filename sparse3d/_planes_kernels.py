"""The planes scatter: the model of grid stamps written as ``m`` image planes ``(m, H, W)``
(sparse3d 1.x's ``(k, H, W)`` layout of ``dot`` with ``(nsources, k)`` weights)::

    out[:, r0 + i, c0 : c0 + nc] += w[k, :, None] * values[i, :, k]

It reads the stamps in the order of their top rows (:func:`planes_order`: a copy of the
values sorted once per family, so the reads stream through memory). The image rows being
summed move down the image with the stamps and are kept in a small ring of rows that stays
in cache; a row is zeroed there just before the first stamp lands on it, each stamp row is
added with masked vector loads and stores (64 bytes at a time: LLVM leaves loops as short as
a stamp row scalar), and once the stamps have passed a row it is streamed to the result with
non-temporal stores (the result is written once and never read into the cache). Each pixel
sums its stamps in that order (top row, then source index): deterministic, and equal to the
ascending-source sums of the other products to rounding. The values of the stamp
:data:`PREFETCH_AHEAD` stamps ahead are prefetched: in a jitter loop (three designs and
their models cycling through the caches) they come from memory, and the loop outruns the
hardware's prefetcher.

Large products (from :data:`SERIAL_BELOW` multiply-adds) run in
:func:`sparse3d._threads.threads_for` threads: the image rows are cut
into contiguous bands (:data:`BANDS_PER_THREAD` per thread, handed out by
:func:`sparse3d._threads.share`), each summed in its thread's ring; a band takes the stamps
(in the same order) whose rows reach it and adds only their rows inside it, so every pixel
sums the same stamps in the same order whatever the thread count: the same bits.

numba is imported when the kernel is first needed; the compiled code is cached on disk.
:func:`precompile_kernels` is this module's :func:`sparse3d.precompile` hook.
"""

from __future__ import annotations

import threading
from types import FunctionType

import numpy as np

from . import _kernels, _threads

__all__ = ["planes_order", "planes_scatter"]

#: One multiply-add here counts as this many of :data:`sparse3d._threads.PARALLEL_MIN_WORK`:
#: each is part of a vector read-modify-write of a ring row in L2, plus the row's zeroing
#: and streaming out (~0.45 ns per multiply-add on a Zen 4 core: 0.9 ms for 3000 15x15
#: stamps into 3 planes): the work :func:`sparse3d._threads.threads_for` is asked about for
#: products from :data:`SERIAL_BELOW` multiply-adds on.
WORK_PER_MULTIPLY_ADD = 4
#: Products of fewer multiply-adds than this run in the calling thread whatever the thread
#: count (1 M: ~0.4 ms in one thread). Above it the bands go to :func:`sparse3d._threads.share`
#: with the threads :func:`sparse3d._threads.threads_for` allows (one when other processes keep
#: the cores busy). Measured on the 2-vCPU machine, jitter loop of 60 products of 2 M
#: multiply-adds (3000 15x15 stamps into 3 planes), rounds of 9: idle machine, 67-77 ms in two
#: threads against 82-106 ms in one; with another process busy 50 % of every 50 ms, 78-97 ms
#: (one round of 158 ms: a band's thread descheduled until its core came back); with one busy
#: all the time, 83-90 ms (threads_for gave one thread). An earlier bound of 8 M kept these
#: products in one thread because of such stalls; they cost a round now and then, the second
#: core saves ~20 % of every round.
SERIAL_BELOW = 1 << 20
#: Bands of image rows per thread (taken by whichever thread is free, so a thread whose core
#: is busy leaves its bands to the others). A band adds only the rows inside it of the stamps
#: that reach it, but each costs a call (~15 us in a jitter loop: 8 bands per product of
#: 3000 15x15 stamps took 10% more CPU time than 2; 4 about 4%).
BANDS_PER_THREAD = 2
#: The loop asks for the values of the stamp this many stamps ahead (a stamp of 15x15
#: float64 is 1.8 kB): in a jitter loop they come from memory, not from a cache.
PREFETCH_AHEAD = 16


# -- the loop and its helpers (plain Python; compiled by numba on first use) ----------------
def _stream64(dst, i, src, j):  # pragma: no cover - replaced by a numba intrinsic before compiling
    """``dst`` bytes ``[i*s, i*s + 64)`` = ``src``'s from ``j*s`` (``s`` the item size), written
    around the caches; ``dst``'s address there is 64-byte aligned (a whole cache line)."""


def _stream64_intrinsic():
    """``_stream64`` as a numba intrinsic: one 64-byte store with LLVM's ``!nontemporal``
    hint (``vmovntdq``): the line goes to memory without first being read into the cache
    (a quarter of the instructions of 16-byte stores)."""
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic

    @intrinsic
    def stream64(typingctx, dst, i, src, j):
        def codegen(context, builder, sig, args):
            dty, _, sty, _ = sig.args
            vec = ir.VectorType(ir.IntType(64), 8)
            da = context.make_array(dty)(context, builder, args[0])
            sa = context.make_array(sty)(context, builder, args[2])
            dptr = cgutils.get_item_pointer(context, builder, dty, da, [args[1]], wraparound=False)
            sptr = cgutils.get_item_pointer(context, builder, sty, sa, [args[3]], wraparound=False)
            value = builder.load(builder.bitcast(sptr, vec.as_pointer()), align=1)
            store = builder.store(value, builder.bitcast(dptr, vec.as_pointer()), align=64)
            store.set_metadata("nontemporal", builder.module.add_metadata([ir.IntType(32)(1)]))
            return context.get_dummy_value()

        return types.void(dst, i, src, j), codegen

    return stream64


def _prefetch(a, i):  # pragma: no cover - replaced by a numba intrinsic before compiling
    """Ask for the cache line of ``a[i]`` (to be read) ahead of its use."""


def _prefetch_intrinsic():
    """``_prefetch`` as a numba intrinsic: LLVM's ``llvm.prefetch`` for a read with low
    temporal locality (``prefetcht2``)."""
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic

    @intrinsic
    def prefetch(typingctx, a, i):
        def codegen(context, builder, sig, args):
            aty = sig.args[0]
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            arr = context.make_array(aty)(context, builder, args[0])
            ptr = cgutils.get_item_pointer(context, builder, aty, arr, [args[1]], wraparound=False)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0"
            )
            builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(1), i32(1)])
            return context.get_dummy_value()

        return types.void(a, i), codegen

    return prefetch


def _no_prefetch(a, i):  # pragma: no cover - runs compiled (the fallback of _prefetch)
    pass


def _row_axpy(o, oi, v, vi, n, wq):  # pragma: no cover - replaced by a numba overload before compiling
    """``o[oi : oi + n] += v[vi : vi + n] * wq`` (one stamp row into one image row)."""
    for j in range(n):
        o[oi + j] += v[vi + j] * wq


def _vector_ir(context, builder, dtype):
    """LLVM IR helpers for 64-byte vectors of the numba float ``dtype`` (for the intrinsics
    below): ``lanes``; ``splat(x)``; ``mask(n)`` (the first ``n`` lanes, none when ``n <= 0``);
    ``ptr(aty, ary, i)`` (``ary[i]`` as a vector pointer); ``load(p, mask)`` (masked, zeros
    elsewhere) and ``axpy(p, v, w, mask)``: ``*p += v * w`` in the masked lanes, multiply then
    add (the bits of the scalar loop), the other lanes neither read nor written."""
    from types import SimpleNamespace

    from llvmlite import ir
    from numba.core import cgutils

    i32, i64 = ir.IntType(32), ir.IntType(64)
    size = dtype.bitwidth // 8
    lanes = 64 // size
    vec, ivec, bvec = (
        ir.VectorType(context.get_data_type(dtype), lanes),
        ir.VectorType(i64, lanes),
        ir.VectorType(ir.IntType(1), lanes),
    )
    zeros = ir.Constant(ir.VectorType(i32, lanes), [0] * lanes)
    suffix = f"v{lanes}f{dtype.bitwidth}"
    vload = cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(vec, [vec.as_pointer(), i32, bvec, vec]),
        f"llvm.masked.load.{suffix}.p0",
    )
    vstore = cgutils.get_or_insert_function(
        builder.module,
        ir.FunctionType(ir.VoidType(), [vec, vec.as_pointer(), i32, bvec]),
        f"llvm.masked.store.{suffix}.p0",
    )

    def splat(x, ty=vec):
        return builder.shuffle_vector(
            builder.insert_element(ty(ir.Undefined), x, i32(0)), ty(ir.Undefined), zeros
        )

    def mask(n):
        return builder.icmp_signed("<", ir.Constant(ivec, list(range(lanes))), splat(n, ivec))

    def ptr(aty, ary, i):
        p = cgutils.get_item_pointer(context, builder, aty, ary, [i], wraparound=False)
        return builder.bitcast(p, vec.as_pointer())

    def load(p, m):
        return builder.call(vload, [p, i32(size), m, ir.Constant(vec, None)])

    def axpy(p, v, w, m):
        builder.call(vstore, [builder.fadd(load(p, m), builder.fmul(v, w)), p, i32(size), m])

    return SimpleNamespace(lanes=lanes, i64=i64, splat=splat, mask=mask, ptr=ptr, load=load, axpy=axpy)


def _vector_dtype(*arrays) -> bool:
    """Whether numba array types ``arrays`` share one float32/float64 dtype (the vector path)."""
    from numba.core import types

    dtype = arrays[0].dtype
    return (
        isinstance(dtype, types.Float)
        and dtype.bitwidth in (32, 64)
        and all(a.dtype == dtype for a in arrays)
    )


def _row_axpy_overload():
    """``_row_axpy`` compiled: for real ``o`` and ``v`` of one dtype, 64 bytes at a time with
    LLVM's masked vector loads and stores (a 15-pixel stamp row is two vector operations; LLVM
    leaves such short loops scalar); otherwise the scalar loop. Multiply, then add: the
    same bits as the scalar loop."""
    from numba.core import types
    from numba.extending import intrinsic, overload

    @intrinsic
    def masked(typingctx, o, oi, v, vi, n, wq):
        def codegen(context, builder, sig, args):
            oty, oity, vty, vity, nty, wty = sig.args
            X = _vector_ir(context, builder, oty.dtype)
            oa, va = (context.make_array(t)(context, builder, x) for t, x in ((oty, args[0]), (vty, args[2])))
            mask = X.mask(context.cast(builder, args[4], nty, types.int64))
            vv = X.load(X.ptr(vty, va, args[3]), mask)
            X.axpy(X.ptr(oty, oa, args[1]), vv, X.splat(context.cast(builder, args[5], wty, oty.dtype)), mask)
            return context.get_dummy_value()

        return types.void(o, oi, v, vi, n, wq), codegen

    def stub(o, oi, v, vi, n, wq):
        pass

    @overload(stub, inline="always")
    def impl(o, oi, v, vi, n, wq):
        if _vector_dtype(o, v):
            lanes = 64 // (o.dtype.bitwidth // 8)

            def vector(o, oi, v, vi, n, wq):
                for j in range(0, n, lanes):
                    masked(o, oi + j, v, vi + j, min(lanes, n - j), wq)

            return vector

        def scalar(o, oi, v, vi, n, wq):
            for j in range(n):
                o[oi + j] += v[vi + j] * wq

        return scalar

    return stub


def _row_planes2(ring, at, plane, v, vi, n, wk):  # pragma: no cover - replaced before compiling
    """``ring[at + q * plane + j] += v[vi + j] * wk[q]`` for ``j < n`` (``lanes < n <= 2 lanes``)
    and every plane ``q``: one stamp row, loaded once, into the same image row of each plane."""
    for q in range(wk.shape[0]):
        for j in range(n):
            ring[at + q * plane + j] += v[vi + j] * wk[q]


_row_planes2_scalar = _row_planes2  # the loop itself, for the overload's fallback


def _row_planes2_overload():
    """``_row_planes2`` compiled: for real ``ring``, ``v`` and ``wk`` of one dtype, the stamp row
    is two masked vectors loaded once, and each plane gets two masked read-modify-writes
    (~6% less time than a :func:`_row_axpy` per plane); otherwise the scalar loop."""
    from numba.core import cgutils, types
    from numba.extending import intrinsic, overload

    @intrinsic
    def rows2(typingctx, ring, at, plane, v, vi, n, wk):
        def codegen(context, builder, sig, args):
            rty, _, _, vty, _, _, wty = sig.args
            X = _vector_ir(context, builder, rty.dtype)
            at, plane, vi, n = (
                context.cast(builder, args[i], sig.args[i], types.int64) for i in (1, 2, 4, 5)
            )
            ra, va, wa = (
                context.make_array(t)(context, builder, args[i]) for t, i in ((rty, 0), (vty, 3), (wty, 6))
            )
            lanes = X.i64(X.lanes)
            masks = (X.mask(n), X.mask(builder.sub(n, lanes)))
            rows = [
                X.load(X.ptr(vty, va, builder.add(vi, off)), k) for off, k in zip((X.i64(0), lanes), masks)
            ]
            with cgutils.for_range(builder, cgutils.unpack_tuple(builder, wa.shape, 1)[0]) as loop:
                q = loop.index
                w = X.splat(
                    builder.load(cgutils.get_item_pointer(context, builder, wty, wa, [q], wraparound=False))
                )
                base = builder.add(at, builder.mul(q, plane))
                for off, vv, k in zip((X.i64(0), lanes), rows, masks):
                    X.axpy(X.ptr(rty, ra, builder.add(base, off)), vv, w, k)
            return context.get_dummy_value()

        return types.void(ring, at, plane, v, vi, n, wk), codegen

    def stub(ring, at, plane, v, vi, n, wk):
        pass

    @overload(stub, inline="always")
    def impl(ring, at, plane, v, vi, n, wk):
        if _vector_dtype(ring, v, wk):
            return lambda ring, at, plane, v, vi, n, wk: rows2(ring, at, plane, v, vi, n, wk)
        return _row_planes2_scalar

    return stub


def _planes_loop(svals, srow0, scol0, source, w, r0, c0, out, ring, y0, y1):  # pragma: no cover
    """Rows ``y0 <= y < y1`` of
    ``out[q, srow0[t] - r0 + i, scol0[t] - c0 + j] = Σ_t svals[t, i, j] * w[source[t], q]`` (in-image).

    The stamps ``t`` are sorted by their top row ``srow0``; only ``first <= t < last`` can
    reach the rows (found here by bisection: ``np.searchsorted`` costs ~15 us per band with
    the caches cold from the model before). Rows are summed in ``ring`` ``(m, nr, >= W)``
    (image row ``y`` in ring row ``y % nr``; it stays in cache), zeroed there just before the
    first stamp lands on them; once the stamps have moved below a row, it is final and
    streamed to ``out`` ``(m, H, W)`` with non-temporal stores (no read of ``out`` into the
    cache). Rows no stamp reaches are zeroed in ``out``.
    """
    n, nr, nc = svals.shape
    m, H, W = out.shape
    step = lanes = 64 // out.itemsize  # elements per 64-byte store (and vector)
    first = _first_at_least(srow0, r0 + y0 - nr + 1)  # stamps wholly above the rows end here
    last = _first_at_least(srow0, r0 + y1)  # stamps from here on start below them
    flat = svals.reshape(-1)
    rflat = ring.reshape(-1)
    rw = ring.shape[2]
    plane = nr * rw
    z = y0  # rows [y0, z) are started: zeroed in the ring (or already written out)
    f = y0  # rows [y0, f) are written to out
    for t in range(first, last + 1):
        top = y1  # after the last stamp: write out every row left
        if t < last:
            r = srow0[t] - r0
            c = scol0[t] - c0
            i0, i1 = max(0, y0 - r), min(nr, y1 - r)
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
                while x < W and (o.ctypes.data + x * out.itemsize) % 64 != 0:
                    o[x] = s[x]
                    x += 1
                while x + step <= W:
                    _stream64(o, x, s, x)
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
        if t + PREFETCH_AHEAD < last:  # a later stamp's values: the loop outruns the hardware's prefetcher
            ahead = (t + PREFETCH_AHEAD) * nr * nc
            for x in range(ahead, ahead + nr * nc, 64 // svals.itemsize):
                _prefetch(flat, x)
        wk = w[source[t]]
        y = (r + i0) % nr
        vi = (t * nr + i0) * nc + j0  # stamp row i0 in the flat values
        two = lanes < j1 - j0 <= 2 * lanes  # (15-pixel rows of float64: the common case)
        for _ in range(i0, i1):
            at = y * rw + c + j0  # this stamp row's image row, plane 0, in the flat ring
            if two:
                _row_planes2(rflat, at, plane, flat, vi, j1 - j0, wk)
            else:
                for q in range(m):
                    _row_axpy(rflat, at, flat, vi, j1 - j0, wk[q])
                    at += plane
            vi += nc
            y += 1
            if y == nr:
                y = 0


def _first_at_least(a, v):  # pragma: no cover - runs compiled (inlined into the loop)
    """The first index of sorted ``a`` whose value is at least ``v`` (``np.searchsorted(a, v)``)."""
    lo, hi = 0, a.shape[0]
    while lo < hi:
        mid = (lo + hi) // 2
        if a[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


def _copy64(dst, i, src, j):  # pragma: no cover - runs compiled (the fallback of _stream64)
    for e in range(64 // dst.itemsize):
        dst[i + e] = src[j + e]


def _compiled(name: str):
    """The compiled loop ``name`` (registered with the array core's kernels, so
    :func:`sparse3d._kernels.loaded` knows numba is paid for)."""
    key = f"_planes_kernels.{name}"
    fn = _kernels._COMPILED.get(key)
    if fn is None:
        import numba

        global _stream64, _row_axpy, _prefetch, _row_planes2, _first_at_least
        if isinstance(_first_at_least, FunctionType):
            _first_at_least = numba.njit(inline="always")(_first_at_least)
        if isinstance(_prefetch, FunctionType):
            try:
                _prefetch = _prefetch_intrinsic()
            except Exception:  # noqa: BLE001 - an llvmlite without it: no prefetching
                _prefetch = numba.njit(_no_prefetch)
        if isinstance(_stream64, FunctionType):  # still the Python stub (numba freezes globals)
            try:
                _stream64 = _stream64_intrinsic()
            except Exception:  # noqa: BLE001 - an llvmlite without it: plain 64-byte copies
                _stream64 = numba.njit(_copy64)
        if isinstance(_row_planes2, FunctionType):
            try:
                _row_planes2 = _row_planes2_overload()
            except Exception:  # noqa: BLE001 - an llvmlite without masked vectors: the scalar loop
                _row_planes2 = numba.njit(_row_planes2)
        if isinstance(_row_axpy, FunctionType):
            try:
                _row_axpy = _row_axpy_overload()
            except Exception:  # noqa: BLE001 - an llvmlite without masked vectors: the scalar loop
                _row_axpy = numba.njit(_row_axpy)
        fn = numba.njit(cache=True, nogil=True)(globals()[name])
        _kernels._COMPILED[key] = fn
    return fn


# -- entry points ----------------------------------------------------------------------------
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
    :func:`planes_order` (top row, then source), so results are deterministic (the same
    bits for any thread count: bands of rows, see the module docstring); they equal the
    ascending-source sums of :func:`sparse3d._kernels.sorted_scatter` to rounding.
    Stamp pixels off the image are never read into a sum.
    """
    m, H, W = out.shape
    if svals.size == 0 or m == 0 or H == 0 or W == 0:
        out[...] = 0
        return out
    if w.dtype != out.dtype or not (w.flags.c_contiguous or w.flags.f_contiguous):
        w = np.ascontiguousarray(w, dtype=out.dtype)  # a column slice (1.x's flux[:, frames]) stays as is
    r0, c0 = int(root_corner[0]), int(root_corner[1])
    n, nr, nc = svals.shape
    loop = _compiled("_planes_loop")

    def band(rows: tuple[int, int], _=None) -> None:
        # rows [y0, y1) in this thread's ring; stamps wholly above or below the band are skipped
        y0, y1 = rows
        ring = _ring(m, nr, W, out.dtype)  # the calling thread's
        loop(svals, srow0, scol0, source, w, r0, c0, out, ring, y0, y1)

    madds = n * nr * nc * m
    threads = 1 if madds < SERIAL_BELOW else _threads.threads_for(WORK_PER_MULTIPLY_ADD * madds)
    if threads <= 1:
        band((0, H))
    else:
        edges = _threads.split(H, threads * BANDS_PER_THREAD)
        _threads.share(band, list(zip(edges[:-1], edges[1:])), threads)
    return out


_RINGS = threading.local()


def _ring(m: int, nr: int, W: int, dtype) -> np.ndarray:
    """This thread's scratch rows ``(m, nr, >= W)`` for :func:`planes_scatter` (kept: a new
    one per product would fault in its pages every time).

    Rows are padded so that neither a row nor a plane of the ring is a multiple of 4 KiB
    apart: a load 4 KiB away from a pending store (one stamp's rows and planes, for image
    widths such as 512 float64) waits for that store, which stalls the vector row updates.
    """
    dtype = np.dtype(dtype)
    key = (m, nr, W, dtype)
    got = getattr(_RINGS, "ring", None)
    if got is None or got[0] != key:
        width = W + 64 // dtype.itemsize
        while min(_off4k(width * dtype.itemsize), _off4k(nr * width * dtype.itemsize)) < 256:
            width += 64 // dtype.itemsize
        got = (key, np.empty((m, nr, width), dtype))
        _RINGS.ring = got  # one per thread, the last shape used
    return got[1]


def _off4k(nbytes: int) -> int:
    """Distance of ``nbytes`` from the nearest multiple of 4 KiB."""
    r = nbytes % 4096
    return min(r, 4096 - r)


def precompile_kernels() -> None:
    """Compile (or load from the cache) the loop for float64/float32 values and results, with
    C- and Fortran-ordered weights (the :func:`sparse3d.precompile` hook)."""
    if not _kernels.available():
        return
    row0, col0 = np.array([1, 4]), np.array([2, 5])
    for dtype in (np.float64, np.float32):
        inputs = planes_order(np.ones((3, 3, 2), dtype=dtype), row0, col0)
        for w in (np.ones((2, 1), dtype=dtype), np.asfortranarray(np.ones((2, 3), dtype=dtype))):
            planes_scatter(*inputs, w, (0, 0), np.empty((w.shape[1], 8, 8), dtype))
