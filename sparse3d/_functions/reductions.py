"""Reductions: ``np.sum``/``prod``/``max``/``min``/``any``/``all``/``mean``, the ``np.nan*``
variants, ``np.count_nonzero`` and ``ufunc.reduce`` (:func:`ufunc_reduce`), on the logical array."""

from __future__ import annotations

import numpy as np

from .._options import check_dense_allocation
from ._registry import (
    _NoValue,
    _refuse_out,
    axis_index,
    implements,
)
from .products import _scatter_image


# -------------------------------------------------------------------------------------------
# Reductions
# -------------------------------------------------------------------------------------------
def _normalize_axes(axis) -> tuple[int, ...]:
    if axis is None:
        return (0, 1, 2)
    items = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = [axis_index(ax, 3) for ax in items]
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate value in 'axis': {axis!r}")
    return tuple(sorted(out))


def _finish(result, S, axes: tuple[int, ...], keepdims: bool):
    """NumPy scalar for a full reduction, ``ndarray`` otherwise; then ``keepdims``."""
    result = np.asarray(result)
    if axes == (0, 1, 2):
        result = result[()]
    if keepdims:
        shape = tuple(1 if i in axes else s for i, s in enumerate(S.shape))
        result = np.reshape(result, shape)
    return result


def _reduce_canonical(S, ufunc: np.ufunc, axes: tuple[int, ...], dtype):
    """Any reduction, from the canonical (sorted, in-image) elements into a dense result.

    Cells of the result start at the ufunc's identity (or the neutral element of an
    extremum); every stored element is folded in with ``ufunc.at``; cells that also cover
    implicit zeros (fewer stored elements than the reduced size) are combined with 0.
    """
    s = S._structure
    coords = s.coo_order[1]
    data = s.canonical(S._values)
    kw = {} if dtype is None else {"dtype": dtype}
    out_dtype = ufunc.reduce(np.zeros(1, dtype=S.dtype), **kw).dtype
    keep = [i for i in range(3) if i not in axes]
    out_shape = tuple(S.shape[i] for i in keep)
    size = int(np.prod(out_shape)) if keep else 1
    check_dense_allocation(size * out_dtype.itemsize * 2, f"the {out_shape} result of a reduction")
    flat = (
        np.ravel_multi_index(tuple(coords[i] for i in keep), out_shape)
        if keep
        else np.zeros(data.size, dtype=np.intp)
    )
    data = data.astype(out_dtype, copy=False)
    if ufunc.identity is not None:
        init = ufunc.reduce(np.zeros(0, dtype=out_dtype))  # the identity in out_dtype (-1 → 255)
    elif ufunc in _EXTREMA and out_dtype.kind in "biuf":
        init = _neutral(_EXTREMA[ufunc], out_dtype)
    else:
        raise TypeError(f"np.{ufunc.__name__}.reduce over axis {axes} is not supported on Sparse3D")
    out = np.full(size, init, dtype=out_dtype)
    if ufunc is np.add and out_dtype.kind == "f":
        out += np.bincount(flat, weights=data, minlength=size).astype(out_dtype, copy=False)
    else:
        ufunc.at(out, flat, data)
    reduced = int(np.prod([S.shape[i] for i in axes]))
    counts = np.bincount(flat, minlength=size)
    zero = np.zeros((), dtype=out_dtype)
    if ufunc is np.multiply and out_dtype.kind in "fc":
        # an implicit zero makes the product exactly 0, even when the stored product
        # overflowed to inf (inf * 0 would be NaN); only a stored NaN or inf makes it NaN
        nonfinite = np.bincount(flat, weights=~np.isfinite(data), minlength=size) > 0
        implicit = np.where(nonfinite, out_dtype.type(np.nan), zero)
    else:
        implicit = ufunc(out, zero)
    out = np.where(counts < reduced, implicit, out)
    return out.reshape(out_shape)


_EXTREMA = {np.maximum: "max", np.minimum: "min", np.fmax: "max", np.fmin: "min"}


def _neutral(kind: str, dtype: np.dtype):
    if dtype.kind == "f":
        return -np.inf if kind == "max" else np.inf
    if dtype.kind == "b":
        return kind != "max"
    info = np.iinfo(dtype)
    return info.min if kind == "max" else info.max


