"""Factorisations of the normal matrix behind one small interface.

``_factorize(N, solver)`` takes the **lower triangle** of ``N`` (CSR, as
:func:`~sparse3d.fit.assemble.normal_matrix` returns it) and returns a :class:`Factor`:
``solve(b)`` for one or many right-hand sides (``b`` of shape ``(n,)`` or ``(n, k)``),
``inv_diag()`` for ``diag(N^-1)`` and ``portable()`` for a picklable copy (plain
NumPy/SciPy arrays) to ship to workers. Implementations:

``_QDLDLFactor``
    ``qdldl`` (Apache-2.0): AMD ordering and an ``L D L^T`` factorisation, one column at a
    time; its factor is postordered and amalgamated into relaxed supernodes
    (:mod:`.relaxed`: NumPy for small factors, :mod:`._factor_kernels` for large ones) for
    the blocked solves and the selected inversion; small factors solve with qdldl's own C
    solve. The default.
``_CholmodFactor``
    CHOLMOD's supernodal Cholesky through the optional ``cvxopt`` (GPL-3.0-or-later: the
    extra ``sparse3d[cholmod]``, for users who accept that licence).
``_SuperLUFactor``
    SciPy's SuperLU in symmetric mode, no pivoting: ``L D L^T``. The fallback.
``_SupernodalFactor`` / ``_TriangularFactor``
    The portable forms: supernodal blocks, or SciPy triangular CSR factors.
``_EmptyFactor``
    The 0 x 0 matrix (every source unconstrained).

A breakdown or a pivot below :data:`PIVOT_RTOL` times its diagonal entry raises the
internal ``_NotPositiveDefinite``; :func:`_factorize_or_raise` turns it into
:class:`~sparse3d.fit.SingularNormalMatrixError` naming the dependent sources.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import numpy as np
import scipy.sparse
import scipy.sparse.linalg

from .. import _compiled
from .._blas import single_threaded_blas
from .relaxed import _factor_index, _numpy_relaxed_supernodes, _relaxed_supernodal_factor
from .result import SingularNormalMatrixError
from .selinv import _close_pattern, _inv_entries, _Supernodal

_cholmod: Any = None  # cvxopt.cholmod, imported on first use (see _load_cholmod)
_cvx_matrix: Any = None
_cvx_spmatrix: Any = None
_CHOLMOD_TRIED = False

#: A source whose Cholesky pivot is below ``PIVOT_RTOL`` times its diagonal
#: entry of the normal matrix is treated as linearly dependent on the others.
PIVOT_RTOL = 1e-10

# cvxopt's CHOLMOD options are process-global: fits in several threads take turns setting them
_CHOLMOD_LOCK = threading.Lock()

# A small qdldl factor solves up to this many right-hand sides by qdldl's own C solve, one
# column at a time; more use the blocked supernodal solve.
_QDLDL_MAX_DIRECT_RHS = 32

# With CHOLMOD, up to this many right-hand sides are solved by CHOLMOD itself
# (which handles one column at a time); more use the blocked supernodal solve.
_CHOLMOD_MAX_DIRECT_RHS = 32


class Factor(Protocol):
    """The interface every factorisation of ``N`` (``n x n``, symmetric positive definite) offers."""

    name: str

    def solve(self, b: np.ndarray) -> np.ndarray:
        """Solve ``N x = b`` for ``b`` of shape ``(n,)`` or ``(n, k)`` (all columns at once)."""
        ...

    def inv_diag(self) -> np.ndarray:
        """Return ``diag(N^-1)``, shape ``(n,)``."""
        ...

    def inv_entries(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Return the entries ``N^-1[i, j]`` for pairs on the pattern of ``N`` (selected inversion)."""
        ...

    def portable(self) -> Factor:
        """This factor as plain NumPy/SciPy arrays: picklable, no solver library objects."""
        ...


def _load_cholmod() -> bool:
    """Import CHOLMOD from the optional ``cvxopt`` (GPL) once; whether it is available."""
    global _cholmod, _cvx_matrix, _cvx_spmatrix, _CHOLMOD_TRIED
    if not _CHOLMOD_TRIED:
        _CHOLMOD_TRIED = True
        try:
            from cvxopt import cholmod, matrix, spmatrix
        except ImportError:  # pragma: no cover - depends on the environment
            return False
        _cholmod, _cvx_matrix, _cvx_spmatrix = cholmod, matrix, spmatrix
    return _cholmod is not None


