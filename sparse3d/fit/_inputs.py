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

:func:`check_inputs` (public) adds the shape and value checks and returns a
:class:`FitInputs`: the validation every fit of images does first, for the layers above
(:mod:`sparse3d.photometry`) and for users' own fitting code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._checks import (
    _check_data_finite,
    _check_errors,
    _check_imshape,
    _check_mask,
    _check_real,
)


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
    names: list[str] = []  # the argument each mask came from (masks[i] <- names[i])
    if mask is not None:
        masks.append(_check_mask_values(mask))
        names.append("mask")
    if _is_nddata(data):
        nd = data
        unit = nd.unit
        if isinstance(unit, str):  # a duck-typed NDData may hold a unit string
            unit = _units().Unit(unit)
        data = nd.data
        if nd.mask is not None:
            masks.append(_check_mask_values(nd.mask, "data.mask"))
            names.append("data.mask")
        if nd.uncertainty is not None:
            if errors is not None:
                raise ValueError("errors given twice: as errors= and as data.uncertainty; pass one of them")
            errors = _read_uncertainty(nd.uncertainty, unit)
            errors_in_unit = True
    data = _unmask(data, masks)
    names += ["data's mask"] * (len(masks) - len(names))
    if _is_quantity(data):
        unit = data.unit
        data = data.value
    data = np.asarray(data)
    _check_real(data, "data")

    if errors is not None:
        errors = _unmask(errors, masks)
        names += ["errors' mask"] * (len(masks) - len(names))
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
        if errors.dtype == bool:
            raise TypeError(
                "errors must hold real numbers (1-sigma uncertainties), got a boolean array "
                "(a mask goes to mask=)"
            )
        errors = errors.astype(np.float64, copy=False)
        inf = np.isposinf(errors)  # errors = inf: the pixel carries no information
        if inf.any():
            masks.append(inf)
            names.append("errors")

    if dq is not None or bad_bits is not None:
        masks.append(_dq_mask(dq, bad_bits))
        names.append("dq")

    _check_mask_shapes(masks, names, data.shape)
    combined = None
    for m in masks:
        combined = _or_masks(combined, m)
    return _Inputs(data, errors, combined, unit)


def _check_mask_shapes(masks: list, names: list[str], shape: tuple[int, ...]) -> None:
    """ValueError naming the argument when a mask from ``data.mask``, ``errors`` (its ``inf``
    pixels) or ``dq`` has neither the image shape ``(H, W)`` nor the data's shape.

    ``mask=`` itself is checked with the stack's frame count later (by the fit).
    """
    if len(shape) not in (2, 3):
        return  # the data's own shape error comes first
    allowed = {shape[:2], shape}
    for m, name in zip(masks, names):
        if name != "mask" and np.shape(m) not in allowed:
            want = f"(H, W) = {shape[:2]}" + ("" if len(shape) == 2 else f" or the shape of data {shape}")
            raise ValueError(f"{name} must have shape {want}, got {np.shape(m)}")


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


@dataclass(frozen=True)
class FitInputs:
    """Images, uncertainties, mask and unit read and validated by :func:`check_inputs`.

    Attributes
    ----------
    data : numpy.ndarray
        float64, ``(H, W)`` or ``(H, W, k)`` (a stack along the last axis); plain values (no
        mask, no unit). Masked pixels hold whatever the input held (possibly NaN).
    errors : numpy.ndarray or None
        float64 1-sigma uncertainties in the unit of ``data``, ``(H, W)`` or the shape of
        ``data``; positive and finite on every unmasked pixel (``np.inf`` only where masked).
        None: none given.
    mask : numpy.ndarray or None
        bool, ``(H, W)`` or ``(H, W, k)``, True = ignore: ``mask=``, the data's own mask,
        ``errors=np.inf``, ``dq & bad_bits`` and an uncertainty's ``ivar == 0`` combined.
        None when nothing is masked.
    unit : astropy unit or None
        The unit of ``data`` (and of ``errors``), if it carried one.
    """

    data: np.ndarray
    errors: np.ndarray | None
    mask: np.ndarray | None
    unit: Any

    @property
    def imshape(self) -> tuple[int, int]:
        """``(H, W)``."""
        return self.data.shape[0], self.data.shape[1]

    def in_data_unit(self, value: Any, name: str = "value") -> Any:
        """``value`` (e.g. a flux prior) as plain numbers in the unit of :attr:`data`.

        A ``Quantity`` is converted to :attr:`unit`; refused (ValueError naming ``name``) when
        the data has no unit or the units do not convert. Anything else is returned as is:
        plain numbers are taken to be in the data's unit.
        """
        from ._checks import _in_unit

        return _in_unit(value, self.unit, name)


