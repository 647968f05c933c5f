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
    # Up to 4 weight columns have their updates written out (one branch per row): a loop
    # over a run-time number of columns per element costs ~1.5x (m = 1 and 3 measured).
    # Each column sums its elements in the sorted order either way: the same bits.
    m = w.shape[1]
    wf = w.ravel()
    um = np.uint64(m)
    one, two, three = np.uint64(1), np.uint64(2), np.uint64(3)
    for u in range(u0, u1):  # stored rows that land inside the image
        lo = rowptr[u - rlo]
        hi = rowptr[u - rlo + 1]
        while lo < hi and scol[lo] < c0:  # a row's elements are sorted by column
            lo += 1
        while hi > lo and scol[hi - 1] >= c0 + W:
            hi -= 1
        base = (u - r0) * W - c0
        if m > 4:  # many columns: the plain loop (chunks would re-read the elements)
            for e in range(lo, hi):
                p = np.uint64(base + scol[e]) * um
                v = svals[e]
                k = np.uint64(ssrc[e]) * um
                for q in range(m):
                    uq = np.uint64(q)
                    out[p + uq] += v * wf[k + uq]
            continue
        for q0 in range(0, m, 4):  # one chunk
            nq = m - q0
            uq0 = np.uint64(q0)
            if nq == 4:
                for e in range(lo, hi):
                    p = np.uint64(base + scol[e]) * um + uq0
                    v = svals[e]
                    k = np.uint64(ssrc[e]) * um + uq0
                    out[p] += v * wf[k]
                    out[p + one] += v * wf[k + one]
                    out[p + two] += v * wf[k + two]
                    out[p + three] += v * wf[k + three]
            elif nq == 3:
                for e in range(lo, hi):
                    p = np.uint64(base + scol[e]) * um + uq0
                    v = svals[e]
                    k = np.uint64(ssrc[e]) * um + uq0
                    out[p] += v * wf[k]
                    out[p + one] += v * wf[k + one]
                    out[p + two] += v * wf[k + two]
            elif nq == 2:
                for e in range(lo, hi):
                    p = np.uint64(base + scol[e]) * um + uq0
                    v = svals[e]
                    k = np.uint64(ssrc[e]) * um + uq0
                    out[p] += v * wf[k]
                    out[p + one] += v * wf[k + one]
            else:
                for e in range(lo, hi):
                    p = np.uint64(base + scol[e]) * um + uq0
                    out[p] += svals[e] * wf[np.uint64(ssrc[e]) * um + uq0]


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
    for x in a:  # branch-free: the loop vectorises
        lo = min(lo, x)
        hi = max(hi, x)
    return lo, hi


def _equal_loop(a, b):  # pragma: no cover - runs compiled
    # xor of the values widened to 64 bits is 0 exactly when they are equal (uint64 excluded);
    # fixed-size chunks vectorise, and the loop stops at the first chunk with a difference
    n = a.size
    nchunks = n // 4096
    for q in range(nchunks):
        x = a[q * 4096 : (q + 1) * 4096]
        y = b[q * 4096 : (q + 1) * 4096]
        diff = 0
        for i in range(4096):
            diff |= x[i] ^ y[i]
        if diff != 0:
            return False
    diff = 0
    for i in range(nchunks * 4096, n):
        diff |= a[i] ^ b[i]
    return diff == 0


def elementwise_threads(work: int) -> int:
    """Threads for a pass of the elementwise pipeline over ``work`` values: a deferred chain's
    evaluation, the copy of a constructor's values, the grid check of its positions.

    One below :data:`sparse3d._threads.PARALLEL_MIN_WORK` values; else
    :func:`sparse3d._threads.threads_for` (by default at most the CPUs other processes leave
    idle; ``sparse3d.set_options(num_threads=N)`` or ``SPARSE3D_NUM_THREADS`` as given). The
    passes hand out small pieces to whichever thread is free
    (:func:`sparse3d._threads.share`), so a busy second core makes a pass no slower than in
    one thread.
    """
    from . import _threads

    if work < _threads.PARALLEL_MIN_WORK:  # one thread whatever the setting (not even read)
        return 1
    return _threads.threads_for(work)


def distinct_part(a: np.ndarray) -> np.ndarray:
    """``a`` without its broadcast axes (stride 0) cut to length 1: the same values, each once
    (what a check or a reduction over a broadcast input needs to read)."""
    if not a.ndim or 0 not in a.strides:
        return a
    return a[tuple(slice(0, 1) if st == 0 else slice(None) for st in a.strides)]


def _readonly_view(a: np.ndarray) -> np.ndarray:
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def _flat_integers(a: np.ndarray) -> np.ndarray | None:
    """``a`` as a 1-D view when it is a contiguous native integer array worth a kernel."""
    if a.size < MIN_ELEMENTS or a.dtype.kind not in "iu" or not a.dtype.isnative or not a.flags.c_contiguous:
        return None
    if a.dtype == np.uint64:  # mixed with signed types, numba would compute in float64
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


def _compiled(name: str):
    fn = _COMPILED.get(name)
    if fn is None:
        import numba

        if name == "_roi_scatter_loop":  # calls the compiled binary search
            globals()["_lower_bound_c"] = _compiled("_lower_bound")
        fn = numba.njit(cache=True, nogil=True)(globals()[name])
        _COMPILED[name] = fn
    return fn


def loaded() -> bool:
    """Whether this process has already paid for numba (a kernel was compiled or loaded)."""
    return bool(_COMPILED)


def sorted_scatter(order, svals, root_corner, imshape, w, dtype, rows=None, out=None) -> np.ndarray:
    """:func:`scatter` over stamp elements sorted by pixel: ``(H, W, m)``.

    ``order`` is ``(srow, scol, ssrc)``: the stored positions and sources sorted by
    ``(row, col, source)`` (:meth:`~sparse3d._structure.StampStructure.sorted_order`),
    ``svals`` the values in that order. ``root_corner`` is image pixel ``[0, 0]`` in the
    coordinates of the stored positions (``imcorner - offset``): the image rows are one
    contiguous run of the order, and the writes stream through the image in pixel order.
    ``rows`` is ``(rowptr, rlo)``, where each stored row starts in the order
    (:meth:`~sparse3d._structure.StampStructure.sorted_rows`); with it no element outside
    the image's rows is visited. Each pixel sums its sources in ascending order, as a CSR
    product does (float64: the same bits). ``out``, if given, is a C-contiguous
    ``(H, W, m)`` array of ``dtype`` (any content: it is zeroed) that receives the result.
    """
    srow, scol, ssrc = order
    dtype = np.dtype(dtype)
    (H, W), (r0, c0) = imshape, root_corner
    if out is None:
        out = np.zeros((H, W, w.shape[1]), dtype=dtype)
    else:
        out[...] = 0
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
            for a in (s._row, row.astype(np.int64)):
                flat = np.ascontiguousarray(a)
                min_max(flat)
                equal(flat, flat)
    finally:
        MIN_ELEMENTS = saved
