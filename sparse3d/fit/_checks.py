"""Input validation of the fit: every refusal names the argument and what was expected."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse

from .factor import available_solvers


def _as_source_vector(value: Any, n: int, name: str, count: str = "nsources") -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return np.full(n, float(arr))
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({count},) = ({n},), got shape {arr.shape}")
    return arr


def _rows_all(test: Callable[[np.ndarray], np.ndarray], X: np.ndarray, keep: np.ndarray | None) -> bool:
    """Whether ``test(X)`` holds on every entry of ``X`` ``(npix, c)`` kept by ``keep``.

    ``keep`` is ``(npix,)`` (shared by the columns), ``(npix, 1)`` or ``(npix, k)`` (per
    frame; then ``X`` has 1 or ``k`` columns).  Works in blocks of rows so that no
    temporary of the size of ``X`` (a whole frame stack) is allocated.
    """
    if keep is not None and keep.ndim == 1:
        keep = keep[:, None]
    cols = max(X.shape[1], 1 if keep is None else keep.shape[1])
    chunk = max(256, (1 << 18) // cols)
    for i in range(0, X.shape[0], chunk):
        ok = test(X[i : i + chunk])
        if keep is not None:
            ok = ok | ~keep[i : i + chunk]
        if not ok.all():
            return False
    return True


def _check_solver(solver: str) -> str:
    """The solver name, ``"auto"`` resolved; ValueError when unknown or not installed."""
    if solver == "auto":
        return solver  # resolved per normal matrix (fit.factor._resolve_auto)
    if solver == "nd":
        return solver  # built in (numba)
    if solver not in ("qdldl", "superlu", "cholmod"):
        raise ValueError(f"solver must be 'auto', 'nd', 'qdldl', 'superlu' or 'cholmod', got {solver!r}")
    if solver not in available_solvers():
        if solver == "cholmod":
            raise ValueError(
                "solver='cholmod' needs the optional dependency cvxopt (GPL-3.0-or-later): "
                "pip install 'sparse3d[cholmod]'"
            )
        # qdldl is a runtime dependency: missing only from a broken or partial install
        raise ValueError(
            f"solver={solver!r} needs the package {solver} (a dependency of sparse3d): pip install {solver}"
        )
    return solver


def _check_imshape(imshape: Any) -> tuple[int, int]:
    try:
        H, W = (int(v) for v in imshape)
    except (TypeError, ValueError):
        raise ValueError(f"imshape must be a pair of ints (H, W), got {imshape!r}") from None
    if H <= 0 or W <= 0:
        raise ValueError(f"imshape must be positive, got {imshape!r}")
    return H, W


def _check_real(x: Any, name: str) -> None:
    """TypeError for complex (or non-numeric) values: the fit would drop imaginary parts."""
    dtype = np.asarray(x).dtype if not hasattr(x, "dtype") else np.dtype(x.dtype)
    if dtype.kind == "c":
        raise TypeError(
            f"{name} must be real; got complex dtype {dtype} (the fit would drop the imaginary "
            "parts: fit the real and imaginary parts separately)"
        )
    if dtype.kind not in "biuf":
        raise TypeError(f"{name} must hold real numbers; got dtype {dtype}")


def _check_design(A: Any, npix: int, imshape: Any) -> int:
    """Validate the design; return its number of sources (columns)."""
    from ..core import Sparse3D

    if isinstance(A, Sparse3D):
        if tuple(A.imshape) != tuple(imshape):
            raise ValueError(f"imshape={imshape!r} must be the Sparse3D's imshape {A.imshape}")
        _check_real(A, "A")
        return A.nsources
    if not (scipy.sparse.issparse(A) and A.ndim == 2):
        raise ValueError("A must be a Sparse3D or a 2-D scipy.sparse matrix or array")
    if A.shape[0] != npix:
        raise ValueError(f"A must have H * W = {npix} rows for imshape={imshape!r}, got shape {A.shape}")
    _check_real(A, "A")
    return A.shape[1]


def _check_mask(mask: Any, H: int, W: int, k: int | None = None) -> np.ndarray | None:
    """``~mask`` as ``(npix, 1)`` or, for a per-frame mask of a ``k``-frame stack, ``(npix, k)``.

    None when no pixel is masked.  ``k`` None: only an ``(H, W)`` mask is accepted.
    """
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise ValueError(f"mask must be a boolean array, got dtype {mask.dtype}")
    if mask.shape == (H, W):
        keep = ~mask.reshape(H * W, 1)
    elif k is not None and mask.shape == (H, W, k):
        keep = ~mask.reshape(H * W, k)
    else:
        allowed = f"(H, W) = {(H, W)}" + ("" if k is None else f" or (H, W, k) = {(H, W, k)}")
        raise ValueError(f"mask must have shape {allowed}, got {mask.shape}")
    return None if keep.all() else keep


def _check_data_finite(D: np.ndarray, keep: np.ndarray | None) -> None:
    if not _rows_all(np.isfinite, D, keep):
        raise ValueError("data contains non-finite values in unmasked pixels (mask them)")


def _check_errors(E: np.ndarray, keep: np.ndarray | None) -> None:
    if not _rows_all(lambda x: np.isfinite(x) & (x > 0), E, keep):
        raise ValueError("errors must be positive and finite in unmasked pixels")


def _error_scale(E: np.ndarray | None, keep: np.ndarray | None) -> float:
    """A power of two near the geometric mean of the smallest and largest unmasked error.

    Dividing the errors by it brings them near 1 whatever their units, so that
    ``1 / errors**2`` neither overflows (errors of 1e-160) nor underflows (1e160); exact.
    1.0 for unit errors.  ``keep`` as in :func:`_inverse_variance`.
    """
    if E is None or E.size == 0:
        return 1.0
    if keep is None:
        vals = E
    elif keep.shape == E.shape:
        vals = E[keep]
    else:  # a shared error map under per-frame masks: the pixels used by some frame
        vals = E[keep.any(axis=1)] if E.shape[1] == 1 else E[np.broadcast_to(keep, E.shape)]
    if vals.size == 0:
        return 1.0
    lo, hi = float(vals.min()), float(vals.max())
    return float(np.exp2(np.round(0.5 * (np.log2(lo) + np.log2(hi)))))


def _inverse_variance(E: np.ndarray | None, keep: np.ndarray | None, scale: float = 1.0) -> np.ndarray | None:
    """``(npix, g)`` scaled inverse variances ``(scale / E)**2`` of the error maps, 0 where masked.

    ``keep`` is ``(npix, 1)`` or ``(npix, k)`` (then ``E`` has 1 or ``k`` columns and the
    result ``k``).  None for unit errors (``E`` None) without a mask.
    """
    if E is None:
        return None if keep is None else keep.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ivar = (scale / E) ** 2
    if keep is not None:
        if keep.shape[1] != ivar.shape[1]:
            ivar = np.broadcast_to(ivar, (ivar.shape[0], max(ivar.shape[1], keep.shape[1]))).copy()
        ivar[~np.broadcast_to(keep, ivar.shape)] = 0.0
    return ivar


def _in_unit(value: Any, unit: Any, name: str) -> Any:
    """``value`` as plain numbers in the data's ``unit``: a ``Quantity`` is converted (refused
    when the data has no unit or the units do not convert); anything else is returned as is
    (plain numbers are in the data's unit)."""
    if not (hasattr(value, "unit") and hasattr(value, "to_value")):
        return value
    if unit is None:
        raise ValueError(f"{name} has unit {value.unit} but the data has none; give both or neither a unit")
    from ._inputs import _convert  # astropy is imported only when a value carries a unit

    return _convert(np.asarray(value.value), value.unit, unit, name)


def _check_prior(
    prior_mu: Any, prior_sigma: Any, n: int, what: str = "prior", unit: Any = None
) -> tuple[np.ndarray, np.ndarray]:
    """Prior precisions ``1 / prior_sigma**2`` and means (0 where there is no prior).

    ``what`` names the arguments in messages (``"background prior"`` for a background model).
    ``unit``: the data's unit (None: none); a ``Quantity`` mean or width is converted to it.
    """
    if prior_mu is not None and prior_sigma is None:
        raise ValueError(f"{what}_mu requires {what}_sigma")
    prior_prec = np.zeros(n)
    mu = np.zeros(n)
    prior_mu = _in_unit(prior_mu, unit, f"{what}_mu")
    prior_sigma = _in_unit(prior_sigma, unit, f"{what}_sigma")
    for value, name in ((prior_mu, f"{what}_mu"), (prior_sigma, f"{what}_sigma")):
        if value is not None:
            _check_real(value, name)
    if prior_sigma is not None:
        count = "nsources" if what == "prior" else "ncoefficients"
        sig = _as_source_vector(prior_sigma, n, f"{what}_sigma", count)
        if not np.all(sig > 0):  # also rejects NaN
            raise ValueError(f"{what}_sigma must be > 0 (np.inf for no prior)")
        prior_prec = 1.0 / sig**2
        if prior_mu is not None:
            mu = _as_source_vector(prior_mu, n, f"{what}_mu", count)
            if not np.all(np.isfinite(mu[prior_prec > 0])):
                raise ValueError(f"{what}_mu must be finite")
            mu = np.where(prior_prec > 0, mu, 0.0)
    return prior_prec, mu
