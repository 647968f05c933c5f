"""Numba kernels that build the normal matrix straight from regular stamps.

Imported lazily (numba costs ~0.5 s to import) by :func:`sparse3d.fit.assemble.normal_matrix`;
compiled once and cached on disk (``cache=True``).

A *regular* stamp array has, for every source ``k``, ``row[:, :, k] = r0[k] + arange(nr)[:, None]``
and ``col[:, :, k] = c0[k] + arange(nc)``: an ``nr x nc`` rectangle of image pixels at corner
``(r0[k], c0[k])``. Two sources then share pixels only if ``|r0[i] - r0[j]| < nr`` and
``|c0[i] - c0[j]| < nc``, so the sources are sorted into a grid of stamp-sized cells and each one
only looks at the 3 x 3 cells around its own; the entry ``N[i, j]`` is a dot product over the
overlap of the two rectangles.

The caller counts every row's entries (:func:`lower_counts`) and allocates the CSR arrays, which
:func:`normal_lower` fills in place (no intermediate matrix). Arrays with several stamp groups
(mixed stamp sizes): each group's own block as above, at its sources' global indices; the block
between two groups by :func:`normal_cross` (every source of the group with the larger stamps
looks up the few cells of the other group's grid that can overlap it), placed first
(:func:`place_coo`); the rows are then sorted (:func:`sort_rows`: one check pass when the groups
are contiguous ranges of sources).
"""

from __future__ import annotations

import numpy as np
from numba import njit

# the one signature of each kernel (see sparse3d._compiled): callers pass exactly these types
_I = "intp[::1]"
SIGNATURES = {
    "cell_order": f"({_I}, {_I}, intp, intp)",
    # the stamp values arrive read-only (a Sparse3D's values are immutable)
    "weighted_stamps": (
        f"(Array(float64, 3, 'C', readonly=True), {_I}, {_I}, {_I}, float64[::1], boolean, "
        "intp, intp, intp, intp, float64[:, :, ::1])"
    ),
    "scale_rows": "(float64[:, :, ::1], float64[::1])",
    "lower_counts": f"({_I}, {_I}, intp, {_I}, {_I}, intp, intp)",
    "normal_lower": (
        f"(float64[:, :, ::1], {_I}, {_I}, intp, {_I}, {_I}, intp, int64[::1], int64[::1], int64[::1], "
        "float64[::1])"
    ),
    "normal_cross": (
        f"(float64[:, :, ::1], {_I}, {_I}, intp, {_I}, {_I}, int64[::1], "
        f"float64[:, :, ::1], {_I}, {_I}, {_I}, int64[::1])"
    ),
    "place_coo": "(int64[::1], int64[::1], float64[::1], int64[::1], int64[::1], float64[::1])",
    "sort_rows": "(int64[::1], int64[::1], float64[::1])",
    "cells_rhs": (
        f"(float64[:, :, ::1], {_I}, {_I}, {_I}, intp, intp, intp, intp, float64[:, ::1], int64[::1], "
        "float64[:, ::1])"
    ),
    "cells_residual": (
        f"(float64[:, :, ::1], {_I}, {_I}, intp, intp, {_I}, {_I}, intp, intp, intp, intp, float64[:, ::1], "
        "int64[::1], float64[:, ::1], float64, float64[::1])"
    ),
}


@njit(cache=True, nogil=True)
def cell_order(r0, c0, nr, nc):  # pragma: no cover - compiled
    """Sources sorted by stamp-sized cell (row-major cells, index order within a cell)."""
    rmin = r0.min()
    cmin = c0.min()
    cr = (r0 - rmin) // nr
    cc = (c0 - cmin) // nc
    ncc = cc.max() + 3
    key = (cr + 1) * ncc + (cc + 1)
    order = np.argsort(key, kind="mergesort")
    return order, key[order], ncc


