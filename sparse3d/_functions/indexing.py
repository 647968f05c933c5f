"""Indexing: :func:`getitem`, called by ``Sparse3D.__getitem__``."""

from __future__ import annotations

import operator

import numpy as np

from .joining import select_sources


# -------------------------------------------------------------------------------------------
# Indexing (called by Sparse3D.__getitem__)
# -------------------------------------------------------------------------------------------
def _unit_slice(k) -> bool:
    return isinstance(k, slice) and (k.step is None or k.step == 1)


def _bounding(k, n: int, axis: int):
    """``(lo, hi, relative_key)``: the span of ``k`` on an axis of length ``n``, and ``k`` within it."""
    if isinstance(k, (int, np.integer)):
        i = operator.index(k)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of bounds for axis {axis} with size {n}")
        i %= n
        return i, i + 1, 0
    if isinstance(k, slice):
        start, stop, step = k.indices(n)
        idx = range(start, stop, step)
        if len(idx) == 0:
            return 0, 0, slice(0, 0)
        lo, hi = min(idx), max(idx) + 1
        rel_stop = stop - lo
        return lo, hi, slice(start - lo, rel_stop if rel_stop >= 0 else None, step)
    idx = np.arange(n)[np.asarray(k)]  # NumPy validates ints/bools and bounds
    if idx.size == 0:
        return 0, 0, idx
    lo = int(idx.min())
    return lo, int(idx.max()) + 1, idx - lo


def _is_bool_scalar(k) -> bool:
    return isinstance(k, (bool, np.bool_)) or (isinstance(k, np.ndarray) and k.dtype == bool and k.ndim == 0)


def _index_items(key) -> list:
    """The key as a list: sequences become arrays (an empty list is an integer index)."""
    items = []
    for k in key if isinstance(key, tuple) else (key,):
        if k is None:
            raise IndexError(
                "np.newaxis (None) is not supported when indexing a Sparse3D; index, then reshape"
            )
        if isinstance(k, (list, tuple, np.ndarray)):
            a = np.asarray(k)
            if a.size == 0 and not isinstance(k, np.ndarray):
                a = a.astype(np.intp)  # NumPy: an empty list selects nothing
            if a.dtype != bool and not np.issubdtype(a.dtype, np.integer):
                raise IndexError(
                    f"arrays used as indices must be of integer (or boolean) type; got dtype {a.dtype}"
                )
            k = a
        elif not (k is Ellipsis or isinstance(k, (slice, int, np.integer)) or _is_bool_scalar(k)):
            raise IndexError(
                "only integers, slices (`:`), ellipsis (`...`), integer or boolean arrays are valid "
                f"indices; got {k!r}"
            )
        items.append(k)
    return items


def getitem(S, key):
    """NumPy indexing with NumPy's shape rules.

    * Unit-step slices on ``row``/``col`` crop the image (a cutout: ``imshape`` and
      ``imcorner`` change, stamps are kept) and a slice, integer array or boolean mask on
      the source axis selects sources: the result is a Sparse3D.
    * Everything else — an integer on any axis (``S[:, :, i]`` is the dense image of source
      ``i``), strided or reversed slices, integer arrays or boolean masks on ``row``/``col``
      (also masks over several axes), boolean scalars (``S[True]`` adds an axis, as in
      NumPy) — gives a dense ``ndarray``. It is computed by applying the key, translated to
      the smallest cutout that holds the selection, to that cutout's dense array, so NumPy
      itself decides the result's shape and axis order (refused above ``max_dense_bytes``).
    """
    items = _index_items(key)
    if sum(k is Ellipsis for k in items) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")

    def consumed(k) -> int:
        if k is Ellipsis or _is_bool_scalar(k):
            return 0
        return k.ndim if isinstance(k, np.ndarray) and k.dtype == bool else 1

    total = sum(consumed(k) for k in items)
    if total > 3:
        raise IndexError(f"too many indices for a 3-D Sparse3D: {total} were given")
    if any(_is_bool_scalar(k) and not k for k in items):
        # a False scalar selects nothing: NumPy's (empty) result from a zero-strided stand-in,
        # with NumPy's own checks (it skips bounds checks of indices that select nothing)
        return np.broadcast_to(np.zeros((), dtype=S.dtype), S.shape)[tuple(items)].copy()
    lo, hi = [0, 0, 0], list(S.shape)
    sel = slice(None)  # the sources taken before densifying
    rel_items = []
    per_axis = [slice(None)] * 3  # the component on each axis (None: part of a multi-axis mask)
    ax = 0
    for k in items:
        if k is Ellipsis:
            ax += 3 - total
            rel_items.append(k)
            continue
        if _is_bool_scalar(k):
            rel_items.append(k)
            continue
        if isinstance(k, np.ndarray) and k.dtype == bool and k.ndim != 1:
            axes = range(ax, ax + k.ndim)
            if k.shape != tuple(S.shape[i] for i in axes):
                raise IndexError(
                    f"boolean index of shape {k.shape} does not match the indexed axes {tuple(axes)} "
                    f"of shape {tuple(S.shape[i] for i in axes)}"
                )
            nz = np.nonzero(k)
            for i, idx in zip(axes, nz):
                lo[i], hi[i] = (int(idx.min()), int(idx.max()) + 1) if idx.size else (0, 0)
                per_axis[i] = None
            rel_items.append(k[tuple(slice(lo[i], hi[i]) for i in axes)])
            if 2 in axes:
                sel = slice(lo[2], hi[2])
            ax += k.ndim
            continue
        n = S.shape[ax]
        per_axis[ax] = k
        if ax == 2 and isinstance(k, np.ndarray):  # select exactly these sources
            idx = np.arange(n)[k]
            sel = idx.ravel()
            lo[2], hi[2] = 0, sel.size
            rel = np.ones(sel.size, bool) if k.dtype == bool else np.arange(sel.size).reshape(idx.shape)
            rel_items.append(rel)
        elif ax == 2 and isinstance(k, slice):
            sel = k
            lo[2], hi[2] = 0, len(range(*k.indices(n)))
            rel_items.append(slice(None))
        else:
            lo[ax], hi[ax], rel = _bounding(k, n, ax)
            if ax == 2:
                sel = slice(lo[2], hi[2])
            rel_items.append(rel)
        ax += 1
    s = S._structure
    H, W = S.imshape
    rlo, rhi, clo, chi = lo[0], hi[0], lo[1], hi[1]
    if rhi > rlo and chi > clo and (rlo, rhi, clo, chi) != (0, H, 0, W):
        s = s.with_bounds((rhi - rlo, chi - clo), (s.imcorner[0] + rlo, s.imcorner[1] + clo))
    sub = S._with_structure(s)
    if not (isinstance(sel, slice) and sel == slice(None)):
        sub = select_sources(sub, sel)
    kr, kc, ks = per_axis
    structured = (
        _unit_slice(kr)
        and _unit_slice(kc)
        and rhi > rlo
        and chi > clo
        and (isinstance(ks, slice) or (isinstance(ks, np.ndarray) and ks.ndim == 1))
        and not any(_is_bool_scalar(k) for k in items)
    )
    if structured:
        return sub
    rel = tuple(rel_items)
    if rhi <= rlo or chi <= clo:  # empty selection on the image axes
        shape = (max(rhi - rlo, 0), max(chi - clo, 0), sub.nsources)
        return np.zeros(shape, dtype=S.dtype)[rel]
    return sub.todense()[rel]
