"""One scene too large for one process: a distributed fit over image tiles.

The method
----------
The image is cut into rectangular tiles. Each source belongs to the tile holding its
stamp centre, and each tile also sees the sources whose centres lie within ``halo`` pixels
of it (its *extended* set). A worker holds, per tile, the design matrix of the extended set
on the pixels those stamps cover, and the fit layer's factorisation of its normal matrix
``N_EE`` (:func:`sparse3d.fit.prepare_normal_equations`). Because ``halo`` is at least one
stamp wide, every source whose light overlaps an owned source is in the extended set, so

* the rows of the global normal matrix that belong to a tile, ``(N p)_O``, are computed
  exactly on that tile from ``p`` on its extended set (``Aᵀ C⁻¹ A p`` on its pixels);
* ``(N_EE⁻¹)_OO`` is an accurate, symmetric positive definite approximation of the owned
  block of the global inverse: correlations between fluxes decay within a stamp or two.

The global normal equations ``N w = Aᵀ C⁻¹ d + P μ`` are then solved by **preconditioned
conjugate gradients** whose matrix-vector product is distributed over the tiles and whose
preconditioner is the block-diagonal ``blockdiag_t((N_EE⁻¹)_OO)`` (one solve with each
tile's factor, right-hand side zero on the halo). The start is each tile's own fit with its
halo. Why this and not iterating tile fits (block Jacobi / Gauss–Seidel): PCG converges to
the *exact* eager solution, with a stopping rule in the units that matter, it needs no
damping or ordering of tiles, and with this preconditioner it takes a few iterations (the
halo fit is already close; CG removes what crosses the halo). The stopping rule: the
preconditioned residual ``z = M⁻¹ r`` estimates the remaining correction ``w* − w``; the
iteration stops when ``max |z| / σ < tol`` for every frame (``σ`` the 1-σ errors below).

The 1-σ errors are ``sqrt(diag((N_EE⁻¹)_OO))`` from each tile's selected inversion: within
a fraction of a per cent of the global ``sqrt(diag(N⁻¹))`` when the halo is a couple of
stamps wide (the default is two), because what lies beyond the halo barely correlates with
an owned source. Measured on a 256² scene with 2,000 sources, 7 × 7 stamps and 16 tiles
(largest relative error difference; CG iterations to ``tol=1e-4``): halo of one stamp
2e-7, 6 iterations; two stamps 4e-13, 1 iteration; three stamps 5e-14, none. On 2048² with
200,000 sources (10 × 10 stamps, 4 tiles, halo of two stamps): 3e-12, 10 iterations, fluxes
within 6e-5 σ of the eager fit (``benchmarks/distributed_fit.py --mode check``).

Where the data live
-------------------
The client holds only vectors of length ``nsources`` (weights, residuals, errors: eight
bytes per source and frame each) and tile geometry. Stamps are computed chunk by chunk on
the workers (:class:`~sparse3d.dask.SourceChunked`), regrouped by tile there, and the image
(NumPy or, for images larger than the client, Dask) is cut into tile boxes as a dependency
of each tile. Each iteration sends each tile its slice of one vector and gets back the
owned rows of another: two round trips per iteration.

Mixed stamp sizes
-----------------
An array with several stamp groups (:attr:`Sparse3D.groups`) is regrouped group by group:
every piece a chunk sends a tile carries its group's stamp shape, and the tile joins the
pieces of one shape into one block and the shapes into one grouped design, sources in
ascending global order as for a single shape. The default halo is two of the largest
stamps (``SourceChunked.stamp_shape`` is the largest extent over the groups).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np

from ..core import Sparse3D
from ._graph import _distributed_client, is_dask_array
from .frames import DaskFitResult

__all__ = ["SceneFitResult", "fit_scene"]

#: Default tile side in pixels (clipped to the image): a few tens of thousands of sources
#: per tile in a crowded field, so each tile's factorisation takes about a second.
DEFAULT_TILE_SIZE = 2048

#: Per-iteration vectors up to this many bytes in all travel inside the tasks, larger ones
#: are scattered first (Dask warns about task graphs above 10 MB).
_INLINE_BYTES = 4 * 2**20


# -------------------------------------------------------------------------------------------
# Geometry
# -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Geometry:
    """Tile edges along rows and columns (absolute pixels) and the halo, in pixels."""

    row_edges: np.ndarray  # inner edges: between tile i and i + 1
    col_edges: np.ndarray
    halo: int
    imshape: tuple[int, int]
    imcorner: tuple[int, int]

    @property
    def grid(self) -> tuple[int, int]:
        return (self.row_edges.size + 1, self.col_edges.size + 1)

    def members(self, rc: np.ndarray, cc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(source, tile, owned)`` for every tile whose extended area holds a source centre."""
        h = self.halo
        ntc = self.grid[1]
        rlo = np.searchsorted(self.row_edges + h, rc, side="right")
        rhi = np.searchsorted(self.row_edges - h, rc, side="right")
        clo = np.searchsorted(self.col_edges + h, cc, side="right")
        chi = np.searchsorted(self.col_edges - h, cc, side="right")
        rown = np.searchsorted(self.row_edges, rc, side="right")
        cown = np.searchsorted(self.col_edges, cc, side="right")
        src, tile, owned = [], [], []
        for dr in range(int((rhi - rlo).max(initial=0)) + 1):
            for dc in range(int((chi - clo).max(initial=0)) + 1):
                ok = (rlo + dr <= rhi) & (clo + dc <= chi)
                i, r, c = np.flatnonzero(ok), (rlo + dr)[ok], (clo + dc)[ok]
                src.append(i)
                tile.append(r * ntc + c)
                owned.append((r == rown[ok]) & (c == cown[ok]))
        return np.concatenate(src), np.concatenate(tile), np.concatenate(owned)


