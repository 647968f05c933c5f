"""Dask-backed models and fits: model cubes, many-frame fits and scenes split by source.

Nothing here is imported by ``import sparse3d``; the NumPy functions of :class:`Sparse3D`
delegate to this module when an operand is a Dask array (through the backend it registers
with the core's function registry, which itself never imports Dask; the first Dask operand
imports this module), so the same code runs eagerly on NumPy arrays and lazily on Dask
arrays::

    import dask.array as da
    w = da.from_array(lightcurves, chunks=(nsources, 50))   # (nsources, k), chunked in time
    cube = S.dot(w)                                          # lazy (H, W, k), chunked in time
    res = S.fit(frames)                                      # frames: dask (H, W, k)
    res.weights                                              # lazy (nsources, k)

**How arrays reach the workers.** A :class:`Sparse3D` (or one source chunk of it) enters a
task graph exactly once, as a single graph key holding the array (``dask.delayed(S,
pure=True)`` with a content-derived name); every task that needs it refers to that key.
With ``dask.distributed`` the array is therefore pickled once (values and positions only,
no caches) and moved between workers like any other task result; its derived indices are
rebuilt once per worker, not once per task. The fit ships one pre-factorised solver the
same way: the normal matrix is factorised once, eagerly on the client. When a distributed
client is the active scheduler, such objects of :data:`SCATTER_BYTES` or more are scattered
to the cluster once (``client.scatter``) and the graph holds their future instead: graphs
stay small, and an array reused by several computations is sent once.

:class:`SourceChunked` splits a scene along the source axis, for scenes whose stamps do not
fit in one process: ``dot`` sums the chunk images lazily, and :meth:`SourceChunked.from_function`
computes stamp values chunk by chunk from per-source parameters, so the full stamp array is
never assembled anywhere.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize

from . import _functions
from .core import Sparse3D

__all__ = [
    "DaskFitResult",
    "SourceChunked",
    "dot",
    "fit",
    "from_function",
    "is_dask_array",
    "project",
    "tensordot",
]


def is_dask_array(x) -> bool:
    """Whether ``x`` is a Dask array (or another Dask collection), without importing Dask."""
    return type(x).__module__.startswith("dask")


# -------------------------------------------------------------------------------------------
# Shipping arrays once
# -------------------------------------------------------------------------------------------
def _token(S: Sparse3D) -> str:
    """Content token of ``S`` (values, positions, bounds), cached on the immutable array."""
    tok = S.__dict__.get("_dask_token")
    if tok is None:
        tok = tokenize(S._values, S.row, S.col, S.imshape, S.imcorner)
        S.__dict__["_dask_token"] = tok
    return tok


def _shared(obj, prefix: str, token: str, owner: Any = None):
    """``obj`` as ONE graph key: every task that uses it depends on that key.

    Without a ``dask.distributed`` client the key holds ``obj`` itself. With one (the default
    client, which is also the active scheduler) and an ``obj`` of at least
    :data:`SCATTER_BYTES`, ``obj`` is scattered to the cluster once and the key holds the
    future: the graph stays small (no "Sending large graph" warning) and a second ``compute``
    does not send the array again. The future is cached on ``owner`` (by default ``obj``; an
    immutable :class:`Sparse3D`) per client and name, so repeated calls reuse it; it lives as
    long as the owner does. Such a graph belongs to that client: to compute on another
    scheduler, build it inside ``dask.config.set(scheduler=...)``.
    """
    name = f"{prefix}-{token}"
    client = _distributed_client()
    if client is None:
        return dask.delayed(obj, name=name, pure=True)
    owner = obj if owner is None else owner
    cache = getattr(owner, "__dict__", None)
    futures = cache.setdefault("_dask_futures", {}) if cache is not None else {}
    future = futures.get((client.id, name))
    if future is None or future.status in ("error", "cancelled", "lost"):
        if _pickled_nbytes(obj) < SCATTER_BYTES:
            return dask.delayed(obj, name=name, pure=True)
        future = client.scatter(obj, hash=False)
        futures[(client.id, name)] = future
    return dask.delayed(future)


#: Objects shipped to a ``dask.distributed`` cluster are scattered once, not embedded in the
#: task graph, from this pickled size on (Dask warns about graphs above 10 MB).
SCATTER_BYTES = 2**20


def _pickled_nbytes(obj) -> int:
    """Pickled size of ``obj``; protocol 5 with out-of-band buffers, so arrays are not copied."""
    import pickle

    buffers: list = []
    head = pickle.dumps(obj, protocol=5, buffer_callback=buffers.append)
    return len(head) + sum(b.raw().nbytes for b in buffers)


def _distributed_client():
    """The default ``dask.distributed`` client if it is the active scheduler, else None."""
    import sys

    if "distributed" not in sys.modules:  # never import distributed just to find out
        return None
    from distributed import default_client

    try:
        client = default_client()
    except ValueError:  # no client
        return None
    if client.asynchronous or dask.base.get_scheduler() != client.get:
        return None
    return client


def _normalize_source_chunks(chunks, n: int) -> tuple[int, ...]:
    """Chunk sizes along the source axis from an int, a tuple of sizes, ``-1`` or ``"auto"``."""
    if chunks is None or chunks == -1:
        return (n,)
    if chunks == "auto":
        chunks = max(1, min(n, 10_000))
    if isinstance(chunks, (int, np.integer)):
        size = int(chunks)
        if size <= 0:
            raise ValueError(f"source_chunks must be positive; got {chunks}")
        if n == 0:
            return (0,)
        return tuple(min(size, n - a) for a in range(0, n, size))
    sizes = tuple(int(c) for c in chunks)
    if sum(sizes) != n or any(c < 0 for c in sizes):
        raise ValueError(f"source chunk sizes {sizes} do not add up to nsources={n}")
    return sizes


def _bounds(sizes: Sequence[int]) -> list[tuple[int, int]]:
    edges = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()
    return list(zip(edges[:-1], edges[1:]))


# -------------------------------------------------------------------------------------------
# Block functions (module level, so workers import them instead of unpickling code)
# -------------------------------------------------------------------------------------------
def _dot_block(S: Sparse3D, w: np.ndarray) -> np.ndarray:
    return S.dot(np.asarray(w))


def _project_block(S: Sparse3D, y: np.ndarray) -> np.ndarray:
    return np.tensordot(S, np.asarray(y), axes=([0, 1], [0, 1]))


def _take_sources(S: Sparse3D, a: int, b: int) -> Sparse3D:
    return S[:, :, a:b]


def _build_chunk(func, params: dict, row, col, imshape, imcorner, dtype) -> Sparse3D:
    params = {k: np.asarray(v) for k, v in params.items()}
    values = np.asarray(func(**params))
    if dtype is not None:
        values = values.astype(dtype, copy=False)
    row, col = np.asarray(row), np.asarray(col)
    return Sparse3D(values, row, col, imshape=imshape, imcorner=imcorner)


def _fit_block(solver, frames: np.ndarray) -> np.ndarray:
    return solver(frames)


def _fit_block_per_frame_errors(design, frames: np.ndarray, errors: np.ndarray, options: dict) -> np.ndarray:
    """Fit a chunk of frames whose error maps differ: rows are weights, errors, chi2."""
    import warnings

    from .fit import UnconstrainedSourceWarning, fit_design

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnconstrainedSourceWarning)  # warned once, on the client
        res = fit_design(design, frames, errors=errors, **options)
    n, k = design.shape[1], frames.shape[2]
    err = np.broadcast_to(np.asarray(res.weights_err).reshape(n, -1), (n, k))
    return np.concatenate([res.weights.reshape(n, k), err, np.reshape(res.chi2, (1, k))])


def _sum_blocks(*blocks):
    out = blocks[0].copy()
    for b in blocks[1:]:
        out += b
    return out


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
    """

    def __init__(self, parts: Sequence, chunks: Sequence[int], imshape, imcorner=(0, 0), dtype=np.float64):
        if len(parts) != len(chunks):
            raise ValueError(f"{len(parts)} parts but {len(chunks)} chunk sizes")
        self.parts = list(parts)
        self.chunks = tuple(int(c) for c in chunks)
        self.imshape = tuple(int(v) for v in imshape)
        self.imcorner = tuple(int(v) for v in imcorner)
        self.dtype = np.dtype(dtype)

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
        return cls(parts, sizes, S.imshape, S.imcorner, S.dtype)

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
        return cls(parts, sizes, imshape, imcorner, dtype)

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

    # -- Dask ------------------------------------------------------------------------------
    def persist(self, **kwargs) -> SourceChunked:
        """Compute the chunks and keep them in (cluster) memory; returns a new SourceChunked."""
        parts = dask.persist(*self.parts, **kwargs)
        return SourceChunked(list(parts), self.chunks, self.imshape, self.imcorner, self.dtype)

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


