"""Compiled loops for the products of a :class:`~sparse3d.Sparse3D` (``dot``, ``tensordot``).

Each kernel walks the stamp block once, computing every element's image pixel from its
``row``/``col`` position on the fly, so no pixel index, in-image mask or ``values * w``
temporary is allocated::

    dot / model     out[r - r0, c - c0, :] += values[i, j, k] * w[k, :]      (a scatter)
    projection      out[k, :] += values[i, j, k] * image[r - r0, c - c0, :]  (a gather)

for every stamp element ``(i, j, k)`` whose pixel ``(r, c) = (row, col)[i, j, k]`` lies
inside the image; off-image elements are skipped (NaN or inf stored there never reaches a
result). Sums accumulate in the dtype of the result, as NumPy's ``matmul`` does: float32
stays float32. The loops are serial, in a fixed order, so results are deterministic
(bit-identical from call to call, whatever the cache state).

numba is imported the first time a kernel is needed (never at ``import sparse3d``) and the
compiled code is cached on disk (``cache=True``), so the compile cost (~2 s per dtype
combination) is paid once per machine; a new process still pays ~1.5 s on its first
kernel call (numba's import and loading the cached code). When numba is missing, or the
input is small (:data:`MIN_ELEMENTS`), callers use their NumPy path instead.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "available",
    "use_kernel",
    "scatter",
    "gather",
    "min_max",
    "equal",
    "loaded",
    "sorted_scatter",
    "roi_scatter",
    "shift",
    "KERNEL_DTYPES",
    "MIN_ELEMENTS",
]

#: Result dtypes the kernels handle; others (integers, bool) use the NumPy path.
KERNEL_DTYPES = frozenset(np.dtype(t) for t in ("float32", "float64", "complex64", "complex128"))

#: Below this many stamp elements the NumPy path is used: it takes a few ms there, while the
#: first kernel call of a process costs ~0.4 s (import numba) + ~1 s (load the cached
#: machine code; ~2 s to compile it the very first time on a machine).
MIN_ELEMENTS = 1_000_000

#: Images up to this size are scattered into / gathered from in one sweep of the stamps.
CACHE_IMAGE_BYTES = 16 * 2**20

_COMPILED: dict[str, object] = {}
_AVAILABLE: bool | None = None


def available() -> bool:
    """Whether numba can be imported (checked once)."""
    global _AVAILABLE
    if _AVAILABLE is None:
        try:
            import numba  # noqa: F401
        except Exception:  # noqa: BLE001 - any import failure means "no kernels"
            _AVAILABLE = False
        else:
            _AVAILABLE = True
    return _AVAILABLE


def use_kernel(nelements: int, dtype, *operand_dtypes) -> bool:
    """Whether a product over ``nelements`` stamp elements should use a kernel.

    ``dtype`` is the result dtype (one of :data:`KERNEL_DTYPES`); ``operand_dtypes`` are the
    dtypes of the arrays the loop reads (native-order bool, integers, float32/64, complex).
    """
    if nelements < MIN_ELEMENTS or np.dtype(dtype) not in KERNEL_DTYPES:
        return False
    for dt in map(np.dtype, operand_dtypes):
        if not dt.isnative or dt.kind not in "biufc" or dt.itemsize > 16 or dt == np.float16:
            return False
        if dt.kind == "f" and dt.itemsize > 8 or dt.kind == "c" and dt.itemsize > 16:
            return False
    return available()


# -- the loops (plain Python; compiled by numba on first use) ------------------------------
def _scatter_loop(row, col, values, w, r0, c0, out, block):  # pragma: no cover - runs compiled
    nr, nc, n = values.shape
    H, W, m = out.shape
    for k0 in range(0, n, block):
        k1 = min(k0 + block, n)
        for i in range(nr):
            for j in range(nc):
                for k in range(k0, k1):
                    r = row[i, j, k] - r0
                    c = col[i, j, k] - c0
                    if r < 0 or r >= H or c < 0 or c >= W:
                        continue
                    v = values[i, j, k]
                    for q in range(m):
                        out[r, c, q] += v * w[k, q]


def _gather_loop(row, col, values, image, r0, c0, out, block):  # pragma: no cover - runs compiled
    nr, nc, n = values.shape
    H, W, m = image.shape
    for k0 in range(0, n, block):
        k1 = min(k0 + block, n)
        for i in range(nr):
            for j in range(nc):
                for k in range(k0, k1):
                    r = row[i, j, k] - r0
                    c = col[i, j, k] - c0
                    if r < 0 or r >= H or c < 0 or c >= W:
                        continue
                    v = values[i, j, k]
                    for q in range(m):
                        out[k, q] += v * image[r, c, q]


def _block(n: int, image_bytes: int) -> int:
    """Sources per block of the loops' outer level.

    One block (stamp pixel outermost, every source inside) reads the stamp block once in
    memory order, and is fastest while the image stays in the last-level cache. Beyond
    that, each stamp pixel would land on a random image page: blocks of 32 sources visit a
    few sources' whole stamps at a time (4x faster at 8192² measured), reading each stamp
    row as a cache line.
    """
    return max(n, 1) if image_bytes <= CACHE_IMAGE_BYTES else 32


# Indices into ``out`` and ``w`` are made unsigned: numba then skips its negative-index
# wraparound test, which costs the sorted loops ~1.8x (they are never negative here).
def _sorted_scatter_loop(srow, scol, ssrc, svals, start, stop, r0, c0, W, w, out):  # pragma: no cover
    m = w.shape[1]
    wf = w.ravel()
    um = np.uint64(m)
    for e in range(start, stop):
        c = scol[e] - c0
        if c < 0 or c >= W:
            continue
        p = np.uint64((srow[e] - r0) * W + c) * um  # flat index into out (H * W * m,)
        v = svals[e]
        k = np.uint64(ssrc[e]) * um
        for q in range(m):
            uq = np.uint64(q)
            out[p + uq] += v * wf[k + uq]


def _sorted_rows_loop(scol, ssrc, svals, rowptr, u0, u1, rlo, r0, c0, W, w, out):  # pragma: no cover
    m = w.shape[1]
    wf = w.ravel()
    um = np.uint64(m)
    for u in range(u0, u1):  # stored rows that land inside the image
        lo = rowptr[u - rlo]
        hi = rowptr[u - rlo + 1]
        while lo < hi and scol[lo] < c0:  # a row's elements are sorted by column
            lo += 1
        while hi > lo and scol[hi - 1] >= c0 + W:
            hi -= 1
        base = (u - r0) * W - c0
        for e in range(lo, hi):
            p = np.uint64(base + scol[e]) * um
            v = svals[e]
            k = np.uint64(ssrc[e]) * um
            for q in range(m):
                uq = np.uint64(q)
                out[p + uq] += v * wf[k + uq]


def _lower_bound(srow, scol, r, c):  # pragma: no cover - runs compiled
    lo = 0
    hi = srow.size
    while lo < hi:
        mid = (lo + hi) // 2
        if srow[mid] < r or (srow[mid] == r and scol[mid] < c):
            lo = mid + 1
        else:
            hi = mid
    return lo


#: The compiled :func:`_lower_bound`, set by :func:`_compiled` before the ROI loop compiles.
_lower_bound_c = None


def _roi_scatter_loop(srow, scol, ssrc, svals, corners, dr, dc, r0, c0, H, W, w, out):  # pragma: no cover
    nrois, h, wd, m = out.shape
    for j in range(nrois):
        cr = corners[j, 0]
        cc = corners[j, 1]
        ca = max(cc, c0)  # window columns inside the image, translated frame
        cb = min(cc + wd, c0 + W)
        if ca >= cb:
            continue
        for a in range(h):
            R = cr + a
            if R < r0 or R >= r0 + H:
                continue
            lo = _lower_bound_c(srow, scol, R - dr, ca - dc)
            hi = _lower_bound_c(srow, scol, R - dr, cb - dc)
            for e in range(lo, hi):
                b = scol[e] + dc - cc
                v = svals[e]
                k = ssrc[e]
                for q in range(m):
                    out[j, a, b, q] += v * w[k, q]


def _min_max_loop(a):  # pragma: no cover - runs compiled
    lo = a[0]
    hi = a[0]
    for x in a:
        if x < lo:
            lo = x
        elif x > hi:
            hi = x
    return lo, hi


def _equal_loop(a, b):  # pragma: no cover - runs compiled
    for i in range(a.size):
        if a[i] != b[i]:
            return False
    return True


def _flat_integers(a: np.ndarray) -> np.ndarray | None:
    """``a`` as a 1-D view when it is a contiguous native integer array worth a kernel."""
    if a.size < MIN_ELEMENTS or a.dtype.kind not in "iu" or not a.dtype.isnative or not a.flags.c_contiguous:
        return None
    return a.reshape(-1) if available() else None


def min_max(a: np.ndarray) -> tuple[int, int]:
    """``(a.min(), a.max())`` as Python ints, in one pass over ``a`` (non-empty integers)."""
    flat = _flat_integers(a)
    if flat is None:
        return int(a.min()), int(a.max())
    lo, hi = _compiled("_min_max_loop")(flat)
    return int(lo), int(hi)


def equal(a: np.ndarray, b: np.ndarray) -> bool:
    """``np.array_equal(a, b)`` for integer arrays of one shape, in one pass without temporaries."""
    if a.shape != b.shape:
        return False
    fa, fb = _flat_integers(a), _flat_integers(b)
    if fa is None or fb is None:
        return bool(np.array_equal(a, b))
    return bool(_compiled("_equal_loop")(fa, fb))


#: Kernels that call other kernels (through globals named ``<callee>_c``).
_CALLEES = {
    "_roi_scatter_loop": ("_lower_bound",),
    "_pass_shared": ("_tile1s", "_tile4s", "_tile5s"),
    "_pass_per_source": ("_tile1v", "_tile4v", "_tile5v"),
    "_shift_shared_loop": ("_pass_shared",),
    "_shift_loop": ("_sinc_weights", "_pass_per_source"),
}
#: Kernels whose ``a * b + c`` may become one fused multiply-add (the shift tiles: rounding
#: differs from NumPy's by ~1 ulp per term, deterministic on a given machine).
_FMA_KERNELS = frozenset({"_tile1s", "_tile4s", "_tile5s", "_tile1v", "_tile4v", "_tile5v"})
#: Kernels that divide: no ZeroDivisionError checks in their loops (they never divide by 0).
_NUMPY_ERRORS = frozenset({"_sinc_weights", "_shift_shared_loop", "_shift_loop"})


def _compiled(name: str):
    fn = _COMPILED.get(name)
    if fn is None:
        import numba

        for callee in _CALLEES.get(name, ()):  # compiled first, then seen as a global
            globals()[callee + "_c"] = _compiled(callee)
        opts = {"fastmath": {"contract"}} if name in _FMA_KERNELS else {}
        if name in _NUMPY_ERRORS:
            opts["error_model"] = "numpy"
        fn = numba.njit(cache=True, nogil=True, **opts)(globals()[name])
        _COMPILED[name] = fn
    return fn


def loaded() -> bool:
    """Whether this process has already paid for numba (a kernel was compiled or loaded)."""
    return bool(_COMPILED)


def sorted_scatter(order, svals, root_corner, imshape, w, dtype, rows=None) -> np.ndarray:
    """:func:`scatter` over stamp elements sorted by pixel: ``(H, W, m)``.

    ``order`` is ``(srow, scol, ssrc)``: the stored positions and sources sorted by
    ``(row, col, source)`` (:meth:`~sparse3d._structure.StampStructure.sorted_order`),
    ``svals`` the values in that order. ``root_corner`` is image pixel ``[0, 0]`` in the
    coordinates of the stored positions (``imcorner - offset``): the image rows are one
    contiguous run of the order, and the writes stream through the image in pixel order.
    ``rows`` is ``(rowptr, rlo)``, where each stored row starts in the order
    (:meth:`~sparse3d._structure.StampStructure.sorted_rows`); with it no element outside
    the image's rows is visited. Each pixel sums its sources in ascending order, as a CSR
    product does (float64: the same bits).
    """
    srow, scol, ssrc = order
    dtype = np.dtype(dtype)
    (H, W), (r0, c0) = imshape, root_corner
    out = np.zeros((H, W, w.shape[1]), dtype=dtype)
    if srow.size == 0 or w.shape[1] == 0:
        return out
    w = np.ascontiguousarray(w, dtype=dtype)
    if rows is not None:
        rowptr, rlo = rows
        u0, u1 = max(r0, rlo), min(r0 + H, rlo + rowptr.size - 1)
        if u1 > u0:
            _compiled("_sorted_rows_loop")(
                scol,
                ssrc,
                svals,
                rowptr,
                int(u0),
                int(u1),
                int(rlo),
                int(r0),
                int(c0),
                int(W),
                w,
                out.reshape(-1),
            )
        return out
    start, stop = _run(srow, r0), _run(srow, r0 + H)
    if stop > start:
        _compiled("_sorted_scatter_loop")(
            srow, scol, ssrc, svals, start, stop, int(r0), int(c0), int(W), w, out.reshape(-1)
        )
    return out


def _run(sorted_rows: np.ndarray, value: int) -> int:
    """``np.searchsorted(sorted_rows, value)`` for a Python int of any size."""
    info = np.iinfo(sorted_rows.dtype)
    if value <= info.min:
        return 0
    if value > info.max:
        return sorted_rows.size
    return int(np.searchsorted(sorted_rows, sorted_rows.dtype.type(value)))  # no upcast copy


def roi_scatter(order, svals, offset, imcorner, imshape, corners, size, w, dtype) -> np.ndarray:
    """The model in windows ``(nrois, h, w, m)`` of stamps translated by ``offset``.

    For every window row, the stamp elements landing on it are one contiguous run of the
    sorted order (two binary searches); window pixels outside the image stay 0.
    """
    srow, scol, ssrc = order
    dtype = np.dtype(dtype)
    h, wd = size
    out = np.zeros((corners.shape[0], h, wd, w.shape[1]), dtype=dtype)
    if srow.size:
        w = np.ascontiguousarray(w, dtype=dtype)
        (dr, dc), (r0, c0), (H, W) = offset, imcorner, imshape
        _compiled("_roi_scatter_loop")(
            srow, scol, ssrc, svals, corners, int(dr), int(dc), int(r0), int(c0), int(H), int(W), w, out
        )
    return out


def scatter(row, col, values, w, imcorner, imshape, dtype) -> np.ndarray:
    """The model ``(H, W, m)``: ``Σ_k values[..., k] * w[k, :]`` scattered onto the image.

    Parameters
    ----------
    row, col : numpy.ndarray of int, shape (nr, nc, n)
        Absolute stamp pixel positions (any integer type, any strides).
    values : numpy.ndarray, shape (nr, nc, n)
        Stamp values.
    w : numpy.ndarray, shape (n, m)
        Weights; cast to ``dtype`` (it is small).
    imcorner, imshape : tuple of int
        Image bounds.
    dtype : numpy.dtype
        Result (and accumulation) dtype, one of :data:`KERNEL_DTYPES`.
    """
    dtype = np.dtype(dtype)
    H, W = imshape
    out = np.zeros((H, W, w.shape[1]), dtype=dtype)
    w = np.ascontiguousarray(w, dtype=dtype)
    block = _block(values.shape[2], out.nbytes)
    _compiled("_scatter_loop")(row, col, values, w, int(imcorner[0]), int(imcorner[1]), out, block)
    return out


def gather(row, col, values, image, imcorner, dtype) -> np.ndarray:
    """The projection ``(n, m)``: ``Σ_{pixels} values[..., k] * image[pixel, :]`` per source.

    ``image`` has shape ``(H, W, m)`` (any strides); ``dtype`` is the result (and
    accumulation) dtype, one of :data:`KERNEL_DTYPES`.
    """
    dtype = np.dtype(dtype)
    n = values.shape[2]
    out = np.zeros((n, image.shape[2]), dtype=dtype)
    block = _block(n, image.nbytes)
    _compiled("_gather_loop")(row, col, values, image, int(imcorner[0]), int(imcorner[1]), out, block)
    return out


# -- fractional shifts (sparse3d._interpolate.shift_stamps) -------------------------------
# A stamp axis of length L is resampled by the L x L matrix A[j, b] = sinc(j - b - f): one
# pass along the stamp columns, then one along the rows (the kernel is separable), over runs
# of ``m`` sources (the contiguous axis). Each pass is cut into T x T tiles (T outputs x T
# inputs): per vector of sources a tile loads T inputs and T partial sums and does T² FMAs,
# with the partial sums in registers, so the loops run near the FMA throughput; a
# one-output-at-a-time loop would load and store its partial sum for every input.
# Indices are unsigned, as in the scatter loops above: no negative-index test in the loops.
_tile4s_c = _tile5s_c = _tile1s_c = _tile4v_c = _tile5v_c = _tile1v_c = None  # set by _compiled
_pass_shared_c = _pass_per_source_c = _sinc_weights_c = None  # compiled helpers, set by _compiled


def _tile1s(src, s, ss, dst, d, ds, w, p, m, init):  # pragma: no cover - runs compiled
    """``dst[d + kk] (=|+=) w[p] * src[s + kk]`` for ``kk < m`` (one output, one input)."""
    w0 = w[p]
    i0 = np.uint64(s)
    o0 = np.uint64(d)
    if init:
        for kk in range(m):
            u = np.uint64(kk)
            dst[o0 + u] = w0 * src[i0 + u]
    else:
        for kk in range(m):
            u = np.uint64(kk)
            dst[o0 + u] += w0 * src[i0 + u]


def _tile4s(src, s, ss, dst, d, ds, w, p, m, init):  # pragma: no cover - runs compiled
    """Outputs ``d + t·ds`` (=|+=) ``Σ_u w[p + 4t + u] · src[s + u·ss]``, ``t, u < 4``, over ``m`` sources."""
    i0 = np.uint64(s)
    i1 = np.uint64(s + ss)
    i2 = np.uint64(s + 2 * ss)
    i3 = np.uint64(s + 3 * ss)
    o0 = np.uint64(d)
    o1 = np.uint64(d + ds)
    o2 = np.uint64(d + 2 * ds)
    o3 = np.uint64(d + 3 * ds)
    w00, w01, w02, w03 = w[p], w[p + 1], w[p + 2], w[p + 3]
    w10, w11, w12, w13 = w[p + 4], w[p + 5], w[p + 6], w[p + 7]
    w20, w21, w22, w23 = w[p + 8], w[p + 9], w[p + 10], w[p + 11]
    w30, w31, w32, w33 = w[p + 12], w[p + 13], w[p + 14], w[p + 15]
    if init:  # two loops, not a test inside one: a conditional load stops the vectoriser
        for kk in range(m):
            u = np.uint64(kk)
            x0, x1, x2, x3 = src[i0 + u], src[i1 + u], src[i2 + u], src[i3 + u]
            dst[o0 + u] = w00 * x0 + w01 * x1 + w02 * x2 + w03 * x3
            dst[o1 + u] = w10 * x0 + w11 * x1 + w12 * x2 + w13 * x3
            dst[o2 + u] = w20 * x0 + w21 * x1 + w22 * x2 + w23 * x3
            dst[o3 + u] = w30 * x0 + w31 * x1 + w32 * x2 + w33 * x3
    else:
        for kk in range(m):
            u = np.uint64(kk)
            x0, x1, x2, x3 = src[i0 + u], src[i1 + u], src[i2 + u], src[i3 + u]
            a0, a1, a2, a3 = dst[o0 + u], dst[o1 + u], dst[o2 + u], dst[o3 + u]
            dst[o0 + u] = a0 + w00 * x0 + w01 * x1 + w02 * x2 + w03 * x3
            dst[o1 + u] = a1 + w10 * x0 + w11 * x1 + w12 * x2 + w13 * x3
            dst[o2 + u] = a2 + w20 * x0 + w21 * x1 + w22 * x2 + w23 * x3
            dst[o3 + u] = a3 + w30 * x0 + w31 * x1 + w32 * x2 + w33 * x3


def _tile5s(src, s, ss, dst, d, ds, w, p, m, init):  # pragma: no cover - runs compiled
    """:func:`_tile4s` with 5 outputs and 5 inputs (stamp sides 5, 9, 10, 13-15, ...)."""
    i0 = np.uint64(s)
    i1 = np.uint64(s + ss)
    i2 = np.uint64(s + 2 * ss)
    i3 = np.uint64(s + 3 * ss)
    i4 = np.uint64(s + 4 * ss)
    o0 = np.uint64(d)
    o1 = np.uint64(d + ds)
    o2 = np.uint64(d + 2 * ds)
    o3 = np.uint64(d + 3 * ds)
    o4 = np.uint64(d + 4 * ds)
    w00, w01, w02, w03, w04 = w[p], w[p + 1], w[p + 2], w[p + 3], w[p + 4]
    w10, w11, w12, w13, w14 = w[p + 5], w[p + 6], w[p + 7], w[p + 8], w[p + 9]
    w20, w21, w22, w23, w24 = w[p + 10], w[p + 11], w[p + 12], w[p + 13], w[p + 14]
    w30, w31, w32, w33, w34 = w[p + 15], w[p + 16], w[p + 17], w[p + 18], w[p + 19]
    w40, w41, w42, w43, w44 = w[p + 20], w[p + 21], w[p + 22], w[p + 23], w[p + 24]
    if init:  # two loops (see _tile4s)
        for kk in range(m):
            u = np.uint64(kk)
            x0, x1, x2, x3, x4 = src[i0 + u], src[i1 + u], src[i2 + u], src[i3 + u], src[i4 + u]
            dst[o0 + u] = w00 * x0 + w01 * x1 + w02 * x2 + w03 * x3 + w04 * x4
            dst[o1 + u] = w10 * x0 + w11 * x1 + w12 * x2 + w13 * x3 + w14 * x4
            dst[o2 + u] = w20 * x0 + w21 * x1 + w22 * x2 + w23 * x3 + w24 * x4
            dst[o3 + u] = w30 * x0 + w31 * x1 + w32 * x2 + w33 * x3 + w34 * x4
            dst[o4 + u] = w40 * x0 + w41 * x1 + w42 * x2 + w43 * x3 + w44 * x4
    else:
        for kk in range(m):
            u = np.uint64(kk)
            x0, x1, x2, x3, x4 = src[i0 + u], src[i1 + u], src[i2 + u], src[i3 + u], src[i4 + u]
            a0, a1, a2, a3, a4 = dst[o0 + u], dst[o1 + u], dst[o2 + u], dst[o3 + u], dst[o4 + u]
            dst[o0 + u] = a0 + w00 * x0 + w01 * x1 + w02 * x2 + w03 * x3 + w04 * x4
            dst[o1 + u] = a1 + w10 * x0 + w11 * x1 + w12 * x2 + w13 * x3 + w14 * x4
            dst[o2 + u] = a2 + w20 * x0 + w21 * x1 + w22 * x2 + w23 * x3 + w24 * x4
            dst[o3 + u] = a3 + w30 * x0 + w31 * x1 + w32 * x2 + w33 * x3 + w34 * x4
            dst[o4 + u] = a4 + w40 * x0 + w41 * x1 + w42 * x2 + w43 * x3 + w44 * x4


def _pass_shared(src, s0, ss, dst, d0, ds, m, w, goff, coff, T):  # pragma: no cover - runs compiled
    """One axis of the shared-shift product over ``m`` sources, tile by tile.

    Output ``j`` of the line is at ``dst[d0 + j·ds :][:m]``, input ``b`` at ``src[s0 + b·ss :][:m]``.
    Tile ``(g, c)`` covers outputs ``goff[g] + t`` and inputs ``coff[c] + u`` with weights
    ``w[(g·C + c)·T² + T·t + u]`` (see :func:`shift_tiling`); the first input tile of each
    output group writes, the others add.
    """
    C = coff.shape[0]
    for g in range(goff.shape[0]):
        d = d0 + goff[g] * ds
        for c in range(C):
            s = s0 + coff[c] * ss
            p = (g * C + c) * T * T
            if T == 5:
                _tile5s_c(src, s, ss, dst, d, ds, w, p, m, c == 0)
            elif T == 4:
                _tile4s_c(src, s, ss, dst, d, ds, w, p, m, c == 0)
            else:
                _tile1s_c(src, s, ss, dst, d, ds, w, p, m, c == 0)


def _shift_shared_loop(values, out, nr, nc, wc, gc, cc, tc, wr, gr, cr, tr, block):  # pragma: no cover
    """``out[i, j, k] = Σ_a Σ_b Ar[i, a] Ac[j, b] values[a, b, k]`` for one shift of all sources.

    ``values``/``out`` are the flat ``(nr, nc, n)`` blocks; ``(wc, gc, cc, tc)`` and
    ``(wr, gr, cr, tr)`` tile the column and row matrices (an empty ``w``: that axis does not
    move). Sources are taken ``block`` at a time: the column pass writes a buffer that stays
    in cache, the row pass reads it and writes ``out`` once.
    """
    n = values.shape[0] // (nr * nc)
    cols = wc.shape[0] > 0
    rows = wr.shape[0] > 0
    tmp = np.empty(nr * nc * block if cols and rows else 0, dtype=out.dtype)
    for k0 in range(0, n, block):
        m = min(block, n - k0)
        if cols:
            for a in range(nr):  # values rows a·nc + b  ->  tmp (or out) rows a·nc + j
                if rows:
                    _pass_shared_c(values, a * nc * n + k0, n, tmp, a * nc * block, block, m, wc, gc, cc, tc)
                else:
                    _pass_shared_c(values, a * nc * n + k0, n, out, a * nc * n + k0, n, m, wc, gc, cc, tc)
        if rows:
            for j in range(nc):  # tmp (or values) rows a·nc + j  ->  out rows i·nc + j
                if cols:
                    _pass_shared_c(tmp, j * block, nc * block, out, j * n + k0, nc * n, m, wr, gr, cr, tr)
                else:
                    _pass_shared_c(values, j * n + k0, nc * n, out, j * n + k0, nc * n, m, wr, gr, cr, tr)


def _sinc_weights(frac, k0, m, L, w, s):  # pragma: no cover - runs compiled
    """``w[l + L - 1, kk] = sinc(l - frac[k0 + kk])`` for lags ``l`` in ``(-L, L)``, ``kk < m``.

    ``sin(π(l - f)) = -(-1)^l sin(πf)``: one sine per source (into the scratch ``s``), then a
    vectorised division per lag; ``l - f = 0`` (no shift) gives weight 1.
    """
    for kk in range(m):
        s[kk] = np.sin(np.pi * frac[k0 + kk]) / np.pi
    for q in range(2 * L - 1):
        lag = q - (L - 1)
        sign = 1.0 if (q + L) % 2 == 0 else -1.0  # (-1)^(l + 1)
        for kk in range(m):
            d = lag - frac[k0 + kk]
            w[q, kk] = sign * s[kk] / d if d != 0.0 else 1.0


def _tile1v(src, s, dst, d, w, q, B, m, init):  # pragma: no cover - runs compiled
    """``dst[d + kk] (=|+=) w[q·B + kk] · src[s + kk]``: one output, one input, per-source weights."""
    i0 = np.uint64(s)
    o0 = np.uint64(d)
    r0 = np.uint64(q * B)
    if init:
        for kk in range(m):
            u = np.uint64(kk)
            dst[o0 + u] = w[r0 + u] * src[i0 + u]
    else:
        for kk in range(m):
            u = np.uint64(kk)
            dst[o0 + u] += w[r0 + u] * src[i0 + u]


def _tile4v(src, s, ss, dst, d, ds, w, q, B, m, init):  # pragma: no cover - runs compiled
    """4 outputs x 4 inputs with per-source weights: output ``t`` gets ``Σ_u w[(q + t - u)·B + kk] ·
    src[s + u·ss + kk]`` (the matrix is Toeplitz: 7 weight rows around row ``q``)."""
    i0 = np.uint64(s)
    i1 = np.uint64(s + ss)
    i2 = np.uint64(s + 2 * ss)
    i3 = np.uint64(s + 3 * ss)
    o0 = np.uint64(d)
    o1 = np.uint64(d + ds)
    o2 = np.uint64(d + 2 * ds)
    o3 = np.uint64(d + 3 * ds)
    rm3 = np.uint64((q - 3) * B)
    rm2 = np.uint64((q - 2) * B)
    rm1 = np.uint64((q - 1) * B)
    r0 = np.uint64(q * B)
    rp1 = np.uint64((q + 1) * B)
    rp2 = np.uint64((q + 2) * B)
    rp3 = np.uint64((q + 3) * B)
    if init:  # two loops (see _tile4s)
        for kk in range(m):
            u = np.uint64(kk)
            x0, x1, x2, x3 = src[i0 + u], src[i1 + u], src[i2 + u], src[i3 + u]
            vm3, vm2, vm1, v0 = w[rm3 + u], w[rm2 + u], w[rm1 + u], w[r0 + u]
            vp1, vp2, vp3 = w[rp1 + u], w[rp2 + u], w[rp3 + u]
            dst[o0 + u] = v0 * x0 + vm1 * x1 + vm2 * x2 + vm3 * x3
            dst[o1 + u] = vp1 * x0 + v0 * x1 + vm1 * x2 + vm2 * x3
            dst[o2 + u] = vp2 * x0 + vp1 * x1 + v0 * x2 + vm1 * x3
            dst[o3 + u] = vp3 * x0 + vp2 * x1 + vp1 * x2 + v0 * x3
    else:
        for kk in range(m):
            u = np.uint64(kk)
            x0, x1, x2, x3 = src[i0 + u], src[i1 + u], src[i2 + u], src[i3 + u]
            vm3, vm2, vm1, v0 = w[rm3 + u], w[rm2 + u], w[rm1 + u], w[r0 + u]
            vp1, vp2, vp3 = w[rp1 + u], w[rp2 + u], w[rp3 + u]
            a0, a1, a2, a3 = dst[o0 + u], dst[o1 + u], dst[o2 + u], dst[o3 + u]
            dst[o0 + u] = a0 + v0 * x0 + vm1 * x1 + vm2 * x2 + vm3 * x3
            dst[o1 + u] = a1 + vp1 * x0 + v0 * x1 + vm1 * x2 + vm2 * x3
            dst[o2 + u] = a2 + vp2 * x0 + vp1 * x1 + v0 * x2 + vm1 * x3
            dst[o3 + u] = a3 + vp3 * x0 + vp2 * x1 + vp1 * x2 + v0 * x3


def _tile5v(src, s, ss, dst, d, ds, w, q, B, m, init):  # pragma: no cover - runs compiled
    """:func:`_tile4v` with 5 outputs and 5 inputs (9 weight rows around row ``q``)."""
    i0 = np.uint64(s)
    i1 = np.uint64(s + 1 * ss)
    i2 = np.uint64(s + 2 * ss)
    i3 = np.uint64(s + 3 * ss)
    i4 = np.uint64(s + 4 * ss)
    o0 = np.uint64(d)
    o1 = np.uint64(d + 1 * ds)
    o2 = np.uint64(d + 2 * ds)
    o3 = np.uint64(d + 3 * ds)
    o4 = np.uint64(d + 4 * ds)
    rm4 = np.uint64((q - 4) * B)
    rm3 = np.uint64((q - 3) * B)
    rm2 = np.uint64((q - 2) * B)
    rm1 = np.uint64((q - 1) * B)
    r0 = np.uint64(q * B)
    rp1 = np.uint64((q + 1) * B)
    rp2 = np.uint64((q + 2) * B)
    rp3 = np.uint64((q + 3) * B)
    rp4 = np.uint64((q + 4) * B)
    if init:  # two loops (see _tile4s)
        for kk in range(m):
            u = np.uint64(kk)
            x0, x1, x2, x3, x4 = src[i0 + u], src[i1 + u], src[i2 + u], src[i3 + u], src[i4 + u]
            vm4, vm3, vm2, vm1, v0 = w[rm4 + u], w[rm3 + u], w[rm2 + u], w[rm1 + u], w[r0 + u]
            vp1, vp2, vp3, vp4 = w[rp1 + u], w[rp2 + u], w[rp3 + u], w[rp4 + u]
            dst[o0 + u] = v0 * x0 + vm1 * x1 + vm2 * x2 + vm3 * x3 + vm4 * x4
            dst[o1 + u] = vp1 * x0 + v0 * x1 + vm1 * x2 + vm2 * x3 + vm3 * x4
            dst[o2 + u] = vp2 * x0 + vp1 * x1 + v0 * x2 + vm1 * x3 + vm2 * x4
            dst[o3 + u] = vp3 * x0 + vp2 * x1 + vp1 * x2 + v0 * x3 + vm1 * x4
            dst[o4 + u] = vp4 * x0 + vp3 * x1 + vp2 * x2 + vp1 * x3 + v0 * x4
    else:
        for kk in range(m):
            u = np.uint64(kk)
            x0, x1, x2, x3, x4 = src[i0 + u], src[i1 + u], src[i2 + u], src[i3 + u], src[i4 + u]
            vm4, vm3, vm2, vm1, v0 = w[rm4 + u], w[rm3 + u], w[rm2 + u], w[rm1 + u], w[r0 + u]
            vp1, vp2, vp3, vp4 = w[rp1 + u], w[rp2 + u], w[rp3 + u], w[rp4 + u]
            a0, a1, a2, a3, a4 = dst[o0 + u], dst[o1 + u], dst[o2 + u], dst[o3 + u], dst[o4 + u]
            dst[o0 + u] = a0 + v0 * x0 + vm1 * x1 + vm2 * x2 + vm3 * x3 + vm4 * x4
            dst[o1 + u] = a1 + vp1 * x0 + v0 * x1 + vm1 * x2 + vm2 * x3 + vm3 * x4
            dst[o2 + u] = a2 + vp2 * x0 + vp1 * x1 + v0 * x2 + vm1 * x3 + vm2 * x4
            dst[o3 + u] = a3 + vp3 * x0 + vp2 * x1 + vp1 * x2 + v0 * x3 + vm1 * x4
            dst[o4 + u] = a4 + vp4 * x0 + vp3 * x1 + vp2 * x2 + vp1 * x3 + v0 * x4


def _pass_per_source(src, s0, ss, dst, d0, ds, m, w, B, L, goff, T):  # pragma: no cover - runs compiled
    """One axis of the per-source product over ``m`` sources (layout as :func:`_pass_shared`).

    ``w[(l + L - 1)·B + kk]`` is the weight of lag ``l`` for source ``kk`` of the run. Output
    groups of ``T`` start at ``goff``; inputs go ``T`` at a time, the rest one at a time.
    """
    for g in range(goff.shape[0]):
        j0 = goff[g]
        b = 0
        if T == 5:
            while b + 5 <= L:
                _tile5v_c(src, s0 + b * ss, ss, dst, d0 + j0 * ds, ds, w, j0 - b + L - 1, B, m, b == 0)
                b += 5
        elif T == 4:
            while b + 4 <= L:
                _tile4v_c(src, s0 + b * ss, ss, dst, d0 + j0 * ds, ds, w, j0 - b + L - 1, B, m, b == 0)
                b += 4
        while b < L:
            for t in range(T):
                _tile1v_c(src, s0 + b * ss, dst, d0 + (j0 + t) * ds, w, j0 + t - b + L - 1, B, m, b == 0)
            b += 1


def _shift_loop(values, out, nr, nc, frow, fcol, gr, gc, tr, tc, block):  # pragma: no cover - runs compiled
    """``out[i, j, k] = Σ_a Σ_b sinc(i - a - frow[k]) sinc(j - b - fcol[k]) values[a, b, k]``.

    One fraction per source (``frow``/``fcol`` of length n; empty: that axis does not move).
    Per run of ``block`` sources the weights of every lag are tabulated (one sine per source
    and axis), then the two passes run as in :func:`_shift_shared_loop`.
    """
    n = values.shape[0] // (nr * nc)
    cols = fcol.shape[0] > 0
    rows = frow.shape[0] > 0
    tmp = np.empty(nr * nc * block if cols and rows else 0, dtype=out.dtype)
    wr2 = np.empty((2 * nr - 1, block), dtype=out.dtype)
    wc2 = np.empty((2 * nc - 1, block), dtype=out.dtype)
    sines = np.empty(block)
    wr = wr2.reshape(wr2.size)
    wc = wc2.reshape(wc2.size)
    for k0 in range(0, n, block):
        m = min(block, n - k0)
        if rows:
            _sinc_weights_c(frow, k0, m, nr, wr2, sines)
        if cols:
            _sinc_weights_c(fcol, k0, m, nc, wc2, sines)
        if cols:
            for a in range(nr):
                if rows:
                    _pass_per_source_c(
                        values, a * nc * n + k0, n, tmp, a * nc * block, block, m, wc, block, nc, gc, tc
                    )
                else:
                    _pass_per_source_c(
                        values, a * nc * n + k0, n, out, a * nc * n + k0, n, m, wc, block, nc, gc, tc
                    )
        if rows:
            for j in range(nc):
                if cols:
                    _pass_per_source_c(
                        tmp, j * block, nc * block, out, j * n + k0, nc * n, m, wr, block, nr, gr, tr
                    )
                else:
                    _pass_per_source_c(
                        values, j * n + k0, nc * n, out, j * n + k0, nc * n, m, wr, block, nr, gr, tr
                    )


#: Bytes of the cache-resident buffer of the shift loops (``nr × nc × block`` values): runs
#: of sources long enough for the hardware prefetchers (a few KiB per stamp pixel), short
#: enough to stay in L2/L3.
SHIFT_BUFFER_BYTES = 2 * 2**20


def _tile_size(L: int, shared: bool) -> int:
    """Tile side (4 or 5; 1 below 4) for a stamp axis of length ``L``: the cheaper in
    multiply-adds per line, counting the recomputed outputs of the last group and, with
    per-source weights, the leftover inputs (one at a time: ~3x the cost of a tiled one)."""
    if L < 4:
        return 1

    def cost(T):
        groups = (L + T - 1) // T
        if shared:
            return (groups * T) ** 2  # the last input tile overlaps too (zero weights)
        return groups * T * ((L // T) * T + 3 * (L % T))

    return 5 if cost(5) < cost(4) else 4


def _groups(L: int, T: int) -> np.ndarray:
    """Starts of the output groups of ``T``: ``0, T, 2T, …``, the last one moved back to end at
    ``L`` (it recomputes a few outputs, with the same sums)."""
    return np.minimum(np.arange(0, L, T), L - T).astype(np.int64)


def shift_tiling(A: np.ndarray, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Tiles of the ``L × L`` matrix ``A`` for :func:`_pass_shared`: ``(w, goff, coff, T)``.

    Input tiles, like output groups, start at ``0, T, …`` with the last one moved back to end at
    ``L``; its weights for inputs an earlier tile already took are 0, so every product
    ``A[j, b] · x[b]`` is added exactly once.
    """
    L = A.shape[0]
    T = _tile_size(L, shared=True)
    goff = _groups(L, T)
    coff = goff.copy()
    W = np.zeros((goff.size, coff.size, T, T), dtype=dtype)
    for c, b0 in enumerate(coff):
        first = 0 if c == 0 else coff[c - 1] + T - b0  # inputs below b0 + first are taken already
        for g, j0 in enumerate(goff):
            W[g, c, :, first:] = A[j0 : j0 + T, b0 + first : b0 + T]
    return W.ravel(), goff, coff, T


