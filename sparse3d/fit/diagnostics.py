"""Diagnostics of a fit: residuals, chi-square per frame and per source, flags, covariances.

:class:`_FitContext` keeps what a :class:`~sparse3d.fit.FitResult` needs to compute its
diagnostics on first access: the design (sources and background columns), the frames, the
inverse variances and masks, and per distinct normal matrix its Gram matrix, free
parameters and factor. The statistics run over the pixels in blocks of rows, so no
image-sized temporary beyond one output is allocated.

Flags (:class:`FitFlags`, bit values of ``FitResult.flags``):

=================  ===  ================================================================
``UNCONSTRAINED``    1  no unmasked pixel and no prior: weight and error are NaN
``PARTLY_MASKED``    2  some (or all) of the source's pixels are masked
``MASKED_CORE``      4  the source's brightest model pixel is masked
``SATURATED``        8  a pixel of the source is at or above ``saturation`` (then masked)
``BLENDED``         16  a neighbour's normalised overlap ``N_ij / sqrt(N_ii N_jj)`` (of the
                        data part of the normal matrix) exceeds ``BLEND_THRESHOLD`` (0.1)
=================  ===  ================================================================

A source's pixels are the non-zero entries of its column of the design matrix (its stamp
inside the image). For Gaussian stamps of width ``sigma`` the overlap of two sources
``d`` apart is ``exp(-d**2 / (4 sigma**2))``: 0.1 is about ``d = 3 sigma``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse

#: Default threshold of the normalised overlap above which two sources count as blended.
BLEND_THRESHOLD = 0.1


class FitFlags(enum.IntFlag):
    """Bit flags of :attr:`FitResult.flags` (combine with ``|``, test with ``&``)."""

    UNCONSTRAINED = 1
    PARTLY_MASKED = 2
    MASKED_CORE = 4
    SATURATED = 8
    BLENDED = 16


def _row_block(M: scipy.sparse.csr_matrix, i: int, j: int) -> scipy.sparse.csr_matrix:
    """Rows ``i:j`` of the CSR matrix ``M`` without copying its arrays."""
    a, b = M.indptr[i], M.indptr[j]
    return scipy.sparse.csr_matrix(
        (M.data[a:b], M.indices[a:b], M.indptr[i : j + 1] - a), shape=(j - i, M.shape[1])
    )


def _as_csr(M: scipy.sparse.spmatrix) -> scipy.sparse.csr_matrix:
    """``M`` as CSR (itself when it is one): the row blocks below need rows."""
    return M if M.format == "csr" else scipy.sparse.csr_matrix(M)


def _squared_residual_blocks(
    A: scipy.sparse.csr_matrix,
    B: scipy.sparse.csr_matrix | None,
    wz: np.ndarray,
    D: np.ndarray,
    ivar: np.ndarray | None,
    col_of_frame: np.ndarray | None,
    keep: np.ndarray | None,
    err_scale: float = 1.0,
) -> Iterator[tuple[int, int, np.ndarray]]:
    """Yield ``(i, j, r)``: ``r = ((D - model) / errors)**2`` over pixel rows ``i:j``, 0 where masked.

    ``wz`` ``(n + nb, k)`` holds the weights then the background coefficients (no NaN);
    ``ivar`` ``(npix, g)`` the inverse variances of the distinct maps, ``col_of_frame`` the
    map of each frame (None: column 0, or unit errors when ``ivar`` is None); ``keep``
    ``(npix,)``, ``(npix, 1)`` or ``(npix, k)``, True on used pixels (None: all).  ``ivar``
    may hold the scaled ``(err_scale / errors)**2`` of the normal equations: the residuals
    are divided by ``err_scale`` first.
    """
    npix, k = D.shape
    n = A.shape[1]
    A = _as_csr(A)  # the fit's design may be CSC (a Sparse3D's, built without a conversion)
    if keep is not None and keep.ndim == 1:
        keep = keep[:, None]
    chunk = max(256, (1 << 18) // max(1, k))
    for i in range(0, npix, chunk):
        j = min(i + chunk, npix)
        r = _row_block(A, i, j) @ wz[:n]
        if B is not None:
            r += _row_block(B, i, j) @ wz[n:]
        np.subtract(D[i:j], r, out=r)
        if err_scale != 1.0:
            r /= err_scale
        if keep is not None:
            r[~np.broadcast_to(keep[i:j], r.shape)] = 0.0
        np.square(r, out=r)
        if ivar is not None:
            r *= ivar[i:j] if col_of_frame is None else ivar[i:j][:, col_of_frame]
        yield i, j, r


def _chi2(
    A: scipy.sparse.csr_matrix,
    wz: np.ndarray,
    D: np.ndarray,
    ivar: np.ndarray | None,
    col_of_frame: np.ndarray | None,
    keep: np.ndarray | None,
    B: scipy.sparse.csr_matrix | None = None,
    err_scale: float = 1.0,
) -> np.ndarray:
    """Chi-square of each frame of ``D`` ``(npix, k)``: shape ``(k,)`` (arguments as above)."""
    out = np.zeros(D.shape[1])
    for _, _, r in _squared_residual_blocks(A, B, wz, D, ivar, col_of_frame, keep, err_scale):
        out += r.sum(axis=0)
    return out


@dataclass
class _Group:
    """One distinct normal matrix: its frames, Gram matrix, free parameters and factor."""

    frames: np.ndarray
    gram: scipy.sparse.csr_matrix  # lower triangle of the scaled [A, B]^T C^-1 [A, B], no prior
    free: np.ndarray  # (n + nb,) bool
    factor: Any  # of the scaled N'; None when the fit did not keep it (return_errors=False)
    scale: np.ndarray  # (n + nb,): err_scale * col_scale, N^-1 = diag(scale) N'^-1 diag(scale)


class _FitContext:
    """What the lazy diagnostics of one fit need (see the module docstring)."""

    def __init__(
        self,
        A: scipy.sparse.csr_matrix,
        B: scipy.sparse.csr_matrix | None,
        D: np.ndarray,
        imshape: tuple[int, int],
        stack: bool,
        ivar: np.ndarray | None,
        col_of_frame: np.ndarray | None,
        keep: np.ndarray | None,
        saturated: np.ndarray | None,
        groups: list[_Group],
        wz: np.ndarray,
        err_scale: float = 1.0,
    ) -> None:
        # the design, or a function that builds it (a Sparse3D fit's, made on first use)
        self._A = A
        self.B, self.D = B, D
        self.imshape, self.stack = imshape, stack
        self.ivar, self.col_of_frame, self.keep = ivar, col_of_frame, keep
        self.saturated = saturated  # (npix, 1 or k) bool, or None
        self.groups = groups
        self.wz = wz
        self.n = wz.shape[0] - (0 if B is None else B.shape[1])
        self.err_scale = err_scale  # ivar holds (err_scale / errors)**2
        self._P: scipy.sparse.csr_matrix | None = None

    @property
    def A(self) -> scipy.sparse.spmatrix:
        """The design matrix (built on first use when the fit had none)."""
        if callable(self._A):
            self._A = self._A()
        return self._A

    # -- images ------------------------------------------------------------------------------
    def _image(self, flat: np.ndarray) -> np.ndarray:
        H, W = self.imshape
        return flat.reshape(H, W, -1) if self.stack else flat.reshape(H, W)

    def background_image(self) -> np.ndarray | None:
        if self.B is None:
            return None
        return self._image(self.B @ self.wz[self.n :])

    def residuals(self) -> np.ndarray:
        """``data - model`` per pixel, NaN where masked."""
        R = self.D - self.A @ self.wz[: self.n]
        if self.B is not None:
            R -= self.B @ self.wz[self.n :]
        if self.keep is not None:
            R[~np.broadcast_to(self.keep, R.shape)] = np.nan
        return self._image(R)

    # -- per-source statistics ---------------------------------------------------------------
    def _pattern(self) -> scipy.sparse.csr_matrix:
        """The design's pattern: 1 where a source has a (non-zero) pixel (built once)."""
        if self._P is None:
            P = _as_csr(self.A).copy()
            P.data = (P.data != 0).astype(np.float64)
            self._P = P
        return self._P

    def source_stats(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-source chi-square over its pixels and number of unmasked pixels: ``(n, k)`` each."""
        P = self._pattern()
        k = self.D.shape[1]
        chi2 = np.zeros((self.n, k))
        blocks = _squared_residual_blocks(
            self.A, self.B, self.wz, self.D, self.ivar, self.col_of_frame, self.keep, self.err_scale
        )
        for i, j, r in blocks:
            chi2 += _row_block(P, i, j).T @ r
        npix = self._count(P, self.keep, k)
        return chi2, npix

    def _count(self, P: scipy.sparse.csr_matrix, where: np.ndarray | None, k: int) -> np.ndarray:
        """``(n, k)`` number of each source's pixels where ``where`` ``(npix, 1 or k)`` holds (None: all)."""
        if where is None:
            counts = (P.T @ np.ones(P.shape[0]))[:, None]
        else:
            counts = P.T @ where.astype(np.float64)
        return np.broadcast_to(np.rint(counts).astype(np.int64), (self.n, k))

    def flags(self, threshold: float) -> np.ndarray:
        """``(n, k)`` uint8 flags (:class:`FitFlags`)."""
        k = self.D.shape[1]
        P = self._pattern()
        flags = np.zeros((self.n, k), dtype=np.uint8)
        for g in self.groups:
            in_group = np.isin(np.arange(k), g.frames)[None, :]
            flags[~g.free[: self.n, None] & in_group] |= np.uint8(FitFlags.UNCONSTRAINED)
            blended = _max_overlap(g.gram, self.n) > threshold
            flags[np.ix_(blended, g.frames)] |= np.uint8(FitFlags.BLENDED)
        if self.keep is not None:
            masked = self._count(P, ~self.keep, k) > 0
            flags[masked] |= np.uint8(FitFlags.PARTLY_MASKED)
            core = _brightest_pixel(self.A)
            has = core >= 0
            core_masked = np.zeros((self.n, k), dtype=bool)
            core_masked[has] = ~np.broadcast_to(self.keep[core[has]], (int(has.sum()), k))
            flags[core_masked] |= np.uint8(FitFlags.MASKED_CORE)
        if self.saturated is not None:
            flags[self._count(P, self.saturated, k) > 0] |= np.uint8(FitFlags.SATURATED)
        return flags

    # -- covariance --------------------------------------------------------------------------
    def covariance(self, group: int, neighbours: bool) -> scipy.sparse.csr_matrix:
        """``N^-1`` on the pattern of ``N`` (``neighbours``) or its diagonal, ``(n + nb, n + nb)``."""
        g = self.groups[group]
        if g.factor is None:
            raise ValueError("covariance() needs the factorisation: fit with return_errors=True")
        m = g.free.size
        idx = np.flatnonzero(g.free)
        pos = np.full(m, -1)
        pos[idx] = np.arange(idx.size)
        if neighbours:
            G = scipy.sparse.coo_matrix(g.gram)
            lower = G.row >= G.col
            rows = np.concatenate([G.row[lower], np.arange(m)])
            cols = np.concatenate([G.col[lower], np.arange(m)])
            keys = np.unique(rows.astype(np.int64) * m + cols)
            rows, cols = keys // m, keys % m
            ok = g.free[rows] & g.free[cols]
            rows, cols = rows[ok], cols[ok]
        else:
            rows = cols = idx
        vals = g.factor.inv_entries(pos[rows], pos[cols]) * g.scale[rows] * g.scale[cols]
        off = rows != cols
        C = scipy.sparse.coo_matrix(
            (
                np.concatenate([vals, vals[off]]),
                (np.concatenate([rows, cols[off]]), np.concatenate([cols, rows[off]])),
            ),
            shape=(m, m),
        )
        return scipy.sparse.csr_matrix(C)


def _max_overlap(gram: scipy.sparse.csr_matrix, n: int) -> np.ndarray:
    """Per source, the largest ``|G_ij| / sqrt(G_ii G_jj)`` over the other sources ``j < n``.

    ``gram`` may be the full symmetric matrix or one triangle, and scaled by any positive
    diagonal (the ratio is invariant).
    """
    G = scipy.sparse.coo_matrix(gram)
    d = G.diagonal()
    sel = (G.row < n) & (G.col < n) & (G.row != G.col)
    r, c, v = G.row[sel], G.col[sel], G.data[sel]
    den = np.sqrt(d[r] * d[c])
    with np.errstate(divide="ignore", invalid="ignore"):
        ov = np.where(den > 0, np.abs(v) / den, 0.0)
    out = np.zeros(n)
    np.maximum.at(out, r, ov)
    np.maximum.at(out, c, ov)
    return out


def _brightest_pixel(A: scipy.sparse.csr_matrix) -> np.ndarray:
    """Per source (column), the pixel (row) of its largest design value; -1 for empty columns."""
    C = scipy.sparse.csc_matrix(A)
    n = C.shape[1]
    out = np.full(n, -1, dtype=np.int64)
    counts = np.diff(C.indptr)
    if C.nnz == 0:
        return out
    col = np.repeat(np.arange(n), counts)
    order = np.lexsort((-C.data, col))  # by column, largest value first
    first = C.indptr[:-1][counts > 0]
    out[counts > 0] = C.indices[order[first]]
    return out
