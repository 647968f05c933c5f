"""Validation of what the scene fits take: images, error maps, masks, source positions.

Every refusal names the argument and what was expected. The pixel weights the scene fits
need for their own bookkeeping (per-source chi-square, column norms) are the inverse
variances, 0 on masked pixels; what is handed down to :mod:`sparse3d.fit` is the
equivalent ``errors``/``mask`` pair that layer accepts today.
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
    """

    data: np.ndarray
    ivar: np.ndarray
    fit_errors: np.ndarray | None
    fit_mask: np.ndarray | None

    @property
    def n_pixels(self) -> int:
        """Number of unmasked pixels (summed over frames when the weights differ per frame)."""
        return int(np.count_nonzero(self.ivar))


def check_image(data: Any, *, ndim: int, name: str = "data") -> tuple[np.ndarray, np.ndarray | None]:
    """``data`` as float64 with ``ndim`` dimensions, and the mask of a masked array (or None)."""
    mask = None
    if np.ma.isMaskedArray(data):
        mask = np.ma.getmaskarray(data)
        data = np.ma.getdata(data)
    arr = np.asarray(data)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        shape = "(H, W)" if ndim == 2 else "(H, W, nframes)"
        raise ValueError(f"{name} must have shape {shape}, got {arr.ndim}-D shape {arr.shape}")
    return np.array(arr, dtype=np.float64), mask


def pixel_weights(data: Any, errors: Any, mask: Any, *, ndim: int) -> PixelWeights:
    """Validate ``data`` (``ndim`` 2 or 3), ``errors`` and ``mask`` into :class:`PixelWeights`.

    ``errors`` may be ``(H, W)`` or (for a stack) the shape of ``data``; ``np.inf`` marks a
    pixel as masked. ``mask`` (True = ignore) may be ``(H, W)`` or the shape of ``data``; a
    masked array's mask is combined with it. Non-finite data must be masked.
    """
    D, dmask = check_image(data, ndim=ndim)
    H, W = D.shape[:2]
    allowed = {(H, W), D.shape}
    bad = np.zeros(D.shape, dtype=bool) if dmask is None else dmask.copy()
    if mask is not None:
        m = np.asarray(mask)
        if m.dtype != bool:
            raise ValueError(f"mask must be a boolean array, got dtype {m.dtype}")
        if m.shape not in allowed:
            raise ValueError(f"mask must have shape {(H, W)} or the shape of data {D.shape}, got {m.shape}")
        bad |= m if m.shape == D.shape else np.broadcast_to(m.reshape(m.shape + (1,) * (D.ndim - 2)), D.shape)
    if errors is None:
        E = np.ones((H, W))
    else:
        E = np.asarray(errors, dtype=np.float64)
        if E.shape not in allowed:
            raise ValueError(f"errors must have shape {(H, W)} or the shape of data {D.shape}, got {E.shape}")
        if np.any(np.isnan(E)) or np.any(E <= 0):
            raise ValueError("errors must be positive (np.inf marks a masked pixel); got NaN or values <= 0")
    # one weight map per frame only when something differs between frames
    per_frame = D.ndim == 3 and (E.shape == D.shape or dmask is not None or np.ndim(mask) == 3)
    if per_frame:
        Efull = np.broadcast_to(E if E.shape == D.shape else E[:, :, None], D.shape)
        bad = bad | ~np.isfinite(Efull)
        with np.errstate(divide="ignore"):
            ivar = np.where(bad, 0.0, 1.0 / Efull**2)
    else:
        bad2 = (bad if bad.ndim == 2 else bad.any(axis=2)) | ~np.isfinite(E)
        with np.errstate(divide="ignore"):
            ivar = np.where(bad2, 0.0, 1.0 / E**2)
        bad = bad2 if D.ndim == 2 else np.broadcast_to(bad2[:, :, None], D.shape)
    if not np.all(np.isfinite(D[~bad])):
        raise ValueError("data contains non-finite values in unmasked pixels (mask them)")
    D[bad] = 0.0
    # one (H, W) map for the fit layer: the mean weight over frames (exact when shared)
    iv2 = ivar if ivar.ndim == 2 else ivar.mean(axis=2)
    fmask = iv2 == 0
    with np.errstate(divide="ignore"):
        ferr = np.where(fmask, 1.0, 1.0 / np.sqrt(iv2))
    return PixelWeights(D, ivar, ferr, fmask if fmask.any() else None)


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


def check_source_vector(value: Any, n: int, name: str, *, positive: bool = False) -> np.ndarray | None:
    """A scalar or ``(n,)`` float argument as ``(n,)``; None stays None."""
    if value is None:
        return None
    a = np.asarray(value, dtype=np.float64)
    if a.ndim == 0:
        a = np.full(n, float(a))
    if a.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape (nsources,) = ({n},), got shape {a.shape}")
    if positive and not np.all(a > 0):
        raise ValueError(f"{name} must be > 0 (np.inf for none)")
    return a


def check_imshape(imshape: Any, data: np.ndarray) -> tuple[int, int]:
    """``imshape`` (default: the first two axes of ``data``), which must match ``data``."""
    if imshape is None:
        return data.shape[0], data.shape[1]
    try:
        H, W = (int(v) for v in imshape)
    except (TypeError, ValueError):
        raise ValueError(f"imshape must be a pair of ints (H, W), got {imshape!r}") from None
    if (H, W) != data.shape[:2]:
        raise ValueError(f"imshape {(H, W)} does not match the shape of data {data.shape}")
    return H, W
