"""Elementwise functions with stamp semantics (``np.where``, ``np.clip``, ``np.round``,
``np.nan_to_num``, ``np.real``/``imag``, ``np.copy``, the ``*_like`` constructors, ``np.nonzero``,
:func:`logical_complement`) and ``np.gradient`` across stamps."""

from __future__ import annotations

import numpy as np

from .._options import check_dense_allocation
from .._ufuncs import apply_elementwise
from ._registry import (
    _S,
    _NoValue,
    _refuse_out,
    axis_index,
    implements,
)
from .joining import regroup


# -------------------------------------------------------------------------------------------
# Elementwise functions (stamp semantics, like the ufuncs)
# -------------------------------------------------------------------------------------------
@implements(np.where)
def _where(condition, x=_NoValue, y=_NoValue):
    """``np.where(cond, x, y)`` on stamp values → Sparse3D; ``np.where(cond)`` → coordinates.

    A NaN fill that the off-stamp elements would take (``np.where(cond, S, np.nan)``, which
    is xarray's ``da.where(cond)``) is refused: the logical result would be NaN on every
    off-stamp element, a dense array, and stamp semantics would silently keep 0 there.
    """
    if x is _NoValue and y is _NoValue:
        return _nonzero(condition)
    if x is _NoValue or y is _NoValue:
        raise ValueError("either both or neither of x and y should be given")
    Sparse3D = _S()
    # the branch that off-stamp elements take: a Sparse3D condition is False there, a
    # sparse.COO one its fill value; any other condition may pick either
    off_stamp = (y,) if isinstance(condition, Sparse3D) else (x, y)
    if type(condition).__module__.startswith("sparse") and hasattr(condition, "coords"):
        # a mask as sparse.COO (e.g. ~isnan(S), xarray's notnull): its values at the stamps
        anchor = next((v for v in (x, y) if isinstance(v, Sparse3D)), None)
        if anchor is not None:
            off_stamp = (x,) if condition.fill_value else (y,)
            condition = anchor._from_parts(_coo_at_stamps(condition, anchor._structure), anchor._structure)
    for value in off_stamp:
        if _holds_nan(value):
            raise ValueError(
                "np.where(cond, x, y) with NaN in the branch that off-stamp elements take would be NaN "
                "on every off-stamp element: a dense result that a Sparse3D cannot hold. Fill with a "
                "number instead (np.where(cond, S, 0); with xarray da.where(cond, 0)), or densify a "
                "cutout first (S[r0:r1, c0:c1].todense())"
            )
    if isinstance(condition, Sparse3D):
        # cheap when the mask is constant (xarray's NaN handling: np.where(isnan(S), 0, S))
        pick = None
        if not condition._values.any():
            pick = y
        elif condition._values.all():
            pick = x
        if isinstance(pick, Sparse3D) and pick._structure.equals(condition._structure):
            dtype = np.result_type(x, y)
            return pick if pick.dtype == dtype else pick.astype(dtype)
    return apply_elementwise(np.where, (condition, x, y), name="np.where")


def _coo_at_stamps(coo, structure) -> np.ndarray:
    """The values of a ``sparse.COO`` of the logical shape at every stamp element.

    Off-image stamp elements get 0 (they are not array contents), like any image operand.
    """
    if tuple(coo.shape) != structure.shape:
        raise ValueError(
            f"a sparse.COO operand must have the logical shape {structure.shape}; got {coo.shape}"
        )
    H, W, n = structure.shape
    check_dense_allocation(0 if H * W * (n + 1) < 2**62 else 2**63, "linear indices of a sparse operand")
    lin = np.ravel_multi_index(tuple(coo.coords), coo.shape)
    order = np.argsort(lin, kind="stable")
    lin, data = lin[order], np.asarray(coo.data)[order]
    want = structure.pixel.astype(np.int64) * n + element_sources(structure)  # off-image: beyond all
    pos = np.searchsorted(lin, want)
    found = pos < lin.size
    found[found] = lin[pos[found]] == want[found]
    out = np.full(structure.block_shape, coo.fill_value, dtype=coo.dtype)
    out[found] = data[pos[found]]
    if not structure.all_in_image:
        out[~structure.in_image] = 0
    return out


