"""Numba kernel of the right-hand side ``A^T U`` straight from regular stamps.

Imported lazily by :mod:`sparse3d.fit.rhs`; compiled once and cached on disk. With it a fit
of one image needs no sparse design matrix at all (its CSC would hold a source-major copy of
every stamp value and an index per value: 1.2 GB at a million 10 x 10 stamps).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_I = "intp[::1]"
SIGNATURES = {
    "stamp_rhs": (
        f"(Array(float64, 3, 'C', readonly=True), {_I}, {_I}, float64[:, ::1], intp, intp, intp, intp, {_I}, "
        "float64[::1], boolean[::1], float64, float64[:, ::1])"
    ),
    "stamp_row_index": f"({_I}, intp, intp, intp, {_I})",
    "stamp_rhs_band": (
        f"(Array(float64, 3, 'C', readonly=True), {_I}, {_I}, float64[:, ::1], intp, intp, intp, intp, {_I}, "
        f"{_I}, float64[::1], boolean[::1], intp, intp, float64[:, ::1], float64, float64[:, ::1])"
    ),
    "weighted_square_sum": (
        "(float64[:, ::1], float64[:, ::1], float64[::1], boolean[::1], float64, intp, intp, intp, "
        "float64[:, ::1])"
    ),
    "kept_all_finite": "(float64[:, ::1], boolean[:, ::1], intp, intp)",
}

#: :func:`weighted_square_sum` sums this many pixels per block by default, then the blocks in
#: order (a fit's ``d^T C^-1 d`` sums by image rows: the blocks that the image sweep of
#: :func:`stamp_rhs_band` sums as it goes).
SQUARE_SUM_BLOCK = 4096


@njit(cache=True, nogil=True)
def stamp_rhs(values, r0, c0, U, H, W, imr, imc, order, ivar, keep, scale, sq):  # pragma: no cover - compiled
    """``out[k, t] = sum over the kept in-image pixels p of stamp k of v[p] * (ivar[p] * U[p, t])``,
    ``v`` the stamp's values ``values[., ., k]``.

    ``values`` ``(nr, nc, n)``: regular stamps with corners ``(r0, c0)``; ``U`` ``(H * W, m)``
    over the image whose corner is ``(imr, imc)``. ``ivar`` ``(H * W,)``, or empty for unit
    weights; ``keep`` ``(H * W,)``, or empty for every pixel: the masked pixels are skipped
    whatever ``U`` holds there (NaN, inf). No weighted copy of ``U`` is made; each term is
    ``v * (ivar * u)``, the bits of the product with a weighted copy.

    ``order`` empty: the sources are visited in storage order, 16 at a time (consecutive in
    ``values``' last axis: one cache line), and ``U`` (a few bytes per pixel) stays in cache
    whatever the sources' positions. ``order`` the sources sorted by ``c0`` (many frames:
    ``U`` is the large array): the image is swept row by row and, in each row, the stamp rows
    on it from left to right, so that ``U`` is read from memory once, in order, and stamp rows
    that read the same pixels' ``m`` frames follow each other; each source's ``m`` sums run
    over the contiguous frame axis of ``U`` (vectorised) into its row of ``out``. Either way
    each ``out[k, t]`` is the same sum in the same order (stamp rows, then columns, from 0.0):
    the same bits for any frame count, order and ``m``.

    ``sq`` ``(H, m)`` (the image sweep only; ``(0, 0)``: none) receives the square sums of the
    image rows, as :func:`stamp_rhs_band` makes them.
    """
    nr, nc, n = values.shape
    m = U.shape[1]
    out = np.zeros((n, m), dtype=np.float64)
    has_ivar = ivar.shape[0] > 0
    has_keep = keep.shape[0] > 0
    if order.shape[0] == 0:
        blk = 16
        for k0 in range(0, n, blk):
            k1 = min(k0 + blk, n)
            for a in range(nr):
                for b in range(nc):  # a stamp row's pixels are adjacent in U
                    for k in range(k0, k1):
                        r = r0[k] + a - imr
                        c = c0[k] + b - imc
                        if r < 0 or r >= H or c < 0 or c >= W:
                            continue
                        p = r * W + c
                        if has_keep and not keep[p]:
                            continue
                        v = values[a, b, k]
                        if has_ivar:
                            w = ivar[p]
                            for t in range(m):
                                out[k, t] += v * (w * U[p, t])
                        elif m == 1:
                            out[k, 0] += v * U[p, 0]
                        else:
                            for t in range(m):
                                out[k, t] += v * U[p, t]
        return out
    start, ent = stamp_row_index(r0, nr, H, imr, order)
    # the bounds as int64 values, not constants: a constant argument is typed as a literal and
    # would compile a second specialisation of the band kernel
    lo, hi = np.int64(-(1 << 62)), np.int64(1 << 62)
    stamp_rhs_band(values, r0, c0, U, H, W, imr, imc, start, ent, ivar, keep, lo, hi, out, scale, sq)
    return out


@njit(cache=True, nogil=True)
def stamp_row_index(r0, nr, H, imr, order):  # pragma: no cover - compiled
    """The stamp rows on each image row: ``ent[start[r]:start[r + 1]]`` are the sources with a
    stamp row on image row ``r`` (``0 <= r < H``), in the order ``order`` gives them."""
    start = np.zeros(H + 1, dtype=np.intp)
    for k in range(r0.shape[0]):
        for a in range(nr):
            r = r0[k] + a - imr
            if 0 <= r < H:
                start[r + 1] += 1
    for r in range(H):
        start[r + 1] += start[r]
    ent = np.empty(start[H], dtype=np.intp)
    fill = start[:H].copy()
    for i in range(order.shape[0]):
        k = order[i]
        for a in range(nr):
            r = r0[k] + a - imr
            if 0 <= r < H:
                ent[fill[r]] = k
                fill[r] += 1
    return start, ent


@njit(cache=True, nogil=True)
def stamp_rhs_band(
    values, r0, c0, U, H, W, imr, imc, start, ent, ivar, keep, lo, hi, out, scale, sq
):  # pragma: no cover - compiled
    """:func:`stamp_rhs`'s image sweep for the sources whose first stamp row (relative to the
    image) is in ``[lo, hi)``, added into their rows of ``out`` ``(n, m)`` (zeros on entry).

    The image rows from ``max(lo, 0)`` to ``hi + nr - 1`` are swept in order and, on each, the
    stamp rows of those sources (``start``, ``ent``: :func:`stamp_row_index`) left to right, so
    that each source's sums are the same operations in the same order as in the sweep of the
    whole image: bands of sources (disjoint rows of ``out``) may run in parallel threads and
    give the same bits. Each band reads its image rows once, contiguously.

    ``sq`` ``(H, m)`` (``(0, 0)``: none): the band's own image rows ``lo <= r < hi`` also get
    their weighted square sums ``sq[r, t]`` (:func:`weighted_square_sum`'s, by blocks of ``W``
    pixels, scaled by ``scale``) as the sweep reaches them: ``d^T C^-1 d`` in the same read of the
    frames (the stamps then read the row from cache), not in a second pass over them.
    """
    nr, nc, n = values.shape
    m = U.shape[1]
    has_ivar = ivar.shape[0] > 0
    has_keep = keep.shape[0] > 0
    has_sq = sq.shape[0] > 0
    for r in range(max(lo, 0), min(max(hi + nr - 1, hi), H)):
        base = r * W
        if has_sq and r < hi:
            _square_sum(U, ivar, keep, scale, base, base + W, sq[r])
        for e in range(start[r], start[r + 1]):
            k = ent[e]
            a = r + imr - r0[k]
            if r - a < lo or r - a >= hi:
                continue
            acc = out[k]
            for b in range(nc):
                c = c0[k] + b - imc
                if c < 0 or c >= W:
                    continue
                p = base + c
                if has_keep and not keep[p]:
                    continue
                v = values[a, b, k]
                u = U[p]
                if has_ivar:
                    w = ivar[p]
                    for t in range(m):
                        acc[t] += v * (w * u[t])
                else:
                    for t in range(m):
                        acc[t] += v * u[t]


@njit(cache=True, nogil=True)
def _square_sum(D, ivar, keep, scale, p0, p1, part):  # pragma: no cover - compiled
    """``part[t] = sum over the kept pixels p0 <= p < p1 of ivar[p] * (scale * D[p, t])**2``, in
    pixel order from 0.0: the one definition of a block's sum (:func:`weighted_square_sum`,
    :func:`stamp_rhs_band`)."""
    m = D.shape[1]
    has_ivar = ivar.shape[0] > 0
    has_keep = keep.shape[0] > 0
    part[:] = 0.0
    for p in range(p0, p1):
        if has_keep and not keep[p]:
            continue
        w = ivar[p] if has_ivar else 1.0
        d = D[p]
        for t in range(m):
            x = scale * d[t]
            part[t] += w * (x * x)


@njit(cache=True, nogil=True)
def weighted_square_sum(D, M, ivar, keep, scale, block, b0, b1, parts):  # pragma: no cover - compiled
    """``parts[j, t] = sum over the kept pixels p of block j of ivar[p] * (scale * (D[p, t] - M[p, t]))**2``
    for the blocks ``b0 <= j < b1`` of ``block`` pixels (``parts`` ``(nblocks, m)``).

    ``M`` ``(npix, m)`` (a model: the sums are of the residuals) or ``(0, 0)`` (none: of ``D``
    itself); ``ivar`` ``(npix,)`` or empty (unit weights); ``keep`` ``(npix,)`` or empty (every
    pixel; masked pixels are skipped, whatever they hold). The caller adds the blocks' sums in
    order (the rounding of one long running sum is avoided), so that ranges of blocks may run
    in parallel threads and give the same bits.
    """
    npix, m = D.shape
    has_model = M.shape[0] > 0
    has_ivar = ivar.shape[0] > 0
    has_keep = keep.shape[0] > 0
    for j in range(b0, b1):
        part = parts[j]
        p1 = min((j + 1) * block, npix)
        if not has_model:
            _square_sum(D, ivar, keep, scale, j * block, p1, part)
            continue
        part[:] = 0.0
        for p in range(j * block, p1):
            if has_keep and not keep[p]:
                continue
            w = ivar[p] if has_ivar else 1.0
            d = D[p]
            mp = M[p]
            for t in range(m):
                x = scale * (d[t] - mp[t])
                part[t] += w * (x * x)


@njit(cache=True, nogil=True)
def kept_all_finite(D, keep, p0, p1):  # pragma: no cover - compiled
    """Whether every kept entry of the rows ``p0 <= p < p1`` of ``D`` ``(npix, m)`` is finite, in
    one pass without temporaries.

    ``keep`` ``(npix, 1)`` (shared by the frames), ``(npix, m)`` (per frame) or ``(0, 0)`` (every
    entry). ``d - d`` is 0 for a finite ``d`` and NaN otherwise: it is summed per frame
    (vectorised, no branch per entry), and the pass stops after the first block of 4096 rows
    whose sums are not all 0.
    """
    npix, m = D.shape
    per_frame = keep.shape[0] > 0 and keep.shape[1] > 1
    shared = keep.shape[0] > 0 and keep.shape[1] == 1
    part = np.zeros(m, dtype=np.float64)  # one sum per frame: the loop over frames vectorises
    for q0 in range(p0, p1, 4096):
        for p in range(q0, min(q0 + 4096, p1)):
            if shared and not keep[p, 0]:
                continue
            d = D[p]
            if per_frame:
                kp = keep[p]
                for t in range(m):
                    part[t] += d[t] - d[t] if kp[t] else 0.0
            else:
                for t in range(m):
                    part[t] += d[t] - d[t]
        for t in range(m):
            if part[t] != 0.0:
                return False
    return True
