"""Compiled fractional shifts of stamps (:meth:`Sparse3D.shift <sparse3d.Sparse3D.shift>`).

Imported lazily by :mod:`sparse3d._interpolate` for large arrays (numba costs ~0.5 s to import);
compiled once per dtype and cached on disk (``cache=True``); :func:`sparse3d.precompile` runs
:func:`precompile_kernels`.

A stamp axis of length ``L`` is resampled by the ``L × L`` matrix ``A[j, b] = sinc(j - b - f)``
(the band-limited interpolant, zero outside the stamp; see :mod:`sparse3d._interpolate`): one
pass along the stamp columns, then one along the rows (the kernel is separable), over runs of
sources (the contiguous axis), the intermediate of a run staying in cache. Each pass is cut
into ``T × T`` tiles (``T`` outputs × ``T`` inputs, ``T`` = 4 or 5): per vector of sources a
tile loads ``T`` inputs and ``T`` partial sums and does ``T²`` multiply-adds with the partial
sums in registers, so the loops run near the FMA throughput (a one-output-at-a-time loop loads
and stores its partial sum for every input: ~2x slower). Multiply-adds are fused (``fastmath``
``contract`` only: rounding differs from NumPy's by ~1 ulp per term); every source is computed
by the same instructions wherever it falls in a run, so results are deterministic. Indices are
unsigned: numba then skips its negative-index test, which stops the vectoriser.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._interpolate import sinc_matrix

__all__ = ["shift", "shift_tiling", "precompile_kernels", "SHIFT_BUFFER_BYTES"]

_FMA = njit(cache=True, nogil=True, fastmath={"contract"})  # the tiles: a * b + c may fuse
_PLAIN = njit(cache=True, nogil=True)
_DIVIDES = njit(cache=True, nogil=True, error_model="numpy")  # no ZeroDivisionError test (never 0)


@_FMA
def _tile1s(src, s, ss, dst, d, ds, w, p, m, init):
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


@_FMA
def _tile4s(src, s, ss, dst, d, ds, w, p, m, init):
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


@_FMA
def _tile5s(src, s, ss, dst, d, ds, w, p, m, init):
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


@_PLAIN
def _pass_shared(src, s0, ss, dst, d0, ds, m, w, goff, coff, T):
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
                _tile5s(src, s, ss, dst, d, ds, w, p, m, c == 0)
            elif T == 4:
                _tile4s(src, s, ss, dst, d, ds, w, p, m, c == 0)
            else:
                _tile1s(src, s, ss, dst, d, ds, w, p, m, c == 0)


@_DIVIDES
def _shift_shared_loop(values, out, nr, nc, wc, gc, cc, tc, wr, gr, cr, tr, block):
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
                    _pass_shared(values, a * nc * n + k0, n, tmp, a * nc * block, block, m, wc, gc, cc, tc)
                else:
                    _pass_shared(values, a * nc * n + k0, n, out, a * nc * n + k0, n, m, wc, gc, cc, tc)
        if rows:
            for j in range(nc):  # tmp (or values) rows a·nc + j  ->  out rows i·nc + j
                if cols:
                    _pass_shared(tmp, j * block, nc * block, out, j * n + k0, nc * n, m, wr, gr, cr, tr)
                else:
                    _pass_shared(values, j * n + k0, nc * n, out, j * n + k0, nc * n, m, wr, gr, cr, tr)


@_DIVIDES
def _sinc_weights(frac, k0, m, L, w, s):
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


@_FMA
def _tile1v(src, s, dst, d, w, q, B, m, init):
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


@_FMA
def _tile4v(src, s, ss, dst, d, ds, w, q, B, m, init):
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


@_FMA
def _tile5v(src, s, ss, dst, d, ds, w, q, B, m, init):
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


@_PLAIN
def _pass_per_source(src, s0, ss, dst, d0, ds, m, w, B, L, goff, T):
    """One axis of the per-source product over ``m`` sources (layout as :func:`_pass_shared`).

    ``w[(l + L - 1)·B + kk]`` is the weight of lag ``l`` for source ``kk`` of the run. Output
    groups of ``T`` start at ``goff``; inputs go ``T`` at a time, the rest one at a time.
    """
    for g in range(goff.shape[0]):
        j0 = goff[g]
        b = 0
        if T == 5:
            while b + 5 <= L:
                _tile5v(src, s0 + b * ss, ss, dst, d0 + j0 * ds, ds, w, j0 - b + L - 1, B, m, b == 0)
                b += 5
        elif T == 4:
            while b + 4 <= L:
                _tile4v(src, s0 + b * ss, ss, dst, d0 + j0 * ds, ds, w, j0 - b + L - 1, B, m, b == 0)
                b += 4
        while b < L:
            for t in range(T):
                _tile1v(src, s0 + b * ss, dst, d0 + (j0 + t) * ds, w, j0 + t - b + L - 1, B, m, b == 0)
            b += 1


@_DIVIDES
def _shift_loop(values, out, nr, nc, frow, fcol, gr, gc, tr, tc, block):
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
            _sinc_weights(frow, k0, m, nr, wr2, sines)
        if cols:
            _sinc_weights(fcol, k0, m, nc, wc2, sines)
        if cols:
            for a in range(nr):
                if rows:
                    _pass_per_source(
                        values, a * nc * n + k0, n, tmp, a * nc * block, block, m, wc, block, nc, gc, tc
                    )
                else:
                    _pass_per_source(
                        values, a * nc * n + k0, n, out, a * nc * n + k0, n, m, wc, block, nc, gc, tc
                    )
        if rows:
            for j in range(nc):
                if cols:
                    _pass_per_source(
                        tmp, j * block, nc * block, out, j * n + k0, nc * n, m, wr, block, nr, gr, tr
                    )
                else:
                    _pass_per_source(
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
        _shift_shared_loop(flat, dst, nr, nc, *wc, *wr, block)
        return out
    fr = np.ascontiguousarray(np.broadcast_to(frow, (n,)), dtype=np.float64) if rows else np.empty(0)
    fc = np.ascontiguousarray(np.broadcast_to(fcol, (n,)), dtype=np.float64) if cols else np.empty(0)
    tr, tc = _tile_size(nr, shared=False), _tile_size(nc, shared=False)
    gr, gc = _groups(nr, tr), _groups(nc, tc)
    _shift_loop(flat, dst, nr, nc, fr, fc, gr, gc, tr, tc, block)
    return out


def precompile_kernels() -> None:
    """Compile (or load from the cache) both loops for float64 and float32 stamps.

    The hook of :func:`sparse3d.precompile` (see :mod:`sparse3d._compiled`): the loops take
    either float dtype, so there is no single signature to list.
    """
    for dtype in (np.float64, np.float32):
        values = np.ones((5, 4, 3), dtype=dtype)
        out = np.empty_like(values)
        shift(values, np.array([0.25]), np.array([-0.25]), out)  # shared: every tile side
        shift(values, np.array([0.25, -0.5, 0.1]), np.array([0.0, 0.25, 0.3]), out)  # per source
