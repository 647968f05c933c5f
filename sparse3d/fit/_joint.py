"""The joint normal matrix of the sources and a background model's columns.

:func:`_with_background_block` appends the background block to the sources' scaled normal
matrix (lower triangle, as :func:`~sparse3d.fit.normal_matrix` forms it), in CSR without a
format round trip; :func:`_hcat_csr` concatenates two CSR matrices row by row.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse

from .assemble import _canonical, _pow2_scale, _row_scale

#: Background models with at most this many coefficients have their coupling block
#: ``A^T C^-1 B`` computed as a sparse-times-dense product (cheaper than sparse-times-sparse).
_DENSE_BACKGROUND_MAX = 64


def _with_background_block(
    G: scipy.sparse.csr_matrix,
    c: np.ndarray,
    A_csr: scipy.sparse.csr_matrix,
    B: scipy.sparse.csr_matrix,
    ivar: np.ndarray | None,
) -> tuple[scipy.sparse.csr_matrix, np.ndarray]:
    """The scaled joint normal matrix of the design ``[A, B]`` (lower triangle) and its column scale.

    ``G`` is the lower triangle of the sources' block ``diag(c) A^T diag(ivar) A diag(c)`` (as
    :func:`_scaled_normal_matrix` returns it), ``B`` the ``(npix, nb)`` columns of a background
    model.  The background columns get their own power-of-two scale ``c_B`` (the same rule
    as the sources'); the result is the lower triangle of ``[[N_AA, .], [N_BA, N_BB]]`` with
    ``N_BA = diag(c_B) B^T diag(ivar) A diag(c)`` and ``N_BB = diag(c_B) B^T diag(ivar) B diag(c_B)``,
    assembled row by row in CSR (no format round trip): one sparse matrix, no dense inverse.
    """
    n, nb = G.shape[0], B.shape[1]
    Bs = B if ivar is None else _row_scale(B, np.sqrt(ivar))
    colmax = np.zeros(nb)
    if Bs.nnz:
        np.maximum.at(colmax, Bs.indices, np.abs(Bs.data))
    cb = _pow2_scale(colmax)
    Bw = _row_scale(Bs, np.ones(B.shape[0])) if ivar is None else _row_scale(B, ivar)
    if nb <= _DENSE_BACKGROUND_MAX:  # polynomials: narrow, dense-valued columns
        NBA = scipy.sparse.csr_matrix(np.asarray(A_csr.T @ Bw.toarray()).T)
    else:  # a grid: every pixel touches few nodes
        NBA = _canonical(scipy.sparse.csr_matrix(Bw.T.tocsr() @ A_csr))  # CSR @ CSR: no conversion of A
    NBA.data *= cb[np.repeat(np.arange(nb), np.diff(NBA.indptr))] * c[NBA.indices]
    NBB = _canonical(scipy.sparse.tril(B.T @ Bw, format="csr"))
    NBB.data *= cb[np.repeat(np.arange(nb), np.diff(NBB.indptr))] * cb[NBB.indices]
    bottom = _hcat_csr(NBA, NBB)
    joint = scipy.sparse.csr_matrix(
        (
            np.concatenate([G.data, bottom.data]),
            np.concatenate([G.indices, bottom.indices]),
            np.concatenate([G.indptr.astype(np.int64), bottom.indptr[1:] + G.nnz]),
        ),
        shape=(n + nb, n + nb),
    )
    return joint, np.concatenate([c, cb])


def _hcat_csr(X: scipy.sparse.csr_matrix, Y: scipy.sparse.csr_matrix) -> scipy.sparse.csr_matrix:
    """``[X, Y]`` of two canonical CSR matrices with the same rows, canonical, built directly."""
    lx, ly = np.diff(X.indptr), np.diff(Y.indptr)
    indptr = X.indptr.astype(np.int64) + Y.indptr
    data = np.empty(X.nnz + Y.nnz)
    indices = np.empty(X.nnz + Y.nnz, dtype=np.int64)
    pos_x = np.arange(X.nnz) + np.repeat(Y.indptr[:-1], lx)
    pos_y = np.arange(Y.nnz) + np.repeat(X.indptr[1:], ly)
    data[pos_x], indices[pos_x] = X.data, X.indices
    data[pos_y], indices[pos_y] = Y.data, Y.indices + X.shape[1]
    return scipy.sparse.csr_matrix((data, indices, indptr), shape=(X.shape[0], X.shape[1] + Y.shape[1]))
