"""Assembling the normal matrix ``A^T diag(ivar) A`` of a design: :func:`normal_matrix`.

From the stamps of a regular :class:`~sparse3d.Sparse3D` (every stamp group regular, for an
array with several) through the compiled kernels of :mod:`._stamp_kernels`, else SciPy's
``A^T A`` of the canonical CSR form; the power-of-two column scaling that keeps it
representable. Also the design formats (canonical CSR, row scaling by the weights) and the
regular stamps a fit works from instead of a design matrix (:func:`_regular_stamps`, every
stamp group's; the model ``A @ w`` from them is :func:`.rhs._stamp_model`'s). The background
block of a sky model is appended in :mod:`._joint`.
"""

from __future__ import annotations

import weakref
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse

from .. import _compiled, _threads
from ..core import Sparse3D


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


def _design_matrix(A: Any) -> scipy.sparse.csr_matrix | scipy.sparse.csc_matrix:
    """``A`` (a Sparse3D or a SciPy matrix) as a canonical float64 sparse matrix; ValueError if
    non-finite.

    It serves ``A @ x`` and ``A.T @ X`` (both fast in CSR and CSC). A SciPy matrix becomes
    CSR. A Sparse3D gives its cached CSR when it has one, else its CSC, which is its stamps in
    source-major order (no pixel-major reordering: 0.45 s of a 50,000-source fit), not cached
    on the array. Row blocks (the diagnostics) convert to CSR when they need it.
    """
    if isinstance(A, Sparse3D):
        if "_csr" in A.__dict__:
            M = A._csr
        else:
            indices, indptr = A._structure.csc_indices
            M = scipy.sparse.csc_matrix(
                (A._csc_data(), indices, indptr), shape=(A._structure.npixels, A.nsources), copy=False
            )
        M = _canonical(M)
    else:
        M = _canonical(scipy.sparse.csr_matrix(A))
    if not np.all(np.isfinite(M.data)):
        raise ValueError("A contains non-finite values")
    return M


# -- the normal matrix ---------------------------------------------------------------------
# Whether a structure's stamps are regular rectangles, and their corners: computed once per
# structure (a pass over all positions), shared by every array built on it.
_REGULAR: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _regular_corners(S: Sparse3D) -> tuple[np.ndarray, np.ndarray] | None:
    """Corners ``(r0, c0)`` (intp, ``(n,)``) if every stamp of ``S`` is a regular rectangle, else None.

    NumPy, one pass of ``(n,)`` comparisons per stamp pixel (no compiled kernel: small fits
    must not import numba).
    """
    st = S._structure
    hit = _REGULAR.get(st)
    if hit is None:
        nr, nc, n = st.stamp_shape
        hit = (False, None, None)
        if n and nr * nc:
            row, col = st.row, st.col
            r0 = row[0, 0].astype(np.intp)
            c0 = col[0, 0].astype(np.intp)
            ok = all(
                np.array_equal(row[a, b], r0 + a) and np.array_equal(col[a, b], c0 + b)
                for a in range(nr)
                for b in range(nc)
            )
            hit = (ok, r0, c0)
        _REGULAR[st] = hit
    ok, r0, c0 = hit
    return (r0, c0) if ok else None


def _regular_stamps(A: Any) -> list[tuple[tuple, np.ndarray | None]] | None:
    """The regular stamps of a large Sparse3D whose stamp groups are all regular, else None.

    One ``(stamps, sources)`` per non-empty stamp group: ``stamps`` is ``(values, r0, c0,
    (H, W), (imr, imc))`` with ``values`` float64, C order, read-only (the one compiled
    signature), ``sources`` the group's global source indices (None for a single-shape array).
    """
    if not isinstance(A, Sparse3D) or A._values.size < _compiled.COMPILED_MIN_NNZ:
        return None
    grouped = A._structure.grouped
    out = []
    for group, sources in zip(A.groups, A.group_sources):
        if group.nsources == 0:
            continue
        corners = _regular_corners(group)
        if corners is None:
            return None
        values = np.ascontiguousarray(group._values, dtype=np.float64).view()
        values.flags.writeable = False
        out.append(((values, corners[0], corners[1], A.imshape, A.imcorner), sources if grouped else None))
    return out or None


def _grid_fits(S: Sparse3D, r0: np.ndarray, c0: np.ndarray) -> bool:
    """Whether the grid of stamp-sized cells over the corners has int64-addressable cells."""
    nr, nc, _ = S._values.shape
    rows = (int(r0.max()) - int(r0.min())) // nr + 3
    cols = (int(c0.max()) - int(c0.min())) // nc + 3
    return rows * cols < 2**62


