"""NumPy-function delegation: ``np.dot`` / ``np.tensordot`` of a :class:`Sparse3D` with Dask arrays.

Called by ``sparse3d._functions`` (through the registered lazy backend) when an operand is a
Dask array: the model (``dot``) and the projection ``Aᵀ·y`` (``project``).
"""

from __future__ import annotations

import math

import dask.array as da

from .chunked import SourceChunked


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
