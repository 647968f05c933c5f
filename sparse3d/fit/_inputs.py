"""The astronomer's data containers, read into plain arrays: masks, uncertainties, units.

:func:`_read_inputs` turns what a user passes to ``fit`` into plain NumPy arrays, a boolean
mask and a unit, and refuses what it cannot read unambiguously:

- ``numpy.ma.MaskedArray`` data (or errors), and astropy's ``Masked`` arrays/quantities: the
  mask is honoured, OR-ed with ``mask=``;
- astropy ``NDData``/``CCDData``-like data (duck-typed: ``.data``, ``.mask``,
  ``.uncertainty`` with ``.array`` and ``uncertainty_type`` ``"std"``, ``"var"`` or
  ``"ivar"``, ``.unit``); astropy is never imported unless the input carries a unit;
- astropy ``Quantity`` data and errors: the units must agree (errors are converted to the
  data's unit); a plain array next to a Quantity is refused;
- ``errors=np.inf`` on a pixel masks it (so does an inverse variance of 0);
- integer data-quality arrays through ``dq=`` and ``bad_bits=``: a pixel is masked when
  ``dq & bad_bits != 0``.  An integer ``mask=`` that is not 0/1 is refused (it is almost
  certainly a DQ array).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._checks import _check_real


@dataclass
class _Inputs:
    """Plain arrays read from the user's inputs (shapes are checked later, by the fit)."""

    data: np.ndarray
    errors: np.ndarray | None
    mask: np.ndarray | None  # bool, True = ignore; any shape broadcastable by the fit
    unit: Any  # an astropy unit, or None


def _is_nddata(x: Any) -> bool:
    return (
        not isinstance(x, np.ndarray)
        and hasattr(x, "data")
        and hasattr(x, "uncertainty")
        and hasattr(x, "mask")
        and hasattr(x, "unit")
    )


def _is_quantity(x: Any) -> bool:
    return isinstance(x, np.ndarray) and hasattr(x, "unit") and hasattr(x, "to_value")


def _units():
    import astropy.units as u  # only reached when an input carries a unit

    return u


