"""Scenes split along the source axis: :class:`SourceChunked`, :func:`from_function`, :func:`to_dask`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize

from ..core import Sparse3D
from ._graph import (
    _bounds,
    _dot_block,
    _normalize_source_chunks,
    _project_block,
    _shared,
    _token,
    _tree_sum,
    is_dask_array,
)


def _build_chunk(func, params: dict, row, col, imshape, imcorner, dtype) -> Sparse3D:
    params = {k: np.asarray(v) for k, v in params.items()}
    values = np.asarray(func(**params))
    if dtype is not None:
        values = values.astype(dtype, copy=False)
    row, col = np.asarray(row), np.asarray(col)
    return Sparse3D(values, row, col, imshape=imshape, imcorner=imcorner)


# -------------------------------------------------------------------------------------------
# Scenes split along the source axis
# -------------------------------------------------------------------------------------------
class SourceChunked:
    """A :class:`Sparse3D` split into source chunks, each chunk one Dask graph key.

    ``SC.dot(w)`` is the lazy sum of the chunk images ``SC_i.dot(w_i)`` (a Dask array
    ``(H, W)`` or ``(H, W, k)``); :meth:`project` the lazy per-source sums ``Aᵀ·y`` (a Dask
    array chunked like the sources). Build one with :meth:`from_sparse3d` (or
    ``S.to_dask(source_chunks=...)``) or lazily with :meth:`from_function`.

    Parameters
    ----------
    parts : list of dask.delayed.Delayed
        One delayed :class:`Sparse3D` per source chunk, all with the same ``imshape`` and
        ``imcorner``.
    chunks : tuple of int
        Number of sources of each part.
    imshape, imcorner : tuple of int
        Image bounds shared by every part.
    dtype : dtype
        Dtype of the stamp values.
    stamp_shape : tuple of int, optional
        ``(nr, nc)`` of every stamp, when known; for an array with several stamp groups the
        largest extent over the groups (the default ``halo`` of :meth:`fit` is two stamps).
    """

    def __init__(
        self,
        parts: Sequence,
        chunks: Sequence[int],
        imshape,
        imcorner=(0, 0),
        dtype=np.float64,
        stamp_shape: tuple[int, int] | None = None,
    ):
        if len(parts) != len(chunks):
            raise ValueError(f"{len(parts)} parts but {len(chunks)} chunk sizes")
        self.parts = list(parts)
        self.chunks = tuple(int(c) for c in chunks)
        self.imshape = tuple(int(v) for v in imshape)
        self.imcorner = tuple(int(v) for v in imcorner)
        self.dtype = np.dtype(dtype)
        self.stamp_shape = None if stamp_shape is None else (int(stamp_shape[0]), int(stamp_shape[1]))

    # -- constructors --------------------------------------------------------------------
    @classmethod
    def from_sparse3d(cls, S: Sparse3D, source_chunks="auto") -> SourceChunked:
        """Split an in-memory array: each chunk ``S[:, :, a:b]`` becomes one graph key."""
        sizes = _normalize_source_chunks(source_chunks, S.nsources)
        tok = _token(S)
        if len(sizes) == 1:
            parts = [_shared(S, "sparse3d", tok)]
        else:
            parts = [
                _shared(S[:, :, a:b], "sparse3d-chunk", tokenize(tok, a, b), owner=S)
                for a, b in _bounds(sizes)
            ]
        # the largest stamp of any group (the default halo of the scene fit is two stamps)
        stamp = tuple(int(v) for v in np.max(np.array(S.stamp_shapes), axis=0))
        return cls(parts, sizes, S.imshape, S.imcorner, S.dtype, stamp)

    @classmethod
    def from_function(
        cls,
        func: Callable[..., np.ndarray],
        params: Mapping[str, Any],
        row,
        col,
        imshape,
        imcorner=(0, 0),
        chunks="auto",
        dtype=np.float64,
    ) -> SourceChunked:
        """Stamp values computed lazily, chunk by chunk, from per-source parameters.

        Parameters
        ----------
        func : callable
            ``func(**params_chunk) -> values`` of shape ``(nr, nc, nchunk)``; it receives
            NumPy arrays: the chunk's slice (last axis) of every parameter.
        params : dict of array_like
            Per-source parameters, NumPy or Dask arrays whose last axis has length
            ``nsources`` (``(nsources,)`` vectors, or stamp-shaped ``(nr, nc, nsources)``).
        row, col : array_like
            Absolute stamp pixel positions ``(nr, nc, nsources)``, NumPy or Dask (e.g.
            ``R[:, :, None] + da.floor(y).astype(int)``).
        imshape, imcorner : tuple of int
            Image bounds.
        chunks : int, tuple of int or "auto"
            Sources per chunk.
        dtype : dtype
            Dtype of the stamp values.
        """
        n = int(np.shape(row)[-1])
        sizes = _normalize_source_chunks(chunks, n)
        bounds = _bounds(sizes)

        def pieces(x, name):
            if np.shape(x)[-1] != n:
                raise ValueError(
                    f"{name} must have nsources={n} along its last axis; got shape {np.shape(x)}"
                )
            if is_dask_array(x):
                x = x.rechunk({i: -1 for i in range(x.ndim - 1)} | {x.ndim - 1: sizes})
                return list(x.to_delayed().ravel())
            x = np.asarray(x)
            return [x[..., a:b] for a, b in bounds]

        prow, pcol = pieces(row, "row"), pieces(col, "col")
        pparams = {k: pieces(v, f"params[{k!r}]") for k, v in params.items()}
        name = getattr(func, "__name__", "func")
        parts = []
        for i in range(len(sizes)):
            pi = {k: v[i] for k, v in pparams.items()}
            build = dask.delayed(_build_chunk, pure=True, name=f"sparse3d-from-{name}")
            parts.append(build(func, pi, prow[i], pcol[i], tuple(imshape), tuple(imcorner), dtype))
        return cls(parts, sizes, imshape, imcorner, dtype, tuple(np.shape(row)[:2]))

    # -- facts ----------------------------------------------------------------------------
    @property
    def nsources(self) -> int:
        return sum(self.chunks)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (*self.imshape, self.nsources)

    @property
    def npartitions(self) -> int:
        return len(self.parts)

    def __repr__(self) -> str:
        return f"<{self.shape} SourceChunked Sparse3D, {self.npartitions} source chunks, dtype {self.dtype}>"

    # -- fitting ---------------------------------------------------------------------------
    def fit(
        self,
        data,
        errors=None,
        mask=None,
        prior_mu=None,
        prior_sigma=None,
        *,
        tile_size: int | tuple[int, int] | None = None,
        halo: int | None = None,
        tol: float = 1e-4,
        max_iter: int = 100,
        solver: str = "auto",
        client: Any = None,
    ):
        """Fit the scene to an image ``(H, W)`` or frames ``(H, W, k)``, distributed over image tiles.

        Never holds the whole design matrix, normal matrix or image in one process: the image
        is cut into tiles of ``tile_size`` pixels; each tile's sources (by stamp centre) and
        those within ``halo`` pixels of it are regrouped on a worker, which factorises their
        normal matrix once. Conjugate gradients on the global normal equations, with the
        products and the preconditioner computed tile by tile, then converge to the eager
        fit (:meth:`Sparse3D.fit`); the method and its costs are described in
        :mod:`sparse3d.dask.scene`.

        Parameters
        ----------
        data : numpy.ndarray or dask.array.Array
            ``(H, W)`` or ``(H, W, k)``; a Dask array is cut into tiles on the workers (use
            one for images larger than the client's memory).
        errors : array_like, optional
            One ``(H, W)`` map of 1-sigma errors shared by all frames (NumPy or Dask).
        mask : array_like of bool, optional
            ``(H, W)``, True for pixels to ignore.
        prior_mu, prior_sigma : float or array_like, optional
            Gaussian priors on the weights, scalars or ``(nsources,)``.
        tile_size : int or (int, int), optional
            Tile side in pixels (default 2048, clipped to the image); at least one stamp.
        halo : int, optional
            Pixels around a tile whose sources it also holds; at least one stamp wide
            (default: two stamps; with mixed stamp sizes, two of the largest). Larger halos
            cost more per tile and fewer iterations.
        tol : float
            Stop when the estimated remaining change of every weight is below ``tol`` times
            its 1-sigma error (in every frame).
        max_iter : int
            Most conjugate-gradient iterations (a ``RuntimeWarning`` if not converged).
        solver : str
            Sparse solver of each tile, as in :func:`sparse3d.fit.fit_design`.
        client : distributed.Client or str, optional
            A ``dask.distributed`` client or a scheduler address (``"tcp://host:8786"``,
            connected for this fit and closed after); default: the default client if one is
            active, else this process (threads).

        Returns
        -------
        SceneFitResult
            NumPy ``weights`` ``(nsources[, k])``, ``weights_err`` ``(nsources,)``, ``chi2``,
            ``n_iterations``, ``n_tiles``, ``converged``.
        """
        from .scene import fit_scene

        return fit_scene(
            self,
            data,
            errors,
            mask,
            prior_mu,
            prior_sigma,
            tile_size=tile_size,
            halo=halo,
            tol=tol,
            max_iter=max_iter,
            solver=solver,
            client=client,
        )

    # -- Dask ------------------------------------------------------------------------------
    def persist(self, **kwargs) -> SourceChunked:
        """Compute the chunks and keep them in (cluster) memory; returns a new SourceChunked."""
        parts = dask.persist(*self.parts, **kwargs)
        return SourceChunked(
            list(parts), self.chunks, self.imshape, self.imcorner, self.dtype, self.stamp_shape
        )

    def compute(self, **kwargs) -> Sparse3D:
        """The whole array in local memory (a :class:`Sparse3D`)."""
        parts = dask.compute(*self.parts, **kwargs)
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=2)

    def to_delayed(self) -> list:
        """The delayed source chunks."""
        return list(self.parts)

    # -- products --------------------------------------------------------------------------
    def _weights(self, w):
        """``w`` as a Dask array whose source chunks match ours."""
        if not is_dask_array(w):
            w = np.asarray(w)
            w = da.from_array(w, chunks=(self.chunks, *w.shape[1:]) if w.ndim else ())
        if w.ndim not in (1, 2):
            raise ValueError(f"weights must be (nsources,) or (nsources, k); got shape {w.shape}")
        if w.shape[0] != self.nsources:
            raise ValueError(
                f"weights must have length nsources={self.nsources} along their first axis; "
                f"got shape {w.shape}"
            )
        if w.chunks[0] != self.chunks:
            w = w.rechunk({0: self.chunks})
        return w

    def dot(self, w):
        """Lazy model: ``w (nsources,)`` → Dask ``(H, W)``; ``w (nsources, k)`` → ``(H, W, k)``.

        The result is chunked like ``w`` along ``k``; partial images of the source chunks
        are summed by a tree reduction.
        """
        w = self._weights(w)
        H, W = self.imshape
        dtype = np.result_type(self.dtype, w.dtype)
        out_ind = "hwk" if w.ndim == 2 else "hw"
        w_ind = "sk" if w.ndim == 2 else "s"
        meta = np.empty((0,) * len(out_ind), dtype=dtype)
        images = []
        for i, (a, b) in enumerate(_bounds(self.chunks)):
            wi = w[a:b]
            images.append(
                da.blockwise(
                    _dot_block,
                    out_ind,
                    self.parts[i],
                    None,
                    wi,
                    w_ind,
                    new_axes={"h": H, "w": W},
                    concatenate=True,
                    dtype=dtype,
                    meta=meta,
                    name=f"sparse3d-dot-{tokenize(self.parts[i].key, wi.name)}",
                )
            )
        return _tree_sum(images, dtype)

    __matmul__ = dot

    def project(self, image):
        """Lazy per-source sums ``Aᵀ·y``: ``(H, W)`` → ``(nsources,)``, ``(H, W, k)`` → ``(nsources, k)``."""
        y = image if is_dask_array(image) else da.from_array(np.asarray(image))
        if y.ndim not in (2, 3) or tuple(y.shape[:2]) != self.imshape:
            raise ValueError(f"image must be (H, W) or (H, W, k) with (H, W) = {self.imshape}; got {y.shape}")
        y = y.rechunk({0: -1, 1: -1})
        dtype = np.result_type(self.dtype, y.dtype)
        y_ind = "hwk" if y.ndim == 3 else "hw"
        out_ind = "sk" if y.ndim == 3 else "s"
        pieces = []
        for i, n_i in enumerate(self.chunks):
            pieces.append(
                da.blockwise(
                    _project_block,
                    out_ind,
                    self.parts[i],
                    None,
                    y,
                    y_ind,
                    new_axes={"s": n_i},
                    concatenate=True,
                    dtype=dtype,
                    meta=np.empty((0,) * len(out_ind), dtype=dtype),
                    name=f"sparse3d-project-{tokenize(self.parts[i].key, y.name)}",
                )
            )
        return pieces[0] if len(pieces) == 1 else da.concatenate(pieces, axis=0)


def from_function(func, params, row, col, imshape, imcorner=(0, 0), chunks="auto", dtype=np.float64):
    """Alias of :meth:`SourceChunked.from_function`."""
    return SourceChunked.from_function(func, params, row, col, imshape, imcorner, chunks, dtype)


def to_dask(S: Sparse3D, source_chunks="auto") -> SourceChunked:
    """``S`` split into source chunks, each one graph key (see :class:`SourceChunked`)."""
    return SourceChunked.from_sparse3d(S, source_chunks)