def _tree_sum(arrays: list, dtype, split_every: int = 8):
    """Sum equally chunked Dask arrays pairwise-ish (groups of ``split_every``), lazily."""
    while len(arrays) > 1:
        nxt = []
        for g in range(0, len(arrays), split_every):
            group = arrays[g : g + split_every]
            if len(group) == 1:
                nxt.append(group[0])
                continue
            ind = "hwk"[: group[0].ndim]
            args = [x for arr in group for x in (arr, ind)]
            nxt.append(
                da.blockwise(_sum_blocks, ind, *args, dtype=dtype, meta=np.empty((0,) * len(ind), dtype))
            )
        arrays = nxt
    return arrays[0]


def from_function(func, params, row, col, imshape, imcorner=(0, 0), chunks="auto", dtype=np.float64):
    """Alias of :meth:`SourceChunked.from_function`."""
    return SourceChunked.from_function(func, params, row, col, imshape, imcorner, chunks, dtype)


def to_dask(S: Sparse3D, source_chunks="auto") -> SourceChunked:
    """``S`` split into source chunks, each one graph key (see :class:`SourceChunked`)."""
    return SourceChunked.from_sparse3d(S, source_chunks)


# -------------------------------------------------------------------------------------------
# NumPy-function delegation (called by sparse3d._functions when an operand is a Dask array)
# -------------------------------------------------------------------------------------------
def dot(S, w):
    """``np.dot(S, w)`` with Dask weights: a lazy image ``(H, W)`` or cube ``(H, W, k)``.

    ``S`` is split along the sources like ``w``'s first axis (one key per chunk; S itself
    when ``w`` has a single source chunk) and chunked like ``w`` along ``k``.
    """
    if isinstance(S, SourceChunked):
        return S.dot(w)
    if w.ndim == 0:
        raise TypeError("np.dot(S, scalar) with a Dask scalar is not supported; use S * float(c)")
    if w.ndim not in (1, 2):
        raise ValueError(f"weights must be (nsources,) or (nsources, k); got {w.ndim}-D shape {w.shape}")
    if w.shape[0] != S.nsources:
        raise ValueError(
            f"weights must have length nsources={S.nsources} along their first axis; got shape {w.shape}"
        )
    if math.isnan(w.shape[0]) or any(math.isnan(c) for c in w.chunks[0]):
        w = w.compute_chunk_sizes()
    return SourceChunked.from_sparse3d(S, w.chunks[0]).dot(w)


