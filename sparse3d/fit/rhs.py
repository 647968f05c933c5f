"""Right-hand sides ``A^T C^-1 D`` and ``D^T C^-1 D`` of a fit straight from regular stamps.

The Python side of :mod:`._rhs_kernels` (imported lazily: these functions run only on the
compiled path, where numba is loaded anyway): the order in which the sources are visited
(with many frames an image sweep, stamp rows by column, so that a frame stack is read from
memory once, in order), and the weights and mask passed through without a weighted copy of
the frames. Large many-frame problems run in threads (:mod:`sparse3d._threads`): the image
sweep in bands of sources, the passes over all pixels in ranges of pixel blocks; every sum is
the same operations in the same order whatever the thread count (the same bits).
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from .. import _threads
from .._blas import single_threaded_blas


def _stamp_rhs(
    stamps: tuple,
    U: np.ndarray,
    ivar: np.ndarray | None = None,
    keep: np.ndarray | None = None,
    square_scale: float | None = None,
) -> Any:
    """``A^T (ivar U)`` (``U`` ``(npix,)`` or ``(npix, k)``) from the regular stamps ``stamps``.

    ``ivar`` ``(npix,)`` (None: unit weights); ``keep`` ``(npix,)`` (None: every pixel), the
    masked pixels of ``U`` ignored whatever they hold. With ``square_scale`` (``U`` 2-D, C-contiguous
    float64), returns ``(rhs, square_sum)``: also ``sum_p ivar_p (square_scale U_p)**2`` per column,
    the bits of :func:`_stamp_square_sum` by image rows (:func:`_square_sum_block`), made by the
    image sweep in the same read of ``U`` (many frames), else by its own pass.
    """
    from ._rhs_kernels import stamp_rhs

    values, r0, c0, (H, W), (imr, imc) = stamps
    U2 = np.ascontiguousarray(np.asarray(U, dtype=np.float64).reshape(U.shape[0], -1))
    m = U2.shape[1]
    order = np.empty(0, dtype=np.intp)
    if m >= _RHS_ORDER_MIN_FRAMES:
        order = np.argsort(c0, kind="stable").astype(np.intp, copy=False)
    ivar = np.empty(0) if ivar is None else np.ascontiguousarray(ivar, dtype=np.float64)
    keep = np.empty(0, dtype=bool) if keep is None else np.ascontiguousarray(keep, dtype=bool)
    fused = square_scale is not None and order.size > 0 and H * W > 0
    sq = np.empty((H, m)) if fused else np.empty((0, 0))
    scale = 1.0 if square_scale is None else float(square_scale)
    nt = _threads.threads_for(values.size * m) if order.size else 1
    if nt > 1:
        out = _banded_rhs(values, r0, c0, U2, (H, W), (imr, imc), order, ivar, keep, nt, scale, sq)
    else:
        out = stamp_rhs(values, r0, c0, U2, H, W, imr, imc, order, ivar, keep, scale, sq)
    out = out[:, 0] if U.ndim == 1 else out
    if square_scale is None:
        return out
    if fused:  # the image rows' sums added in order: the bits of _stamp_square_sum by rows
        return out, np.cumsum(sq, axis=0)[-1]
    return out, _stamp_square_sum(U2, ivar, keep, scale, block=_square_sum_block(stamps))


def _square_sum_block(stamps: tuple) -> int:
    """The pixels per block of a fit's ``d^T C^-1 d`` (:func:`_stamp_square_sum`): an image row
    of the regular stamps ``stamps`` (``(values, r0, c0, imshape, imcorner)``), the blocks that the
    image sweep of :func:`_stamp_rhs` sums as it reads the frames."""
    return max(1, int(stamps[3][1]))


def _banded_rhs(
    values: np.ndarray,
    r0: np.ndarray,
    c0: np.ndarray,
    U: np.ndarray,
    imshape: tuple[int, int],
    imcorner: tuple[int, int],
    order: np.ndarray,
    ivar: np.ndarray,
    keep: np.ndarray,
    nt: int,
    scale: float,
    sq: np.ndarray,
) -> np.ndarray:
    """The image sweep of :func:`._rhs_kernels.stamp_rhs` in ``nt`` threads, each over a band of
    sources (by first stamp row; near-equal numbers of sources), into disjoint rows of ``out``
    (and, with ``sq`` ``(H, m)``, the square sums of its own image rows into their rows of ``sq``)."""
    from ._rhs_kernels import stamp_rhs_band, stamp_row_index

    (H, W), (imr, imc) = imshape, imcorner
    start, ent = stamp_row_index(r0, values.shape[0], H, imr, order)
    first = np.sort(r0 - imr)
    cuts = [int(first[len(first) * i // nt]) for i in range(1, nt)]
    edges = [-(1 << 62), *sorted(set(cuts)), 1 << 62]
    out = np.zeros((values.shape[2], U.shape[1]))
    args = (values, r0, c0, U, H, W, imr, imc, start, ent, ivar, keep)
    bands = [(*args, lo, hi, out, scale, sq) for lo, hi in zip(edges[:-1], edges[1:])]
    _threads.run(stamp_rhs_band, bands)
    return out


#: From this many frames on, :func:`_stamp_rhs` sweeps the image row by row (stamp rows sorted
#: by column; below it, the sources in storage order: the frames of a few bytes per pixel stay
#: in cache anyway). Measured on the tutorial scene (50,000 random 10 x 10 stamps on 1024^2).
_RHS_ORDER_MIN_FRAMES = 5


def _weighted_square_sum(
    D: np.ndarray, ivar: np.ndarray | None, keep: np.ndarray | None, scale: float = 1.0
) -> np.ndarray:
    """``sum_p ivar_p (scale D_p)**2`` per column of ``D`` ``(npix, k)``, masked pixels skipped."""
    npix, k = D.shape
    out = np.zeros(k)
    chunk = max(256, (1 << 18) // max(1, k))
    # one BLAS thread below 2**24 values: threads gain nothing on these memory-bound products
    # and, on a busy machine, spin (an image's gemv measured 20 ms instead of 0.05 ms)
    with single_threaded_blas() if npix * k < 1 << 24 else contextlib.nullcontext():
        for i in range(0, npix, chunk):
            block = D[i : i + chunk]
            if keep is not None:
                block = np.where(keep[i : i + chunk, None], block, 0.0)
            sq = block * block if scale == 1.0 else np.square(block * scale)
            out += (sq.T @ ivar[i : i + chunk]) if ivar is not None else sq.sum(axis=0)
    return out


def _stamp_square_sum(
    D: np.ndarray,
    ivar: np.ndarray | None,
    keep: np.ndarray | None,
    scale: float,
    model: np.ndarray | None = None,
    block: int | None = None,
) -> np.ndarray:
    """``sum_p ivar_p (scale (D_p - model_p))**2`` per column of the C-contiguous float64 ``D``
    ``(npix, k)`` (``model`` a C-contiguous float64 array of its shape, None for 0), masked
    pixels skipped: one compiled pass, no temporaries. Summed by blocks of ``block`` pixels
    (None: :data:`._rhs_kernels.SQUARE_SUM_BLOCK`), then the blocks in order."""
    from ._rhs_kernels import SQUARE_SUM_BLOCK, weighted_square_sum

    block = np.int64(SQUARE_SUM_BLOCK if block is None else block)  # not a literal: one signature

    ivar = np.empty(0) if ivar is None else np.ascontiguousarray(ivar, dtype=np.float64)
    keep = np.empty(0, dtype=bool) if keep is None else np.ascontiguousarray(keep, dtype=bool)
    model = np.empty((0, 0)) if model is None else model
    npix, m = D.shape
    nblocks = int(-(-npix // block))
    if nblocks == 0:
        return np.zeros(m)
    parts = np.empty((nblocks, m))
    edges = _threads.split(nblocks, _threads.threads_for(D.size))
    args = (D, model, ivar, keep, float(scale), block)
    blocks = [(*args, b0, b1, parts) for b0, b1 in zip(edges[:-1], edges[1:])]
    _threads.run(weighted_square_sum, blocks)
    return np.cumsum(parts, axis=0)[-1]  # the blocks' sums added in order: the same bits for any split


def _stamp_model(parts: list, w: np.ndarray) -> np.ndarray:
    """``A w`` (float64 ``(npix, 1)``) from the regular stamps ``parts`` of
    :func:`~.assemble._regular_stamps` (every stamp group's, with its sources' indices) and the
    weights ``w`` ``(n,)`` (no NaN): each group's model by the compiled grid scatter of an
    array's first product (:func:`sparse3d._grid_kernels.scatter`, prefetching), in image
    buffers lent by the pool (no fresh pages); no design matrix, no CSR matrix cached on the
    array."""
    from .. import _grid_kernels

    model = None
    for (values, r0, c0, imshape, imcorner), sources in parts:
        ws = (w if sources is None else w[sources]).reshape(-1, 1)
        part = _grid_kernels.scatter(values, r0, c0, ws, imcorner, imshape, np.float64).reshape(-1, 1)
        if model is None:
            model = part
        else:
            model += part
    return model


def _weighted_data(D: np.ndarray, ivar: np.ndarray | None, keep: np.ndarray | None) -> np.ndarray:
    """``sqrt(ivar) D`` (``D`` ``(npix, m)``), 0 on the masked pixels whatever they hold: the data
    the weighted stamps of :func:`_cells_rhs` and :func:`_cells_residual` meet (C-contiguous, float64)."""
    U = np.array(D, dtype=np.float64, order="C")
    if ivar is not None:
        U *= np.sqrt(ivar)[:, None]
    if keep is not None:
        U[~keep] = 0.0
    return U


def _cells_rhs(cells: list, U: np.ndarray, n: int) -> np.ndarray:
    """``diag(c) A^T C^-1 D`` (``(n, m)``, scaled: the right-hand side of the scaled normal
    equations) from the weighted, scaled stamps ``cells`` that the normal matrix was built from
    (:func:`~.assemble._scaled_normal_matrix`'s ``cells_out``) and the weighted data ``U``
    (:func:`_weighted_data`): one sequential pass over the stamps, no strided read of the
    array's values."""
    from ._stamp_kernels import cells_rhs

    out = np.zeros((n, U.shape[1]))
    for x, gidx in cells:
        (H, W), (imr, imc) = x.imshape, x.imcorner
        cells_rhs(x.B, x.order, x.r0, x.c0, H, W, imr, imc, U, gidx, out)
    return out


def _cells_residual(
    cells: list, X: np.ndarray, R: np.ndarray, scale: float | None = None
) -> np.ndarray | None:
    """``R -= sqrt(C^-1) A diag(c) X`` in place: with ``R`` the weighted data ``(npix, m)``
    (:func:`_weighted_data`) and ``X`` the scaled solutions ``(n, m)``, the weighted residuals, from
    the weighted, scaled stamps ``cells`` (see :func:`_cells_rhs`) in one pass over them: no model
    image. With ``scale``, returns the chi-squares ``sum((scale * R)**2)`` per frame ``(m,)``,
    summed by the last group's pass as its stamps leave the image rows (no pass of their own);
    else None."""
    from ._stamp_kernels import cells_residual

    X = np.ascontiguousarray(X, dtype=np.float64)
    out = None if scale is None else np.zeros(R.shape[1])
    none = np.empty(0)
    for i, (c, gidx) in enumerate(cells):
        (H, W), (imr, imc) = c.imshape, c.imcorner
        last = out is not None and i == len(cells) - 1
        rmin = int(c.r0.min())
        args = (c.B, c.order, c.skey, c.ncc, rmin, c.r0, c.c0, H, W, imr, imc, X, gidx, R)
        cells_residual(*args, 1.0 if scale is None else float(scale), out if last else none)
    return out


def _kept_all_finite(D: np.ndarray, keep: np.ndarray | None) -> bool:
    """Whether the kept entries of the C-contiguous float64 ``D`` ``(npix, k)`` are all finite
    (``keep`` None, ``(npix, 1)`` or ``(npix, k)``): one compiled pass, no temporaries."""
    from ._rhs_kernels import kept_all_finite

    keep = np.empty((0, 0), dtype=bool) if keep is None else np.ascontiguousarray(keep, dtype=bool)
    edges = _threads.split(D.shape[0], _threads.threads_for(D.size), align=4096)
    return all(_threads.run(kept_all_finite, [(D, keep, p0, p1) for p0, p1 in zip(edges[:-1], edges[1:])]))


class _Ahead:
    """The data's parts of a many-frame fit, computed ahead in a worker thread while the caller
    assembles and factorises the normal matrix (they need only the data, weights and mask):
    ``A^T C^-1 D`` from the stamps and ``D^T C^-1 D`` per frame (``scale = 1 / err_scale``), both
    in one image sweep over ``D`` (:func:`_stamp_rhs` with ``square_scale``). The same sums in the
    same order as without it (:func:`_stamp_rhs`; :func:`_stamp_square_sum` by image rows,
    :func:`_square_sum_block`), so the same bits; the results are taken once each, for this ``D``
    only.
    """

    def __init__(
        self, stamps: tuple, D: np.ndarray, ivar: np.ndarray | None, keep: np.ndarray | None, err_scale: float
    ) -> None:
        self.D = D
        self._future = _threads.submit(self._compute, stamps, D, ivar, keep, 1.0 / err_scale)
        self._taken: set[str] = set()

    @staticmethod
    def _compute(
        stamps: tuple, D: np.ndarray, ivar: np.ndarray | None, keep: np.ndarray | None, scale: float
    ) -> dict[str, np.ndarray]:
        rhs, square_sum = _stamp_rhs(stamps, D, ivar, keep, square_scale=scale)  # one read of D
        return {"rhs": rhs, "square_sum": square_sum}

    @classmethod
    def start(
        cls,
        stamps: list | None,
        D: np.ndarray,
        ivar: np.ndarray | None,
        keep: np.ndarray | None,
        err_scale: float,
    ) -> _Ahead | None:
        """An :class:`_Ahead` when it pays: one regular stamp group (``stamps``, as
        :func:`~.assemble._regular_stamps` gives them), enough frames for the image sweep, a
        C-contiguous float64 ``D`` ``(npix, k)``, work enough for threads; else None."""
        if stamps is None or len(stamps) != 1 or stamps[0][1] is not None:
            return None
        if D.ndim != 2 or D.dtype != np.float64 or not D.flags.c_contiguous:
            return None
        values = stamps[0][0][0]
        if D.shape[1] < _RHS_ORDER_MIN_FRAMES or _threads.threads_for(values.size * D.shape[1]) < 2:
            return None
        return cls(stamps[0][0], D, ivar, keep, err_scale)

    def take(self, what: str, D: np.ndarray) -> np.ndarray | None:
        """The result ``what`` (``"rhs"`` or ``"square_sum"``) for ``D`` (waiting for it), once;
        None for another array or a second time."""
        if D is not self.D or what in self._taken:
            return None
        self._taken.add(what)
        return self._future.result()[what]
