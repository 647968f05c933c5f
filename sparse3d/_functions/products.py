"""Products: ``np.dot``, ``np.matmul``/``@``, ``np.tensordot``, ``np.einsum``, projection, the
scatter/Gram helpers they share (``scatter_sum``, ``scipy_values``) and the choice of a product's
path (``_fast_product``); the products of translated arrays are in :mod:`.translated`."""

from __future__ import annotations

import numpy as np

from .. import _grid_kernels, _kernels, _planes_kernels
from .._options import check_dense_allocation
from ._registry import (
    _S,
    _refuse_out,
    axis_index,
    implements,
    lazy_backend,
)
from .translated import _planes_inputs, _planes_view, _translated_model


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


def dot(a, b, out=None, *, _into=None):
    """``np.dot(S, w)``: contract the source axis of ``S`` with the first axis of ``w``.

    ``w (nsources,)`` → image ``ndarray (H, W)``; ``w (nsources, k)`` → ``ndarray (H, W, k)``;
    scalar ``w`` → ``S * w`` (a Sparse3D).

    ``_into`` (internal; NumPy's ``out=`` stays refused): for ``(nsources, k)`` weights
    without a unit, an ``(H, W, k)`` array of the result dtype (any strides, e.g. the
    transpose of a ``(k, H, W)`` array: sparse3d 1.x's layout) to write the model into and
    return.
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
    if _into is not None and (b.ndim != 2 or unit is not None):
        raise ValueError("dot(..., _into=) needs (nsources, k) weights without a unit")
    if b.ndim == 0:
        result = a * b[()]
        return result if unit is None else result * unit
    n = a.nsources
    if b.shape[0] != n:
        raise ValueError(f"weights must have length nsources={n} along their first axis; got shape {b.shape}")
    if b.ndim > 2:
        raise ValueError(f"weights must be (nsources,) or (nsources, k); got {b.ndim}-D shape {b.shape}")
    dtype = _result_dtype(a.dtype, b.dtype)
    s = a._structure
    H, W = a.imshape
    k = 1 if b.ndim == 1 else b.shape[1]
    check_dense_allocation(  # the message is formatted only when it is raised
        H * W * k * max(dtype.itemsize, 8 if b.ndim == 1 else 1),
        lambda: f"an image of shape {(H, W)}" if b.ndim == 1 else f"a model cube of shape {(H, W, k)}",
    )
    if _into is not None:
        _check_into(_into, (H, W, k), dtype)
    if s.grouped:  # the sum of every group's model with its sources' weights
        result = None
        for i, g in enumerate(a.groups):
            part = dot(g, s.take(b, i))
            result = part.astype(dtype, copy=False) if result is None else np.add(result, part, out=result)
        result = _write_into(result, _into)
        return result if unit is None else result * unit
    fast = _fast_product(a, dtype, b.dtype)
    planes = None if _into is None or fast not in ("csr", "sorted") else _planes_view(a, _into)
    if fast == "csr" and planes is not None:
        # repeated products of one array into (k, H, W) planes: the planes scatter beats the
        # CSR product there (no transposing copy) and needs no CSR matrix
        _planes_kernels.planes_scatter(*_planes_inputs(a), b, s.root_corner, planes)
        return _into
    if fast == "csr":
        result = a._csr_matmul(b).astype(dtype, copy=False).reshape((H, W, k)[: 1 + b.ndim])
    elif fast == "kernel":
        w2 = b.reshape(n, k)
        grid = s.grid_corners()
        if grid is not None:  # one corner per stamp: stamp rows added to image rows
            result = _grid_kernels.scatter(a._values, *grid, w2, s.root_corner, s.imshape, dtype)
        else:
            result = _kernels.scatter(s._row, s._col, a._values, w2, s.root_corner, s.imshape, dtype)
        result = result.reshape((H, W, k)[: 1 + b.ndim])
    elif fast == "sorted":
        result = _translated_model(a, b.reshape(n, k), dtype, _into if b.ndim == 2 else None, planes)
        if b.ndim == 1:
            result = result.reshape(H, W)
    elif b.ndim == 1:
        result = _scatter_image(s, a._values * b, dtype)
    else:
        if k == 0:
            result = np.zeros((H, W, 0), dtype=dtype)
        elif k <= 4 or dtype.kind not in "fc":
            result = np.stack([_scatter_image(s, a._values * b[:, j], dtype) for j in range(k)], axis=-1)
            result = result.reshape(H, W, k)
        else:
            result = a._csr_matmul(b).astype(dtype, copy=False).reshape(H, W, k)
    result = _write_into(result, _into)
    return result if unit is None else result * unit


implements(np.dot)(dot)


def _result_dtype(a: np.dtype, b: np.dtype) -> np.dtype:
    """``np.result_type(a, b)``; equal native dtypes answer without NumPy's promotion (a jitter
    loop's products run it with every cache cold from the model before: ~10 us there)."""
    if a == b and a.isnative:
        return a
    return np.result_type(a, b)