def _has_qdldl() -> bool:
    try:
        import qdldl  # noqa: F401
    except ImportError:  # pragma: no cover - qdldl is a runtime dependency
        return False
    return True


def available_solvers() -> tuple[str, ...]:
    """Return the names of the sparse solvers usable in this environment.

    Returns
    -------
    tuple of str
        ``"qdldl"`` (the default; a runtime dependency), ``"superlu"`` (SciPy, always)
        and ``"cholmod"`` when the optional ``cvxopt`` is installed
        (``pip install "sparse3d[cholmod]"``; GPL-3.0-or-later).
    """
    names = ("qdldl",) if _has_qdldl() else ()
    names += ("superlu",)
    return names + (("cholmod",) if _load_cholmod() else ())


def _full_from_lower(N: scipy.sparse.csr_matrix) -> scipy.sparse.csc_matrix:
    """The symmetric matrix whose lower triangle is ``N``, as CSC."""
    full = N + N.T - scipy.sparse.diags(N.diagonal())
    return scipy.sparse.csc_matrix(full)


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

    def inv_entries(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Return ``N^-1[i, j]`` by supernodal selected inversion (pairs on the pattern of ``N``)."""
        return _inv_entries(self._supernodal(), self.perm, self.solve, i, j)

    def portable(self) -> _SupernodalFactor:
        """This factor as supernodal blocks only (picklable, no solver library objects)."""
        sup = self._supernodal()  # first: building the blocks may reorder self.perm (qdldl)
        return _SupernodalFactor(self.perm, sup)


class _CholmodFactor(_SupernodalFactor):
    """Supernodal CHOLMOD factorisation ``N[p][:, p] = L L^T`` via cvxopt."""

    name = "cholmod"

    def __init__(self, N: scipy.sparse.csr_matrix) -> None:
        n = N.shape[0]
        self.n = n
        _load_cholmod()
        low = N.tocoo()
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


class _QDLDLFactor(_SupernodalFactor):
    """``qdldl``'s ``L D L^T`` (AMD ordering), as relaxed supernodes for many solves and errors.

    Until the supernodal blocks are needed (:meth:`inv_diag`, :meth:`portable`, many
    right-hand sides of a small factor), solves run without them: a large factor
    (:data:`~sparse3d._compiled.COMPILED_MIN_NNZ` entries or more) drops ``qdldl``'s object and
    runs a compiled sparse ``L D L^T`` solve over all right-hand sides at once; a small one
    keeps ``qdldl``'s object and solves each of up to :data:`_QDLDL_MAX_DIRECT_RHS` columns
    with its C solve (no numba import), and builds its relaxed supernodes in NumPy
    (:func:`_numpy_relaxed_supernodes`) when the blocks are needed.
    """

    name = "qdldl"

    def __init__(
        self, N: scipy.sparse.csr_matrix, reuse: _QDLDLFactor | None = None, keep_symbolic: bool = False
    ) -> None:
        import qdldl

        n = N.shape[0]
        self.n = n
        # the lower triangle in CSR is the upper triangle in CSC: what qdldl takes, no copy
        upper = scipy.sparse.csc_matrix((N.data, N.indices, N.indptr), shape=(n, n))
        # qdldl's object holds the symbolic analysis (AMD ordering, elimination tree): taken
        # over from ``reuse`` when N's pattern is the same, refactorised numerically only
        symbolic = None if reuse is None else reuse._take_symbolic(N)
        try:
            if symbolic is not None:
                F = symbolic
                F.update(upper, upper=True)
            else:
                F = qdldl.Solver(upper, upper=True)
        except (ValueError, RuntimeError) as exc:  # a zero pivot
            raise _NotPositiveDefinite() from exc
        self.reused_symbolic = symbolic is not None
        L, D, P = F.factors()
        self._symbolic = (F, N.indptr.copy(), N.indices.copy()) if keep_symbolic else None
        self.perm = np.asarray(P, dtype=np.intp)
        bad = _small_pivots(D, N.diagonal()[self.perm])
        if bad.size:
            raise _NotPositiveDefinite(self.perm[bad])
        L = scipy.sparse.csc_matrix(L)
        L.sort_indices()
        D = np.asarray(D, dtype=np.float64)
        self._super = None
        self._small = L.nnz < _compiled.COMPILED_MIN_NNZ
        # small: qdldl's own solve (its object is handed over with the symbolic analysis: see
        # _take_symbolic); large: compiled kernels, one signature: int32 indices (cast once)
        self._F: Any = F if self._small else None
        del F
        if not self._small:
            L.indptr, L.indices = _factor_index(L.indptr, L.nnz), _factor_index(L.indices, L.nnz)
        # the factor, with the order it is in (building the blocks postorders self.perm)
        self._LD: tuple[scipy.sparse.csc_matrix, np.ndarray, np.ndarray] | None = (L, D, self.perm)
        self._lock = threading.Lock()

    def _take_symbolic(self, N: scipy.sparse.csr_matrix) -> Any:
        """qdldl's solver object (its symbolic analysis) if ``N`` has the pattern it was built
        for, handed over (this factor keeps its own numeric factor); else None."""
        if self._symbolic is None:
            return None
        F, indptr, indices = self._symbolic
        if not (np.array_equal(indptr, N.indptr) and np.array_equal(indices, N.indices)):
            return None
        self._symbolic = None
        self._F = None  # refactorised by its new owner: this factor solves with (L, D) from now on
        return F

    def _supernodal(self) -> _Supernodal:
        with self._lock:  # built once, also when several threads ask for errors at once
            if self._super is None:
                assert self._LD is not None
                L, D, perm = self._LD
                if self._small:  # NumPy only: no numba import
                    post, sup = _numpy_relaxed_supernodes(L, D)
                else:
                    post, Lsn = _relaxed_supernodal_factor(L, D)
                    sup = _Supernodal(Lsn)
                del L
                # perm and blocks change together; solves use the blocks from now on (or
                # qdldl's object, if kept)
                self.perm, self._super, self._LD = perm[post], sup, None
        return self._super

    def solve(self, b: np.ndarray) -> np.ndarray:
        b2 = np.asarray(b, dtype=np.float64).reshape(self.n, -1)
        k = b2.shape[1]
        F = self._F  # read once: a later factor may take it over (_take_symbolic)
        if F is not None and k <= _QDLDL_MAX_DIRECT_RHS:
            # qdldl's C solve, one column at a time (it allocates its own work: thread-safe)
            out = np.empty((self.n, k))
            for i in range(k):
                out[:, i] = F.solve(b2[:, i])
            return out.reshape(b.shape)
        LD = self._LD  # read once: another thread may be building the blocks
        if LD is None or self._small:
            return self._blocked_solve(b)
        from ._factor_kernels import ldlt_solve

        L, D, perm = LD
        x = np.ascontiguousarray(b2[perm])
        ldlt_solve(L.indptr, L.indices, np.ascontiguousarray(L.data, dtype=np.float64), D, x)
        out = np.empty(x.shape)
        out[perm] = x
        return out.reshape(b.shape)


class _SuperLUFactor(_SupernodalFactor):
    """SuperLU ``L D L^T`` factorisation (symmetric mode, no pivoting)."""

    name = "superlu"

    def __init__(self, N: scipy.sparse.csr_matrix) -> None:
        n = N.shape[0]
        self.n = n
        Nc = _full_from_lower(N)
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
            with single_threaded_blas():  # several times faster for many columns
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

    def inv_entries(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        sup = _Supernodal(_close_pattern(self.lower.tocsc()))
        return _inv_entries(sup, self.perm, self.solve, i, j)

    def portable(self) -> _TriangularFactor:
        return self


class _EmptyFactor:
    """Factor of a 0 x 0 matrix (every source unconstrained)."""

    name = "empty"

    def solve(self, b: np.ndarray) -> np.ndarray:
        return np.zeros(b.shape)

    def inv_diag(self) -> np.ndarray:
        return np.zeros(0)

    def inv_entries(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return np.zeros(np.size(i))

    def portable(self) -> _EmptyFactor:
        return self


def _resolve_auto(N: scipy.sparse.csr_matrix, boxes: Any) -> str:
    """The solver ``"auto"`` picks: the built-in ``"nd"`` for stamp geometry and a matrix
    large enough for compiled kernels, else the first available (qdldl, else SuperLU)."""
    if boxes is not None and N.nnz >= _compiled.COMPILED_MIN_NNZ:
        return "nd"
    return available_solvers()[0]


def _uses_boxes(N: scipy.sparse.csr_matrix, solver: str, reuse: Any = None) -> bool:
    """Whether :func:`_factorize` of ``N`` with ``solver`` and ``reuse`` would use stamp boxes
    (``"nd"``, or ``"auto"`` resolving to it): the caller computes them only then."""
    if solver == "auto" and (reuse is None or reuse is False):
        return N.shape[0] > 0 and _resolve_auto(N, True) == "nd"
    return solver == "nd"


def _solver_name(factor: Any, requested: str) -> str:
    """The solver that made ``factor`` (``"auto"`` resolved; an empty factor: the default)."""
    name = getattr(factor, "name", "")
    if name in ("nd", "qdldl", "superlu", "cholmod"):
        return name
    return available_solvers()[0] if requested in ("auto", "nd") else requested


def _factorize(
    N: scipy.sparse.csr_matrix, solver: str, reuse: Any = None, boxes: Any = None
) -> _SupernodalFactor | _EmptyFactor:
    """Factorise the SPD matrix whose lower triangle is ``N``; raise ``_NotPositiveDefinite``.

    ``reuse``: a previous factor whose symbolic analysis is taken over when ``N`` has its
    pattern (qdldl only), or True; either way the new factor keeps its own analysis for the
    next one. None: neither. ``boxes``: the stamp boxes of the parameters
    (:func:`.ordering.stamp_boxes`) for the nested-dissection ordering of ``"nd"``; without
    them ``"nd"`` falls back to qdldl.
    """
    if N.shape[0] == 0:
        return _EmptyFactor()
    if solver == "auto":
        # a reused symbolic analysis is qdldl's (prepare_normal_equations(..., reuse=))
        solver = _resolve_auto(N, None if reuse is not None and reuse is not False else boxes)
    if solver == "nd":
        if boxes is not None:
            from .supernodal import _NDFactor

            return _NDFactor(N, boxes)
        solver = available_solvers()[0]
    if solver == "qdldl":
        prev = reuse if isinstance(reuse, _QDLDLFactor) else None
        return _QDLDLFactor(N, reuse=prev, keep_symbolic=reuse is not None and reuse is not False)
    if solver == "cholmod":
        return _CholmodFactor(N)
    return _SuperLUFactor(N)


def _diagnose_singular(N: scipy.sparse.csr_matrix) -> np.ndarray:
    """Find the columns responsible for the singularity of the PSD matrix with lower triangle ``N``.

    The matrix is shifted by a tiny multiple of its diagonal, which keeps it
    positive definite, and factorised; the dependent columns are those with
    pivots of the order of the shift.
    """
    d = N.diagonal()
    shifted = _full_from_lower(N + scipy.sparse.diags(1e-13 * d))
    try:
        lu = _splu_ldlt(shifted)
    except RuntimeError:
        return np.zeros(0, dtype=np.intp)
    perm = np.argsort(lu.perm_c)
    return np.sort(perm[_small_pivots(lu.U.diagonal(), d[perm])])


def _factorize_or_raise(
    N: scipy.sparse.csr_matrix,
    idx: np.ndarray | None,
    solver: str,
    reuse: Any = None,
    boxes: Any = None,
    n_sources: int | None = None,
) -> Any:
    """``_factorize(N, solver, reuse, boxes)``, raising :class:`SingularNormalMatrixError` naming
    the sources (and the background coefficients) at fault.

    ``idx`` maps the rows of ``N`` to parameters (None: the identity); parameters from
    ``n_sources`` on are a background model's coefficients (None: every one is a source).
    """
    try:
        return _factorize(N, solver, reuse, boxes)
    except _NotPositiveDefinite as exc:
        cols = exc.columns if exc.columns is not None else _diagnose_singular(N)
        cols = np.sort(cols if idx is None else idx[cols])
        if n_sources is None:
            src, bg = cols, cols[:0]
        else:
            src, bg = cols[cols < n_sources], cols[cols >= n_sources] - n_sources

        def listed(what: np.ndarray, name: str) -> str:
            shown = ", ".join(str(c) for c in what[:20]) + (" ..." if what.size > 20 else "")
            return f"{what.size} {name}(s) [{shown}]"

        parts = [listed(x, name) for x, name in ((src, "source"), (bg, "background coefficient")) if x.size]
        raise SingularNormalMatrixError(
            "the normal matrix A^T C^-1 A + P is singular: "
            + (
                f"{' and '.join(parts)} are linearly dependent on the other parameters "
                "(e.g. identical columns of A). "
                if parts
                else "some sources are linearly dependent on others. "
            )
            + "Remove or merge them, or give them a prior (prior_sigma).",
            sources=src,
            background=bg,
        ) from None