def shift(values: np.ndarray, frow: np.ndarray, fcol: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Sinc-resample every stamp of ``values`` ``(nr, nc, n)`` into ``out`` (same shape).

    ``frow``/``fcol`` are float64 arrays of length 1 (shared) or ``n`` (per source); an axis
    whose fractions are all 0 is not resampled (its values pass through exactly). ``out`` is
    C-contiguous, of a float dtype, and is overwritten completely.
    """
    from ._interpolate import sinc_matrix

    nr, nc, n = values.shape
    rows, cols = bool(frow.any()), bool(fcol.any())
    if not (rows or cols):
        np.copyto(out, values)
        return out
    flat = np.ascontiguousarray(values, dtype=out.dtype).reshape(-1)
    dst = out.reshape(-1)
    block = max(16, SHIFT_BUFFER_BYTES // (nr * nc * out.dtype.itemsize) // 16 * 16)
    if frow.shape[0] == 1 and fcol.shape[0] == 1:
        empty = (np.empty(0, out.dtype), np.empty(0, np.int64), np.empty(0, np.int64), 1)
        wr = shift_tiling(sinc_matrix(nr, frow[0]), out.dtype) if rows else empty
        wc = shift_tiling(sinc_matrix(nc, fcol[0]), out.dtype) if cols else empty
        _compiled("_shift_shared_loop")(flat, dst, nr, nc, *wc, *wr, block)
        return out
    fr = np.ascontiguousarray(np.broadcast_to(frow, (n,)), dtype=np.float64) if rows else np.empty(0)
    fc = np.ascontiguousarray(np.broadcast_to(fcol, (n,)), dtype=np.float64) if cols else np.empty(0)
    tr, tc = _tile_size(nr, shared=False), _tile_size(nc, shared=False)
    gr, gc = _groups(nr, tr), _groups(nc, tc)
    _compiled("_shift_loop")(flat, dst, nr, nc, fr, fc, gr, gc, tr, tc, block)
    return out


def precompile_kernels() -> None:
    """Compile (or load from the cache) the loops for the common dtype combinations.

    The hook of :func:`sparse3d.precompile` (see :mod:`sparse3d._compiled`): these loops take
    any integer positions and float/complex values, so there is no single signature to list;
    this runs the real entry points on tiny arrays for float64 and float32 values with int16
    and int32 positions (what images up to 32767 pixels, and larger ones, give).
    """
    if not available():
        return
    from ._functions import sorted_values
    from .core import Sparse3D

    global MIN_ELEMENTS
    saved = MIN_ELEMENTS
    MIN_ELEMENTS = 0
    try:
        R, C = np.mgrid[:3, :3]
        for corner in ((0, 0), (40_000, 0)):  # int16, then int32 positions
            row = R[:, :, None] + corner[0] + np.array([1, 4])
            col = C[:, :, None] + corner[1] + np.array([2, 5])
            for dtype in (np.float64, np.float32):
                S = Sparse3D(np.ones((3, 3, 2), dtype=dtype), row, col, (8, 8), corner)
                s = S._structure
                w = np.ones((2, 1), dtype=dtype)
                scatter(s._row, s._col, S._values, w, s.root_corner, s.imshape, dtype)
                order = s.sorted_order()[1:]
                sorted_scatter(order, sorted_values(S), s.root_corner, s.imshape, w, dtype, s.sorted_rows())
                sorted_scatter(order, sorted_values(S), s.root_corner, s.imshape, w, dtype)
                gather(s._row, s._col, S._values, np.ones((8, 8, 1), dtype=dtype), corner, dtype)
                S.shift((0.25, -0.25))  # the shared-shift loop
                S.shift((np.array([0.25, -0.5]), np.array([0.0, 0.25])))  # the per-source loop
            for a in (s._row, row.astype(np.int64)):
                flat = np.ascontiguousarray(a)
                min_max(flat)
                equal(flat, flat)
    finally:
        MIN_ELEMENTS = saved