@njit(cache=True, nogil=True)
def weighted_stamps(values, order, r0, c0, sqrt_ivar, has_ivar, H, W, imr, imc, B):  # pragma: no cover
    """``B[p, a, b] = values[a, b, order[p]] * sqrt(ivar)`` at the stamp pixel; 0 off the image.

    The stamps are copied in the order ``order`` (cell order: neighbours are then close in
    memory) into ``B`` ``(n, nr, nc)``, every entry written. ``B`` comes from the caller:
    NumPy's allocator maps a large array in huge pages, where one allocated here (numba's
    ``malloc``) faults in every 4 KiB page on its first write, which cost more than the copy
    (47 MB of stamps: 39 against 15 ms). ``sqrt_ivar`` is the flat ``(H * W,)`` map (ignored
    unless ``has_ivar``); ``(imr, imc)`` is the image corner. Returns ``colmax[p] = max |B[p]|``.

    A blocked transpose: ``blk`` sources are read together (consecutive in ``values``' last
    axis) into a small tile, then each is written whole into its row of ``B``; a stamp inside
    the image without weights is a plain copy, the others are checked pixel by pixel.
    """
    nr, nc, n = values.shape
    npx = nr * nc
    pos = np.empty(n, dtype=np.int64)
    for p in range(n):
        pos[order[p]] = p
    flat = B.reshape(n, npx)
    colmax = np.zeros(n, dtype=np.float64)
    blk = 16
    tile = np.empty((blk, npx), dtype=np.float64)
    for k0 in range(0, n, blk):
        k1 = min(k0 + blk, n)
        for a in range(nr):
            for b in range(nc):
                q = a * nc + b
                for k in range(k0, k1):
                    tile[k - k0, q] = values[a, b, k]
        for k in range(k0, k1):
            p = pos[k]
            t = k - k0
            ra = r0[k] - imr
            ca = c0[k] - imc
            mx = 0.0
            if not has_ivar and ra >= 0 and ra + nr <= H and ca >= 0 and ca + nc <= W:
                for q in range(npx):
                    v = tile[t, q]
                    flat[p, q] = v
                    mx = max(mx, abs(v))
            else:
                for a in range(nr):
                    r = ra + a
                    for b in range(nc):
                        c = ca + b
                        v = 0.0
                        if 0 <= r < H and 0 <= c < W:
                            v = tile[t, a * nc + b]
                            if has_ivar:
                                v *= sqrt_ivar[r * W + c]
                        flat[p, a * nc + b] = v
                        mx = max(mx, abs(v))
            colmax[p] = mx
    return colmax


@njit(cache=True, nogil=True)
def scale_rows(B, scale):  # pragma: no cover - compiled
    """``B[p] *= scale[p]`` in place."""
    n, nr, nc = B.shape
    for k in range(n):
        s = scale[k]
        if s != 1.0:
            for a in range(nr):
                for b in range(nc):
                    B[k, a, b] *= s


@njit(cache=True, nogil=True)
def _cell_starts(skey, ncc):  # pragma: no cover - compiled
    """``start[k]``: the first cell position whose key is ``>= k`` (``skey`` sorted), for every
    key a 3 x 3 neighbourhood of an occupied cell can reach: a cell's sources are
    ``start[k]:start[k + 1]``, no binary search."""
    n = skey.size
    nkeys = (skey[n - 1] if n else 0) + ncc + 3
    start = np.empty(nkeys + 1, dtype=np.intp)
    q = 0
    for k in range(nkeys + 1):
        while q < n and skey[q] < k:
            q += 1
        start[k] = q
    return start


