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
"""

from __future__ import annotations

import importlib
import operator
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import _kernels, _pool
from ._options import check_dense_allocation
from ._ufuncs import apply_elementwise
from ._unsupported import UNSUPPORTED_FUNCTIONS, function_key

__all__ = [
    "HANDLED_FUNCTIONS",
    "UNSUPPORTED_FUNCTIONS",
    "LazyBackend",
    "array_function",
    "declare_lazy_provider",
    "implements",
    "lazy_backend",
    "register_lazy_backend",
]

HANDLED_FUNCTIONS: dict[Callable, Callable] = {}
_NoValue = np._NoValue


def implements(*numpy_functions: Callable) -> Callable:
    """Register the decorated function as the Sparse3D implementation of ``numpy_functions``."""

    def decorator(func: Callable) -> Callable:
        for f in numpy_functions:
            HANDLED_FUNCTIONS[f] = func
        return func

    return decorator


#: Registry functions that are not (yet) defined on arrays with several stamp groups; they
#: refuse grouped arrays with a TypeError naming ``S.groups``. Everything else in the registry
#: works on grouped arrays through the flat element space or a loop over the groups.
GROUPED_UNSUPPORTED: set[Callable] = set()


def _holds_grouped(args) -> bool:
    Sparse3D = _S()
    for a in args:
        items = a if isinstance(a, (list, tuple)) else (a,)
        if any(isinstance(x, Sparse3D) and x._structure.grouped for x in items):
            return True
    return False


def array_function(self, func, types, args, kwargs):
    """``Sparse3D.__array_function__``: dispatch to the registry or refuse clearly."""
    impl = HANDLED_FUNCTIONS.get(func)
    if impl is not None and func in GROUPED_UNSUPPORTED and _holds_grouped(args):
        raise TypeError(
            f"{function_key(func)} is not supported on Sparse3D arrays with several stamp groups; "
            "apply it to each of S.groups"
        )
    if impl is None:
        reason = UNSUPPORTED_FUNCTIONS.get(
            function_key(func), "it is not implemented for Sparse3D; convert with S.to_sparse() or S.tocsr()"
        )
        raise TypeError(f"{function_key(func)} is not supported on Sparse3D: {reason}")
    return impl(*args, **kwargs)


def _S():
    from .core import Sparse3D

    return Sparse3D


def axis_index(axis, ndim: int) -> int:
    """``axis`` as an index in ``[0, ndim)``; NumPy's ``AxisError`` when out of range.

    The one normalisation used by every function taking an axis (reductions, tensordot,
    concatenate, transpose, size): axes are never taken modulo ``ndim``.
    """
    from numpy.lib.array_utils import normalize_axis_index

    return normalize_axis_index(operator.index(axis), ndim)


def _refuse_out(out, name: str) -> None:
    if out is not None:
        raise TypeError(f"{name}(..., out=...) is not supported on Sparse3D: arrays are immutable")


# -------------------------------------------------------------------------------------------
# Lazy operands (Dask arrays): the registry knows no integration
# -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LazyBackend:
    """How an integration evaluates products of a Sparse3D with its lazy arrays.

    ``dot(S, w)`` and ``tensordot(S, b, axes=(axes_a, axes_b))`` return lazy results;
    ``fit(S, data, errors, prior_mu, prior_sigma, mask)`` returns lazy weights.
    """

    dot: Callable
    tensordot: Callable
    fit: Callable


# Backends by the package prefix of their arrays' type module (``"dask"`` for
# ``dask.array.core.Array``), registered by the integration when it is imported.
_LAZY_BACKENDS: dict[str, LazyBackend] = {}
# Module to import on the first operand of a prefix with no backend yet (it registers
# itself): declared by ``sparse3d/__init__.py``, the one module that knows every layer.
_LAZY_PROVIDERS: dict[str, str] = {}


def register_lazy_backend(prefix: str, backend: LazyBackend) -> None:
    """Evaluate products with arrays whose type's module starts with ``prefix`` through ``backend``."""
    _LAZY_BACKENDS[prefix] = backend


def declare_lazy_provider(prefix: str, module: str) -> None:
    """Import ``module`` (which calls :func:`register_lazy_backend`) on the first such operand."""
    _LAZY_PROVIDERS[prefix] = module


def lazy_backend(x) -> LazyBackend | None:
    """The backend for ``x`` when it is a lazy array of a known integration, else None.

    Duck typing on the module of ``type(x)``: nothing is imported for NumPy operands, and
    the integration module only on its arrays' first use.
    """
    module = type(x).__module__
    for prefix, backend in _LAZY_BACKENDS.items():
        if module.startswith(prefix):
            return backend
    for prefix, provider in _LAZY_PROVIDERS.items():
        if module.startswith(prefix):
            importlib.import_module(provider)
            return _LAZY_BACKENDS[prefix]
    return None


# -------------------------------------------------------------------------------------------
# Products
# -------------------------------------------------------------------------------------------
def scatter_sum(
    index: np.ndarray, weights: np.ndarray, size: int, dtype: np.dtype, what: str | None = None
) -> np.ndarray:
    """``out[index[i]] += weights[i]`` into a new 1-D array of ``size`` bins, in ``dtype``.

    Floats accumulate in float64 (``np.bincount``) and are cast once, so float32 results stay
    accurate; integers accumulate exactly. ``what`` names the result in the error raised
    when it would exceed ``max_dense_bytes``.
    """
    dtype = np.dtype(dtype)
    check_dense_allocation(size * max(dtype.itemsize, 8), what or f"a dense result of {size} elements")
    index = index.ravel()
    w = weights.ravel()
    if dtype.kind == "c":
        out = np.bincount(index, weights=w.real, minlength=size)[:size].astype(dtype)
        out.imag = np.bincount(index, weights=w.imag, minlength=size)[:size]
    elif dtype.kind == "f":
        out = np.bincount(index, weights=w, minlength=size)[:size].astype(dtype, copy=False)
    else:  # exact integer accumulation
        out = np.zeros(size, dtype=dtype)
        np.add.at(out, index, w.astype(dtype, copy=False))
    return out


def scipy_values(values: np.ndarray) -> np.ndarray:
    """``values`` in a dtype ``scipy.sparse`` supports: float16 becomes float32, else unchanged.

    SciPy has no float16 sparse matrices; every conversion to SciPy (``tocsr``, ``tocsc``,
    ``tocoo``, ROI designs) therefore returns float32 for float16 arrays.
    """
    return values.astype(np.float32) if values.dtype == np.float16 else values


