"""An 8 × 8 transposition of stamp values in vector registers, as a numba intrinsic.

The grid scatter and gather (:mod:`sparse3d._grid_kernels`) copy the stamp block (source axis
innermost) source-major, a block of sources at a time. Written as a loop, the copy reads eight
sources of a stamp plane in one vector and LLVM stores them with a *scatter* instruction (one
cache line per value), the costliest part of the first ``L.dot(w)`` (43 % of its time in a
profile). :func:`transpose8` instead loads eight planes × eight sources as eight vectors,
transposes them with three rounds of shuffles (``unpack``, ``shuffle``, ``permute``: the
classic 8 × 8 transpose) and stores eight vectors, each eight consecutive planes of one
source. Values are moved, never computed on: the same bits.

The vector path is used for C-contiguous float32/float64 arrays of one dtype; any other dtype
or layout gets 64 element copies through the arrays' strides, cast as an assignment casts.
No bounds checks: the callers pass ranges inside both arrays.

Imported (with numba and llvmlite) only when the grid kernels are compiled.
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

__all__ = ["transpose8"]

_UNPACK_LO = [0, 8, 1, 9, 4, 12, 5, 13]
_UNPACK_HI = [2, 10, 3, 11, 6, 14, 7, 15]
_PAIRS_LO = [0, 1, 8, 9, 4, 5, 12, 13]
_PAIRS_HI = [2, 3, 10, 11, 6, 7, 14, 15]
_HALF_LO = [0, 1, 2, 3, 8, 9, 10, 11]
_HALF_HI = [4, 5, 6, 7, 12, 13, 14, 15]


@intrinsic
def transpose8(typingctx, values, p0, k0, out, b0):
    """``out[b0 + q].flat[p0 + r] = values.reshape(-1, n)[p0 + r, k0 + q]`` for ``q, r < 8``.

    ``values``: a 3-D ``(nr, nc, n)`` stamp block (plane ``p`` is ``(p // nc, p % nc)``);
    ``out``: a 3-D ``(B, nr, nc)`` array (values of another dtype are cast to its dtype, as
    an assignment casts them); ``p0``, ``k0``, ``b0``: integers.
    """
    if not (isinstance(values, types.Array) and isinstance(out, types.Array)):
        return None
    if values.ndim != 3 or out.ndim != 3:
        return None
    same = values.dtype == out.dtype
    vector = same and isinstance(values.dtype, types.Float) and values.layout == "C" and out.layout == "C"
    sig = types.void(values, p0, k0, out, b0)

    def codegen(context, builder, sig, args):
        src = context.make_array(sig.args[0])(context, builder, args[0])
        dst = context.make_array(sig.args[3])(context, builder, args[3])
        i64 = ir.IntType(64)
        p0v, k0v, b0v = (context.cast(builder, args[i], sig.args[i], types.int64) for i in (1, 2, 4))
        nc = cgutils.unpack_tuple(builder, src.shape, 3)[1]
        sst = cgutils.unpack_tuple(builder, src.strides, 3)
        dst_st = cgutils.unpack_tuple(builder, dst.strides, 3)
        sbase = builder.ptrtoint(src.data, i64)
        dbase = builder.ptrtoint(dst.data, i64)
        elt = context.get_data_type(sig.args[0].dtype)
        dst_elt = context.get_data_type(sig.args[3].dtype)
        const = lambda v: ir.Constant(i64, v)  # noqa: E731

        def plane(r):  # (i, j) of plane p0 + r
            p = builder.add(p0v, const(r))
            return builder.sdiv(p, nc), builder.srem(p, nc)

        def src_addr(r, q):  # values[i, j, k0 + q] of plane p0 + r
            i, j = plane(r)
            off = builder.add(builder.mul(i, sst[0]), builder.mul(j, sst[1]))
            return builder.add(sbase, builder.add(off, builder.mul(builder.add(k0v, const(q)), sst[2])))

        def dst_addr(q, r):  # out[b0 + q, i, j] of plane p0 + r
            i, j = plane(r)
            off = builder.add(builder.mul(i, dst_st[1]), builder.mul(j, dst_st[2]))
            return builder.add(dbase, builder.add(off, builder.mul(builder.add(b0v, const(q)), dst_st[0])))

        if not vector:  # element by element, cast to out's dtype as an assignment casts
            for r in range(8):
                for q in range(8):
                    v = builder.load(builder.inttoptr(src_addr(r, q), elt.as_pointer()))
                    v = context.cast(builder, v, sig.args[0].dtype, sig.args[3].dtype)
                    builder.store(v, builder.inttoptr(dst_addr(q, r), dst_elt.as_pointer()))
            return context.get_dummy_value()
        vec = ir.VectorType(elt, 8)
        masks = ir.VectorType(ir.IntType(32), 8)

        def shuffle(a, b, mask):
            return builder.shuffle_vector(a, b, ir.Constant(masks, mask))

        rows = []
        for r in range(8):  # plane p0 + r, sources k0 .. k0 + 7 (contiguous: C layout)
            load = builder.load(builder.inttoptr(src_addr(r, 0), vec.as_pointer()))
            load.align = 1
            rows.append(load)
        t = []
        for r in range(0, 8, 2):
            t += [shuffle(rows[r], rows[r + 1], _UNPACK_LO), shuffle(rows[r], rows[r + 1], _UNPACK_HI)]
        u = []
        for a, b in ((0, 2), (4, 6)):
            u += [shuffle(t[a], t[b], _PAIRS_LO), shuffle(t[a], t[b], _PAIRS_HI)]
            u += [shuffle(t[a + 1], t[b + 1], _PAIRS_LO), shuffle(t[a + 1], t[b + 1], _PAIRS_HI)]
        cols = [shuffle(u[q % 4], u[4 + q % 4], _HALF_LO if q < 4 else _HALF_HI) for q in range(8)]
        for q in range(8):  # source k0 + q, planes p0 .. p0 + 7 (contiguous in out[b0 + q])
            store = builder.store(cols[q], builder.inttoptr(dst_addr(q, 0), vec.as_pointer()))
            store.align = 1
        return context.get_dummy_value()

    return sig, codegen
