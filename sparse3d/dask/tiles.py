"""The tiles of a distributed scene fit (:func:`sparse3d.dask.fit_scene`).

The geometry (tile edges, which tiles' extended areas hold a source centre), the worker-side
regrouping of a source chunk by tile, and :class:`_Tile`: one tile's normal equations on a
worker, answering the client's products and preconditioner solves with its owned rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import Sparse3D


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