def _pow2_scale(colmax: np.ndarray) -> np.ndarray:
    """Powers of two ``c ~ 1 / colmax`` (exact to apply and undo); 1 where ``colmax`` is 0."""
    c = np.ones(colmax.shape)
    nz = colmax > 0
    c[nz] = np.exp2(-np.round(np.log2(colmax[nz])))
    return c


def _scaled_normal_matrix(
    design: Sparse3D | scipy.sparse.csr_matrix, ivar: np.ndarray | None, cells_out: list | None = None
) -> tuple[scipy.sparse.csr_matrix, np.ndarray]:
    """``(N, c)``: the lower triangle of ``diag(c) A^T diag(ivar) A diag(c)`` and the column scale.

    ``c[j]`` is the power of two nearest ``1 / max_i |A_ij| sqrt(ivar_i)`` (1 for an empty
    column): every column of the weighted design then has its largest entry in ``[0.7, 1.4]``,
    so no product underflows or overflows whatever the units of the stamps and errors, and
    scaling and unscaling are exact. Dispatches like :func:`normal_matrix`: a Sparse3D whose
    stamp groups are all regular goes through the compiled stamp kernels
    (:func:`_stamp_normal_matrix`), anything else through SciPy's ``A^T A``. ``cells_out``
    (a list) receives, on the stamp path, every group's weighted, scaled stamps and its
    sources' global indices (``(_Cells, gidx)``: what :func:`.rhs._cells_rhs` and
    :func:`.rhs._cells_residual` read).
    """
    if isinstance(design, Sparse3D) and design.nsources and design._values.size >= _compiled.COMPILED_MIN_NNZ:
        corners = [_kernel_corners(g) for g in design.groups]  # small designs: no numba import
        if all(x is not None for x in corners):
            return _stamp_normal_matrix(design, corners, ivar, cells_out)
    A = design.tocsr() if isinstance(design, Sparse3D) else design
    # CSC stays CSC (a fit's small Sparse3D design, source-major): one format conversion in the
    # product below, none before it
    fmt = scipy.sparse.csc_matrix if A.format == "csc" else scipy.sparse.csr_matrix
    A = _canonical(fmt(A))
    As = A if ivar is None else _row_scale(A, np.sqrt(ivar))
    n = A.shape[1]
    cols = As.indices if As.format == "csr" else np.repeat(np.arange(n), np.diff(As.indptr))
    colmax = np.zeros(n)
    if As.nnz:
        np.maximum.at(colmax, cols, np.abs(As.data))
    c = _pow2_scale(colmax)
    As = fmt((As.data * c[cols], As.indices, As.indptr), shape=As.shape)  # exact: powers of two
    G = scipy.sparse.tril(As.T @ As, format="csr")
    G.sort_indices()
    return G, c


_EMPTY = (np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.intp))


def _kernel_corners(S: Sparse3D) -> tuple[np.ndarray, np.ndarray] | None:
    """The corners of the single-shape ``S`` if the stamp kernels can take it (regular stamps
    on an int64-addressable grid; ``_EMPTY`` for no source), else None."""
    if S.nsources == 0:
        return _EMPTY
    corners = _regular_corners(S)
    if corners is None or not _grid_fits(S, *corners):
        return None
    return corners


class _Cells(NamedTuple):
    """One regular stamp group, weighted and column-scaled, in cell order (see ``_stamp_kernels``)."""

    B: np.ndarray  # (n, nr, nc) weighted, scaled stamps; B[p] is source order[p]
    order: np.ndarray
    skey: np.ndarray
    ncc: int
    r0: np.ndarray  # corners, in source order
    c0: np.ndarray
    c: np.ndarray  # the column scale, in source order
    imshape: tuple[int, int]
    imcorner: tuple[int, int]


def _cells(S: Sparse3D, r0: np.ndarray, c0: np.ndarray, sqrt_ivar: np.ndarray, has_ivar: bool) -> _Cells:
    """The weighted stamps of the single-shape, regular ``S`` in cell order, scaled to ``[0.7, 1.4]``."""
    from ._stamp_kernels import cell_order, scale_rows, weighted_stamps

    nr, nc, n = S._values.shape
    # one compiled signature: float64, C order, read-only (a view: the caller's flags stay)
    values = np.ascontiguousarray(S._values, dtype=np.float64).view()
    values.flags.writeable = False
    (H, W), (imr, imc) = S.imshape, S.imcorner
    order, skey, ncc = cell_order(r0, c0, nr, nc)
    B = np.empty((n, nr, nc))  # NumPy's allocation: huge pages (see weighted_stamps)
    colmax = weighted_stamps(values, order, r0, c0, sqrt_ivar, has_ivar, H, W, imr, imc, B)
    cp = _pow2_scale(colmax)  # in cell order
    scale_rows(B, cp)
    c = np.empty(n)
    c[order] = cp
    return _Cells(B, order, skey, int(ncc), r0, c0, c, (H, W), (imr, imc))