def _or_masks(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    if a is None:
        return b
    if b is None:
        return a
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim == 2 and b.ndim == 3:  # an image mask shared by every frame of a stack
        a = a[:, :, None]
    elif b.ndim == 2 and a.ndim == 3:
        b = b[:, :, None]
    try:
        return np.logical_or(a, b)
    except ValueError:
        raise ValueError(
            f"the masks given (mask=, the data's mask, dq=, errors=inf) have incompatible shapes "
            f"{np.shape(a)} and {np.shape(b)}"
        ) from None


def _check_mask_values(mask: Any, name: str = "mask") -> np.ndarray:
    """``mask`` as a bool array: bool, or integers that are all 0/1; never a DQ array."""
    m = np.asarray(mask)
    if m.dtype == bool:
        return m
    if m.dtype.kind in "iu":
        if m.size and not np.all((m == 0) | (m == 1)):
            raise ValueError(
                f"{name} must be boolean (True = ignore); got integers other than 0/1, which look like a "
                "data-quality bitmask: pass it as dq=array with bad_bits=<the bits that mark bad pixels>"
            )
        return m.astype(bool)
    raise ValueError(f"{name} must be a boolean array, got dtype {m.dtype}")


def _read_uncertainty(unc: Any, unit: Any) -> np.ndarray:
    """1-sigma errors (in the data's ``unit``) from an astropy-like uncertainty object."""
    kind = getattr(unc, "uncertainty_type", None)
    arr = getattr(unc, "array", None)
    if arr is None or kind not in ("std", "var", "ivar"):
        raise ValueError(
            "data.uncertainty must have .array and uncertainty_type 'std', 'var' or 'ivar', "
            f"got {type(unc).__name__} with uncertainty_type {kind!r}"
        )
    arr = np.asarray(arr, dtype=np.float64)
    power = {"std": 1, "var": 2, "ivar": -2}[kind]
    unc_unit = getattr(unc, "unit", None)
    if unc_unit is not None:
        if unit is None:
            raise ValueError(f"data.uncertainty has unit {unc_unit} but data has no unit")
        arr = _convert(arr, unc_unit, unit**power, "data.uncertainty")
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "std":
            return arr
        if kind == "var":
            return np.sqrt(arr)
        return 1.0 / np.sqrt(arr)  # ivar 0 -> inf: masked


def _convert(values: np.ndarray, have: Any, want: Any, name: str) -> np.ndarray:
    u = _units()
    try:
        return u.Quantity(values, have).to_value(want)
    except u.UnitConversionError:
        raise ValueError(f"{name} has unit {have}, which does not convert to the unit {want}") from None


def _read_inputs(data: Any, errors: Any, mask: Any, dq: Any = None, bad_bits: Any = None) -> _Inputs:
    """Read the fit's ``data``, ``errors``, ``mask``, ``dq`` and ``bad_bits`` into plain arrays.

    Raises
    ------
    ValueError
        On ambiguous or contradictory inputs; the message names the argument.
    """
    unit = None
    errors_in_unit = False  # errors read from data.uncertainty are in the data's unit
    masks: list[np.ndarray | None] = []
    if mask is not None:
        masks.append(_check_mask_values(mask))
    if _is_nddata(data):
        nd = data
        unit = nd.unit
        if isinstance(unit, str):  # a duck-typed NDData may hold a unit string
            unit = _units().Unit(unit)
        data = nd.data
        if nd.mask is not None:
            masks.append(_check_mask_values(nd.mask, "data.mask"))
        if nd.uncertainty is not None:
            if errors is not None:
                raise ValueError("errors given twice: as errors= and as data.uncertainty; pass one of them")
            errors = _read_uncertainty(nd.uncertainty, unit)
            errors_in_unit = True
    data = _unmask(data, masks)
    if _is_quantity(data):
        unit = data.unit
        data = data.value
    data = np.asarray(data)
    _check_real(data, "data")

    if errors is not None:
        errors = _unmask(errors, masks)
        if _is_quantity(errors):
            if unit is None:
                raise ValueError(
                    f"errors has unit {errors.unit} but data has none; give both or neither a unit"
                )
            errors = _convert(errors.value, errors.unit, unit, "errors")
        elif unit is not None and not errors_in_unit:
            raise ValueError(
                f"data has unit {unit} but errors is a plain array; give errors the same unit "
                "(e.g. errors * data.unit)"
            )
        errors = np.asarray(errors)
        _check_real(errors, "errors")
        errors = errors.astype(np.float64, copy=False)
        inf = np.isposinf(errors)  # errors = inf: the pixel carries no information
        if inf.any():
            masks.append(inf)

    if dq is not None or bad_bits is not None:
        masks.append(_dq_mask(dq, bad_bits))

    combined = None
    for m in masks:
        combined = _or_masks(combined, m)
    return _Inputs(data, errors, combined, unit)


def _unmask(x: Any, masks: list) -> Any:
    """``x`` without its mask, the mask appended to ``masks``: NumPy masked arrays and astropy's
    ``Masked`` arrays and quantities (``.unmasked``, ``.mask``)."""
    if np.ma.isMaskedArray(x):
        masks.append(np.ma.getmaskarray(x))
        return x.data
    if hasattr(x, "unmasked") and hasattr(x, "mask"):
        masks.append(np.asarray(x.mask, dtype=bool))
        return x.unmasked
    return x


def _dq_mask(dq: Any, bad_bits: Any) -> np.ndarray:
    if dq is None:
        raise ValueError("bad_bits requires dq (the integer data-quality array)")
    if bad_bits is None:
        raise ValueError("dq requires bad_bits: the integer whose set bits mark bad pixels (e.g. 0b1010)")
    dq = np.asarray(dq)
    if dq.dtype.kind not in "iu":
        raise ValueError(f"dq must be an integer data-quality array, got dtype {dq.dtype}")
    if isinstance(bad_bits, bool) or not isinstance(bad_bits, (int, np.integer)) or bad_bits <= 0:
        raise ValueError(f"bad_bits must be a positive int (a bitmask), got {bad_bits!r}")
    return (dq & int(bad_bits)) != 0