def _reduce(S, ufunc: np.ufunc, axis, dtype=None, keepdims=False, initial=_NoValue, where=True):
    """The logical-array reduction ``ufunc.reduce(dense(S), axis)`` without densifying."""
    if where is not True and where is not _NoValue:
        raise TypeError(f"np.{ufunc.__name__}.reduce(..., where=...) is not supported on Sparse3D")
    axes = _normalize_axes(axis)
    if axes == ():  # every element is its own reduction: NumPy's dtype rules still apply
        kw = {} if dtype is None else {"dtype": dtype}
        out_dtype = ufunc.reduce(np.zeros((1, 1), dtype=S.dtype), axis=(), **kw).dtype
        result = S.astype(out_dtype)
        if initial is _NoValue:
            return result
        if ufunc(np.zeros((), dtype=out_dtype), initial) != 0:
            raise ValueError(
                f"np.{ufunc.__name__}.reduce(S, axis=(), initial={initial!r}) would be non-zero on every "
                "off-stamp element (a dense result); apply it to a cutout's todense()"
            )
        return ufunc(result, initial)
    if ufunc.identity is None and initial is _NoValue and 0 in [S.shape[i] for i in axes]:
        raise ValueError(f"zero-size array to reduction operation {ufunc.__name__} which has no identity")
    s = S._structure
    if s.grouped:
        result = _reduce_grouped(S, ufunc, axes, dtype)
        if initial is not _NoValue:
            result = ufunc(result, initial)
        return _finish(result, S, axes, keepdims)
    v = S._values
    m = None if s.all_in_image else s.in_image
    result = None
    if ufunc is np.add:
        if axes == (0, 1, 2):
            result = np.sum(v, dtype=dtype, where=True if m is None else m)
        elif axes == (0, 1):
            result = np.sum(v, axis=(0, 1), dtype=dtype, where=True if m is None else m)
        elif axes == (2,):
            out_dtype = np.sum(np.zeros(1, dtype=v.dtype), dtype=dtype).dtype
            result = _scatter_image(s, v, out_dtype)
    elif ufunc in _EXTREMA and dtype is None and v.dtype.kind in "biuf":
        kind = _EXTREMA[ufunc]
        neutral = _neutral(kind, v.dtype)
        zero = np.zeros((), dtype=v.dtype)
        if axes == (0, 1, 2):
            if S.nnz == 0:
                result = zero[()]
            else:
                result = ufunc.reduce(v if m is None else v[m], axis=None)
                if S.nnz < S.size:
                    result = ufunc(result, zero)
        elif axes == (0, 1):
            H, W = S.imshape
            result = ufunc.reduce(v, axis=(0, 1), where=True if m is None else m, initial=neutral)
            result = np.where(s.source_counts < H * W, ufunc(result, zero), result)
        elif axes == (2,):
            H, W = S.imshape
            check_dense_allocation(H * W * v.dtype.itemsize * 2, f"an image of shape {(H, W)}")
            img = np.full(H * W + 1, neutral, dtype=v.dtype)
            ufunc.at(img, s.pixel.ravel(), v.ravel())
            counts = np.bincount(s.pixel.ravel(), minlength=H * W + 1)
            img = np.where(counts < S.nsources, ufunc(img, zero), img)
            result = img[: H * W].reshape(H, W)
    if result is None:
        result = _reduce_canonical(S, ufunc, axes, dtype)
    if initial is not _NoValue:
        result = ufunc(result, initial)
    return _finish(result, S, axes, keepdims)


def _reduce_grouped(S, ufunc: np.ufunc, axes: tuple[int, ...], dtype):
    """A reduction of a grouped array: every group reduced, then combined.

    Over the source axis the groups' results are combined with ``ufunc`` itself (each group
    covers the whole image); otherwise they are the groups' slices of the source axis.
    """
    parts = [np.asarray(_reduce(g, ufunc, axes, dtype=dtype, keepdims=True)) for g in S.groups]
    if 2 in axes:
        result = parts[0]
        for p in parts[1:]:
            result = ufunc(result, p)
    else:
        result = S._structure.assemble(parts, axis=2)
    return result.reshape(tuple(S.shape[i] for i in range(3) if i not in axes))


def ufunc_reduce(ufunc, array, axis=0, dtype=None, out=None, keepdims=False, initial=_NoValue, where=True):
    """``ufunc.reduce(S, ...)`` (note NumPy's default ``axis=0`` here)."""
    _refuse_out(out, f"np.{ufunc.__name__}.reduce")
    if ufunc.nin != 2 or ufunc.nout != 1:
        raise TypeError(f"np.{ufunc.__name__}.reduce needs a binary ufunc")
    return _reduce(array, ufunc, axis, dtype=dtype, keepdims=keepdims, initial=initial, where=where)


@implements(np.sum)
def _sum(a, axis=None, dtype=None, out=None, keepdims=False, initial=_NoValue, where=True):
    """``np.sum``; see the module docstring for the return type by ``axis``."""
    _refuse_out(out, "np.sum")
    return _reduce(a, np.add, axis, dtype=dtype, keepdims=keepdims, initial=initial, where=where)


@implements(np.prod)
def _prod(a, axis=None, dtype=None, out=None, keepdims=False, initial=_NoValue, where=True):
    """``np.prod`` of the logical array: exactly 0 wherever an implicit zero is reduced.

    That holds even when the stored values' product overflows (NumPy's own result then
    depends on the order of the elements); a stored NaN or inf in the slice gives NaN.
    """
    _refuse_out(out, "np.prod")
    return _reduce(a, np.multiply, axis, dtype=dtype, keepdims=keepdims, initial=initial, where=where)


@implements(np.max, np.amax)
def _max(a, axis=None, out=None, keepdims=False, initial=_NoValue, where=True):
    """``np.max``/``np.amax`` of the logical array (implicit zeros included)."""
    _refuse_out(out, "np.max")
    return _reduce(a, np.maximum, axis, keepdims=keepdims, initial=initial, where=where)


