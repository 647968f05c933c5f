"""Validation of what the scene fits take: images, error maps, masks, source positions.

The images are read and validated by the fit layer's :func:`sparse3d.fit.check_inputs` (the
one place that knows masked arrays, NDData, units, ``errors=inf`` and ``dq`` bitmasks); here
they become the pixel weights the scene fits need for their own bookkeeping (per-source
chi-square, column norms): the inverse variances, 0 on masked pixels, and the equivalent
``errors``/``mask`` pair handed down to the fit layer. Every refusal names the argument.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PixelWeights:
    """Data and pixel weights of one image or a frame stack, validated.

    Attributes
    ----------
    data : numpy.ndarray
        float64, ``(H, W)`` or ``(H, W, k)``; masked pixels set to 0.
    ivar : numpy.ndarray
        Inverse variances, ``(H, W)`` (shared by all frames) or the shape of ``data``;
        0 on masked pixels.
    fit_errors, fit_mask : numpy.ndarray or None
        What :func:`sparse3d.fit.fit_design` takes for one ``(H, W)`` map: errors with
        masked pixels set to 1, and the boolean mask (None when nothing is masked).
    inputs : sparse3d.fit.FitInputs or None
        The validated inputs (their ``unit`` was dropped from ``data``): flux priors given as
        Quantities are converted to it (:meth:`~sparse3d.fit.FitInputs.in_data_unit`).
    """

    data: np.ndarray
    ivar: np.ndarray
    fit_errors: np.ndarray | None
    fit_mask: np.ndarray | None
    inputs: Any = None

    @property
    def n_pixels(self) -> int:
        """Number of unmasked pixels (summed over frames when the weights differ per frame)."""
        return int(np.count_nonzero(self.ivar))


def pixel_weights(
    data: Any,
    errors: Any,
    mask: Any,
    *,
    ndim: int,
    dq: Any = None,
    bad_bits: int | None = None,
    imshape: Any = None,
) -> PixelWeights:
    """Validate the images (:func:`sparse3d.fit.check_inputs`) into :class:`PixelWeights`.

    Everything the fit layer accepts is accepted here: ``data`` as an array, a masked array
    or an ``NDData``-like object (its unit is dropped: fluxes come out in the data's unit),
    ``errors`` ``(H, W)`` or the shape of ``data`` (``np.inf`` masks a pixel), ``mask``
    ``(H, W)`` or the shape of ``data``, ``dq`` with ``bad_bits``.
    """
    from ..fit import check_inputs

    inp = check_inputs(data, errors, mask, dq=dq, bad_bits=bad_bits, imshape=imshape, ndim=ndim)
    D = np.array(inp.data, dtype=np.float64)  # a copy: masked pixels are zeroed below
    H, W = D.shape[:2]
    E = np.ones((H, W)) if inp.errors is None else inp.errors
    m = np.zeros((H, W), dtype=bool) if inp.mask is None else inp.mask
    # one weight map per frame only when something differs between frames
    per_frame = D.ndim == 3 and (E.shape == D.shape or m.ndim == 3)
    if per_frame:
        Efull = np.broadcast_to(E if E.shape == D.shape else E[:, :, None], D.shape)
        bad = np.broadcast_to(m if m.ndim == 3 else m[:, :, None], D.shape)
        with np.errstate(divide="ignore"):
            ivar = np.where(bad, 0.0, 1.0 / Efull**2)
    else:
        with np.errstate(divide="ignore"):
            ivar = np.where(m, 0.0, 1.0 / E**2)
        bad = m if D.ndim == 2 else np.broadcast_to(m[:, :, None], D.shape)
    D[bad] = 0.0
    # one (H, W) map for the fit layer: the mean weight over frames (exact when shared)
    ferr, fmask = fit_maps(ivar if ivar.ndim == 2 else ivar.mean(axis=2))
    return PixelWeights(D, ivar, ferr, fmask, inp)


def fit_maps(ivar: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(errors, mask)`` as :func:`sparse3d.fit.fit_design` takes them for the inverse
    variances ``ivar``: errors ``1 / sqrt(ivar)`` (1 on masked pixels) and the mask
    ``ivar == 0`` (None when nothing is masked)."""
    mask = ivar == 0
    errors = 1.0 / np.sqrt(np.where(mask, 1.0, ivar))
    return errors, mask if mask.any() else None


def check_positions(row: Any, col: Any) -> tuple[np.ndarray, np.ndarray]:
    """``row``, ``col`` as finite float64 ``(nsources,)`` arrays of equal length."""
    out = []
    for name, v in (("row", row), ("col", col)):
        a = np.array(v, dtype=np.float64)  # a copy: the fits update positions in place
        if a.ndim != 1:
            raise ValueError(
                f"{name} must be a 1-D array of source positions (nsources,), got shape {a.shape}"
            )
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} must be finite (source positions in pixels); got NaN or inf")
        out.append(a)
    if out[0].shape != out[1].shape:
        raise ValueError(f"row and col must have the same length, got {out[0].size} and {out[1].size}")
    return out[0], out[1]


def check_source_vector(
    value: Any, n: int, name: str, *, positive: bool = False, flux_of: Any = None
) -> np.ndarray | None:
    """A scalar or ``(n,)`` float argument as ``(n,)``; None stays None.

    ``flux_of``: for a flux (prior), the :class:`~sparse3d.fit.FitInputs` of the data: a
    ``Quantity`` is converted to the data's unit. None (default): pixels, plain numbers only.
    """
    if value is None:
        return None
    if flux_of is not None:
        value = flux_of.in_data_unit(value, name)
    elif hasattr(value, "unit") and hasattr(value, "to_value"):
        raise ValueError(f"{name} must be plain numbers (pixels), got a Quantity with unit {value.unit}")
    a = np.asarray(value, dtype=np.float64)
    if a.ndim == 0:
        a = np.full(n, float(a))
    if a.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape (nsources,) = ({n},), got shape {a.shape}")
    if positive and not np.all(a > 0):
        raise ValueError(f"{name} must be > 0 (np.inf for none)")
    return a
