"""The normal equations of one design matrix and one error map, factorised once.

``(A^T C^-1 A + P) w = A^T C^-1 d + P mu`` restricted to the sources that have data or a
prior: :class:`NormalEquations` (built by :func:`prepare_normal_equations`) solves any
number of frames with one factorisation and pickles compactly for Dask workers. Also the
design-matrix formats it needs (canonical CSR and CSC, row scaling by the weights).
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import scipy.sparse

from ..core import Sparse3D
from ._checks import (
    _check_data_finite,
    _check_design,
    _check_errors,
    _check_imshape,
    _check_mask,
    _check_prior,
    _check_solver,
    _inverse_variance,
)
from ._inputs import _check_mask_values
from .diagnostics import _chi2
from .factor import _factorize_or_raise
from .result import _warn_unconstrained, _weights_err


def _row_scale(M: scipy.sparse.csr_matrix | scipy.sparse.csc_matrix, scale: np.ndarray) -> Any:
    """Return ``diag(scale) @ M`` in the format of ``M``, dropping zeroed rows."""
    if M.format == "csr":
        data = M.data * np.repeat(scale, np.diff(M.indptr))
    else:
        data = M.data * scale[M.indices]
    if np.all(scale != 0):
        return M.__class__((data, M.indices, M.indptr), shape=M.shape)
    # eliminate_zeros works in place: do not let it touch M's index arrays
    out = M.__class__((data, M.indices.copy(), M.indptr.copy()), shape=M.shape)
    out.eliminate_zeros()
    return out


def _canonical(M: scipy.sparse.spmatrix) -> scipy.sparse.spmatrix:
    """Return ``M`` as float64 with sorted indices and no duplicates."""
    if M.dtype != np.float64:
        M = M.astype(np.float64)
    if not M.has_canonical_format:
        M = M.copy()
        M.sum_duplicates()
    return M


def _design_formats(A: Any) -> tuple[scipy.sparse.csr_matrix, scipy.sparse.csc_matrix]:
    """``A`` in CSR and CSC, canonical, float64; ValueError if it holds non-finite values.

    CSR serves ``A @ x`` and (as ``A_csr.T``) ``A^T @ X``; ``A_csc.T @ A_csr``
    is the normal matrix without any format conversion.
    """
    A_csr = _canonical(scipy.sparse.csr_matrix(A))
    if not np.all(np.isfinite(A_csr.data)):
        raise ValueError("A contains non-finite values")
    return A_csr, _canonical(scipy.sparse.csc_matrix(A))


# -- the normal matrix ---------------------------------------------------------------------
# Whether a structure's stamps are regular rectangles, and their corners: computed once per
# structure (a pass over all positions), shared by every array built on it.
_REGULAR: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _regular_corners(S: Sparse3D) -> tuple[np.ndarray, np.ndarray] | None:
    """Corners ``(r0, c0)`` (int64, ``(n,)``) if every stamp of ``S`` is a regular rectangle, else None."""
    st = S._structure
    hit = _REGULAR.get(st)
    if hit is None:
        nr, nc, n = st.stamp_shape
        if n == 0 or nr * nc == 0:
            hit = (False, None, None)
        else:
            from ._stamp_kernels import regular_corners

            hit = regular_corners(st.row, st.col)
        _REGULAR[st] = hit
    ok, r0, c0 = hit
    return (r0, c0) if ok else None


def _pow2_scale(colmax: np.ndarray) -> np.ndarray:
    """Powers of two ``c ~ 1 / colmax`` (exact to apply and undo); 1 where ``colmax`` is 0."""
    c = np.ones(colmax.shape)
    nz = colmax > 0
    c[nz] = np.exp2(-np.round(np.log2(colmax[nz])))
    return c


def _scaled_normal_matrix(
    design: Sparse3D | scipy.sparse.csr_matrix, ivar: np.ndarray | None
) -> tuple[scipy.sparse.csr_matrix, np.ndarray]:
    """``(N, c)``: the lower triangle of ``diag(c) A^T diag(ivar) A diag(c)`` and the column scale.

    ``c[j]`` is the power of two nearest ``1 / max_i |A_ij| sqrt(ivar_i)`` (1 for an empty
    column): every column of the weighted design then has its largest entry in ``[0.7, 1.4]``,
    so no product underflows or overflows whatever the units of the stamps and errors, and
    scaling and unscaling are exact. Dispatches like :func:`normal_matrix`.
    """
    corners = _regular_corners(design) if isinstance(design, Sparse3D) else None
    if corners is not None:
        from ._stamp_kernels import cell_order, normal_lower, scale_rows, weighted_stamps

        S = design
        r0, c0 = corners
        nr, nc, n = S._values.shape
        values = S._values
        if values.dtype not in (np.float64, np.float32):
            values = values.astype(np.float64)
        (H, W), (imr, imc) = S.imshape, S.imcorner
        has_ivar = ivar is not None
        sqrt_ivar = np.sqrt(ivar) if has_ivar else np.zeros(0)
        order, skey, ncc = cell_order(r0, c0, nr, nc)
        B, colmax = weighted_stamps(values, order, r0, c0, sqrt_ivar, has_ivar, H, W, imr, imc)
        del sqrt_ivar
        cp = _pow2_scale(colmax)  # in cell order
        scale_rows(B, cp)
        indptr, indices, data = normal_lower(B, order, skey, ncc, r0, c0)
        del B
        c = np.empty(n)
        c[order] = cp
        idx_dtype = np.int32 if max(n, data.size) < 2**31 else np.int64
        N = scipy.sparse.csr_matrix(
            (data, indices.astype(idx_dtype), indptr.astype(idx_dtype)), shape=(n, n), copy=False
        )
        return N, c
    A = design.tocsr() if isinstance(design, Sparse3D) else design
    A = _canonical(scipy.sparse.csr_matrix(A))
    As = A if ivar is None else _row_scale(A, np.sqrt(ivar))
    colmax = np.zeros(A.shape[1])
    if As.nnz:
        np.maximum.at(colmax, As.indices, np.abs(As.data))
    c = _pow2_scale(colmax)
    As = As @ scipy.sparse.diags(c, format="csr")
    G = scipy.sparse.tril(As.T @ As, format="csr")
    G.sort_indices()
    return G, c


def normal_matrix(
    design: Sparse3D | scipy.sparse.spmatrix | scipy.sparse.sparray, ivar: np.ndarray | None = None
) -> scipy.sparse.csr_matrix:
    """The normal matrix ``A^T diag(ivar) A`` of a design, as its **lower triangle** (CSR).

    Parameters
    ----------
    design : Sparse3D or scipy.sparse matrix/array
        The design ``A`` of shape ``(H * W, n)``: a :class:`~sparse3d.Sparse3D` (its logical
        ``(H, W, n)`` array raveled over the image; off-image stamp pixels do not count) or a
        2-D SciPy sparse matrix.
    ivar : numpy.ndarray, optional
        Inverse variances ``1 / errors**2`` per image pixel, shape ``(H * W,)``, 0 on masked
        pixels. None means 1 everywhere.

    Returns
    -------
    scipy.sparse.csr_matrix
        Shape ``(n, n)``, float64: the entries ``N[i, j]`` with ``j <= i`` (diagonal
        included), canonical (sorted column indices, no duplicates). Entries of pairs of
        sources that share a pixel are stored even when their value is 0. The full matrix is
        ``N + N.T - diag(N.diagonal())``; the lower triangle in CSR is the upper triangle in
        CSC, which is what the factorisations take.

    Notes
    -----
    A Sparse3D whose stamps are regular ``nr x nc`` rectangles (``row[:, :, k] = r0[k] +
    arange(nr)[:, None]``, likewise ``col``) is multiplied stamp by stamp (a compiled kernel
    visits the sources on a grid of stamp-sized cells and multiplies overlapping stamps over
    their shared pixels); anything else goes through SciPy's ``A^T A`` of the CSR form.

    Examples
    --------
    >>> import numpy as np, scipy.sparse
    >>> A = scipy.sparse.csr_matrix(np.array([[1.0, 0.0], [2.0, 1.0], [0.0, 3.0]]))
    >>> normal_matrix(A).toarray()
    array([[ 5.,  0.],
           [ 2., 10.]])
    """
    N, c = _scaled_normal_matrix(design, ivar)
    if np.any(c != 1.0):
        inv = 1.0 / c
        N.data *= inv[N.indices] * np.repeat(inv, np.diff(N.indptr))
    return N


def _with_background_block(
    N_AA: scipy.sparse.csr_matrix,
    A_csc: scipy.sparse.csc_matrix,
    B: scipy.sparse.csr_matrix,
    ivar: np.ndarray | None,
) -> scipy.sparse.csr_matrix:
    """The joint normal matrix ``[[N_AA, N_AB], [N_BA, N_BB]]`` of the design ``[A, B]``.

    ``N_AA`` is the sources' block (full, symmetric), ``B`` the ``(npix, nb)`` columns of
    a background model; ``N_AB = A^T diag(ivar) B`` and ``N_BB = B^T diag(ivar) B`` are
    sparse products (``nb`` is small next to ``n``).  No dense inverse, one sparse matrix.
    """
    Bw = B if ivar is None else _row_scale(B, ivar)
    NAB = scipy.sparse.csr_matrix(A_csc.T @ Bw)
    NBB = scipy.sparse.csr_matrix(B.T @ Bw)
    G = scipy.sparse.csr_matrix(scipy.sparse.bmat([[N_AA, NAB], [NAB.T, NBB]]))
    G.sum_duplicates()
    return G


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

    Attributes
    ----------
    design : scipy.sparse.csr_matrix
        The design matrix ``A``, shape ``(npix, n)``, float64 with canonical
        indices, unweighted and unmasked (for models and chi-square).
    ivar : numpy.ndarray or None
        Inverse variances ``diag(C^-1)``, shape ``(npix,)``, 0 on masked
        pixels; None for unit errors without a mask.
    keep : numpy.ndarray or None
        Boolean ``(npix,)``, True on the pixels used; None when none is masked.
    prior_rhs : numpy.ndarray or None
        ``P mu``, shape ``(n,)``; None without priors.
    free : numpy.ndarray
        Boolean ``(n + nb,)``: the parameters in the system (sources with data or a prior,
        then the background coefficients with data or a prior).
    factor : object
        Cholesky factor of the normal matrix restricted to the free sources:
        ``factor.solve(b)`` for ``b`` of shape ``(nfree,)`` or ``(nfree, k)``
        (all columns at once) and ``factor.inv_diag()`` for
        ``diag(N^-1)``.
    solver : str
        ``"cholmod"`` or ``"superlu"``: the solver that factorised ``N``.
    background : scipy.sparse.csr_matrix or None
        Background design columns ``B``, shape ``(npix, nb)`` (see
        :mod:`sparse3d.fit.background`), solved jointly with the sources; None without.
    gram : scipy.sparse.csr_matrix or None
        ``[A, B]^T C^-1 [A, B]`` (no prior, every parameter), ``(n + nb, n + nb)``, when
        built by the fit (for diagnostics); not pickled.
    """

    def __init__(
        self,
        design: scipy.sparse.csr_matrix,
        ivar: np.ndarray | None,
        keep: np.ndarray | None,
        prior_rhs: np.ndarray | None,
        free: np.ndarray,
        factor: Any,
        solver: str,
        background: scipy.sparse.csr_matrix | None = None,
    ) -> None:
        self.design = design
        self.background = background
        self.gram: scipy.sparse.csr_matrix | None = None
        self.ivar = ivar
        self.keep = keep
        self.prior_rhs = prior_rhs
        self.free = free
        self.factor = factor
        self.solver = solver
        self._idx = None if free.all() else np.flatnonzero(free)
        self._weighted: scipy.sparse.csr_matrix | None = None
        self._weighted_background: scipy.sparse.csr_matrix | None = None

    @classmethod
    def _build(
        cls,
        A_csr: scipy.sparse.csr_matrix,
        A_csc: scipy.sparse.csc_matrix,
        ivar: np.ndarray | None,
        keep: np.ndarray | None,
        prior_prec: np.ndarray,
        mu: np.ndarray,
        solver: str,
        background: scipy.sparse.csr_matrix | None = None,
    ) -> NormalEquations:
        """Form and factorise ``N`` from validated inputs (``A`` in both formats).

        ``background`` (``(npix, nb)`` CSR) appends the columns ``B`` of a background
        model: ``N`` becomes the block matrix ``[[N_AA, N_AB], [N_BA, N_BB]]``, and
        ``prior_prec``/``mu`` then have ``n + nb`` entries.
        """
        if ivar is None:
            As_csr, As_csc = A_csr, A_csc
        else:
            sw = np.sqrt(ivar)
            As_csr, As_csc = _row_scale(A_csr, sw), _row_scale(A_csc, sw)
        G = scipy.sparse.csr_matrix(As_csc.T @ As_csr)
        del As_csr, As_csc
        if background is not None:
            G = _with_background_block(G, A_csc, background, ivar)
        has_prior = bool(np.any(prior_prec > 0))
        free = (G.diagonal() > 0) | (prior_prec > 0)
        Nmat = G + scipy.sparse.diags(prior_prec) if has_prior else G
        idx = None if free.all() else np.flatnonzero(free)
        if idx is not None:
            Nmat = Nmat[idx][:, idx]
        Nmat = scipy.sparse.csr_matrix(Nmat)
        factor = _factorize_or_raise(Nmat, idx, solver)
        prior_rhs = prior_prec * mu if has_prior else None
        out = cls(A_csr, ivar, keep, prior_rhs, free, factor, solver, background)
        out.gram = G
        return out

    # -- facts -----------------------------------------------------------
    @property
    def n_sources(self) -> int:
        """Number of sources ``n`` (columns of the design matrix)."""
        return self.design.shape[1]

    @property
    def n_params(self) -> int:
        """Number of parameters: sources, then background coefficients."""
        return self.n_sources + (0 if self.background is None else self.background.shape[1])

    @property
    def n_pixels(self) -> int:
        """Number of unmasked pixels."""
        return self.design.shape[0] if self.keep is None else int(self.keep.sum())

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

    # -- fitting ---------------------------------------------------------
    def check_data(self, D: np.ndarray) -> None:
        """Raise ValueError when ``D`` ``(npix, k)`` has non-finite unmasked pixels."""
        _check_data_finite(D, self.keep)

    def solve(self, D: np.ndarray) -> np.ndarray:
        """Best-fit weights for the frames ``D``, shape ``(npix,)`` or ``(npix, k)``.

        Returns shape ``(n_params,)`` or ``(n_params, k)`` (the source weights, then the
        background coefficients), NaN for unconstrained parameters.
        Masked pixels of ``D`` are ignored (they may be non-finite); the
        unmasked ones are not checked (see :meth:`check_data`).
        """
        rhs = self.weighted_design.T @ D
        if self.background is not None:
            if self._weighted_background is None:
                B = self.background
                self._weighted_background = B if self.ivar is None else _row_scale(B, self.ivar)
            rhs = np.concatenate([rhs, self._weighted_background.T @ D])
        if self.prior_rhs is not None:
            rhs += self.prior_rhs if D.ndim == 1 else self.prior_rhs[:, None]
        if self._idx is None:
            return self.factor.solve(rhs)
        out = np.full((self.n_params, *D.shape[1:]), np.nan)
        out[self._idx] = self.factor.solve(rhs[self._idx])
        return out

    def chi2(self, D: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``sum(((D - A w) / errors)**2)`` over the unmasked pixels, per frame: ``(k,)``.

        ``D`` is ``(npix, k)`` and ``weights`` ``(n_params, k)`` (as :meth:`solve` returns
        them); NaN weights count as 0.
        """
        wz = np.where(np.isnan(weights), 0.0, weights)
        ivar = None if self.ivar is None else self.ivar[:, None]
        return _chi2(self.design, wz, D, ivar, None, self.keep, self.background)

    def weights_err(self) -> np.ndarray:
        """1-sigma uncertainties ``sqrt(diag(N^-1))``, shape ``(n_params,)``; NaN where unconstrained."""
        return _weights_err(self.factor, self.free)

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
        return NormalEquations(
            self.design,
            self.ivar,
            self.keep,
            self.prior_rhs,
            self.free,
            self.factor.portable(),
            self.solver,
            self.background,
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["factor"] = self.factor.portable()
        state["_weighted"] = None
        state["_weighted_background"] = None
        state["gram"] = None
        return state


def prepare_normal_equations(
    A: scipy.sparse.spmatrix | scipy.sparse.sparray,
    *,
    imshape: tuple[int, int],
    errors: np.ndarray | None = None,
    prior_mu: float | np.ndarray | None = None,
    prior_sigma: float | np.ndarray | None = None,
    mask: np.ndarray | None = None,
    solver: str = "auto",
) -> NormalEquations:
    """Validate the inputs, form the normal matrix and factorise it, once.

    The set-up shared by every frame fitted with one error map: what
    :func:`fit_design` does before it touches the data.  Arguments are those
    of :func:`fit_design`, except that ``errors`` is one map of shape
    ``(H, W)`` (or None).

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
    _check_design(A, npix, imshape)
    keep = _check_mask(None if mask is None else _check_mask_values(mask), H, W)
    E = None
    if errors is not None:
        errors = np.asarray(errors, dtype=np.float64)
        if errors.shape != (H, W):
            raise ValueError(f"errors must have shape (H, W) = {(H, W)}, got {errors.shape}")
        E = errors.reshape(npix, 1)
        _check_errors(E, keep)
    ivar = _inverse_variance(E, keep)
    prior_prec, mu = _check_prior(prior_mu, prior_sigma, A.shape[1])
    A_csr, A_csc = _design_formats(A)
    ivar1 = None if ivar is None else ivar[:, 0]
    keep1 = None if keep is None else keep[:, 0]
    return NormalEquations._build(A_csr, A_csc, ivar1, keep1, prior_prec, mu, solver)
