"""The normal equations of one design matrix and one error map, factorised once.

``(A^T C^-1 A + P) w = A^T C^-1 d + P mu`` restricted to the sources that have data or a
prior: :class:`NormalEquations` (built by :func:`prepare_normal_equations`) solves any
number of frames with one factorisation and pickles compactly for Dask workers. The normal
matrix itself is assembled in :mod:`.assemble`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse

from ..core import Sparse3D
from . import normal_chi2
from ._checks import (
    _check_data_finite,
    _check_design,
    _check_errors,
    _check_imshape,
    _check_mask,
    _check_prior,
    _check_solver,
    _error_scale,
    _inverse_variance,
)
from ._inputs import _check_mask_values
from .assemble import _design_matrix, _regular_stamps, _row_scale, _scaled_normal_matrix
from .background import as_background
from .factor import _factorize_or_raise, _solver_name, _uses_boxes
from .normal_chi2 import _STAMP_CHI2_FRAMES
from .ordering import stamp_boxes
from .result import _warn_unconstrained, _weights_err
from .rhs import _Ahead, _cells_rhs, _stamp_rhs, _weighted_data  # the weighted stamps kept by a fit

#: A fit of at most ``_CELLS_MAX_FRAMES`` frames keeps the weighted stamps of its normal matrix
#: (``NormalEquations._cells``, up to ``_CELLS_MAX_BYTES``) through its solve: its right-hand
#: sides and a recomputed chi-square read them in sequence, not the array's values with a stride
#: (more frames: the image sweep of :func:`.rhs._stamp_rhs`, in a worker thread meanwhile)
_CELLS_MAX_BYTES, _CELLS_MAX_FRAMES = 1 << 28, _STAMP_CHI2_FRAMES


class NormalEquations:
    """The factorised normal equations of one design matrix and one error map.

    ``(A^T C^-1 A + P) w = A^T C^-1 d + P mu``, restricted to the *free*
    sources (those with an unmasked pixel or a prior), factorised once; then
    :meth:`solve` fits any number of frames.  Built by
    :func:`prepare_normal_equations` (and by :func:`fit_design`, once per
    distinct error map).

    Pickling ships the design matrix, the inverse variances and the factor
    in its portable form (see :meth:`portable`): no solver library object
    and no weighted copy of the design matrix, which is rebuilt on first use.

    **Scaling.** What is factorised is ``N' = s^2 D N D`` with ``s`` a power of two close to
    the typical error (``err_scale``) and ``D = diag(col_scale)`` powers of two that bring
    every weighted column of ``A`` to a largest entry near 1 (see
    :func:`_scaled_normal_matrix`): errors of ``1e-160`` or ``1e160`` and sources with tiny
    stamp values neither overflow nor underflow, the pivot test of the singularity
    diagnosis is invariant under it, and unscaling is exact. ``w = D N'^-1 D' rhs``.

    Attributes
    ----------
    design : scipy.sparse.csr_matrix or scipy.sparse.csc_matrix
        The design matrix ``A``, shape ``(npix, n)``, float64 with canonical
        indices, unweighted and unmasked (for models and chi-square). For a Sparse3D of
        regular stamps it is built on first access only: the right-hand sides come from the
        stamps directly.
    ivar : numpy.ndarray or None
        Scaled inverse variances ``s^2 diag(C^-1)`` = ``(err_scale / errors)**2``, shape
        ``(npix,)``, 0 on masked pixels; None for unit errors without a mask.
    keep : numpy.ndarray or None
        Boolean ``(npix,)``, True on the pixels used; None when none is masked.
    prior_rhs : numpy.ndarray or None
        The prior's part of the scaled right-hand side, ``s^2 D P mu``, shape ``(n,)``;
        None without priors.
    free : numpy.ndarray
        Boolean ``(n + nb,)``: the parameters in the system (sources with data or a prior,
        then the background coefficients with data or a prior).
    factor : object
        Factor of the scaled normal matrix ``N'`` restricted to the free sources:
        ``factor.solve(b)`` for ``b`` of shape ``(nfree,)`` or ``(nfree, k)``
        (all columns at once) and ``factor.inv_diag()`` for
        ``diag(N'^-1)``.
    solver : str
        ``"nd"``, ``"qdldl"``, ``"superlu"`` or ``"cholmod"``: the solver that factorised ``N'``.
    col_scale : numpy.ndarray
        ``(n + nb,)`` powers of two, the diagonal of ``D``.
    err_scale : float
        ``s``, a power of two (1.0 for unit errors).
    background : scipy.sparse.csr_matrix or None
        Background design columns ``B``, shape ``(npix, nb)`` (see
        :mod:`sparse3d.fit.background`), solved jointly with the sources; None without.
    gram : scipy.sparse.csr_matrix or None
        Lower triangle of the scaled ``s^2 D [A, B]^T C^-1 [A, B] D`` (no prior, every
        parameter), when built by the fit (for diagnostics); not pickled.
    """

    def __init__(
        self,
        design: scipy.sparse.csr_matrix | scipy.sparse.csc_matrix | Sparse3D,
        ivar: np.ndarray | None,
        keep: np.ndarray | None,
        prior_rhs: np.ndarray | None,
        free: np.ndarray,
        factor: Any,
        solver: str,
        col_scale: np.ndarray | None = None,
        err_scale: float = 1.0,
        background: scipy.sparse.csr_matrix | None = None,
    ) -> None:
        # a Sparse3D of regular stamps: its sparse matrix is made on first access of .design
        self._design = design
        self._stamps = _regular_stamps(design)
        self.background = background
        self.gram: scipy.sparse.csr_matrix | None = None
        self.ivar = ivar
        self.keep = keep
        self.prior_rhs = prior_rhs
        self._prior_prec: np.ndarray | None = None  # scaled prior precision (with prior_rhs)
        self.free = free
        self.factor = factor
        self.solver = solver
        nb = 0 if background is None else background.shape[1]
        nsrc = design.nsources if isinstance(design, Sparse3D) else design.shape[1]
        self.col_scale = np.ones(nsrc + nb) if col_scale is None else col_scale
        self.err_scale = float(err_scale)
        self._idx = None if free.all() else np.flatnonzero(free)
        self._weighted: scipy.sparse.csr_matrix | None = None
        self._weighted_background: scipy.sparse.csr_matrix | None = None
        self._ahead: _Ahead | None = None  # the data's parts computed ahead (fit_design)
        self._cells: list | None = None  # [(_Cells, gidx)] kept by a fit (_build's keep_cells)
        # (D, its weighted data) made by _data_rhs from the kept cells, for the solve's chi-square
        self._frames_weighted: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def _build(
        cls,
        design: Sparse3D | scipy.sparse.csr_matrix,
        A_csr: scipy.sparse.csr_matrix,
        ivar: np.ndarray | None,
        keep: np.ndarray | None,
        prior_prec: np.ndarray,
        mu: np.ndarray,
        solver: str,
        err_scale: float = 1.0,
        background: scipy.sparse.csr_matrix | None = None,
        reuse: NormalEquations | bool | None = None,
        keep_cells: bool = False,
    ) -> NormalEquations:
        """Form and factorise the scaled ``N'`` from validated inputs.

        ``design`` is what :func:`normal_matrix` takes (a Sparse3D uses the stamp kernel),
        ``A_csr`` its canonical CSR, ``ivar`` the inverse variances already multiplied by
        ``err_scale**2``.  ``background`` (``(npix, nb)`` CSR) appends the columns ``B`` of a
        background model (:func:`._joint._with_background_block`); ``prior_prec`` and ``mu`` then
        have ``n + nb`` entries. ``reuse`` is :func:`prepare_normal_equations`'s. ``keep_cells``
        keeps the weighted stamps of the stamp path (see :data:`_CELLS_MAX_BYTES`; the caller
        drops them after its solve).
        """
        cells = [] if keep_cells and isinstance(A_csr, Sparse3D) and background is None else None
        # a small design is already a sparse matrix (A_csr, from _fit_design): no second format
        G, c = _scaled_normal_matrix(design if isinstance(A_csr, Sparse3D) else A_csr, ivar, cells)
        if cells is not None and (not cells or sum(x.B.nbytes for x, _ in cells) > _CELLS_MAX_BYTES):
            cells = None
        if isinstance(A_csr, Sparse3D) and not np.all(np.isfinite(G.data)):
            raise ValueError("A contains non-finite values")  # no sparse matrix checked it
        if background is not None:
            from ._joint import _with_background_block

            if isinstance(A_csr, Sparse3D):
                A_csr = _design_matrix(A_csr)
            G, c = _with_background_block(G, c, A_csr, background, ivar)
        gram = G
        has_prior = bool(np.any(prior_prec > 0))
        free = (G.diagonal() > 0) | (prior_prec > 0)
        prior_rhs = None
        if has_prior:
            with np.errstate(over="ignore"):  # a prior 1e300 times tighter than the data: capped
                pp = np.minimum(prior_prec * err_scale * err_scale * c * c, 1e300)
            prior_rhs = pp * mu / c
        idx = None if free.all() else np.flatnonzero(free)
        Nmat = G if idx is None else scipy.sparse.csr_matrix(G[idx][:, idx])
        del G
        if has_prior:
            Nmat = Nmat + scipy.sparse.diags(pp if idx is None else pp[idx], format="csr")
        prev = reuse.factor if isinstance(reuse, NormalEquations) else (reuse or None)
        boxes = stamp_boxes(design, idx) if _uses_boxes(Nmat, solver, prev) else None
        nsrc = gram.shape[0] - (0 if background is None else background.shape[1])
        factor = _factorize_or_raise(Nmat, idx, solver, prev, boxes, nsrc)
        solver = _solver_name(factor, solver)
        del Nmat
        out = cls(A_csr, ivar, keep, prior_rhs, free, factor, solver, c, err_scale, background)
        out._cells = cells
        out.gram = gram
        out._prior_prec = pp if has_prior else None
        return out

    @property
    def design(self) -> scipy.sparse.csr_matrix | scipy.sparse.csc_matrix:
        """The design matrix ``A`` (see the class docstring), built on first access."""
        if isinstance(self._design, Sparse3D):
            self._design = _design_matrix(self._design)
        return self._design

    # -- facts -----------------------------------------------------------
    @property
    def n_sources(self) -> int:
        """Number of sources ``n`` (columns of the design matrix)."""
        d = self._design
        return d.nsources if isinstance(d, Sparse3D) else d.shape[1]

    @property
    def n_params(self) -> int:
        """Number of parameters: sources, then background coefficients."""
        return self.n_sources + (0 if self.background is None else self.background.shape[1])

    @property
    def n_pixels(self) -> int:
        """Number of unmasked pixels."""
        d = self._design
        npix = d._structure.npixels if isinstance(d, Sparse3D) else d.shape[0]
        return npix if self.keep is None else int(self.keep.sum())

    @property
    def unconstrained(self) -> np.ndarray:
        """Boolean ``(n,)``: sources with no unmasked pixel and no prior."""
        return ~self.free[: self.n_sources]

    @property
    def weighted_design(self) -> scipy.sparse.csr_matrix:
        """``C^-1 A`` (CSR), masked rows dropped: ``weighted_design.T @ d`` is ``A^T C^-1 d``."""
        if self._weighted is None:
            self._weighted = self.design if self.ivar is None else _row_scale(self.design, self.ivar)
        return self._weighted

    def _data_rhs(self, D: np.ndarray) -> np.ndarray:
        """``A^T C^-1 D`` for ``D`` ``(npix,)`` or ``(npix, k)``; masked pixels of ``D`` ignored.

        Weights the data, not the design: ``A^T (ivar * D)``, so that no row-weighted copy of
        ``A`` (as large as ``A`` itself: 0.8 GB at a million 10 x 10 stamps) is made for a
        single image. When the frames outweigh the design (``npix * k > 4 nnz(A)``: many frames
        on a small design) the weighted copy is made once and kept.
        """
        if self._cells is not None and self._weighted is None:
            # from the normal matrix's weighted, scaled stamps (powers of two: unscaled exactly)
            U = _weighted_data(D.reshape(D.shape[0], -1), self.ivar, self.keep)
            self._frames_weighted = (D, U) if D.ndim == 2 else None
            n = self.n_sources
            out = _cells_rhs(self._cells, U, n) / self.col_scale[:n, None]
            return out[:, 0] if D.ndim == 1 else out
        if self._stamps is not None and self._weighted is None:
            # weights and mask applied in the kernel: no weighted copy of a frame stack
            if len(self._stamps) == 1 and self._stamps[0][1] is None:
                ahead = None if self._ahead is None else self._ahead.take("rhs", D)
                return _stamp_rhs(self._stamps[0][0], D, self.ivar, self.keep) if ahead is None else ahead
            out = np.zeros((self.n_sources,) + D.shape[1:])
            for stamps, sources in self._stamps:  # stamp groups: each group's sources
                out[sources] = _stamp_rhs(stamps, D, self.ivar, self.keep)
            return out
        if self.ivar is None:
            return self.design.T @ D
        if self._weighted is not None:
            return self._weighted.T @ D
        k = 1 if D.ndim == 1 else D.shape[1]
        npix = D.shape[0]
        nnz = self.design.nnz
        if k > 1 and npix * k > 4 * nnz:
            return self.weighted_design.T @ D
        AT = self.design.T
        w = self.ivar if D.ndim == 1 else self.ivar[:, None]
        if self.keep is None:
            return AT @ (w * D)
        keep = self.keep if D.ndim == 1 else self.keep[:, None]
        # masked pixels may hold NaN or inf: zeroed, not multiplied by 0
        return AT @ (w * np.where(keep, D, 0.0))

    # -- fitting ---------------------------------------------------------
    def check_data(self, D: np.ndarray) -> None:
        """Raise ValueError when ``D`` ``(npix, k)`` has non-finite unmasked pixels."""
        _check_data_finite(D, self.keep)

    def solve(self, D: np.ndarray, return_chi2: bool = False) -> Any:
        """Best-fit weights for the frames ``D``, shape ``(npix,)`` or ``(npix, k)``.

        Returns shape ``(n_params,)`` or ``(n_params, k)`` (the source weights, then the
        background coefficients), NaN for unconstrained parameters; with ``return_chi2``
        (``D`` 2-D), also the chi-square of each frame, ``(k,)``.
        Masked pixels of ``D`` are ignored (they may be non-finite); the
        unmasked ones are not checked (see :meth:`check_data`).

        The chi-square comes from the normal equations, without a second product with
        ``A`` (see :meth:`_chi2_from_normal`); its relative rounding error is ~1e-16 times
        ``d^T C^-1 d / chi2``, and frames where that ratio exceeds 1e9 are recomputed from
        the residuals.
        """
        one = D.ndim == 1
        c = self.col_scale if one else self.col_scale[:, None]
        rhs = self._data_rhs(D)
        if self.background is not None:
            if self._weighted_background is None:
                B = self.background
                self._weighted_background = B if self.ivar is None else _row_scale(B, self.ivar)
            rhs = np.concatenate([rhs, self._weighted_background.T @ D])
        rhs *= c
        data_rhs = rhs.copy() if return_chi2 and self.prior_rhs is not None else rhs
        if self.prior_rhs is not None:
            rhs += self.prior_rhs if one else self.prior_rhs[:, None]
        x = self.factor.solve(rhs if self._idx is None else rhs[self._idx])
        assert not (one and return_chi2)
        chi2 = self._chi2_from_normal(D, x, data_rhs) if return_chi2 else None  # x scaled
        self._frames_weighted = None
        if self._idx is None and x.flags.writeable and not np.may_share_memory(x, rhs):
            out = np.multiply(x, c, out=x)  # the solver's fresh array: no second (n, k) array
        elif self._idx is None:
            out = x * c
        else:
            out = np.full((self.n_params, *D.shape[1:]), np.nan)
            out[self._idx] = x * c[self._idx]
        return out if chi2 is None else (out, chi2)

    def solve_rhs(self, b: np.ndarray, fill: float = np.nan) -> np.ndarray:
        """Solve ``N x = b`` with the factorised normal matrix ``N = A^T C^-1 A + P``.

        ``b`` and ``x`` are in the original (unscaled) units: ``N^-1 b``, whatever the
        internal scaling of the factor (``N' = s^2 D N D``, so ``N^-1 = s^2 D N'^-1 D``).

        Parameters
        ----------
        b : numpy.ndarray
            Shape ``(n_params,)`` or ``(n_params, k)`` (every parameter; the rows of the
            unconstrained ones are ignored and come back NaN), or ``(n_free,)`` /
            ``(n_free, k)`` with ``n_free = free.sum()`` (the free parameters, in order).
        fill : float, default NaN
            The value returned for the unconstrained parameters (with a full-length ``b``);
            :meth:`solve_normal` is this method with ``fill=0``.

        Returns
        -------
        numpy.ndarray
            ``x``, the shape of ``b``.

        Examples
        --------
        >>> import numpy as np, scipy.sparse
        >>> A = scipy.sparse.csr_matrix(np.array([[1.0, 0.0], [2.0, 1.0], [0.0, 3.0]]))
        >>> ne = prepare_normal_equations(A, imshape=(1, 3))
        >>> np.allclose(ne.solve_rhs(np.array([7.0, 12.0])), [1.0, 1.0])
        True
        """
        b = np.asarray(b, dtype=np.float64)
        nfree = int(self.free.sum())
        if b.ndim not in (1, 2) or b.shape[0] not in (self.n_params, nfree):
            raise ValueError(
                f"b must have shape (n_params,) = ({self.n_params},) or (n_free,) = ({nfree},), "
                f"optionally with a second axis of right-hand sides; got {b.shape}"
            )
        full = b.shape[0] != nfree
        bf = b[self.free] if full else b
        cf = self.col_scale[self.free]
        cf = cf if b.ndim == 1 else cf[:, None]
        # s^2 D b is in the factor's own (scaled) units: no underflow for extreme errors
        x = self.factor.solve((self.err_scale * self.err_scale) * cf * bf) * cf
        if not full:
            return x
        out = np.full(b.shape, fill)
        out[self.free] = x
        return out

    def _chi2_from_normal(self, D: np.ndarray, x: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Chi-square per frame from the scaled solution ``x`` (free parameters) and the data
        right-hand side ``b`` (every parameter, scaled).

        At the solution ``G x = b + P mu' - P x`` (``G`` the data's normal matrix, ``P`` the
        scaled prior precision), so ``chi2 = d^T C^-1 d - x^T b + x^T (P mu' - P x)``: no product
        with ``A`` or ``G``. Its error is the solve's residual times ``x`` -- backward-stable
        factorisations keep it at rounding level whatever the conditioning -- plus the
        cancellation of the difference, ~1e-16 ``d^T C^-1 d``.
        """
        U, self._frames_weighted = self._frames_weighted, None
        return normal_chi2.chi2_from_normal(self, D, x, b, None if U is None or U[0] is not D else U[1])

    def chi2(self, D: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``sum(((D - A w) / errors)**2)`` over the unmasked pixels, per frame: ``(k,)``.

        ``D`` is ``(npix, k)`` and ``weights`` ``(n_params, k)`` (as :meth:`solve` returns
        them); NaN weights count as 0.
        """
        return normal_chi2.chi2(self, D, weights)

    def weights_err(self) -> np.ndarray:
        """1-sigma uncertainties ``sqrt(diag(N^-1))``, shape ``(n_params,)``; NaN where unconstrained."""
        return _weights_err(self.factor, self.free, self.err_scale * self.col_scale)

    def solve_normal(self, b: np.ndarray) -> np.ndarray:
        """Solve the normal equations ``N x = b`` for given right-hand sides ``b``.

        ``N = A^T C^-1 A + P`` is the (unscaled) normal matrix, prior included, restricted to
        the free parameters; ``b`` has shape ``(n_params,)`` or ``(n_params, k)``, in the units
        of ``A^T C^-1 d``. Returns ``x`` of the shape of ``b``, 0 for unconstrained parameters
        (their rows of ``b`` are ignored). With ``b = A^T C^-1 d + P mu`` this is :meth:`solve`;
        other right-hand sides serve iterative solvers that use this factorisation, e.g. as
        the preconditioner of the distributed scene fit (:mod:`sparse3d.dask.scene`).
        """
        return self.solve_rhs(b, fill=0.0)

    def warn_if_unconstrained(self, stacklevel: int = 2) -> None:
        """Issue one :class:`UnconstrainedSourceWarning` counting the unconstrained sources, if any.

        ``stacklevel`` is that of :func:`warnings.warn` called by the caller.
        """
        _warn_unconstrained(self.unconstrained, stacklevel + 1)

    # -- shipping --------------------------------------------------------
    def portable(self) -> NormalEquations:
        """These equations with the factor in a picklable form, for shipping to workers.

        The factor becomes plain NumPy/SciPy arrays: supernodal blocks (built
        once; :meth:`weights_err` then reuses them) or, with SuperLU before
        :meth:`weights_err` is called, triangular CSR factors, which solve
        faster.  Solving with them gives the same weights.
        """
        out = NormalEquations(
            self._design,
            self.ivar,
            self.keep,
            self.prior_rhs,
            self.free,
            self.factor.portable(),
            self.solver,
            self.col_scale,
            self.err_scale,
            self.background,
        )
        out._prior_prec = self._prior_prec
        return out

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_design"] = self.design  # the sparse matrix ships, not the stamps
        state["_stamps"] = None
        state["_ahead"] = None
        state["_cells"] = None
        state["_frames_weighted"] = None
        state["factor"] = self.factor.portable()
        state["_weighted"] = None
        state["_weighted_background"] = None
        state["gram"] = None
        return state


def prepare_normal_equations(
    A: Sparse3D | scipy.sparse.spmatrix | scipy.sparse.sparray,
    *,
    imshape: tuple[int, int],
    errors: np.ndarray | None = None,
    prior_mu: float | np.ndarray | None = None,
    prior_sigma: float | np.ndarray | None = None,
    mask: np.ndarray | None = None,
    solver: str = "auto",
    background: Any = None,
    reuse: NormalEquations | bool | None = None,
) -> NormalEquations:
    """Validate the inputs, form the normal matrix and factorise it, once.

    The set-up shared by every frame fitted with one error map: what
    :func:`fit_design` does before it touches the data.  Arguments are those
    of :func:`fit_design`, except that ``errors`` is one map of shape
    ``(H, W)`` (or None) and ``mask`` one ``(H, W)`` boolean map.  With a
    ``background``, :meth:`NormalEquations.solve` returns the source weights
    followed by the background coefficients.

    ``A`` may be a :class:`~sparse3d.Sparse3D`: its normal matrix then comes straight from
    the stamps (:func:`~sparse3d.fit.normal_matrix`), without SciPy's ``A^T A``.

    ``reuse`` serves iterations whose normal matrix keeps its pattern (a Gauss--Newton loop
    over the same sources): pass the previous call's :class:`NormalEquations` and, when the
    new matrix (on the free parameters, priors included) has exactly its pattern, the
    factorisation reuses its symbolic analysis (the fill-reducing ordering and elimination
    tree; about 40 % of a ``qdldl`` factorisation) and only refactorises numerically; else it
    starts afresh. ``reuse=True`` on the first call keeps that analysis for the next one.
    Only the ``"qdldl"`` solver reuses (with ``reuse``, ``solver="auto"`` picks it rather
    than ``"nd"``); the others ignore it. The previous equations stay valid (they keep their
    own numeric factor).

    Returns
    -------
    NormalEquations
        ``solve(D)`` then fits frames ``D`` of shape ``(H * W, k)``.

    Raises
    ------
    ValueError
        If an argument has the wrong shape or invalid values.
    SingularNormalMatrixError
        As in :func:`fit_design`.

    Examples
    --------
    >>> import numpy as np, scipy.sparse
    >>> A = scipy.sparse.random(16, 3, density=0.6, random_state=0, format="csr")
    >>> ne = prepare_normal_equations(A, imshape=(4, 4))
    >>> np.allclose(ne.solve(A @ np.array([[1.0, 4.0], [2.0, 5.0], [3.0, 6.0]])), [[1, 4], [2, 5], [3, 6]])
    True
    """
    solver = _check_solver(solver)
    H, W = _check_imshape(imshape)
    npix = H * W
    n = _check_design(A, npix, imshape)
    keep = _check_mask(None if mask is None else _check_mask_values(mask), H, W)
    E = None
    if errors is not None:
        errors = np.asarray(errors, dtype=np.float64)
        if errors.shape != (H, W):
            raise ValueError(f"errors must have shape (H, W) = {(H, W)}, got {errors.shape}")
        E = errors.reshape(npix, 1)
        _check_errors(E, keep)
    err_scale = _error_scale(E, keep)
    ivar = _inverse_variance(E, keep, err_scale)
    prior_prec, mu = _check_prior(prior_mu, prior_sigma, n)
    bg = as_background(background)
    B = None if bg is None else bg.columns((H, W))
    if B is not None:
        bprec, bmu = bg.prior(B.shape[1])
        prior_prec, mu = np.concatenate([prior_prec, bprec]), np.concatenate([mu, bmu])
    A_csr = _fit_design(A)
    ivar1 = None if ivar is None else ivar[:, 0]
    keep1 = None if keep is None else keep[:, 0]
    if not (reuse is None or isinstance(reuse, (bool, NormalEquations))):
        raise ValueError(
            f"reuse must be None, True or the NormalEquations of a previous call, got {type(reuse).__name__}"
        )
    return NormalEquations._build(A, A_csr, ivar1, keep1, prior_prec, mu, solver, err_scale, B, reuse)


def _fit_design(A: Any) -> Sparse3D | scipy.sparse.csr_matrix | scipy.sparse.csc_matrix:
    """What a fit holds as its design: a Sparse3D of regular stamps large enough for the
    compiled kernels as it is (right-hand sides from the stamps, its sparse matrix only on
    demand), anything else as its sparse matrix (:func:`._design_matrix`)."""
    if _regular_stamps(A) is not None:
        return A
    return _design_matrix(A)
