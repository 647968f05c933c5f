"""Graph plumbing shared by the Dask integration: content tokens, shipping big objects once,
source-chunk bookkeeping and the block functions every lazy product runs on the workers.

Block functions live at module level, so workers import them instead of unpickling code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize

from ..core import Sparse3D


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
        positions = [(g.row, g.col) for g in S.groups]  # one pair per stamp group
        values = S._group_blocks()  # per group: never joins the values of a concatenation
        tok = tokenize(values, positions, [np.asarray(x) for x in S.group_sources], S.imshape, S.imcorner)
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


def _dot_block(S: Sparse3D, w: np.ndarray) -> np.ndarray:
    return S.dot(np.asarray(w))


def _project_block(S: Sparse3D, y: np.ndarray) -> np.ndarray:
    return np.tensordot(S, np.asarray(y), axes=([0, 1], [0, 1]))


def _sum_blocks(*blocks):
    out = blocks[0].copy()
    for b in blocks[1:]:
        out += b
    return out


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
