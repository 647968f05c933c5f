"""The linearised scene: a PSF model and its position derivatives around current positions.

A scene ``model = sum_k f_k PSF(x - r_k, y - c_k)`` is linear in the fluxes ``f`` and not in
the positions. Around positions ``(r, c)`` it is, to first order,

    model(f', r + dr, c + dc) ~ L f' + (f * dL/drow) dr + (f * dL/dcol) dc

so one weighted linear least-squares solve with the design columns
``[L, f * dL/drow, f * dL/dcol]`` gives new fluxes and position offsets together: one
Gauss-Newton step. This module builds those columns from the PSF layer's public API
(``psf.design(..., derivatives=("row", "col"))``) and holds the per-source stamp sums the
damping needs (column norms, chi-square over each stamp).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core import Sparse3D


def stamp_shape_arg(stamp_shape: Any) -> Any:
    """``stamp_shape`` as the PSF layer takes it: one ``(nr, nc)`` pair (a tuple), or per-source
    sizes (a NumPy integer array ``(nsources,)`` or ``(nsources, 2)``, kept as an array: the
    designs are then arrays with one stamp group per shape)."""
    if isinstance(stamp_shape, np.ndarray):
        return stamp_shape.copy()
    return tuple(stamp_shape) if isinstance(stamp_shape, (tuple, list)) else stamp_shape


def design_at(
    psf: Any,
    row: np.ndarray,
    col: np.ndarray,
    imshape: tuple[int, int],
    stamp_shape: Any,
    imcorner: tuple[int, int],
    derivatives: bool,
) -> tuple[Sparse3D, Sparse3D | None, Sparse3D | None]:
    """``L`` (and ``dL/drow``, ``dL/dcol`` when ``derivatives``) at the positions ``row, col``.

    ``stamp_shape`` is one ``(nr, nc)`` or per-source sizes (see :func:`stamp_shape_arg`).
    """
    if not derivatives:
        return psf.design(row, col, imshape, stamp_shape=stamp_shape, imcorner=imcorner), None, None
    L, d = psf.design(
        row, col, imshape, stamp_shape=stamp_shape, imcorner=imcorner, derivatives=("row", "col")
    )
    return L, d["row"], d["col"]


def _per_source(S: Sparse3D, per_group) -> np.ndarray:
    """``(nsources,)`` from ``per_group(i, G)`` on every stamp group ``G = S.groups[i]``."""
    groups = S.groups
    if len(groups) == 1:
        return per_group(0, S)
    out = np.empty(S.nsources)
    for i, (G, idx) in enumerate(zip(groups, S.group_sources)):
        out[idx] = per_group(i, G)
    return out


def stamp_values(S: Sparse3D, image: np.ndarray) -> np.ndarray:
    """``image`` (``(H, W)``, in the array's pixel frame) read at every stamp pixel of ``S``.

    Returns ``(nr, nc, nsources)``; 0 on stamp pixels outside the image. Single stamp shape
    only (for an array with several stamp groups, call it on each of ``S.groups``).
    """
    H, W = S.imshape
    r = np.clip(S.row - S.imcorner[0], 0, H - 1)
    c = np.clip(S.col - S.imcorner[1], 0, W - 1)
    return np.where(S.in_image, image[r, c], 0.0)


def stamp_sum(S: Sparse3D, image: np.ndarray, power: int = 0) -> np.ndarray:
    """Per-source ``sum(S.data**power * image)`` over each stamp's in-image pixels, ``(nsources,)``.

    Arrays with several stamp groups: summed group by group, in the array's source order.
    """

    def one(_, G):
        v = stamp_values(G, image)
        if power:
            v = v * G.data**power
        return v.sum(axis=(0, 1))

    return _per_source(S, one)


def column_norms(ivar: np.ndarray, *arrays: Sparse3D) -> list[np.ndarray]:
    """Per-source ``sum(ivar * S.data**2)`` of each of ``arrays``, which share one structure.

    The weights are read at the stamp pixels once for all of them (the PSF layer hands out
    the model and its derivatives with the same structure; with several stamp groups, the
    same groups), group by group.
    """
    if not arrays:
        return []
    weights = [stamp_values(G, ivar) for G in arrays[0].groups]
    return [_per_source(S, lambda i, G: (weights[i] * G.data**2).sum(axis=(0, 1))) for S in arrays]


def gauss_newton_design(
    L: Sparse3D,
    dR: Sparse3D,
    dC: Sparse3D,
    flux: np.ndarray,
    moving: np.ndarray,
    previous: Sparse3D | None = None,
) -> Sparse3D:
    """The Gauss-Newton design ``[L, f dL/drow, f dL/dcol]`` as one :class:`~sparse3d.Sparse3D`.

    The derivative columns are kept only for the sources in ``moving`` (integer indices),
    so the solve's unknowns are all fluxes, then the row offsets, then the column offsets
    of the moving sources. ``L``, ``dR`` and ``dC`` share one structure (the PSF layer's), so
    the design is their stamps stacked along the source axis: the fit then builds its normal
    matrix straight from the stamps (no SciPy ``A^T A``).

    ``previous``, the design of an earlier iteration: when it has exactly these stamps (same
    moving sources, no stamp moved by a pixel) the new design shares its stamp structure
    (:meth:`Sparse3D.with_data`), so the orderings the fit derives from a structure (its CSR
    order, its stamp cells) are not computed again.
    """
    if moving.size == 0:
        return L
    fm = np.nan_to_num(flux)[moving]
    if len(L.stamp_shapes) > 1:  # several stamp groups: the array API joins them, group by group
        return np.concatenate([L, dR[:, :, moving] * fm, dC[:, :, moving] * fm], axis=2)
    data = np.concatenate([L.data, dR.data[..., moving] * fm, dC.data[..., moving] * fm], axis=2)
    n = L.nsources
    if (
        previous is not None
        and previous.shape[2] == n + 2 * moving.size
        and previous.imshape == L.imshape
        and previous.imcorner == L.imcorner
        and np.array_equal(previous.row[..., :n], L.row)
        and np.array_equal(previous.col[..., :n], L.col)
        and np.array_equal(previous.row[..., n : n + moving.size], L.row[..., moving])
        and np.array_equal(previous.col[..., n : n + moving.size], L.col[..., moving])
    ):
        return previous.with_data(data)
    row = np.concatenate([L.row, L.row[..., moving], L.row[..., moving]], axis=2)
    col = np.concatenate([L.col, L.col[..., moving], L.col[..., moving]], axis=2)
    return Sparse3D(data, row, col, L.imshape, L.imcorner)


def weighted_chi2_image(data: np.ndarray, model: np.ndarray, ivar: np.ndarray) -> np.ndarray:
    """``ivar * (data - model)**2``, the chi-square of every pixel."""
    r = data - model
    r *= r
    r *= ivar
    return r
