"""Joining: ``np.concatenate`` and ``np.stack``, and the helpers that join or select sources and
build grouped arrays (``join_sources``, ``build_grouped``, ``regroup``, ``select_sources``)."""

from __future__ import annotations

import numpy as np

from ._registry import (
    _S,
    _refuse_out,
    axis_index,
    implements,
)


# -------------------------------------------------------------------------------------------
# Joining
# -------------------------------------------------------------------------------------------
@implements(np.concatenate)
def _concatenate(arrays, axis=0, out=None, dtype=None, casting="same_kind"):
    """Concatenate Sparse3D arrays along the source axis (``axis=2`` or ``-1``) → Sparse3D.

    The arrays must share ``imshape`` and ``imcorner``. Arrays with different stamp shapes
    give one array with several stamp groups (see :attr:`Sparse3D.groups`): all sources with
    the same stamp shape form one group, wherever they are in the order (``[A, B, A2]`` gives
    two groups); the source order is the concatenation order.
    """
    Sparse3D = _S()
    _refuse_out(out, "np.concatenate")
    arrays = list(arrays)
    if not arrays or not all(isinstance(x, Sparse3D) for x in arrays):
        raise TypeError("np.concatenate on Sparse3D needs a non-empty sequence of Sparse3D arrays")
    if axis is None or axis_index(axis, 3) != 2:
        raise ValueError(
            f"Sparse3D arrays can only be concatenated along the source axis (axis=2 or -1); got axis={axis}"
        )
    first = arrays[0]
    for x in arrays[1:]:
        if x.imshape != first.imshape or x.imcorner != first.imcorner:
            raise ValueError("np.concatenate: all arrays must share imshape and imcorner")
    return join_sources(arrays, dtype=dtype, casting=casting)


def join_sources(arrays, dtype=None, casting="same_kind"):
    """The sources of ``arrays`` (Sparse3D, equal image bounds) in order, as one Sparse3D.

    Sources with equal stamp shapes form one stamp group, wherever they are in the order
    (see :func:`build_grouped`); a single stamp shape gives a single-block array.
    """
    out_dtype = np.dtype(dtype) if dtype is not None else np.result_type(*[x.dtype for x in arrays])
    for x in arrays:
        if not np.can_cast(x.dtype, out_dtype, casting=casting):
            raise TypeError(
                f"np.concatenate: cannot cast array data from {x.dtype} to {out_dtype} "
                f"according to the rule {casting!r}"
            )
    pieces, offset = [], 0
    for x in arrays:
        pieces += [(g, idx + offset) for g, idx in zip(x.groups, x.group_sources)]
        offset += x.nsources
    return build_grouped(pieces, out_dtype)


def build_grouped(pieces, dtype=None):
    """One Sparse3D from single-shape ``pieces`` ``[(array, global source indices), ...]``.

    The global indices of all pieces partition ``range(nsources)``; pieces with equal stamp
    shapes are merged into one group (in the order given, which must be ascending in the
    global index within a shape). One stamp shape gives a single-block array. Several give a
    grouped array that shares the values of the pieces alone in their shape (no copy; see
    ``Sparse3D._joined``).
    """
    from .._structure import GroupedStructure, StampStructure

    Sparse3D = _S()
    dtype = np.result_type(*[p.dtype for p, _ in pieces]) if dtype is None else np.dtype(dtype)
    pieces = [(p, i) for p, i in pieces if p.nsources] or pieces[:1]
    by_shape: dict = {}
    for p, idx in pieces:
        by_shape.setdefault(p.stamp_shape[:2], []).append((p, idx))
    blocks, sources = [], []
    for items in by_shape.values():
        run = [p for p, _ in items]
        sources.append(np.concatenate([np.asarray(i, dtype=np.int64) for _, i in items]))
        if len(run) == 1:
            blocks.append(run[0] if run[0].dtype == dtype else run[0].astype(dtype))
            continue
        merged = np.concatenate([x._values for x in run], axis=2, dtype=dtype, casting="unsafe")
        row = np.concatenate([x.row for x in run], axis=2)
        col = np.concatenate([x.col for x in run], axis=2)
        row.flags.writeable = col.flags.writeable = False
        blocks.append(Sparse3D._from_parts(merged, StampStructure(row, col, run[0].imshape, run[0].imcorner)))
    if len(blocks) == 1:
        return blocks[0]
    structure = GroupedStructure([b._structure for b in blocks], sources)
    return Sparse3D._joined(blocks, structure)  # values shared, joined on first use only


def regroup(parts, structure):
    """Single-shape ``parts``, one per group of the grouped ``structure``, as one Sparse3D."""
    return build_grouped(list(zip(parts, structure.sources)))


def select_sources(S, sel):
    """The sources ``sel`` (a slice or 1-D integer/boolean array) of ``S``, in that order → Sparse3D."""
    Sparse3D = _S()
    s = S._structure
    if not s.grouped:
        return Sparse3D._from_parts(np.ascontiguousarray(S._values[:, :, sel]), s.take_sources(sel))
    idx = np.arange(S.nsources)[sel].ravel()
    if idx.size == 0:
        return select_sources(S.groups[0], idx)
    group, local = s.group_of
    gsel = group[idx]
    pieces = []
    for j, g in enumerate(S.groups):
        pos = np.flatnonzero(gsel == j)
        if pos.size:
            pieces.append((select_sources(g, local[idx[pos]]), pos))
    return build_grouped(pieces)


@implements(np.stack)
def _stack(arrays, axis=0, out=None, *, dtype=None, casting="same_kind"):
    """Stack Sparse3D arrays along a new axis → a 4-D ``sparse.COO`` (no stamp structure)."""
    import sparse

    Sparse3D = _S()
    _refuse_out(out, "np.stack")
    arrays = list(arrays)
    shapes = {tuple(np.shape(x)) for x in arrays}
    if len(shapes) > 1:
        raise ValueError(f"np.stack: all input arrays must have the same shape; got shapes {sorted(shapes)}")
    arrays = [x.coo if isinstance(x, Sparse3D) else x for x in arrays]
    result = sparse.stack(arrays, axis=axis)
    return result if dtype is None else result.astype(dtype, casting=casting)