def project(S, image):
    """Lazy ``Aᵀ·y`` of a Dask image ``(H, W)`` or frame stack ``(H, W, k)`` → ``(nsources[, k])``."""
    if isinstance(S, SourceChunked):
        return S.project(image)
    return SourceChunked.from_sparse3d(S, -1).project(image)


def tensordot(a, b, axes):
    """``np.tensordot(S, b, axes=(axes_a, axes_b))`` with a Dask ``b``: the model or the projection."""
    axes_a, axes_b = axes
    pairs = sorted(zip([int(x) % 3 for x in axes_a], [int(x) % max(b.ndim, 1) for x in axes_b]))
    sa = [p[0] for p in pairs]
    sb = [p[1] for p in pairs]
    if sa == [2] and b.ndim in (1, 2):
        return dot(a, da.moveaxis(b, sb[0], 0))
    if sa == [0, 1] and b.ndim in (2, 3):
        return project(a, da.moveaxis(b, sb, [0, 1]))
    raise NotImplementedError(
        f"np.tensordot(S, dask_array, axes={axes}) is only supported for the model (axes=([2], [0])) "
        "and the projection (axes=([0, 1], [0, 1])); compute the Dask array first"
    )


# -------------------------------------------------------------------------------------------
# Fitting many frames
# -------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class DaskFitResult:
    """Result of :func:`fit` on Dask frames.

    Attributes
    ----------
    weights : dask.array.Array or numpy.ndarray
        ``(nsources, k)`` (``(nsources,)`` for one image), chunked like the frames along
        ``k``; NaN for unconstrained sources. Lazy until :meth:`compute`.
    chi2 : dask.array.Array or numpy.ndarray
        Per-frame chi-square ``(k,)`` (a 0-d array for one image), computed by the same tasks
        as the weights.
    weights_err : numpy.ndarray or dask.array.Array
        1-sigma uncertainties: ``(nsources,)`` when one error map is shared by every frame;
        lazy ``(nsources, k)`` when each frame has its own map.
    n_pixels, unconstrained, solver, n_factorizations
        As in :class:`sparse3d.fit.FitResult`; ``n_factorizations`` is 1 for a shared error
        map, and at most ``k`` (one per distinct map, counted per chunk) for per-frame maps.
    """

    weights: Any
    chi2: Any
    weights_err: np.ndarray
    n_pixels: int
    unconstrained: np.ndarray
    solver: str
    n_factorizations: int
    _design: Any = None

    @property
    def n_unconstrained(self) -> int:
        return int(np.count_nonzero(self.unconstrained))

    @property
    def model(self):
        """Best-fit model cube ``(H, W, k)``, lazy when the weights are (unconstrained → 0)."""
        w = self.weights
        wz = da.where(da.isnan(w), 0.0, w) if is_dask_array(w) else np.where(np.isnan(w), 0.0, w)
        return self._design.dot(wz) if isinstance(self._design, SourceChunked) else np.dot(self._design, wz)

    def compute(self, **kwargs) -> DaskFitResult:
        """Weights, chi-square (and lazy errors) computed together: one pass over the frames."""
        weights, chi2, err = dask.compute(self.weights, self.chi2, self.weights_err, **kwargs)
        return replace(self, weights=weights, chi2=chi2, weights_err=err)

    def persist(self, **kwargs) -> DaskFitResult:
        weights, chi2, err = dask.persist(self.weights, self.chi2, self.weights_err, **kwargs)
        return replace(self, weights=weights, chi2=chi2, weights_err=err)


