"""What a fit hands back: :class:`FitResult`, the singular-matrix error and the warning.

Also the two statistics a result reports, shared by :func:`~sparse3d.fit.fit_design` and
:class:`~sparse3d.fit.NormalEquations`: the chi-square of frames (:func:`_chi2`) and the
weight uncertainties from a factor (:func:`_weights_err`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import scipy.sparse


class SingularNormalMatrixError(np.linalg.LinAlgError):
    """The normal matrix is singular although every source has data.

    Raised when some sources are linearly dependent on others (e.g. two
    identical columns of the design matrix) and no prior regularises them.

    Attributes
    ----------
    sources : numpy.ndarray
        Indices (columns of the design matrix) of the sources found to be
        linearly dependent on the others; may be empty when they could not
        be identified.
    """

    def __init__(self, message: str, sources: np.ndarray | None = None) -> None:
        super().__init__(message)
        self.sources = np.zeros(0, dtype=np.intp) if sources is None else np.asarray(sources)


class UnconstrainedSourceWarning(UserWarning):
    """Some sources have no unmasked pixel in the image and no prior."""


@dataclass(frozen=True, eq=False)
class FitResult:
    """Result of :func:`fit_design`.

    Attributes
    ----------
    weights : numpy.ndarray
        Best-fit weights, shape ``(n,)`` for one image or ``(n, k)`` for a
        stack of ``k`` frames.  NaN for unconstrained sources.
    model : numpy.ndarray
        Best-fit model image(s) ``A @ weights``, shape ``(H, W)`` or
        ``(H, W, k)``, evaluated on every pixel (masked ones included);
        unconstrained sources contribute nothing.  Computed on first access
        (it is large for a stack and often not needed), so the result keeps a
        reference to the design matrix until then.
    chi2 : float or numpy.ndarray
        ``sum(((data - model) / errors)**2)`` over the unmasked pixels (unit
        errors when ``errors`` is None); a float, or shape ``(k,)`` for a
        stack.  The prior term is not included.
    n_pixels : int
        Number of unmasked pixels used in the fit.
    unconstrained : numpy.ndarray
        Boolean array of shape ``(n,)``: sources with no unmasked pixel and no
        prior, whose weights and errors are NaN.
    n_unconstrained : int
        ``unconstrained.sum()``.
    solver : str
        Sparse solver used: ``"qdldl"``, ``"superlu"`` or ``"cholmod"``.
    n_factorizations : int
        Number of normal matrices factorised (one per distinct error map).
    weights_err : numpy.ndarray or None
        1-sigma uncertainties ``sqrt(diag(N^-1))`` of the weights, shape
        ``(n,)``, or ``(n, k)`` when the frames have different error maps;
        NaN for unconstrained sources.  Computed on first access (a selected
        inversion of the Cholesky factor, roughly the cost of one more
        factorisation).  None when the fit was run with
        ``return_errors=False``.
    """

    weights: np.ndarray
    chi2: float | np.ndarray
    n_pixels: int
    unconstrained: np.ndarray
    solver: str
    n_factorizations: int
    _model_fn: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    _weights_err_fn: Callable[[], np.ndarray] | None = field(default=None, repr=False)

    @cached_property
    def model(self) -> np.ndarray:
        """Best-fit model image(s), computed on first access."""
        assert self._model_fn is not None
        model = self._model_fn()
        object.__setattr__(self, "_model_fn", None)  # release the design matrix
        return model

    @property
    def n_unconstrained(self) -> int:
        """Number of sources without data and without a prior."""
        return int(np.count_nonzero(self.unconstrained))

    @cached_property
    def weights_err(self) -> np.ndarray | None:
        """1-sigma uncertainties of the weights (computed on first access)."""
        if self._weights_err_fn is None:
            return None
        err = self._weights_err_fn()
        object.__setattr__(self, "_weights_err_fn", None)  # release the factor
        return err


def _warn_unconstrained(unconstrained: np.ndarray, stacklevel: int) -> None:
    """Warn once, with their number, when some sources are unconstrained."""
    n_unc = int(np.count_nonzero(unconstrained))
    if n_unc:
        warnings.warn(
            f"{n_unc} of {unconstrained.size} source(s) have no unmasked pixel in the image and no "
            "prior; their weights and weights_err are NaN.",
            UnconstrainedSourceWarning,
            stacklevel=stacklevel + 1,
        )


def _weights_err(factor: Any, free: np.ndarray, scale: np.ndarray | float = 1.0) -> np.ndarray:
    """``scale * sqrt(diag(N'^-1))`` from the factor of ``N'`` over the ``free`` sources; NaN elsewhere.

    ``scale`` (``(n,)`` or a float) undoes the scaling of the normal matrix.
    """
    err = np.full(free.size, np.nan)
    err[free] = np.sqrt(factor.inv_diag())
    err *= scale
    return err


def _chi2(
    A: scipy.sparse.csr_matrix,
    wz: np.ndarray,
    D: np.ndarray,
    ivar: np.ndarray | None,
    groups: list[np.ndarray],
    keep: np.ndarray | None,
    err_scale: float = 1.0,
) -> np.ndarray:
    """Chi-square of each frame of ``D`` for the weights ``wz`` (n, k).

    ``ivar`` holds ``(err_scale / errors)**2``: residuals are divided by ``err_scale``
    before they are squared. The model is evaluated in blocks of rows so that no
    image-sized temporary is allocated.
    """
    npix, k = D.shape
    col_of_frame = None
    if ivar is not None and ivar.shape[1] > 1:
        col_of_frame = np.empty(k, dtype=np.intp)
        for gi, frames in enumerate(groups):
            col_of_frame[frames] = gi
    chunk = max(256, (1 << 18) // max(1, k))
    out = np.zeros(k)
    indptr = A.indptr
    for i in range(0, npix, chunk):
        j = min(i + chunk, npix)
        a, b = indptr[i], indptr[j]
        block = scipy.sparse.csr_matrix(
            (A.data[a:b], A.indices[a:b], indptr[i : j + 1] - a), shape=(j - i, A.shape[1])
        )
        r = block @ wz
        np.subtract(D[i:j], r, out=r)
        if err_scale != 1.0:
            r /= err_scale
        if keep is not None:
            r[~keep[i:j]] = 0.0
        np.square(r, out=r)
        if ivar is not None:
            r *= ivar[i:j] if col_of_frame is None else ivar[i:j][:, col_of_frame]
        out += r.sum(axis=0)
    return out