def _write_into(result: np.ndarray, into) -> np.ndarray:
    """``into`` holding ``result`` (``result`` itself when ``into`` is None or already it)."""
    if into is None or result is into:
        return result
    _check_into(into, result.shape, result.dtype)
    np.copyto(into, result)
    return into


def _check_into(into, shape: tuple, dtype: np.dtype) -> None:
    if not isinstance(into, np.ndarray) or into.shape != shape or into.dtype != dtype:
        raise ValueError(
            f"dot(..., _into=) needs an ndarray of shape {shape} and dtype {dtype}; got "
            f"{type(into).__name__} {getattr(into, 'shape', None)} {getattr(into, 'dtype', None)}"
        )


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
    family repeats products (:func:`_kernels_pay`).
    """
    calls = _count_product(a)
    if not _kernels_pay(a, dtype, *other_dtypes):
        return None
    cache = a.__dict__
    if "_csr" in cache:
        return "csr"
    own = cache.get("_nproducts", 0) + 1
    cache["_nproducts"] = own
    if own >= 2:
        return "csr"
    return "sorted" if calls >= 2 else "kernel"


def _count_product(a) -> int:
    """Count a product of ``a`` (see ``REPEAT_ELEMENTS``); the family's count, this one included."""
    fam = a._family
    fam["nproducts"] = calls = fam.get("nproducts", 0) + 1
    _PROCESS["elements"] += a._values.size
    return calls


#: An array below ``MIN_ELEMENTS`` (with at least ``REPEAT_MIN_ELEMENTS``) uses the kernels
#: once the process has run products over this many stamp elements in all (NumPy's path
#: costs ~15 ns per element and weight column; loading numba and the cached kernels is
#: paid once per process, ~0.6 s), or, once numba is loaded, from its family's second
#: product on. The count is per process, not per family: a jitter loop over three
#: designs pays the one-time load after ~0.3 s of NumPy products, not three times that.
REPEAT_ELEMENTS = 20_000_000
REPEAT_MIN_ELEMENTS = 100_000
#: Stamp elements of every product run in this process (see ``REPEAT_ELEMENTS``).
_PROCESS = {"elements": 0}


def _kernels_pay(a, dtype, *other_dtypes) -> bool:
    """Whether a product of ``a`` into ``dtype`` runs the compiled kernels: arrays from
    ``MIN_ELEMENTS`` on, smaller ones as ``REPEAT_ELEMENTS`` says; dtypes the kernels take."""
    size = a._values.size
    if size < _kernels.MIN_ELEMENTS:
        family_repeats = a._family.get("nproducts", 0) >= 2 and _kernels.loaded()
        if size < REPEAT_MIN_ELEMENTS or not (_PROCESS["elements"] >= REPEAT_ELEMENTS or family_repeats):
            return False
    return _kernels.use_kernel(max(size, _kernels.MIN_ELEMENTS), dtype, a.dtype, *other_dtypes)


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
        grid = s.grid_corners() if img3.flags.c_contiguous else None
        if grid is not None:  # one corner per stamp: stamp rows against image rows
            res = _grid_kernels.gather(S._values, *grid, img3, s.root_corner, dtype)
        else:
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
