"""Weighted linear least-squares fitting of a sparse design matrix to images.

The model of an image of shape ``(H, W)`` is ``image.ravel() = A @ w`` where
``A`` is a sparse design matrix of shape ``(H * W, n)``, one column per source.
:func:`fit_design` solves the (optionally weighted, masked and regularised)
normal equations::

    (A^T C^-1 A + P) w = A^T C^-1 d + P mu

with ``C = diag(errors**2)`` restricted to the unmasked pixels and
``P = diag(1 / prior_sigma**2)``.  The normal matrix is factorised once with a
sparse Cholesky factorisation and reused for every frame of a stack.

Solvers
-------
``"cholmod"``
    CHOLMOD's supernodal Cholesky factorisation, used when the optional
    dependency ``cvxopt`` (PyPI wheels bundle SuiteSparse) is importable.
``"superlu"``
    The pure-SciPy fallback: SuperLU (:func:`scipy.sparse.linalg.splu`) in
    symmetric mode with a minimum-degree ordering of ``A^T + A`` and no
    pivoting, i.e. an ``L D L^T`` factorisation.

The 1-sigma uncertainties ``sqrt(diag((A^T C^-1 A + P)^-1))`` are computed
exactly, without forming the dense inverse, by a supernodal selected inversion
(the block form of Takahashi's recurrences) of the Cholesky factor.  They are
computed lazily, on the first access of :attr:`FitResult.weights_err`.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, partial
from typing import Any

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
from scipy.linalg import lapack

try:  # optional: keeps BLAS single-threaded in loops of small products
    from threadpoolctl import threadpool_limits as _threadpool_limits
except ImportError:  # pragma: no cover - depends on the environment
    _threadpool_limits = None

try:  # optional accelerator: CHOLMOD through cvxopt's PyPI wheels
    from cvxopt import cholmod as _cholmod
    from cvxopt import matrix as _cvx_matrix
    from cvxopt import spmatrix as _cvx_spmatrix
except ImportError:  # pragma: no cover - depends on the environment
    _cholmod = None

__all__ = [
    "PIVOT_RTOL",
    "FitResult",
    "NormalEquations",
    "SingularNormalMatrixError",
    "UnconstrainedSourceWarning",
    "available_solvers",
    "fit_design",
    "prepare_normal_equations",
]

#: A source whose Cholesky pivot is below ``PIVOT_RTOL`` times its diagonal
#: entry of the normal matrix is treated as linearly dependent on the others.
PIVOT_RTOL = 1e-10

# cvxopt's CHOLMOD options are process-global: fits in several threads take turns setting them
_CHOLMOD_LOCK = threading.Lock()


def _single_threaded_blas() -> contextlib.AbstractContextManager[Any]:
    """Limit BLAS to one thread (if threadpoolctl is installed).

    The supernodal loops issue thousands of small matrix products, for which
    BLAS threading costs far more than it gains.
    """
    if _threadpool_limits is None:
        return contextlib.nullcontext()
    return _threadpool_limits(limits=1, user_api="blas")


# With CHOLMOD, up to this many right-hand sides are solved by CHOLMOD itself
# (which handles one column at a time); more use the blocked supernodal solve.
_CHOLMOD_MAX_DIRECT_RHS = 32


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


def available_solvers() -> tuple[str, ...]:
    """Return the names of the sparse solvers usable in this environment.

    Returns
    -------
    tuple of str
        ``("cholmod", "superlu")`` when ``cvxopt`` is installed, otherwise
        ``("superlu",)``.
    """
    return ("cholmod", "superlu") if _cholmod is not None else ("superlu",)


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
        Sparse solver used, ``"cholmod"`` or ``"superlu"``.
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


# --------------------------------------------------------------------------
# Supernodal Cholesky machinery (block triangular solves, selected inversion)
# --------------------------------------------------------------------------


def _close_pattern(L: scipy.sparse.csc_matrix) -> scipy.sparse.csc_matrix:
    """Extend the pattern of a lower factor so it is closed under its etree.

    A Cholesky factor from which numerically zero entries were dropped (as
    SciPy does when it exports SuperLU's factor) may violate the property
    ``struct(L[:, j]) \\ {j}  ⊆  struct(L[:, parent(j)])`` that the selected
    inversion relies on.  This adds the missing entries as explicit zeros.
    """
    n = L.shape[0]
    L = scipy.sparse.csc_matrix(L)
    L.sort_indices()
    ptr, ind, dat = L.indptr, L.indices, L.data
    pending: dict[int, list[np.ndarray]] = {}
    out_rows: list[np.ndarray] = []
    out_vals: list[np.ndarray] = []
    counts = np.empty(n, dtype=np.int64)
    for j in range(n):
        rows = ind[ptr[j] : ptr[j + 1]]
        vals = dat[ptr[j] : ptr[j + 1]]
        extra = pending.pop(j, None)
        if extra is not None:
            merged = np.unique(np.concatenate([rows, *extra]))
            if merged.size != rows.size:
                new_vals = np.zeros(merged.size)
                new_vals[np.searchsorted(merged, rows)] = vals
                rows, vals = merged, new_vals
        if rows.size > 1:
            pending.setdefault(int(rows[1]), []).append(rows[2:])
        out_rows.append(rows)
        out_vals.append(vals)
        counts[j] = rows.size
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    return scipy.sparse.csc_matrix((np.concatenate(out_vals), np.concatenate(out_rows), indptr), shape=(n, n))


class _Supernodal:
    """Dense-block view of a lower Cholesky factor ``L`` (``N = L L^T``).

    ``L`` must be CSC with sorted row indices, the diagonal first in every
    column, and a pattern closed under the elimination tree (true for a
    symbolic Cholesky pattern; see :func:`_close_pattern`).  Consecutive
    columns with nested patterns form a supernode ``s`` whose columns
    ``starts[s]:ends[s]`` share the rows ``rows[s]`` below the diagonal block;
    its entries are stored as a dense ``(ns + m, ns)`` block.
    """

    def __init__(self, L: scipy.sparse.csc_matrix) -> None:
        n = L.shape[0]
        ptr = L.indptr.astype(np.int64)
        ind, dat = L.indices, L.data
        cnt = np.diff(ptr)
        if n and (np.any(cnt == 0) or np.any(ind[ptr[:-1]] != np.arange(n))):
            raise RuntimeError("internal error: factor has a missing diagonal")
        # Column j + 1 continues the supernode of column j when its pattern is
        # the pattern of column j without j.
        cont = np.zeros(n, dtype=bool)
        if n > 1:
            second = ind[np.minimum(ptr[:-2] + 1, ind.size - 1)]
            cont[1:] = (cnt[:-1] > 1) & (cnt[:-1] == cnt[1:] + 1) & (second == np.arange(1, n))
        starts = np.flatnonzero(~cont)
        ends = np.append(starts[1:], n)
        ns = ends - starts
        height = cnt[starts]  # ns + m
        sup_of_col = np.repeat(np.arange(starts.size), ns)
        # Copy L into one flat buffer holding the (ns + m, ns) blocks one after
        # the other, each in column-major order: the entries of a column are
        # then contiguous, starting at its diagonal.
        offsets = np.zeros(starts.size + 1, dtype=np.int64)
        np.cumsum(height * ns, out=offsets[1:])
        local_col = np.arange(n) - np.repeat(starts, ns)
        col_start = np.repeat(offsets[:-1], ns) + local_col * (np.repeat(height, ns) + 1)
        dest = np.repeat(col_start - ptr[:-1], cnt)
        dest += np.arange(ind.size)
        buf = np.zeros(int(offsets[-1]))
        buf[dest] = dat
        del dest
        self.n = n
        self.starts = starts
        self.ends = ends
        self.rows: list[np.ndarray] = []  # rows below the diagonal block
        self.linv: list[np.ndarray] = []  # inverse of the diagonal block
        self.lbelow: list[np.ndarray] = []  # block of L below the diagonal
        parent = np.full(starts.size, -1, dtype=np.int64)
        with _single_threaded_blas():
            for s_, (f, k, h, o) in enumerate(
                zip(starts.tolist(), ns.tolist(), height.tolist(), offsets.tolist())
            ):
                block = buf[o : o + h * k].reshape(k, h).T
                if k == 1:
                    linv = 1.0 / block[:1]
                else:
                    # the strict upper part of the input is zero, so is the output's
                    linv, info = lapack.dtrtri(block[:k], lower=1)
                    if info != 0:
                        raise RuntimeError("internal error: singular diagonal block")
                self.linv.append(linv)
                self.lbelow.append(block[k:])
                rows = ind[ptr[f] + k : ptr[f + 1]]
                self.rows.append(rows)
                if rows.size:
                    parent[s_] = sup_of_col[rows[0]]
        self.parent = parent

    def solve(self, b: np.ndarray) -> np.ndarray:
        """Solve ``L L^T x = b`` (``b`` in the factor's permuted order)."""
        x = np.array(b, dtype=np.float64, order="C", copy=True)
        with _single_threaded_blas():
            self._solve_inplace(x)
        return x

    def _solve_inplace(self, x: np.ndarray) -> None:
        for s in range(self.starts.size):
            f, e = self.starts[s], self.ends[s]
            xs = self.linv[s] @ x[f:e]
            x[f:e] = xs
            if self.rows[s].size:
                r = self.rows[s]
                x[r] -= self.lbelow[s] @ xs
        for s in range(self.starts.size - 1, -1, -1):
            f, e = self.starts[s], self.ends[s]
            xs = x[f:e]
            if self.rows[s].size:
                xs = xs - self.lbelow[s].T @ x[self.rows[s]]
            x[f:e] = self.linv[s].T @ xs

    def inv_diag(self) -> np.ndarray:
        """Return ``diag((L L^T)^-1)`` by supernodal selected inversion.

        With ``Z = (L L^T)^-1`` and, for a supernode ``s`` with diagonal block
        ``L_ss`` and off-diagonal rows ``R``, ``U = L_Rs L_ss^-1``::

            Z_Rs = -Z_RR U
            Z_ss = L_ss^-T L_ss^-1 + U^T Z_RR U

        ``Z_RR`` only involves rows of the parent supernode's front, so the
        supernodes are processed from the root down, keeping each front
        ``Z[F, F]`` (``F`` = columns and rows of the supernode) until all of
        its children are done.  Cost is about that of the factorisation.
        """
        with _single_threaded_blas():
            return self._inv_diag()

    def _inv_diag(self) -> np.ndarray:
        nsup = self.starts.size
        diag = np.empty(self.n)
        nchild = np.bincount(self.parent[self.parent >= 0], minlength=nsup)
        fronts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for s in range(nsup - 1, -1, -1):
            f, e = int(self.starts[s]), int(self.ends[s])
            ns = e - f
            linv = self.linv[s]
            rows = self.rows[s]
            zss = linv.T @ linv
            if rows.size:
                p = int(self.parent[s])
                fp, zp = fronts[p]
                idx = np.searchsorted(fp, rows)
                if idx[-1] >= fp.size or np.any(fp[idx] != rows):
                    raise RuntimeError("internal error: factor pattern is not closed")
                zrr = zp[idx[:, None], idx]
                u = self.lbelow[s] @ linv
                zrs = -(zrr @ u)
                zss -= u.T @ zrs
                nchild[p] -= 1
                if nchild[p] == 0:
                    del fronts[p]
            diag[f:e] = np.diagonal(zss)
            if nchild[s]:
                m = rows.size
                front = np.empty((ns + m, ns + m))
                front[:ns, :ns] = zss
                if m:
                    front[ns:, :ns] = zrs
                    front[:ns, ns:] = zrs.T
                    front[ns:, ns:] = zrr
                fronts[s] = (np.concatenate([np.arange(f, e), rows]), front)
        return diag


# --------------------------------------------------------------------------
# Factorisations
# --------------------------------------------------------------------------


class _NotPositiveDefinite(Exception):
    """Internal: the factorisation broke down or produced tiny pivots."""

    def __init__(self, columns: np.ndarray | None = None) -> None:
        super().__init__()
        self.columns = columns


def _small_pivots(pivots: np.ndarray, diag_perm: np.ndarray) -> np.ndarray:
    """Positions (in factor order) of pivots too small relative to ``diag``."""
    return np.flatnonzero(~(pivots > PIVOT_RTOL * diag_perm))


def _splu_ldlt(N: scipy.sparse.csc_matrix) -> Any:
    """SuperLU of the symmetric ``N`` as ``L D L^T``: symmetric mode, no pivoting."""
    return scipy.sparse.linalg.splu(
        N,
        permc_spec="MMD_AT_PLUS_A",
        diag_pivot_thresh=0.0,
        options={"SymmetricMode": True},
    )


class _SupernodalFactor:
    """``N[p][:, p] = L L^T`` with ``L`` held as supernodal NumPy blocks.

    The form every factorisation can export (:meth:`portable`): plain arrays,
    cheap to pickle, solved by the blocked supernodal solve.  The solver
    specific factors below derive from it and build the blocks lazily.
    """

    name = "supernodal"

    def __init__(self, perm: np.ndarray, supernodal: _Supernodal) -> None:
        self.n = supernodal.n
        self.perm = perm
        self._super: _Supernodal | None = supernodal

    def _supernodal(self) -> _Supernodal:
        assert self._super is not None
        return self._super

    def _blocked_solve(self, b: np.ndarray) -> np.ndarray:
        b2 = b.reshape(self.n, -1)
        out = np.empty(b2.shape)
        out[self.perm] = self._supernodal().solve(b2[self.perm])
        return out.reshape(b.shape)

    def solve(self, b: np.ndarray) -> np.ndarray:
        """Solve ``N x = b`` for ``b`` of shape ``(n,)`` or ``(n, k)``."""
        return self._blocked_solve(b)

    def inv_diag(self) -> np.ndarray:
        """Return ``diag(N^-1)`` by supernodal selected inversion."""
        d = np.empty(self.n)
        d[self.perm] = self._supernodal().inv_diag()
        return d

    def portable(self) -> _SupernodalFactor:
        """This factor as supernodal blocks only (picklable, no solver library objects)."""
        return _SupernodalFactor(self.perm, self._supernodal())


class _CholmodFactor(_SupernodalFactor):
    """Supernodal CHOLMOD factorisation ``N[p][:, p] = L L^T`` via cvxopt."""

    name = "cholmod"

    def __init__(self, N: scipy.sparse.csr_matrix) -> None:
        n = N.shape[0]
        self.n = n
        low = scipy.sparse.tril(N, format="coo")
        C = _cvx_spmatrix(low.data, low.row.astype(np.int64), low.col.astype(np.int64), (n, n))
        with _CHOLMOD_LOCK:
            old = _cholmod.options.get("supernodal", 2)
            _cholmod.options["supernodal"] = 2
            try:
                F = _cholmod.symbolic(C, uplo="L")
                try:
                    _cholmod.numeric(C, F)
                except ArithmeticError as exc:
                    raise _NotPositiveDefinite() from exc
            finally:
                _cholmod.options["supernodal"] = old
        x = _cvx_matrix(np.arange(n, dtype=np.float64))
        _cholmod.solve(F, x, sys=7)
        self.perm = np.asarray(x, dtype=np.float64).ravel().astype(np.intp)
        pivots = np.asarray(_cholmod.diag(F)).ravel() ** 2
        bad = _small_pivots(pivots, N.diagonal()[self.perm])
        if bad.size:
            raise _NotPositiveDefinite(self.perm[bad])
        self._F = F
        self._super = None

    def _supernodal(self) -> _Supernodal:
        if self._super is None:
            Lf = _cholmod.getfactor(self._F)  # invalidates self._F for solves
            self._F = None
            colptr, rowind, vals = Lf.CCS
            L = scipy.sparse.csc_matrix(
                (
                    np.asarray(vals, dtype=np.float64).ravel(),
                    np.asarray(rowind).ravel(),
                    np.asarray(colptr).ravel(),
                ),
                shape=(self.n, self.n),
            )
            L.sort_indices()
            self._super = _Supernodal(L)
        return self._super

    def solve(self, b: np.ndarray) -> np.ndarray:
        b2 = b.reshape(self.n, -1)
        k = b2.shape[1]
        if self._F is None or k > _CHOLMOD_MAX_DIRECT_RHS:
            return self._blocked_solve(b)
        out = np.empty((self.n, k))
        for i in range(k):
            x = _cvx_matrix(np.ascontiguousarray(b2[:, i], dtype=np.float64))
            _cholmod.solve(self._F, x)
            out[:, i] = np.asarray(x).ravel()
        return out.reshape(b.shape)


class _SuperLUFactor(_SupernodalFactor):
    """SuperLU ``L D L^T`` factorisation (symmetric mode, no pivoting)."""

    name = "superlu"

    def __init__(self, N: scipy.sparse.csr_matrix) -> None:
        n = N.shape[0]
        self.n = n
        Nc = N.tocsc()
        try:
            lu = _splu_ldlt(Nc)
        except RuntimeError as exc:  # "Factor is exactly singular"
            raise _NotPositiveDefinite() from exc
        if not np.array_equal(lu.perm_r, lu.perm_c):
            raise _NotPositiveDefinite()
        # Pr N Pc = L U with Pc[i, perm_c[i]] = 1, so N[p][:, p] = L U with
        # p = argsort(perm_c).
        self.perm = np.argsort(lu.perm_c)
        pivots = lu.U.diagonal()
        bad = _small_pivots(pivots, Nc.diagonal()[self.perm])
        if bad.size:
            raise _NotPositiveDefinite(self.perm[bad])
        self._lu = lu
        self._pivots = pivots
        self._super = None

    def _cholesky_lower(self) -> scipy.sparse.csc_matrix:
        """The Cholesky factor ``L sqrt(D)`` of SuperLU's unit-lower ``L`` and ``D = diag(U)``."""
        L = scipy.sparse.csc_matrix(self._lu.L)
        L.data = L.data * np.repeat(np.sqrt(self._pivots), np.diff(L.indptr))
        return L

    def _supernodal(self) -> _Supernodal:
        if self._super is None:
            self._super = _Supernodal(_close_pattern(self._cholesky_lower()))
            self._lu = None  # free SuperLU's copy; solve() uses the blocks now
        return self._super

    def solve(self, b: np.ndarray) -> np.ndarray:
        if self._lu is not None:
            with _single_threaded_blas():  # several times faster for many columns
                return self._lu.solve(np.asarray(b, dtype=np.float64))
        return self._blocked_solve(b)

    def portable(self) -> _SupernodalFactor | _TriangularFactor:
        """Triangular CSR factors while SuperLU's factor is at hand, else the blocks.

        SuperLU's orderings give small supernodes, for which SciPy's triangular
        solves are faster than the blocked solve.
        """
        if self._lu is not None:
            return _TriangularFactor(self.perm, self._cholesky_lower())
        return super().portable()


class _TriangularFactor:
    """``N[p][:, p] = L L^T`` with ``L`` as SciPy triangular matrices: picklable, solved in C."""

    name = "triangular"

    def __init__(self, perm: np.ndarray, L: scipy.sparse.csc_matrix) -> None:
        self.n = L.shape[0]
        self.perm = perm
        self.lower = scipy.sparse.csr_matrix(L)
        # L.T shares L's index arrays, which SuperLU's factor may share too: copy them
        self.upper = scipy.sparse.csr_matrix(L.T, copy=True)
        self.upper.sort_indices()

    def solve(self, b: np.ndarray) -> np.ndarray:
        b2 = np.asarray(b, dtype=np.float64).reshape(self.n, -1)
        y = scipy.sparse.linalg.spsolve_triangular(self.lower, b2[self.perm], lower=True)
        x = np.empty(y.shape)
        x[self.perm] = scipy.sparse.linalg.spsolve_triangular(self.upper, y, lower=False, overwrite_b=True)
        return x.reshape(b.shape)

    def inv_diag(self) -> np.ndarray:
        d = np.empty(self.n)
        d[self.perm] = _Supernodal(_close_pattern(self.lower.tocsc())).inv_diag()
        return d

    def portable(self) -> _TriangularFactor:
        return self


class _EmptyFactor:
    """Factor of a 0 x 0 matrix (every source unconstrained)."""

    name = "empty"

    def solve(self, b: np.ndarray) -> np.ndarray:
        return np.zeros(b.shape)

    def inv_diag(self) -> np.ndarray:
        return np.zeros(0)

    def portable(self) -> _EmptyFactor:
        return self


def _factorize(N: scipy.sparse.csr_matrix, solver: str) -> _SupernodalFactor | _EmptyFactor:
    """Factorise the SPD matrix ``N``; raise ``_NotPositiveDefinite``."""
    if N.shape[0] == 0:
        return _EmptyFactor()
    if solver == "cholmod":
        return _CholmodFactor(N)
    return _SuperLUFactor(N)


def _diagnose_singular(N: scipy.sparse.csr_matrix) -> np.ndarray:
    """Find the columns responsible for the singularity of PSD matrix ``N``.

    The matrix is shifted by a tiny multiple of its diagonal, which keeps it
    positive definite, and factorised; the dependent columns are those with
    pivots of the order of the shift.
    """
    d = N.diagonal()
    shifted = (N + scipy.sparse.diags(1e-13 * d)).tocsc()
    try:
        lu = _splu_ldlt(shifted)
    except RuntimeError:
        return np.zeros(0, dtype=np.intp)
    perm = np.argsort(lu.perm_c)
    return np.sort(perm[_small_pivots(lu.U.diagonal(), d[perm])])


def _factorize_or_raise(N: scipy.sparse.csr_matrix, idx: np.ndarray | None, solver: str) -> Any:
    """``_factorize(N)``, raising :class:`SingularNormalMatrixError` naming the sources.

    ``idx`` maps the rows of ``N`` to sources (None: the identity).
    """
    try:
        return _factorize(N, solver)
    except _NotPositiveDefinite as exc:
        cols = exc.columns if exc.columns is not None else _diagnose_singular(N)
        cols = np.sort(cols if idx is None else idx[cols])
        shown = ", ".join(str(c) for c in cols[:20]) + (" ..." if cols.size > 20 else "")
        raise SingularNormalMatrixError(
            "the normal matrix A^T C^-1 A + P is singular: "
            + (
                f"{cols.size} source(s) are linearly dependent on other sources "
                f"(e.g. identical columns of A): [{shown}]. "
                if cols.size
                else "some sources are linearly dependent on others. "
            )
            + "Remove or merge them, or give them a prior (prior_sigma).",
            sources=cols,
        ) from None


# --------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------


def _as_source_vector(value: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return np.full(n, float(arr))
    if arr.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape (nsources,) = ({n},), got shape {arr.shape}")
    return arr


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


def _rows_all(test: Callable[[np.ndarray], np.ndarray], X: np.ndarray, keep: np.ndarray | None) -> bool:
    """Whether ``test(X)`` holds for every row of ``X`` kept by ``keep``.

    Works in blocks of rows so that no temporary of the size of ``X`` (a
    whole frame stack) is allocated.
    """
    chunk = max(256, (1 << 18) // max(1, X.shape[1]))
    for i in range(0, X.shape[0], chunk):
        ok = test(X[i : i + chunk]).all(axis=1)
        if keep is not None:
            ok |= ~keep[i : i + chunk]
        if not ok.all():
            return False
    return True


def _frame_groups(err: np.ndarray, keep: np.ndarray | None) -> list[np.ndarray]:
    """Group the frames of an ``(npix, k)`` error stack by identical maps.

    Only unmasked pixels (``keep``) are compared.  The common case, every
    frame equal to the first, is detected in one pass over row blocks.
    """
    npix, k = err.shape
    same = np.ones(k, dtype=bool)
    chunk = max(256, (1 << 18) // k)
    for i in range(0, npix, chunk):
        block = err[i : i + chunk]
        eq = block == block[:, :1]
        if keep is not None:
            eq |= ~keep[i : i + chunk, None]
        same &= eq.all(axis=0)
        if not same.any():
            break
    if same.all():
        return [np.arange(k)]
    buckets: dict[bytes, list[int]] = {}  # content hash -> group ids
    out: list[list[int]] = []
    cols: dict[int, np.ndarray] = {}
    for i in range(k):
        col = np.array(err[:, i], dtype=np.float64)
        if keep is not None:
            col[~keep] = 1.0
        key = hashlib.blake2b(col.view(np.uint8), digest_size=16).digest()
        for g in buckets.get(key, []):
            if np.array_equal(col, cols[g]):
                out[g].append(i)
                break
        else:
            buckets.setdefault(key, []).append(len(out))
            cols[len(out)] = col
            out.append([i])
    return [np.asarray(g, dtype=np.intp) for g in out]


def _check_solver(solver: str) -> str:
    """The solver name, ``"auto"`` resolved; ValueError when unknown or not installed."""
    if solver == "auto":
        solver = "cholmod" if _cholmod is not None else "superlu"
    if solver not in ("cholmod", "superlu"):
        raise ValueError(f"solver must be 'auto', 'cholmod' or 'superlu', got {solver!r}")
    if solver == "cholmod" and _cholmod is None:
        raise ValueError("solver='cholmod' needs the optional dependency cvxopt")
    return solver


def _check_imshape(imshape: Any) -> tuple[int, int]:
    try:
        H, W = (int(v) for v in imshape)
    except (TypeError, ValueError):
        raise ValueError(f"imshape must be a pair of ints (H, W), got {imshape!r}") from None
    if H <= 0 or W <= 0:
        raise ValueError(f"imshape must be positive, got {imshape!r}")
    return H, W


def _check_design(A: Any, npix: int, imshape: Any) -> None:
    if not (scipy.sparse.issparse(A) and A.ndim == 2):
        raise ValueError("A must be a 2-D scipy.sparse matrix or array")
    if A.shape[0] != npix:
        raise ValueError(f"A must have H * W = {npix} rows for imshape={imshape!r}, got shape {A.shape}")


def _check_mask(mask: Any, H: int, W: int) -> np.ndarray | None:
    """``~mask`` raveled, or None when no pixel is masked."""
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise ValueError(f"mask must be a boolean array, got dtype {mask.dtype}")
    if mask.shape != (H, W):
        raise ValueError(f"mask must have shape (H, W) = {(H, W)}, got {mask.shape}")
    return ~mask.ravel() if mask.any() else None


def _check_data_finite(D: np.ndarray, keep: np.ndarray | None) -> None:
    if not _rows_all(np.isfinite, D, keep):
        raise ValueError("data contains non-finite values in unmasked pixels (mask them)")


def _check_errors(E: np.ndarray, keep: np.ndarray | None) -> None:
    if not _rows_all(lambda x: np.isfinite(x) & (x > 0), E, keep):
        raise ValueError("errors must be positive and finite in unmasked pixels")


def _inverse_variance(E: np.ndarray | None, keep: np.ndarray | None) -> np.ndarray | None:
    """``(npix, g)`` inverse variances of the error maps ``E``, 0 where masked.

    None for unit errors (``E`` None) without a mask.
    """
    if E is None:
        return None if keep is None else keep.astype(np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        ivar = 1.0 / E**2
    if keep is not None:
        ivar[~keep] = 0.0
    return ivar


def _check_prior(prior_mu: Any, prior_sigma: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Prior precisions ``1 / prior_sigma**2`` and means (0 where there is no prior)."""
    if prior_mu is not None and prior_sigma is None:
        raise ValueError("prior_mu requires prior_sigma")
    prior_prec = np.zeros(n)
    mu = np.zeros(n)
    if prior_sigma is not None:
        sig = _as_source_vector(prior_sigma, n, "prior_sigma")
        if not np.all(sig > 0):  # also rejects NaN
            raise ValueError("prior_sigma must be > 0 (np.inf for no prior)")
        prior_prec = 1.0 / sig**2
        if prior_mu is not None:
            mu = _as_source_vector(prior_mu, n, "prior_mu")
            if not np.all(np.isfinite(mu[prior_prec > 0])):
                raise ValueError("prior_mu must be finite")
            mu = np.where(prior_prec > 0, mu, 0.0)
    return prior_prec, mu


def _design_formats(A: Any) -> tuple[scipy.sparse.csr_matrix, scipy.sparse.csc_matrix]:
    """``A`` in CSR and CSC, canonical, float64; ValueError if it holds non-finite values.

    CSR serves ``A @ x`` and (as ``A_csr.T``) ``A^T @ X``; ``A_csc.T @ A_csr``
    is the normal matrix without any format conversion.
    """
    A_csr = _canonical(scipy.sparse.csr_matrix(A))
    if not np.all(np.isfinite(A_csr.data)):
        raise ValueError("A contains non-finite values")
    return A_csr, _canonical(scipy.sparse.csc_matrix(A))


# --------------------------------------------------------------------------
# Normal equations
# --------------------------------------------------------------------------


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
        Boolean ``(n,)``: the sources in the system (``~unconstrained``).
    factor : object
        Cholesky factor of the normal matrix restricted to the free sources:
        ``factor.solve(b)`` for ``b`` of shape ``(nfree,)`` or ``(nfree, k)``
        (all columns at once) and ``factor.inv_diag()`` for
        ``diag(N^-1)``.
    solver : str
        ``"cholmod"`` or ``"superlu"``: the solver that factorised ``N``.
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
    ) -> None:
        self.design = design
        self.ivar = ivar
        self.keep = keep
        self.prior_rhs = prior_rhs
        self.free = free
        self.factor = factor
        self.solver = solver
        self._idx = None if free.all() else np.flatnonzero(free)
        self._weighted: scipy.sparse.csr_matrix | None = None

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
    ) -> NormalEquations:
        """Form and factorise ``N`` from validated inputs (``A`` in both formats)."""
        if ivar is None:
            As_csr, As_csc = A_csr, A_csc
        else:
            sw = np.sqrt(ivar)
            As_csr, As_csc = _row_scale(A_csr, sw), _row_scale(A_csc, sw)
        G = scipy.sparse.csr_matrix(As_csc.T @ As_csr)
        del As_csr, As_csc
        has_prior = bool(np.any(prior_prec > 0))
        free = (G.diagonal() > 0) | (prior_prec > 0)
        Nmat = G + scipy.sparse.diags(prior_prec) if has_prior else G
        idx = None if free.all() else np.flatnonzero(free)
        if idx is not None:
            Nmat = Nmat[idx][:, idx]
        Nmat = scipy.sparse.csr_matrix(Nmat)
        del G
        factor = _factorize_or_raise(Nmat, idx, solver)
        prior_rhs = prior_prec * mu if has_prior else None
        return cls(A_csr, ivar, keep, prior_rhs, free, factor, solver)

    # -- facts -----------------------------------------------------------
    @property
    def n_sources(self) -> int:
        """Number of sources ``n`` (columns of the design matrix)."""
        return self.design.shape[1]

    @property
    def n_pixels(self) -> int:
        """Number of unmasked pixels."""
        return self.design.shape[0] if self.keep is None else int(self.keep.sum())

    @property
    def unconstrained(self) -> np.ndarray:
        """Boolean ``(n,)``: sources with no unmasked pixel and no prior."""
        return ~self.free

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

        Returns shape ``(n,)`` or ``(n, k)``, NaN for unconstrained sources.
        Masked pixels of ``D`` are ignored (they may be non-finite); the
        unmasked ones are not checked (see :meth:`check_data`).
        """
        rhs = self.weighted_design.T @ D
        if self.prior_rhs is not None:
            rhs += self.prior_rhs if D.ndim == 1 else self.prior_rhs[:, None]
        if self._idx is None:
            return self.factor.solve(rhs)
        out = np.full((self.n_sources, *D.shape[1:]), np.nan)
        out[self._idx] = self.factor.solve(rhs[self._idx])
        return out

    def chi2(self, D: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """``sum(((D - A w) / errors)**2)`` over the unmasked pixels, per frame: ``(k,)``.

        ``D`` is ``(npix, k)`` and ``weights`` ``(n, k)``; NaN weights count as 0.
        """
        wz = np.where(np.isnan(weights), 0.0, weights)
        ivar = None if self.ivar is None else self.ivar[:, None]
        return _chi2(self.design, wz, D, ivar, [np.arange(D.shape[1])], self.keep)

    def weights_err(self) -> np.ndarray:
        """1-sigma uncertainties ``sqrt(diag(N^-1))``, shape ``(n,)``; NaN for unconstrained sources."""
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
            self.design, self.ivar, self.keep, self.prior_rhs, self.free, self.factor.portable(), self.solver
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["factor"] = self.factor.portable()
        state["_weighted"] = None
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
    keep = _check_mask(mask, H, W)
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
    return NormalEquations._build(
        A_csr, A_csc, None if ivar is None else ivar[:, 0], keep, prior_prec, mu, solver
    )


def fit_design(
    A: scipy.sparse.spmatrix | scipy.sparse.sparray,
    data: np.ndarray,
    *,
    imshape: tuple[int, int],
    errors: np.ndarray | None = None,
    prior_mu: float | np.ndarray | None = None,
    prior_sigma: float | np.ndarray | None = None,
    mask: np.ndarray | None = None,
    return_errors: bool = True,
    solver: str = "auto",
) -> FitResult:
    """Fit the weights of a sparse design matrix to an image or a frame stack.

    Solves the weighted linear least-squares problem
    ``min_w sum(((d - A w) / errors)**2) + sum(((w - prior_mu) / prior_sigma)**2)``
    over the unmasked pixels, through the normal equations
    ``(A^T C^-1 A + P) w = A^T C^-1 d + P prior_mu`` with a sparse Cholesky
    factorisation that is computed once and reused for every frame.

    Parameters
    ----------
    A : scipy.sparse matrix or array, shape (H * W, n)
        Design matrix; column ``j`` is the image of source ``j`` with unit
        weight, raveled in C order.
    data : numpy.ndarray, shape (H, W) or (H, W, k)
        One image, or a stack of ``k`` frames along the last axis.
    imshape : tuple of int
        ``(H, W)``, the shape of one image.
    errors : numpy.ndarray, optional
        Per-pixel 1-sigma uncertainties, shape ``(H, W)`` (shared by all
        frames) or the shape of ``data``; all unmasked values must be
        positive and finite.  None means unit errors (ordinary least
        squares).  The normal matrix depends on the errors, so a stack whose
        frames have *different* error maps needs one factorisation per
        distinct map (frames with identical maps are grouped); errors shared
        by all frames are the fast path, with a single factorisation.
    prior_mu : float or numpy.ndarray, optional
        Mean of the Gaussian prior on each weight, scalar or shape ``(n,)``.
        Defaults to 0 when ``prior_sigma`` is given; requires ``prior_sigma``.
    prior_sigma : float or numpy.ndarray, optional
        Standard deviation of the Gaussian prior on each weight, scalar or
        shape ``(n,)``; must be positive, ``np.inf`` meaning no prior for that
        source.  Priors also constrain sources with little or no data.
    mask : numpy.ndarray of bool, optional
        Shape ``(H, W)``; True marks pixels to *ignore* (shared by all
        frames).  Masked pixels may hold non-finite data or errors.
    return_errors : bool, optional
        If True (default) ``FitResult.weights_err`` is available; it is
        computed on first access and keeps the factorisation alive until
        then.  If False it is None and the factorisation is freed.
    solver : {"auto", "cholmod", "superlu"}, optional
        Sparse solver.  ``"auto"`` uses CHOLMOD when ``cvxopt`` is installed
        and SciPy's SuperLU otherwise.

    Returns
    -------
    FitResult
        Weights, model, chi-square and (lazily) the weight uncertainties.

    Raises
    ------
    ValueError
        If an argument has the wrong shape or invalid values (the message
        names the argument).
    SingularNormalMatrixError
        If the normal matrix is singular although every source has data,
        e.g. two sources with identical columns and no prior.  A source
        whose Cholesky pivot is below ``PIVOT_RTOL`` (1e-10) times its
        diagonal entry of the normal matrix counts as dependent; the
        exception's ``sources`` attribute lists them.  Subclass of
        :class:`numpy.linalg.LinAlgError`.

    Warns
    -----
    UnconstrainedSourceWarning
        Once, with their number, when some sources have no unmasked pixel in
        the image and no prior; their weights and uncertainties are NaN and
        the other sources are fitted normally.

    Notes
    -----
    The uncertainties are ``sqrt(diag(N^-1))`` with ``N`` the normal matrix
    above (including the prior precision), computed exactly by supernodal
    selected inversion of the Cholesky factor -- no dense inverse is formed.

    Examples
    --------
    >>> import numpy as np, scipy.sparse
    >>> A = scipy.sparse.random(16, 3, density=0.6, random_state=0, format="csr")
    >>> truth = np.array([1.0, 2.0, 3.0])
    >>> res = fit_design(A, (A @ truth).reshape(4, 4), imshape=(4, 4))
    >>> np.allclose(res.weights, truth)
    True
    """
    # ---- validate -------------------------------------------------------
    solver = _check_solver(solver)
    H, W = _check_imshape(imshape)
    npix = H * W
    _check_design(A, npix, imshape)
    n = A.shape[1]

    data = np.asarray(data)
    if data.ndim not in (2, 3) or data.shape[:2] != (H, W):
        raise ValueError(f"data must have shape (H, W) = {(H, W)} or (H, W, k), got {data.shape}")
    stack = data.ndim == 3
    k = data.shape[2] if stack else 1
    D = data.reshape(npix, k)
    if D.dtype != np.float64:
        D = D.astype(np.float64)

    keep = _check_mask(mask, H, W)
    n_pixels = npix if keep is None else int(keep.sum())
    _check_data_finite(D, keep)

    E: np.ndarray | None = None
    groups = [np.arange(k)]
    if errors is not None:
        errors = np.asarray(errors, dtype=np.float64)
        if errors.shape == (H, W):
            E = errors.reshape(npix, 1)
        elif errors.shape == data.shape:
            E = errors.reshape(npix, k)
        else:
            raise ValueError(
                f"errors must have shape {(H, W)} or the shape of data {data.shape}, got {errors.shape}"
            )
        _check_errors(E, keep)
        if E.shape[1] > 1:
            groups = _frame_groups(E, keep)
            E = E[:, [int(g[0]) for g in groups]]
    ivar = _inverse_variance(E, keep)  # (npix, g), 0 where masked; None: unit, no mask

    prior_prec, mu = _check_prior(prior_mu, prior_sigma, n)
    A_csr, A_csc = _design_formats(A)

    # ---- one factorisation per distinct error map -----------------------
    weights = np.full((n, k), np.nan)
    err_fns: list[tuple[np.ndarray, Callable[[], np.ndarray]]] = []
    unconstrained = np.zeros(n, dtype=bool)
    for gi, frames in enumerate(groups):
        ne = NormalEquations._build(
            A_csr, A_csc, None if ivar is None else ivar[:, gi], keep, prior_prec, mu, solver
        )
        if gi == 0:
            unconstrained = ne.unconstrained
        if len(groups) == 1:
            weights = ne.solve(D)
        else:
            weights[:, frames] = ne.solve(D[:, frames])
        if return_errors:
            err_fns.append((frames, partial(_weights_err, ne.factor, ne.free)))
        del ne  # the weighted design matrix; the factor lives on in err_fns
    del A_csc
    _warn_unconstrained(unconstrained, stacklevel=3)  # via Sparse3D.fit / ROISparse3D.fit

    # ---- chi-square, model --------------------------------------------
    wz = np.where(np.isnan(weights), 0.0, weights)
    chi2 = _chi2(A_csr, wz, D, ivar, groups, keep)

    def model_fn() -> np.ndarray:
        M = A_csr @ (wz if stack else wz[:, 0])
        return M.reshape(H, W, k) if stack else M.reshape(H, W)

    weights_err_fn = None
    if return_errors:
        weights_err_fn = _combine_err_fns(err_fns, n, k)

    return FitResult(
        weights=weights if stack else weights[:, 0],
        chi2=chi2 if stack else float(chi2[0]),
        n_pixels=n_pixels,
        unconstrained=unconstrained,
        solver=solver,
        n_factorizations=len(groups),
        _model_fn=model_fn,
        _weights_err_fn=weights_err_fn,
    )


def _weights_err(factor: Any, free: np.ndarray) -> np.ndarray:
    """``sqrt(diag(N^-1))`` from the factor of ``N`` over the ``free`` sources; NaN elsewhere."""
    err = np.full(free.size, np.nan)
    err[free] = np.sqrt(factor.inv_diag())
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


def _combine_err_fns(
    err_fns: list[tuple[np.ndarray, Callable[[], np.ndarray]]], n: int, k: int
) -> Callable[[], np.ndarray]:
    """Merge the per-error-map uncertainty callbacks: (n,) or (n, k) result."""
    holder = list(err_fns)

    def fn() -> np.ndarray:
        if len(holder) == 1:
            out = holder[0][1]()
        else:
            out = np.empty((n, k))
            for frames, f in holder:
                out[:, frames] = f()[:, None]
        holder.clear()
        return out

    return fn


def _chi2(
    A: scipy.sparse.csr_matrix,
    wz: np.ndarray,
    D: np.ndarray,
    ivar: np.ndarray | None,
    groups: list[np.ndarray],
    keep: np.ndarray | None,
) -> np.ndarray:
    """Chi-square of each frame of ``D`` for the weights ``wz`` (n, k).

    The model is evaluated in blocks of rows so that no image-sized
    temporary is allocated.
    """
    npix, k = D.shape
    col_of_frame = None
    if ivar is not None and ivar.shape[1] > 1:
        col_of_frame = np.empty(k, dtype=np.intp)
        for gi, frames in enumerate(groups):
            col_of_frame[frames] = gi
    chunk = max(256, (1 << 18) // k)
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
        if keep is not None:
            r[~keep[i:j]] = 0.0
        np.square(r, out=r)
        if ivar is not None:
            r *= ivar[i:j] if col_of_frame is None else ivar[i:j][:, col_of_frame]
        out += r.sum(axis=0)
    return out