def _tile_edges(start: int, length: int, size: int) -> np.ndarray:
    n = max(1, math.ceil(length / size))
    return start + size * np.arange(1, n, dtype=np.int64)


def _as_pair(value, name: str) -> tuple[int, int]:
    pair = (value, value) if np.ndim(value) == 0 else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints; got {value!r}")
    return int(pair[0]), int(pair[1])


# -------------------------------------------------------------------------------------------
# Worker side: regroup a source chunk by tile; build, start, multiply, precondition a tile
# -------------------------------------------------------------------------------------------
def _split_chunk(S: Sparse3D, offset: int, geom: _Geometry) -> dict:
    """A source chunk regrouped by tile: ``{tile: [(ids, owned, values, row, col), ...]}``.

    One piece per stamp group of the chunk that has sources in the tile (arrays with mixed
    stamp sizes hold several groups; each piece's blocks carry its group's stamp shape).
    Also ``{"extent": (rows, cols)}``: the largest stamp bounding box, to check the halo.
    """
    out: dict[Any, Any] = {"extent": (0, 0)}
    for G, idx in zip(S.groups, S.group_sources):
        n = G.nsources
        if n == 0:
            continue
        row = G.row.reshape(-1, n)
        col = G.col.reshape(-1, n)
        rmin, rmax, cmin, cmax = row.min(0), row.max(0), col.min(0), col.max(0)
        ext = (int((rmax - rmin).max()) + 1, int((cmax - cmin).max()) + 1)
        out["extent"] = tuple(max(a, b) for a, b in zip(out["extent"], ext))
        src, tile, owned = geom.members((rmin + rmax) // 2, (cmin + cmax) // 2)
        order = np.argsort(tile, kind="stable")
        src, tile, owned = src[order], tile[order], owned[order]
        cuts = np.flatnonzero(np.diff(tile)) + 1
        values, r3, c3 = G.data, G.row, G.col
        small = (
            np.int32
            if max(abs(int(row.min())), abs(int(row.max())), abs(int(col.min())), abs(int(col.max())), 1)
            < 2**31
            else None
        )
        for s, t, o in zip(np.split(src, cuts), np.split(tile, cuts), np.split(owned, cuts)):
            rr, cc = r3[:, :, s], c3[:, :, s]
            if small is not None:
                rr, cc = rr.astype(small), cc.astype(small)
            out.setdefault(int(t[0]), []).append((idx[s] + offset, o, values[:, :, s], rr, cc))
    return out


def _tile_design(pieces, imshape, imcorner) -> tuple[Sparse3D, np.ndarray, np.ndarray]:
    """The design of a tile's extended set from its pieces: ``(S, ids, owned)``, sources by id.

    Pieces of one stamp shape are joined into one block; several shapes give an array with
    one stamp group per shape (:func:`~sparse3d._functions.build_grouped`), in the same
    ascending global order of sources as a single-shape tile.
    """
    from .._functions import build_grouped

    if not pieces:  # no source near this tile: it still answers for its pixels' chi-square
        empty = np.zeros((1, 1, 0))
        return Sparse3D(empty, empty, empty, imshape, imcorner), np.zeros(0, np.int64), np.zeros(0, bool)
    by_shape: dict = {}
    for p in pieces:
        by_shape.setdefault(p[2].shape[:2], []).append(p)
    ids = np.sort(np.concatenate([p[0] for p in pieces]))
    owned = np.zeros(ids.size, dtype=bool)
    blocks = []
    for same in by_shape.values():
        gids = np.concatenate([p[0] for p in same])
        order = np.argsort(gids, kind="stable")
        where = np.searchsorted(ids, gids[order])
        owned[where] = np.concatenate([p[1] for p in same])[order]
        G = Sparse3D(
            np.concatenate([p[2] for p in same], axis=2)[:, :, order],
            np.concatenate([p[3] for p in same], axis=2)[:, :, order].astype(np.int64),
            np.concatenate([p[4] for p in same], axis=2)[:, :, order].astype(np.int64),
            imshape=imshape,
            imcorner=imcorner,
        )
        blocks.append((G, where))
    return build_grouped(blocks), ids, owned


def _chunk_summary(split: dict) -> tuple[tuple[int, int], list[int]]:
    return split["extent"], [k for k in split if k != "extent"]


def _piece(split: dict, tile: int):
    return split[tile]


class _Tile:
    """One tile on a worker: its extended sources' normal equations and its data.

    ``ids`` are the global indices of the extended set, ``owned`` marks the sources this
    tile answers for. Everything else stays on the worker; methods return owned rows only.
    """

    def __init__(self, pieces, box, core, data, errors, mask, prior_mu, prior_sigma, solver):
        from ..fit import prepare_normal_equations

        (r0, c0), (h, w) = box
        S, self.ids, self.owned = _tile_design([q for p in pieces for q in p], (h, w), (r0, c0))
        n = self.ids.size
        mu = None if prior_mu is None else np.asarray(prior_mu, dtype=float)
        sig = None if prior_sigma is None else np.asarray(prior_sigma, dtype=float)
        mu = mu[self.ids] if mu is not None and mu.ndim else mu
        sig = sig[self.ids] if sig is not None and sig.ndim else sig
        if errors is not None:
            errors = np.asarray(errors, dtype=np.float64)
            if np.any(np.isposinf(errors)):  # errors = inf masks the pixel, as in the eager fit
                mask = (
                    np.isposinf(errors)
                    if mask is None
                    else (np.asarray(mask, dtype=bool) | np.isposinf(errors))
                )
        # the fit layer: this tile's normal equations, factorised once (halo fit, errors and
        # the preconditioner's solves); the products with N below use only the design matrix
        self.ne = prepare_normal_equations(
            S, imshape=(h, w), errors=errors, prior_mu=mu, prior_sigma=sig, mask=mask, solver=solver
        )
        del S
        self.A = self.ne.design
        self.ivar = None  # inverse variances of the box's pixels, 0 where masked
        if errors is not None or mask is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                iv = np.ones((h, w)) if errors is None else 1.0 / errors**2
            self.ivar = (iv if mask is None else np.where(mask, 0.0, iv)).ravel()
        self.prior_prec = None if sig is None else np.broadcast_to(1.0 / sig**2, (n,))
        self.prior_rhs = None
        if sig is not None:
            self.prior_rhs = self.prior_prec * np.broadcast_to(0.0 if mu is None else mu, (n,))
        D = np.asarray(data, dtype=np.float64)
        self.k = 1 if D.ndim == 2 else D.shape[2]
        D = D.reshape(h * w, self.k)
        self.ne.check_data(D)
        if self.ivar is not None:
            D = np.where(self.ivar[:, None] > 0, D, 0.0)  # masked pixels may hold anything
        # data term of the chi-square on the pixels this tile answers for (its core, disjoint
        # from the other tiles' cores): the client completes it with the weights (see _chi2)
        (cr0, cr1), (cc0, cc1) = core
        rows, cols = slice(cr0 - r0, cr1 - r0), slice(cc0 - c0, cc1 - c0)
        Dc = D.reshape(h, w, self.k)[rows, cols].reshape(-1, self.k)
        if self.ivar is None:
            self.dd, self.n_core = np.einsum("pk,pk->k", Dc, Dc), Dc.shape[0]
        else:
            ivc = self.ivar.reshape(h, w)[rows, cols].reshape(-1, 1)
            self.dd, self.n_core = np.einsum("pk,pk->k", Dc, Dc * ivc), int(np.count_nonzero(ivc))
        self._start = self._fit_with_halo(D)

    # -- what the client asks for -------------------------------------------------------
    def _fit_with_halo(self, D):
        ne, o = self.ne, self.owned
        rhs = self.A.T @ (D if self.ivar is None else self.ivar[:, None] * D)
        if self.prior_rhs is not None:
            rhs += self.prior_rhs[:, None]
        x0 = ne.solve(D)[: self.ids.size]
        err = ne.weights_err()[: self.ids.size]
        return self.ids, o, x0[o], rhs[o], err[o], ne.free[: self.ids.size][o], self.dd, self.n_core

    def start(self):
        """``(ids, owned, halo-fit weights, right-hand side, errors, free, dᵀC⁻¹d, pixels)``; once."""
        out, self._start = self._start, None
        return out

    def matvec(self, p: np.ndarray) -> np.ndarray:
        """Owned rows of ``N p = (AᵀC⁻¹A + P) p`` from ``p`` on the extended set: ``(nO, k)``."""
        Ap = self.A @ p
        q = self.A.T @ (Ap if self.ivar is None else self.ivar[:, None] * Ap)
        if self.prior_prec is not None:
            q += self.prior_prec[:, None] * p
        return q[self.owned]

    def precondition(self, r: np.ndarray) -> np.ndarray:
        """``(N_EE⁻¹)_OO r`` for owned ``r`` ``(nO, k)``: one solve with the tile's factor."""
        b = np.zeros((self.ids.size, r.shape[1]))
        b[self.owned] = r
        return self.ne.solve_normal(b)[self.owned]


def _call(method: str, obj, *args):
    return getattr(obj, method)(*args) if method != "summary" else _chunk_summary(obj)


class _Runner:
    """Where tasks run: a distributed cluster (results stay there as futures) or this process."""

    def __init__(self, client):
        self.client = client

    def persist(self, delayeds: list) -> list:
        """Compute ``delayeds`` and keep them where they were computed."""
        if self.client is None:
            return list(dask.compute(*delayeds))
        return self.client.compute(delayeds)

    def as_delayed(self, handle):
        return handle if self.client is None else dask.delayed(handle)

    def share(self, obj):
        """``obj`` as one graph key (scattered once to a cluster)."""
        if self.client is None or obj is None or np.ndim(obj) == 0:
            return obj
        return dask.delayed(self.client.scatter(obj, hash=False))

    def cut(self, image, sl):
        """``image[sl]``: a Dask array stays lazy (cut on the workers); a NumPy cut is scattered."""
        if image is None or is_dask_array(image):
            return None if image is None else image[sl]
        return self.share(np.ascontiguousarray(image[sl]))

    def map(self, method: str, objs: list, args: list | None = None) -> list:
        """``obj.method(arg)`` for every persisted ``obj`` (``args`` aligned): results, in order."""
        if self.client is None:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor() as pool:
                if args is None:
                    return list(pool.map(lambda o: _call(method, o), objs))
                return list(pool.map(lambda o, a: _call(method, o, a), objs, args))
        c = self.client
        names = [method] * len(objs)
        if args is None:
            futures = c.map(_call, names, objs, pure=False)
        else:
            # small arguments ride in the tasks (one round trip fewer); big ones are scattered
            if sum(getattr(a, "nbytes", 0) for a in args) > _INLINE_BYTES:
                args = c.scatter(args, hash=False)
            futures = c.map(_call, names, objs, args, pure=False)
        return c.gather(futures)


def _resolve_client(client):
    """``(client, close_after)`` from a Client, an address string or None (the default client)."""
    if client is None:
        return _distributed_client(), False
    if isinstance(client, str):
        from distributed import Client

        return Client(client, set_as_default=False), True
    if not hasattr(client, "gather") or not hasattr(client, "scatter"):
        raise TypeError(f"client must be a distributed.Client, a scheduler address or None; got {client!r}")
    return client, False


# -------------------------------------------------------------------------------------------
# The fit
# -------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class SceneFitResult(DaskFitResult):
    """Result of a distributed scene fit (:meth:`SourceChunked.fit`): NumPy weights and errors.

    Attributes (besides those of :class:`DaskFitResult`, here all computed)
    ----------
    n_tiles : int
        Number of tiles (``n_factorizations`` is the same number).
    n_iterations : int
        Conjugate-gradient iterations after the halo fits.
    converged : bool
        Whether ``max |z| / σ < tol`` was reached for every frame within ``max_iter``.
    timings : dict
        Wall seconds of each phase: ``"regroup"`` (stamps computed and regrouped by tile),
        ``"tiles"`` (tile data, factorisations, halo fits, errors), ``"iterations"``.
    """

    n_tiles: int = 0
    n_iterations: int = 0
    converged: bool = True
    timings: dict = field(default_factory=dict)


def _check_scene_inputs(SC, data, errors, mask, tile_size, halo, tol, max_iter):
    H, W = SC.imshape
    if data.ndim not in (2, 3) or tuple(data.shape[:2]) != (H, W):
        raise ValueError(f"data must have shape (H, W) = {(H, W)} or (H, W, k); got {tuple(data.shape)}")
    if errors is not None and tuple(np.shape(errors)) != (H, W):
        raise ValueError(
            f"errors must have shape (H, W) = {(H, W)} (one map shared by every frame) for a scene fit; "
            f"got {tuple(np.shape(errors))}"
        )
    if mask is not None and tuple(np.shape(mask)) != (H, W):
        raise ValueError(f"mask must have shape (H, W) = {(H, W)}; got {tuple(np.shape(mask))}")
    stamp = SC.stamp_shape
    th, tw = _as_pair(DEFAULT_TILE_SIZE if tile_size is None else tile_size, "tile_size")
    if halo is None:
        if stamp is None:
            raise ValueError("halo must be given: the stamp size of this SourceChunked is not known")
        halo = 2 * max(stamp)
    if not isinstance(halo, (int, np.integer)) or isinstance(halo, bool) or halo < 0:
        raise ValueError(f"halo must be a non-negative int (pixels); got {halo!r}")
    if stamp is not None:
        if halo < max(stamp):
            raise ValueError(
                f"halo must be at least one stamp wide ({max(stamp)} pixels for stamps {stamp}); got {halo}"
            )
        if th < stamp[0] or tw < stamp[1]:
            raise ValueError(f"tile_size must be at least the stamp size {stamp}; got {(th, tw)}")
    if th <= 0 or tw <= 0:
        raise ValueError(f"tile_size must be positive; got {(th, tw)}")
    if not (isinstance(tol, (int, float, np.floating)) and tol > 0):
        raise ValueError(f"tol must be a positive number; got {tol!r}")
    if not isinstance(max_iter, (int, np.integer)) or isinstance(max_iter, bool) or max_iter < 0:
        raise ValueError(f"max_iter must be a non-negative int; got {max_iter!r}")
    return (min(th, max(H, 1)), min(tw, max(W, 1))), int(halo)


def fit_scene(
    SC,
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
) -> SceneFitResult:
    """Fit a :class:`~sparse3d.dask.SourceChunked` scene over image tiles; see :meth:`SourceChunked.fit`."""
    from .chunked import SourceChunked

    if not isinstance(SC, SourceChunked):
        raise TypeError(f"fit_scene fits a SourceChunked scene; got {type(SC).__name__}")
    if not is_dask_array(data):
        data = np.asarray(data)
    (th, tw), halo = _check_scene_inputs(SC, data, errors, mask, tile_size, halo, tol, max_iter)
    n = SC.nsources
    if prior_mu is not None and prior_sigma is None:
        raise ValueError("prior_mu requires prior_sigma")
    for name, p in (("prior_mu", prior_mu), ("prior_sigma", prior_sigma)):
        if p is not None and np.ndim(p) and np.shape(p) != (n,):
            raise ValueError(f"{name} must be a scalar or have shape (nsources,) = ({n},); got {np.shape(p)}")
    if errors is not None and not is_dask_array(errors):
        errors = np.asarray(errors, dtype=np.float64)
    if mask is not None and not is_dask_array(mask):
        mask = np.asarray(mask, dtype=bool)
    k = 1 if data.ndim == 2 else int(data.shape[2])
    (ir0, ic0), (H, W) = SC.imcorner, SC.imshape
    geom = _Geometry(_tile_edges(ir0, H, th), _tile_edges(ic0, W, tw), halo, (H, W), (ir0, ic0))

    client, close = _resolve_client(client)
    try:
        runner = _Runner(client)
        return _fit_tiles(
            SC, data, errors, mask, prior_mu, prior_sigma, geom, k, tol, max_iter, solver, runner
        )
    finally:
        if close:
            client.close()


def _assemble(n: int, k: int, ids: list, parts: list) -> np.ndarray:
    out = np.zeros((n, k))
    for i, part in zip(ids, parts):
        out[i] = part
    return out


def _chi2(dd, x, b, Nx, n, prior_mu, prior_sigma) -> np.ndarray:
    """``Σ ((d − A x) / σ)²`` per frame without the pixels: ``dᵀC⁻¹d − 2 xᵀAᵀC⁻¹d + xᵀAᵀC⁻¹A x``.

    ``dd`` is ``dᵀC⁻¹d`` (summed over the tiles), ``b = AᵀC⁻¹d + Pμ`` and ``Nx = (AᵀC⁻¹A + P) x``
    (the CG recurrence keeps ``b − r = N x``); the prior terms are taken out again.
    """
    Atd, AtAx = b, Nx
    if prior_sigma is not None:
        prec = np.broadcast_to(1.0 / np.asarray(prior_sigma, dtype=float) ** 2, (n,))[:, None]
        mu = np.broadcast_to(np.asarray(0.0 if prior_mu is None else prior_mu, dtype=float), (n,))[:, None]
        Atd, AtAx = b - prec * mu, Nx - prec * x
    return dd - 2 * np.einsum("sk,sk->k", x, Atd) + np.einsum("sk,sk->k", x, AtAx)


def _fit_tiles(SC, data, errors, mask, prior_mu, prior_sigma, geom, k, tol, max_iter, solver, runner):
    n = SC.nsources
    stack = data.ndim == 3
    timings = {}
    t0 = time.perf_counter()
    # 1. regroup the source chunks by tile, on the workers
    offsets = np.concatenate([[0], np.cumsum(SC.chunks)[:-1]]).astype(int)
    split = dask.delayed(_split_chunk, pure=False)
    splits = runner.persist([split(p, int(o), geom) for p, o in zip(SC.parts, offsets)])
    summaries = runner.map("summary", splits)
    extent = tuple(max([s[0][a] for s in summaries], default=0) for a in (0, 1))
    if geom.halo < max(extent):
        raise ValueError(
            f"halo must be at least one stamp wide: the largest stamp spans {extent} pixels; got {geom.halo}"
        )
    timings["regroup"] = time.perf_counter() - t0
    tiles_of: dict[int, list[int]] = {}
    for i, (_, keys) in enumerate(summaries):
        for t in keys:
            tiles_of.setdefault(t, []).append(i)
    # 2. one tile per group of sources: its pixel box, its data, its factorisation
    mu, sigma_p = runner.share(prior_mu), runner.share(prior_sigma)
    ntc = geom.grid[1]
    H, W = geom.imshape
    ir0, ic0 = geom.imcorner
    redges = np.concatenate([[ir0], geom.row_edges, [ir0 + H]])
    cedges = np.concatenate([[ic0], geom.col_edges, [ic0 + W]])
    build = []
    for t in range(geom.grid[0] * ntc):  # every tile, for the chi-square of its pixels
        i, j = divmod(t, ntc)
        core = ((int(redges[i]), int(redges[i + 1])), (int(cedges[j]), int(cedges[j + 1])))
        # every extended source's stamp lies within halo + one stamp of the core
        r0 = max(ir0, core[0][0] - geom.halo - extent[0])
        r1 = min(ir0 + H, core[0][1] + geom.halo + extent[0])
        c0 = max(ic0, core[1][0] - geom.halo - extent[1])
        c1 = min(ic0 + W, core[1][1] + geom.halo + extent[1])
        sl = (slice(r0 - ir0, r1 - ir0), slice(c0 - ic0, c1 - ic0))
        piece = dask.delayed(_piece, pure=False)
        pieces = [piece(runner.as_delayed(splits[c]), t) for c in tiles_of.get(t, [])]
        build.append(
            dask.delayed(_Tile, pure=False)(
                pieces,
                ((r0, c0), (r1 - r0, c1 - c0)),
                core,
                runner.cut(data, sl),
                runner.cut(errors, sl),
                runner.cut(mask, sl),
                mu,
                sigma_p,
                solver,
            )
        )
    tiles = runner.persist(build)
    del splits, build, summaries  # the regrouped stamps now live in the tiles only
    starts = runner.map("start", tiles)
    ext_ids = [s[0] for s in starts]
    own = [s[0][s[1]] for s in starts]
    x, b = np.zeros((n, k)), np.zeros((n, k))
    sigma = np.full(n, np.nan)
    free = np.zeros(n, dtype=bool)
    dd = np.zeros(k)
    n_pixels = 0
    for ids, owned, x0, rhs, err, fr, dd_t, npix in starts:
        o = ids[owned]
        x[o], b[o], sigma[o], free[o] = x0, rhs, err, fr
        dd += dd_t
        n_pixels += npix
    del starts
    x[~free] = 0.0
    timings["tiles"] = time.perf_counter() - t0 - timings["regroup"]
    t0 = time.perf_counter()

    def matvec(v):
        return _assemble(n, k, own, runner.map("matvec", tiles, [v[e] for e in ext_ids]))

    def precondition(v):
        return _assemble(n, k, own, runner.map("precondition", tiles, [v[o] for o in own]))

    # 3. conjugate gradients on the global normal equations, preconditioned by the tiles
    r = b - matvec(x)
    r[~free] = 0.0
    z = precondition(r)
    p = z.copy()
    rz = np.einsum("sk,sk->k", r, z)
    scale = sigma[free][:, None]
    it, converged = 0, True
    while free.any() and not np.all(np.abs(z[free]) < tol * scale):
        if it >= max_iter:
            converged = False
            break
        q = matvec(p)
        pq = np.einsum("sk,sk->k", p, q)
        alpha = np.divide(rz, pq, out=np.zeros_like(rz), where=pq > 0)
        x += alpha * p
        r -= alpha * q
        z = precondition(r)
        rz_new = np.einsum("sk,sk->k", r, z)
        beta = np.divide(rz_new, rz, out=np.zeros_like(rz), where=rz > 0)
        p = z + beta * p
        rz = rz_new
        it += 1
    if not converged:
        warnings.warn(
            f"the distributed scene fit did not reach tol={tol} within max_iter={max_iter} iterations; "
            "raise max_iter or the halo",
            RuntimeWarning,
            stacklevel=4,
        )
    chi2 = _chi2(dd, x, b, b - r, n, prior_mu, prior_sigma)
    timings["iterations"] = time.perf_counter() - t0
    x[~free] = np.nan
    if not free.all():
        from ..fit import UnconstrainedSourceWarning

        warnings.warn(
            f"{int(np.count_nonzero(~free))} of {n} source(s) have no unmasked pixel in the image and no "
            "prior; their weights and weights_err are NaN.",
            UnconstrainedSourceWarning,
            stacklevel=4,
        )
    return SceneFitResult(
        x if stack else x[:, 0],
        chi2 if stack else chi2[0],
        weights_err=sigma,
        n_pixels=n_pixels,
        unconstrained=~free,
        solver=solver,
        n_factorizations=len(tiles),
        _design=SC,
        n_tiles=len(tiles),
        n_iterations=it,
        converged=converged,
        timings=timings,
    )
