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
never assembled anywhere; :meth:`SourceChunked.fit` fits such a scene over image tiles on the
workers, converging to the eager fit (see :mod:`sparse3d.dask.scene`).

Where each concept lives
------------------------
``_graph.py``
    Content tokens, :func:`_shared` (one graph key per big object; scattered once to a
    distributed cluster), source-chunk bookkeeping, the block functions.
``chunked.py``
    :class:`SourceChunked`, :func:`from_function`, :func:`to_dask`.
``products.py``
    :func:`dot`, :func:`project`, :func:`tensordot`: the NumPy functions with Dask operands.
``frames.py``
    :func:`fit` and :class:`DaskFitResult`: frame stacks of one in-memory scene.
``scene.py``
    :func:`fit_scene` (:meth:`SourceChunked.fit`), :class:`SceneFitResult`: one scene too
    large for one process, fitted over image tiles by distributed conjugate gradients.
``tiles.py``
    its tiles: geometry, a source chunk regrouped by tile, one tile's normal equations.
``_runner.py``
    where its tasks run: a distributed cluster or this process.
"""

from __future__ import annotations

from .. import _functions
from ._graph import SCATTER_BYTES, _pickled_nbytes, _shared, _token, is_dask_array  # noqa: F401
from .chunked import SourceChunked, from_function, to_dask
from .frames import DaskFitResult, _FrameSolver, fit  # noqa: F401
from .products import dot, project, tensordot
from .scene import SceneFitResult, fit_scene

__all__ = [
    "SCATTER_BYTES",
    "DaskFitResult",
    "SceneFitResult",
    "SourceChunked",
    "dot",
    "fit",
    "fit_scene",
    "from_function",
    "is_dask_array",
    "project",
    "tensordot",
    "to_dask",
]


# The core's NumPy functions (np.dot, np.tensordot, S.fit) reach this module through this
# hook: sparse3d._functions never imports sparse3d.dask.
_functions.register_lazy_backend("dask", _functions.LazyBackend(dot=dot, tensordot=tensordot, fit=fit))