@implements(np.min, np.amin)
def _min(a, axis=None, out=None, keepdims=False, initial=_NoValue, where=True):
    """``np.min``/``np.amin`` of the logical array (implicit zeros included)."""
    _refuse_out(out, "np.min")
    return _reduce(a, np.minimum, axis, keepdims=keepdims, initial=initial, where=where)


@implements(np.any)
def _any(a, axis=None, out=None, keepdims=False, *, where=True):
    """``np.any``: whether any logical element is non-zero."""
    _refuse_out(out, "np.any")
    return _reduce(a.astype(bool), np.logical_or, axis, keepdims=keepdims, where=where)


@implements(np.all)
def _all(a, axis=None, out=None, keepdims=False, *, where=True):
    """``np.all``: whether every logical element is non-zero (off-stamp zeros make it False)."""
    _refuse_out(out, "np.all")
    return _reduce(a.astype(bool), np.logical_and, axis, keepdims=keepdims, where=where)


@implements(np.mean)
def _mean(a, axis=None, dtype=None, out=None, keepdims=False, *, where=True):
    """``np.mean``: the sum divided by the number of logical elements reduced."""
    _refuse_out(out, "np.mean")
    axes = _normalize_axes(axis)
    count = int(np.prod([a.shape[i] for i in axes]))
    if dtype is not None:
        sum_dtype = dtype
    elif a.dtype.kind in "biu":
        sum_dtype = np.float64
    else:  # NumPy sums float16 in float32 (float16 overflows at 65504)
        sum_dtype = np.float32 if a.dtype == np.float16 else a.dtype
    total = _reduce(a, np.add, axes, dtype=sum_dtype, keepdims=keepdims, where=where)
    result = total / count
    if dtype is not None or a.dtype.kind in "fc":
        target = np.dtype(dtype) if dtype is not None else a.dtype
        result = result.astype(target) if hasattr(result, "astype") else target.type(result)
    return result


def _without_nan(a):
    return np.where(np.isnan(a), 0, a) if a.dtype.kind in "fc" else a


@implements(np.nansum)
def _nansum(a, axis=None, dtype=None, out=None, keepdims=False, initial=_NoValue, where=True):
    """``np.nansum``: NaN stamp values count as zero."""
    return _sum(
        _without_nan(a), axis=axis, dtype=dtype, out=out, keepdims=keepdims, initial=initial, where=where
    )


@implements(np.nanmax)
def _nanmax(a, axis=None, out=None, keepdims=False, initial=_NoValue, where=True):
    """``np.nanmax``: NaN stamp values are ignored (off-stamp zeros still count)."""
    _refuse_out(out, "np.nanmax")
    return _all_nan_to_nan(
        a, _reduce(a, np.fmax, axis, keepdims=keepdims, initial=initial, where=where), axis, keepdims, initial
    )


def _all_nan_to_nan(a, result, axis, keepdims, initial):
    """NumPy's ``nanmax``/``nanmin`` give NaN for an all-NaN slice (``fmax`` alone gives -inf)."""
    if a.dtype.kind != "f" or initial is not _NoValue:
        return result
    axes = _normalize_axes(axis)
    count = int(np.prod([a.shape[i] for i in axes]))
    nans = _reduce(np.isnan(a), np.add, axes, dtype=np.intp, keepdims=keepdims)
    out = np.where(nans == count, a.dtype.type(np.nan), result)
    return out[()] if out.ndim == 0 else out


@implements(np.nanmin)
def _nanmin(a, axis=None, out=None, keepdims=False, initial=_NoValue, where=True):
    """``np.nanmin``: NaN stamp values are ignored (off-stamp zeros still count)."""
    _refuse_out(out, "np.nanmin")
    return _all_nan_to_nan(
        a, _reduce(a, np.fmin, axis, keepdims=keepdims, initial=initial, where=where), axis, keepdims, initial
    )


@implements(np.nanmean)
def _nanmean(a, axis=None, dtype=None, out=None, keepdims=False, *, where=True):
    """``np.nanmean``: the mean over the non-NaN logical elements."""
    _refuse_out(out, "np.nanmean")
    axes = _normalize_axes(axis)
    count = int(np.prod([a.shape[i] for i in axes]))
    if a.dtype.kind not in "fc":
        return _mean(a, axis=axes, dtype=dtype, keepdims=keepdims, where=where)
    nans = _reduce(np.isnan(a), np.add, axes, dtype=np.intp, keepdims=keepdims)
    total = _reduce(_without_nan(a), np.add, axes, dtype=dtype, keepdims=keepdims)
    result = total / (count - nans)
    target = np.dtype(dtype) if dtype is not None else a.dtype
    return result.astype(target) if hasattr(result, "astype") else target.type(result)


@implements(np.count_nonzero)
def _count_nonzero(a, axis=None, *, keepdims=False):
    """Logical non-zeros; the same return types as ``np.sum``."""
    return _reduce(a.astype(bool), np.add, axis, dtype=np.intp, keepdims=keepdims)