def element_sources(structure) -> np.ndarray:
    """The source of every stored element, broadcastable against the values block."""
    if not structure.grouped:
        return np.arange(structure.nsources)
    return np.concatenate(
        [np.broadcast_to(idx, g.block_shape).ravel() for idx, g in zip(structure.sources, structure.groups)]
    )


def _holds_nan(x) -> bool:
    """Whether a non-Sparse3D operand holds a NaN."""
    if isinstance(x, _S()) or isinstance(x, (bool, int)):
        return False
    try:
        arr = np.asarray(x)
    except Exception:  # noqa: BLE001 - not array-like: not our concern here
        return False
    return arr.dtype.kind in "fc" and bool(np.isnan(arr).any())


def logical_complement(a):
    """``np.logical_not(S)`` (and ``~S`` for boolean ``S``): the logical complement.

    Negating a mask must negate its implicit zeros too (xarray's ``notnull()`` is
    ``~isnull()``, and ``count()`` sums ``logical_not(isnull())``), so this is the one
    elementwise operation without stamp semantics: it returns a boolean ``sparse.COO``
    whose fill value is True, True wherever the logical array is zero.
    """
    s = a._structure
    data = ~s.canonical(a._values).astype(bool)
    from .._mask import LogicalMask

    coords = s.coo_order[1]
    return LogicalMask(coords, data, shape=a.shape, sorted=True, has_duplicates=False, fill_value=True)


@implements(np.nonzero)
def _nonzero(a):
    """Coordinates ``(rows, cols, sources)`` of logical non-zeros, sorted (via ``sparse.COO``)."""
    coo = a.coo
    keep = coo.data != 0
    return tuple(c[keep] for c in coo.coords)


@implements(np.clip)
def _clip(a, a_min=_NoValue, a_max=_NoValue, out=None, *, min=_NoValue, max=_NoValue, **kwargs):
    """``np.clip`` on the stamp values → Sparse3D (off-stamp stays zero, stamp semantics)."""
    _refuse_out(out, "np.clip")
    lo = a_min if a_min is not _NoValue else (min if min is not _NoValue else None)
    hi = a_max if a_max is not _NoValue else (max if max is not _NoValue else None)
    return apply_elementwise(lambda v, lo, hi: np.clip(v, lo, hi, **kwargs), (a, lo, hi), name="np.clip")


@implements(np.round, np.around)
def _round(a, decimals=0, out=None):
    """``np.round``/``np.around`` on the stamp values → Sparse3D."""
    _refuse_out(out, "np.round")
    return apply_elementwise(np.round, (a,), {"decimals": decimals}, name="np.round")


@implements(np.nan_to_num)
def _nan_to_num(x, copy=True, nan=0.0, posinf=None, neginf=None):
    """``np.nan_to_num`` on the stamp values → Sparse3D."""
    kw = {"nan": nan, "posinf": posinf, "neginf": neginf}
    return apply_elementwise(np.nan_to_num, (x,), kw, name="np.nan_to_num")


@implements(np.real)
def _real(val):
    """Real part of the stamp values → Sparse3D."""
    return apply_elementwise(np.real, (val,), name="np.real")


@implements(np.imag)
def _imag(val):
    """Imaginary part of the stamp values → Sparse3D."""
    return apply_elementwise(np.imag, (val,), name="np.imag")


@implements(np.copy)
def _copy(a, order="K", subok=False):
    """A Sparse3D copy (arrays are immutable, so rarely needed)."""
    return a.copy()