class _FrameSolver:
    """Everything a worker needs to fit a chunk of frames: the portable normal equations.

    The design matrix, inverse variances, priors and the supernodal Cholesky factor
    (:meth:`sparse3d.fit.NormalEquations.portable`): plain NumPy/SciPy arrays, pickled once
    per graph.
    """

    def __init__(self, normal):
        self.normal = normal

    @property
    def factor(self):
        return self.normal.factor

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """``frames (H, W, kc)`` → ``(n + 1, kc)``: weights, then the chi-square row."""
        ne = self.normal
        D = np.asarray(frames, dtype=np.float64).reshape(ne.design.shape[0], -1)
        ne.check_data(D)
        n = ne.n_sources
        out = np.empty((n + 1, D.shape[1]))
        out[:n] = ne.solve(D)
        out[n] = ne.chi2(D, out[:n])
        return out


def fit(
    S, data, errors=None, prior_mu=None, prior_sigma=None, mask=None, solver: str = "auto"
) -> DaskFitResult:
    """``S.fit(frames)`` for Dask frames ``(H, W, k)`` (or one image ``(H, W)``): lazy weights.

    The normal matrix ``AᵀC⁻¹A + P`` is built and factorised once, eagerly on the client
    (it is ``nsources × nsources`` and sparse), and shipped to the workers as one graph key
    together with the design matrix; each chunk of frames is then one task computing its
    weights and chi-square. Results equal :meth:`Sparse3D.fit` on the computed frames.

    ``errors`` is ``None``, one ``(H, W)`` map shared by all frames (one factorisation on
    the client), or per-frame maps of the shape of ``data`` (NumPy or Dask): then each chunk
    of frames is fitted on a worker with one factorisation per distinct map, the design
    matrix shipped once, and ``weights_err`` is lazy ``(nsources, k)``. ``mask`` ``(H, W)``
    (one map for every frame; ``errors=np.inf`` masks a pixel too). The options of the eager
    fit for real data -- ``background``, ``dq``/``bad_bits``, ``saturation``, per-frame masks,
    masked arrays -- are not supported here: :meth:`Sparse3D.fit` raises
    ``NotImplementedError`` for the first three (compute the frames and fit them eagerly), and
    an ``(H, W, k)`` mask is refused with a ValueError. Returns a :class:`DaskFitResult`.
    """
    if isinstance(S, SourceChunked):
        raise NotImplementedError("fitting a SourceChunked scene is not supported; fit a Sparse3D")
    if not is_dask_array(data):
        data = da.from_array(np.asarray(data))
    if isinstance(getattr(data, "_meta", None), np.ma.MaskedArray):  # never drop a mask silently
        raise NotImplementedError(
            "S.fit on masked Dask frames is not supported (the mask could differ per frame); pass the "
            "mask as mask= (one (H, W) map), or compute the frames and fit them eagerly"
        )
    if errors is not None and np.ndim(errors) == 3 and data.ndim == 3:
        return _fit_per_frame_errors(S, data, errors, prior_mu, prior_sigma, mask, solver)
    if errors is not None and np.ndim(errors) != 2:
        raise ValueError(f"errors must have shape (H, W) or the shape of data; got {np.shape(errors)}")
    if is_dask_array(errors) or is_dask_array(mask):
        errors = None if errors is None else np.asarray(errors)
        mask = None if mask is None else np.asarray(mask)
    if errors is not None and np.any(np.isposinf(errors)):  # errors = inf masks the pixel, as eagerly
        inf = np.isposinf(errors)
        mask = inf if mask is None else (np.asarray(mask, dtype=bool) | inf)
    H, W = S.imshape
    if data.ndim not in (2, 3) or tuple(data.shape[:2]) != (H, W):
        raise ValueError(f"data must have shape (H, W) = {(H, W)} or (H, W, k), got {data.shape}")
    if errors is not None and np.shape(errors) != (H, W):
        raise ValueError(
            f"errors must have shape (H, W) = {(H, W)} or the shape of data; got {np.shape(errors)}"
        )
    stack = data.ndim == 3
    frames = (data if stack else data[:, :, None]).rechunk({0: -1, 1: -1})

    from .fit import prepare_normal_equations

    normal = prepare_normal_equations(
        S,  # a Sparse3D: its normal matrix comes from the stamps (regular ones) directly
        imshape=S.imshape,
        errors=errors,
        prior_mu=prior_mu,
        prior_sigma=prior_sigma,
        mask=mask,
        solver=solver,
    )
    normal.warn_if_unconstrained(stacklevel=2)
    solver_ = _FrameSolver(normal.portable())  # before weights_err: SuperLU's factor is at hand
    weights_err = normal.weights_err()
    tok = tokenize(_token(S), errors, prior_mu, prior_sigma, mask, normal.solver)
    shipped = _shared(solver_, "sparse3d-fit-solver", tok)
    n = S.nsources
    out = da.blockwise(
        _fit_block,
        "sk",
        shipped,
        None,
        frames,
        "hwk",
        new_axes={"s": n + 1},
        concatenate=True,
        dtype=np.float64,
        meta=np.empty((0, 0)),
        name=f"sparse3d-fit-{tokenize(tok, frames.name)}",
    )
    weights, chi2 = out[:n], out[n]
    if not stack:
        weights, chi2 = weights[:, 0], chi2[0]
    return DaskFitResult(
        weights,
        chi2,
        weights_err=weights_err,
        n_pixels=normal.n_pixels,
        unconstrained=normal.unconstrained,
        solver=normal.solver,
        n_factorizations=1,
        _design=S,
    )