@njit(cache=True, nogil=True)
def _neighbours(p, i, order, skey, start, ncc, r0s, c0s, nr, nc, buf, store):  # pragma: no cover
    """Count the sources ``j <= i`` whose stamps overlap source ``i`` (at cell position ``p``).

    ``start`` are the cell starts of :func:`_cell_starts`, ``r0s``, ``c0s`` the corners in
    cell order. With ``store``, also fill ``buf`` with their cell positions, sorted by source
    index (``buf`` must hold the count).
    """
    m = 0
    key = skey[p]
    ri = r0s[p]
    ci = c0s[p]
    for dr in range(-1, 2):
        lo_key = key + dr * ncc - 1  # the three cells lo_key .. lo_key + 2 are contiguous
        for q in range(start[lo_key], start[lo_key + 3]):
            j = order[q]
            if j <= i and abs(r0s[q] - ri) < nr and abs(c0s[q] - ci) < nc:
                if store:
                    t = m  # insertion sort by source index: the list is short
                    while t > 0 and order[buf[t - 1]] > j:
                        buf[t] = buf[t - 1]
                        t -= 1
                    buf[t] = q
                m += 1
    return m


@njit(cache=True, nogil=True)
def _corners_in_order(order, r0, c0):  # pragma: no cover - compiled
    """The corners in cell order (``r0[order]``, ``c0[order]``): read in sequence by the kernels."""
    n = order.size
    r0s = np.empty(n, dtype=np.intp)
    c0s = np.empty(n, dtype=np.intp)
    for p in range(n):
        r0s[p] = r0[order[p]]
        c0s[p] = c0[order[p]]
    return r0s, c0s


@njit(cache=True, nogil=True)
def lower_counts(order, skey, ncc, r0, c0, nr, nc):  # pragma: no cover - compiled
    """Entries of every source's row of the lower triangle of its group's own block: the
    sources ``j <= i`` whose ``nr x nc`` stamps overlap source ``i``'s (cell order and grid of
    :func:`cell_order`). ``(n,)``, by source index."""
    n = order.size
    start = _cell_starts(skey, ncc)
    r0s, c0s = _corners_in_order(order, r0, c0)
    counts = np.zeros(n, dtype=np.int64)
    buf = np.empty(0, dtype=np.int64)
    for p in range(n):
        i = order[p]
        counts[i] = _neighbours(p, i, order, skey, start, ncc, r0s, c0s, nr, nc, buf, False)
    return counts


@njit(cache=True, nogil=True)
def normal_lower(B, order, skey, ncc, r0, c0, mmax, gidx, fill, indices, data):  # pragma: no cover - compiled
    """Lower triangle of ``N[i, j] = sum B_i * B_j`` over shared pixels, written into a CSR.

    ``B`` is ``(n, nr, nc)``, the weighted stamps in cell order (``B[p]`` is source
    ``order[p]``; see :func:`cell_order`), 0 off the image. Source ``i`` is row and column
    ``gidx[i]`` of the CSR (``indices``, ``data``, allocated by the caller from
    :func:`lower_counts`, whose largest count is ``mmax``); its entries go to ``fill[gidx[i]]``
    on, in increasing column order when ``gidx`` increases, and ``fill`` is advanced past them.
    """
    n, nr, nc = B.shape
    start = _cell_starts(skey, ncc)
    r0s, c0s = _corners_in_order(order, r0, c0)
    buf = np.empty(max(1, mmax), dtype=np.int64)
    B1 = B.reshape(-1)  # flat, with unsigned offsets: no wraparound test per read (as _cross_pass)
    npx = nr * nc
    for p in range(n):
        i = order[p]
        m = _neighbours(p, i, order, skey, start, ncc, r0s, c0s, nr, nc, buf, True)
        base = fill[gidx[i]]
        for t in range(m):
            q = buf[t]
            dr = r0s[q] - r0s[p]
            dc = c0s[q] - c0s[p]
            a0 = max(0, dr)
            a1 = min(nr, nr + dr)
            b0 = max(0, dc)
            w = np.uint64(min(nc, nc + dc) - b0)
            s = 0.0
            for a in range(a0, a1):  # B_i[a, b] B_j[a - dr, b - dc], the same sums in the same order
                u = np.uint64(p * npx + a * nc + b0)
                v = np.uint64(q * npx + (a - dr) * nc + b0 - dc)
                for b in range(w):
                    s += B1[u + b] * B1[v + b]
            indices[base + t] = gidx[order[q]]
            data[base + t] = s
        fill[gidx[i]] = base + m