def check_inputs(
    data: Any,
    errors: Any = None,
    mask: Any = None,
    *,
    dq: Any = None,
    bad_bits: int | None = None,
    imshape: tuple[int, int] | None = None,
    ndim: int | None = None,
) -> FitInputs:
    """Read and validate the image inputs of a fit: what :func:`fit_design` accepts.

    Parameters
    ----------
    data : array_like, numpy.ma.MaskedArray, Quantity or NDData-like
        One image ``(H, W)`` or a stack ``(H, W, k)``; a masked array's mask is honoured, an
        ``NDData``/``CCDData``-like object's ``.mask``, ``.uncertainty`` and ``.unit`` are read
        (see :func:`fit_design`).
    errors : array_like, optional
        1-sigma uncertainties, ``(H, W)`` or the shape of ``data``; ``np.inf`` masks a pixel.
        A ``Quantity`` when the data has a unit.
    mask : array_like of bool, optional
        ``(H, W)`` or ``(H, W, k)``; True marks pixels to ignore (integers only as 0/1).
    dq : array_like of int, optional
        Data-quality bitmask, ``(H, W)`` or the shape of ``data``; requires ``bad_bits``.
    bad_bits : int, optional
        The bits of ``dq`` that mark bad pixels.
    imshape : tuple of int, optional
        ``(H, W)`` the data must have.
    ndim : {2, 3}, optional
        Require one image (2) or a stack (3).

    Returns
    -------
    FitInputs

    Raises
    ------
    ValueError
        On a wrong shape, non-finite data in an unmasked pixel, errors that are not positive
        and finite where unmasked, a non-boolean mask, contradictory units or an incomplete
        ``dq``/``bad_bits`` pair; the message names the argument.
    TypeError
        On complex or non-numeric data or errors.

    Examples
    --------
    >>> import numpy as np
    >>> from sparse3d.fit import check_inputs
    >>> img = np.ma.masked_invalid([[1.0, np.nan], [3.0, 4.0]])
    >>> inp = check_inputs(img, errors=np.ones((2, 2)))
    >>> inp.mask.tolist(), inp.imshape
    ([[False, True], [False, False]], (2, 2))
    """
    inputs = _read_inputs(data, errors, mask, dq, bad_bits)
    D = np.asarray(inputs.data)
    if ndim is not None and D.ndim != ndim:
        want = "(H, W)" if ndim == 2 else "(H, W, nframes)"
        raise ValueError(f"data must have shape {want}, got {D.ndim}-D shape {D.shape}")
    if D.ndim not in (2, 3):
        raise ValueError(f"data must have shape (H, W) or (H, W, k), got {D.ndim}-D shape {D.shape}")
    D = D.astype(np.float64, copy=False)
    H, W = D.shape[:2]
    if imshape is not None and _check_imshape(imshape) != (H, W):
        raise ValueError(f"imshape {tuple(imshape)} does not match the shape of data {D.shape}")
    k = D.shape[2] if D.ndim == 3 else None
    m = inputs.mask
    if m is not None:
        m = np.asarray(m, dtype=bool)
        if k is not None and m.shape == (H, W, 1):
            m = m[:, :, 0]
    keep = _check_mask(m, H, W, k)  # (npix, 1 or k), None when nothing is masked
    E = inputs.errors
    if E is not None:
        E = np.asarray(E, dtype=np.float64)
        if E.shape not in ((H, W), D.shape):
            raise ValueError(f"errors must have shape {(H, W)} or the shape of data {D.shape}, got {E.shape}")
        _check_errors(E.reshape(H * W, -1), keep)
    _check_data_finite(D.reshape(H * W, -1), keep)
    return FitInputs(D, E, None if keep is None else m, inputs.unit)