def _like(a, fill, dtype, shape, name):
    if shape is not None and tuple(np.atleast_1d(shape)) != a.shape:
        raise ValueError(f"{name} on a Sparse3D cannot change the shape")
    dtype = a.dtype if dtype is None else np.dtype(dtype)
    shape = a._values.shape  # the values block (1-D for grouped arrays)
    values = np.zeros(shape, dtype=dtype) if fill == 0 else np.full(shape, fill, dtype=dtype)
    return a._from_parts(values, a._structure)


@implements(np.zeros_like, np.empty_like)
def _zeros_like(a, dtype=None, order="K", subok=True, shape=None, *, device=None):
    """A Sparse3D of zeros with the same stamps."""
    return _like(a, 0, dtype, shape, "np.zeros_like")


@implements(np.ones_like)
def _ones_like(a, dtype=None, order="K", subok=True, shape=None, *, device=None):
    """Ones on the stamps, zero elsewhere (stamp semantics)."""
    return _like(a, 1, dtype, shape, "np.ones_like")


@implements(np.full_like)
def _full_like(a, fill_value, dtype=None, order="K", subok=True, shape=None, *, device=None):
    """``fill_value`` on the stamps, zero elsewhere (stamp semantics)."""
    return _like(a, fill_value, dtype, shape, "np.full_like")


# -------------------------------------------------------------------------------------------
# Derivatives across stamps
# -------------------------------------------------------------------------------------------
@implements(np.gradient)
def _gradient(f, *varargs, axis=None, edge_order=1):
    """``np.gradient`` across each stamp (stamp semantics) → Sparse3D, or a tuple of them.

    Equal to ``np.gradient`` of every stamp block (``S.data``) along stamp axis 0 (rows)
    and/or 1 (columns), with the same structure as ``f`` — not the gradient of the logical
    array, whose implicit zeros would put steps at every stamp edge. ``axis`` must be 0, 1
    or ``(0, 1)`` (the source axis has no derivative); spacings are scalars, one for all
    axes or one per axis; ``edge_order`` is NumPy's (1 or 2).
    """
    Sparse3D = _S()
    if not isinstance(f, Sparse3D):
        raise TypeError("np.gradient on Sparse3D: the array must be the first argument")
    if axis is None:
        raise ValueError(
            "np.gradient on a Sparse3D needs axis=0, 1 or (0, 1): the derivative across each stamp "
            "(the source axis 2 has no derivative)"
        )
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    try:
        norm = tuple(axis_index(a, 3) for a in axes)  # AxisError when out of range, as NumPy
    except TypeError:
        raise TypeError(f"np.gradient: axis must be 0, 1 or (0, 1); got {axis!r}") from None
    if not norm or any(a not in (0, 1) for a in norm):
        raise ValueError(
            f"np.gradient on a Sparse3D: axis must be 0, 1 or (0, 1) (derivatives across each stamp); "
            f"got {axis!r}"
        )
    if len(set(norm)) != len(norm):
        raise ValueError(f"np.gradient: repeated axis in {axis!r}")
    for v in varargs:
        if np.ndim(v) != 0:
            raise TypeError(
                "np.gradient on a Sparse3D takes scalar spacings only (one for all axes or one per "
                "axis); coordinate arrays are not supported"
            )
    if len(varargs) not in (0, 1, len(norm)):
        raise TypeError(
            f"np.gradient: got {len(varargs)} spacings for {len(norm)} axes; pass 1 or {len(norm)}"
        )
    if f._structure.grouped:  # across each group's stamps
        parts = [_gradient(g, *varargs, axis=axis, edge_order=edge_order) for g in f.groups]
        if len(norm) == 1:
            return regroup(parts, f._structure)
        return tuple(regroup(list(p), f._structure) for p in zip(*parts))
    values = np.gradient(f._values, *varargs, axis=norm, edge_order=edge_order)
    if len(norm) == 1:
        return Sparse3D._from_parts(values, f._structure)
    return tuple(Sparse3D._from_parts(v, f._structure) for v in values)