@njit(cache=True, nogil=True)
def _cross_pass(
    Bg, r0s, c0s, start, ncc_g, rmin_g, cmin_g, crmax, Bh, order_h, r0h, c0h, out_p, out_q, out_v, store
):  # pragma: no cover - compiled
    """One pass of :func:`normal_cross`: count the overlapping pairs, or (``store``) fill them
    (cell positions ``p`` in g, ``q`` in h, and the dot product over the shared pixels).

    The stamps are read through flat views with unsigned offsets: no negative-index
    wraparound per read, so the loop over a shared row compiles to a plain strided dot (1.8x
    faster than indexing ``B[p, a, b]``). Each shared row is summed on its own, then the rows:
    the rows' chains of additions are independent and overlap in the processor (10 % faster on
    issue 13's scene than one running sum over all the shared pixels)."""
    ng, nrg, ncg = Bg.shape
    nh, nrh, nch = Bh.shape
    ccmax = ncc_g - 3
    Bg1 = Bg.reshape(-1)
    Bh1 = Bh.reshape(-1)
    npg = nrg * ncg
    nph = nrh * nch
    m = 0
    for q in range(nh):
        j = order_h[q]
        rj = r0h[j]
        cj = c0h[j]
        # group g's corners that can overlap: ri in (rj - nrg, rj + nrh), likewise columns
        cr0 = max(0, (rj - nrg + 1 - rmin_g) // nrg)
        cr1 = min(crmax, (rj + nrh - 1 - rmin_g) // nrg)
        cc0 = max(0, (cj - ncg + 1 - cmin_g) // ncg)
        cc1 = min(ccmax, (cj + nch - 1 - cmin_g) // ncg)
        if cc0 > cc1:
            continue
        for cr in range(cr0, cr1 + 1):
            row = (cr + 1) * ncc_g + 1
            for p in range(start[row + cc0], start[row + cc1 + 1]):  # the cells are contiguous
                ri = r0s[p]
                ci = c0s[p]
                a0 = max(ri, rj)
                a1 = min(ri + nrg, rj + nrh)
                b0 = max(ci, cj)
                b1 = min(ci + ncg, cj + nch)
                if a0 < a1 and b0 < b1:
                    if store:
                        w = np.uint64(b1 - b0)
                        s = 0.0
                        for r in range(a0, a1):
                            u = np.uint64(p * npg + (r - ri) * ncg + b0 - ci)
                            v = np.uint64(q * nph + (r - rj) * nch + b0 - cj)
                            x = 0.0
                            for t in range(w):
                                x += Bg1[u + t] * Bh1[v + t]
                            s += x
                        out_p[m] = p
                        out_q[m] = q
                        out_v[m] = s
                    m += 1
    return m


@njit(cache=True, nogil=True)
def normal_cross(
    Bg, order_g, skey_g, ncc_g, r0g, c0g, gidx_g, Bh, order_h, r0h, c0h, gidx_h
):  # pragma: no cover - compiled
    """The block ``N[i, j] = sum Bg_i * Bh_j`` between two stamp groups of different shapes.

    ``Bg`` ``(ng, nrg, ncg)`` and ``Bh`` ``(nh, nrh, nch)`` are the weighted stamps of the two
    groups in their cell orders (:func:`weighted_stamps`), ``skey_g``/``ncc_g`` group g's grid
    (:func:`cell_order`, cells of g's stamp size: g should be the group with the smaller
    stamps), ``gidx_*`` the global index of every source of a group. Every source of h, in
    its cell order, looks up the few cells of g whose stamps can overlap it and multiplies
    over the shared pixels: h's stamp stays in cache while g's stamps stream past in
    sequence. Returns ``(rows, cols, v)``, one entry per overlapping pair, in the lower
    triangle (``rows > cols``, global indices), sorted by column.
    """
    r0s, c0s = _corners_in_order(order_g, r0g, c0g)  # g's corners in cell order (it walks g's grid)
    rmin = r0g.min()
    cmin = c0g.min()
    crmax = (r0g.max() - rmin) // Bg.shape[1]
    start = _cell_starts(skey_g, ncc_g)
    e_i = np.empty(0, dtype=np.int64)
    e_v = np.empty(0, dtype=np.float64)
    args = (Bg, r0s, c0s, start, ncc_g, rmin, cmin, crmax, Bh, order_h, r0h, c0h)
    m = _cross_pass(*args, e_i, e_i, e_v, False)
    out_i = np.empty(m, dtype=np.int64)
    out_q = np.empty(m, dtype=np.int64)
    out_v = np.empty(m, dtype=np.float64)
    _cross_pass(*args, out_i, out_q, out_v, True)
    ncol = 0
    for t in range(m):
        a = gidx_g[order_g[out_i[t]]]
        b = gidx_h[order_h[out_q[t]]]
        out_i[t] = max(a, b)
        out_q[t] = min(a, b)
        ncol = max(ncol, out_q[t] + 1)
    # in column order (a counting sort): placed row by row, every row's entries then come sorted
    first = np.zeros(ncol + 1, dtype=np.int64)
    for t in range(m):
        first[out_q[t] + 1] += 1
    for c in range(ncol):
        first[c + 1] += first[c]
    rows = np.empty(m, dtype=np.int64)
    cols = np.empty(m, dtype=np.int64)
    vals = np.empty(m, dtype=np.float64)
    for t in range(m):
        c = out_q[t]
        f = first[c]
        rows[f] = out_i[t]
        cols[f] = c
        vals[f] = out_v[t]
        first[c] = f + 1
    return rows, cols, vals


@njit(cache=True, nogil=True)
def place_coo(fill, indices, data, rows, cols, vals):  # pragma: no cover - compiled
    """Append COO entries (global ``rows``, ``cols``) to a CSR being filled: ``fill[r]`` is the
    next free slot of row ``r``."""
    for t in range(rows.size):
        r = rows[t]
        indices[fill[r]] = cols[t]
        data[fill[r]] = vals[t]
        fill[r] += 1


@njit(cache=True, nogil=True)
def sort_rows(indptr, indices, data):  # pragma: no cover - compiled
    """Sort the column indices of every row of a CSR in place (with their data).

    Sorted rows cost one pass; unsorted ones are Shell-sorted (gaps 57, 23, 10, 4, 1: the last
    pass is an insertion sort, linear on nearly sorted rows).
    """
    for r in range(indptr.size - 1):
        lo = indptr[r]
        hi = indptr[r + 1]
        ok = True
        for t in range(lo + 1, hi):
            if indices[t] < indices[t - 1]:
                ok = False
                break
        if ok:
            continue
        for gap in (57, 23, 10, 4, 1):
            for t in range(lo + gap, hi):
                c = indices[t]
                v = data[t]
                u = t
                while u - gap >= lo and indices[u - gap] > c:
                    indices[u] = indices[u - gap]
                    data[u] = data[u - gap]
                    u -= gap
                indices[u] = c
                data[u] = v


@njit(cache=True, nogil=True)
def cells_rhs(B, order, r0, c0, H, W, imr, imc, U, gidx, out):  # pragma: no cover - compiled
    """``out[gidx[k], t] += sum over the in-image pixels p of stamp k of B_k(p) * U[p, t]``.

    ``B`` are a group's weighted, scaled stamps in cell order (:func:`weighted_stamps`; ``B[p]``
    is source ``order[p]``, corners ``r0``, ``c0``), ``U`` ``(H * W, m)`` the weighted data: read
    in sequence, stamp after stamp, the image pixels of neighbouring sources close together.
    Each sum runs over the stamp's rows, then columns (the columns inside the image only); one
    frame sums in a register, through flat views (no array view per pixel)."""
    n, nr, nc = B.shape
    m = U.shape[1]
    npx = nr * nc
    B1 = B.reshape(-1)
    U1 = U.reshape(-1)
    for p in range(n):
        k = order[p]
        g = gidx[k]
        ra = r0[k] - imr
        ca = c0[k] - imc
        b0 = max(0, -ca)
        b1 = min(nc, W - ca)
        s = 0.0
        for a in range(max(0, -ra), min(nr, H - ra)):
            q = p * npx + a * nc
            pix = (ra + a) * W + ca
            if m == 1:
                for b in range(b0, b1):
                    s += B1[q + b] * U1[pix + b]
            else:
                for b in range(b0, b1):
                    v = B1[q + b]
                    for t in range(m):
                        out[g, t] += v * U[pix + b, t]
        if m == 1:
            out[g, 0] += s


@njit(cache=True, nogil=True)
def _row_square_sums(R, W, y0, y1, scale, out):  # pragma: no cover - compiled
    """``out[t] += sum over the image rows y0 <= y < y1 of (scale * R[p, t])**2``, a row's sum at a
    time (``R`` ``(H * W, m)``)."""
    m = R.shape[1]
    for y in range(y0, y1):
        for t in range(m):
            acc = 0.0
            for p in range(y * W, (y + 1) * W):
                x = scale * R[p, t]
                acc += x * x
            out[t] += acc


@njit(cache=True, nogil=True)
def cells_residual(
    B, order, skey, ncc, rmin, r0, c0, H, W, imr, imc, X, gidx, R, scale, out
):  # pragma: no cover - compiled
    """``R[p, t] -= sum_k B_k(p) * X[gidx[k], t]`` in place over a group's weighted, scaled stamps in
    cell order (see :func:`cells_rhs`): with ``R`` the weighted data and ``X`` the scaled solutions
    ``(n, m)``, the weighted residuals of ``m`` frames, stamp after stamp (sequential reads,
    neighbouring image rows), without a model image.

    ``out`` ``(m,)`` (empty: none; the group whose stamps are subtracted last): also
    ``out[t] = sum_p (scale * R[p, t])**2``, the chi-squares, each image row summed as soon as no
    stamp is left to change it (the cells' rows come in order, ``skey`` and ``ncc`` of
    :func:`cell_order`, ``rmin`` its smallest corner row), while it is still in cache: no second
    pass over the image."""
    n, nr, nc = B.shape
    m = R.shape[1]
    npx = nr * nc
    B1 = B.reshape(-1)
    R1 = R.reshape(-1)
    fused = out.shape[0] > 0
    if fused:
        for t in range(m):
            out[t] = 0.0
    done = 0  # image rows summed so far
    for p in range(n):
        k = order[p]
        if fused:
            # the stamps of the cell rows before this one's are done: rows above its top are final
            top = min(H, max(done, rmin + (skey[p] // ncc - 1) * nr - imr))
            if top > done:
                _row_square_sums(R, W, done, top, scale, out)
                done = top
        g = gidx[k]
        ra = r0[k] - imr
        ca = c0[k] - imc
        q = p * npx
        if m == 1 and ra >= 0 and ra + nr <= H and ca >= 0 and ca + nc <= W:  # no bounds per row
            xk = X[g, 0]
            pix = ra * W + ca
            for _a in range(nr):
                for b in range(nc):
                    R1[pix + b] -= B1[q + b] * xk
                q += nc
                pix += W
            continue
        b0 = max(0, -ca)
        b1 = min(nc, W - ca)
        for a in range(max(0, -ra), min(nr, H - ra)):
            qa = q + a * nc
            pix = (ra + a) * W + ca
            for b in range(b0, b1):
                v = B1[qa + b]
                for t in range(m):
                    R[pix + b, t] -= v * X[g, t]
    if fused:
        _row_square_sums(R, W, done, H, scale, out)