def _fit_per_frame_errors(S, data, errors, prior_mu, prior_sigma, mask, solver) -> DaskFitResult:
    """Frames with their own error maps: one factorisation per distinct map, on the workers.

    The design matrix (and mask, priors) enter the graph once; each chunk of frames is one
    task running :func:`sparse3d.fit.fit_design` on its frames and error maps, which groups
    frames with identical maps. ``weights_err`` is then lazy, ``(nsources, k)``.
    """
    H, W = S.imshape
    if tuple(data.shape[:2]) != (H, W) or tuple(np.shape(errors)) != tuple(data.shape):
        raise ValueError(
            f"per-frame errors must have the shape of data {tuple(data.shape)}; got {np.shape(errors)}"
        )
    frames = data.rechunk({0: -1, 1: -1})
    errs = errors if is_dask_array(errors) else da.from_array(np.asarray(errors), chunks=frames.chunks)
    errs = errs.rechunk(frames.chunks)
    mask = None if mask is None else np.asarray(mask)
    design = S.tocsc()
    n = S.nsources
    options = {"imshape": S.imshape, "prior_mu": prior_mu, "prior_sigma": prior_sigma, "mask": mask}
    options["solver"] = solver
    # what does not depend on the error maps is known now: which sources have no data
    keep = np.ones(H * W, dtype=bool) if mask is None else ~mask.ravel()
    has_data = design[keep].getnnz(axis=0) > 0
    has_prior = np.zeros(n, dtype=bool)
    if prior_sigma is not None:
        has_prior = np.isfinite(np.broadcast_to(np.asarray(prior_sigma, dtype=float), (n,)))
    unconstrained = ~has_data & ~has_prior
    if unconstrained.any():
        import warnings

        from .fit import UnconstrainedSourceWarning

        warnings.warn(
            f"{int(unconstrained.sum())} source(s) have no unmasked pixel and no prior: their "
            "weights and errors are NaN",
            UnconstrainedSourceWarning,
            stacklevel=3,
        )
    tok = tokenize(_token(S), mask, prior_mu, prior_sigma, solver)
    shipped_design = _shared(design, "sparse3d-fit-design", tok)
    shipped_options = _shared(options, "sparse3d-fit-options", tok)
    out = da.blockwise(
        _fit_block_per_frame_errors,
        "sk",
        shipped_design,
        None,
        frames,
        "hwk",
        errs,
        "hwk",
        shipped_options,
        None,
        new_axes={"s": 2 * n + 1},
        concatenate=True,
        dtype=np.float64,
        meta=np.empty((0, 0)),
        name=f"sparse3d-fit-errors-{tokenize(tok, frames.name, errs.name)}",
    )
    return DaskFitResult(
        out[:n],
        out[2 * n],
        weights_err=out[n : 2 * n],
        n_pixels=int(keep.sum()),
        unconstrained=unconstrained,
        solver=solver,
        n_factorizations=int(data.shape[2]),
        _design=S,
    )


# The core's NumPy functions (np.dot, np.tensordot, S.fit) reach this module through this
# hook: sparse3d._functions never imports sparse3d.dask.
_functions.register_lazy_backend("dask", _functions.LazyBackend(dot=dot, tensordot=tensordot, fit=fit))