def _stamp_normal_matrix(
    design: Sparse3D,
    corners: list[tuple[np.ndarray, np.ndarray]],
    ivar: np.ndarray | None,
    cells_out: list | None = None,
) -> tuple[scipy.sparse.csr_matrix, np.ndarray]:
    """:func:`_scaled_normal_matrix` of a Sparse3D whose stamp groups are all regular.

    Every row's entries are counted first (:func:`._stamp_kernels.lower_counts` per group, the
    cross-group blocks' rows), the CSR arrays allocated once, and every group's own block
    written straight into them at its sources' global indices by
    :func:`._stamp_kernels.normal_lower`. With several groups the block between two groups
    comes from :func:`._stamp_kernels.normal_cross` (the sources of the group with the larger
    stamps look up the grid of the other's), placed first (``place_coo``), and the rows are
    sorted (``sort_rows``: one check pass when each group is a contiguous range of sources).
    """
    from ._stamp_kernels import lower_counts, normal_cross, normal_lower, place_coo, sort_rows

    n = design.nsources
    has_ivar = ivar is not None
    sqrt_ivar = np.sqrt(np.asarray(ivar, dtype=np.float64)) if has_ivar else np.zeros(0)
    groups = design.groups
    cells = [
        None if g.nsources == 0 else _cells(g, r0, c0, sqrt_ivar, has_ivar)
        for g, (r0, c0) in zip(groups, corners)
    ]
    del sqrt_ivar
    grouped = len(groups) > 1
    gidx = [np.array(x, dtype=np.int64) for x in design.group_sources]  # writeable: one signature
    # the sources with the larger stamps look up the grid of those with the smaller
    pairs = [
        (a, b) if cells[a].B[0].size <= cells[b].B[0].size else (b, a)
        for a in range(len(cells))
        for b in range(a + 1, len(cells))
        if cells[a] is not None and cells[b] is not None
    ]

    def cross_blocks() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        out = []
        for g, h in pairs:
            xg, xh = cells[g], cells[h]
            args_g = (xg.B, xg.order, xg.skey, xg.ncc, xg.r0, xg.c0, gidx[g])
            out.append(normal_cross(*args_g, xh.B, xh.order, xh.r0, xh.c0, gidx[h]))
        return out

    # the cross-group blocks (work only a grouped array has) in a worker thread while this one
    # counts the groups' own rows, when a core is free: the same entries either way
    work = sum(cells[g].B.size + cells[h].B.size for g, h in pairs)
    ahead = _threads.submit(cross_blocks) if pairs and _threads.threads_for(work) >= 2 else None
    cross = [] if ahead is not None else cross_blocks()
    counts = np.zeros(n, dtype=np.int64)  # entries per row
    own = []
    for x, idx in zip(cells, gidx):
        if x is not None:
            c = lower_counts(x.order, x.skey, x.ncc, x.r0, x.c0, x.B.shape[1], x.B.shape[2])
            counts[idx] += c
            own.append((x, idx, int(c.max())))
    if ahead is not None:
        cross = ahead.result()
    for rows, _, _ in cross:
        counts += np.bincount(rows, minlength=n)
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    fill = indptr[:-1].copy()
    indices = np.empty(int(indptr[-1]), dtype=np.int64)
    data = np.empty(int(indptr[-1]))
    # the cross entries first, each block in column order: with two groups each of which is a
    # contiguous range of sources (np.concatenate) every row then comes sorted, and
    # sort_rows only checks; it sorts the rows of interleaved groups or of several blocks
    for rows, cols, vals in cross:
        place_coo(fill, indices, data, rows, cols, vals)
    for x, idx, mmax in own:
        normal_lower(x.B, x.order, x.skey, x.ncc, x.r0, x.c0, mmax, idx, fill, indices, data)
        if cells_out is not None:
            cells_out.append((x, idx))
    if grouped:
        sort_rows(indptr, indices, data)
        c = design._structure.assemble([np.ones(0) if x is None else x.c for x in cells])
    else:
        c = cells[0].c
    idx_dtype = np.int32 if max(n, data.size) < 2**31 else np.int64
    N = scipy.sparse.csr_matrix(
        (data, indices.astype(idx_dtype), indptr.astype(idx_dtype)), shape=(n, n), copy=False
    )
    return N, c


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
    their shared pixels); so is an array with several stamp groups whose groups are all
    regular (each group's own block as above; the block between two groups by the sources of
    one looking up the grid of the other). Anything else goes through SciPy's ``A^T A`` of
    the CSR form.

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