def _scatter_image(structure, weights: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Sum stamp-shaped ``weights`` into the image ``(H, W)`` of ``structure``."""
    H, W = structure.imshape
    # off-image elements land in the extra bin H*W, which is dropped
    out = scatter_sum(structure.pixel, weights, H * W + 1, dtype, what=f"an image of shape {(H, W)}")
    return out[: H * W].reshape(H, W)


def _split_unit(x):
    """``(magnitude, unit)`` for astropy-like quantities, without importing astropy."""
    if hasattr(x, "unit") and hasattr(x, "value") and not isinstance(x, _S()):
        return np.asarray(x.value), x.unit
    return x, None


def _as_weights(b, name: str):
    Sparse3D = _S()
    if isinstance(b, Sparse3D):
        raise TypeError(f"{name}: the product of two Sparse3D arrays is not supported; use S.tocsr()")
    if type(b).__module__.startswith(("sparse", "scipy")):
        raise TypeError(f"{name}: weights must be a dense array; got {type(b).__name__}")
    b = np.asarray(b)
    if b.dtype.kind not in "biufc":
        raise TypeError(f"{name}: weights must be numeric; got an array of dtype {b.dtype}")
    return b


def dot(a, b, out=None):
    """``np.dot(S, w)``: contract the source axis of ``S`` with the first axis of ``w``.

    ``w (nsources,)`` → image ``ndarray (H, W)``; ``w (nsources, k)`` → ``ndarray (H, W, k)``;
    scalar ``w`` → ``S * w`` (a Sparse3D).
    """
    Sparse3D = _S()
    _refuse_out(out, "np.dot")
    if not isinstance(a, Sparse3D):
        raise TypeError(
            "np.dot(x, S) with the Sparse3D second is not supported (it would contract the column "
            "axis); use np.tensordot(S, image, axes=([0, 1], [0, 1])) for per-source projections"
        )
    backend = lazy_backend(b)
    if backend is not None:  # lazy model on Dask weights
        return backend.dot(a, b)
    b, unit = _split_unit(b)
    b = _as_weights(b, "np.dot")
    if b.ndim == 0:
        result = a * b[()]
        return result if unit is None else result * unit
    n = a.nsources
    if b.shape[0] != n:
        raise ValueError(f"weights must have length nsources={n} along their first axis; got shape {b.shape}")
    if b.ndim > 2:
        raise ValueError(f"weights must be (nsources,) or (nsources, k); got {b.ndim}-D shape {b.shape}")
    dtype = np.result_type(a.dtype, b.dtype)
    s = a._structure
    H, W = a.imshape
    k = 1 if b.ndim == 1 else b.shape[1]
    what = f"an image of shape {(H, W)}" if b.ndim == 1 else f"a model cube of shape {(H, W, k)}"
    check_dense_allocation(H * W * k * max(dtype.itemsize, 8 if b.ndim == 1 else 1), what)
    if s.grouped:  # the sum of every group's model with its sources' weights
        result = None
        for i, g in enumerate(a.groups):
            part = dot(g, s.take(b, i))
            result = part.astype(dtype, copy=False) if result is None else np.add(result, part, out=result)
        return result if unit is None else result * unit
    fast = _fast_product(a, dtype, b.dtype)
    if fast == "csr":
        result = np.asarray(a._csr @ b).astype(dtype, copy=False).reshape((H, W, k)[: 1 + b.ndim])
    elif fast == "kernel":
        w2 = b.reshape(n, k)
        result = _kernels.scatter(s._row, s._col, a._values, w2, s.root_corner, s.imshape, dtype)
        result = result.reshape((H, W, k)[: 1 + b.ndim])
    elif fast == "sorted":
        order = s.sorted_order()[1:]
        w2 = b.reshape(n, k)
        rows = s.sorted_rows()
        result = _kernels.sorted_scatter(order, sorted_values(a), s.root_corner, s.imshape, w2, dtype, rows)
        result = result.reshape((H, W, k)[: 1 + b.ndim])
    elif b.ndim == 1:
        result = _scatter_image(s, a._values * b, dtype)
    else:
        if k == 0:
            result = np.zeros((H, W, 0), dtype=dtype)
        elif k <= 4 or dtype.kind not in "fc":
            result = np.stack([_scatter_image(s, a._values * b[:, j], dtype) for j in range(k)], axis=-1)
            result = result.reshape(H, W, k)
        else:
            result = np.asarray(a._csr @ b).astype(dtype, copy=False).reshape(H, W, k)
    return result if unit is None else result * unit


implements(np.dot)(dot)


def _fast_product(a, dtype, *other_dtypes) -> str | None:
    """How a product of ``a`` is computed: ``"csr"``, ``"kernel"``, ``"sorted"`` or ``None`` (NumPy).

    The first product of an array runs the compiled scatter/gather of
    :mod:`sparse3d._kernels` (nothing index-sized allocated). From the second product on the
    same array its CSR matrix is built once and cached, as any derived view: a pixel-sorted
    CSR product streams memory, where the stamp-ordered scatter writes pixels at random.
    Translations of an array (a jitter loop) are new arrays, but they share one
    pixel-sorted order of the stored positions: from the family's second product on they
    take ``"sorted"`` (:func:`sparse3d._kernels.sorted_scatter`; callers without a sorted
    kernel use ``"kernel"``). Arrays below ``MIN_ELEMENTS`` use the kernels only when the
    family repeats products (:func:`_repeated`).
    """
    fam = a._family
    fam["nproducts"] = calls = fam.get("nproducts", 0) + 1
    size = a._values.size
    fam["elements"] = fam.get("elements", 0) + size
    if size < _kernels.MIN_ELEMENTS and not _repeated(fam, size):
        return None
    if not _kernels.use_kernel(max(size, _kernels.MIN_ELEMENTS), dtype, a.dtype, *other_dtypes):
        return None
    cache = a.__dict__
    if "_csr" in cache:
        return "csr"
    own = cache.get("_nproducts", 0) + 1
    cache["_nproducts"] = own
    if own >= 2:
        return "csr"
    return "sorted" if calls >= 2 else "kernel"


#: A family (an array and its translations) below ``MIN_ELEMENTS`` uses the kernels once it
#: has run products over this many stamp elements in all (NumPy's path costs ~15 ns per
#: element and weight column, numba ~1.5 s to load per process), or, once numba is loaded
#: in the process, from its second product on when it has at least ``REPEAT_MIN_ELEMENTS``.
REPEAT_ELEMENTS = 20_000_000
REPEAT_MIN_ELEMENTS = 100_000


def _repeated(fam: dict, size: int) -> bool:
    if size < min(REPEAT_MIN_ELEMENTS, _kernels.MIN_ELEMENTS):
        return False
    if fam["elements"] >= REPEAT_ELEMENTS:
        return True
    return fam["nproducts"] >= 2 and _kernels.loaded()


def sorted_values(a) -> np.ndarray:
    """``a``'s values in its structure's pixel-sorted order (cached for the family)."""
    fam = a._family
    got = fam.get("sorted_values")
    if got is None:
        take = a._structure.sorted_order()[0]
        got = fam.setdefault("sorted_values", _readonly_array(a._values.ravel()[take]))
    return got


def _readonly_array(x: np.ndarray) -> np.ndarray:
    x.flags.writeable = False
    return x


def matmul(a, b, out=None, **kwargs):
    """``S @ w`` / ``np.matmul(S, w)``: same as :func:`dot` for 1-D and 2-D ``w``."""
    Sparse3D = _S()
    _refuse_out(out, "np.matmul")
    if kwargs:
        raise TypeError(f"np.matmul keyword arguments {sorted(kwargs)} are not supported on Sparse3D")
    if not isinstance(a, Sparse3D):
        raise TypeError("x @ S with the Sparse3D on the right is not supported; use S @ w or np.tensordot")
    b_mag, _ = _split_unit(b)
    if np.ndim(b_mag) == 0:
        raise ValueError("matmul: a scalar operand is not allowed (NumPy's rule); use S * c")
    if np.ndim(b_mag) > 2:
        raise ValueError(f"matmul: weights must be (nsources,) or (nsources, k); got shape {np.shape(b_mag)}")
    return dot(a, b)


implements(np.matmul)(matmul)


def _project(S, image: np.ndarray) -> np.ndarray:
    """``Aᵀ·y``: per-source sums of ``S * image``; image ``(H, W)`` → ``(n,)``, ``(H, W, m)`` → ``(n, m)``."""
    if S._structure.grouped:  # every group's sources in their places
        return S._structure.assemble([_project(g, image) for g in S.groups], axis=0)
    H, W = S.imshape
    dtype = np.result_type(S.dtype, image.dtype)
    fast = _fast_product(S, dtype, image.dtype)
    if fast in ("kernel", "sorted"):
        s = S._structure
        img3 = image.reshape(H, W, -1)
        res = _kernels.gather(s._row, s._col, S._values, img3, s.root_corner, dtype)
        return res.reshape((S.nsources, *image.shape[2:]))
    if fast == "csr":
        res = np.asarray(S._csr.T @ image.reshape(H * W, -1)).astype(dtype, copy=False)
        return res.reshape((S.nsources, *image.shape[2:]))
    if image.ndim == 2:
        ext = np.zeros(H * W + 1, dtype=image.dtype)
        ext[: H * W] = image.ravel()
        g = ext[S._structure.pixel]
        s = S._structure  # off-image values (NaN/inf included) must not reach the sum
        v = S._values if s.all_in_image else np.where(s.in_image, S._values, np.zeros((), S.dtype))
        return np.einsum("ijk,ijk->k", v, g, dtype=dtype)
    m = image.shape[2:]
    flat = image.reshape(H * W, -1)
    res = np.asarray(S.tocsc().T @ flat).astype(dtype, copy=False)
    return res.reshape((S.nsources, *m))


def _gram(a, b) -> np.ndarray:
    """``tensordot(a, b, axes=([0, 1], [0, 1]))``: the ``(n, m)`` matrix ``Aᵀ·B`` over pixels.

    Computed with SciPy on the pixels either array touches (nothing image-sized); the dense
    ``(n, m)`` result is refused above ``max_dense_bytes``.
    """
    from scipy import sparse as sp

    if a.imshape != b.imshape:
        raise ValueError(f"tensordot: shape-mismatch for sum: imshape {a.imshape} vs {b.imshape}")
    dtype = np.result_type(a.dtype, b.dtype)
    n, m = a.nsources, b.nsources
    check_dense_allocation(n * m * dtype.itemsize, f"the ({n}, {m}) result of tensordot over pixels")
    ia, pa = a._structure.csc_indices
    ib, pb = b._structure.csc_indices
    npix = a._structure.npixels
    used = None if npix <= 4 * (ia.size + ib.size) else np.unique(np.concatenate([ia, ib]))
    work = np.int64 if dtype.kind == "b" else (np.float32 if dtype == np.float16 else dtype)

    def compressed(S, indices, indptr):
        data = S._structure.source_major(S._values).astype(work)
        if used is None:  # a small image: pixel indices as they are
            return sp.csc_matrix((data, indices, indptr), shape=(npix, S.nsources))
        return sp.csc_matrix((data, np.searchsorted(used, indices), indptr), shape=(used.size, S.nsources))

    product = compressed(a, ia, pa).T @ compressed(b, ib, pb)
    result = np.asarray(product.toarray())
    return (result != 0) if dtype.kind == "b" else result.astype(dtype, copy=False)


@implements(np.tensordot)
def tensordot(a, b, axes=2):
    """``np.tensordot`` with a Sparse3D operand.

    Fast paths: ``axes=([0, 1], [0, 1])`` against an image ``(H, W[, m])`` (the per-source
    projection ``Aᵀ·y`` → ``(nsources[, m])``) and ``axes=([2], [0])`` / ``axes=1`` against
    weights (the model, as :func:`dot`); two Sparse3D over ``([0, 1], [0, 1])`` give the
    ``(n, m)`` matrix ``Aᵀ·B`` (see :func:`_gram`). Other contractions go through
    ``sparse.COO``. Off-stamp entries are structural zeros: NaN or inf in the other operand
    does not spread to them (dense NumPy gives NaN there, ``0 * nan``).
    """
    Sparse3D = _S()
    if isinstance(axes, (int, np.integer)):
        na = 3 if isinstance(a, Sparse3D) else np.ndim(a)
        axes_a, axes_b = list(range(na - axes, na)), list(range(axes))
    else:
        try:
            axes_a, axes_b = axes
        except (TypeError, ValueError):
            raise ValueError(f"tensordot: axes must be an int or a pair of sequences; got {axes!r}") from None
        axes_a = [axes_a] if isinstance(axes_a, (int, np.integer)) else list(axes_a)
        axes_b = [axes_b] if isinstance(axes_b, (int, np.integer)) else list(axes_b)
    if len(axes_a) != len(axes_b):
        raise ValueError(f"tensordot: axes lists must have equal lengths; got {axes_a} and {axes_b}")
    if isinstance(a, Sparse3D) and isinstance(b, Sparse3D):
        axes_a = [axis_index(x, 3) for x in axes_a]
        axes_b = [axis_index(x, 3) for x in axes_b]
        if sorted(zip(axes_a, axes_b)) == [(0, 0), (1, 1)]:
            return _gram(a, b)
        return np.tensordot(a.coo, b.coo, axes=(axes_a, axes_b))
    if not isinstance(a, Sparse3D):
        # tensordot(x, S): compute with S first, then put x's free axes in front
        res = tensordot(b, a, axes=(axes_b, axes_a))
        n_free_s = 3 - len(axes_b)
        if isinstance(res, np.ndarray) and res.ndim > n_free_s:
            res = np.moveaxis(res, list(range(n_free_s)), list(range(res.ndim - n_free_s, res.ndim)))
        elif hasattr(res, "transpose") and getattr(res, "ndim", 0) > n_free_s:
            order = list(range(n_free_s, res.ndim)) + list(range(n_free_s))
            res = res.transpose(order)
        return res
    backend = lazy_backend(b)
    if backend is not None:  # lazy model or projection on a Dask operand
        return backend.tensordot(a, b, axes=(axes_a, axes_b))
    b_mag, unit = _split_unit(b)
    b_arr = _as_weights(b_mag, "np.tensordot")
    axes_a = [axis_index(x, 3) for x in axes_a]
    axes_b = [axis_index(x, b_arr.ndim) for x in axes_b]
    pairs = sorted(zip(axes_a, axes_b))
    sa = [p[0] for p in pairs]
    sb = [p[1] for p in pairs]
    result = None
    if sa == [2]:
        w = np.moveaxis(b_arr, sb[0], 0)
        rest = w.shape[1:]
        flat = w.reshape(w.shape[0], -1) if w.ndim > 2 else w
        result = dot(a, flat)
        if w.ndim > 2:
            result = result.reshape((*a.imshape, *rest))
    elif sa == [0, 1]:
        y = np.moveaxis(b_arr, sb, [0, 1])
        if y.shape[:2] != a.imshape:
            raise ValueError(f"tensordot: image axes have shape {y.shape[:2]}, expected imshape {a.imshape}")
        result = _project(a, y)
    if result is None:
        result = np.tensordot(a.coo, b_arr, axes=(axes_a, axes_b))
    return result if unit is None else result * unit


def _parse_einsum(subscripts: str, ndims: list[int]) -> tuple[list[str], str] | None:
    """Explicit input/output index strings, with ``...`` resolved when it spans no axis."""
    subscripts = subscripts.replace(" ", "")
    if "->" in subscripts:
        ins, out = subscripts.split("->")
    else:
        ins, out = subscripts, None
    inputs = ins.split(",")
    if len(inputs) != len(ndims):
        return None
    resolved = []
    for term, nd in zip(inputs, ndims):
        if "..." in term:
            if len(term) - 3 != nd:
                return None  # the ellipsis spans real axes: not handled here
            term = term.replace("...", "")
        resolved.append(term)
    if out is None:
        counts = {c: "".join(resolved).count(c) for c in "".join(resolved)}
        out = "".join(sorted(c for c, k in counts.items() if k == 1))
    out = out.replace("...", "")
    return resolved, out


@implements(np.einsum)
def _einsum(subscripts, *operands, out=None, **kwargs):
    """``np.einsum`` for two operands, one of them a Sparse3D, as a :func:`tensordot`.

    Covers ``xr.dot`` and plain contractions such as ``"ijk,k->ij"`` (the model) and
    ``"ijk,ij->k"`` (the projection). Other patterns (traces, batch indices) go through
    ``sparse.einsum`` on the ``sparse.COO``.
    """
    Sparse3D = _S()
    _refuse_out(out, "np.einsum")
    if not isinstance(subscripts, str):
        raise TypeError("np.einsum on Sparse3D needs the subscripts-string form")
    ndims = [3 if isinstance(x, Sparse3D) else np.ndim(x) for x in operands]
    parsed = _parse_einsum(subscripts, ndims)
    if parsed is not None and len(operands) == 2 and not kwargs:
        (ta, tb), tout = parsed
        a, b = operands
        simple = len(set(ta)) == len(ta) and len(set(tb)) == len(tb) and len(set(tout)) == len(tout)
        shared = [c for c in ta if c in tb]
        if simple and not any(c in tout for c in shared) and set(tout) == (set(ta) | set(tb)) - set(shared):
            res = tensordot(a, b, axes=([ta.index(c) for c in shared], [tb.index(c) for c in shared]))
            free = [c for c in ta if c not in shared] + [c for c in tb if c not in shared]
            order = [free.index(c) for c in tout]
            if order != sorted(order):
                res = res.transpose(order) if hasattr(res, "transpose") else np.transpose(res, order)
            return res
    import sparse

    converted = [x.coo if isinstance(x, Sparse3D) else x for x in operands]
    return sparse.einsum(subscripts, *converted, **kwargs)


# -------------------------------------------------------------------------------------------
# Reductions
# -------------------------------------------------------------------------------------------
def _normalize_axes(axis) -> tuple[int, ...]:
    if axis is None:
        return (0, 1, 2)
    items = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = [axis_index(ax, 3) for ax in items]
    if len(set(out)) != len(out):
        raise ValueError(f"duplicate value in 'axis': {axis!r}")
    return tuple(sorted(out))


def _finish(result, S, axes: tuple[int, ...], keepdims: bool):
    """NumPy scalar for a full reduction, ``ndarray`` otherwise; then ``keepdims``."""
    result = np.asarray(result)
    if axes == (0, 1, 2):
        result = result[()]
    if keepdims:
        shape = tuple(1 if i in axes else s for i, s in enumerate(S.shape))
        result = np.reshape(result, shape)
    return result


def _reduce_canonical(S, ufunc: np.ufunc, axes: tuple[int, ...], dtype):
    """Any reduction, from the canonical (sorted, in-image) elements into a dense result.

    Cells of the result start at the ufunc's identity (or the neutral element of an
    extremum); every stored element is folded in with ``ufunc.at``; cells that also cover
    implicit zeros (fewer stored elements than the reduced size) are combined with 0.
    """
    s = S._structure
    coords = s.coo_order[1]
    data = s.canonical(S._values)
    kw = {} if dtype is None else {"dtype": dtype}
    out_dtype = ufunc.reduce(np.zeros(1, dtype=S.dtype), **kw).dtype
    keep = [i for i in range(3) if i not in axes]
    out_shape = tuple(S.shape[i] for i in keep)
    size = int(np.prod(out_shape)) if keep else 1
    check_dense_allocation(size * out_dtype.itemsize * 2, f"the {out_shape} result of a reduction")
    flat = (
        np.ravel_multi_index(tuple(coords[i] for i in keep), out_shape)
        if keep
        else np.zeros(data.size, dtype=np.intp)
    )
    data = data.astype(out_dtype, copy=False)
    if ufunc.identity is not None:
        init = ufunc.reduce(np.zeros(0, dtype=out_dtype))  # the identity in out_dtype (-1 → 255)
    elif ufunc in _EXTREMA and out_dtype.kind in "biuf":
        init = _neutral(_EXTREMA[ufunc], out_dtype)
    else:
        raise TypeError(f"np.{ufunc.__name__}.reduce over axis {axes} is not supported on Sparse3D")
    out = np.full(size, init, dtype=out_dtype)
    if ufunc is np.add and out_dtype.kind == "f":
        out += np.bincount(flat, weights=data, minlength=size).astype(out_dtype, copy=False)
    else:
        ufunc.at(out, flat, data)
    reduced = int(np.prod([S.shape[i] for i in axes]))
    counts = np.bincount(flat, minlength=size)
    zero = np.zeros((), dtype=out_dtype)
    if ufunc is np.multiply and out_dtype.kind in "fc":
        # an implicit zero makes the product exactly 0, even when the stored product
        # overflowed to inf (inf * 0 would be NaN); only a stored NaN or inf makes it NaN
        nonfinite = np.bincount(flat, weights=~np.isfinite(data), minlength=size) > 0
        implicit = np.where(nonfinite, out_dtype.type(np.nan), zero)
    else:
        implicit = ufunc(out, zero)
    out = np.where(counts < reduced, implicit, out)
    return out.reshape(out_shape)


_EXTREMA = {np.maximum: "max", np.minimum: "min", np.fmax: "max", np.fmin: "min"}


def _neutral(kind: str, dtype: np.dtype):
    if dtype.kind == "f":
        return -np.inf if kind == "max" else np.inf
    if dtype.kind == "b":
        return kind != "max"
    info = np.iinfo(dtype)
    return info.min if kind == "max" else info.max


def _reduce(S, ufunc: np.ufunc, axis, dtype=None, keepdims=False, initial=_NoValue, where=True):
    """The logical-array reduction ``ufunc.reduce(dense(S), axis)`` without densifying."""
    if where is not True and where is not _NoValue:
        raise TypeError(f"np.{ufunc.__name__}.reduce(..., where=...) is not supported on Sparse3D")
    axes = _normalize_axes(axis)
    if axes == ():  # every element is its own reduction: NumPy's dtype rules still apply
        kw = {} if dtype is None else {"dtype": dtype}
        out_dtype = ufunc.reduce(np.zeros((1, 1), dtype=S.dtype), axis=(), **kw).dtype
        result = S.astype(out_dtype)
        if initial is _NoValue:
            return result
        if ufunc(np.zeros((), dtype=out_dtype), initial) != 0:
            raise ValueError(
                f"np.{ufunc.__name__}.reduce(S, axis=(), initial={initial!r}) would be non-zero on every "
                "off-stamp element (a dense result); apply it to a cutout's todense()"
            )
        return ufunc(result, initial)
    if ufunc.identity is None and initial is _NoValue and 0 in [S.shape[i] for i in axes]:
        raise ValueError(f"zero-size array to reduction operation {ufunc.__name__} which has no identity")
    s = S._structure
    if s.grouped:
        result = _reduce_grouped(S, ufunc, axes, dtype)
        if initial is not _NoValue:
            result = ufunc(result, initial)
        return _finish(result, S, axes, keepdims)
    v = S._values
    m = None if s.all_in_image else s.in_image
    result = None
    if ufunc is np.add:
        if axes == (0, 1, 2):
            result = np.sum(v, dtype=dtype, where=True if m is None else m)
        elif axes == (0, 1):
            result = np.sum(v, axis=(0, 1), dtype=dtype, where=True if m is None else m)
        elif axes == (2,):
            out_dtype = np.sum(np.zeros(1, dtype=v.dtype), dtype=dtype).dtype
            result = _scatter_image(s, v, out_dtype)
    elif ufunc in _EXTREMA and dtype is None and v.dtype.kind in "biuf":
        kind = _EXTREMA[ufunc]
        neutral = _neutral(kind, v.dtype)
        zero = np.zeros((), dtype=v.dtype)
        if axes == (0, 1, 2):
            if S.nnz == 0:
                result = zero[()]
            else:
                result = ufunc.reduce(v if m is None else v[m], axis=None)
                if S.nnz < S.size:
                    result = ufunc(result, zero)
        elif axes == (0, 1):
            H, W = S.imshape
            result = ufunc.reduce(v, axis=(0, 1), where=True if m is None else m, initial=neutral)
            result = np.where(s.source_counts < H * W, ufunc(result, zero), result)
        elif axes == (2,):
            H, W = S.imshape
            check_dense_allocation(H * W * v.dtype.itemsize * 2, f"an image of shape {(H, W)}")
            img = np.full(H * W + 1, neutral, dtype=v.dtype)
            ufunc.at(img, s.pixel.ravel(), v.ravel())
            counts = np.bincount(s.pixel.ravel(), minlength=H * W + 1)
            img = np.where(counts < S.nsources, ufunc(img, zero), img)
            result = img[: H * W].reshape(H, W)
    if result is None:
        result = _reduce_canonical(S, ufunc, axes, dtype)
    if initial is not _NoValue:
        result = ufunc(result, initial)
    return _finish(result, S, axes, keepdims)


def _reduce_grouped(S, ufunc: np.ufunc, axes: tuple[int, ...], dtype):
    """A reduction of a grouped array: every group reduced, then combined.

    Over the source axis the groups' results are combined with ``ufunc`` itself (each group
    covers the whole image); otherwise they are the groups' slices of the source axis.
    """
    parts = [np.asarray(_reduce(g, ufunc, axes, dtype=dtype, keepdims=True)) for g in S.groups]
    if 2 in axes:
        result = parts[0]
        for p in parts[1:]:
            result = ufunc(result, p)
    else:
        result = S._structure.assemble(parts, axis=2)
    return result.reshape(tuple(S.shape[i] for i in range(3) if i not in axes))


def ufunc_reduce(ufunc, array, axis=0, dtype=None, out=None, keepdims=False, initial=_NoValue, where=True):
    """``ufunc.reduce(S, ...)`` (note NumPy's default ``axis=0`` here)."""
    _refuse_out(out, f"np.{ufunc.__name__}.reduce")
    if ufunc.nin != 2 or ufunc.nout != 1:
        raise TypeError(f"np.{ufunc.__name__}.reduce needs a binary ufunc")
    return _reduce(array, ufunc, axis, dtype=dtype, keepdims=keepdims, initial=initial, where=where)


@implements(np.sum)
def _sum(a, axis=None, dtype=None, out=None, keepdims=False, initial=_NoValue, where=True):
    """``np.sum``; see the module docstring for the return type by ``axis``."""
    _refuse_out(out, "np.sum")
    return _reduce(a, np.add, axis, dtype=dtype, keepdims=keepdims, initial=initial, where=where)


@implements(np.prod)
def _prod(a, axis=None, dtype=None, out=None, keepdims=False, initial=_NoValue, where=True):
    """``np.prod`` of the logical array: exactly 0 wherever an implicit zero is reduced.

    That holds even when the stored values' product overflows (NumPy's own result then
    depends on the order of the elements); a stored NaN or inf in the slice gives NaN.
    """
    _refuse_out(out, "np.prod")
    return _reduce(a, np.multiply, axis, dtype=dtype, keepdims=keepdims, initial=initial, where=where)


@implements(np.max, np.amax)
def _max(a, axis=None, out=None, keepdims=False, initial=_NoValue, where=True):
    """``np.max``/``np.amax`` of the logical array (implicit zeros included)."""
    _refuse_out(out, "np.max")
    return _reduce(a, np.maximum, axis, keepdims=keepdims, initial=initial, where=where)


@implements(np.min, np.amin)
def _min(a, axis=None, out=None, keepdims=False, initial=_NoValue, where=True):
    """``np.min``/``np.amin`` of the logical array (implicit zeros included)."""
    _refuse_out(out, "np.min")
    return _reduce(a, np.minimum, axis, keepdims=keepdims, initial=initial, where=where)


@implements(np.any)
def _any(a, axis=None, out=None, keepdims=False, *, where=True):
    """``np.any``: whether any logical element is non-zero."""
    _refuse_out(out, "np.any")
    return _reduce(a.astype(bool), np.logical_or, axis, keepdims=keepdims, where=where)


@implements(np.all)
def _all(a, axis=None, out=None, keepdims=False, *, where=True):
    """``np.all``: whether every logical element is non-zero (off-stamp zeros make it False)."""
    _refuse_out(out, "np.all")
    return _reduce(a.astype(bool), np.logical_and, axis, keepdims=keepdims, where=where)


@implements(np.mean)
def _mean(a, axis=None, dtype=None, out=None, keepdims=False, *, where=True):
    """``np.mean``: the sum divided by the number of logical elements reduced."""
    _refuse_out(out, "np.mean")
    axes = _normalize_axes(axis)
    count = int(np.prod([a.shape[i] for i in axes]))
    if dtype is not None:
        sum_dtype = dtype
    elif a.dtype.kind in "biu":
        sum_dtype = np.float64
    else:  # NumPy sums float16 in float32 (float16 overflows at 65504)
        sum_dtype = np.float32 if a.dtype == np.float16 else a.dtype
    total = _reduce(a, np.add, axes, dtype=sum_dtype, keepdims=keepdims, where=where)
    result = total / count
    if dtype is not None or a.dtype.kind in "fc":
        target = np.dtype(dtype) if dtype is not None else a.dtype
        result = result.astype(target) if hasattr(result, "astype") else target.type(result)
    return result


def _without_nan(a):
    return np.where(np.isnan(a), 0, a) if a.dtype.kind in "fc" else a


@implements(np.nansum)
def _nansum(a, axis=None, dtype=None, out=None, keepdims=False, initial=_NoValue, where=True):
    """``np.nansum``: NaN stamp values count as zero."""
    return _sum(
        _without_nan(a), axis=axis, dtype=dtype, out=out, keepdims=keepdims, initial=initial, where=where
    )


@implements(np.nanmax)
def _nanmax(a, axis=None, out=None, keepdims=False, initial=_NoValue, where=True):
    """``np.nanmax``: NaN stamp values are ignored (off-stamp zeros still count)."""
    _refuse_out(out, "np.nanmax")
    return _all_nan_to_nan(
        a, _reduce(a, np.fmax, axis, keepdims=keepdims, initial=initial, where=where), axis, keepdims, initial
    )


def _all_nan_to_nan(a, result, axis, keepdims, initial):
    """NumPy's ``nanmax``/``nanmin`` give NaN for an all-NaN slice (``fmax`` alone gives -inf)."""
    if a.dtype.kind != "f" or initial is not _NoValue:
        return result
    axes = _normalize_axes(axis)
    count = int(np.prod([a.shape[i] for i in axes]))
    nans = _reduce(np.isnan(a), np.add, axes, dtype=np.intp, keepdims=keepdims)
    out = np.where(nans == count, a.dtype.type(np.nan), result)
    return out[()] if out.ndim == 0 else out


@implements(np.nanmin)
def _nanmin(a, axis=None, out=None, keepdims=False, initial=_NoValue, where=True):
    """``np.nanmin``: NaN stamp values are ignored (off-stamp zeros still count)."""
    _refuse_out(out, "np.nanmin")
    return _all_nan_to_nan(
        a, _reduce(a, np.fmin, axis, keepdims=keepdims, initial=initial, where=where), axis, keepdims, initial
    )


@implements(np.nanmean)
def _nanmean(a, axis=None, dtype=None, out=None, keepdims=False, *, where=True):
    """``np.nanmean``: the mean over the non-NaN logical elements."""
    _refuse_out(out, "np.nanmean")
    axes = _normalize_axes(axis)
    count = int(np.prod([a.shape[i] for i in axes]))
    if a.dtype.kind not in "fc":
        return _mean(a, axis=axes, dtype=dtype, keepdims=keepdims, where=where)
    nans = _reduce(np.isnan(a), np.add, axes, dtype=np.intp, keepdims=keepdims)
    total = _reduce(_without_nan(a), np.add, axes, dtype=dtype, keepdims=keepdims)
    result = total / (count - nans)
    target = np.dtype(dtype) if dtype is not None else a.dtype
    return result.astype(target) if hasattr(result, "astype") else target.type(result)


@implements(np.count_nonzero)
def _count_nonzero(a, axis=None, *, keepdims=False):
    """Logical non-zeros; the same return types as ``np.sum``."""
    return _reduce(a.astype(bool), np.add, axis, dtype=np.intp, keepdims=keepdims)


# -------------------------------------------------------------------------------------------
# Joining
# -------------------------------------------------------------------------------------------
@implements(np.concatenate)
def _concatenate(arrays, axis=0, out=None, dtype=None, casting="same_kind"):
    """Concatenate Sparse3D arrays along the source axis (``axis=2`` or ``-1``) → Sparse3D.

    The arrays must share ``imshape`` and ``imcorner``. Arrays with different stamp shapes
    give one array with several stamp groups (see :attr:`Sparse3D.groups`): adjacent pieces
    with the same stamp shape form one group; the source order is the concatenation order.
    """
    Sparse3D = _S()
    _refuse_out(out, "np.concatenate")
    arrays = list(arrays)
    if not arrays or not all(isinstance(x, Sparse3D) for x in arrays):
        raise TypeError("np.concatenate on Sparse3D needs a non-empty sequence of Sparse3D arrays")
    if axis is None or axis_index(axis, 3) != 2:
        raise ValueError(
            f"Sparse3D arrays can only be concatenated along the source axis (axis=2 or -1); got axis={axis}"
        )
    first = arrays[0]
    for x in arrays[1:]:
        if x.imshape != first.imshape or x.imcorner != first.imcorner:
            raise ValueError("np.concatenate: all arrays must share imshape and imcorner")
    return join_sources(arrays, dtype=dtype, casting=casting)


def join_sources(arrays, dtype=None, casting="same_kind"):
    """The sources of ``arrays`` (Sparse3D, equal image bounds) in order, as one Sparse3D.

    Sources with equal stamp shapes form one stamp group, wherever they are in the order
    (see :func:`build_grouped`); a single stamp shape gives a single-block array.
    """
    out_dtype = np.dtype(dtype) if dtype is not None else np.result_type(*[x.dtype for x in arrays])
    for x in arrays:
        if not np.can_cast(x.dtype, out_dtype, casting=casting):
            raise TypeError(
                f"np.concatenate: cannot cast array data from {x.dtype} to {out_dtype} "
                f"according to the rule {casting!r}"
            )
    pieces, offset = [], 0
    for x in arrays:
        pieces += [(g, idx + offset) for g, idx in zip(x.groups, x.group_sources)]
        offset += x.nsources
    return build_grouped(pieces, out_dtype)


def build_grouped(pieces, dtype=None, values=None):
    """One Sparse3D from single-shape ``pieces`` ``[(array, global source indices), ...]``.

    The global indices of all pieces partition ``range(nsources)``; pieces with equal stamp
    shapes are merged into one group (in the order given, which must be ascending in the
    global index within a shape). One stamp shape gives a single-block array. ``values``: the
    groups' values already laid out one after the other in this 1-D array (pieces of
    distinct shapes, in order), so that no copy is needed.
    """
    from ._structure import GroupedStructure, StampStructure

    Sparse3D = _S()
    dtype = np.result_type(*[p.dtype for p, _ in pieces]) if dtype is None else np.dtype(dtype)
    pieces = [(p, i) for p, i in pieces if p.nsources] or pieces[:1]
    by_shape: dict = {}
    for p, idx in pieces:
        by_shape.setdefault(p.stamp_shape[:2], []).append((p, idx))
    blocks, sources = [], []
    for items in by_shape.values():
        run = [p for p, _ in items]
        sources.append(np.concatenate([np.asarray(i, dtype=np.int64) for _, i in items]))
        if len(run) == 1:
            blocks.append(run[0] if run[0].dtype == dtype else run[0].astype(dtype))
            continue
        merged = np.concatenate([x._values for x in run], axis=2, dtype=dtype, casting="unsafe")
        row = np.concatenate([x.row for x in run], axis=2)
        col = np.concatenate([x.col for x in run], axis=2)
        row.flags.writeable = col.flags.writeable = False
        blocks.append(Sparse3D._from_parts(merged, StampStructure(row, col, run[0].imshape, run[0].imcorner)))
    if len(blocks) == 1:
        return blocks[0]
    if values is None:
        values = _pool.empty((sum(b._values.size for b in blocks),), dtype)
        np.concatenate([b._values.ravel() for b in blocks], out=values)
    return Sparse3D._from_parts(values, GroupedStructure([b._structure for b in blocks], sources))


def regroup(parts, structure):
    """Single-shape ``parts``, one per group of the grouped ``structure``, as one Sparse3D."""
    return build_grouped(list(zip(parts, structure.sources)))


def select_sources(S, sel):
    """The sources ``sel`` (a slice or 1-D integer/boolean array) of ``S``, in that order → Sparse3D."""
    Sparse3D = _S()
    s = S._structure
    if not s.grouped:
        return Sparse3D._from_parts(np.ascontiguousarray(S._values[:, :, sel]), s.take_sources(sel))
    idx = np.arange(S.nsources)[sel].ravel()
    if idx.size == 0:
        return select_sources(S.groups[0], idx)
    group, local = s.group_of
    gsel = group[idx]
    pieces = []
    for j, g in enumerate(S.groups):
        pos = np.flatnonzero(gsel == j)
        if pos.size:
            pieces.append((select_sources(g, local[idx[pos]]), pos))
    return build_grouped(pieces)


@implements(np.stack)
def _stack(arrays, axis=0, out=None, *, dtype=None, casting="same_kind"):
    """Stack Sparse3D arrays along a new axis → a 4-D ``sparse.COO`` (no stamp structure)."""
    import sparse

    Sparse3D = _S()
    _refuse_out(out, "np.stack")
    arrays = list(arrays)
    shapes = {tuple(np.shape(x)) for x in arrays}
    if len(shapes) > 1:
        raise ValueError(f"np.stack: all input arrays must have the same shape; got shapes {sorted(shapes)}")
    arrays = [x.coo if isinstance(x, Sparse3D) else x for x in arrays]
    result = sparse.stack(arrays, axis=axis)
    return result if dtype is None else result.astype(dtype, casting=casting)


# -------------------------------------------------------------------------------------------
# Elementwise functions (stamp semantics, like the ufuncs)
# -------------------------------------------------------------------------------------------
@implements(np.where)
def _where(condition, x=_NoValue, y=_NoValue):
    """``np.where(cond, x, y)`` on stamp values → Sparse3D; ``np.where(cond)`` → coordinates.

    A NaN fill that the off-stamp elements would take (``np.where(cond, S, np.nan)``, which
    is xarray's ``da.where(cond)``) is refused: the logical result would be NaN on every
    off-stamp element, a dense array, and stamp semantics would silently keep 0 there.
    """
    if x is _NoValue and y is _NoValue:
        return _nonzero(condition)
    if x is _NoValue or y is _NoValue:
        raise ValueError("either both or neither of x and y should be given")
    Sparse3D = _S()
    # the branch that off-stamp elements take: a Sparse3D condition is False there, a
    # sparse.COO one its fill value; any other condition may pick either
    off_stamp = (y,) if isinstance(condition, Sparse3D) else (x, y)
    if type(condition).__module__.startswith("sparse") and hasattr(condition, "coords"):
        # a mask as sparse.COO (e.g. ~isnan(S), xarray's notnull): its values at the stamps
        anchor = next((v for v in (x, y) if isinstance(v, Sparse3D)), None)
        if anchor is not None:
            off_stamp = (x,) if condition.fill_value else (y,)
            condition = anchor._from_parts(_coo_at_stamps(condition, anchor._structure), anchor._structure)
    for value in off_stamp:
        if _holds_nan(value):
            raise ValueError(
                "np.where(cond, x, y) with NaN in the branch that off-stamp elements take would be NaN "
                "on every off-stamp element: a dense result that a Sparse3D cannot hold. Fill with a "
                "number instead (np.where(cond, S, 0); with xarray da.where(cond, 0)), or densify a "
                "cutout first (S[r0:r1, c0:c1].todense())"
            )
    if isinstance(condition, Sparse3D):
        # cheap when the mask is constant (xarray's NaN handling: np.where(isnan(S), 0, S))
        pick = None
        if not condition._values.any():
            pick = y
        elif condition._values.all():
            pick = x
        if isinstance(pick, Sparse3D) and pick._structure.equals(condition._structure):
            dtype = np.result_type(x, y)
            return pick if pick.dtype == dtype else pick.astype(dtype)
    return apply_elementwise(np.where, (condition, x, y), name="np.where")


def _coo_at_stamps(coo, structure) -> np.ndarray:
    """The values of a ``sparse.COO`` of the logical shape at every stamp element.

    Off-image stamp elements get 0 (they are not array contents), like any image operand.
    """
    if tuple(coo.shape) != structure.shape:
        raise ValueError(
            f"a sparse.COO operand must have the logical shape {structure.shape}; got {coo.shape}"
        )
    H, W, n = structure.shape
    check_dense_allocation(0 if H * W * (n + 1) < 2**62 else 2**63, "linear indices of a sparse operand")
    lin = np.ravel_multi_index(tuple(coo.coords), coo.shape)
    order = np.argsort(lin, kind="stable")
    lin, data = lin[order], np.asarray(coo.data)[order]
    want = structure.pixel.astype(np.int64) * n + element_sources(structure)  # off-image: beyond all
    pos = np.searchsorted(lin, want)
    found = pos < lin.size
    found[found] = lin[pos[found]] == want[found]
    out = np.full(structure.block_shape, coo.fill_value, dtype=coo.dtype)
    out[found] = data[pos[found]]
    if not structure.all_in_image:
        out[~structure.in_image] = 0
    return out


def element_sources(structure) -> np.ndarray:
    """The source of every stored element, broadcastable against the values block."""
    if not structure.grouped:
        return np.arange(structure.nsources)
    return np.concatenate(
        [np.broadcast_to(idx, g.block_shape).ravel() for idx, g in zip(structure.sources, structure.groups)]
    )


def _holds_nan(x) -> bool:
    """Whether a non-Sparse3D operand holds a NaN."""
    if isinstance(x, _S()) or isinstance(x, (bool, int)):
        return False
    try:
        arr = np.asarray(x)
    except Exception:  # noqa: BLE001 - not array-like: not our concern here
        return False
    return arr.dtype.kind in "fc" and bool(np.isnan(arr).any())


def logical_complement(a):
    """``np.logical_not(S)`` (and ``~S`` for boolean ``S``): the logical complement.

    Negating a mask must negate its implicit zeros too (xarray's ``notnull()`` is
    ``~isnull()``, and ``count()`` sums ``logical_not(isnull())``), so this is the one
    elementwise operation without stamp semantics: it returns a boolean ``sparse.COO``
    whose fill value is True, True wherever the logical array is zero.
    """
    s = a._structure
    data = ~s.canonical(a._values).astype(bool)
    from ._mask import LogicalMask

    coords = s.coo_order[1]
    return LogicalMask(coords, data, shape=a.shape, sorted=True, has_duplicates=False, fill_value=True)


@implements(np.nonzero)
def _nonzero(a):
    """Coordinates ``(rows, cols, sources)`` of logical non-zeros, sorted (via ``sparse.COO``)."""
    coo = a.coo
    keep = coo.data != 0
    return tuple(c[keep] for c in coo.coords)


@implements(np.clip)
def _clip(a, a_min=_NoValue, a_max=_NoValue, out=None, *, min=_NoValue, max=_NoValue, **kwargs):
    """``np.clip`` on the stamp values → Sparse3D (off-stamp stays zero, stamp semantics)."""
    _refuse_out(out, "np.clip")
    lo = a_min if a_min is not _NoValue else (min if min is not _NoValue else None)
    hi = a_max if a_max is not _NoValue else (max if max is not _NoValue else None)
    return apply_elementwise(lambda v, lo, hi: np.clip(v, lo, hi, **kwargs), (a, lo, hi), name="np.clip")


@implements(np.round, np.around)
def _round(a, decimals=0, out=None):
    """``np.round``/``np.around`` on the stamp values → Sparse3D."""
    _refuse_out(out, "np.round")
    return apply_elementwise(np.round, (a,), {"decimals": decimals}, name="np.round")


@implements(np.isclose)
def _isclose(a, b, rtol=1e-05, atol=1e-08, equal_nan=False):
    """Elementwise on stamp values → boolean Sparse3D (off-stamp is False, stamp semantics)."""
    kw = {"rtol": rtol, "atol": atol, "equal_nan": equal_nan}
    return apply_elementwise(np.isclose, (a, b), kw, name="np.isclose")


@implements(np.nan_to_num)
def _nan_to_num(x, copy=True, nan=0.0, posinf=None, neginf=None):
    """``np.nan_to_num`` on the stamp values → Sparse3D."""
    kw = {"nan": nan, "posinf": posinf, "neginf": neginf}
    return apply_elementwise(np.nan_to_num, (x,), kw, name="np.nan_to_num")


@implements(np.real)
def _real(val):
    """Real part of the stamp values → Sparse3D."""
    return apply_elementwise(np.real, (val,), name="np.real")


@implements(np.imag)
def _imag(val):
    """Imaginary part of the stamp values → Sparse3D."""
    return apply_elementwise(np.imag, (val,), name="np.imag")


@implements(np.copy)
def _copy(a, order="K", subok=False):
    """A Sparse3D copy (arrays are immutable, so rarely needed)."""
    return a.copy()


def _like(a, fill, dtype, shape, name):
    if shape is not None and tuple(np.atleast_1d(shape)) != a.shape:
        raise ValueError(f"{name} on a Sparse3D cannot change the shape")
    dtype = a.dtype if dtype is None else np.dtype(dtype)
    shape = a._values.shape  # the values block (1-D for grouped arrays)
    values = np.zeros(shape, dtype=dtype) if fill == 0 else np.full(shape, fill, dtype=dtype)
    return a._from_parts(values, a._structure)


@implements(np.zeros_like, np.empty_like)
def _zeros_like(a, dtype=None, order="K", subok=True, shape=None, *, device=None):
    """A Sparse3D of zeros with the same stamps."""
    return _like(a, 0, dtype, shape, "np.zeros_like")


@implements(np.ones_like)
def _ones_like(a, dtype=None, order="K", subok=True, shape=None, *, device=None):
    """Ones on the stamps, zero elsewhere (stamp semantics)."""
    return _like(a, 1, dtype, shape, "np.ones_like")


@implements(np.full_like)
def _full_like(a, fill_value, dtype=None, order="K", subok=True, shape=None, *, device=None):
    """``fill_value`` on the stamps, zero elsewhere (stamp semantics)."""
    return _like(a, fill_value, dtype, shape, "np.full_like")


# -------------------------------------------------------------------------------------------
# Whole-array comparisons (logical arrays, off-stamp zeros included)
# -------------------------------------------------------------------------------------------
def _logical_operands(a, b):
    """Both operands as ``sparse.COO`` (Sparse3D) or ndarray, for a logical comparison."""
    Sparse3D = _S()

    def conv(x):
        if isinstance(x, Sparse3D):
            return x.coo
        return x if hasattr(x, "coords") else np.asarray(x)

    return conv(a), conv(b)


def _stored_pair(a, b):
    """In-image stored values of two Sparse3D sharing a structure, else None."""
    Sparse3D = _S()
    if isinstance(a, Sparse3D) and isinstance(b, Sparse3D) and a._structure.equals(b._structure):
        s = a._structure
        if s.all_in_image:
            return a._values, b._values
        return a._values[s.in_image], b._values[s.in_image]
    return None


@implements(np.allclose)
def _allclose(a, b, rtol=1e-05, atol=1e-08, equal_nan=False):
    """Whether the logical arrays are close everywhere (zeros off the stamps included).

    NumPy's ``isclose`` rule on every logical element (``b`` is made inexact, so
    ``abs(int64.min)`` cannot overflow; a finite value is never close to an infinity).
    Against a scalar only the stored values and, once, an implicit zero are compared, so
    nothing image-sized is allocated; against an ndarray the array is densified (refused
    above ``max_dense_bytes``).
    """
    Sparse3D = _S()
    kw = {"rtol": rtol, "atol": atol, "equal_nan": equal_nan}
    pair = _stored_pair(a, b)
    if pair is not None:
        return bool(np.allclose(*pair, **kw))
    for S, x, first in ((a, b, True), (b, a, False)):
        if isinstance(S, Sparse3D) and not isinstance(x, Sparse3D) and np.ndim(x) == 0:
            s = S._structure
            v = S._values if s.all_in_image else S._values[s.in_image]
            if not np.all(np.isclose(*((v, x) if first else (x, v)), **kw)):
                return False
            z = np.zeros((), dtype=S.dtype)
            return S.nnz == S.size or bool(np.isclose(*((z, x) if first else (x, z)), **kw))
    ca, cb = _logical_operands(a, b)
    if isinstance(ca, np.ndarray) or isinstance(cb, np.ndarray):
        da = a.todense() if isinstance(a, Sparse3D) else (ca.todense() if hasattr(ca, "todense") else ca)
        db = b.todense() if isinstance(b, Sparse3D) else (cb.todense() if hasattr(cb, "todense") else cb)
        return bool(np.allclose(da, db, **kw))
    import sparse

    return bool(sparse.elemwise(np.isclose, ca, cb, **kw).all())


@implements(np.array_equal)
def _array_equal(a1, a2, equal_nan=False):
    """Whether the logical arrays have equal shape and values (zeros off the stamps included)."""
    if np.shape(a1) != np.shape(a2):
        return False
    pair = _stored_pair(a1, a2)
    if pair is not None:
        return bool(np.array_equal(*pair, equal_nan=equal_nan))
    ca, cb = _logical_operands(a1, a2)
    if isinstance(ca, np.ndarray) or isinstance(cb, np.ndarray):
        da = ca.todense() if hasattr(ca, "todense") else ca
        db = cb.todense() if hasattr(cb, "todense") else cb
        return bool(np.array_equal(da, db, equal_nan=equal_nan))
    ne = ca != cb
    if equal_nan:
        import sparse

        both = sparse.elemwise(np.logical_and, np.isnan(ca), np.isnan(cb))
        ne = sparse.elemwise(np.logical_and, ne, sparse.elemwise(np.logical_not, both))
    return not bool(ne.any())


# -------------------------------------------------------------------------------------------
# Array facts
# -------------------------------------------------------------------------------------------
@implements(np.shape)
def _shape(a):
    """``(H, W, nsources)``."""
    return a.shape


@implements(np.ndim)
def _ndim(a):
    """Always 3."""
    return 3


@implements(np.size)
def _size(a, axis=None):
    """``H * W * nsources``, or the length of ``axis``."""
    return a.size if axis is None else a.shape[axis_index(axis, 3)]


@implements(np.result_type)
def _result_type(*arrays_and_dtypes):
    """NumPy's ``result_type`` with each Sparse3D standing for its dtype."""
    Sparse3D = _S()
    return np.result_type(*[x.dtype if isinstance(x, Sparse3D) else x for x in arrays_and_dtypes])


@implements(np.iscomplexobj)
def _iscomplexobj(x):
    """Whether the dtype is complex."""
    return x.dtype.kind == "c"


@implements(np.isrealobj)
def _isrealobj(x):
    """Whether the dtype is not complex."""
    return x.dtype.kind != "c"


@implements(np.transpose)
def _transpose(a, axes=None):
    """Identity for ``(0, 1, 2)``; any other order gives a transposed ``sparse.COO``."""
    return a.transpose(axes)


# -------------------------------------------------------------------------------------------
# Indexing (called by Sparse3D.__getitem__)
# -------------------------------------------------------------------------------------------
def _unit_slice(k) -> bool:
    return isinstance(k, slice) and (k.step is None or k.step == 1)


def _bounding(k, n: int, axis: int):
    """``(lo, hi, relative_key)``: the span of ``k`` on an axis of length ``n``, and ``k`` within it."""
    if isinstance(k, (int, np.integer)):
        i = operator.index(k)
        if not -n <= i < n:
            raise IndexError(f"index {i} is out of bounds for axis {axis} with size {n}")
        i %= n
        return i, i + 1, 0
    if isinstance(k, slice):
        start, stop, step = k.indices(n)
        idx = range(start, stop, step)
        if len(idx) == 0:
            return 0, 0, slice(0, 0)
        lo, hi = min(idx), max(idx) + 1
        rel_stop = stop - lo
        return lo, hi, slice(start - lo, rel_stop if rel_stop >= 0 else None, step)
    idx = np.arange(n)[np.asarray(k)]  # NumPy validates ints/bools and bounds
    if idx.size == 0:
        return 0, 0, idx
    lo = int(idx.min())
    return lo, int(idx.max()) + 1, idx - lo


def _is_bool_scalar(k) -> bool:
    return isinstance(k, (bool, np.bool_)) or (isinstance(k, np.ndarray) and k.dtype == bool and k.ndim == 0)


def _index_items(key) -> list:
    """The key as a list: sequences become arrays (an empty list is an integer index)."""
    items = []
    for k in key if isinstance(key, tuple) else (key,):
        if k is None:
            raise IndexError(
                "np.newaxis (None) is not supported when indexing a Sparse3D; index, then reshape"
            )
        if isinstance(k, (list, tuple, np.ndarray)):
            a = np.asarray(k)
            if a.size == 0 and not isinstance(k, np.ndarray):
                a = a.astype(np.intp)  # NumPy: an empty list selects nothing
            if a.dtype != bool and not np.issubdtype(a.dtype, np.integer):
                raise IndexError(
                    f"arrays used as indices must be of integer (or boolean) type; got dtype {a.dtype}"
                )
            k = a
        elif not (k is Ellipsis or isinstance(k, (slice, int, np.integer)) or _is_bool_scalar(k)):
            raise IndexError(
                "only integers, slices (`:`), ellipsis (`...`), integer or boolean arrays are valid "
                f"indices; got {k!r}"
            )
        items.append(k)
    return items


def getitem(S, key):
    """NumPy indexing with NumPy's shape rules.

    * Unit-step slices on ``row``/``col`` crop the image (a cutout: ``imshape`` and
      ``imcorner`` change, stamps are kept) and a slice, integer array or boolean mask on
      the source axis selects sources: the result is a Sparse3D.
    * Everything else — an integer on any axis (``S[:, :, i]`` is the dense image of source
      ``i``), strided or reversed slices, integer arrays or boolean masks on ``row``/``col``
      (also masks over several axes), boolean scalars (``S[True]`` adds an axis, as in
      NumPy) — gives a dense ``ndarray``. It is computed by applying the key, translated to
      the smallest cutout that holds the selection, to that cutout's dense array, so NumPy
      itself decides the result's shape and axis order (refused above ``max_dense_bytes``).
    """
    Sparse3D = _S()
    items = _index_items(key)
    if sum(k is Ellipsis for k in items) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")

    def consumed(k) -> int:
        if k is Ellipsis or _is_bool_scalar(k):
            return 0
        return k.ndim if isinstance(k, np.ndarray) and k.dtype == bool else 1

    total = sum(consumed(k) for k in items)
    if total > 3:
        raise IndexError(f"too many indices for a 3-D Sparse3D: {total} were given")
    if any(_is_bool_scalar(k) and not k for k in items):
        # a False scalar selects nothing: NumPy's (empty) result from a zero-strided stand-in,
        # with NumPy's own checks (it skips bounds checks of indices that select nothing)
        return np.broadcast_to(np.zeros((), dtype=S.dtype), S.shape)[tuple(items)].copy()
    lo, hi = [0, 0, 0], list(S.shape)
    sel = slice(None)  # the sources taken before densifying
    rel_items = []
    per_axis = [slice(None)] * 3  # the component on each axis (None: part of a multi-axis mask)
    ax = 0
    for k in items:
        if k is Ellipsis:
            ax += 3 - total
            rel_items.append(k)
            continue
        if _is_bool_scalar(k):
            rel_items.append(k)
            continue
        if isinstance(k, np.ndarray) and k.dtype == bool and k.ndim != 1:
            axes = range(ax, ax + k.ndim)
            if k.shape != tuple(S.shape[i] for i in axes):
                raise IndexError(
                    f"boolean index of shape {k.shape} does not match the indexed axes {tuple(axes)} "
                    f"of shape {tuple(S.shape[i] for i in axes)}"
                )
            nz = np.nonzero(k)
            for i, idx in zip(axes, nz):
                lo[i], hi[i] = (int(idx.min()), int(idx.max()) + 1) if idx.size else (0, 0)
                per_axis[i] = None
            rel_items.append(k[tuple(slice(lo[i], hi[i]) for i in axes)])
            if 2 in axes:
                sel = slice(lo[2], hi[2])
            ax += k.ndim
            continue
        n = S.shape[ax]
        per_axis[ax] = k
        if ax == 2 and isinstance(k, np.ndarray):  # select exactly these sources
            idx = np.arange(n)[k]
            sel = idx.ravel()
            lo[2], hi[2] = 0, sel.size
            rel = np.ones(sel.size, bool) if k.dtype == bool else np.arange(sel.size).reshape(idx.shape)
            rel_items.append(rel)
        elif ax == 2 and isinstance(k, slice):
            sel = k
            lo[2], hi[2] = 0, len(range(*k.indices(n)))
            rel_items.append(slice(None))
        else:
            lo[ax], hi[ax], rel = _bounding(k, n, ax)
            if ax == 2:
                sel = slice(lo[2], hi[2])
            rel_items.append(rel)
        ax += 1
    s = S._structure
    H, W = S.imshape
    rlo, rhi, clo, chi = lo[0], hi[0], lo[1], hi[1]
    if rhi > rlo and chi > clo and (rlo, rhi, clo, chi) != (0, H, 0, W):
        s = s.with_bounds((rhi - rlo, chi - clo), (s.imcorner[0] + rlo, s.imcorner[1] + clo))
    sub = Sparse3D._from_parts(S._values, s)
    if not (isinstance(sel, slice) and sel == slice(None)):
        sub = select_sources(sub, sel)
    kr, kc, ks = per_axis
    structured = (
        _unit_slice(kr)
        and _unit_slice(kc)
        and rhi > rlo
        and chi > clo
        and (isinstance(ks, slice) or (isinstance(ks, np.ndarray) and ks.ndim == 1))
        and not any(_is_bool_scalar(k) for k in items)
    )
    if structured:
        return sub
    rel = tuple(rel_items)
    if rhi <= rlo or chi <= clo:  # empty selection on the image axes
        shape = (max(rhi - rlo, 0), max(chi - clo, 0), sub.nsources)
        return np.zeros(shape, dtype=S.dtype)[rel]
    return sub.todense()[rel]


# -------------------------------------------------------------------------------------------
# Derivatives across stamps
# -------------------------------------------------------------------------------------------
@implements(np.gradient)
def _gradient(f, *varargs, axis=None, edge_order=1):
    """``np.gradient`` across each stamp (stamp semantics) → Sparse3D, or a tuple of them.

    Equal to ``np.gradient`` of every stamp block (``S.data``) along stamp axis 0 (rows)
    and/or 1 (columns), with the same structure as ``f`` — not the gradient of the logical
    array, whose implicit zeros would put steps at every stamp edge. ``axis`` must be 0, 1
    or ``(0, 1)`` (the source axis has no derivative); spacings are scalars, one for all
    axes or one per axis; ``edge_order`` is NumPy's (1 or 2).
    """
    Sparse3D = _S()
    if not isinstance(f, Sparse3D):
        raise TypeError("np.gradient on Sparse3D: the array must be the first argument")
    if axis is None:
        raise ValueError(
            "np.gradient on a Sparse3D needs axis=0, 1 or (0, 1): the derivative across each stamp "
            "(the source axis 2 has no derivative)"
        )
    axes = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    try:
        norm = tuple(axis_index(a, 3) for a in axes)  # AxisError when out of range, as NumPy
    except TypeError:
        raise TypeError(f"np.gradient: axis must be 0, 1 or (0, 1); got {axis!r}") from None
    if not norm or any(a not in (0, 1) for a in norm):
        raise ValueError(
            f"np.gradient on a Sparse3D: axis must be 0, 1 or (0, 1) (derivatives across each stamp); "
            f"got {axis!r}"
        )
    if len(set(norm)) != len(norm):
        raise ValueError(f"np.gradient: repeated axis in {axis!r}")
    for v in varargs:
        if np.ndim(v) != 0:
            raise TypeError(
                "np.gradient on a Sparse3D takes scalar spacings only (one for all axes or one per "
                "axis); coordinate arrays are not supported"
            )
    if len(varargs) not in (0, 1, len(norm)):
        raise TypeError(
            f"np.gradient: got {len(varargs)} spacings for {len(norm)} axes; pass 1 or {len(norm)}"
        )
    if f._structure.grouped:  # across each group's stamps
        parts = [_gradient(g, *varargs, axis=axis, edge_order=edge_order) for g in f.groups]
        if len(norm) == 1:
            return regroup(parts, f._structure)
        return tuple(regroup(list(p), f._structure) for p in zip(*parts))
    values = np.gradient(f._values, *varargs, axis=norm, edge_order=edge_order)
    if len(norm) == 1:
        return Sparse3D._from_parts(values, f._structure)
    return tuple(Sparse3D._from_parts(v, f._structure) for v in values)
