"""Numba kernel of the selected inversion over the built-in factor's blocks (``solver="nd"``).

Imported lazily by :mod:`sparse3d.fit.selinv` (:func:`~sparse3d.fit.selinv._blocks_inv_diag`);
compiled once and cached on disk. Plain loops only (see :mod:`._supernodal_kernels`): the
large supernodes are handed back to the caller, which applies them with BLAS.
"""

from __future__ import annotations

from numba import njit

_I = "intp[::1]"
_F = "float64[::1]"
SIGNATURES = {
    # s0, the blocks, sparent, nleft, the front stack and its state, work arrays, diag
    "selinv_diag": f"(intp, {_I}, {_I}, {_I}, {_I}, {_F}, {_I}, {_I}, {_F}, {_I}, {_I}, {_I}, "
    f"{_I}, {_F}, {_F}, {_F}, {_F}, {_F}, {_F})",
}

# a supernode of fewer than this many multiply-adds (k h^2) is inverted in loops
_SELINV_LOOP_MAX = 1 << 18


@njit(cache=True, nogil=True)
def selinv_diag(
    s0,
    sstart,
    sptr,
    srows,
    offsets,
    buf,
    sparent,
    nleft,
    fstack,
    fstart,
    ids,
    ctr,
    wpos,
    wl,
    wu,
    wzrr,
    wzrs,
    wzss,
    diag,
):  # pragma: no cover - compiled
    """``diag((L L^T)^-1)`` by supernodal selected inversion over the blocks of :func:`multifrontal`,
    from supernode ``s0`` down to the root's last descendant (supernodes in reverse order).

    For supernode ``s`` (diagonal block ``L_ss``, rows ``R`` below it, ``U = L_Rs L_ss^-1``)::

        Z_Rs = -Z_RR U,    Z_ss = L_ss^-T L_ss^-1 - U^T Z_Rs

    where ``Z_RR`` is read from the parent's front ``Z[F, F]`` (``F`` = its columns and rows),
    kept on the stack ``fstack`` (offsets ``fstart``, supernodes ``ids``, ``ctr`` = stack end
    and depth) until all of its children (``nleft``, counted down) have read it. Supernodes of
    fewer than ``_SELINV_LOOP_MAX`` multiply-adds (``k h^2``) run in loops; at a larger one the
    kernel gathers ``Z_RR`` into ``wzrr`` and returns ``s``: the caller puts ``Z_ss`` into
    ``wzss`` and ``Z_Rs^T`` into ``wzrs`` (row-major) and calls again with ``s0 = -s - 1``.
    Returns -1 when done. ``wpos``, ``wl``, ``wu``: work space for the positions of ``R`` in the
    parent's front, ``L_ss^-1`` and ``U``.
    """
    s = s0
    resume = s0 < 0
    if resume:
        s = -s0 - 1
    while s >= 0:
        f = sstart[s]
        k = sstart[s + 1] - f
        q = sptr[s]
        m = sptr[s + 1] - q
        h = k + m
        o = offsets[s]
        p = sparent[s]
        if not resume:
            # Z_RR from the parent's front: R is sorted, so is the parent's F = [fp, ep) + Rp
            if m:
                fp = sstart[p]
                kp = sstart[p + 1] - fp
                qp = sptr[p]
                hp = kp + sptr[p + 1] - qp
                base = fstart[p]
                j = 0
                for a in range(m):
                    r = srows[q + a]
                    if r < fp + kp:
                        wpos[a] = r - fp
                    else:
                        while srows[qp + j] != r:
                            j += 1
                        wpos[a] = kp + j
                for a in range(m):
                    pa = base + wpos[a] * hp
                    for b in range(m):
                        wzrr[a * m + b] = fstack[pa + wpos[b]]
            if k * h * h >= _SELINV_LOOP_MAX:
                return s
            # L_ss^-1 (row-major, lower), L[r, c] = buf[o + c h + r]
            for c in range(k):
                for r in range(k):
                    wl[r * k + c] = 0.0
                wl[c * k + c] = 1.0 / buf[o + c * h + c]
                for r in range(c + 1, k):
                    acc = 0.0
                    for t in range(c, r):
                        acc += buf[o + t * h + r] * wl[t * k + c]
                    wl[r * k + c] = -acc / buf[o + r * h + r]
            # Z_ss = L_ss^-T L_ss^-1
            for a in range(k):
                for b in range(a, k):
                    acc = 0.0
                    for r in range(b, k):
                        acc += wl[r * k + a] * wl[r * k + b]
                    wzss[a * k + b] = acc
                    wzss[b * k + a] = acc
            if m:
                # U^T = (L_Rs L_ss^-1)^T (k, m): the inner loops run over R (long, contiguous)
                for q2 in range(m * k):
                    wu[q2] = 0.0
                for r in range(k):
                    col = o + r * h + k
                    for c in range(r + 1):
                        w = wl[r * k + c]
                        uc = c * m
                        for i in range(m):
                            wu[uc + i] += w * buf[col + i]
                # Z_Rs^T = -U^T Z_RR (k, m; Z_RR symmetric)
                for q2 in range(m * k):
                    wzrs[q2] = 0.0
                for c in range(k):
                    uc = c * m
                    for j in range(m):
                        u = wu[uc + j]
                        zj = j * m
                        for i in range(m):
                            wzrs[uc + i] -= u * wzrr[zj + i]
                # Z_ss -= U^T Z_Rs
                for a in range(k):
                    for b in range(a, k):
                        acc = 0.0
                        for i in range(m):
                            acc += wu[a * m + i] * wzrs[b * m + i]
                        wzss[a * k + b] -= acc
                        if b != a:
                            wzss[b * k + a] -= acc
        resume = False
        for c in range(k):
            diag[f + c] = wzss[c * k + c]
        if m:
            nleft[p] -= 1
        if nleft[s] > 0:  # push the front Z[F, F] for the children
            top = ctr[0]
            fstart[s] = top
            for a in range(k):
                for b in range(k):
                    fstack[top + a * h + b] = wzss[a * k + b]
            for i in range(m):
                for c in range(k):
                    z = wzrs[c * m + i]
                    fstack[top + (k + i) * h + c] = z
                    fstack[top + c * h + k + i] = z
                for j in range(m):
                    fstack[top + (k + i) * h + k + j] = wzrr[i * m + j]
            ctr[0] = top + h * h
            ids[ctr[1]] = s
            ctr[1] += 1
        # pop the fronts all of whose children are done (only ancestors of s stay)
        while ctr[1] > 0 and nleft[ids[ctr[1] - 1]] == 0:
            ctr[1] -= 1
            ctr[0] = fstart[ids[ctr[1]]]
        s -= 1
    return -1
