"""What a fit hands back: :class:`FitResult`, the singular-matrix error and the warning.

Also the two statistics a result reports, shared by :func:`~sparse3d.fit.fit_design` and
:class:`~sparse3d.fit.NormalEquations`: the chi-square of frames (:func:`_chi2`) and the
weight uncertainties from a factor (:func:`_weights_err`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
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
    background : numpy.ndarray
        Indices of the background model's coefficients found to be linearly
        dependent on the other parameters (empty without a background model).
    """

    def __init__(
        self, message: str, sources: np.ndarray | None = None, background: np.ndarray | None = None
    ) -> None:
        super().__init__(message)
        self.sources = np.zeros(0, dtype=np.intp) if sources is None else np.asarray(sources)
        self.background = np.zeros(0, dtype=np.intp) if background is None else np.asarray(background)


class UnconstrainedSourceWarning(UserWarning):
    """Some sources have no unmasked pixel in the image and no prior."""


@dataclass(frozen=True, eq=False)
class FitResult:
    """Result of :func:`fit_design` (and of ``Sparse3D.fit``, ``ROISparse3D.fit``).

    The design's parameters are the ``n`` source weights, then the ``nb`` coefficients of
    the background model, if any (:mod:`sparse3d.fit.background`); both come from one
    solve of the same normal equations.  Everything image-sized or costly (model,
    residuals, uncertainties, per-source statistics, flags, covariances) is computed on
    first access, so the result keeps references to the design, the frames (a float64 copy
    when they were not float64), the masks and the factorisations while it lives (with
    ``return_errors=False`` the factorisations are freed at once).

    Attributes
    ----------
    weights : numpy.ndarray or astropy.units.Quantity
        Best-fit weights, shape ``(n,)`` for one image or ``(n, k)`` for a stack of ``k``
        frames; NaN for unconstrained sources.  A ``Quantity`` in the data's unit when the
        data had one (the design is unitless).
    model : numpy.ndarray
        Best-fit model image(s) ``A @ weights`` plus the background image, shape
        ``(H, W)`` or ``(H, W, k)``, on every pixel (masked ones included); unconstrained
        sources contribute nothing.
    chi2 : float or numpy.ndarray
        ``sum(((data - model) / errors)**2)`` over the unmasked pixels (unit errors when
        ``errors`` is None); a float, or shape ``(k,)`` for a stack.  No prior term.
    n_pixels : int or numpy.ndarray
        Number of unmasked pixels used; shape ``(k,)`` when the mask differs per frame.
    unconstrained : numpy.ndarray
        Boolean ``(n,)``: sources with no unmasked pixel (in at least one frame) and no
        prior, whose weights and errors are NaN (in those frames).
    n_unconstrained : int
        ``unconstrained.sum()``.
    solver : str
        Sparse solver used: ``"qdldl"``, ``"superlu"`` or ``"cholmod"``.
    n_factorizations : int
        Number of normal matrices factorised (one per distinct error map and mask).
    weights_err : numpy.ndarray or None
        1-sigma uncertainties ``sqrt(diag(N^-1))`` of the weights (the full normal matrix,
        background included), shape ``(n,)``, or ``(n, k)`` when the frames have
        different error maps or masks; NaN for unconstrained sources.  Computed by
        selected inversion of the Cholesky factor.  None with ``return_errors=False``.
    background : numpy.ndarray or None
        Background coefficients ``(nb,)`` or ``(nb, k)`` (one background per frame); None
        without a background model.  NaN for a coefficient without data and prior (a grid
        node over a fully masked area; it then contributes nothing to the images).
    background_err : numpy.ndarray or None
        Their 1-sigma uncertainties, shaped like ``weights_err``.
    background_image : numpy.ndarray or None
        The fitted background ``B @ background``, ``(H, W)`` or ``(H, W, k)``.
    background_model : sparse3d.fit.BackgroundModel or None
        The model the background was fitted with.
    residuals : numpy.ndarray
        ``data - model``, ``(H, W)`` or ``(H, W, k)``, NaN on masked pixels.
    source_chi2, source_npix : numpy.ndarray
        Per source, the chi-square over its pixels (the non-zero entries of its design
        column, i.e. its stamp inside the image) and the number of those pixels that are
        unmasked: ``(n,)`` or ``(n, k)``.
    flags : numpy.ndarray
        ``uint8`` bit flags per source, ``(n,)`` or ``(n, k)``: see
        :class:`~sparse3d.fit.FitFlags` (unconstrained, partly masked, masked core,
        saturated, blended above ``BLEND_THRESHOLD``; :meth:`blended` for another
        threshold).
    unit : astropy.units.UnitBase or None
        The data's unit, when it had one.
    """

    weights: Any
    chi2: float | np.ndarray
    n_pixels: int | np.ndarray
    unconstrained: np.ndarray
    solver: str
    n_factorizations: int
    _model_fn: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    _weights_err_fn: Callable[[], np.ndarray] | None = field(default=None, repr=False)
    background: Any = None
    background_model: Any = None
    unit: Any = None
    _context: Any = field(default=None, repr=False)
    _reshape: Callable[[np.ndarray], np.ndarray] | None = field(default=None, repr=False)

    # -- units and layout ------------------------------------------------------------------
    def _out(self, x: np.ndarray | None) -> Any:
        """An image-like output in the caller's layout and the data's unit."""
        if x is None:
            return None
        if self._reshape is not None:
            x = self._reshape(x)
        return _with_unit(x, self.unit)

    def _with_unit(self, unit: Any) -> FitResult:
        """This result with weights and background in ``unit`` (a no-op for None)."""
        if unit is None:
            return self
        return replace(
            self,
            unit=unit,
            weights=_with_unit(self.weights, unit),
            background=_with_unit(self.background, unit),
        )

    # -- images ----------------------------------------------------------------------------
    @cached_property
    def model(self) -> Any:
        """Best-fit model image(s), background included, computed on first access."""
        assert self._model_fn is not None
        model = self._model_fn()
        object.__setattr__(self, "_model_fn", None)  # release the design matrix
        return _with_unit(model, self.unit)

    @cached_property
    def background_image(self) -> Any:
        """The fitted background image(s); None without a background model."""
        if self._context is None:
            return None
        return self._out(self._context.background_image())

    @cached_property
    def residuals(self) -> Any:
        """``data - model`` image(s), NaN on masked pixels, computed on first access."""
        return self._out(self._needs_context("residuals").residuals())

    # -- uncertainties ---------------------------------------------------------------------
    @property
    def n_unconstrained(self) -> int:
        """Number of sources without data and without a prior."""
        return int(np.count_nonzero(self.unconstrained))

    @cached_property
    def _params_err(self) -> np.ndarray | None:
        if self._weights_err_fn is None:
            return None
        err = self._weights_err_fn()
        object.__setattr__(self, "_weights_err_fn", None)
        return err

    @cached_property
    def weights_err(self) -> Any:
        """1-sigma uncertainties of the weights (computed on first access)."""
        err = self._params_err
        return None if err is None else _with_unit(err[: self.unconstrained.size], self.unit)

    @property
    def background_labels(self) -> list[str] | None:
        """One name per background coefficient (e.g. ``"u^1 v^0"``); None without a background."""
        if self.background_model is None or self._context is None:
            return None
        return self.background_model.labels(self._context.imshape)

    @cached_property
    def background_err(self) -> Any:
        """1-sigma uncertainties of the background coefficients (computed on first access)."""
        err = self._params_err
        if err is None or self.background is None:
            return None
        return _with_unit(err[self.unconstrained.size :], self.unit)

    def covariance(self, neighbours: bool = True, frame: int | None = None) -> scipy.sparse.csr_array:
        """Covariance of the parameters on the normal matrix's pattern, by selected inversion.

        The entries of ``N^-1`` (``N``: the normal matrix including priors) between each
        source and the sources it overlaps, the background coefficients and itself --
        the pattern of ``N`` -- without forming the dense inverse (the selected inversion
        that gives :attr:`weights_err` computes them on the factor's pattern, which
        contains ``N``'s).

        Parameters
        ----------
        neighbours : bool, optional
            True (default): every entry on the pattern of ``N``.  False: the diagonal
            only (the variances, ``weights_err**2``).
        frame : int, optional
            For a stack fitted with several normal matrices (``n_factorizations > 1``),
            the frame whose covariance is wanted; not needed otherwise.

        Returns
        -------
        scipy.sparse.csr_array
            Symmetric, shape ``(n + nb, n + nb)``: sources first, then background
            coefficients; rows and columns of unconstrained parameters are empty.  In
            the data's unit squared (as plain numbers).
        """
        ctx = self._needs_context("covariance()")
        gi = 0
        if len(ctx.groups) > 1:
            if frame is None:
                raise ValueError(
                    f"this stack was fitted with {len(ctx.groups)} normal matrices (different error maps "
                    "or masks per frame): pass frame= to covariance()"
                )
            k = ctx.D.shape[1]
            if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)) or not -k <= frame < k:
                raise ValueError(f"frame must be in [0, {k}) (an int), got {frame!r}")
            gi = next(i for i, g in enumerate(ctx.groups) if frame % k in g.frames)
        return scipy.sparse.csr_array(ctx.covariance(gi, neighbours))

    # -- per-source diagnostics ------------------------------------------------------------
    def _needs_context(self, what: str) -> Any:
        if self._context is None:
            raise ValueError(f"{what} is not available for this result (it was built without its data)")
        return self._context

    def _per_source(self, x: np.ndarray) -> np.ndarray:
        return x if self._context.stack else x[:, 0]

    @cached_property
    def _source_stats(self) -> tuple[np.ndarray, np.ndarray]:
        chi2, npix = self._needs_context("source_chi2").source_stats()
        return self._per_source(chi2), self._per_source(np.array(npix))

    @property
    def source_chi2(self) -> np.ndarray:
        """Chi-square of each source over its pixels, ``(n,)`` or ``(n, k)``."""
        return self._source_stats[0]

    @property
    def source_npix(self) -> np.ndarray:
        """Number of unmasked pixels of each source, ``(n,)`` or ``(n, k)``."""
        return self._source_stats[1]

    @cached_property
    def flags(self) -> np.ndarray:
        """Bit flags per source (:class:`~sparse3d.fit.FitFlags`), ``(n,)`` or ``(n, k)``."""
        from .diagnostics import BLEND_THRESHOLD

        return self._per_source(self._needs_context("flags").flags(BLEND_THRESHOLD))

    def blended(self, threshold: float = 0.1) -> np.ndarray:
        """Boolean ``(n,)`` or ``(n, k)``: a neighbour's normalised overlap exceeds ``threshold``.

        The overlap of sources ``i`` and ``j`` is ``|N_ij| / sqrt(N_ii N_jj)`` on the data
        part of the normal matrix (errors and masks included, no prior).
        """
        from .diagnostics import FitFlags

        if not 0 <= threshold < 1:
            raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
        flags = self._per_source(self._needs_context("blended()").flags(threshold))
        return (flags & FitFlags.BLENDED) != 0

    # -- tables ----------------------------------------------------------------------------
    def to_xarray(self, part: str = "sources") -> Any:
        """The result as an ``xarray.Dataset``, convertible to pandas with ``.to_dataframe()``.

        Parameters
        ----------
        part : {"sources", "background"}, optional
            ``"sources"`` (default): dims ``source`` (and ``frame`` for a stack), variables
            ``weights``, ``weights_err``, ``source_chi2``, ``source_npix``, ``flags``,
            ``unconstrained`` (and the per-frame ``chi2``, ``n_pixels``).
            ``"background"``: dims ``term`` (and ``frame``), variables ``background``,
            ``background_err``.

        Returns
        -------
        xarray.Dataset
            Attributes: ``unit`` (a string, when the data had one), ``solver``,
            ``n_factorizations``, ``chi2`` and ``n_pixels`` (one image), the flag bits.
        """
        from ..xarray import fit_result_to_xarray  # the integration; xarray loads on request

        return fit_result_to_xarray(self, part)

    def to_table(self) -> Any:
        """The per-source result as an astropy ``QTable`` (one row per source).

        Columns ``source``, ``weights`` and ``weights_err`` (Quantities when the data had a
        unit), ``source_chi2``, ``source_npix``, ``flags``, ``unconstrained``; for a stack
        the per-frame columns hold ``(k,)`` vectors.  ``meta`` holds ``chi2``, ``solver``
        and the background coefficients.

        Raises
        ------
        ImportError
            When astropy is not installed.
        """
        try:
            from astropy.table import QTable
        except ImportError:
            raise ImportError(
                "FitResult.to_table() needs astropy (pip install astropy); "
                "FitResult.to_xarray().to_dataframe() gives a pandas table without it"
            ) from None
        n = self.unconstrained.size
        t = QTable()
        t["source"] = np.arange(n)
        t["weights"] = self.weights
        if self.weights_err is not None:
            t["weights_err"] = self.weights_err  # (n,) when every frame shares one normal matrix
        if self._context is not None:
            t["source_chi2"] = self.source_chi2
            t["source_npix"] = self.source_npix
            t["flags"] = self.flags
        t["unconstrained"] = self.unconstrained
        t.meta["chi2"] = self.chi2
        t.meta["solver"] = self.solver
        if self.background is not None:
            t.meta["background"] = self.background
            t.meta["background_err"] = self.background_err
        return t


def _plain(x: Any) -> Any:
    """The numbers of a possibly unit-carrying array."""
    return getattr(x, "value", x) if x is not None and hasattr(x, "unit") else x


def _with_unit(x: Any, unit: Any) -> Any:
    """``x`` as an astropy Quantity in ``unit``; ``x`` itself when ``unit`` is None."""
    if unit is None or x is None:
        return x
    import astropy.units as u

    return u.Quantity(x, unit, copy=False)


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
