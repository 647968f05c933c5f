"""NEP 18 (``__array_function__``): the registry of NumPy functions on :class:`Sparse3D`.

Every overridable NumPy function is in exactly one of two tables:

* ``HANDLED_FUNCTIONS`` — filled by the :func:`implements` decorator; each entry computes
  what NumPy computes on the dense logical array (with stamp semantics for elementwise
  functions such as ``np.clip`` or ``np.where``) and documents its return type.
* ``UNSUPPORTED_FUNCTIONS`` (in :mod:`sparse3d._unsupported`) — raise ``TypeError`` naming
  the function, the reason and the way out. Nothing silently densifies.

Reductions (``np.sum``, ``np.mean``, ``np.max``, ``np.min``, ``np.prod``, ``np.any``,
``np.all``, ``np.count_nonzero``, the ``np.nan*`` variants and ``ufunc.reduce``) act on the
logical array, implicit zeros included, and return what NumPy returns: a NumPy scalar for
``axis=None``, otherwise a dense ``ndarray`` — the image ``(H, W)`` for ``axis=2`` (sources),
``(nsources,)`` for ``axis=(0, 1)``, ``(W, nsources)`` for ``axis=0`` and so on. Results
larger than ``max_dense_bytes`` are refused up front (:class:`~sparse3d.DenseAllocationError`).

Where things live (one module per concept; importing this package fills the registry):

* :mod:`._registry` — :func:`implements`, ``HANDLED_FUNCTIONS``, :func:`array_function`,
  :func:`axis_index`, the lazy (Dask) backend hooks;
* :mod:`.products` — ``np.dot``, ``np.matmul``, ``np.tensordot``, ``np.einsum``, projection;
* :mod:`.planes` — the legacy jitter loop's ``(k, H, W)`` product of a translation in one call;
* :mod:`.reductions` — the reductions above and :func:`ufunc_reduce`;
* :mod:`.indexing` — :func:`getitem`;
* :mod:`.joining` — ``np.concatenate``, ``np.stack``, joining/selecting sources, grouped arrays;
* :mod:`.comparisons` — ``np.isclose``, ``np.allclose``, ``np.array_equal``;
* :mod:`.elementwise` — ``np.where``, ``np.clip``, ``np.round``, ``np.nan_to_num``, ``np.real``/``imag``,
  ``np.copy``, the ``*_like`` constructors, ``np.nonzero``, ``np.gradient``;
* :mod:`.shape` — ``np.shape``, ``np.ndim``, ``np.size``, ``np.transpose``, ``np.result_type``.
"""

from . import comparisons, elementwise, indexing, joining, products, reductions, shape
from ._registry import (
    GROUPED_UNSUPPORTED,
    HANDLED_FUNCTIONS,
    UNSUPPORTED_FUNCTIONS,
    LazyBackend,
    array_function,
    axis_index,
    declare_lazy_provider,
    implements,
    lazy_backend,
    register_lazy_backend,
)
from .elementwise import element_sources, logical_complement
from .indexing import getitem
from .joining import build_grouped, join_sources, regroup, select_sources
from .products import (
    _as_weights,
    _fast_product,
    dot,
    matmul,
    scatter_sum,
    scipy_values,
)
from .reductions import ufunc_reduce
from .translated import sorted_values

__all__ = [
    "HANDLED_FUNCTIONS",
    "UNSUPPORTED_FUNCTIONS",
    "LazyBackend",
    "array_function",
    "declare_lazy_provider",
    "implements",
    "lazy_backend",
    "register_lazy_backend",
    # re-exported for the core (Sparse3D methods, roi, ufuncs) and the concept modules:
    "GROUPED_UNSUPPORTED",
    "axis_index",
    "element_sources",
    "logical_complement",
    "getitem",
    "build_grouped",
    "join_sources",
    "regroup",
    "select_sources",
    "_as_weights",
    "_fast_product",
    "dot",
    "matmul",
    "scatter_sum",
    "scipy_values",
    "sorted_values",
    "ufunc_reduce",
    "comparisons",
    "elementwise",
    "indexing",
    "joining",
    "products",
    "reductions",
    "shape",
]
